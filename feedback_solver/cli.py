"""`fbsolve`: list tasks, train, solve, benchmark, demo; every task through the same commands.

Only the standard library loads before the arguments are read: torch, the task and its renderer are imported by
the command that needs them, so `fbsolve --help` and `fbsolve tasks` answer at once.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any

from feedback_solver import registry
from feedback_solver.errors import Echo, OpenGLUnavailable, RanksDisagree

# what a user's input or environment can get wrong: one line on stderr and exit code 2, never a traceback
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, NotImplementedError, OSError, FloatingPointError,
               OpenGLUnavailable, RanksDisagree)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2), as every other refusal of the CLI."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def count(low: int):
    """An argparse type: an integer >= low."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


def base_parser() -> Parser:
    p = Parser(prog="fbsolve", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("tasks", help="list registered task plugins")
    t = sub.add_parser("train", help="train a solver (to the task's checkpoints/VARIANT.safetensors by default)")
    t.add_argument("--variant", default="feedback", help="config variant: feedback, feedback_shared, regression, ...")
    t.add_argument("--out", help="checkpoint path (default: the task's checkpoints/VARIANT.safetensors); an existing "
                                 "file, a shipped checkpoint above all, is replaced only with --overwrite")
    t.add_argument("--overwrite", action="store_true", help="replace --out if it exists (e.g. a shipped checkpoint)")
    t.add_argument("--resume", action="store_true", help="continue the interrupted run of <out>.state.pt")
    s = sub.add_parser("solve", help="solve a user's observation with a shipped checkpoint")
    s.add_argument("--checkpoint", help="model checkpoint (default: the shipped feedback checkpoint)")
    s.add_argument("--steps", type=count(0), help="number of solver steps, >= 0 (default: as trained)")
    s.add_argument("--out", default="out/solve", help="output folder")
    b = sub.add_parser("bench", help="benchmark methods on the test split")
    b.add_argument("--out", default="out/bench", help="report folder")
    b.add_argument("--samples", type=count(1), help="test samples (default: bench.samples)")
    b.add_argument("--methods", help="comma-separated methods (default: bench.methods)")
    b.add_argument("--seed", type=count(0), help="test sampling seed (default: seed)")
    b.add_argument("--checkpoints", help="folder of <variant>.safetensors (default: the task's shipped ones)")
    b.add_argument("--split", default="test",
                   help="val (or a task's own validation split, e.g. pose's val_unseen): for choosing checkpoints or "
                        "settings without the test data")
    b.add_argument("--merge", action="store_true",
                   help="add these methods to the report already in --out (same samples and seed)")
    d = sub.add_parser("demo", help="solve and benchmark every task with its shipped checkpoints")
    d.add_argument("--out", default="out/demo")
    d.add_argument("--samples", type=count(1), default=200)
    for q in (t, s, b):
        q.add_argument("task", help="registered task name (see `fbsolve tasks`)")
        q.epilog = ("Config overrides follow as key=value (e.g. train.iterations=100 solver.steps=6). "
                    "train.iterations is per stage; the learned initializer's phase runs train.init_iterations.")
    return p


def make_task(name: str, overrides: list[str], variant: str | None = None) -> tuple[Any, Any]:
    from feedback_solver.config import load_config
    from feedback_solver.problem import unwritten

    cls = registry.task_class(name)
    absent = unwritten(cls)
    if absent:
        raise ValueError(f"task {name!r} ({cls.__name__}) does not implement "
                         f"{', '.join('Task.' + h for h in absent)}, which every task needs")
    cfg = load_config(cls, overrides, variant)
    return cls(cfg), cfg


def parse(argv: list[str]) -> argparse.Namespace:
    """Two passes: the task, once known, adds its own flags (e.g. --bvh) to its command."""
    parser = base_parser()
    args, _ = parser.parse_known_args([a for a in argv if a not in ("-h", "--help")] if argv[2:] else argv)
    if args.command in ("train", "solve", "bench"):
        add = registry.cli_options(args.task)
        sub = parser._subparsers._group_actions[0].choices[args.command]  # noqa: SLF001 - argparse has no public API
        add(sub, args.command)
    args, rest = parser.parse_known_args(argv)
    bad = [r for r in rest if r.startswith("-") or "=" not in r]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = rest
    return args


def one_line_warning(message: Warning | str, category: type, filename: str, lineno: int, file=None,
                     line: str | None = None) -> None:
    """Warnings as a user reads them: `fbsolve: warning: ...`, one line, without the source line."""
    print(f"fbsolve: warning: {' '.join(str(message).split())}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    warnings.showwarning = one_line_warning
    try:
        args = parse(argv)
        return COMMANDS[args.command](args, argv)
    except USER_ERRORS as err:
        if not isinstance(err, Echo):  # another rank's copy of rank 0's refusal: printed once, by rank 0
            print(f"fbsolve: error: {message(err)}", file=sys.stderr)
        return 2
    finally:
        if "torch.distributed" in sys.modules:
            from feedback_solver import distributed

            distributed.teardown()


def message(err: BaseException) -> str:
    """The error as one line: its text (a KeyError's without quotes), else its type's name."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else err
    if isinstance(err, OSError) and err.filename and str(err.filename) not in str(text):
        text = f"{err.filename}: {err.strerror or err}"
    text = " ".join(str(text).split())
    return text or f"{type(err).__name__} (no message)"


def check_out_folder(path: Path) -> Path:
    """--out of solve, bench and demo: a folder (made now), refused before any work when it names a file."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file, not a folder; give a folder for the output files")
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_out_checkpoint(path: Path, overwrite: bool) -> Path:
    """--out of train: never replaces an existing checkpoint (a shipped one least of all) without --overwrite."""
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; give the checkpoint's file name "
                         f"(e.g. {path / 'feedback.safetensors'})")
    if path.exists() and not overwrite:
        raise ValueError(f"--out {path} exists; pass --overwrite to replace it, or give another --out")
    return path


