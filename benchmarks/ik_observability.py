"""How much IK angle error can joint positions explain away? `python benchmarks/ik_observability.py`.

An oracle starts at each true test pose (01_03) and, holding the joint positions (data energy weighted 1e4), moves the
rotations toward the training prior: the chordal mean of each joint's 01_01 rotations, or the seed's Gaussian prior
on Euler angles. Only the degrees of freedom that positions cannot see can move, so its angle error is what a
solver that fits the positions exactly and fills the unobserved DoFs from that prior would have. Beside it, per
joint, the shipped `feedback` solver's error. Writes DIR/ik_observability.{json,md}. A diagnostic of the angle bar.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from feedback_solver import registry
from feedback_solver.bench import summarise
from feedback_solver.config import load_config
from feedback_solver.problem import Batch
from feedback_solver.progress import bar
from feedback_solver.solver import FeedbackSolver

PRIORS = ("chordal_mean", "euler_prior")


def prior_term(task, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample pull toward the training prior (the root, index 0, is left free as in the task's prior)."""
    if kind == "euler_prior":
        return task.prior(x)
    rot = task.space.to_rotmat(x)[:, 1:]
    return (rot - task.mean_pose[1:].to(rot)).pow(2).sum((-1, -2)).sum(1)


def oracle(task, batch: Batch, kind: str, weight: float = 1e4, rounds: int = 4, jitter: float = 0.0) -> torch.Tensor:
    """From the truth (moved by `jitter` rad at random), minimise weight * E_data + prior by L-BFGS over the tangent
    space (samples are independent)."""
    x0 = batch.x
    gen = torch.Generator().manual_seed(0)
    d = (jitter * torch.randn(len(x0), task.space.tangent_dim, generator=gen)).requires_grad_()
    opt = torch.optim.LBFGS([d], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        x = task.space.retract(x0, d)
        loss = (weight * task.energy(task.forward(x, {}), batch.y) + prior_term(task, x, kind)).mean()
        loss.backward()
        return loss

    for _ in range(rounds):
        opt.step(closure)
    with torch.no_grad():
        return task.space.retract(x0, d)


def retry_unmoved(task, batch: Batch, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Samples an L-BFGS run left at the truth (its first line search found no step) are solved again alone, from
    the truth moved by 0.001 rad (the data term brings the positions back)."""
    stuck = unmoved(task, x, batch.x).nonzero().flatten().tolist()
    for i in bar(stuck, desc=f"oracle {kind}, samples left at the start, alone"):
        x[i : i + 1] = oracle(task, batch.index(slice(i, i + 1)), kind, jitter=1e-3)
    return x


def unmoved(task, x: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Samples whose every rotation is still the true one: an oracle run that found no step."""
    return task.space.angles(x, truth).amax(1) < 1e-5


def per_joint(task, x: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Mean geodesic error (deg) of each active joint over the samples."""
    return task.space.angles(x, truth).rad2deg().mean(0)


def summary(task, x: torch.Tensor, batch: Batch) -> dict[str, float]:
    """Mean and median of each metric, and the samples left where they started (an oracle run that got stuck)."""
    metrics = summarise(task, x, batch)["metrics"]
    out = {f"{k} {q}": v[q] for k, v in metrics.items() for q in ("mean", "median")}
    return out | {"unmoved": float(unmoved(task, x, batch.x).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=10,
                    help="samples per L-BFGS run (50 left some runs stuck at the start)")
    ap.add_argument("--priors", default="chordal_mean",
                    help="comma-separated, from: " + ", ".join(PRIORS) + " (euler_prior takes about 30 min here)")
    ap.add_argument("--out", default="benchmarks/ik")
    args = ap.parse_args()
    if not set(args.priors.split(",")) <= set(PRIORS):
        ap.error(f"--priors: choose from {', '.join(PRIORS)}")
    cls = registry.task_class("ik")
    task = cls(load_config(cls, []))
    batch = task.sample(args.samples, "test", args.seed)
    chunks = [batch.index(slice(lo, lo + args.chunk)) for lo in range(0, len(batch), args.chunk)]
    xs = {"feedback": torch.cat([FeedbackSolver.from_checkpoint(task).solve(c.y, {}).x for c in chunks])}
    for kind in args.priors.split(","):
        x = torch.cat([oracle(task, c, kind) for c in bar(chunks, desc=f"oracle {kind}")])
        xs[f"oracle_{kind}"] = retry_unmoved(task, batch, x, kind)
    names = [task.skeleton.names[int(j)] for j in task.active]
    result = {"task": "ik", "data": task.describe_data("test"), "samples": args.samples, "seed": args.seed,
              "methods": {k: summary(task, x, batch) for k, x in xs.items()},
              "per_joint_angle_deg_mean": {k: dict(zip(names, per_joint(task, x, batch.x).tolist()))
                                           for k, x in xs.items()}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ik_observability.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = write_md(result, args)
    (out / "ik_observability.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def write_md(result: dict, args: argparse.Namespace) -> list[str]:
    cmd = f"python benchmarks/ik_observability.py --samples {args.samples} --seed {args.seed} --priors {args.priors}"
    methods = list(result["methods"])
    keys = list(result["methods"][methods[0]])
    lines = ["# IK: what joint positions can tell", "", f"Command: `{cmd}`; data: {result['data']}.", "",
             "`oracle_*`: from the true pose, positions held, the unobserved DoFs pulled to the training prior.",
             "", "| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {m} | " + " | ".join(f"{v:.3g}" for v in result["methods"][m].values()) + " |" for m in methods]
    joints = result["per_joint_angle_deg_mean"]
    lines += ["", "## Mean angle error per joint (deg)", "", "| joint | " + " | ".join(methods) + " |",
              "|---|" + "---|" * len(methods)]
    for name in joints[methods[0]]:
        lines.append(f"| {name} | " + " | ".join(f"{joints[m][name]:.2f}" for m in methods) + " |")
    return lines


if __name__ == "__main__":
    main()
