"""benchmarks/svbrdf_oracles.py: per-material level fits and the report's rows."""
from __future__ import annotations

import torch


def test_level_fit_moves_only_the_levels_and_finds_a_known_offset(benchmark_script):
    script = benchmark_script("svbrdf_oracles")
    torch.manual_seed(0)
    truth = torch.rand(2, 9, 8, 8)
    offset = torch.tensor([0.1, -0.05, 0.0, 0.2, 0.0, -0.1, 0.15])[None, :, None, None]
    x0 = truth.clone()
    x0[:, :7] -= offset
    fitted = script.fit_levels(x0, lambda x: (x - truth).pow(2).sum(), iterations=300, lr=0.01)
    assert torch.equal(fitted[:, 7:], x0[:, 7:])
    assert torch.allclose(fitted, truth, atol=2e-3)


def test_report_gives_each_estimate_against_the_initializer(benchmark_script):
    script = benchmark_script("svbrdf_oracles")
    rows = {"initializer": {"render_rmse mean": 0.05, "render_rmse median": 0.04, "gain over initializer %": 0.0},
            "global_truth": {"render_rmse mean": 0.0466, "render_rmse median": 0.037,
                             "gain over initializer %": 6.8}}
    sizes = {"maps": {"median": 0.21, "p90": 0.6}, "gradient": {"median": 0.0145, "p90": 0.114}}
    result = {"data": "procedural val", "samples": 48, "seed": 0, "iterations": 100, "methods": rows,
              "update_net_inputs": sizes}
    md = "\n".join(script.write_md(result, "python benchmarks/svbrdf_oracles.py"))
    assert "| global_truth | 0.0466 | 0.0370 | +6.8 % |" in md
    assert "48 materials, seed 0" in md and "100 Adam iterations" in md
    assert "maps median 0.210 (90 %: 0.600), compressed gradient median 0.0145 (90 %: 0.114)" in md


def test_rescaled_gradient_weights_read_small_gradients_as_before(benchmark_script):
    from tasks.svbrdf.nets import MapUpdate

    script = benchmark_script("svbrdf_rescale_gradient")
    torch.manual_seed(0)
    net = MapUpdate(["x", "gradient"], hidden=16, stride=4, grad_scale=10.0)
    with torch.no_grad():
        net.conv3.weight.normal_(0, 0.1)  # away from the near-zero start, so a change would show
    x = torch.rand(2, 9, 32, 32)
    fb = {"x": x, "gradient": 1e-8 * torch.randn(2, 9, 32, 32)}  # x H x W: log1p(s g) ~ s g
    big = {"x": x, "gradient": 1e-3 * torch.randn(2, 9, 32, 32)}  # large gradients are compressed differently
    before, before_big = net(fb)[0], net(big)[0]
    net.grad_scale = 1000.0  # the scale alone, weights left: small gradients read 100x louder
    assert not torch.allclose(before, net(fb)[0], atol=1e-4)
    net.grad_scale = 10.0
    assert script.rescale(net, 1000.0) == 10.0 and net.grad_scale == 1000.0
    assert torch.allclose(before, net(fb)[0], atol=1e-5)
    assert not torch.allclose(net(big)[0], before_big, atol=1e-4)
