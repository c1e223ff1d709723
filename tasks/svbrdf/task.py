"""Single-image SVBRDF capture (Luo et al. 2024): four material maps of a flat sample from one flash photo.

x: maps (B, 9, H, W) in the conventions of `tasks.svbrdf.render` (diffuse 3 and specular 3 in gamma space, roughness
1, normal x/y 2); y: the flash photo (B, 3, H, W) in [0, 1]. Training data are procedural materials (64 px crops);
the test sets are held-out procedural materials and the gk/fantasy texture sets of Debian's cube2-data, at 256 px.
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from feedback_solver.problem import Batch, Task
from feedback_solver.spaces import Maps
from tasks.svbrdf import capture, options, photos, procedural, render
from tasks.svbrdf.layout import HIGH, LOW
from tasks.svbrdf.nets import MapUpdate, UNetInitializer, to_channels_last

#: the procedural generator's seed ranges per split (data seeds are < 2^31, so the splits never share a material)
SPLIT_KEYS = {"train": 0, "val": 1, "test": 2}
DATA = options.DATA
MAP_SLICES = {"diffuse": slice(0, 3), "specular": slice(3, 6), "roughness": slice(6, 7)}
CHUNK = 4  # samples per evaluation render: 4 x 20 re-renders of 256 px is about 60 MB a tensor


class SVBRDFTask(Task):
    """Maps from a flash photo through the differentiable Cook-Torrance renderer; `settings()` gives both test sets."""

    name = "svbrdf"
    differentiable = True

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        if str(cfg.task.data) not in DATA:
            raise ValueError(f"task.data must be one of {DATA}, got {cfg.task.data!r}")
        self._space = Maps(LOW, HIGH)

    # --- settings --------------------------------------------------------------------------------
    @property
    def data(self) -> str:
        return str(self.cfg.task.data)

    @property
    def materials_dir(self) -> Path | None:
        """`task.materials` (bench --materials DIR): a user's folder of map sets for the real test set."""
        folder = str(self.cfg.task.get("materials") or "")
        return Path(folder) if folder else None

    @property
    def report_name(self) -> str:
        return f"{self.name}_{self.data}"

    # --- physics ---------------------------------------------------------------------------------
    @property
    def space(self) -> Maps:
        return self._space

    @property
    def inputs(self) -> int:
        """Photos per material: 1, the flash photo; N > 1 (feedback_multi), the camera and flash moved to N spots."""
        return int(self.cfg.task.inputs)

    def forward(self, x: Tensor, ctx: dict[str, Any]) -> Tensor:
        """The flash photo of the maps (camera and flash co-located above the sample's centre), or with N inputs the
        N photos taken from `task.input_positions` at the same height, stacked as (B, 3N, H, W)."""
        if self.inputs == 1:
            return render.to_photo(render.flash_shade(x, flash_intensity(ctx, x)))
        spots = torch.tensor([list(p) for p in self.cfg.task.input_positions[: self.inputs]], dtype=x.dtype)
        if len(spots) < self.inputs:
            raise ValueError(f"task.inputs={self.inputs} but task.input_positions lists only {len(spots)} spots")
        pos = torch.cat([spots, torch.full_like(spots[:, :1], render.CAMERA_HEIGHT)], 1).to(x.device)
        pos = pos.expand(x.shape[0], -1, -1)
        return render.to_photo(render.shade(x, pos, pos, flash_intensity(ctx, x))).flatten(1, 2)

    def energy_gradient(self, x: Tensor, y_obs: Tensor, ctx: dict[str, Any]) -> tuple[Tensor, Tensor] | None:
        """The flash photo's gradient in closed form (render.flash_energy_gradient), instead of autograd's pass."""
        if self.inputs != 1:
            return None
        grad, photo = render.flash_energy_gradient(x, y_obs, flash_intensity(ctx, x))
        # the retraction projects x + delta onto the bounds: autograd's min / max pass half the gradient at a tie
        low, high = (torch.tensor(b, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) for b in (LOW, HIGH))
        return torch.where((x == low) | (x == high), grad / 2, grad), photo

    def energy_parts(self, y_pred: Tensor, y_obs: Tensor) -> Tensor:
        """One squared-error part per input photo: the multi-image update net reads one gradient per photo."""
        return (y_pred - y_obs).view(y_obs.shape[0], self.inputs, -1).pow(2).mean(2)

    def for_checkpoint(self, cfg: DictConfig) -> "SVBRDFTask":
        """A checkpoint trained on N photos runs against the N-photo task."""
        inputs = int(cfg.task.get("inputs", 1))
        return self if inputs == self.inputs else self.setting(inputs=inputs)

    def observe(self, batch: Batch) -> Batch:
        """Photos of a batch's true maps as this task takes them (N photos for feedback_multi)."""
        if batch.x is None:
            raise ValueError(f"a solver trained on {self.inputs} photos needs {self.inputs} photos per material")
        ctx = {k: v for k, v in batch.ctx.items() if k != "exposure"}  # photos at the true exposure, then the estimate
        y = self.forward(batch.x, ctx)
        return Batch(y, batch.x, self.calibrate(y, ctx, unknown="exposure_true" in ctx))

    # --- data ------------------------------------------------------------------------------------
    def sample(self, n: int, split: str, seed: int) -> Batch:
        t = self.cfg.task
        if split == "test" and self.data == "real":
            x, names = photos.real_maps(int(t.size), n, seed, self.materials_dir, int(t.crops_per_material))
        else:
            size = int(t.size) if split == "test" else int(t.crop)
            key = SPLIT_KEYS[split] * 2**31 + int(seed)
            x = procedural.generate(n, size, key)
            names = [f"procedural/{split}/{seed}/{k}" for k in range(n)]
        gen = torch.Generator().manual_seed(int(seed) + 7919 * SPLIT_KEYS[split])
        light, view = render.random_pairs(len(x), int(t.loss_pairs.diffuse), int(t.loss_pairs.specular), gen)
        ctx = {"light": light, "view": view, "material": names}
        condition = str(t.get("capture") or "")
        if split == "test" and condition and self.inputs == 1:
            y, ctx["exposure_true"] = capture.degrade(x, condition, seed)
        else:
            y = self.forward(x, ctx)
        return Batch(y, x, self.calibrate(y, ctx, unknown=bool(condition)))

    def calibrate(self, y: Tensor, ctx: dict[str, Any], unknown: bool = True) -> dict[str, Any]:
        """The photo's exposure (`task.exposure: estimate`, capture.estimate_exposure) into ctx, where the forward
        model, the U-Net's input and the render metrics read it. `auto` estimates it where it is `unknown` (a user's
        photo, a capture condition) and keeps the training flash for the renderer's own photos; `nominal` never
        estimates it, nor does the multi-photo model (its nets, trained on raw photos, did worse on normalised ones)."""
        mode = str(self.cfg.task.get("exposure", "auto"))
        if self.inputs != 1 or mode == "nominal" or (mode == "auto" and not unknown):
            return ctx
        return ctx | {"exposure": capture.estimate_exposure(y)}

    def initial(self, batch: Batch) -> Tensor:
        """Constant maps (mid-grey diffuse, low grey specular, medium roughness, flat): the start without the U-Net."""
        b, _, h, w = batch.y.shape
        const = torch.tensor([0.5] * 3 + [0.2] * 3 + [0.5, 0.0, 0.0], device=batch.y.device)
        return const.view(1, 9, 1, 1).expand(b, 9, h, w).clone()

    def describe_data(self, split: str) -> str:
        t = self.cfg.task
        if split == "test" and self.data == "real":
            src = str(self.materials_dir) if self.materials_dir else "gk/fantasy texture sets of Debian's cube2-data"
            return f"{src}, {t.crops_per_material} crops per material, {t.size}x{t.size} flash photos"
        size = t.size if split == "test" else t.crop
        return f"procedural materials ({split} split, never seen in training), {size}x{size} flash photos"

    # --- evaluation ------------------------------------------------------------------------------
    def renders(self, x: Tensor, exposure: Tensor | None = None) -> Tensor:
        """Photos of the maps under the evaluation's light/view pairs: (B, K, 3, H, W), the same K for every method;
        `exposure` (B,) scales the light (the answer's estimated exposure over the photo's true one)."""
        t = self.cfg.task
        light, view = render.quad_pairs(int(t.eval_pairs), int(t.eval_seed), x.device)
        return render.to_photo(render.shade(x, light, view, intensity(exposure, x)))  # (1, K, 3): geometry once a batch

    @staticmethod
    def relative_exposure(ctx: dict[str, Any] | None) -> Tensor | None:
        """The estimated exposure over the true one (B,), at which an answer's renders are compared with the truth's
        at the nominal flash: None where the solve assumed the nominal flash of a nominal photo."""
        ctx = ctx or {}
        est, true = ctx.get("exposure"), ctx.get("exposure_true")
        if est is None and true is None:
            return None
        return (1.0 if est is None else est) / (1.0 if true is None else true)

    def metrics(self, x_pred: Tensor, x_true: Tensor, ctx: dict[str, Any]) -> dict[str, Tensor]:
        """RMSE of each map (albedos in gamma space, normals as unit vectors / 2) and of re-renders; render LPIPS."""
        out = {f"{k}_rmse": rmse(x_pred[:, s], x_true[:, s]) for k, s in MAP_SLICES.items()}
        out["normal_rmse"] = rmse(render.decode(x_pred)[3] / 2, render.decode(x_true)[3] / 2)
        out |= self.render_metrics(x_pred, x_true, ctx=ctx)
        return out

    @torch.no_grad()
    def render_metrics(self, x_pred: Tensor, x_true: Tensor, lpips: bool = True,
                       ctx: dict[str, Any] | None = None) -> dict[str, Tensor]:
        """Render RMSE and LPIPS averaged over the evaluation pairs (the answer at its relative exposure), in chunks
        to bound memory."""
        rel = self.relative_exposure(ctx)
        rm, lp = [], []
        for lo in range(0, len(x_pred), CHUNK):
            part = None if rel is None else rel[lo:lo + CHUNK]
            a, b = self.renders(x_pred[lo:lo + CHUNK], part), self.renders(x_true[lo:lo + CHUNK])
            rm.append(render_rmse(a, b))
            if lpips:
                from feedback_solver.lpips import lpips_alex

                lp.append(lpips_alex()(a.flatten(0, 1), b.flatten(0, 1)).view(a.shape[0], a.shape[1]).mean(1))
        out = {"render_rmse": torch.cat(rm)}
        if lpips:
            out["render_lpips"] = torch.cat(lp)
        return out

    @torch.no_grad()
    def curve_metric(self, xs: list[Tensor], x_true: Tensor, ctx: dict[str, Any], name: str) -> list[Tensor]:
        """Render RMSE renders the true maps once per chunk for every state (LPIPS per step would dominate the time)."""
        if name != "render_rmse":
            return super().curve_metric(xs, x_true, ctx, name)
        parts: list[list[Tensor]] = [[] for _ in xs]
        rel = self.relative_exposure(ctx)
        for lo in range(0, len(x_true), CHUNK):
            b = self.renders(x_true[lo:lo + CHUNK])
            scale = None if rel is None else rel[lo:lo + CHUNK]
            for part, x in zip(parts, xs):
                part.append(render_rmse(self.renders(x[lo:lo + CHUNK], scale), b))
        return [torch.cat(p) for p in parts]

    def groups(self, batch: Batch) -> list[str] | None:
        """Per-material rows for real map sets (several crops each); procedural materials are one sample each."""
        names = batch.ctx.get("material") or []
        if not names or not all("/crop" in n for n in names):
            return None
        return [n.rsplit("/crop", 1)[0] for n in names]

    def loss(self, x_pred: Tensor, x_true: Tensor, ctx: dict[str, Any]) -> Tensor:
        """Log-L1 of renders under the batch's random light/view pairs (Deschaintre et al.), plus a small map L1."""
        light, view = ctx["light"].to(x_pred), ctx["view"].to(x_pred)
        a, b = render.shade(x_pred, light, view), render.shade(x_true, light, view)
        loss = (torch.log(a + 0.01) - torch.log(b + 0.01)).abs().mean()
        return loss + float(self.cfg.task.map_weight) * (x_pred - x_true).abs().mean()

    # --- learned parts -----------------------------------------------------------------------------
    def make_update(self, inputs: list[str], model: DictConfig) -> nn.Module:
        return to_channels_last(MapUpdate(inputs, int(model.hidden), int(model.stride), float(model.step),
                                          float(model.grad_scale), parts=self.inputs))

    def make_initializer(self, model: DictConfig) -> nn.Module:
        return to_channels_last(UNetInitializer(list(model.unet_channels)))

    # --- command line ------------------------------------------------------------------------------
    @classmethod
    def add_cli_options(cls, parser: argparse.ArgumentParser, command: str) -> None:
        options.add_cli_options(parser, command)

    def from_cli(self, args: argparse.Namespace, command: str) -> list[Task]:
        """solve --size; bench --materials DIR (the real set from a user's folder), --data, or both test sets."""
        if command != "bench":
            return [self.setting(size=int(args.size))] if getattr(args, "size", None) else [self]
        if getattr(args, "materials", None):
            return [self.setting(data="real", materials=str(args.materials))]
        return [self.setting(data=d) for d in ([args.data] if getattr(args, "data", None) else DATA)]

    def load_observation(self, args: argparse.Namespace) -> Batch:
        if self.inputs != 1:
            raise ValueError("fbsolve solve svbrdf takes one flash photo (task.inputs=1); the multi-photo model "
                             "is benchmarked on rendered inputs only")
        y = photos.read_photo(args.image, int(self.cfg.task.size))
        for warning in photos.flash_warnings(y, args.image):
            warnings.warn(warning, stacklevel=2)
        ctx = self.calibrate(y, {"material": [str(args.image)]})
        if "exposure" in ctx:
            print(f"estimated exposure: {float(ctx['exposure'][0]):.3g}x the training flash (the maps are those of "
                  "the photo at that exposure; task.exposure=nominal assumes the training flash)")
        return Batch(y, None, ctx)

    def write_solution(self, x: Tensor, batch: Batch, args: argparse.Namespace) -> list[Path]:
        exposure = batch.ctx.get("exposure")  # the re-renders at the photo's estimated exposure, as the photo
        return photos.write_maps(x, batch.y, Path(args.out), lambda m: self.renders(m, exposure),
                                 lambda m: self.forward(m, batch.ctx))


def flash_intensity(ctx: dict[str, Any], x: Tensor) -> float | Tensor:
    """The flash's intensity per photo: the nominal one times `ctx["exposure"]` (B,) where a solve estimated it."""
    return intensity(ctx.get("exposure"), x)


def intensity(exposure: Tensor | None, x: Tensor) -> float | Tensor:
    """The nominal flash intensity, times an exposure per sample (B,) where one is given."""
    return render.FLASH_INTENSITY if exposure is None else render.FLASH_INTENSITY * exposure.to(x)


def render_rmse(a: Tensor, b: Tensor) -> Tensor:
    """Per sample: the RMSE of each re-render (B, K, 3, H, W), averaged over the K light/view pairs."""
    return (a - b).pow(2).flatten(2).mean(2).sqrt().mean(1)


def rmse(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).pow(2).flatten(1).mean(1).sqrt()
