"""The SVBRDF task: renderer against a hand computation, gradients, the maps space, data, bad photos, the CLI."""
from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from feedback_solver.acceptance import LMDamping
from feedback_solver.config import load_config
from feedback_solver.feedback import energy_gradient
from feedback_solver.problem import Batch
from tasks.svbrdf import photos, render
from tasks.svbrdf.task import SVBRDFTask

CHECKPOINTS = Path(__file__).resolve().parents[2] / "tasks" / "svbrdf" / "checkpoints"
#: the shipped checkpoints on 6 fixed procedural test materials: mean render RMSE and LPIPS bounds, and the least
#: relative render-RMSE gain of the full solver over its own initializer
SHIPPED = {"feedback": {"render_rmse": 0.043, "render_lpips": 0.234, "gain": 0.03},  # these 6: 0.041, 0.223, 5 %
           "feedback_multi": {"render_rmse": 0.035, "render_lpips": 0.153, "gain": 0.3}}  # 0.033, 0.145, 33 %


@pytest.fixture(scope="module")
def task() -> SVBRDFTask:
    return SVBRDFTask(load_config(SVBRDFTask))


def test_renderer_matches_a_hand_computed_pixel():
    x = torch.zeros(1, 9, 2, 2)
    x[:, 0:3], x[:, 3:6], x[:, 6] = 0.5, 0.2, 0.5  # flat normal
    cam = render.camera_position(1)
    got = render.shade(x, cam, cam)[0, 0, :, 0, 0]  # top-left texel, centre at (-0.5, 0.5, 0)
    d2 = 0.5**2 + 0.5**2 + render.CAMERA_HEIGHT**2
    cos = render.CAMERA_HEIGHT / math.sqrt(d2)  # l = v = h, n = z
    alpha = 0.5**2
    a2 = alpha**2
    dist = a2 / (math.pi * (cos**2 * (a2 - 1) + 1) ** 2)
    k = alpha / 2
    geo = (cos / (cos * (1 - k) + k)) ** 2
    fresnel = 0.2**2.2  # v.h = 1
    brdf = 0.5**2.2 / math.pi + dist * geo * fresnel / (4 * cos * cos)
    expected = brdf * render.FLASH_INTENSITY * cos / d2
    assert torch.allclose(got, torch.full((3,), expected), rtol=1e-5)


def random_maps(n: int, size: int, seed: int) -> torch.Tensor:
    """Maps across their whole ranges, the roughness down to its floor (the sharpest highlights)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 9, size, size, generator=gen)
    x[:, 7:] = 2 * x[:, 7:] - 1
    return x


def test_the_closed_form_flash_render_and_its_gradient_are_the_general_renderers():
    """The flash photo drawn in closed form (l = v = h) is `shade` with light and view at the camera, and the
    gradient of its L2 to a photo is the general render's, to 1e-5."""
    x = random_maps(3, 48, 0)
    cam = render.camera_position(3)
    wide = x.double()  # the sharpest GGX peaks turn rounding in n.h into a few % of their radiance in float32
    assert torch.allclose(render.flash_shade(wide), render.shade(wide, cam.double(), cam.double())[:, 0], rtol=1e-4)
    general, closed = render.shade(x, cam, cam)[:, 0], render.flash_shade(x)
    assert torch.allclose(render.to_photo(closed), render.to_photo(general), atol=3e-4)  # 0.08 / 255, at those peaks
    y = render.flash_photo(random_maps(3, 48, 1))

    def gradient(draw):
        xx = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((render.to_photo(draw(xx)) - y).pow(2).mean(), xx)
        return g

    a, b = gradient(lambda z: render.shade(z, cam, cam)[:, 0]), gradient(render.flash_shade)
    assert a.abs().max() > 1e-5 and torch.allclose(a, b, atol=1e-5, rtol=0)
    scaled = render.flash_shade(x, torch.tensor([1.0, 2.0, 4.0]))  # one flash intensity per photo
    assert torch.allclose(scaled, closed * torch.tensor([1.0, 2.0, 4.0]).view(3, 1, 1, 1) / render.FLASH_INTENSITY)


def test_flash_photo_is_brightest_under_the_flash_and_in_range():
    x = torch.zeros(1, 9, 32, 32)
    x[:, 0:3], x[:, 3:6], x[:, 6] = 0.6, 0.1, 0.8
    y = render.flash_photo(x)[0, 0]
    assert 0 <= float(y.min()) and float(y.max()) <= 1
    assert y[15:17, 15:17].mean() > y[0, 0] and y[15:17, 15:17].mean() > y[-1, -1]


