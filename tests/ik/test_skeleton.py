"""Tests for tasks.ik.skeleton: BVH loading, FK against bvhio and scipy, writing, compatibility checks."""
from __future__ import annotations

import time
from pathlib import Path

import bvhio
import numpy as np
import pytest
import roma
import torch
from scipy.spatial.transform import Rotation

from tasks.ik.skeleton import (
    Clip,
    Skeleton,
    check_compatible,
    euler_to_matrix,
    load_bvh,
    matrix_to_euler,
    write_bvh,
)

DATA = Path("/usr/share/assimp/models/BVH")
CLIP_01 = DATA / "01_01.bvh"
CLIP_03 = DATA / "01_03.bvh"
FRAMES = [0, 1, 100, 777, 1500, 2751]

pytestmark = pytest.mark.skipif(not CLIP_01.is_file() or not CLIP_03.is_file(), reason=f"CMU BVH clips not in {DATA}")


@pytest.fixture(scope="module")
def clip() -> Clip:
    """01_01 loaded once per module, since several tests read it."""
    return load_bvh(CLIP_01)


def motion_lines(path: Path) -> list[str]:
    """Raw frame lines of a BVH file, read without the module under test."""
    lines = path.read_text().splitlines()
    start = lines.index("MOTION") + 3
    return lines[start:]


def chain_sums(skel: Skeleton) -> np.ndarray:
    """Rest-pose points: offsets summed along each chain, root at the origin."""
    off = skel.offsets.double().numpy()
    pos = np.zeros((skel.n_joints, 3))
    for j, p in enumerate(skel.parents):
        pos[j] = 0.0 if p < 0 else pos[p] + off[j]
    ends = np.array([pos[p] for p in skel.end_parents]) + skel.end_offsets.double().numpy()
    return np.concatenate([pos, ends])


def scipy_fk(skel: Skeleton, channels: np.ndarray) -> np.ndarray:
    """Independent FK from raw ZYX channel values with scipy, for one frame."""
    root = channels[:3]
    rot = Rotation.from_euler("ZYX", channels[3:].reshape(-1, 3), degrees=True).as_matrix()
    off = skel.offsets.double().numpy()
    glob = np.zeros_like(rot)
    pos = np.zeros((skel.n_joints, 3))
    for j, p in enumerate(skel.parents):
        if p < 0:
            glob[j], pos[j] = rot[j], root
        else:
            glob[j], pos[j] = glob[p] @ rot[j], pos[p] + glob[p] @ off[j]
    ends = [pos[p] + glob[p] @ e for p, e in zip(skel.end_parents, skel.end_offsets.double().numpy())]
    return np.concatenate([pos, np.array(ends)])


def test_load_structure(clip: Clip) -> None:
    skel = clip.skeleton
    assert skel.n_joints == 31 and len(skel.names) == 31
    assert skel.names[0] == "Hips" and skel.names[-1] == "RThumb"
    assert len(skel.end_parents) == 7 and skel.n_points == 38  # CMU: 7 End Sites (toes, head, fingers, thumbs)
    assert [skel.names[p] for p in skel.end_parents] == [
        "LeftToeBase", "RightToeBase", "Head", "LFingers", "LThumb", "RFingers", "RThumb"]
    assert skel.parents[0] == -1 and all(0 <= p < j for j, p in enumerate(skel.parents) if j > 0)
    assert skel.names[skel.parents[skel.names.index("LeftLeg")]] == "LeftUpLeg"
    assert set(skel.rotation_order) == {"ZYX"}
    assert clip.rotations.shape == (2752, 31, 3, 3) and clip.root_positions.shape == (2752, 3)
    assert clip.rotations.dtype == clip.root_positions.dtype == skel.offsets.dtype == torch.float32
    assert clip.frame_time == pytest.approx(1 / 120, rel=1e-4)
    first = np.array(motion_lines(CLIP_01)[0].split(), dtype=float)
    np.testing.assert_allclose(clip.root_positions[0].numpy(), first[:3], atol=1e-5)


