"""6-DoF object pose from one binary silhouette (Ma et al. 2020, Sec. 4.1): x = (unit quaternion XYZW, t)."""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import roma
import torch
from omegaconf import DictConfig
from PIL import Image
from torch import Tensor, nn

from feedback_solver.images import open_image
from feedback_solver.problem import Batch, Task
from feedback_solver.render import SilhouetteRenderer, renderer
from feedback_solver.render.objects import ObjectScenes, user_mesh
from feedback_solver.spaces import QuaternionTranslation, degrees
from tasks.pose import mitsuba, options
from tasks.pose.nets import PoseInitializer, pose_update

SPLIT_OFFSETS = {"train": 0, "val": 5_555_555, "val_unseen": 7_777_777, "test": 9_999_991}
# A mirror of the scene in a camera axis through the principal point (the image centre): the sign it puts on the
# pose (quaternion XYZW: M R M for M = diag(-1, 1, 1) or diag(1, -1, 1); translation: M t) and the image axis it
# flips (width for x, height for y, whose rows run top to bottom, i.e. along -y).
MIRRORS = ((torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0, 1.0, 1.0]), -1),
           (torch.tensor([-1.0, 1.0, -1.0, 1.0, 1.0, -1.0, 1.0]), -2))


@dataclass(frozen=True)
class Mirror:
    """The scene mirrored in some of the camera's x and y axes (`MIRRORS` indices): a new shape whose silhouettes
    are the flipped ones, so the update net, trained on such shapes (`augment`), gives another estimate of a step."""

    axes: tuple[int, ...]

    def sign(self, like: Tensor) -> Tensor:
        s = torch.ones(7)
        for k in self.axes:
            s = s * MIRRORS[k][0]
        return s.to(like)

    def feedback(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        dims = tuple(MIRRORS[k][1] for k in self.axes)
        return {key: v * self.sign(v) if key == "x" else v.flip(dims) if dims else v for key, v in inputs.items()}

    def step(self, dx: Tensor) -> Tensor:
        """M exp(w) M = exp(-M w) for a mirror M: the rotation vector takes the sign of the quaternion's vector part,
        the translation that of the pose's (in either rotation frame); a mirror is its own inverse."""
        s = self.sign(dx)
        return dx * torch.cat([s[:3], s[4:]])


SYMMETRIES = (Mirror(()), Mirror((0,)), Mirror((1,)), Mirror((0, 1)))


class PoseTask(ObjectScenes, Task):
    """Pose of a known mesh relative to its canonical pose (centred, 4 units in front of the camera)."""

    name = "pose"
    splits = tuple(SPLIT_OFFSETS)  # val_unseen: robosuite's held-out robots and hands (`task.robosuite`)
    differentiable = False
    mitsuba = staticmethod(mitsuba.optimise)  # the seed's differentiable-renderer baseline
    cli_options = staticmethod(options.add_cli_options)

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)  # the camera and the objects (ObjectScenes)
        t = cfg.task
        self._space = QuaternionTranslation(-float(t.translation_bound), float(t.translation_bound),
                                            frame=str(t.rotation_frame))

    # --- physics -----------------------------------------------------------------------------
    @property
    def space(self) -> QuaternionTranslation:
        return self._space

    def forward(self, x: Tensor, ctx: dict[str, Any]) -> Tensor:
        """The solver's renders: binary silhouettes (B x 1 x S x S) of each sample's mesh proxy under its pose, whose
        cost does not grow with the mesh's faces (`task.proxy_faces`)."""
        return self.silhouettes(x, self.solver_meshes(ctx["mesh"]))

    def silhouettes(self, x: Tensor, meshes: list) -> Tensor:
        masks = self.render_objects(partial(renderer, self.camera), meshes, x)
        return SilhouetteRenderer.decode(masks).to(x.device)

    # --- data ----------------------------------------------------------------------------------
    def random_poses(self, n: int, gen: torch.Generator) -> Tensor:
        """Rotation about a uniform random axis by |angle| in [min, max] deg; offset uniform in +-range per axis."""
        t = self.cfg.task
        axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=1)
        lo, hi = math.radians(float(t.min_angle_deg)), math.radians(float(t.max_angle_deg))
        angle = lo + (hi - lo) * torch.rand(n, 1, generator=gen)
        q = roma.rotvec_to_unitquat(axis * angle)
        offset = (2 * torch.rand(n, 3, generator=gen) - 1) * float(t.translation_range)
        return torch.cat([q, offset], 1)

    def sample(self, n: int, split: str, seed: int) -> Batch:
        gen = torch.Generator().manual_seed(int(seed) + SPLIT_OFFSETS[split])
        names = self.objects.pick(n, split, gen)
        x = self.random_poses(n, gen)
        ctx = {"mesh": names}
        return Batch(self.silhouettes(x, names), x, ctx)  # observed: the full meshes

    def initial(self, batch: Batch) -> Tensor:
        x = torch.zeros(len(batch), 7, device=batch.y.device)
        x[:, 3] = 1.0
        return x

    def restart_starts(self, batch: Batch, count: int) -> Tensor:
        """The canonical pose turned `task.restart_angle` deg about `count` axes in the image plane: a start on the
        other side of a wrong basin, still within the trained range of the truth."""
        turn = torch.arange(count, dtype=torch.float32) * (2 * math.pi / count)
        axes = torch.stack([turn.cos(), turn.sin(), torch.zeros_like(turn)], 1)
        quats = roma.rotvec_to_unitquat(axes * math.radians(float(self.cfg.task.restart_angle)))  # (count, 4) xyzw
        x = self.initial(batch)[None].repeat(count, 1, 1)
        x[..., :4] = quats[:, None, :].to(x)
        return x

    def describe_data(self, split: str) -> str:
        t = self.cfg.task
        objs = self.names(split)
        where = self.objects.source(split)
        if self.objects.weighted(split):
            where += f"; a real mesh with probability {self.objects.real_fraction:g}"
        return (f"{len(objs)} {split} objects ({where}); rotation {t.min_angle_deg}-{t.max_angle_deg} deg about a "
                f"random axis, offset +-{t.translation_range} per axis; {t.size}x{t.size} silhouettes")

    # --- evaluation ------------------------------------------------------------------------------
    def metrics(self, x_pred: Tensor, x_true: Tensor, ctx: dict[str, Any]) -> dict[str, Tensor]:
        return {"rotation_deg": degrees(self.space.rotation_angle(x_pred, x_true)),
                "translation": (x_pred[:, 4:] - x_true[:, 4:]).norm(dim=1)}

    def is_outlier(self, metrics: dict[str, Tensor]) -> Tensor:
        """The seed's rule: translation error > 0.2 or rotation error > 30 deg."""
        return (metrics["translation"] > 0.2) | (metrics["rotation_deg"] > 30.0)

    def loss(self, x_pred: Tensor, x_true: Tensor, ctx: dict[str, Any]) -> Tensor:
        """MSE on the quaternion (sign-aligned, q and -q are one rotation) and on the translation."""
        q, q_true = x_pred[:, :4], x_true[:, :4]
        sign = torch.sign((q * q_true).sum(1, keepdim=True)).detach().clamp(min=0) * 2 - 1
        rot = (q - sign * q_true).pow(2).sum(1)
        trans = (x_pred[:, 4:] - x_true[:, 4:]).pow(2).sum(1)
        return (rot + float(self.cfg.task.translation_weight) * trans).mean()

    def augment(self, batch: Batch, states: tuple[Tensor, Tensor] | None,
                gen: torch.Generator) -> tuple[Batch, tuple[Tensor, Tensor] | None]:
        """Each sample mirrored left-right and/or up-down with probability 1/2: the mirror image of a mesh is a new
        shape of the same silhouette statistics, so the stages see every shape and its mirror images at no render."""
        flips = torch.rand(len(batch), len(MIRRORS), generator=gen) < 0.5
        y, x = batch.y.clone(), batch.x.clone()
        x_t, y_t = (states[0].clone(), states[1].clone()) if states is not None else (None, None)
        for k, (sign, dim) in enumerate(MIRRORS):
            m = flips[:, k].to(y.device)
            y[m] = y[m].flip(dim)
            x[m] = x[m] * sign.to(x)
            if x_t is not None:
                x_t[m], y_t[m] = x_t[m] * sign.to(x_t), y_t[m].flip(dim)
        return Batch(y, x, batch.ctx), None if states is None else (x_t, y_t)

    def symmetries(self) -> list[Mirror]:
        """The identity and the three mirrors of the scene in the camera's axes (`solver.symmetries`)."""
        return list(SYMMETRIES)

    # --- learned parts -------------------------------------------------------------------------------
    def make_update(self, inputs: list[str], model: DictConfig) -> nn.Module:
        return pose_update(inputs, self.camera.size, model)

    def make_initializer(self, model: DictConfig) -> nn.Module:
        return PoseInitializer(self.camera.size, model, self.space)

    # --- command line ----------------------------------------------------------------------------------
    def from_cli(self, args: argparse.Namespace, command: str) -> list[Task]:
        keys = self.object_keys(args, command)
        return [self.setting(**keys)] if keys else [self]

    def load_observation(self, args: argparse.Namespace) -> Batch:
        name = user_mesh(args.mesh)
        return Batch(read_silhouette(args.silhouette, self.camera.size), None, {"mesh": [name]})

    def write_solution(self, x: Tensor, batch: Batch, args: argparse.Namespace) -> list[Path]:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        q, t = x[0, :4], x[0, 4:]
        angle = float(degrees(roma.unitquat_geodesic_distance(q[None], self.initial(batch)[:1, :4]))[0])
        info = {"quaternion_xyzw": q.tolist(), "translation": t.tolist(), "rotation_from_canonical_deg": angle,
                "mesh": batch.ctx["mesh"][0], "camera": vars(self.camera) | {"looks_along": "-z, y up"}}
        print(f"pose: quaternion (xyzw) {np.round(q.numpy(), 4).tolist()}, "
              f"translation {np.round(t.numpy(), 4).tolist()}")
        (out / "pose.json").write_text(json.dumps(info, indent=2) + "\n")
        render = self.forward(x[:1], batch.ctx)[0, 0].numpy() > 0.5
        seen = batch.y[0, 0].numpy() > 0.5
        overlay = np.zeros(seen.shape + (3,), dtype=np.uint8)
        overlay[..., 0] = seen * 255  # input: red; final render: green; both: yellow
        overlay[..., 1] = render * 255
        Image.fromarray(overlay).save(out / "overlay.png")
        return [out / "pose.json", out / "overlay.png"]


def read_silhouette(path: str | Path, size: int) -> Tensor:
    """A single-channel binary mask of the trained size, as a (1, 1, S, S) 0/1 tensor."""
    path = Path(path)
    img = open_image(path, "silhouette")
    if img.mode not in ("1", "L", "I;16", "I", "P") and not (img.mode in ("RGB", "RGBA") and _grey(img)):
        raise ValueError(f"silhouette {path} has mode {img.mode}: give a single-channel binary mask")
    if img.size != (size, size):
        raise ValueError(f"silhouette {path} is {img.size[0]}x{img.size[1]}; the solver was trained on {size}x{size}")
    arr = np.asarray(img.convert("L"), dtype=np.float32)
    mask = arr > arr.max() / 2 if arr.max() > 0 else arr > 0
    if not mask.any():
        raise ValueError(f"silhouette {path} is empty (no foreground pixels)")
    if mask.all():
        raise ValueError(f"silhouette {path} is all foreground; the object must lie inside the image")
    return torch.from_numpy(mask.astype(np.float32))[None, None]


def _grey(img: Image.Image) -> bool:
    """An RGB(A) image whose three channels are equal is accepted as a mask."""
    arr = np.asarray(img.convert("RGB"))
    return bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())
