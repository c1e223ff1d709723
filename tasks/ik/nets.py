"""IK networks: MLPs that see joint positions in the body frame of the current root rotation."""
from __future__ import annotations

from typing import Any

import roma
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from feedback_solver.feedback import KINDS, width
from feedback_solver.spaces import Rotation6D, rotmat_to_sixd
from feedback_solver.update import MLP


def to_body(points: Tensor, root: Tensor, scale: float) -> Tensor:
    """(B, P*3) world points -> body frame of root (B, 3, 3), flattened and scaled to O(1)."""
    p = points.reshape(points.shape[0], -1, 3) @ root  # row vectors: p @ R == (R^T p)^T
    return (p / scale).flatten(1)


class IKUpdate(nn.Module):
    """MLP update on the chosen feedback, expressed in the body frame so it does not depend on the heading."""

    def __init__(self, inputs: list[str], n_points: int, space: Rotation6D, model: DictConfig):
        super().__init__()
        self.inputs, self.space = list(inputs), space
        self.scale, self.grad_scale = float(model.position_scale), float(model.grad_scale)
        sizes = {"observation": 3 * n_points, "state": 6 * (space.n - 1), "tangent": space.tangent_dim}
        self.mlp = MLP(width(self.inputs, sizes), model.hidden, space.tangent_dim, model.layers)

    def features(self, fb: dict[str, Tensor], root: Tensor) -> Tensor:
        parts = []
        for k in self.inputs:
            like = KINDS[k].like
            if like == "observation":
                parts.append(to_body(fb[k], root, self.scale))
            elif like == "state":
                parts.append(fb[k][:, 6:])  # local rotations of the non-root joints are heading-free
            else:
                parts.append(fb[k] * self.grad_scale)
        return torch.cat(parts, 1)

    def forward(self, fb: dict[str, Tensor], h: Any = None) -> tuple[Tensor, Any]:
        root = self.space.to_rotmat(fb["x"])[:, 0]
        return self.mlp(self.features(fb, root)), h


class IKInitializer(nn.Module):
    """Regression from joint positions: the analytic root rotation, then an MLP in its body frame for the rest."""

    def __init__(self, n_points: int, space: Rotation6D, model: DictConfig):
        super().__init__()
        self.space, self.scale = space, float(model.position_scale)
        self.mlp = MLP(3 * n_points, model.hidden, 3 + 6 * (space.n - 1), model.layers)

    def forward(self, y: Tensor, ctx: dict[str, Any], x0: Tensor) -> Tensor:
        root = self.space.to_rotmat(x0)[:, 0]
        out = self.mlp(to_body(y, root, self.scale))
        root = root @ roma.rotvec_to_rotmat(out[:, :3])
        rest = x0[:, 6:] + out[:, 3:]
        return torch.cat([rotmat_to_sixd(root), rest], 1)
