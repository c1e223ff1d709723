"""Checkpoints without pickled code: safetensors for shipped weights, weights-only torch files for training state."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from feedback_solver.errors import one_line

FORMAT = "feedback_solver/1"
SEAL = "sha256"  # header field: seal() of the tensors and the other fields


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Write to a temporary file beside `path`, then rename: a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; checkpoints are shared files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def seal(tensors: dict[str, torch.Tensor], header: dict[str, str]) -> str:
    """SHA-256 of every tensor (name, dtype, shape, bytes) and every header field but the seal itself."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    for key in sorted(k for k in header if k != SEAL):
        h.update(f"{key}={header[key]}|".encode())
    return h.hexdigest()


def save_model(path: str | os.PathLike, model: nn.Module, task: str, cfg: DictConfig, meta: dict[str, Any]) -> Path:
    """Weights plus the config that rebuilds the model, the task name that guards against misuse, and their seal."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    header = {"format": FORMAT, "task": task, "config": OmegaConf.to_yaml(cfg), "meta": json.dumps(meta)}
    return write_sealed(path, tensors, header)


def write_sealed(path: str | os.PathLike, tensors: dict[str, torch.Tensor], header: dict[str, str]) -> Path:
    """Write tensors and header atomically with the SHA-256 that read_model checks."""
    header = {k: v for k, v in header.items() if k != SEAL} | {SEAL: seal(tensors, header)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def verify(path: Path, tensors: dict[str, torch.Tensor], header: dict[str, str]) -> None:
    """Refuse a sealed checkpoint whose bytes no longer match its seal."""
    if seal(tensors, header) != header[SEAL]:
        raise ValueError(f"checkpoint {path} is corrupt: its tensors or settings do not match the SHA-256 it carries "
                         "(a damaged or altered byte); copy or train it again")


def read_model(path: str | os.PathLike, task: str) -> tuple[dict[str, torch.Tensor], DictConfig, dict[str, Any]]:
    """Read a model checkpoint, refusing files of another task, foreign files and truncated files by name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (train one with `fbsolve train {task}`)")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"checkpoint {path} is truncated or not a safetensors file: {err}") from err
    if SEAL in header:  # first: a damaged byte is named as such, whichever field it hit
        verify(path, tensors, header)
    if header.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} was not written by feedback_solver (format {header.get('format')!r})")
    if SEAL not in header:
        warnings.warn(f"checkpoint {path} carries no SHA-256 (written before checkpoints were sealed); it cannot be "
                      "verified", stacklevel=2)
    if header.get("task") != task:
        raise ValueError(f"checkpoint {path} belongs to task {header.get('task')!r}, not {task!r}")
    try:
        return tensors, OmegaConf.create(header["config"]), json.loads(header.get("meta", "{}"))
    except Exception as err:  # omegaconf and json raise many types for a damaged header
        raise ValueError(f"checkpoint {path} has an unreadable config or meta field ({type(err).__name__})") from err


def load_weights(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load weights strictly, naming the mismatch when the checkpoint's shape differs from the model's."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    wrong = [k for k in own if k in tensors and own[k].shape != tensors[k].shape]
    if missing or extra or wrong:
        detail = (f"missing {missing[:3]}" if missing else "") + (f" unexpected {extra[:3]}" if extra else "")
        detail += "".join(f" {k}: {tuple(tensors[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:3])
        raise ValueError(f"checkpoint {source} does not fit this model (another shape or config):{detail}")
    model.load_state_dict(tensors)


def matching(model: nn.Module, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors whose name and shape fit `model`."""
    own = model.state_dict()
    return sorted(k for k, v in tensors.items() if k in own and own[k].shape == v.shape)


def load_matching(model: nn.Module, tensors: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Copy the tensors whose name and shape fit `model` (a fine-tuning start); return (loaded, skipped) names."""
    fit = matching(model, tensors)
    model.load_state_dict({k: tensors[k] for k in fit}, strict=False)
    return fit, sorted(set(model.state_dict()) - set(fit))


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Training state (weights, optimiser, position in the schedule) for --resume."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read training state with weights_only=True, so a doctored file cannot run code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch.load raises many types (pickle, zip, struct, index) for a damaged file
        raise ValueError(f"training state {path} is truncated or corrupt ({type(err).__name__}: {one_line(err)}); "
                         "delete it to start afresh") from err
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"training state {path} is not a feedback_solver training state; delete it to start afresh")
    return state


def repeat_last_stage(src: str | os.PathLike, dst: str | os.PathLike, task: str, steps: int) -> Path:
    """A stage-wise checkpoint run for more steps: its last stage's net copied into the new ones, which is what a
    solve past the trained step count does (`StageNets.net`), made the checkpoint's own count; a later training run
    (train.init_from) can fine-tune the copies."""
    tensors, cfg, meta = read_model(src, task)
    trained = int(cfg.solver.steps)
    if str(cfg.solver.mode) != "stagewise" or steps <= trained:
        raise ValueError(f"checkpoint {src}: only a stage-wise checkpoint can be extended, to more than its {trained} "
                         f"steps (asked: {steps}, mode {cfg.solver.mode})")
    last = f"stages.nets.{trained - 1}."
    out = dict(tensors)
    for t in range(trained, steps):
        out |= {f"stages.nets.{t}." + k.removeprefix(last): v.clone() for k, v in tensors.items() if k.startswith(last)}
    cfg.solver.steps = steps
    meta = meta | {"extended": f"stages {trained}..{steps - 1} are copies of stage {trained - 1} (from {Path(src)})"}
    header = {"format": FORMAT, "task": task, "config": OmegaConf.to_yaml(cfg), "meta": json.dumps(meta)}
    return write_sealed(dst, out, header)


def set_steps(src: str | os.PathLike, dst: str | os.PathLike, task: str, steps: int, why: str) -> Path:
    """A shared-weight checkpoint run for another number of steps by default (its one net serves any count), the
    reason kept in its meta: the steps a solve runs are the checkpoint's, not the running config's."""
    tensors, cfg, meta = read_model(src, task)
    if str(cfg.solver.mode) != "shared" or steps < 1:
        raise ValueError(f"checkpoint {src}: only a shared-weight checkpoint runs any number >= 1 of its steps "
                         f"(asked: {steps}, mode {cfg.solver.mode})")
    meta = meta | {"steps": f"{steps} steps by default, trained unrolling {meta.get('trained_steps', cfg.solver.steps)}"
                   + (f": {why}" if why else "")}
    meta.setdefault("trained_steps", int(cfg.solver.steps))
    cfg.solver.steps = steps
    header = {"format": FORMAT, "task": task, "config": OmegaConf.to_yaml(cfg), "meta": json.dumps(meta)}
    return write_sealed(dst, tensors, header)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m feedback_solver.checkpoints", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("repeat-last-stage", help="run a stage-wise checkpoint for more steps (last stage copied)")
    r.add_argument("task")
    r.add_argument("src")
    r.add_argument("dst")
    r.add_argument("--steps", type=int, required=True)
    s = sub.add_parser("set-steps", help="run a shared-weight checkpoint for another number of steps by default")
    s.add_argument("task")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--steps", type=int, required=True)
    s.add_argument("--why", default="", help="the reason, kept in the checkpoint's meta")
    args = p.parse_args(argv)
    try:
        if args.command == "set-steps":
            print(set_steps(args.src, args.dst, args.task, args.steps, args.why))
        else:
            print(repeat_last_stage(args.src, args.dst, args.task, args.steps))
    except (FileNotFoundError, ValueError) as err:
        print(f"checkpoints: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
