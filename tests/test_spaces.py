"""Parameter spaces: retractions stay on the manifold, distances are metrics, projections keep x valid."""
from __future__ import annotations

import math

import pytest
import roma
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from feedback_solver.spaces import Euclidean, Maps, QuaternionTranslation, Rotation6D, rotmat_to_sixd, sixd_to_rotmat

SETTINGS = settings(max_examples=25, deadline=None)
seeds = st.integers(0, 2**31 - 1)
batches = st.integers(1, 16)
joints = st.integers(1, 5)
step_scales = st.sampled_from([0.0, 1e-3, 0.5, 3.0, 50.0])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_sixd(space: Rotation6D, b: int, g: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """Valid 6D parameters: random rotations, stored as their first two columns."""
    return space.project(torch.randn(b, space.dim, generator=g, dtype=dtype))


def assert_rotations(rot: torch.Tensor, atol: float = 1e-6) -> None:
    eye = torch.eye(3, dtype=rot.dtype).expand_as(rot)
    assert torch.allclose(rot.transpose(-1, -2) @ rot, eye, atol=atol)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(rot.shape[:-2], dtype=rot.dtype), atol=atol)


# --- Rotation6D ------------------------------------------------------------------------------------
@SETTINGS
@given(seed=seeds, b=batches, n=joints, scale=step_scales)
def test_rotation6d_retract_gives_orthonormal_det1_columns(seed, b, n, scale):
    space, g = Rotation6D(n), gen(seed)
    x = random_sixd(space, b, g)
    dx = scale * torch.randn(b, space.tangent_dim, generator=g, dtype=torch.float64)
    x_new = space.retract(x, dx)
    assert x_new.shape == (b, 6 * n)
    # the stored numbers themselves are two orthonormal columns, not just something Gram-Schmidt can repair
    cols = x_new.reshape(b, n, 2, 3)
    norms = cols.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-9)
    assert torch.allclose((cols[..., 0, :] * cols[..., 1, :]).sum(-1), torch.zeros(b, n, dtype=x.dtype), atol=1e-9)
    assert_rotations(space.to_rotmat(x_new), atol=1e-9)


@SETTINGS
@given(seed=seeds, b=batches, n=joints)
def test_rotation6d_round_trips_rotmat(seed, b, n):
    space, g = Rotation6D(n), gen(seed)
    rot = roma.random_rotmat((b, n), dtype=torch.float64)
    assert torch.allclose(space.to_rotmat(space.from_rotmat(rot)), rot, atol=1e-12)
    x = random_sixd(space, b, g)
    assert torch.allclose(space.from_rotmat(space.to_rotmat(x)), x, atol=1e-12)
    # the module-level helpers agree with the space's methods, column after column
    assert torch.equal(rotmat_to_sixd(rot).reshape(b, -1), space.from_rotmat(rot))
    assert torch.allclose(sixd_to_rotmat(rotmat_to_sixd(rot)), rot, atol=1e-12)
    assert torch.equal(rotmat_to_sixd(rot)[..., :3], rot[..., :, 0])


def test_rotation6d_project_orthonormalises_arbitrary_numbers():
    space = Rotation6D(3)
    x = torch.randn(10, space.dim, generator=gen(3), dtype=torch.float64) * 5
    assert_rotations(space.to_rotmat(space.project(x)), atol=1e-9)
    assert torch.allclose(space.project(space.project(x)), space.project(x), atol=1e-12)


@SETTINGS
@given(seed=seeds, b=batches, n=joints)
def test_rotation6d_zero_step_is_identity(seed, b, n):
    space = Rotation6D(n)
    x = random_sixd(space, b, gen(seed))
    assert torch.allclose(space.retract(x, torch.zeros(b, space.tangent_dim, dtype=x.dtype)), x, atol=1e-12)