def test_hierarchy_matches_bvhio(clip: Clip) -> None:
    joints = [j for j, _, _ in bvhio.readAsBvh(str(CLIP_01), loadKeyFrames=False).Root.layout()]
    assert clip.skeleton.names == tuple(j.Name for j in joints)
    np.testing.assert_allclose(clip.skeleton.offsets.numpy(), np.array([list(j.Offset) for j in joints]))


def test_rotations_are_proper(clip: Clip) -> None:
    R = clip.rotations.double()
    eye = torch.eye(3, dtype=torch.float64).expand_as(R)
    assert (R.transpose(-1, -2) @ R - eye).abs().max() < 1e-5
    assert (torch.linalg.det(R) - 1).abs().max() < 1e-5


def test_identity_fk_sums_offsets(clip: Clip) -> None:
    skel = clip.skeleton
    points = skel.fk(torch.eye(3).expand(1, skel.n_joints, 3, 3))
    assert points.shape == (1, 38, 3)
    np.testing.assert_allclose(points[0].numpy(), chain_sums(skel), atol=1e-5)


def test_frame0_unrotated_chains_sum_offsets(clip: Clip) -> None:
    skel = clip.skeleton
    rotated = [(clip.rotations[0, j] - torch.eye(3)).abs().max() > 1e-6 for j in range(skel.n_joints)]
    rotated_names = [skel.names[j] for j in range(skel.n_joints) if rotated[j]]
    assert rotated_names == ["LeftUpLeg", "RightUpLeg", "LeftArm", "RightArm"]
    points = skel.fk(clip.rotations[:1], clip.root_positions[:1])[0].numpy()
    expected = chain_sums(skel) + clip.root_positions[0].numpy()
    owner = list(range(skel.n_joints)) + list(skel.end_parents)

    def ancestors_rotated(j: int) -> bool:
        p = skel.parents[j]
        return p >= 0 and (rotated[p] or ancestors_rotated(p))

    unrotated = [i for i, j in enumerate(owner) if not ancestors_rotated(j) and (i < skel.n_joints or not rotated[j])]
    assert len(unrotated) >= 15
    np.testing.assert_allclose(points[unrotated], expected[unrotated], atol=1e-4)
    assert np.abs(points - expected).max() > 0.5  # the rotated legs and arms really moved


def test_fk_matches_bvhio_world_positions(clip: Clip, tmp_path: Path) -> None:
    lines = CLIP_01.read_text().splitlines()
    start = lines.index("MOTION")
    small = lines[: start + 1] + [f"Frames: {len(FRAMES)}", lines[start + 2]] + [lines[start + 3 + f] for f in FRAMES]
    (tmp_path / "small.bvh").write_text("\n".join(small) + "\n")
    root = bvhio.readAsHierarchy(str(tmp_path / "small.bvh"))
    points = clip.skeleton.fk(clip.rotations[FRAMES], clip.root_positions[FRAMES]).numpy()
    for k in range(len(FRAMES)):
        root.loadPose(k, recursive=True)
        world = np.array([list(j.PositionWorld) for j, _, _ in root.layout()])
        np.testing.assert_allclose(points[k, :31], world, atol=1e-3)


def test_fk_matches_scipy_fk_including_end_sites(clip: Clip) -> None:
    raw = motion_lines(CLIP_01)
    points = clip.skeleton.fk(clip.rotations[FRAMES], clip.root_positions[FRAMES]).numpy()
    for k, f in enumerate(FRAMES):
        expected = scipy_fk(clip.skeleton, np.array(raw[f].split(), dtype=float))
        np.testing.assert_allclose(points[k], expected, atol=1e-3)


