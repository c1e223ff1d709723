"""Silhouette rendering: known meshes and poses give the expected mask area and centroid; bad meshes and a
missing OpenGL stack give one clear error."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import roma
import torch
import trimesh

from feedback_solver.render import Camera, load_mesh, normalise, renderer

CAM = Camera()
KEPT: list = []


@pytest.fixture(scope="module")
def gl():
    r = renderer(CAM)
    r.add_mesh("sphere", normalise(trimesh.creation.icosphere(subdivisions=5)))
    r.add_mesh("bar", normalise(trimesh.creation.box(extents=(2.0, 0.4, 0.4))))
    return r


def pose(q=(0.0, 0.0, 0.0, 1.0), t=(0.0, 0.0, 0.0)) -> torch.Tensor:
    return torch.tensor([[*q, *t]], dtype=torch.float32)


def stats(mask: torch.Tensor) -> tuple[float, float, float]:
    """Area fraction and centroid (column, row) in continuous pixel coordinates (pixel i covers [i, i+1])."""
    ys, xs = torch.nonzero(mask[0, 0], as_tuple=True)
    return float(mask.mean()), float(xs.float().mean()) + 0.5, float(ys.float().mean()) + 0.5


def test_unit_sphere_has_the_projected_area_and_sits_at_the_principal_point(gl):
    area, cx, cy = stats(gl.render(["sphere"], pose()))
    radius_px = CAM.focal / math.sqrt(CAM.distance**2 - 1)  # tangent cone of a unit sphere at distance d
    assert area == pytest.approx(math.pi * radius_px**2 / CAM.size**2, rel=0.02)
    assert cx == pytest.approx(CAM.size / 2, abs=0.5) and cy == pytest.approx(CAM.size / 2, abs=0.5)


def ellipse_centre(offset: float) -> float:
    """Pixel offset of the centre of an off-axis unit sphere's image: the mean of its two tangent rays' images."""
    theta = math.atan2(offset, CAM.distance)
    alpha = math.asin(1.0 / math.hypot(offset, CAM.distance))
    return CAM.focal * (math.tan(theta + alpha) + math.tan(theta - alpha)) / 2


def test_translation_moves_the_silhouette_as_perspective_projection_says(gl):
    masks = gl.render(["sphere"] * 3, torch.cat([pose(t=(0.3, 0, 0)), pose(t=(0, 0.3, 0)), pose(t=(0, 0, 1.0))]))
    _, cx, cy = stats(masks[0:1])
    assert cx - CAM.size / 2 == pytest.approx(ellipse_centre(0.3), abs=0.2) and cy == pytest.approx(64, abs=0.2)
    _, cx, cy = stats(masks[1:2])
    assert CAM.size / 2 - cy == pytest.approx(ellipse_centre(0.3), abs=0.2)  # +y is up, rows go down
    closer, _, _ = stats(masks[2:3])
    radius_px = CAM.focal / math.sqrt((CAM.distance - 1) ** 2 - 1)
    assert closer == pytest.approx(math.pi * radius_px**2 / CAM.size**2, rel=0.02)


def test_rotation_turns_the_silhouette(gl):
    quarter = roma.rotvec_to_unitquat(torch.tensor([0.0, 0.0, math.pi / 2])).tolist()
    flat, turned = gl.render(["bar", "bar"], torch.cat([pose(), pose(q=quarter)]))
    assert flat[0].any(0).sum() > 3 * flat[0].any(1).sum()  # wide
    assert turned[0].any(1).sum() > 3 * turned[0].any(0).sum()  # tall
    assert torch.equal(flat[0], turned[0].T) or (flat[0] != turned[0].T).float().mean() < 0.01


def test_masks_are_binary_batched_and_on_the_poses_device(gl):
    masks = gl.render(["sphere", "bar"], torch.cat([pose(), pose()]))
    assert masks.shape == (2, 1, CAM.size, CAM.size) and masks.dtype == torch.float32
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(masks[0], masks[1]), "each sample draws only its own mesh"


def test_a_mixed_batch_past_one_texture_array_renders_as_each_mask_alone(gl):
    """Masks of many meshes, more than one texture array's layers hold, come back in order, unmixed, and the same
    pixels as each sample drawn alone (a mask does not depend on its batch)."""
    shapes = {"ball": trimesh.creation.icosphere(subdivisions=3), "beam": trimesh.creation.box(extents=(2, .4, .4)),
              "plate": trimesh.creation.box(extents=(2, 2, .2)), "rod": trimesh.creation.cylinder(.2, 2.0)}
    for key, mesh in shapes.items():
        gl.add_mesh(key, normalise(mesh))
    n = gl.layers + 5
    keys = [list(shapes)[i % 4] for i in range(n)]
    poses = torch.cat([pose(q=tuple(roma.rotvec_to_unitquat(torch.tensor([0.3 * i, 0.2, 0.1])).tolist()),
                            t=(0.6 * math.sin(i), 0.6 * math.cos(i), 0)) for i in range(n)])  # some leave the image
    batch = gl.render_array(keys, poses)
    alone = np.concatenate([gl.render_array(keys[i:i + 1], poses[i:i + 1]) for i in range(n)])
    assert batch.shape == (n, CAM.size, CAM.size) and np.array_equal(batch, alone)
    assert len({m.tobytes() for m in batch}) > n // 2


def test_unknown_mesh_key_and_mismatched_batch_are_refused(gl):
    with pytest.raises(KeyError, match="never added"):
        gl.render(["teapot"], pose())
    with pytest.raises(ValueError, match="2 mesh keys for 1 poses"):
        gl.render(["sphere", "sphere"], pose())


def test_load_mesh_normalises_to_the_unit_bounding_sphere(tmp_path):
    path = tmp_path / "box.stl"
    trimesh.creation.box(extents=(4.0, 2.0, 1.0)).apply_translation((5, 5, 5)).export(path)
    mesh = load_mesh(path)
    sphere = mesh.bounding_sphere.primitive
    assert float(sphere.radius) == pytest.approx(1.0, rel=1e-3) and np.allclose(sphere.center, 0, atol=1e-3)


@pytest.mark.parametrize("name,content,message", [
    ("missing.obj", None, "does not exist"),
    ("mesh.xyz", "1 2 3\n", "unsupported format"),
    ("broken.glb", "not a glb file", "does not load"),
    ("points.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\n", "has no faces"),
])
def test_bad_meshes_are_refused_by_name(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_mesh(path)


def test_missing_opengl_names_the_packages_and_the_platform_variable():
    code = "from feedback_solver.render import renderer; renderer()"
    env = os.environ | {"PYOPENGL_PLATFORM": "osmesa", "LD_LIBRARY_PATH": ""}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode == 0:
        pytest.skip("this machine has OSMesa, so the OSMesa platform works")
    last = proc.stderr.strip().splitlines()[-1]
    assert "OpenGLUnavailable" in last and "libegl1 libegl-mesa0" in last and "PYOPENGL_PLATFORM=egl" in last


def test_masks_are_pyrenders_segmentation_masks_and_forgotten_meshes_leave():
    """The layered renderer draws what pyrender's SEG mode draws (one image a call), pixel for pixel, in views all
    round and off-centre; a forgotten mesh frees its buffers and is refused."""
    from feedback_solver.render.gl import intrinsics, object_to_camera, offscreen
    from feedback_solver.render.objects import check_views, mesh

    gl = renderer(CAM)
    views = check_views(24)
    views[:, 4:] = torch.linspace(-0.3, 0.3, 24)[:, None]
    names = ("duck.obj", "objects/mug.obj", "husky/meshes/base_link.stl")
    reference = offscreen(CAM)
    KEPT.append(reference)  # never deleted: pyrender's teardown of a context ends the process's EGL display
    pyrender = gl_module().import_pyrender()
    differ, total = 0, 0
    for name in names:
        gl.add_mesh(("pyrender", name), mesh(name))
        ours = gl.render_array([("pyrender", name)] * len(views), views)
        scene = pyrender.Scene(bg_color=(0, 0, 0, 0))
        scene.add(intrinsics(CAM), pose=np.eye(4))
        node = scene.add(pyrender.Mesh.from_trimesh(mesh(name), smooth=True))
        for view, mat in zip(ours, object_to_camera(views, CAM.distance)):
            scene.set_pose(node, mat)
            colour, _ = reference.render(scene, flags=pyrender.RenderFlags.SEG, seg_node_map={node: (255, 255, 255)})
            differ, total = differ + int(((colour[..., 0] > 127) != view).sum()), total + view.size
        assert ours.any((1, 2)).all(), name
    assert differ == 0, f"{differ} of {total} pixels differ from pyrender's"
    for name in names:
        gl.forget(("pyrender", name))
    with pytest.raises(KeyError, match="never added"):
        gl.render_array([("pyrender", names[0])], views[:1])


def test_the_geometry_shader_fallback_draws_the_same_masks(gl):
    """Where GL_ARB_shader_viewport_layer_array is missing, a geometry shader sets the layer: the same pixels."""
    from feedback_solver.render.gl import SilhouetteRenderer

    fallback = SilhouetteRenderer(CAM, layers=4, vertex_layer=False)  # a second context, kept for the process
    KEPT.append(fallback)
    keys = ["sphere", "bar"] * 3
    poses = torch.cat([pose(q=tuple(roma.rotvec_to_unitquat(torch.tensor([0.4 * i, 0.1, 0.3])).tolist()),
                            t=(0.1 * i, -0.05 * i, 0.1)) for i in range(len(keys))])
    for key in ("sphere", "bar"):
        fallback.add_mesh(key, normalise(trimesh.creation.icosphere(subdivisions=5)) if key == "sphere" else
                          normalise(trimesh.creation.box(extents=(2.0, 0.4, 0.4))))
    ours = fallback.render_array(keys, poses)
    assert ours.any((1, 2)).all() and np.array_equal(ours, gl.render_array(keys, poses))


def gl_module():
    from feedback_solver.render import gl as module

    return module
