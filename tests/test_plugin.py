"""An out-of-tree plugin (tests/plugin_pkg/fbs_toy) goes through every `fbsolve` command like a built-in task.

The plugin is registered by one entry-point line in fbs_toy-0.1.dist-info; nothing in feedback_solver/ or tasks/
mentions it. The CLI runs as a subprocess with tests/plugin_pkg on PYTHONPATH (set by conftest.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from feedback_solver import registry
from feedback_solver.solver import build_solver

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METHODS = ["feedback", "regression", "adam", "lbfgs"]


def fbsolve(*args: str, cwd: Path, env: dict[str, str] | None = None, check: bool = True):
    """Run the installed console script (or the module, if the venv has none) in a fresh process."""
    script = Path(sys.executable).parent / "fbsolve"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "feedback_solver.cli"]
    full_env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} | (env or {})
    proc = subprocess.run([*cmd, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, f"fbsolve {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


def test_plugin_is_registered_beside_the_builtin_task():
    found = registry.available()
    assert {"ik", "toy"} <= set(found)
    assert found["toy"].value == "fbs_toy.task:ToyTask"
    cls = registry.task_class("toy")
    assert cls.name == "toy" and cls.__module__ == "fbs_toy.task"
    assert REPO / "tests" / "plugin_pkg" in Path(sys.modules[cls.__module__].__file__).parents


def test_toy_task_contract(toy_task, toy_cfg, tmp_path, monkeypatch):
    a, b = toy_task.sample(16, "train", 5), toy_task.sample(16, "train", 5)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, toy_task.sample(16, "train", 6).x)
    assert not torch.equal(a.x, toy_task.sample(16, "val", 5).x)
    assert a.x.shape == (16, 4) and a.y.shape == (16, 8) and a.x.abs().max() <= 1
    assert torch.equal(toy_task.forward(a.x, {}), a.y)
    assert torch.equal(toy_task.initial(a), torch.zeros(16, 4))
    err = toy_task.metrics(a.x + 0.3, a.x, {})["error"]
    assert torch.allclose(err, torch.full((16,), 0.6)) and toy_task.is_outlier({"error": err}).all()
    assert not toy_task.is_outlier({"error": err - 0.2}).any()
    assert toy_task.space.low == -1.5 and toy_task.space.high == 1.5
    # checkpoint_dir: config key over environment over the package folder
    monkeypatch.delenv("FBS_TOY_CHECKPOINTS", raising=False)
    assert toy_task.checkpoint_dir == REPO / "tests" / "plugin_pkg" / "fbs_toy" / "checkpoints"
    monkeypatch.setenv("FBS_TOY_CHECKPOINTS", str(tmp_path / "env"))
    assert toy_task.checkpoint_dir == tmp_path / "env"
    cls = type(toy_task)
    assert cls(toy_cfg(f"task.checkpoint_dir={tmp_path / 'key'}")).checkpoint_dir == tmp_path / "key"


def test_no_core_file_mentions_the_plugin():
    core = [*(REPO / "feedback_solver").rglob("*.py"), *(REPO / "tasks").rglob("*.py"), REPO / "setup.cfg"]
    assert core
    assert not [p for p in core if "fbs_toy" in p.read_text(encoding="utf-8")]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """`fbsolve tasks`, train feedback and regression, then bench: the commands a plugin's user would type."""
    root = tmp_path_factory.mktemp("cli")
    ckpt, out = root / "ckpt", root / "bench"
    listing = fbsolve("tasks", cwd=root)
    # checkpoint_dir moved by the environment for one variant and by the config key for the other
    fbsolve("train", "toy", cwd=root, env={"FBS_TOY_CHECKPOINTS": str(ckpt)})
    fbsolve("train", "toy", "--variant", "regression", f"task.checkpoint_dir={ckpt}", cwd=root)
    bench = fbsolve("bench", "toy", "--out", str(out), "--samples", "40", "--methods", ",".join(METHODS),
                    "--checkpoints", str(ckpt), "bench.slow_samples=30", cwd=root)
    return {"root": root, "ckpt": ckpt, "out": out, "listing": listing.stdout, "bench": bench.stdout}


def test_fbsolve_tasks_lists_the_plugin(cli_run):
    lines = {line.split()[0]: line.split()[1] for line in cli_run["listing"].splitlines() if line.strip()}
    assert lines.get("toy") == "fbs_toy.task:ToyTask"
    assert lines.get("ik") == "tasks.ik.task:IKTask"


def test_fbsolve_train_writes_checkpoints_where_told(cli_run):
    assert sorted(p.name for p in cli_run["ckpt"].iterdir()) == ["feedback.safetensors", "regression.safetensors"]
    assert not (REPO / "tests" / "plugin_pkg" / "fbs_toy" / "checkpoints").exists()