def test_euler_convention_is_intrinsic_zyx() -> None:
    angles = torch.tensor([[30.0, -50.0, 70.0], [10.0, 89.9, -120.0]], dtype=torch.float64)
    rad = torch.deg2rad(angles)
    for a, (z, y, x) in zip(euler_to_matrix(angles, "ZYX"), rad):
        Rz = roma.rotvec_to_rotmat(torch.stack([0 * z, 0 * z, z]))
        Ry = roma.rotvec_to_rotmat(torch.stack([0 * y, y, 0 * y]))
        Rx = roma.rotvec_to_rotmat(torch.stack([x, 0 * x, 0 * x]))
        torch.testing.assert_close(a, Rz @ Ry @ Rx)
    torch.testing.assert_close(matrix_to_euler(euler_to_matrix(angles, "ZYX"), "ZYX"), angles)
    with pytest.raises(ValueError, match="permutation"):
        euler_to_matrix(angles, "zyx")


def test_write_load_roundtrip(clip: Clip, tmp_path: Path) -> None:
    torch.manual_seed(0)
    J = clip.skeleton.n_joints
    gimbal = euler_to_matrix(torch.tensor([[40.0, 90.0, -10.0], [-5.0, -90.0, 60.0]]), "ZYX")
    rotations = torch.cat([clip.rotations[FRAMES], roma.random_rotmat((3, J)), gimbal[:, None].expand(2, J, 3, 3)])
    roots = torch.randn(len(rotations), 3) * 20
    write_bvh(tmp_path / "rt.bvh", clip.skeleton, rotations, roots, frame_time=1 / 60)
    back = load_bvh(tmp_path / "rt.bvh")
    check_compatible(clip.skeleton, back.skeleton, "round trip")
    assert back.skeleton.end_parents == clip.skeleton.end_parents
    assert back.skeleton.rotation_order == clip.skeleton.rotation_order
    assert (back.rotations - rotations).abs().max() < 1e-4
    assert (back.root_positions - roots).abs().max() < 1e-4
    assert back.frame_time == pytest.approx(1 / 60)


def test_write_keeps_other_rotation_orders(tmp_path: Path) -> None:
    skel = Skeleton(names=("root", "a", "b"), parents=(-1, 0, 1),
                    offsets=torch.tensor([[0.0, 0, 0], [0, 1, 0], [1, 0, 0]]),
                    end_parents=(2,), end_offsets=torch.tensor([[0.0, 0, 2]]),
                    rotation_order=("XYZ", "YXZ", "ZXY"))
    rotations = roma.random_rotmat((4, 3))
    write_bvh(tmp_path / "orders.bvh", skel, rotations)
    text = (tmp_path / "orders.bvh").read_text()
    assert "CHANNELS 6 Xposition Yposition Zposition Xrotation Yrotation Zrotation" in text
    assert "CHANNELS 3 Yrotation Xrotation Zrotation" in text
    back = load_bvh(tmp_path / "orders.bvh")
    assert back.skeleton.rotation_order == skel.rotation_order
    assert (back.rotations - rotations).abs().max() < 1e-4
    assert back.root_positions.abs().max() == 0
    torch.testing.assert_close(back.skeleton.fk(back.rotations), skel.fk(rotations), atol=1e-4, rtol=0)


def modified(skel: Skeleton, **changes) -> Skeleton:
    """Copy of skel with some fields replaced, to provoke mismatches."""
    fields = dict(names=skel.names, parents=skel.parents, offsets=skel.offsets, end_parents=skel.end_parents,
                  end_offsets=skel.end_offsets, rotation_order=skel.rotation_order)
    return Skeleton(**{**fields, **changes})


