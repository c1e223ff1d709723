"""BVH skeletons and motion clips for the IK task: bvhio parses the hierarchy, torch does forward kinematics.

Conventions (standard BVH): a joint with channels "Zrotation Yrotation Xrotation" has the local rotation
R = Rz @ Ry @ Rx (intrinsic, angles in degrees); child_global = parent_global @ R_local and
position_child = position_parent + parent_global @ offset_child. The root's position channels replace
its OFFSET. Lengths stay in the file's units (CMU clips: about 0.056 m per unit).
"""
from __future__ import annotations

import errno
import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import bvhio
import numpy as np
import roma
import torch
from torch import Tensor

from feedback_solver.errors import one_line

_AXES = "XYZ"
_POSITION_CHANNELS = ("Xposition", "Yposition", "Zposition")
_ROTATION_CHANNELS = ("Xrotation", "Yrotation", "Zrotation")
_DEFAULT_ORDER = "ZYX"


def _check_order(order: str) -> None:
    """Reject orders roma would misread (lower case means extrinsic there) or that repeat an axis."""
    if len(order) != 3 or sorted(order) != list(_AXES):
        raise ValueError(f"rotation order must be a permutation of 'XYZ', got {order!r}")


def euler_to_matrix(angles_deg: Tensor, order: str) -> Tensor:
    """Turn BVH Euler channels (..., 3), degrees, listed in `order`, into local rotation matrices (..., 3, 3)."""
    _check_order(order)
    return roma.euler_to_rotmat(order, angles_deg, degrees=True)


def matrix_to_euler(R: Tensor, order: str) -> Tensor:
    """Turn rotation matrices (..., 3, 3) into BVH Euler channels (..., 3), degrees, listed in `order`."""
    _check_order(order)
    return roma.rotmat_to_euler(order, R, degrees=True)


def _rotate(R: Tensor, v: Tensor) -> Tensor:
    """Apply rotation matrices (..., 3, 3) to a vector (3,) without in-place ops, for autograd-safe FK."""
    return (R @ v.unsqueeze(-1)).squeeze(-1)


@dataclass(frozen=True, eq=False)
class Skeleton:
    """A BVH hierarchy: joints in file (depth-first) order, root first, plus End Sites as extra points."""

    names: tuple[str, ...]
    parents: tuple[int, ...]
    offsets: Tensor
    end_parents: tuple[int, ...]
    end_offsets: Tensor
    rotation_order: tuple[str, ...]

    def __post_init__(self) -> None:
        """Validate once so FK can index parents without checks."""
        J, E = len(self.names), len(self.end_parents)
        if J == 0 or len(self.parents) != J or len(self.rotation_order) != J:
            raise ValueError(f"names, parents and rotation_order must have the same non-zero length ({J})")
        if self.parents[0] != -1 or any(not 0 <= p < j for j, p in enumerate(self.parents) if j > 0):
            raise ValueError(f"parents must be -1 for the root and point to an earlier joint: {self.parents}")
        if tuple(self.offsets.shape) != (J, 3) or tuple(self.end_offsets.shape) != (E, 3):
            raise ValueError(f"offsets must be ({J}, 3) and end_offsets ({E}, 3)")
        if any(not 0 <= p < J for p in self.end_parents):
            raise ValueError(f"end_parents must index joints: {self.end_parents}")
        for order in self.rotation_order:
            _check_order(order)

    @property
    def n_joints(self) -> int:
        """Number of rotating joints J, the size of a pose."""
        return len(self.names)

    @property
    def n_points(self) -> int:
        """Number of FK output points: joints then End Sites."""
        return len(self.names) + len(self.end_parents)

    def fk(self, rotations: Tensor, root_position: Tensor | None = None) -> Tensor:
        """Map local rotations (B, J, 3, 3) and root positions (B, 3) (None = origin) to global points (B, J+E, 3)."""
        if tuple(rotations.shape[-3:]) != (self.n_joints, 3, 3):
            raise ValueError(f"rotations must be (B, {self.n_joints}, 3, 3), got {tuple(rotations.shape)}")
        offsets = self.offsets.to(rotations)
        end_offsets = self.end_offsets.to(rotations)
        if root_position is None:
            root_position = rotations.new_zeros(rotations.shape[:-3] + (3,))
        glob_rot: list[Tensor] = []
        glob_pos: list[Tensor] = []
        for j, p in enumerate(self.parents):
            local = rotations[..., j, :, :]
            if p < 0:
                glob_rot.append(local)
                glob_pos.append(root_position.to(rotations).expand(rotations.shape[:-3] + (3,)))
            else:
                glob_rot.append(glob_rot[p] @ local)
                glob_pos.append(glob_pos[p] + _rotate(glob_rot[p], offsets[j]))
        ends = [glob_pos[p] + _rotate(glob_rot[p], end_offsets[e]) for e, p in enumerate(self.end_parents)]
        return torch.stack(glob_pos + ends, dim=-2)

    def children(self, j: int) -> list[int]:
        """Child joints of j in file order, to rebuild the nested BVH hierarchy."""
        return [c for c, p in enumerate(self.parents) if p == j]


