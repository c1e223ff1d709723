"""The illumination Mitsuba baseline: its render is the pyrender image's twin; its Adam moves a light to the truth."""
from __future__ import annotations

import numpy as np
import pytest
import roma
import torch

from feedback_solver import registry
from feedback_solver.config import load_config

pytest.importorskip("mitsuba", reason="the baselines extra (mitsuba, drjit) is not installed")
from tasks.illumination import mitsuba  # noqa: E402


def make(light: str):
    cls = registry.task_class("illumination")
    return cls(load_config(cls, [f"task.light={light}", "task.procedural=0", "task.render_workers=0",
                                 "baselines.max_iterations=60"]))


@pytest.mark.parametrize("light,least", [("directional", 0.95), ("point", 0.75)])
def test_mitsuba_render_matches_pyrender(light, least):
    """Directional: close twins; point: Mitsuba's point light casts shadows and pyrender's does not."""
    task = make(light)
    dr, mi = mitsuba.mitsuba()
    batch = task.sample(2, "test", 0)
    for i, name in enumerate(batch.ctx["mesh"]):
        scene, params, verts = mitsuba.scenes(task.camera, task.lighting, 16).get(name)
        rot = roma.unitquat_to_rotmat(batch.ctx["rotation"][i : i + 1].double())[0].numpy()
        centre = np.array([0.0, 0.0, -task.camera.distance])
        params["obj.vertex_positions"] = mi.Float((verts @ rot.T + centre).astype(np.float32).ravel())
        mitsuba.place_light(mi, params, light, mi.Vector3f(*batch.x[i].tolist()), centre)
        params.update()
        img = np.asarray(mi.render(scene, params, seed=0)).clip(1e-4, 1) ** (1 / 2.2)
        ref = batch.y[i].expand(3, -1, -1).permute(1, 2, 0).numpy()
        on = ref.sum(-1) > 0
        corr = np.corrcoef(img[on].ravel(), ref[on].ravel())[0, 1]
        assert corr > least, f"{name}: correlation {corr:.3f} between the Mitsuba and pyrender images"
        assert ((img.sum(-1) > 0.05) & ~on).mean() < 0.01, "Mitsuba lights no pixel off the pyrender object"


@pytest.mark.parametrize("light", ["directional", "point"])
def test_mitsuba_adam_moves_the_light_towards_the_truth(light):
    task = make(light)
    batch = task.sample(2, "test", 3)
    x0 = task.space.retract(batch.x, torch.tensor([[0.25, -0.2, 0.0]]).repeat(2, 1))
    res = mitsuba.optimise(task, batch.y, batch.ctx, x0, task.cfg)
    before, after = task.metrics(x0, batch.x, {}), task.metrics(res.x, batch.x, {})
    assert (after["light_mse"] < before["light_mse"]).all(), (before, after)
    assert task.space.contains(res.x).all() and (res.steps > 0).all()
