"""`fbsolve`: list tasks, train, solve, benchmark, demo; every task through the same commands."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from feedback_solver import distributed, registry
from feedback_solver.errors import OpenGLUnavailable
from feedback_solver.config import load_config
from feedback_solver.problem import Task


def base_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fbsolve", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("tasks", help="list registered task plugins")
    t = sub.add_parser("train", help="train a solver (shipped checkpoint path by default)")
    t.add_argument("--variant", default="feedback", help="config variant: feedback, feedback_shared, regression, ...")
    t.add_argument("--out", help="checkpoint path (default: the task's checkpoints/<variant>.safetensors)")
    t.add_argument("--resume", action="store_true", help="continue from <out>.state.pt")
    s = sub.add_parser("solve", help="solve a user's observation with a shipped checkpoint")
    s.add_argument("--checkpoint", help="model checkpoint (default: the shipped feedback checkpoint)")
    s.add_argument("--steps", type=int, help="number of solver steps (default: as trained)")
    s.add_argument("--out", default="out/solve", help="output folder")
    b = sub.add_parser("bench", help="benchmark methods on the test split")
    b.add_argument("--out", default="out/bench", help="report folder")
    b.add_argument("--samples", type=int, help="test samples (default: bench.samples)")
    b.add_argument("--methods", help="comma-separated methods (default: bench.methods)")
    b.add_argument("--seed", type=int, help="test sampling seed (default: seed)")
    b.add_argument("--checkpoints", help="folder of <variant>.safetensors (default: the task's shipped ones)")
    b.add_argument("--split", choices=("test", "val"), default="test",
                   help="val: the validation split, for choosing checkpoints or settings without the test data")
    b.add_argument("--merge", action="store_true",
                   help="add these methods to the report already in --out (same samples and seed)")
    d = sub.add_parser("demo", help="solve and benchmark every task with its shipped checkpoints")
    d.add_argument("--out", default="out/demo")
    d.add_argument("--samples", type=int, default=200)
    for q in (t, s, b):
        q.add_argument("task", help="registered task name (see `fbsolve tasks`)")
        q.epilog = "Config overrides follow as key=value (e.g. train.iterations=100 solver.steps=6)."
    return p


def make_task(name: str, overrides: list[str], variant: str | None = None) -> tuple[Task, object]:
    cls = registry.task_class(name)
    cfg = load_config(cls, overrides, variant)
    return cls(cfg), cfg


def parse(argv: list[str]) -> argparse.Namespace:
    """Two passes: the task, once known, adds its own flags (e.g. --bvh) to its command."""
    parser = base_parser()
    args, _ = parser.parse_known_args([a for a in argv if a not in ("-h", "--help")] if argv[2:] else argv)
    if args.command in ("train", "solve", "bench"):
        cls = registry.task_class(args.task)
        sub = parser._subparsers._group_actions[0].choices[args.command]  # noqa: SLF001 - argparse has no public API
        cls.add_cli_options(sub, args.command)
    args, rest = parser.parse_known_args(argv)
    bad = [r for r in rest if r.startswith("-") or "=" not in r]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = rest
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse(argv)
        return COMMANDS[args.command](args, argv)
    except (ValueError, KeyError, FileNotFoundError, NotImplementedError, OpenGLUnavailable) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        if not isinstance(err, distributed.Echo):
            print(f"fbsolve: error: {msg}", file=sys.stderr)
        return 2
    finally:
        distributed.teardown()


def cmd_tasks(args: argparse.Namespace, argv: list[str]) -> int:
    for name, ep in sorted(registry.available().items()):
        print(f"{name:16s} {ep.value}")
    return 0


def cmd_train(args: argparse.Namespace, argv: list[str]) -> int:
    from feedback_solver.checkpoints import read_model
    from feedback_solver.train import train

    task, cfg = make_task(args.task, args.overrides, args.variant)
    task.apply_cli_options(args, "train")
    dist = distributed.setup(cfg.device)  # under torchrun: joins the process group (gloo on CPU, NCCL on GPU)
    out = Path(args.out) if args.out else task.checkpoint_dir / f"{args.variant}.safetensors"
    path = train(task, cfg, out, resume=args.resume, dist=dist)
    if dist.is_main and path == out:
        meta = read_model(out, task.name)[2]
        print(f"wrote {path}: {dist.world_size} rank(s), {meta['samples_per_second']:.0f} training samples/s, "
              f"val distance {meta['val_distance']:.4g}")
    return 0


def cmd_solve(args: argparse.Namespace, argv: list[str]) -> int:
    from feedback_solver.bench import load_solver

    task, cfg = make_task(args.task, args.overrides)
    task.apply_cli_options(args, "solve")
    device = distributed.resolve_device(cfg.device)
    batch = task.load_observation(args)  # bad input fails first, before any checkpoint is read
    solver = load_solver(task, path=args.checkpoint).to(device)
    res = solver.solve(batch.y.to(device), batch.to(device).ctx, args.steps, progress=True)
    energy = res.trace.energies()
    print(f"solved {len(batch)} observation(s) in {res.steps} steps, {res.seconds:.3f} s "
          f"(forward model {res.forward_seconds:.3f} s); E_data median {float(energy[:, 0].median()):.4g} -> "
          f"{float(energy[:, -1].median()):.4g}")
    for path in task.write_solution(res.x.cpu(), batch, args):
        print(f"wrote {path}")
    return 0


def cmd_bench(args: argparse.Namespace, argv: list[str]) -> int:
    from feedback_solver.bench import run_bench

    task, cfg = make_task(args.task, args.overrides)
    task.apply_cli_options(args, "bench")
    methods = args.methods.split(",") if args.methods else None
    ckpt = Path(args.checkpoints) if getattr(args, "checkpoints", None) else None
    dist = distributed.setup(cfg.device)
    for setting in task.settings():
        res = run_bench(setting, setting.cfg, args.out, methods, args.samples, args.seed,
                        "fbsolve " + shlex.join(argv), ckpt, dist=dist, merge=getattr(args, "merge", False),
                        split=getattr(args, "split", "test"))
        if dist.is_main:
            print((Path(args.out) / f"{res['report']}.md").read_text())
    return 0


def cmd_demo(args: argparse.Namespace, argv: list[str]) -> int:
    """Each registered task with shipped checkpoints: a benchmark of the learned solver against its baselines."""
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
