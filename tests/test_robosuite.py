"""robosuite's meshes as more training shapes: which files count as whole meshes, the copy check by shape, the
manifest's split by robot (disjoint from the test objects and their robots), the clear error when they were never
fetched, and the solver's mesh proxies (silhouettes as the full mesh's, cost bounded whatever the face count)."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import trimesh
from omegaconf import OmegaConf

from feedback_solver import registry
from feedback_solver.config import load_config
from feedback_solver.render import objects, robosuite
from feedback_solver.render.gl import Camera, renderer

POSE_CFG = robosuite.MANIFEST.parent / "pose.yaml"


def test_candidates_drop_collision_hulls_material_parts_and_format_twins(tmp_path):
    files = ["robots/r/meshes/link.obj", "robots/r/meshes/link.stl", "robots/r/meshes/link/link_0.obj",
             "robots/r/meshes/link/link_1.obj", "robots/r/meshes/base_collision.stl", "robots/r/collision/arm.stl",
             "grippers/meshes/g/finger.STL", "objects/meshes/can.obj", "objects/meshes/notes.txt"]
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("")
    assert robosuite.candidates(tmp_path) == ["grippers/meshes/g/finger.STL", "objects/meshes/can.obj",
                                              "robots/r/meshes/link.obj"]
    assert [robosuite.group(n) for n in robosuite.candidates(tmp_path)] == ["grippers/g", "objects", "robots/r"]
    assert robosuite.group("bullet_data/sawyer_description/meshes/l0.stl") == "robots/sawyer"


def test_copy_check_finds_a_copy_whatever_its_pose_mirror_or_tessellation():
    duck = objects.mesh("duck.obj")
    turn = trimesh.transformations.rotation_matrix(1.1, [0.3, 0.8, 0.5])
    copy = duck.copy()
    copy.apply_transform(turn)
    copy.apply_scale([-1, 1, 1])  # its mirror image
    copy = trimesh.Trimesh(*trimesh.remesh.subdivide(copy.vertices, copy.faces))  # another tessellation
    other = objects.mesh("objects/mug.obj")
    shapes = robosuite.Shapes.of({"duck": duck, "copy": copy, "mug": other})
    hit = shapes.copy_of("copy", ["mug", "duck"], below=0.02, prefilter=0.5)
    assert hit is not None and hit[0] == "duck" and hit[1] < 0.01
    assert shapes.copy_of("mug", ["duck"], below=0.02, prefilter=4.0) is None


def test_choose_leaves_out_the_test_robots_and_copies_and_keeps_the_rest():
    duck, mug, bunny = (objects.mesh(n) for n in ("duck.obj", "objects/mug.obj", "bunny.obj"))
    pool = robosuite.Shapes.of({"robots/panda/meshes/a.stl": bunny, "robots/x/meshes/duck.stl": duck,
                                "robots/x/meshes/bunny.stl": bunny, "robots/y/meshes/bunny2.stl": bunny})
    tests = robosuite.Shapes.of({"duck.obj": duck, "objects/mug.obj": mug})
    rules = {"left_out": ["robots/panda"], "copy_below": 0.02, "pool_prefilter": 0.3, "test_prefilter": 0.5,
             "symmetric_below": 0.015}
    out = robosuite.choose(list(pool.descriptor), pool, tests, rules)
    why = {c.name.removeprefix(robosuite.PREFIX): (c.kept, c.why) for c in out}
    assert why["robots/panda/meshes/a.stl"] == (False, "a test object's robot or hand")
    assert not why["robots/x/meshes/duck.stl"][0] and "test object duck.obj" in why["robots/x/meshes/duck.stl"][1]
    assert why["robots/x/meshes/bunny.stl"] == (True, "")
    kept, reason = why["robots/y/meshes/bunny2.stl"]
    assert not kept and "robots/x/meshes/bunny.stl" in reason


def test_the_manifest_splits_by_robot_and_leaves_the_test_robots_out():
    m = robosuite.load_manifest()
    rules = OmegaConf.load(POSE_CFG).task.robosuite
    train = [n.removeprefix(robosuite.PREFIX) for n in m["train"]]
    unseen = [n.removeprefix(robosuite.PREFIX) for n in m["val_unseen"]]
    assert m["version"] == robosuite.VERSION and len(train) >= 100
    assert len(unseen) >= 40 and {robosuite.group(n) for n in unseen} == set(rules.val_unseen)
    assert len(rules.val_unseen) >= 3 and not {robosuite.group(n) for n in train} & set(rules.val_unseen)
    for name in train + unseen:
        assert robosuite.group(name) not in rules.left_out, name
    assert {"robots/panda", "grippers/panda_gripper", "robots/iiwa", "robots/xarm7"} <= set(rules.left_out)
    assert not set(m["train"]) & set(m["val_unseen"]) and not set(m["left_out"]) & set(m["train"] + m["val_unseen"])
    assert all(m["left_out"].values())  # each with its reason


def test_the_pose_split_takes_the_manifest_and_never_mixes_splits():
    cls = registry.task_class("pose")
    on = cls(load_config(cls, ["task.procedural=0"]))
    off = cls(load_config(cls, ["task.procedural=0", "task.robosuite.enabled=false"]))
    m = robosuite.load_manifest()
    assert set(m["train"]) <= set(on.names("train")) and on.names("val_unseen") == m["val_unseen"]
    assert not any(n.startswith(robosuite.PREFIX) for n in off.names("train"))
    assert not set(on.names("train")) & (set(on.names("test")) | set(on.names("val_unseen")))
    with pytest.raises(ValueError, match="robosuite.enabled"):
        off.names("val_unseen")


def test_missing_robosuite_meshes_name_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("FEEDBACK_SOLVER_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="make robosuite"):
        objects.resolve("robosuite:robots/ur5e/meshes/base.stl")


@pytest.fixture
def dense_duck(tmp_path, monkeypatch):
    """The duck subdivided to 67k faces (a dense mesh of a known shape), and a fresh proxy cache."""
    monkeypatch.setenv("FEEDBACK_SOLVER_DATA", str(tmp_path / "data"))
    duck = objects.mesh("duck.obj")
    v, f = duck.vertices, duck.faces
    for _ in range(2):
        v, f = trimesh.remesh.subdivide(v, f)
    path = tmp_path / "dense_duck.stl"
    trimesh.Trimesh(v, f).export(path)
    return str(path)


def test_proxy_silhouettes_match_the_full_mesh_at_128_px(dense_duck):
    camera = Camera()
    key = objects.Proxy(dense_duck, 1000, 0.992, camera)
    full, proxy = objects.mesh(dense_duck), objects.mesh(key)
    assert len(full.faces) > 60_000 and len(proxy.faces) <= 3_000
    assert objects.silhouette_iou(full, proxy, camera).min() >= 0.99
    gen = torch.Generator().manual_seed(3)  # poses of the task's distribution, other than the check's views
    q = torch.nn.functional.normalize(torch.randn(40, 4, generator=gen), dim=1)
    poses = torch.cat([q, 0.2 * (2 * torch.rand(40, 3, generator=gen) - 1)], 1)
    assert objects.silhouette_iou(full, proxy, camera, poses).min() >= 0.99
    assert objects.proxy_cache(key, full).is_file()  # made once, then read back
    objects.mesh.cache_clear()
    again = objects.mesh(key)
    assert np.array_equal(np.asarray(again.faces), np.asarray(proxy.faces))


def test_a_small_mesh_is_its_own_proxy():
    key = objects.Proxy("objects/mug.obj", 1000, 0.99, Camera())
    assert objects.mesh(key) is objects.mesh("objects/mug.obj")


def test_proxy_render_costs_about_what_a_simple_mesh_costs(dense_duck):
    camera = Camera()
    gl = renderer(camera)
    meshes = {"simple": objects.mesh("objects/mug.obj"),
              "proxy": objects.mesh(objects.Proxy(dense_duck, 1000, 0.992, camera)),
              "full": objects.mesh(dense_duck)}
    for k, m in meshes.items():
        gl.add_mesh(("cost", k), m)
    poses = objects.check_views(40)
    cost = {k: [] for k in meshes}
    for _ in range(3):  # interleaved, the median of three: this machine is shared
        for k in meshes:
            t = time.perf_counter()
            gl.render_array([("cost", k)] * len(poses), poses)
            cost[k].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in cost.items()}
    for k in meshes:
        gl.forget(("cost", k))
    assert med["proxy"] < 2.0 * med["simple"] and med["proxy"] < med["full"]


def test_fetch_unpacks_only_the_meshes_and_licence_and_does_it_once(tmp_path, monkeypatch):
    import subprocess
    import zipfile

    def fake_pip(cmd, check):  # what `pip download --no-deps robosuite==VERSION -d DIR` leaves: the wheel
        dest = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(f"{dest}/robosuite-{robosuite.VERSION}-py3-none-any.whl", "w") as z:
            z.writestr(robosuite.ASSETS + "robots/r/meshes/link.stl", "solid")
            z.writestr(robosuite.ASSETS + "robots/r/robot.xml", "<mujoco/>")
            z.writestr("robosuite/__init__.py", "")
            z.writestr(f"robosuite-{robosuite.VERSION}.dist-info/licenses/LICENSE", "MIT")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(robosuite.subprocess, "run", fake_pip)
    dest = robosuite.fetch(tmp_path / "rs")
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == [f"robosuite-{robosuite.VERSION}.dist-info/licenses/LICENSE",
                     robosuite.ASSETS + "robots/r/meshes/link.stl"]
    monkeypatch.setattr(robosuite.subprocess, "run", lambda *a, **k: pytest.fail("fetched twice"))
    assert robosuite.fetch(tmp_path / "rs") == dest
    assert not [p for p in tmp_path.iterdir() if p.name != "rs"]  # no temporary folder left behind
