"""torchrun: 2-rank training keeps replicas identical and learns, a killed run resumes to the same weights, and a
2-rank benchmark writes the report a 1-rank one does. Runs real `torchrun --nproc_per_node=2` jobs (gloo, CPU)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file

from feedback_solver import distributed
from feedback_solver.checkpoints import read_model
from feedback_solver.distributed import Dist, resolve_device
from feedback_solver.solver import FeedbackSolver
from feedback_solver.train import data_seed, train

TRAIN = ["train.iterations=400", "train.checkpoint_every=10", "train.log_every=50", "train.val_samples=64",
         "train.batch_size=64"]
BENCH = ["--samples", "120", "bench.slow_samples=30", "bench.batch_size=50", "bench.slow_batch_size=10",
         "--methods", "feedback,feedback_no_damping,regression,adam,lbfgs,hybrid"]
TIMINGS = {"seconds_per_sample", "forward_seconds_per_sample", "per_step", "command", "ranks", "times_feedback",
           "time_curve"}


def launch(args: list[str], cwd: Path, ranks: int = 2, **popen) -> list[str]:
    """The command line: torchrun with `ranks` CPU workers on this host, or plain fbsolve for one rank."""
    if ranks == 1:
        return [sys.executable, "-m", "feedback_solver.cli", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
            "-m", "feedback_solver.cli", *args]


def run(args: list[str], cwd: Path, ranks: int = 2) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(launch(args, cwd, ranks), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    # the head too: a rank that dies first says why there, before the others' tracebacks fill the tail
    err = proc.stderr if len(proc.stderr) <= 6000 else f"{proc.stderr[:3000]}\n[...]\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{err}"
    return proc


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """An uninterrupted 2-rank training of the toy plugin: the reference for every resume test."""
    root = tmp_path_factory.mktemp("ddp")
    out = root / "ref.safetensors"
    run(["train", "toy", "--out", str(out), *TRAIN], root)
    return root, out


# --- sharding -----------------------------------------------------------------------------------------------
@given(n=st.integers(0, 300), chunk=st.integers(1, 64), world=st.integers(1, 8))
def test_ranks_own_whole_chunks_covering_every_sample_once_in_order(n, chunk, world):
    owned = [Dist(rank=r, world_size=world).chunks(n, chunk) for r in range(world)]
    flat = [i for slices in owned for s in slices for i in range(s.start, s.stop)]
    assert flat == list(range(n))
    assert all(s.start % chunk == 0 for slices in owned for s in slices)
    assert owned[0] == Dist().chunks(n, chunk) if world == 1 else True


def test_no_two_ranks_draw_the_same_training_samples(toy_task):
    assert data_seed(3, 1, 7) == data_seed(3, 1, 7, rank=0, world_size=1)  # one rank: the seeds of shipped runs
    seeds = {data_seed(0, p, it, r, 4) for p in range(3) for it in range(200) for r in range(4)}
    assert len(seeds) == 3 * 200 * 4
    a, b = (toy_task.sample(32, "train", data_seed(0, 0, 5, r, 2)) for r in (0, 1))
    assert not torch.isclose(a.x[:, None], b.x[None]).all(-1).any()


# --- devices ------------------------------------------------------------------------------------------------
def test_device_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert resolve_device("auto", 0).type == "cuda"
    else:
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="no CUDA device is visible.*device=cpu or device=auto"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")


def test_bad_device_in_config_is_refused(toy_cfg):
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        toy_cfg("device=gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_trained_checkpoint_solves_on_the_cpu_and_back(toy_task, toy_cfg, tmp_path):
    path = train(toy_task, toy_cfg("device=cuda", *TRAIN[:1]), tmp_path / "gpu.safetensors", progress=False)
    batch = toy_task.sample(64, "test", 0)
    cpu = FeedbackSolver.from_checkpoint(toy_task, path=path).solve(batch.y, batch.ctx).x
    gpu = FeedbackSolver.from_checkpoint(toy_task, path=path).to("cuda").solve(batch.y.cuda(), batch.to("cuda").ctx).x
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-4)


def test_one_process_is_a_one_rank_world():
    dist = distributed.setup("cpu") if not distributed.launched_by_torchrun() else None
    assert dist == Dist() and dist.gather("x") == ["x"] and dist.mean(2.5) == 2.5


def test_ranks_that_disagree_stop_before_any_collective(monkeypatch):
    two = Dist(rank=0, world_size=2)
    monkeypatch.setattr(Dist, "gather", lambda self, v: [v, (0, 20, "ab12")])
    two.agree("x", (0, 20, "ab12"))  # the same on both ranks: nothing happens
    with pytest.raises(RuntimeError, match=r"ranks disagree on the resume point .*rank 0: \(0, 10, 'ab12'\); "
                                           r"rank 1: \(0, 20, 'ab12'\)"):
        two.agree("the resume point", (0, 10, "ab12"))


def test_one_rank_decides_alone_and_its_refusal_is_a_value_error():
    assert Dist().decide(lambda: 7) == 7
    with pytest.raises(ValueError, match="no state"):
        Dist().decide(lambda: (_ for _ in ()).throw(ValueError("no state")))


# --- 2-rank training ----------------------------------------------------------------------------------------
def test_two_ranks_keep_identical_weights_and_learn(two_rank_run, toy_task):
    _, out = two_rank_run
    _, cfg, meta = read_model(out, "toy")
    assert meta["world_size"] == 2 and meta["samples_per_second"] > 0
    assert len(meta["rank_digests"]) == 2 and len(set(meta["rank_digests"])) == 1
    assert meta["rank_digests"][0] == distributed.digest(FeedbackSolver.from_checkpoint(toy_task, path=out))
    for phase, losses in meta["loss"].items():
        assert len(losses) == 8 and losses[-1] < 0.8 * losses[0], (phase, losses)
    assert not out.with_name(out.name + ".state.pt").exists()


def children(pid: int) -> list[int]:
    """Live child processes of `pid` (Linux /proc), the torchrun agent's workers."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    """Running (a zombie that nobody reaped has stopped for good)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_two_rank_run_resumes_to_the_same_weights(two_rank_run):
    """torchrun SIGKILLed mid-run: its workers die with it (none goes on writing the state as an orphan), and the
    resumed ranks all load the one state rank 0 read, so the resumed run ends at the uninterrupted run's weights."""
    root, ref = two_rank_run
    out = root / "killed.safetensors"
    state = out.with_name(out.name + ".state.pt")
    args = ["train", "toy", "--out", str(out), *TRAIN]
    proc = subprocess.Popen(launch(args, root), cwd=root, env=os.environ | {"OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    workers = children(proc.pid)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun only: its workers run in sessions of their own
    proc.wait()
    assert len(workers) == 2, f"expected torchrun's two workers, found {workers}"
    gone = time.monotonic() + 10
    while any(alive(w) for w in workers) and time.monotonic() < gone:
        time.sleep(0.05)
    assert not any(alive(w) for w in workers), "a worker outlived its killed torchrun agent"
    assert state.exists() and not out.exists(), "the run should have been killed after its first checkpoint"
    run(["train", "toy", "--out", str(out), *TRAIN, "--resume"], root)
    assert max_diff(weights(ref), weights(out)) <= 1e-6
    assert not state.exists() and not state.with_name(state.name + ".lock").exists()


def test_two_ranks_resumed_from_a_state_refuse_another_world_size(two_rank_run):
    root, _ = two_rank_run
    out = root / "one_rank.safetensors"
    run(["train", "toy", "--out", str(out), *TRAIN, "train.stop_after=20"], root, ranks=1)
    proc = subprocess.run(launch(["train", "toy", "--out", str(out), *TRAIN, "--resume"], root), cwd=root,
                          env=os.environ | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and not out.exists()
    assert proc.stderr.count("written by a 1-rank run and this one has 2; resume it with 1 rank") == 1  # rank 0's
    assert 'feedback_solver/' not in proc.stderr, "no traceback of ours (torchrun prints its own summary)"


def test_stop_after_then_resume_matches_the_uninterrupted_run(two_rank_run):
    root, ref = two_rank_run
    out = root / "paused.safetensors"
    proc = run(["train", "toy", "--out", str(out), *TRAIN, "train.stop_after=555"], root)
    assert "continue with --resume" in proc.stdout and not out.exists()
    run(["train", "toy", "--out", str(out), *TRAIN, "--resume"], root)
    assert max_diff(weights(ref), weights(out)) <= 1e-6


# --- 2-rank benchmark ---------------------------------------------------------------------------------------
def strip(report):
    """The report without its timings and command line, which legitimately differ between runs."""
    if isinstance(report, dict):
        return {k: strip(v) for k, v in report.items() if k not in TIMINGS}
    return report


def test_two_rank_bench_writes_the_one_rank_report(two_rank_run):
    root, ref = two_rank_run
    ckpt = root / "ckpt"
    ckpt.mkdir(exist_ok=True)
    (ckpt / "feedback.safetensors").write_bytes(ref.read_bytes())
    run(["train", "toy", "--variant", "regression", "--out", str(ckpt / "regression.safetensors"),
         "train.init_iterations=100"], root, ranks=1)
    run(["bench", "toy", "--out", str(root / "one"), "--checkpoints", str(ckpt), *BENCH], root, ranks=1)
    run(["bench", "toy", "--out", str(root / "two"), "--checkpoints", str(ckpt), *BENCH], root, ranks=2)
    one, two = (json.loads((root / d / "toy.json").read_text()) for d in ("one", "two"))
    assert (one["ranks"], two["ranks"]) == (1, 2)
    assert strip(one) == strip(two)  # every metric, bit for bit, and the same method order
    assert list(one["methods"]) == list(two["methods"]) and list(one["subset"]["methods"]) == ["feedback", "adam",
                                                                                              "lbfgs", "hybrid"]
    assert (root / "two" / "toy.md").is_file() and (root / "two" / "toy_steps.png").is_file()
