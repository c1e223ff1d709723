"""Experiment: the dihedral group of the square image acting on the pose scene."""
from __future__ import annotations

import roma
import torch
from torch import Tensor

# (3x3 orthogonal G in camera axes, image op): mirrors flip, quarter turns rot90
def _el(g, flip_w: bool, flip_h: bool, quarter: int):
    return (torch.tensor(g, dtype=torch.float32), flip_w, flip_h, quarter)

I = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
MX = [[-1, 0, 0], [0, 1, 0], [0, 0, 1]]
MY = [[1, 0, 0], [0, -1, 0], [0, 0, 1]]
MXY = [[-1, 0, 0], [0, -1, 0], [0, 0, 1]]
RZ = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # +x -> +y: right -> up in the image


def _mat(a, b):
    return (torch.tensor(a, dtype=torch.float32) @ torch.tensor(b, dtype=torch.float32)).tolist()


# image op applied in order: quarter turns first, then flips; G = F @ R
ELEMENTS = [
    _el(I, False, False, 0), _el(MX, True, False, 0), _el(MY, False, True, 0), _el(MXY, True, True, 0),
    _el(RZ, False, False, 1), _el(_mat(MX, RZ), True, False, 1), _el(_mat(MY, RZ), False, True, 1),
    _el(_mat(MXY, RZ), True, True, 1),
]


def transform_images(im: Tensor, g) -> Tensor:
    _, fw, fh, k = g
    if k:
        im = torch.rot90(im, k, dims=(-2, -1))
    if fw:
        im = im.flip(-1)
    if fh:
        im = im.flip(-2)
    return im


def _proper(G: Tensor) -> tuple[Tensor, float]:
    d = float(torch.det(G))
    return G * d, d


def transform_pose(x: Tensor, g) -> Tensor:
    G, d = _proper(g[0].to(x))
    H = G  # proper rotation with H R H^T = G R G^T
    R = roma.unitquat_to_rotmat(roma.quat_normalize(x[:, :4]))
    R2 = H @ R @ H.T
    t2 = x[:, 4:] @ (g[0].to(x)).T
    return torch.cat([roma.rotmat_to_unitquat(R2), t2], 1)


def untransform_step(o: Tensor, g) -> Tensor:
    G = g[0].to(o)
    d = float(torch.det(G))
    w = d * o[:, :3] @ G  # w = d G^T w'
    t = o[:, 3:] @ G
    return torch.cat([w, t], 1)