@dataclass(frozen=True, eq=False)
class Clip:
    """A motion: per-frame local rotations and root positions on one skeleton."""

    skeleton: Skeleton
    rotations: Tensor
    root_positions: Tensor
    frame_time: float

    def __post_init__(self) -> None:
        """Catch frame-count or joint-count mismatches when the clip is built, not deep inside a solver."""
        F, J = self.rotations.shape[0], self.skeleton.n_joints
        if tuple(self.rotations.shape) != (F, J, 3, 3) or tuple(self.root_positions.shape) != (F, 3):
            raise ValueError(f"rotations must be (F, {J}, 3, 3) and root_positions (F, 3), got "
                             f"{tuple(self.rotations.shape)} and {tuple(self.root_positions.shape)}")


# --------------------------------------------------------------------------------------------- reading


def _not_bvh(path: Path, why: str) -> ValueError:
    """One message format for every parse failure, naming the file."""
    return ValueError(f"{path}: not a BVH file: {why}")


def _read_text(path: Path) -> str:
    """Read the file as text, turning a missing file or binary junk into clear errors."""
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "BVH file not found", str(path))
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise _not_bvh(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None


def _split_motion(text: str, path: Path) -> tuple[list[str], int, float, str]:
    """Check the section markers (so bvhio cannot run off the end of the file) and cut out the motion numbers."""
    lines = text.splitlines()
    content = ((i, line.split()) for i, line in enumerate(lines) if line.strip())
    if next(content, (0, []))[1] != ["HIERARCHY"]:
        raise _not_bvh(path, "first line must be 'HIERARCHY'")
    motion_at = next((i for i, tok in content if tok == ["MOTION"]), None)
    if motion_at is None:
        raise _not_bvh(path, "no 'MOTION' section")
    (_, frames_tok), (time_at, time_tok) = next(content, (0, [])), next(content, (0, []))
    if len(frames_tok) != 2 or frames_tok[0] != "Frames:" or len(time_tok) != 3 or time_tok[:2] != ["Frame", "Time:"]:
        raise _not_bvh(path, "'MOTION' must be followed by 'Frames: N' and 'Frame Time: T' lines")
    try:
        n_frames, frame_time = int(frames_tok[1]), float(time_tok[2])
    except ValueError:
        raise _not_bvh(path, f"bad frame count or frame time: {frames_tok[1]!r}, {time_tok[2]!r}") from None
    if n_frames < 1 or not 0 < frame_time < math.inf:
        raise _not_bvh(path, f"needs at least one frame and a positive frame time, got {n_frames} and {frame_time}")
    return lines[:motion_at], n_frames, frame_time, "\n".join(lines[time_at + 1:])


def _end_site_owners(header: list[str]) -> list[int]:
    """Joint index (file order) owning each End Site; bvhio stores End Sites but not whether one was present."""
    owners: list[int] = []
    stack: list[int | None] = []  # joint index per open brace, None for End Site blocks
    pending: int | None = None
    n_joints = 0
    for line in header:
        tok = line.split()
        if tok and tok[0] in ("ROOT", "JOINT"):
            pending, n_joints = n_joints, n_joints + 1
        elif tok and tok[0] == "End":
            owners.append(next(j for j in reversed(stack) if j is not None))
            pending = None
        elif tok == ["{"]:
            stack.append(pending)
        elif tok == ["}"]:
            stack.pop()
    return owners


def _parse_hierarchy(path: Path) -> list[bvhio.BvhJoint]:
    """Let bvhio parse the hierarchy only (motion is read in bulk with numpy), joints in file order."""
    try:
        container = bvhio.readAsBvh(str(path), loadKeyFrames=False)
    except SyntaxError as err:
        raise _not_bvh(path, f"{err.msg} (line {err.lineno})") from None
    except Exception as err:  # bvhio raises many types for a malformed hierarchy
        raise _not_bvh(path, f"malformed hierarchy ({type(err).__name__}: {one_line(err)})") from None
    return [joint for joint, _, _ in container.Root.layout()]


def _joint_channels(joint: bvhio.BvhJoint, is_root: bool, path: Path) -> str:
    """Rotation order of one joint from its channel list, refusing translation on non-root joints."""
    for channel in joint.Channels:
        if channel not in _POSITION_CHANNELS + _ROTATION_CHANNELS:
            raise _not_bvh(path, f"joint {joint.Name} has unknown channel {channel!r}")
        if channel in _POSITION_CHANNELS and not is_root:
            raise ValueError(f"{path}: joint {joint.Name} has position channels; only the root may translate")
    order = "".join(c[0] for c in joint.Channels if c in _ROTATION_CHANNELS)
    if len(set(order)) != len(order):
        raise _not_bvh(path, f"joint {joint.Name} repeats a rotation channel")
    return order + "".join(a for a in _DEFAULT_ORDER if a not in order)


def _build_skeleton(joints: list[bvhio.BvhJoint], header: list[str], path: Path) -> Skeleton:
    """Flatten bvhio's joint tree into index tuples and float32 offset tensors."""
    index = {id(j): i for i, j in enumerate(joints)}
    parents = [-1] * len(joints)
    for i, joint in enumerate(joints):
        for child in joint.Children:
            parents[index[id(child)]] = i
    owners = _end_site_owners(header)
    if len(set(owners)) != len(owners):
        raise _not_bvh(path, "a joint has more than one End Site")
    return Skeleton(
        names=tuple(j.Name for j in joints),
        parents=tuple(parents),
        offsets=torch.tensor([list(j.Offset) for j in joints], dtype=torch.float32),
        end_parents=tuple(owners),
        end_offsets=torch.tensor([list(joints[o].EndSite) for o in owners], dtype=torch.float32).reshape(-1, 3),
        rotation_order=tuple(_joint_channels(j, i == 0, path) for i, j in enumerate(joints)),
    )


def _motion_array(motion: str, n_frames: int, n_channels: int, path: Path) -> np.ndarray:
    """The motion numbers as (frames, channels): every row exactly n_channels finite numbers, n_frames rows (one
    trailing row more, which many exporters write, is dropped with a warning)."""
    rows = [line.split() for line in motion.splitlines() if line.strip()]
    bad = next((i for i, r in enumerate(rows) if len(r) != n_channels), None)
    if bad is not None:
        raise _not_bvh(path, f"motion row {bad + 1} has {len(rows[bad])} numbers; the hierarchy has {n_channels} "
                             "channels")
    if len(rows) == n_frames + 1:
        warnings.warn(f"{path}: motion has one row more than 'Frames: {n_frames}'; the last row is ignored",
                      stacklevel=3)
        rows = rows[:n_frames]
    if len(rows) != n_frames:
        raise _not_bvh(path, f"motion has {len(rows)} rows, but 'Frames:' says {n_frames}")
    try:
        values = np.array(rows, dtype=np.float64).reshape(n_frames, n_channels)
    except ValueError as err:
        raise _not_bvh(path, f"non-numeric motion data ({err})") from None
    finite = np.isfinite(values).all(1)
    if not finite.all():
        raise _not_bvh(path, f"motion row {int(np.argmin(finite)) + 1} holds NaN or infinite values")
    return values


def _motion_to_tensors(skeleton: Skeleton, joints: list[bvhio.BvhJoint], data: np.ndarray) -> tuple[Tensor, Tensor]:
    """Scatter channel columns into Euler angles and root positions, then convert each rotation order in bulk."""
    F, J = data.shape[0], len(joints)
    angles = np.zeros((F, J, 3))
    root = np.broadcast_to(skeleton.offsets[0].double().numpy(), (F, 3)).copy()
    col = 0
    for j, joint in enumerate(joints):
        order = skeleton.rotation_order[j]
        for channel in joint.Channels:
            if channel in _ROTATION_CHANNELS:
                angles[:, j, order.index(channel[0])] = data[:, col]
            else:
                root[:, _AXES.index(channel[0])] = data[:, col]
            col += 1
    rotations = torch.empty(F, J, 3, 3, dtype=torch.float64)
    angles_t = torch.from_numpy(angles)
    for order in set(skeleton.rotation_order):
        idx = [j for j in range(J) if skeleton.rotation_order[j] == order]
        rotations[:, idx] = euler_to_matrix(angles_t[:, idx], order)
    return rotations.float(), torch.from_numpy(root).float()


def load_bvh(path: str | os.PathLike) -> Clip:
    """Load a BVH clip as float32 tensors so IK tasks can sample real poses and skeletons."""
    path = Path(path)
    header, n_frames, frame_time, motion = _split_motion(_read_text(path), path)
    joints = _parse_hierarchy(path)
    skeleton = _build_skeleton(joints, header, path)
    n_channels = sum(len(j.Channels) for j in joints)
    rotations, root_positions = _motion_to_tensors(skeleton, joints, _motion_array(motion, n_frames, n_channels, path))
    return Clip(skeleton, rotations, root_positions, frame_time)


# --------------------------------------------------------------------------------------------- writing


def _format_vec(v: Tensor) -> str:
    """Offsets with enough digits that a reload matches to float32 precision."""
    return " ".join(f"{x:.6f}" for x in v.tolist())


def _hierarchy_lines(skeleton: Skeleton, j: int, depth: int) -> list[str]:
    """BVH text of joint j and its subtree, channels in the joint's rotation order."""
    pad, inner = "\t" * depth, "\t" * (depth + 1)
    rot = " ".join(f"{a}rotation" for a in skeleton.rotation_order[j])
    channels = f"CHANNELS 6 {' '.join(_POSITION_CHANNELS)} {rot}" if j == 0 else f"CHANNELS 3 {rot}"
    lines = [f"{pad}{'ROOT' if j == 0 else 'JOINT'} {skeleton.names[j]}", f"{pad}{{",
             f"{inner}OFFSET {_format_vec(skeleton.offsets[j])}", f"{inner}{channels}"]
    for c in skeleton.children(j):
        lines += _hierarchy_lines(skeleton, c, depth + 1)
    for e, p in enumerate(skeleton.end_parents):
        if p == j:
            lines += [f"{inner}End Site", f"{inner}{{", f"{inner}\tOFFSET {_format_vec(skeleton.end_offsets[e])}",
                      f"{inner}}}"]
    return lines + [f"{pad}}}"]


def _motion_columns(skeleton: Skeleton, rotations: Tensor, root_positions: Tensor) -> np.ndarray:
    """Frames x channels array in file order: root position, then each joint's Euler angles in its order."""
    angles = torch.empty(rotations.shape[:2] + (3,), dtype=torch.float64)
    for order in set(skeleton.rotation_order):
        idx = [j for j in range(skeleton.n_joints) if skeleton.rotation_order[j] == order]
        angles[:, idx] = matrix_to_euler(rotations[:, idx], order)
    return torch.cat([root_positions, angles.flatten(1)], dim=1).numpy()


def write_bvh(path: str | os.PathLike, skeleton: Skeleton, rotations: Tensor, root_positions: Tensor | None = None,
              frame_time: float = 1 / 120) -> None:
    """Save solved or generated motion as a standard BVH file that viewers and load_bvh can read."""
    rotations = rotations.detach().to("cpu", torch.float64)
    if rotations.dim() != 4 or tuple(rotations.shape[1:]) != (skeleton.n_joints, 3, 3):
        raise ValueError(f"rotations must be (F, {skeleton.n_joints}, 3, 3), got {tuple(rotations.shape)}")
    F = rotations.shape[0]
    if root_positions is None:
        root_positions = torch.zeros(F, 3)
    root_positions = root_positions.detach().to("cpu", torch.float64)
    if tuple(root_positions.shape) != (F, 3):
        raise ValueError(f"root_positions must be ({F}, 3), got {tuple(root_positions.shape)}")
    buf = io.StringIO()
    np.savetxt(buf, _motion_columns(skeleton, rotations, root_positions).reshape(F, -1), fmt="%.6f")
    text = "\n".join(["HIERARCHY", *_hierarchy_lines(skeleton, 0, 0), "MOTION", f"Frames: {F}",
                      f"Frame Time: {frame_time:.9g}"])
    Path(path).write_text(text + "\n" + buf.getvalue())


# --------------------------------------------------------------------------------------------- checks


def _offset_mismatch(kind: str, labels: list[str], expected: Tensor, got: Tensor, tol: float) -> str | None:
    """Describe the first offset row that differs by more than tol, or None."""
    bad = ((expected.float() - got.float()).abs() > tol).any(dim=-1).nonzero()
    if len(bad) == 0:
        return None
    i = int(bad[0])
    return f"{kind} {i} ({labels[i]}) offset is {got[i].tolist()}, expected {expected[i].tolist()}"


def _first_mismatch(expected: Skeleton, got: Skeleton, tol: float) -> str | None:
    """Return a description of the first structural or geometric difference, or None if compatible."""
    if expected.n_joints != got.n_joints:
        return f"skeleton has {got.n_joints} joints, expected {expected.n_joints}"
    for j, (a, b) in enumerate(zip(expected.names, got.names)):
        if a != b:
            return f"joint {j} is named {b!r}, expected {a!r}"
    for j, (a, b) in enumerate(zip(expected.parents, got.parents)):
        if a != b:
            return f"joint {j} ({got.names[j]}) has parent {b}, expected {a}"
    joint_msg = _offset_mismatch("joint", list(got.names), expected.offsets, got.offsets, tol)
    if joint_msg or expected.end_parents != got.end_parents:
        return joint_msg or f"End Sites belong to joints {got.end_parents}, expected {expected.end_parents}"
    labels = [f"End Site of {got.names[p]}" for p in got.end_parents]
    return _offset_mismatch("end site", labels, expected.end_offsets, got.end_offsets, tol)


def check_compatible(expected: Skeleton, got: Skeleton, source: str = "") -> None:
    """Refuse to mix clips whose skeletons differ, naming the first mismatch and where it came from."""
    message = _first_mismatch(expected, got, tol=1e-4)
    if message is not None:
        raise ValueError(f"{source or 'skeleton'}: incompatible skeleton: {message}")