def test_a_normal_leaning_right_faces_the_flash_on_the_left_edge():
    """At the left edge the flash lies towards +x: nx > 0 turns the surface to it there, and away on the right."""
    flat = torch.zeros(1, 9, 16, 16)
    flat[:, 0:3], flat[:, 6] = 0.6, 1.0
    tilted = flat.clone()
    tilted[:, 7] = 0.3
    cam = render.camera_position(1)
    a, b = render.shade(flat, cam, cam)[0, 0, 0], render.shade(tilted, cam, cam)[0, 0, 0]
    assert (b[:, 0] > a[:, 0]).all() and (b[:, -1] < a[:, -1]).all()


def test_energy_gradients_are_finite_at_the_box_edges(task):
    batch = task.sample(2, "val", 0)
    x = batch.x.clone()
    x[0, 6], x[0, 3:6], x[1, 7:9] = render.MIN_ROUGHNESS, 0.0, 1.0
    grad, _, _ = energy_gradient(task, task.initial(batch), batch.y, batch.ctx)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    grad, _, _ = energy_gradient(task, x * 0.9 + 0.05, batch.y, batch.ctx)
    assert torch.isfinite(grad).all()
    x.requires_grad_(True)
    loss = task.loss(x, batch.x, batch.ctx)
    loss.backward()
    assert torch.isfinite(x.grad).all()


@settings(max_examples=25, deadline=None)
@given(st.floats(-5, 5), st.integers(0, 2**16))
def test_retract_keeps_maps_in_their_ranges(task, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = task.space.project(torch.rand(2, 9, 8, 8, generator=g) * 2 - 0.5)
    dx = torch.randn(2, 9, 8, 8, generator=g) * scale
    out = task.space.retract(x, dx)
    assert (out >= task.space.low).all() and (out <= task.space.high).all()


def test_damping_on_maps_never_raises_the_energy(task):
    batch = task.sample(3, "val", 1)
    x = task.initial(batch)
    e = task.energy(task.forward(x, batch.ctx), batch.y)
    dx = torch.randn_like(x) * 0.5
    acc = LMDamping(3)(task, x, dx, batch.y, batch.ctx, e, task.forward(x, batch.ctx))
    assert (acc.energy <= e + 1e-7).all() and acc.x.shape == x.shape


def test_samples_are_deterministic_and_splits_differ(task):
    a, b = task.sample(2, "train", 5), task.sample(2, "train", 5)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.ctx["light"], b.ctx["light"])
    assert a.x.shape == (2, 9, 64, 64) and a.y.shape == (2, 3, 64, 64)
    assert not torch.equal(task.sample(2, "val", 5).x, a.x)
    assert a.ctx["light"].shape == (2, 9, 3)
    assert task.groups(a) is None  # procedural materials: one sample each, no per-material table


def test_real_crops_are_grouped_by_material(task):
    batch = Batch(torch.zeros(3, 3, 4, 4), None, {"material": ["rock_01/crop0", "rock_01/crop1", "moss/crop0"]})
    assert task.groups(batch) == ["rock_01", "rock_01", "moss"]


def nominal(ctx: dict) -> dict:
    """A context without the photo's estimated exposure: an answer taken at the training flash, as the truth is."""
    return {k: v for k, v in ctx.items() if k != "exposure"}


def test_metrics_are_zero_for_the_truth_and_grow_with_error(task):
    batch = task.sample(2, "val", 2)
    zero = task.metrics(batch.x, batch.x, nominal(batch.ctx))
    assert set(zero) == {"diffuse_rmse", "specular_rmse", "roughness_rmse", "normal_rmse", "render_rmse",
                         "render_lpips"}
    assert all(float(v.abs().max()) < 1e-5 for v in zero.values())
    worse = task.metrics(task.space.project(batch.x + 0.2), batch.x, nominal(batch.ctx))
    assert (worse["render_rmse"] > 0.01).all() and (worse["diffuse_rmse"] > 0.1).all()


def test_the_curve_metric_agrees_with_the_report_metric_at_every_state(task):
    batch = task.sample(6, "val", 3)  # 6 > the render chunk, so the chunked curve path is exercised
    xs = [batch.x, task.space.project(batch.x + 0.1), task.initial(batch)]
    curve = task.curve_metric(xs, batch.x, nominal(batch.ctx), "render_rmse")
    for x, got in zip(xs, curve):
        torch.testing.assert_close(got, task.render_metrics(x, batch.x, lpips=False)["render_rmse"])
    assert float(curve[0].max()) < 1e-6 < float(curve[1].min())
    exposed = batch.ctx | {"exposure": torch.full((6,), 0.7)}  # an answer at an estimated exposure
    at_exposure = task.curve_metric(xs, batch.x, exposed, "render_rmse")
    for x, got in zip(xs, at_exposure):
        torch.testing.assert_close(got, task.render_metrics(x, batch.x, lpips=False, ctx=exposed)["render_rmse"])
    assert float(at_exposure[0].min()) > 1e-3  # the truth at the wrong exposure is not the truth


