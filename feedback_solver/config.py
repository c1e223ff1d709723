"""Configs: core defaults < configs/<task>.yaml (or the plugin's default_config) < variant < key=value overrides."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from feedback_solver.feedback import INPUTS

DEFAULTS: dict[str, Any] = {
    "task": {},
    "seed": 0,
    "device": "auto",  # auto: this rank's GPU when CUDA is present, else the CPU
    "model": {},
    "feedback": {"inputs": ["y", "y_t", "residual"]},
    "solver": {
        "steps": 4,
        "mode": "stagewise",
        "init": "constant",
        "damping": {"enabled": True, "max_halvings": 4, "factor": 0.5},
        # > 0: samples whose final energy exceeds energy_above are solved again from the task's `starts` other
        # starts, keeping each sample's lowest-energy run (an inference setting: it applies to any checkpoint)
        "restarts": {"starts": 0, "energy_above": 0.0},
        # true: at inference each step is the mean of the update net's steps on the feedback under each of the
        # task's symmetries (Task.symmetries), mapped back; an inference setting like restarts
        "symmetries": False,
    },
    "train": {
        "schedule": "progressive",
        "supervision": "deep",
        "batch_size": 128,
        "iterations": 1000,
        "init_iterations": 1000,
        "finetune_iterations": 0,
        "lr": 1e-3,
        "lr_final": 1e-5,
        "checkpoint_every": 200,
        "log_every": 100,
        "val_samples": 256,
        "warm_start": False,  # stage-wise progressive: stage t starts from stage t-1's trained weights
        "pool": 0,  # > 0: progressive phases train on this many fixed samples with cached states (costly forwards)
        "stop_after": 0,  # > 0: save the state and stop after this many iterations (time-limited jobs); --resume
        "init_from": "",  # a checkpoint of the same task: start from its tensors whose names and shapes fit (fine-tune)
        "augment": False,  # pool minibatches pass through task.augment (a symmetry: mirrored scenes for pose)
    },
    "bench": {
        "samples": 500,
        "slow_samples": 50,
        "methods": ["feedback", "regression", "adam", "lbfgs"],
        "demo_methods": None,  # `fbsolve demo`'s methods when the full list is too slow for a demo (None: all)
        "batch_size": 500,  # samples per learned-solver call; ranks split the test set in whole chunks
        "slow_batch_size": 25,  # samples per optimiser call (Adam is batched; L-BFGS goes one by one anyway)
        "primary_metric": "",
        "curve_steps": 0,  # > the trained steps: the subset's feedback run goes this far (error-against-step plot)
        # a task's own learned methods by report name: {checkpoint, off: [switches], steps}; `feedback`, `regression`,
        # every variant and `<method>_no_<damping|restarts|symmetry>` need no entry
        "learned": {},
    },
    "baselines": {
        "max_iterations": 500,
        "patience": 20,
        "rel_tol": 1e-6,
        "prior_weight": 0.0,
        "adam": {"lr": 0.01},
        "lbfgs": {"lr": 1.0, "history_size": 20, "tolerance_grad": 1e-7, "tolerance_change": 1e-9},  # torch's
        "energy_scale": 1.0,  # L-BFGS minimises this x the energy (a per-pixel mean has gradients near its tolerance)
        "hybrid": "lbfgs",
        "hybrid_overrides": {},  # merged into `baselines` for the hybrid's run (e.g. a smaller optimiser step)
        "start": "initial",  # initial: the task's constant start | learned: the shipped solver's learned x0
    },
    "variants": {},
}


def config_dir() -> Path:
    """configs/ of this checkout, or FBSOLVE_CONFIG_DIR."""
    return Path(os.environ.get("FBSOLVE_CONFIG_DIR", Path(__file__).resolve().parents[1] / "configs"))


def task_defaults(task_cls: type) -> DictConfig:
    """The task's own config file if the checkout has one, else the plugin's default_config."""
    path = config_dir() / f"{task_cls.name}.yaml"
    return OmegaConf.load(path) if path.is_file() else OmegaConf.create(dict(task_cls.default_config))


def known_key(cfg: DictConfig, key: str) -> bool:
    """A key of the config, or one of `baselines` under `baselines.hybrid_overrides`."""
    hybrid = "baselines.hybrid_overrides."
    if key.startswith(hybrid):
        key = "baselines." + key[len(hybrid):]
    return OmegaConf.select(cfg, key, default="__missing__") != "__missing__"


def load_config(task_cls: type, overrides: list[str] | None = None, variant: str | None = None) -> DictConfig:
    """Merge the layers and validate; an unknown override key is an error, not silently ignored."""
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), task_defaults(task_cls))
    if variant and variant != "feedback":
        if variant not in cfg.variants:
            raise KeyError(f"task {task_cls.name!r} has no variant {variant!r} (known: {', '.join(cfg.variants)})")
        cfg = OmegaConf.merge(cfg, cfg.variants[variant])
    OmegaConf.set_struct(cfg, True)
    OmegaConf.set_struct(cfg.baselines.hybrid_overrides, False)  # its keys are those of `baselines`, checked below
    OmegaConf.set_struct(cfg.bench.learned, False)  # a task's (or the command line's) own learned methods
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key = item.split("=", 1)[0]
        if not known_key(cfg, key) and not key.startswith("bench.learned."):
            raise KeyError(f"unknown config key {key!r} in override {item!r}")
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides or []))
    validate(cfg)
    return cfg


def flat_keys(node: DictConfig, prefix: str) -> list[str]:
    """Dotted paths of a config node's leaves."""
    keys = []
    for k, v in node.items():
        keys += flat_keys(v, f"{prefix}.{k}") if isinstance(v, DictConfig) else [f"{prefix}.{k}"]
    return keys


