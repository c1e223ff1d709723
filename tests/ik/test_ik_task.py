"""The IK task: data, physics, the shipped checkpoints' figures on a fixed sample, and the CLI on user clips."""
from __future__ import annotations

import json

import pytest
import roma
import torch

from feedback_solver import registry
from feedback_solver.cli import main
from feedback_solver.config import load_config
from feedback_solver.feedback import energy_gradient
from feedback_solver.solver import FeedbackSolver
from tasks.ik.skeleton import load_bvh, write_bvh

TEST_BVH = "/usr/share/assimp/models/BVH/01_03.bvh"


@pytest.fixture(scope="module")
def task():
    cls = registry.task_class("ik")
    return cls(load_config(cls, []))


@pytest.fixture(scope="module")
def test_batch(task):
    return task.sample(100, "test", 0)


def test_forward_reproduces_observations(task, test_batch):
    assert test_batch.x.shape == (100, task.space.dim)
    assert torch.allclose(task.forward(test_batch.x, {}), test_batch.y, atol=1e-4)


def test_test_split_is_fixed_and_train_split_is_seeded(task):
    assert torch.equal(task.sample(20, "test", 0).y, task.sample(20, "test", 5).y)
    assert torch.equal(task.sample(16, "train", 3).y, task.sample(16, "train", 3).y)
    assert not torch.equal(task.sample(16, "train", 3).y, task.sample(16, "train", 4).y)


def test_root_rotation_is_recovered_in_closed_form(task, test_batch):
    root = task.space.to_rotmat(task.initial(test_batch))[:, 0]
    true = task.space.to_rotmat(test_batch.x)[:, 0]
    assert roma.rotmat_geodesic_distance(root, true).max() < 1e-3


def test_gradient_feedback_is_finite_and_zero_at_the_solution(task, test_batch):
    b = test_batch.index(slice(0, 8))
    grad, _, _ = energy_gradient(task, task.initial(b), b.y, {})
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    grad_true, _, _ = energy_gradient(task, b.x, b.y, {})
    assert grad_true.abs().max() < 1e-3


def test_forward_kinematics_leaves_27_of_75_rotational_dofs_unobserved(task, test_batch):
    """The README's observability figure: the FK Jacobian's null space at real test poses."""
    for i in (0, 50, 99):
        x = test_batch.x[i : i + 1]
        jac = torch.autograd.functional.jacobian(
            lambda d: task.forward(task.space.retract(x, d[None]), {})[0], torch.zeros(task.space.tangent_dim))
        s = torch.linalg.svdvals(jac)
        assert task.space.tangent_dim == 75 and int((s < 1e-3 * s[0]).sum()) == 27


def test_prior_prefers_training_poses(task, test_batch):
    mean_pose = task.space.from_rotmat(task.mean_pose[None])
    assert task.prior(mean_pose).item() < task.prior(test_batch.x).median().item()


# Figures the shipped checkpoint reached on these 100 frames when it was committed (angle 12.3 / 13.3 deg,
# position 0.66 / 0.46 cm, mean / median), with a 5 % margin; the position mean is inside the 1 cm bar.
# The angle bar (<= 2 / 1 deg) is not met: 27 of the 75 rotational DoFs are in the null space of forward
# kinematics on this skeleton (see README).
SHIPPED = {"angle_deg": (12.9, 14.0), "position_cm": (0.69, 0.48)}


def test_shipped_solver_reaches_its_figures(task, test_batch):
    """100 fixed frames of 01_03: the shipped solver keeps its committed figures and beats regression."""
    res = FeedbackSolver.from_checkpoint(task).solve(test_batch.y, {})
    m = task.metrics(res.x, test_batch.x, {})
    for k, (mean, median) in SHIPPED.items():
        assert m[k].mean() <= mean and m[k].median() <= median, (k, m[k].mean(), m[k].median())
    assert (res.trace.energies().diff(dim=1) <= 0).all(), "damping must never let E_data rise"
    reg = task.metrics(FeedbackSolver.from_checkpoint(task, "regression").init(test_batch.y, {}), test_batch.x, {})
    for k in m:
        assert m[k].mean() < reg[k].mean() and m[k].median() < reg[k].median()


def test_solve_cli_writes_a_bvh_of_the_recovered_pose(tmp_path, capsys):
    assert main(["solve", "ik", "--bvh", TEST_BVH, "--frames", "100:105", "--out", str(tmp_path)]) == 0
    clip = load_bvh(tmp_path / "ik_solution.bvh")
    truth = load_bvh(TEST_BVH)
    assert clip.rotations.shape[0] == 5
    pts = clip.skeleton.fk(clip.rotations) - truth.skeleton.fk(truth.rotations[100:105])
    assert pts.norm(dim=-1).mean() * 5.6444 < 2.0  # cm
    summary = json.loads((tmp_path / "ik_solution.json").read_text())
    assert summary["frames"] == [100, 101, 102, 103, 104]


def test_bench_on_a_users_clip(task, tmp_path):
    clip = load_bvh(TEST_BVH)
    user = tmp_path / "user.bvh"
    write_bvh(user, clip.skeleton, clip.rotations[:41], clip.root_positions[:41], clip.frame_time)
    assert main(["bench", "ik", "--bvh", str(user), "--samples", "40", "--methods", "feedback,regression",
                 "--out", str(tmp_path / "rep")]) == 0
    rep = json.loads((tmp_path / "rep" / "ik.json").read_text())
    assert "user.bvh" in rep["data"] and rep["methods"]["feedback"]["samples"] == 40
    assert (tmp_path / "rep" / "ik_steps.png").stat().st_size > 1000


def test_clip_of_another_skeleton_is_refused(tmp_path, capsys):
    clip = load_bvh(TEST_BVH)
    sk = clip.skeleton
    other = type(sk)(sk.names, sk.parents, sk.offsets * 1.5, sk.end_parents, sk.end_offsets, sk.rotation_order)
    path = tmp_path / "other.bvh"
    write_bvh(path, other, clip.rotations[:3])
    assert main(["solve", "ik", "--bvh", str(path), "--frames", "0:3", "--out", str(tmp_path)]) == 2
    assert "other.bvh" in capsys.readouterr().err


def test_bad_frames_are_refused(tmp_path, capsys):
    assert main(["solve", "ik", "--frames", "10", "--out", str(tmp_path)]) == 2
    assert "--frames" in capsys.readouterr().err