def write_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(path)
    return path


@pytest.mark.parametrize("kind, message", [
    ("text", "is not an image"),
    ("gray", "grayscale"),
    ("16bit", "16-bit"),
    ("small", "at least 64x64"),
    ("white", "saturated"),
    ("black", "black"),
])
def test_bad_photos_are_refused_with_a_clear_message(tmp_path, kind, message):
    rng = np.random.default_rng(0)
    rgb = (rng.random((96, 96, 3)) * 200).astype(np.uint8)
    if kind == "text":
        path = tmp_path / "a.png"
        path.write_text("not a png")
    elif kind == "gray":
        path = write_png(tmp_path / "a.png", rgb[..., 0])
    elif kind == "16bit":
        path = tmp_path / "a.png"
        Image.fromarray((rng.random((96, 96)) * 60000).astype(np.uint16)).save(path)
    elif kind == "small":
        path = write_png(tmp_path / "a.png", rgb[:40, :40])
    elif kind == "white":
        path = write_png(tmp_path / "a.png", np.full((96, 96, 3), 255, np.uint8))
    else:
        path = write_png(tmp_path / "a.png", np.zeros((96, 96, 3), np.uint8))
    with pytest.raises(ValueError, match=message):
        photos.read_photo(path, 64)


def test_a_non_square_photo_is_centre_cropped_and_resized(tmp_path, capsys):
    rgb = np.zeros((100, 160, 3), np.uint8)
    rgb[:, 30:130] = 120  # the centre 100x100 square is grey, the margins black
    y = photos.read_photo(write_png(tmp_path / "a.png", rgb), 64)
    assert y.shape == (1, 3, 64, 64) and abs(float(y.mean()) - 120 / 255) < 0.01
    assert "centre 100x100 square, resized to 64x64" in capsys.readouterr().out


def test_a_partly_saturated_photo_warns(tmp_path):
    rgb = np.full((96, 96, 3), 100, np.uint8)
    rgb[:40] = 255
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        photos.read_photo(write_png(tmp_path / "a.png", rgb), 64)
    assert any("saturated" in str(w.message) for w in caught)


def real_or_procedural_maps(task: SVBRDFTask) -> torch.Tensor:
    """A gk/fantasy material when the data can be had (a real texture set), else a held-out procedural one."""
    try:
        return photos.real_maps(128, 1, 0, None, 1)[0]
    except (RuntimeError, ValueError):
        return task.sample(1, "test", 3).x[:, :, :128, :128]


def test_cli_solve_writes_every_file(tmp_path, task):
    x = real_or_procedural_maps(task)[:, :, :, :96]  # a non-square photo
    photo = render.flash_photo(x)[0].permute(1, 2, 0).numpy()
    path = write_png(tmp_path / "photo.png", (photo * 255).round().astype(np.uint8))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "feedback_solver.cli", "solve", "svbrdf", "--image", str(path),
                           "--size", "64", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in ("diffuse.png", "specular.png", "roughness.png", "normal.png", "input_vs_render.png", "relit.png"):
        assert (out / name).is_file(), name
    assert Image.open(out / "diffuse.png").size == (64, 64)
    assert "centre 96x96 square" in proc.stdout


@pytest.mark.parametrize("variant", ["feedback", "feedback_multi"])
def test_shipped_checkpoint_reaches_its_figures_on_a_fixed_sample(task, variant):
    """6 held-out procedural materials at 256 px (benchmarks/svbrdf has the full run); the multi-photo model solves
    from its own 5 photos of the same maps."""
    from feedback_solver.solver import FeedbackSolver

    assert (CHECKPOINTS / f"{variant}.safetensors").is_file(), f"shipped {variant} checkpoint is missing"
    batch = task.sample(6, "test", 0)
    solver = FeedbackSolver.from_checkpoint(task, variant)
    seen = solver.task.observe(batch) if solver.task is not task else batch
    full = solver.solve(seen.y, seen.ctx).x
    init = solver.solve(seen.y, seen.ctx, steps=0).x
    m_full, m_init = (task.render_metrics(x, batch.x, ctx=seen.ctx) for x in (full, init))
    rmse_full, rmse_init = float(m_full["render_rmse"].mean()), float(m_init["render_rmse"].mean())
    bar = SHIPPED[variant]
    assert rmse_full < bar["render_rmse"] and float(m_full["render_lpips"].mean()) < bar["render_lpips"]
    assert rmse_full < (1 - bar["gain"]) * rmse_init  # the update net improves on its initializer


