"""What a new user types wrong gets one line on stderr and exit code 2 before any work; what is fine works.

Table-driven over the cases issue 27 lists; `fbsolve` runs in-process (cli.main), except where the import cost
itself is under test.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from feedback_solver import cli
from feedback_solver.progress import bar

CLIP = Path("/usr/share/assimp/models/BVH/01_03.bvh")
FAST = ["train.iterations=3", "train.init_iterations=3", "train.val_samples=8", "train.log_every=3",
        "train.checkpoint_every=3"]


def fbsolve(capsys, *args: str) -> tuple[int, str, str]:
    """cli.main in this process: (exit code, stdout, stderr)."""
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as stop:  # argparse's refusals
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *args: str, match: str) -> str:
    code, out, err = fbsolve(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip() and "warning" not in line]
    assert code == 2, f"exit {code}: {err[-800:]}"
    assert len(lines) == 1 and "Traceback" not in err, err
    assert match in lines[0], lines[0]
    return lines[0]


def clip(tmp_path: Path, frames: int, edit=None, extra_row: bool = False) -> Path:
    """The first `frames` frames of 01_03 (a CMU clip with the training skeleton), optionally edited."""
    text = CLIP.read_text()
    head, motion = text.split("MOTION\n", 1)
    rows = motion.splitlines()[2:]
    rows = rows[:frames + (1 if extra_row else 0)]
    if edit:
        rows = edit(rows)
    path = tmp_path / f"clip{frames}.bvh"
    path.write_text(head + f"MOTION\nFrames: {frames}\nFrame Time: 0.008333\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture
def photo(tmp_path) -> Path:
    rgb = np.random.default_rng(0).integers(40, 200, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    return tmp_path / "photo.png"


# --- solve: output paths, ranges, inputs -----------------------------------------------------------------------
def test_an_out_that_is_a_file_is_refused_before_any_work(capsys, tmp_path, photo, monkeypatch):
    taken = tmp_path / "taken"
    taken.write_text("a user's file")
    monkeypatch.setattr("feedback_solver.solver.FeedbackSolver.from_checkpoint",
                        lambda *a, **k: pytest.fail("solved anyway"))
    refused(capsys, "solve", "svbrdf", "--image", photo, "--out", taken, match=f"--out {taken} is a file")
    refused(capsys, "solve", "ik", "--bvh", clip(tmp_path, 20), "--out", taken, match="is a file, not a folder")
    refused(capsys, "bench", "toy", "--out", taken, match="is a file, not a folder")
    assert taken.read_text() == "a user's file"


@pytest.mark.parametrize("args, match", [
    (["solve", "svbrdf", "--image", "x.png", "--steps", "-1"], "argument --steps: must be >= 0, got -1"),
    (["solve", "svbrdf", "--image", "x.png", "--size", "17"], "argument --size: must lie in [64, 2048] pixels"),
    (["solve", "svbrdf", "--image", "x.png", "--size", "big"], "argument --size: must be an integer"),
    (["bench", "toy", "--samples", "0"], "argument --samples: must be >= 1, got 0"),
    (["solve", "ik", "--frames", "1-5"], "--frames must look like A:B"),
    (["train", "toy", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_out_of_range_arguments_are_refused_in_one_line(capsys, args, match):
    refused(capsys, *args, match=match)


def test_frames_beyond_the_clip_are_refused(capsys, tmp_path):
    path = clip(tmp_path, 150)
    refused(capsys, "solve", "ik", "--bvh", path, "--frames", "100:400", "--out", tmp_path / "o",
            match=f"--frames 100:400 does not lie in {path}'s 150 frames")
    refused(capsys, "solve", "ik", "--bvh", path, "--frames", "9:9", "--out", tmp_path / "o", match="0 <= A < B <= 150")


def test_a_nan_in_a_clip_is_refused_and_no_output_is_written(capsys, tmp_path):
    def poison(rows):
        rows[4] = " ".join(["nan", *rows[4].split()[1:]])
        return rows
    path = clip(tmp_path, 20, poison)
    refused(capsys, "solve", "ik", "--bvh", path, "--out", tmp_path / "o",
            match="motion row 5 holds NaN or infinite values")
    assert not (tmp_path / "o" / "ik_solution.bvh").exists()


def test_a_clip_with_one_row_more_than_its_frame_count_solves_with_a_warning(capsys, tmp_path):
    code, out, err = fbsolve(capsys, "solve", "ik", "--bvh", clip(tmp_path, 20, extra_row=True), "--frames", "1:6",
                             "--out", tmp_path / "o")
    assert code == 0, err
    assert "fbsolve: warning:" in err and "one row more than 'Frames: 20'" in err and "Traceback" not in err
    written = tmp_path / "o" / "ik_solution.bvh"
    assert written.is_file() and "nan" not in written.read_text()


def test_a_transparent_photo_is_refused(capsys, tmp_path):
    rgba = np.full((96, 96, 4), 120, np.uint8)
    rgba[:, :20, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    refused(capsys, "solve", "svbrdf", "--image", tmp_path / "cutout.png", "--out", tmp_path / "o",
            match="cutout.png has transparent pixels")


# --- train: outputs, resume, budgets -----------------------------------------------------------------------------
def test_train_never_replaces_a_checkpoint_without_overwrite(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FBS_TOY_CHECKPOINTS", str(tmp_path))
    shipped = tmp_path / "feedback.safetensors"
    shipped.write_bytes(b"shipped weights")
    refused(capsys, "train", "toy", *FAST, match=f"--out {shipped} exists; pass --overwrite")
    refused(capsys, "train", "toy", "--out", tmp_path, *FAST, match="is a folder; give the checkpoint's file name")
    assert shipped.read_bytes() == b"shipped weights"
    code, out, err = fbsolve(capsys, "train", "toy", "--overwrite", *FAST)
    assert code == 0, err
    assert shipped.read_bytes() != b"shipped weights" and f"wrote {shipped}" in out


def test_resume_without_a_state_is_an_error_and_the_plan_names_the_init_phase(capsys, tmp_path):
    out = tmp_path / "x.safetensors"
    refused(capsys, "train", "toy", "--out", out, "--resume", *FAST, match="--resume: no training state at")
    code, stdout, err = fbsolve(capsys, "train", "toy", "--variant", "regression", "--out", out, *FAST)
    assert code == 0, err
    assert "training plan" in stdout and "init 3" in stdout and "train.init_iterations" in stdout


def test_a_plugin_without_a_required_hook_is_told_which(capsys, tmp_path, toy_cls, monkeypatch):
    from feedback_solver.problem import Task

    monkeypatch.setattr(toy_cls, "sample", Task.sample)
    refused(capsys, "train", "toy", "--out", tmp_path / "x.safetensors", *FAST,
            match="task 'toy' (ToyTask) does not implement Task.sample")


def test_a_net_of_the_wrong_output_size_is_named_with_the_space(capsys, tmp_path, toy_cls, monkeypatch):
    real = toy_cls.make_update

    def narrow(self, inputs, model):
        net = real(self, inputs, model)
        forward = net.forward
        net.forward = lambda fb, h=None: (forward(fb, h)[0][:, :2], h)
        return net

    monkeypatch.setattr(toy_cls, "make_update", narrow)
    refused(capsys, "train", "toy", "--out", tmp_path / "x.safetensors", "solver.init=constant", *FAST,
            match="update net FlatUpdate (stage 0) returned a step of shape (64, 2); the space Euclidean takes (B, 4)")


def test_a_forward_model_that_returns_nan_is_named(capsys, tmp_path, toy_cls, monkeypatch):
    real_forward, real_sample = toy_cls.forward, toy_cls.sample

    def sample(self, n, split, seed):  # observations from the real forward model ...
        with monkeypatch.context() as m:
            m.setattr(toy_cls, "forward", real_forward)
            return real_sample(self, n, split, seed)

    monkeypatch.setattr(toy_cls, "sample", sample)
    monkeypatch.setattr(toy_cls, "forward", lambda self, x, ctx: torch.full((len(x), 8), float("nan")))  # ... NaN
    refused(capsys, "train", "toy", "--out", tmp_path / "x.safetensors", *FAST,
            match="task 'toy': forward() returned NaN or inf for the training samples' true parameters")


# --- start-up and progress -------------------------------------------------------------------------------------
def test_help_and_tasks_import_neither_torch_nor_a_task():
    code = ("import sys; from feedback_solver import cli\n"
            "for argv in (['--help'], ['solve', 'pose', '--help'], ['solve', 'svbrdf', '--help'],\n"
            "             ['bench', 'ik', '--help'], ['tasks']):\n"
            "    try: cli.main(argv)\n"
            "    except SystemExit: pass\n"
            "heavy = ('torch', 'numpy', 'omegaconf', 'tasks.pose.task', 'pyrender')\n"
            "print('HEAVY', sorted(m for m in heavy if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout and "--silhouette" in proc.stdout and "--image" in proc.stdout


def test_task_flags_of_the_light_options_match_the_tasks():
    from feedback_solver.render.shaded import KINDS
    from tasks.illumination.options import LIGHTS

    assert LIGHTS == KINDS


def test_progress_bars_are_silent_when_stderr_is_not_a_terminal():
    assert bar(range(3), True).disable  # pytest captures stderr: not a terminal
    assert bar(range(3), False).disable
