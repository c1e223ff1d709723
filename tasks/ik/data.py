"""IK data: real CMU poses (train 01_01, test 01_03), augmented around the real poses for training."""
from __future__ import annotations

import math
from dataclasses import dataclass

import roma
import torch
from torch import Tensor

from tasks.ik.skeleton import Clip, euler_to_matrix, matrix_to_euler

UP = torch.tensor([0.0, 1.0, 0.0])  # BVH clips are Y-up


@dataclass(frozen=True)
class Augment:
    """Per-sample noise level in [0, noise_scale] times each Euler channel's own std, and a random heading.

    Noise shaped like the clip's variation keeps the skeleton's DoF structure (a hand that only bends about
    one axis stays so), which is what lets the solver resolve rotations that positions alone leave open.
    """

    noise_scale: float = 1.0
    random_heading: bool = True


def train_frames(clip: Clip, generator: torch.Generator, n: int) -> Tensor:
    """Random frames, skipping frame 0 (the CMU clips' calibration frame)."""
    return torch.randint(1, clip.rotations.shape[0], (n,), generator=generator)


def test_frames(clip: Clip, n: int) -> Tensor:
    """A fixed, evenly spaced subsample of frames 1..F-1, so every run evaluates the same poses."""
    last = clip.rotations.shape[0] - 1
    if n > last:
        raise ValueError(f"asked for {n} test frames but the clip has only {last} after its calibration frame")
    return torch.linspace(1, last, n).round().long()


def channel_std(clip: Clip, joints: Tensor, orders: list[str]) -> Tensor:
    """Std (deg) of each joint's Euler channels over the clip, (len(joints), 3)."""
    rot = clip.rotations[1:]
    return torch.stack([matrix_to_euler(rot[:, int(j)], o).std(0) for j, o in zip(joints, orders)])


def augment(rot: Tensor, joints: Tensor, orders: list[str], std: Tensor, aug: Augment,
            generator: torch.Generator) -> Tensor:
    """Perturb the given joints' Euler channels in proportion to their std, and turn the root about the vertical."""
    b = rot.shape[0]
    rot = rot.clone()
    level = torch.rand(b, 1, generator=generator) * aug.noise_scale
    for i, (j, order) in enumerate(zip(joints.tolist(), orders)):
        noise = torch.randn(b, 3, generator=generator) * level * std[i]
        rot[:, j] = euler_to_matrix(matrix_to_euler(rot[:, j], order) + noise, order)
    if aug.random_heading:
        yaw = torch.rand(b, 1, generator=generator) * 2 * math.pi
        rot[:, 0] = roma.rotvec_to_rotmat(yaw * UP) @ rot[:, 0]
    return rot
