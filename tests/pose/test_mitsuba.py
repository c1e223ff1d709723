"""The Mitsuba 3 baseline: its camera is the pyrender camera's twin, and its Adam moves a pose towards the target."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from feedback_solver import registry
from feedback_solver.bench import run_bench
from feedback_solver.config import load_config

pytest.importorskip("mitsuba", reason="the baselines extra (mitsuba, drjit) is not installed")
from tasks.pose import mitsuba  # noqa: E402


@pytest.fixture(scope="module")
def task():
    cls = registry.task_class("pose")
    return cls(load_config(cls, ["task.procedural=0", "task.robosuite.enabled=false", "task.render_workers=0",
                                 "baselines.max_iterations=40"]))


def test_mitsuba_silhouette_matches_pyrender(task):
    dr, mi = mitsuba.mitsuba()
    batch = task.sample(3, "val", 1)
    for i, name in enumerate(batch.ctx["mesh"]):
        scene, params, verts = mitsuba.scenes(task.camera, 16).get(name)
        x = batch.x[i : i + 1]
        rot = mitsuba.roma.unitquat_to_rotmat(x[:, :4].double())[0].numpy()
        moved = verts @ rot.T + x[0, 4:].double().numpy() + np.array([0.0, 0.0, -task.camera.distance])
        params["obj.vertex_positions"] = mi.Float(moved.astype(np.float32).ravel())
        params.update()
        img = np.asarray(mi.render(scene, params, seed=0))[..., 0] > 0.5
        ref = batch.y[i, 0].numpy() > 0.5
        iou = (img & ref).sum() / (img | ref).sum()  # thin parts alias differently: IoU alone is loose
        assert iou > 0.94, f"{name}: IoU {iou:.3f} between the Mitsuba and pyrender silhouettes"
        centroid = [np.argwhere(m).mean(0) for m in (img, ref)]
        assert np.abs(centroid[0] - centroid[1]).max() < 0.5, f"{name}: centroids {centroid}"


def test_mitsuba_adam_reduces_the_error_from_a_nearby_start(task):
    batch = task.sample(2, "val", 2)
    x0 = task.space.retract(batch.x, torch.tensor([[0.15, -0.1, 0.05, 0.05, -0.04, 0.06]]).repeat(2, 1))
    res = mitsuba.optimise(task, batch.y, batch.ctx, x0, task.cfg)
    before, after = task.metrics(x0, batch.x, {}), task.metrics(res.x, batch.x, {})
    assert (after["translation"] < before["translation"]).all()
    assert after["rotation_deg"].mean() < before["rotation_deg"].mean()
    assert torch.allclose(res.x[:, :4].norm(dim=1), torch.ones(2), atol=1e-5) and (res.steps > 0).all()


def test_unknown_hybrid_optimiser_is_refused(task, tmp_path):
    cfg = task.cfg.copy()
    cfg.baselines.hybrid = "nope"
    with pytest.raises(ValueError, match="baselines.hybrid='nope' is not an optimiser of task 'pose'"):
        run_bench(task, cfg, tmp_path, methods=["hybrid"], samples=2, progress=False)