def validate(cfg: DictConfig) -> None:
    """Refuse inconsistent settings with a message that names the key."""
    s = cfg.solver
    if s.mode not in ("shared", "stagewise"):
        raise ValueError(f"solver.mode must be shared or stagewise, got {s.mode!r}")
    if s.init not in ("constant", "learned"):
        raise ValueError(f"solver.init must be constant or learned, got {s.init!r}")
    if isinstance(s.steps, bool) or not isinstance(s.steps, int) or s.steps < 0:
        raise ValueError(f"solver.steps must be an integer >= 0, got {s.steps!r}")
    r = s.restarts
    if isinstance(r.starts, bool) or not isinstance(r.starts, int) or r.starts < 0:
        raise ValueError(f"solver.restarts.starts must be an integer >= 0, got {r.starts!r}")
    if not isinstance(r.energy_above, (int, float)) or not r.energy_above >= 0:
        raise ValueError(f"solver.restarts.energy_above must be a number >= 0, got {r.energy_above!r}")
    if not isinstance(s.symmetries, bool):
        raise ValueError(f"solver.symmetries must be true or false, got {s.symmetries!r}")
    for key in flat_keys(cfg.baselines.hybrid_overrides, "baselines.hybrid_overrides"):
        if not known_key(cfg, key):
            raise KeyError(f"{key}: not a key of baselines")
    for name, entry in cfg.bench.learned.items():
        extra = set(entry) - {"checkpoint", "off", "steps"} if isinstance(entry, DictConfig) else {"(not a mapping)"}
        if extra or "checkpoint" not in entry:
            raise ValueError(f"bench.learned.{name}: give checkpoint and optionally off, steps; got {sorted(entry)}")
    bad = [k for k in cfg.feedback.inputs if k not in INPUTS]
    if bad:
        raise ValueError(f"feedback.inputs: unknown {bad}; choose from {list(INPUTS)}")
    t = cfg.train
    if isinstance(t.pool, bool) or not isinstance(t.pool, int) or t.pool < 0:
        raise ValueError(f"train.pool must be an integer >= 0, got {t.pool!r}")
    if isinstance(t.stop_after, bool) or not isinstance(t.stop_after, int) or t.stop_after < 0:
        raise ValueError(f"train.stop_after must be an integer >= 0, got {t.stop_after!r}")
    dev = str(cfg.device).lower()
    if dev not in ("auto", "cpu", "cuda") and not (dev.startswith("cuda:") and dev[5:].isdigit()):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    if t.schedule not in ("progressive", "joint"):
        raise ValueError(f"train.schedule must be progressive or joint, got {t.schedule!r}")
    if t.schedule == "progressive" and s.mode == "shared" and s.steps > 1:
        raise ValueError("train.schedule=progressive needs solver.mode=stagewise (shared weights train jointly)")
    if cfg.baselines.start not in ("initial", "learned"):
        raise ValueError(f"baselines.start must be initial or learned, got {cfg.baselines.start!r}")
    if t.supervision not in ("deep", "final", "ends"):
        raise ValueError(f"train.supervision must be deep, final or ends, got {t.supervision!r}")