@SETTINGS
@given(seed=seeds, b=batches, n=joints)
def test_rotation6d_retract_is_a_local_frame_rotation_of_the_step_angle(seed, b, n):
    space, g = Rotation6D(n), gen(seed)
    x = random_sixd(space, b, g)
    v = torch.randn(b, n, 3, generator=g, dtype=torch.float64)
    dx = (v / v.norm(dim=-1, keepdim=True) * 0.7).reshape(b, -1)  # 0.7 rad per joint
    x_new = space.retract(x, dx)
    expected = space.to_rotmat(x) @ roma.rotvec_to_rotmat(dx.reshape(b, n, 3))
    assert torch.allclose(space.to_rotmat(x_new), expected, atol=1e-9)
    assert torch.allclose(space.angles(x, x_new), torch.full((b, n), 0.7, dtype=x.dtype), atol=1e-6)
    assert torch.allclose(space.distance(x, x_new), torch.full((b,), 0.7, dtype=x.dtype), atol=1e-6)


@SETTINGS
@given(seed=seeds, b=batches, n=joints)
def test_rotation6d_distance_is_zero_on_equal_inputs_and_symmetric(seed, b, n):
    space, g = Rotation6D(n), gen(seed)
    a, c = random_sixd(space, b, g), random_sixd(space, b, g)
    assert torch.allclose(space.distance(a, a), torch.zeros(b, dtype=a.dtype), atol=1e-6)
    assert torch.allclose(space.distance(a, c), space.distance(c, a), atol=1e-9)
    d = space.distance(a, c)
    assert (d >= 0).all() and (d <= math.pi + 1e-9).all()


# --- QuaternionTranslation -------------------------------------------------------------------------
@SETTINGS
@given(seed=seeds, b=batches, scale=st.sampled_from([0.0, 1.0, 10.0, 1e3]))
def test_quaternion_retract_keeps_unit_quaternions_and_clamps_translation(seed, b, scale):
    space, g = QuaternionTranslation(t_low=-2.0, t_high=3.0), gen(seed)
    x = space.project(torch.randn(b, 7, generator=g, dtype=torch.float64))
    for _ in range(5):
        dx = scale * torch.randn(b, 6, generator=g, dtype=torch.float64)
        x = space.retract(x, dx)
        assert x.shape == (b, 7) and torch.isfinite(x).all()
        assert torch.allclose(x[:, :4].norm(dim=1), torch.ones(b, dtype=x.dtype), atol=1e-9)
        assert (x[:, 4:] >= -2.0).all() and (x[:, 4:] <= 3.0).all()


def test_quaternion_translation_is_clamped_to_its_box_exactly():
    space = QuaternionTranslation(t_low=-1.0, t_high=1.0)
    x = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.5, 0.0, -0.5]])
    x_new = space.retract(x, torch.tensor([[0.0, 0.0, 0.0, 10.0, 0.25, -10.0]]))
    assert torch.allclose(x_new[:, 4:], torch.tensor([[1.0, 0.25, -1.0]]))
    assert torch.allclose(x_new[:, :4], x[:, :4])


def test_quaternion_zero_step_identity_and_distance():
    space = QuaternionTranslation(trans_weight=2.0)
    g = gen(5)
    x = space.project(torch.randn(6, 7, generator=g, dtype=torch.float64))
    assert torch.allclose(space.retract(x, torch.zeros(6, 6, dtype=x.dtype)), x, atol=1e-12)
    assert torch.allclose(space.distance(x, x), torch.zeros(6, dtype=x.dtype), atol=1e-6)
    flipped = torch.cat([-x[:, :4], x[:, 4:]], 1)  # q and -q are the same rotation
    assert torch.allclose(space.distance(x, flipped), torch.zeros(6, dtype=x.dtype), atol=1e-6)
    c = space.project(torch.randn(6, 7, generator=g, dtype=torch.float64))
    assert torch.allclose(space.distance(x, c), space.distance(c, x), atol=1e-9)
    # a pure rotation step of angle 0.3 and a pure translation step of length 0.5
    rot = space.retract(x, torch.tensor([[0.3, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=x.dtype).expand(6, 6))
    assert torch.allclose(space.distance(x, rot), torch.full((6,), 0.3, dtype=x.dtype), atol=1e-6)
    tr = space.retract(x, torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.3, 0.4]], dtype=x.dtype).expand(6, 6))
    assert torch.allclose(space.distance(x, tr), torch.full((6,), 1.0, dtype=x.dtype), atol=1e-6)