def test_fbsolve_bench_writes_the_report_schema(cli_run):
    out = cli_run["out"]
    assert {p.name for p in out.iterdir()} >= {"toy.json", "toy.md", "toy_steps.png"}
    assert (out / "toy_steps.png").read_bytes()[:8] == PNG_MAGIC
    md = (out / "toy.md").read_text()
    assert "feedback" in md and "lbfgs" in md and "toy_steps.png" in md
    assert md.strip() in cli_run["bench"]
    res = json.loads((out / "toy.json").read_text())
    assert res["task"] == "toy" and res["seed"] == 0 and res["primary_metric"] == "error"
    assert "40 samples" in res["data"]
    assert set(res["methods"]) == {"feedback", "regression"}
    assert res["subset"]["samples"] == 30 and set(res["subset"]["methods"]) == {"feedback", "adam", "lbfgs"}
    for group, n in ((res["methods"], 40), (res["subset"]["methods"], 30)):
        for name, m in group.items():
            assert set(m["metrics"]) == {"error"}, name
            assert set(m["metrics"]["error"]) == {"mean", "median", "std"}, name
            assert all(isinstance(v, float) and v >= 0 for v in m["metrics"]["error"].values()), name
            assert 0.0 <= m["outlier_rate"] <= 1.0, name
            assert isinstance(m["steps"], float) and m["seconds_per_sample"] > 0 and m["samples"] == n, name
            assert "forward_seconds_per_sample" in m, name
    fb = res["methods"]["feedback"]
    assert fb["steps"] == 3.0 and 0 < fb["forward_seconds_per_sample"] <= fb["seconds_per_sample"]
    assert fb["energy_monotone"] == 1.0
    per = fb["per_step"]  # the runtime breakdown: one entry per step and the final scoring call
    assert len(per["forward_seconds_per_sample"]) == len(per["update_seconds_per_sample"]) == 4
    assert all(v >= 0 for v in per["forward_seconds_per_sample"] + per["update_seconds_per_sample"])
    assert 0 < per["forward_fraction"] < 1 and "## Time per step (feedback)" in md
    assert res["methods"]["regression"]["steps"] == 0.0
    assert res["subset"]["methods"]["adam"]["forward_seconds_per_sample"] is None


def test_learned_solver_beats_its_start_and_the_untrained_solver(cli_run, toy_cls, toy_cfg):
    res = json.loads((cli_run["out"] / "toy.json").read_text())
    fb = res["methods"]["feedback"]
    initial = fb["curve"]["mean"][0]  # x0 = zeros, the task's constant start
    assert fb["curve"]["step"] == [0, 1, 2, 3]
    assert fb["metrics"]["error"]["mean"] < 0.25 * initial
    assert fb["metrics"]["error"]["median"] < 0.25 * fb["curve"]["median"][0]
    cfg = toy_cfg()
    task = toy_cls(cfg)
    batch = task.sample(40, "test", res["seed"])
    torch.manual_seed(cfg.seed)
    untrained = task.metrics(build_solver(task, cfg).solve(batch.y, batch.ctx).x, batch.x, {})["error"].mean()
    assert fb["metrics"]["error"]["mean"] < 0.25 * float(untrained)
    assert fb["outlier_rate"] < 0.2
    # the learned solver also beats the initializer-only regression it is compared with in the report
    assert res["methods"]["regression"]["metrics"]["error"]["mean"] < 0.5 * initial


def test_fbsolve_train_refuses_an_unknown_key_by_name(tmp_path):
    proc = fbsolve("train", "toy", "bogus.key=1", cwd=tmp_path, check=False,
                   env={"FBS_TOY_CHECKPOINTS": str(tmp_path / "ckpt")})
    assert proc.returncode == 2
    assert "bogus.key" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "ckpt").exists()