def test_check_compatible(clip: Clip) -> None:
    skel = clip.skeleton
    check_compatible(skel, load_bvh(CLIP_03).skeleton, str(CLIP_03))
    offsets = skel.offsets.clone()
    offsets[12, 1] += 0.01
    with pytest.raises(ValueError, match=r"other\.bvh.*joint 12 \(Spine\) offset"):
        check_compatible(skel, modified(skel, offsets=offsets), "other.bvh")
    check_compatible(skel, modified(skel, offsets=skel.offsets + 5e-5))
    names = list(skel.names)
    names[3] = "Knee"
    with pytest.raises(ValueError, match="joint 3 is named 'Knee', expected 'LeftLeg'"):
        check_compatible(skel, modified(skel, names=tuple(names)), "x.bvh")
    end_offsets = skel.end_offsets.clone()
    end_offsets[2, 1] *= 2
    with pytest.raises(ValueError, match="End Site of Head"):
        check_compatible(skel, modified(skel, end_offsets=end_offsets), "x.bvh")
    small = Skeleton(names=("Hips",), parents=(-1,), offsets=torch.zeros(1, 3), end_parents=(),
                     end_offsets=torch.zeros(0, 3), rotation_order=("ZYX",))
    with pytest.raises(ValueError, match="tiny.bvh: .*1 joints, expected 31"):
        check_compatible(skel, small, "tiny.bvh")


def test_load_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.bvh"
    with pytest.raises(FileNotFoundError, match="nope.bvh"):
        load_bvh(missing)


@pytest.mark.parametrize("content", [
    b"",
    b"hello world\nthis is not a bvh\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe",
    b"HIERARCHY\nROOT Hips\n{\nOFFSET 0 0 0\nCHANNELS 3 Zrotation Yrotation Xrotation\n}\n",
    b"HIERARCHY\nROOT Hips\n{\nOFFSET 0 0 0\nCHANNELS 3 Zrotation Yrotation Xrotation\nMOTION\nFrames: 1\n"
    b"Frame Time: 0.1\n0 0 0\n",
    b"HIERARCHY\nROOT Hips\n{\nOFFSET 0 0\n}\nMOTION\nFrames: 1\nFrame Time: 0.1\n0 0 0\n",
], ids=["empty", "text", "binary", "no-motion", "unclosed-joint", "short-offset"])
def test_load_garbage(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "garbage.bvh"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=r"garbage\.bvh: not a BVH file: "):
        load_bvh(bad)


def test_load_truncated_motion(tmp_path: Path) -> None:
    lines = CLIP_01.read_text().splitlines()
    bad = tmp_path / "cut.bvh"
    bad.write_text("\n".join(lines[:-10]) + "\n")
    with pytest.raises(ValueError, match=r"cut\.bvh: .*motion has 2742 rows, but 'Frames:' says 2752"):
        load_bvh(bad)


def test_fk_batched_and_differentiable(clip: Clip) -> None:
    skel = clip.skeleton
    rotations = clip.rotations[FRAMES].clone().requires_grad_(True)
    roots = clip.root_positions[FRAMES].clone().requires_grad_(True)
    points = skel.fk(rotations, roots)
    assert points.shape == (len(FRAMES), skel.n_points, 3)
    singles = torch.cat([skel.fk(rotations[i:i + 1], roots[i:i + 1]) for i in range(len(FRAMES))])
    torch.testing.assert_close(points, singles)
    points[:, skel.names.index("LeftHand")].sum().backward()
    assert rotations.grad is not None and torch.isfinite(rotations.grad).all()
    moved = rotations.grad.abs().sum(dim=(0, 2, 3)) > 0
    assert moved[skel.names.index("LeftArm")] and not moved[skel.names.index("RightArm")]
    torch.testing.assert_close(roots.grad, torch.full_like(roots, 1.0))
    double = roma.random_rotmat((1, skel.n_joints), dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda r: skel.fk(r), (double,))


def test_load_time_01_03() -> None:
    start = time.perf_counter()
    clip = load_bvh(CLIP_03)
    elapsed = time.perf_counter() - start
    print(f"load_bvh(01_03.bvh): {clip.rotations.shape[0]} frames in {elapsed:.3f} s")
    assert clip.rotations.shape[0] == 4511
    assert elapsed < 5.0