# --- Euclidean -----------------------------------------------------------------------------------------
@SETTINGS
@given(seed=seeds, b=batches, scale=st.sampled_from([0.1, 5.0, 1e4]))
def test_euclidean_box_clamps_every_retract(seed, b, scale):
    space, g = Euclidean(3, -1.5, 1.5), gen(seed)
    x = torch.rand(b, 3, generator=g) * 3 - 1.5
    x_new = space.retract(x, scale * torch.randn(b, 3, generator=g))
    assert (x_new >= -1.5).all() and (x_new <= 1.5).all()
    assert torch.allclose(space.project(x_new), x_new)


def test_euclidean_retract_is_addition_inside_the_box_and_clamp_outside():
    space = Euclidean(2, torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 2.0]))
    x = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    dx = torch.tensor([[0.25, -0.5], [1.0, -3.0]])
    assert torch.allclose(space.retract(x, dx), torch.tensor([[0.25, 0.5], [1.0, 0.0]]))
    assert torch.allclose(space.distance(x, x + torch.tensor([3.0, 4.0])), torch.tensor([5.0, 5.0]))
    free = Euclidean(2)
    big = torch.tensor([[1e6, -1e6]])
    assert torch.equal(free.retract(big, big), 2 * big)
    assert torch.equal(free.project(big), big)


# --- Space.check ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("space", [Euclidean(4), Rotation6D(2), QuaternionTranslation()], ids=type)
def test_check_rejects_nan_inf_and_wrong_shapes_with_a_message(space):
    good = torch.zeros(3, space.dim)
    assert space.check(good) is good
    bad = good.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"x_init: contains NaN"):
        space.check(bad, "x_init")
    bad[1, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        space.check(bad)
    with pytest.raises(ValueError, match=rf"expected shape \(B, {space.dim}\), got \(3, {space.dim + 1}\)"):
        space.check(torch.zeros(3, space.dim + 1))
    with pytest.raises(ValueError, match=r"params: expected shape"):
        space.check(torch.zeros(space.dim), "params")
    with pytest.raises(ValueError, match="expected shape"):
        space.check(torch.zeros(2, 3, space.dim))


def test_quaternion_world_and_local_frames_act_on_the_camera_and_the_object_axes():
    g = gen(11)
    x = QuaternionTranslation().project(torch.randn(4, 7, generator=g, dtype=torch.float64))
    dx = torch.cat([0.3 * torch.randn(4, 3, generator=g, dtype=torch.float64), torch.zeros(4, 3, dtype=x.dtype)], 1)
    rot, step = roma.unitquat_to_rotmat(x[:, :4]), roma.rotvec_to_rotmat(dx[:, :3])
    world = QuaternionTranslation(frame="world").retract(x, dx)
    local = QuaternionTranslation(frame="local").retract(x, dx)
    assert torch.allclose(roma.unitquat_to_rotmat(world[:, :4]), step @ rot, atol=1e-9)
    assert torch.allclose(roma.unitquat_to_rotmat(local[:, :4]), rot @ step, atol=1e-9)
    with pytest.raises(ValueError, match="local or world"):
        QuaternionTranslation(frame="camera")


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**16), st.floats(0.01, 10))
def test_maps_retract_clamps_each_channel_to_its_own_box(seed, scale):
    space = Maps([0.0, 0.02, -1.0], [1.0, 1.0, 1.0])
    g = torch.Generator().manual_seed(seed)
    x = space.project(torch.rand(2, 3, 5, 4, generator=g))
    out = space.retract(x, torch.randn(2, 3, 5, 4, generator=g) * scale)
    assert out.shape == x.shape
    assert (out[:, 1] >= 0.02).all() and (out[:, 2] >= -1).all() and (out <= 1).all() and (out[:, 0] >= 0).all()
    assert space.tangent_zeros(x).shape == x.shape


def test_maps_distance_is_the_per_sample_rmse_and_check_names_the_shape():
    space = Maps([0.0] * 2, [1.0] * 2)
    a, b = torch.zeros(2, 2, 3, 3), torch.zeros(2, 2, 3, 3)
    b[1] = 0.5
    assert torch.allclose(space.distance(a, b), torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        space.check(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        space.check(torch.full((1, 2, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="low < high"):
        Maps([0.0, 1.0], [1.0, 1.0])