def test_shipped_regression_is_the_u_net_alone_and_the_full_solver_beats_it(task):
    """The U-Net trained alone (the seed's "without h_theta"): on the same 6 materials 0.0424 render RMSE and 0.250
    LPIPS, against the full solver's 0.0405 and 0.223 (issue 31 asks for 10 % and 25 % on the whole test sets)."""
    from feedback_solver.solver import FeedbackSolver

    assert (CHECKPOINTS / "regression.safetensors").is_file(), "shipped regression checkpoint is missing"
    batch = task.sample(6, "test", 0)
    regression = FeedbackSolver.from_checkpoint(task, "regression")
    assert regression.steps == 0 and regression.stages is None
    reg = task.render_metrics(regression.solve(batch.y, batch.ctx).x, batch.x, ctx=batch.ctx)
    full = task.render_metrics(FeedbackSolver.from_checkpoint(task).solve(batch.y, batch.ctx).x, batch.x, ctx=batch.ctx)
    assert float(reg["render_rmse"].mean()) < 0.0445 and float(reg["render_lpips"].mean()) < 0.262
    assert all(float(full[k].mean()) < float(reg[k].mean()) for k in ("render_rmse", "render_lpips"))


def test_shipped_solver_run_to_24_steps_stays_within_5_percent_of_step_6(task):
    """The issue's bar on the same 6 materials; without its damping the shipped solver drifts (+6.9 % on these)."""
    from feedback_solver.acceptance import LMDamping
    from feedback_solver.solver import FeedbackSolver

    batch = task.sample(6, "test", 0)
    solver = FeedbackSolver.from_checkpoint(task, "feedback")
    assert isinstance(solver.acceptance, LMDamping)
    trace = solver.solve(batch.y, batch.ctx, steps=24).trace  # one run: its state 6 is the 6-step answer
    r3, r6, r24 = (float(task.render_metrics(trace.x[s], batch.x, lpips=False, ctx=batch.ctx)["render_rmse"].mean())
                   for s in (3, 6, 24))
    assert r24 <= 1.05 * r6 and r24 <= 1.05 * r3  # the shipped 3 steps as well


def test_multi_photo_forward_energy_parts_and_per_photo_gradients():
    from feedback_solver.solver import build_solver

    cfg = load_config(SVBRDFTask, variant="feedback_multi")
    multi = SVBRDFTask(cfg)
    batch = multi.sample(2, "val", 4)
    assert batch.y.shape == (2, 15, 64, 64)
    assert torch.allclose(batch.y[:, :3], render.flash_photo(batch.x), atol=1e-6)  # the first is the flash photo
    assert not torch.allclose(batch.y[:, 3:6], batch.y[:, :3])
    x = multi.initial(batch)
    y_pred = multi.forward(x, batch.ctx)
    parts = multi.energy_parts(y_pred, batch.y)
    assert parts.shape == (2, 5) and torch.allclose(parts.mean(1), multi.energy(y_pred, batch.y))
    grad, _, grads = energy_gradient(multi, x, batch.y, batch.ctx, per_part=True)
    assert grads.shape == (2, 5, 9, 64, 64) and torch.allclose(grads.sum(1), 5 * grad, atol=1e-9, rtol=1e-4)
    solver = build_solver(multi, cfg)
    assert solver.solve(batch.y[:, :, :32, :32], batch.ctx, steps=2).x.shape == (2, 9, 32, 32)


def test_a_multi_photo_checkpoint_is_benchmarked_on_its_own_photos_of_the_same_maps(task, tmp_path):
    from feedback_solver.bench import run_learned
    from feedback_solver.checkpoints import save_model
    from feedback_solver.distributed import Dist
    from feedback_solver.solver import FeedbackSolver, build_solver

    cfg = load_config(SVBRDFTask, variant="feedback_multi")
    save_model(tmp_path / "feedback_multi.safetensors", build_solver(SVBRDFTask(cfg), cfg), "svbrdf", cfg, {})
    solver = FeedbackSolver.from_checkpoint(task, "feedback_multi", folder=tmp_path)
    assert solver.task is not task and solver.task.inputs == 5
    batch = task.sample(2, "val", 0)
    raw = run_learned(task, solver, batch.index(slice(0, 2)), [slice(0, 2)], Dist(), steps=1)
    assert raw.x.shape == batch.x.shape
