"""The example plugin (examples/arm_ik, installed by `make test` with its own `pip install -e`): registered by its
entry point alone, trained, solved and benchmarked through `fbsolve`, and the learned solver beats regression."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from feedback_solver import registry
from feedback_solver.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "arm_ik"
#: a short schedule: the defaults train in about a minute, this in a third of that
QUICK = ["train.init_iterations=300", "train.iterations=120", "train.pool=4096", "train.log_every=60",
         "train.checkpoint_every=300", "train.val_samples=64"]


def test_the_example_is_a_small_plugin_installed_on_its_own():
    assert "arm_ik" in registry.available(), "examples/arm_ik is not installed: pip install -e examples/arm_ik"
    assert registry.available()["arm_ik"].value == "fbs_arm.task:ArmTask"
    lines = sum(len(p.read_text().splitlines()) for p in (EXAMPLE / "fbs_arm").glob("*.py"))
    assert lines <= 150, f"the example plugin has {lines} lines"


def test_the_example_trains_and_benches_through_the_cli_and_beats_regression(tmp_path, capsys):
    from fbs_arm.task import ArmTask

    from feedback_solver.problem import Task, unwritten

    assert unwritten(ArmTask) == [] and set(Task.__abstractmethods__) <= set(vars(ArmTask))
    ckpt = tmp_path / "ckpt"
    assert main(["train", "arm_ik", "--out", str(ckpt / "feedback.safetensors"), *QUICK]) == 0
    assert main(["train", "arm_ik", "--variant", "regression", "--out", str(ckpt / "regression.safetensors"),
                 *QUICK]) == 0
    out = tmp_path / "bench"
    assert main(["bench", "arm_ik", "--checkpoints", str(ckpt), "--out", str(out), "--samples", "100",
                 "bench.slow_samples=4", "baselines.max_iterations=40"]) == 0
    report = json.loads((out / "arm_ik.json").read_text())
    fb, reg = (report["methods"][m]["metrics"]["position_cm"] for m in ("feedback", "regression"))
    assert fb["mean"] < 0.8 * reg["mean"] and fb["median"] < 0.8 * reg["median"], (fb, reg)
    assert {"feedback", "adam", "lbfgs"} <= set(report["subset"]["methods"])
    assert (out / "arm_ik.md").exists() and list(out.glob("arm_ik*.png"))

    task = ArmTask(report_config())
    x_true = task.sample(1, "test", 3).x
    m = task.chain.forward_kinematics(x_true).get_matrix()[0]
    target = tmp_path / "target.json"
    target.write_text(json.dumps({"position": m[:3, 3].tolist(), "rotation": m[:3, :3].tolist()}))
    solved = tmp_path / "solved"
    assert main(["solve", "arm_ik", "--checkpoint", str(ckpt / "feedback.safetensors"), "--target", str(target),
                 "--out", str(solved)]) == 0
    joints = torch.tensor(list(json.loads((solved / "joints.json").read_text())["joints_rad"].values()))[None]
    home = task.initial(task.sample(1, "test", 3))
    reached, start = (float(task.metrics(x, x_true, {})["position_cm"]) for x in (joints, home))
    assert reached < 0.6 * start, (reached, start)  # the written answer is the solve's, far nearer than the start
    target.write_text("{}")
    assert main(["solve", "arm_ik", "--checkpoint", str(ckpt / "feedback.safetensors"), "--target", str(target),
                 "--out", str(solved)]) == 2
    assert "not a pose file" in capsys.readouterr().err


def report_config():
    from fbs_arm.task import ArmTask

    from feedback_solver.config import load_config

    return load_config(ArmTask)
