"""Procedural SVBRDF generator: maps have the conventions' layout and ranges, are deterministic per (seed, index),
every family makes real patterns, heights turn into normals with the conventions' signs, and it is fast."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from tasks.svbrdf.procedural import FAMILIES, generate, generate_one, height_to_normal

RANGES = {"diffuse": (slice(0, 3), 0.0, 1.0), "specular": (slice(3, 6), 0.0, 1.0),
          "roughness": (slice(6, 7), 0.02, 1.0), "normal": (slice(7, 9), -1.0, 1.0)}


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return generate(8, 64, seed=0)


def test_shape_dtype_and_ranges(batch: torch.Tensor) -> None:
    assert batch.shape == (8, 9, 64, 64) and batch.dtype == torch.float32
    assert torch.isfinite(batch).all()
    for name, (ch, lo, hi) in RANGES.items():
        x = batch[:, ch]
        assert x.min() >= lo and x.max() <= hi, name


def test_deterministic_and_independent_of_batch_size(batch: torch.Tensor) -> None:
    assert torch.equal(batch, generate(8, 64, seed=0))
    assert torch.equal(batch[:4], generate(4, 64, seed=0))


def test_seeds_and_materials_differ(batch: torch.Tensor) -> None:
    other = generate(8, 64, seed=1)
    for k in range(8):
        assert not torch.allclose(batch[k], other[k])
    assert not torch.allclose(batch[0], batch[1])


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_makes_a_pattern(family: str) -> None:
    for k in range(3):
        m = generate_one(np.random.default_rng([7, k]), 64, family)
        assert m.shape == (9, 64, 64) and torch.isfinite(m).all()
        assert m[6].min() >= 0.02 and m[7:9].abs().max() <= 1.0
        spread = m.flatten(1).std(dim=1)
        assert spread[0:7].max() > 0.01, f"{family}: constant reflectance maps"
        assert spread[7:9].max() > 0.005, f"{family}: flat normals"


def test_unknown_family_is_refused() -> None:
    with pytest.raises(ValueError, match="family"):
        generate_one(np.random.default_rng(0), 32, "marble")


def test_same_material_at_other_sizes() -> None:
    """Patterns live in continuous coordinates: a 128 px material, averaged down, matches its 64 px rendering."""
    small = generate_one(np.random.default_rng([5, 2]), 64)
    big = generate_one(np.random.default_rng([5, 2]), 128)
    pooled = torch.nn.functional.avg_pool2d(big[None, :7], 2)[0]
    assert (pooled - small[:7]).abs().mean() < 0.03


def test_normal_signs_follow_conventions() -> None:
    cols = torch.arange(16.0).expand(16, 16)  # column index
    rising_right = height_to_normal(cols * 0.01, 1.0)  # h grows with x (to the right)
    assert rising_right.shape == (2, 16, 16)
    assert (rising_right[0] < 0).all() and rising_right[1].abs().max() < 1e-6
    rising_up = height_to_normal((15.0 - cols.T) * 0.01, 1.0)  # h grows towards row 0 (world y up)
    assert (rising_up[1] < 0).all() and rising_up[0].abs().max() < 1e-6
    # slope: h rises 0.01 per pixel, a pixel is 2 / 16 world units, so dh/dx = 0.08; strength scales it
    assert torch.allclose(rising_right[0], torch.full((16, 16), -0.08))
    assert torch.allclose(height_to_normal(cols * 0.01, 2.5)[0], torch.full((16, 16), -0.2))
    assert height_to_normal(cols * 10.0, 1.0).min() == -1.0  # clipped to the map's range


def test_fast_enough() -> None:
    generate(1, 32, seed=3)  # warm-up
    t = time.perf_counter()
    generate(16, 128, seed=3)
    assert time.perf_counter() - t < 2.0