def test_fbsolve_refuses_an_unregistered_task_listing_the_known_ones(tmp_path):
    proc = fbsolve("train", "nosuchtask", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "nosuchtask" in proc.stderr and "toy" in proc.stderr and "ik" in proc.stderr


def test_a_task_adds_its_own_optimiser_and_hybrid_runs_it(cli_run, toy_cls, toy_cfg, monkeypatch, tmp_path):
    """Task.optimisers(): a plugin's own baseline (a differentiable renderer, say) joins the report by name."""
    from feedback_solver.baselines import OPTIMISERS
    from feedback_solver.bench import run_bench

    calls: list[str] = []

    def slow_adam(task, y, ctx, x0, cfg):
        calls.append(float(cfg.baselines.adam.lr))
        return OPTIMISERS["adam"](task, y, ctx, x0, cfg)

    monkeypatch.setattr(toy_cls, "optimisers", lambda self: {"own": slow_adam})
    cfg = toy_cfg("baselines.hybrid=own", "bench.slow_samples=30", "baselines.hybrid_overrides.adam.lr=0.003")
    res = run_bench(toy_cls(cfg), cfg, tmp_path, ["feedback", "own", "hybrid"], samples=40, progress=False,
                    checkpoints=cli_run["ckpt"])
    sub = res["subset"]["methods"]
    assert set(sub) == {"feedback", "own", "hybrid"}
    assert set(calls) == {0.05, 0.003}  # the toy's Adam step for `own`, hybrid_overrides' for hybrid
    with pytest.raises(KeyError, match="baselines.hybrid_overrides.adam.nosuch"):
        toy_cfg("baselines.hybrid_overrides.adam.nosuch=1")
    assert sub["hybrid"]["steps"] > 0 and sub["own"]["seconds_per_sample"] > 0
    with pytest.raises(ValueError, match="unknown methods \\['mitsuba'\\]"):
        run_bench(toy_cls(cfg), cfg, tmp_path, ["mitsuba"], samples=4, progress=False)


def test_bench_merge_adds_methods_to_a_report_of_the_same_samples_and_refuses_others(cli_run, toy_cls, toy_cfg,
                                                                                      tmp_path):
    from feedback_solver.bench import run_bench

    cfg = toy_cfg("bench.slow_samples=30")
    args = dict(samples=40, progress=False, checkpoints=cli_run["ckpt"])
    first = run_bench(toy_cls(cfg), cfg, tmp_path, ["feedback", "adam"], command="run one", **args)
    both = run_bench(toy_cls(cfg), cfg, tmp_path, ["regression"], command="run two", merge=True, **args)
    assert set(both["methods"]) == {"feedback", "regression"}
    assert both["methods"]["feedback"] == first["methods"]["feedback"]  # kept, not re-run
    assert set(both["subset"]["methods"]) == {"feedback", "adam"} and "adam" in both["subset"]["match"]
    assert [r["command"] for r in both["runs"]] == ["run one", "run two"]
    md = (tmp_path / "toy.md").read_text()
    assert "Run 2: `run two` (regression)" in md
    assert "regression takes" not in md  # no time ratio across runs: they ran at other times
    with pytest.raises(ValueError, match="--merge: .*seed=0, this run 1"):
        run_bench(toy_cls(cfg), cfg, tmp_path, ["regression"], merge=True, seed=1, **args)


def test_fbsolve_bench_split_val_runs_on_the_validation_samples_and_says_so(cli_run):
    out = cli_run["root"] / "val"
    fbsolve("bench", "toy", "--out", str(out), "--samples", "8", "--methods", "feedback", "--split", "val",
            "--checkpoints", str(cli_run["ckpt"]), cwd=cli_run["root"])
    val, test = (json.loads((d / "toy.json").read_text()) for d in (out, cli_run["out"]))
    assert val["split"] == "val" and test["split"] == "test"
    assert val["data"].startswith("toy val split") and "(val split, not the test data)" in val["data"]
    assert "(val split" in (out / "toy.md").read_text()
    assert val["methods"]["feedback"]["metrics"] != test["methods"]["feedback"]["metrics"]
    bad = fbsolve("bench", "toy", "--split", "train", cwd=cli_run["root"], check=False)
    assert bad.returncode == 2 and "split must be one of ['val', 'test'], got 'train'" in bad.stderr


def test_an_optimiser_from_the_constant_start_beside_the_learned_start_and_at_equal_time(cli_run, toy_cls, toy_cfg,
                                                                                         monkeypatch, tmp_path):
    """`adam_initial` starts from Task.initial whatever baselines.start says; every subset method gets a time curve,
    and the report an equal-time table and plot."""
    from feedback_solver.bench import run_bench
    from feedback_solver.problem import Batch
    from feedback_solver.solver import FeedbackSolver

    monkeypatch.setattr(FeedbackSolver, "init", lambda self, y, ctx: self.task.initial(Batch(y, None, ctx)) + 0.5)
    cfg = toy_cfg("bench.slow_samples=10", "baselines.start=learned")
    res = run_bench(toy_cls(cfg), cfg, tmp_path, ["feedback", "adam", "adam_initial"], samples=10, progress=False,
                    checkpoints=cli_run["ckpt"])
    sub, metric = res["subset"]["methods"], res["primary_metric"]
    task = toy_cls(cfg)
    batch = task.sample(10, "test", cfg.seed)
    const = float(task.metrics(task.space.project(task.initial(batch)), batch.x, batch.ctx)[metric].mean())
    assert sub["adam_initial"]["curve"]["mean"][0] == pytest.approx(const, rel=1e-5)
    assert sub["adam"]["curve"]["mean"][0] != pytest.approx(const, rel=1e-3)  # the (patched) learned start
    for m in sub.values():
        seconds = m["time_curve"]["seconds"]
        assert len(seconds) == len(m["curve"]["step"]) and seconds == sorted(seconds) and seconds[-1] > 0
    assert "## Equal time (subset)" in (tmp_path / "toy.md").read_text() and (tmp_path / "toy_time.png").is_file()