def cmd_tasks(args: argparse.Namespace, argv: list[str]) -> int:
    for name, ep in sorted(registry.available().items()):
        print(f"{name:16s} {ep.value}")
    return 0


def cmd_train(args: argparse.Namespace, argv: list[str]) -> int:
    from feedback_solver import distributed
    from feedback_solver.checkpoints import read_model
    from feedback_solver.train import train

    task = make_task(args.task, args.overrides, args.variant)[0].from_cli(args, "train")[0]  # bench alone runs several
    cfg = task.cfg
    out = check_out_checkpoint(Path(args.out) if args.out else task.checkpoint_dir / f"{args.variant}.safetensors",
                               args.overwrite)
    dist = distributed.setup(cfg.device)  # under torchrun: joins the process group (gloo on CPU, NCCL on GPU)
    path = train(task, cfg, out, resume=args.resume, dist=dist)
    if dist.is_main and path == out:
        meta = read_model(out, task.name)[2]
        print(f"wrote {path}: {dist.world_size} rank(s), {meta['samples_per_second']:.0f} training samples/s, "
              f"val distance {meta['val_distance']:.4g}")
    return 0


def cmd_solve(args: argparse.Namespace, argv: list[str]) -> int:
    from feedback_solver import distributed
    from feedback_solver.solver import FeedbackSolver

    check_out_folder(Path(args.out))
    task = make_task(args.task, args.overrides)[0].from_cli(args, "solve")[0]
    cfg = task.cfg
    device = distributed.resolve_device(cfg.device)
    batch = task.load_observation(args)  # bad input fails first, before any checkpoint is read
    solver = FeedbackSolver.from_checkpoint(task, path=args.checkpoint).to(device)
    res = solver.solve(batch.y.to(device), batch.to(device).ctx, args.steps, progress=True)
    energy = res.trace.energies()
    print(f"solved {len(batch)} observation(s) in {res.steps} steps, {res.seconds:.3f} s "
          f"(forward model {res.forward_seconds:.3f} s); E_data median {float(energy[:, 0].median()):.4g} -> "
          f"{float(energy[:, -1].median()):.4g}")
    rejected = res.trace.nonfinite_count()
    if rejected:
        print(f"warning: {rejected} proposed step(s) were NaN or infinite and rejected (the state was kept)",
              file=sys.stderr)
    for path in task.write_solution(res.x.cpu(), batch, args):
        print(f"wrote {path}")
    return 0


def cmd_bench(args: argparse.Namespace, argv: list[str]) -> int:
    from feedback_solver import distributed
    from feedback_solver.bench import run_bench

    check_out_folder(Path(args.out))
    task, cfg = make_task(args.task, args.overrides)
    methods = args.methods.split(",") if args.methods else None
    ckpt = Path(args.checkpoints) if getattr(args, "checkpoints", None) else None
    dist = distributed.setup(cfg.device)
    for setting in task.from_cli(args, "bench"):
        res = run_bench(setting, setting.cfg, args.out, methods, args.samples, args.seed,
                        "fbsolve " + shlex.join(argv), ckpt, dist=dist, merge=getattr(args, "merge", False),
                        split=getattr(args, "split", "test"))
        if dist.is_main:
            print((Path(args.out) / f"{res['report']}.md").read_text())
    return 0


def cmd_demo(args: argparse.Namespace, argv: list[str]) -> int:
    """Each registered task with shipped checkpoints: a benchmark of the learned solver against its baselines."""
    check_out_folder(Path(args.out))
    for name in sorted(registry.available()):
        task, _ = make_task(name, [])
        if not (task.checkpoint_dir / "feedback.safetensors").exists():
            print(f"{name}: no shipped checkpoint, skipped")
            continue
        quick = task.cfg.bench.demo_methods
        methods = ["--methods", ",".join(quick)] if quick else []
        samples = min(args.samples, int(task.cfg.bench.samples))  # never more than the task's own benchmark
        cmd_bench(parse(["bench", name, "--out", args.out, "--samples", str(samples), *methods]), argv)
    return 0


COMMANDS = {"tasks": cmd_tasks, "train": cmd_train, "solve": cmd_solve, "bench": cmd_bench, "demo": cmd_demo}

if __name__ == "__main__":
    raise SystemExit(main())
