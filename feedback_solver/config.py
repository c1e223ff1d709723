"""Configs: core defaults < configs/<task>.yaml (or the plugin's default_config) < variant < key=value overrides,
merged onto the typed schema of feedback_solver/settings.py and checked once, here."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from feedback_solver.feedback import check_inputs
from feedback_solver.settings import NON_NEGATIVE, Config

#: the core defaults as a plain dict (the typed schema with its comments is feedback_solver/settings.py)
DEFAULTS: dict[str, Any] = OmegaConf.to_container(OmegaConf.structured(Config), enum_to_str=True)


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


def schema() -> DictConfig:
    """The typed defaults; `baselines` stays open for a task's own optimisers' sections (baselines.<optimiser>)."""
    cfg = OmegaConf.structured(Config)
    OmegaConf.set_struct(cfg.baselines, False)
    return cfg


def load_config(task_cls: type, overrides: list[str] | None = None, variant: str | None = None) -> DictConfig:
    """Merge the layers onto the schema and validate; an unknown key or a mistyped value is an error naming it."""
    try:
        return checked(task_cls, overrides or [], variant)
    except ConfigKeyError as err:
        raise KeyError(f"unknown config key {err.full_key!r}") from None
    except OmegaConfBaseException as err:
        raise ValueError(typed_message(err)) from None


def typed_message(err: OmegaConfBaseException) -> str:
    """omegaconf's several-line error as one line: the key, what it must be, what it got."""
    msg = str(err.msg).split("\n")[0]
    kind = re.search(r"converted to (\w+)", msg)
    choices = re.search(r"expected one of \[(.*)\]", msg)
    words = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string"}
    if kind:
        return f"{err.full_key} must be {words.get(kind.group(1), kind.group(1))}, got {err.value!r}"
    if choices:
        return f"{err.full_key} must be one of {choices.group(1)}, got {err.value!r}"
    if "not a valid bool" in msg:
        return f"{err.full_key} must be true or false, got {err.value!r}"
    return f"{err.full_key}: {msg}" if err.full_key else msg


def checked(task_cls: type, overrides: list[str], variant: str | None) -> DictConfig:
    """The merge itself; omegaconf's errors are reworded by load_config."""
    try:
        cfg = OmegaConf.merge(schema(), task_defaults(task_cls))
    except OmegaConfBaseException as err:
        path = config_dir() / f"{task_cls.name}.yaml"
        where = path if path.is_file() else f"{task_cls.__name__}.default_config"
        raise ValueError(f"{where}: {typed_message(err)}") from None
    if variant and variant != "feedback":
        if variant not in cfg.variants:
            raise KeyError(f"task {task_cls.name!r} has no variant {variant!r} (known: {', '.join(cfg.variants)})")
        cfg = OmegaConf.merge(cfg, cfg.variants[variant])
    OmegaConf.set_struct(cfg, True)
    OmegaConf.set_struct(cfg.baselines.hybrid_overrides, False)  # its keys are those of `baselines`, checked below
    OmegaConf.set_struct(cfg.bench.learned, False)  # new names welcome; each entry is a typed LearnedMethod
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key = item.split("=", 1)[0]
        if not known_key(cfg, key) and not key.startswith("bench.learned."):
            raise KeyError(f"unknown config key {key!r} in override {item!r}")
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    OmegaConf.set_struct(cfg, True)
    validate(cfg)
    return cfg


def flat_keys(node: DictConfig, prefix: str) -> list[str]:
    """Dotted paths of a config node's leaves."""
    keys = []
    for k, v in node.items():
        keys += flat_keys(v, f"{prefix}.{k}") if isinstance(v, DictConfig) else [f"{prefix}.{k}"]
    return keys


def validate(cfg: DictConfig) -> None:
    """What the schema's types cannot say: ranges, names and settings that must agree; the message names the key."""
    for key in NON_NEGATIVE:
        if not OmegaConf.select(cfg, key) >= 0:
            raise ValueError(f"{key} must be >= 0, got {OmegaConf.select(cfg, key)!r}")
    for key in flat_keys(cfg.baselines.hybrid_overrides, "baselines.hybrid_overrides"):
        if not known_key(cfg, key):
            raise KeyError(f"{key}: not a key of baselines")
    for name, entry in cfg.bench.learned.items():
        if OmegaConf.is_missing(entry, "checkpoint"):
            raise ValueError(f"bench.learned.{name}: give its checkpoint (and optionally off, steps)")
    check_inputs(list(cfg.feedback.inputs))
    dev = str(cfg.device).lower()
    if dev not in ("auto", "cpu", "cuda") and not (dev.startswith("cuda:") and dev[5:].isdigit()):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    if cfg.train.schedule == "progressive" and cfg.solver.mode == "shared" and cfg.solver.steps > 1:
        raise ValueError("train.schedule=progressive needs solver.mode=stagewise (shared weights train jointly)")
