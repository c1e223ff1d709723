"""Config layers: core defaults < task defaults < variant < overrides; bad keys and values are refused by name."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from feedback_solver.config import DEFAULTS, config_dir, load_config, task_defaults


def test_plugin_without_a_config_file_uses_its_default_config(toy_cls):
    assert not (config_dir() / "toy.yaml").exists()
    assert OmegaConf.to_container(task_defaults(toy_cls)) == toy_cls.default_config


def test_layers_merge_in_order(toy_cls):
    cfg = load_config(toy_cls)
    assert cfg.train.batch_size == 64 and cfg.model.hidden == 64  # task default over core default (128)
    assert cfg.train.lr_final == 1e-4
    assert cfg.train.val_samples == 128 and cfg.baselines.rel_tol == DEFAULTS["baselines"]["rel_tol"]  # core default
    assert cfg.solver.damping.max_halvings == 4


def test_overrides_merge_and_keep_siblings(toy_cls):
    cfg = load_config(toy_cls, ["train.lr=0.5", "solver.steps=6", "solver.damping.enabled=false", "seed=3",
                                "feedback.inputs=[y,gradient]"])
    assert cfg.train.lr == 0.5 and cfg.solver.steps == 6 and cfg.seed == 3
    assert cfg.solver.damping.enabled is False and cfg.solver.damping.max_halvings == 4
    assert list(cfg.feedback.inputs) == ["y", "gradient"]  # a list override replaces, it does not append
    assert cfg.train.batch_size == 64 and cfg.solver.mode == "stagewise"


def test_variant_then_overrides(toy_cls):
    cfg = load_config(toy_cls, [], "feedback_shared")
    assert cfg.solver.mode == "shared" and cfg.train.schedule == "joint" and cfg.train.iterations == 300
    assert cfg.model.hidden == 64
    cfg = load_config(toy_cls, ["train.iterations=7"], "feedback_shared")
    assert cfg.train.iterations == 7 and cfg.solver.mode == "shared"
    assert load_config(toy_cls, [], "regression").solver.steps == 0
    assert list(load_config(toy_cls, [], "feedback_gradient").feedback.inputs) == ["y", "gradient", "x"]
    assert load_config(toy_cls, [], "feedback") == load_config(toy_cls, [])


def test_unknown_variant_is_refused_listing_the_known_ones(toy_cls):
    with pytest.raises(KeyError, match=r"no variant 'nope'.*feedback_shared"):
        load_config(toy_cls, [], "nope")


@pytest.mark.parametrize("override,key", [
    ("bogus.key=1", "bogus.key"),
    ("train.itrations=5", "train.itrations"),
    ("solver.damping.halvings=2", "solver.damping.halvings"),
    ("model.hidden_size=3", "model.hidden_size"),
])
def test_unknown_key_is_refused_by_name(toy_cls, override, key):
    with pytest.raises(KeyError, match=rf"unknown config key '{key}'"):
        load_config(toy_cls, [override])


def test_override_without_equals_is_refused(toy_cls):
    with pytest.raises(ValueError, match="not of the form key=value"):
        load_config(toy_cls, ["train.lr"])


@pytest.mark.parametrize("overrides,variant,pattern", [
    (["solver.mode=foo"], None, r"solver\.mode.*'foo'"),
    (["solver.init=random"], None, r"solver\.init.*'random'"),
    (["solver.steps=-1"], None, r"solver\.steps must be >= 0, got -1"),
    (["solver.steps=abc"], None, r"solver\.steps must be an integer, got 'abc'"),
    (["solver.steps=2.5"], None, r"solver\.steps must be an integer"),
    (["feedback.inputs=[bogus]"], None, r"feedback\.inputs: unknown \['bogus'\]"),
    (["feedback.inputs=[y,residuals]"], None, r"feedback\.inputs: unknown \['residuals'\]"),
    (["train.schedule=progressive"], "feedback_shared", r"train\.schedule=progressive needs solver\.mode=stagewise"),
    (["solver.mode=shared"], None, r"train\.schedule=progressive needs solver\.mode=stagewise"),
    (["train.schedule=sometimes"], None, r"train\.schedule.*'sometimes'"),
    (["train.supervision=half"], None, r"train\.supervision.*'half'"),
])
def test_invalid_values_are_refused_naming_the_key(toy_cls, overrides, variant, pattern):
    with pytest.raises(ValueError, match=pattern):
        load_config(toy_cls, overrides, variant)


def test_progressive_shared_with_one_step_is_allowed(toy_cls):
    cfg = load_config(toy_cls, ["solver.mode=shared", "solver.steps=1"])
    assert cfg.solver.mode == "shared"


def test_loaded_config_is_struct(toy_cls):
    cfg = load_config(toy_cls)
    with pytest.raises(Exception):
        cfg.train.not_a_key = 1
