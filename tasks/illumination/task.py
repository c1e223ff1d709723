"""Light position (point light) or direction (directional light) from one shaded RGB image (Ma et al. 2020, Sec. 4.2).

x is the light relative to the object's centre in camera axes (x right, y up, z towards the camera): a point light's
position at a radius in [r_min, r_max], or the unit direction towards a directional light; both on the camera-side
half-space z >= 0. The mesh and its rotation are known (ctx); the material is grey and diffuse.

Two programs: observations are pyrender's renders (`render`); the solver's forward model relights the scene's
geometry buffer, rasterised once per sample into ctx["scene"] (`feedback_solver.render.relight`), in batched,
differentiable torch whose cost does not grow with the mesh.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import roma
import torch
from omegaconf import DictConfig
from PIL import Image
from torch import Tensor, nn

from feedback_solver.images import opaque_rgb, open_image
from feedback_solver.problem import Batch, Task
from feedback_solver.render import relight
from feedback_solver.render.gl import object_to_camera
from feedback_solver.render.objects import ObjectScenes, mesh, user_mesh
from feedback_solver.render.shaded import KINDS, Lighting, ShadedRenderer, shaded_renderer
from feedback_solver.spaces import Shell
from tasks.illumination import mitsuba, options
from tasks.illumination.nets import LightInitializer, light_update

SPLIT_OFFSETS = {"train": 0, "val": 5_555_555, "val_unseen": 7_777_777, "test": 9_999_991}
BACKGROUND_DEPTH = 1.5  # depth-head target off the object (object depths are within +-1 of its centre)
SHADOW_POINTS = 16_384  # surface points per mesh that cast the relit directional shadows


class IlluminationTask(ObjectScenes, Task):
    """One light of a known kind lighting a known mesh; `settings()` gives the point and the directional task."""

    name = "illumination"
    splits = tuple(SPLIT_OFFSETS)  # val_unseen: robosuite's held-out robots, with task.robosuite.enabled=true
    mitsuba = staticmethod(mitsuba.optimise)
    cli_options = staticmethod(options.add_cli_options)

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)  # the camera and the objects (ObjectScenes)
        t = cfg.task
        if str(t.light) not in KINDS:
            raise ValueError(f"task.light must be one of {KINDS}, got {t.light!r}")
        if self.forward_model not in ("relit", "pyrender"):
            raise ValueError(f"task.forward.{self.light} must be relit or pyrender, got {self.forward_model!r}")

    # --- settings ------------------------------------------------------------------------------
    @functools.cached_property
    def light(self) -> str:
        """The light kind, read from the config (the one place it is kept; --light writes it there). Settings are
        read once: a task's config does not change after it is built (`setting` builds a new task)."""
        return str(self.cfg.task.light)

    @functools.cached_property
    def forward_model(self) -> str:
        """relit (the geometry buffer relit in torch) or pyrender (every call a render), per light kind."""
        return str(self.cfg.task.forward[self.light])

    @property
    def differentiable(self) -> bool:
        return self.forward_model == "relit"

    @property
    def report_name(self) -> str:
        return f"{self.name}_{self.light}"

    @property
    def checkpoint_dir(self) -> Path:
        return Path(__file__).parent / "checkpoints" / self.light

    def check_checkpoint(self, cfg: DictConfig, path: Path) -> None:
        if str(cfg.task.light) != self.light:
            raise ValueError(f"checkpoint {path} was trained for {cfg.task.light} lights, not {self.light}; "
                             f"pass --light {cfg.task.light} or another checkpoint")

    # --- physics -----------------------------------------------------------------------------
    @functools.cached_property
    def space(self) -> Shell:
        t = self.cfg.task
        if self.light == "point":
            return Shell(float(t.radius[0]), float(t.radius[1]), float(t.min_z))
        return Shell(1.0, 1.0, float(t.min_z))

    @functools.cached_property
    def lighting(self) -> Lighting:
        t = self.cfg.task
        return Lighting(self.light, float(t.intensity[self.light]), float(t.albedo), bool(t.shadows),
                        int(t.shadow_map))

    def check_light(self, x: Tensor) -> None:
        """A light off the allowed domain is refused with the domain spelled out."""
        self.space.check(x, f"{self.light} light")
        bad = ~self.space.contains(x)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"{self.light} light {np.round(x[i].tolist(), 4).tolist()} is off the allowed domain "
                             f"({self.space.describe()}; camera-side, relative to the object's centre)")

    def _render(self, x: Tensor, ctx: dict[str, Any], method: str) -> np.ndarray:
        params = torch.cat([x.detach().cpu().double(), ctx["rotation"].detach().cpu().double()], 1)
        return self.render_objects(partial(shaded_renderer, self.camera, self.lighting), ctx["mesh"], params, method)

    def render(self, x: Tensor, ctx: dict[str, Any]) -> Tensor:
        """pyrender's images of each sample's mesh, at its rotation, under its light: the observations, grey
        (B x 1 x S x S in [0, 1], 8 bits; its three channels are equal, a grey material under a white light)."""
        self.check_light(x)
        return ShadedRenderer.decode(self._render(x, ctx, "render_array")).to(x.device).mean(1, keepdim=True)

    def forward(self, x: Tensor, ctx: dict[str, Any]) -> Tensor:
        """The relit images of the samples' geometry buffers (ctx["scene"], made here when a batch has none), or
        pyrender's renders under task.forward=pyrender."""
        if self.forward_model == "pyrender":
            return self.render(x, ctx)
        return self.relit(x, ctx, self.relit_shadows)

    def relit(self, x: Tensor, ctx: dict[str, Any], shadows: bool) -> Tensor:
        """The relit images under lights x, with or without the directional depth-map shadows."""
        self.check_light(x)
        if "scene" not in ctx:
            ctx["scene"] = self.scene(ctx)
        lt = self.lighting
        return relight.relight(ctx["scene"], x, self.light, self.centre, lt.intensity, lt.albedo, shadows)

    @functools.cached_property
    def centre(self) -> Tensor:
        """The object's centre in camera axes."""
        return torch.tensor([0.0, 0.0, -self.camera.distance])

    @functools.cached_property
    def relit_shadows(self) -> bool:
        """Whether the relit directional model draws shadows (its depth map of surface points; task.relit_shadows)."""
        return self.light == "directional" and self.lighting.shadows and bool(self.cfg.task.relit_shadows)

    def energy(self, y_pred: Tensor, y_obs: Tensor) -> Tensor:
        """Mean squared residual; for a relit directional model without shadows, the pixels darker in the
        observation than in the model (its shadows and acne) weighted by task.dark_weight."""
        r = y_obs - y_pred
        if self.light == "point" or self.forward_model == "pyrender" or self.relit_shadows:
            return r.flatten(1).square().mean(1)
        return self.one_sided(r).flatten(1).square().mean(1)

    def one_sided(self, r: Tensor) -> Tensor:
        """Residuals (observation minus model) whose negative part, a pixel darker than the model, is weighted by
        sqrt(task.dark_weight)."""
        return torch.where(r > 0, r, r * math.sqrt(float(self.cfg.task.dark_weight)))

    def polish_residual(self, x: Tensor, ctx: dict[str, Any], y_obs: Tensor) -> Tensor:
        """What solver.polish minimises: for directional lights the observation minus the relit image without
        shadows on the pixels the object covers, its negative part (a pixel darker than the unshadowed model: a
        shadow, or pyrender's shadow acne, which no model of ours draws exactly) weighted by sqrt(task.dark_weight);
        point lights cast no shadows."""
        if self.light == "point" or self.forward_model == "pyrender":
            return super().polish_residual(x, ctx, y_obs)
        relit = self.relit(x, ctx, shadows=False)
        scene = ctx["scene"]  # the object's pixels only: elsewhere both images are black
        return self.one_sided(scene.gather(y_obs) - scene.gather(relit))

    def scene(self, ctx: dict[str, Any]) -> relight.Batched:
        """The samples' geometry buffers (and shadow casters for directional lights), rasterised once."""
        poses = torch.cat([ctx["rotation"].detach().cpu().double(), torch.zeros(len(ctx["mesh"]), 3).double()], 1)
        mats = object_to_camera(poses, self.camera.distance)
        shadows = self.relit_shadows
        out = []
        for name, pose in zip(ctx["mesh"], mats):
            casters = surface_points(name) if shadows else None
            buf = relight.GBuffer.of(mesh(name), pose, self.camera.focal, self.camera.size, casters)
            if not len(buf):
                raise ValueError(f"mesh {name}: no pixel of the {self.camera.size}x{self.camera.size} image sees it "
                                 "at this rotation (it leaves the frame or shows only back faces)")
            out.append(buf)
        return relight.batched(out)

    def depth(self, ctx: dict[str, Any]) -> Tensor:
        """The depth head's target: depth relative to the object's centre, BACKGROUND_DEPTH off the object."""
        x = self.initial(Batch(torch.zeros(len(ctx["mesh"]), 1), None, ctx))
        d = torch.from_numpy(self._render(x, ctx, "depth_array")).unsqueeze(1)
        return torch.where(d > 0, d - self.camera.distance, torch.full_like(d, BACKGROUND_DEPTH))

    # --- data ----------------------------------------------------------------------------------
    def random_lights(self, n: int, gen: torch.Generator) -> Tensor:
        """Uniform directions on the camera-side half-sphere (z >= min_z), point lights at a uniform radius."""
        u = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=torch.float64), dim=1)
        u[:, 2] = u[:, 2].abs()
        x = self.space.project(u)
        if self.light == "point":
            lo, hi = (float(r) for r in self.cfg.task.radius)
            x = nn.functional.normalize(x, dim=1) * (lo + (hi - lo) * torch.rand(n, 1, generator=gen, dtype=x.dtype))
        return x.float()

    def sample(self, n: int, split: str, seed: int) -> Batch:
        gen = torch.Generator().manual_seed(int(seed) + SPLIT_OFFSETS[split])
        names = self.objects.pick(n, split, gen)
        x = self.random_lights(n, gen)
        rot = roma.quat_normalize(torch.randn(n, 4, generator=gen))  # uniform over SO(3)
        if not self.cfg.task.random_rotation:
            rot = torch.tensor([[0.0, 0.0, 0.0, 1.0]]).expand(n, 4).clone()
        ctx: dict[str, Any] = {"mesh": names, "rotation": rot}
        y = self.render(x, ctx)
        if self.forward_model == "relit":
            ctx["scene"] = self.scene(ctx)
        if split != "test":  # the depth head's target (training only)
            ctx["depth"] = self.depth(ctx)
        return Batch(y, x, ctx)

    def initial(self, batch: Batch) -> Tensor:
        """A light on the camera's axis: the constant start of the solver and of the optimisers."""
        x = torch.zeros(len(batch), 3, device=batch.y.device)
        x[:, 2] = 1.0 if self.light == "directional" else sum(float(r) for r in self.cfg.task.radius) / 2
        return x

    def restart_starts(self, batch: Batch, count: int) -> Tensor:
        """Lights on a ring `task.restart_polar` deg off the camera's axis, `count` azimuths: the stages were trained
        from the axis, so a start on the far side of the object can reach a light the axis start cannot."""
        polar = math.radians(float(self.cfg.task.restart_polar))
        az = torch.arange(count, dtype=torch.float32) * (2 * math.pi / count)
        ring = torch.stack([math.sin(polar) * az.cos(), math.sin(polar) * az.sin(),
                            torch.full_like(az, math.cos(polar))], 1)
        axis = self.initial(batch)  # (B, 3): the radius (point) or unit length (directional) of the constant start
        return ring[:, None, :].to(axis) * axis.norm(dim=1)[None, :, None]

    def describe_data(self, split: str) -> str:
        t = self.cfg.task
        where = self.objects.source(split)
        light = (f"point lights at radius {t.radius[0]}-{t.radius[1]}" if self.light == "point"
                 else "directional lights" + (" with shadows" if t.shadows else ""))
        rot = "random object rotations" if t.random_rotation else "canonical object pose"
        return (f"{len(self.names(split))} {split} objects ({where}); {light} on the camera-side half-sphere; "
                f"{rot}; {t.size}x{t.size} grey images")

    # --- evaluation ----------------------------------------------------------------------------
    def metrics(self, x_pred: Tensor, x_true: Tensor, ctx: dict[str, Any]) -> dict[str, Tensor]:
        """light_mse: mean over the three coordinates of the squared error of the position (or direction)."""
        return {"light_mse": (x_pred - x_true).pow(2).mean(1)}

    def forward_gap(self, batch: Batch) -> str | None:
        """The relit images against pyrender's, both under the true lights."""
        if batch.x is None or self.forward_model == "pyrender":
            return None
        with torch.no_grad():
            diff = (self.forward(batch.x, batch.ctx) - batch.y).abs().flatten(1).mean(1) * 255
        mean, median, worst = (float(v) for v in (diff.mean(), diff.median(), diff.max()))
        return (f"the relit images under the true lights differ from pyrender's by {mean:.2f}/255 (mean absolute, "
                f"per pixel; per sample median {median:.2f}, max {worst:.2f})")

    def is_outlier(self, metrics: dict[str, Tensor]) -> Tensor:
        return metrics["light_mse"] > float(self.cfg.task.outlier_mse[self.light])

    def loss(self, x_pred: Tensor, x_true: Tensor, ctx: dict[str, Any]) -> Tensor:
        return (x_pred - x_true).pow(2).mean()

    def auxiliary_loss(self, aux: dict[str, Tensor], batch: Batch) -> Tensor:
        """MSE of the depth head against the true depth, area-averaged to the head's resolution."""
        pred = aux["depth"]
        target = nn.functional.adaptive_avg_pool2d(batch.ctx["depth"].to(pred.device), pred.shape[-2:])
        return float(self.cfg.task.depth_weight) * (pred - target).pow(2).mean()

    # --- learned parts -----------------------------------------------------------------------------
    def make_update(self, inputs: list[str], model: DictConfig) -> nn.Module:
        return light_update(inputs, self.camera.size, model, bool(self.cfg.task.traced_nets))

    def make_initializer(self, model: DictConfig) -> nn.Module:
        return LightInitializer(self.camera.size, model, self.space)

    # --- command line ----------------------------------------------------------------------------------
    def from_cli(self, args: argparse.Namespace, command: str) -> list[Task]:
        """--light, or for bench without it both light kinds (each its own space, checkpoints and report)."""
        chosen = getattr(args, "light", None)
        lights = [chosen] if chosen else list(KINDS) if command == "bench" else [self.light]
        return [self.setting(light=k, **self.object_keys(args, command)) for k in lights]

    def load_observation(self, args: argparse.Namespace) -> Batch:
        name = user_mesh(args.mesh)
        rot = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
        ctx = {"mesh": [name], "rotation": rot}
        if self.forward_model == "relit":
            ctx["scene"] = self.scene(ctx)
        return Batch(read_image(args.image, self.camera.size), None, ctx)

    def write_solution(self, x: Tensor, batch: Batch, args: argparse.Namespace) -> list[Path]:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        light = x[0].tolist()
        what = "position" if self.light == "point" else "direction"
        print(f"{self.light} light {what} (camera axes, from the object's centre): {np.round(light, 4).tolist()}")
        info = {"light": self.light, what: light, "mesh": batch.ctx["mesh"][0],
                "camera": vars(self.camera) | {"looks_along": "-z, y up"}}
        (out / "light.json").write_text(json.dumps(info, indent=2) + "\n")
        render = self.forward(x[:1], batch.ctx)[0]
        side = torch.cat([batch.y[0], render], 2).expand(3, -1, -1).permute(1, 2, 0).numpy()
        Image.fromarray((side * 255).round().astype(np.uint8)).save(out / "input_vs_render.png")
        return [out / "light.json", out / "input_vs_render.png"]


def read_image(path: str | Path, size: int) -> Tensor:
    """An image of the trained size as a grey (1, 1, S, S) tensor in [0, 1] (the model is grey: channels averaged)."""
    path = Path(path)
    img = open_image(path, "image")
    if img.size != (size, size):
        raise ValueError(f"image {path} is {img.size[0]}x{img.size[1]}; the solver was trained on {size}x{size}")
    arr = np.asarray(opaque_rgb(img, path, "image"), dtype=np.float32) / 255.0
    if arr.max() == 0:
        raise ValueError(f"image {path} is black: nothing is lit")
    return torch.from_numpy(arr).mean(2)[None, None]


@functools.cache
def surface_points(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A mesh's shadow casters, drawn once per process."""
    return relight.surface(mesh(name), SHADOW_POINTS)
