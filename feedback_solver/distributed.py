"""torchrun integration: the process group from torchrun's environment, chunk-aligned sharding, device choice.

Everything distributed is PyTorch's own (torch.distributed, DistributedDataParallel, torchrun's rendezvous);
this module only decides *which* backend and device, and which samples a rank owns.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as tdist
from torch import nn

from feedback_solver.errors import Echo, RanksDisagree

PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: rank, world size and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (picklable objects; tensors should be on the CPU)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def decide(self, choose: Callable[[], Any]) -> Any:
        """Rank 0 runs `choose` and every rank gets its result (or its error): one decision, no per-rank race.

        A rank that chose alone (whether a state file exists, which one, what it holds) could see the file system at
        another moment than its peers; sending rank 0's view makes the ranks agree by construction.
        """
        if not self.active:
            return choose()
        box: list[Any] = [None]
        failure: Exception | None = None
        if self.is_main:
            try:
                box[0] = ("ok", choose())
            except Exception as err:  # sent, so every rank stops with the same one-line message, none hangs
                failure, box[0] = err, ("error", str(err))
        tdist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        kind, value = box[0]
        if failure is not None:
            raise failure
        if kind == "error":
            raise Echo(value)
        return value

    def agree(self, what: str, value: Any) -> None:
        """Stop with a message naming the ranks when `value` (e.g. phase, iteration, weight digest) differs."""
        seen = self.gather(value)
        if any(v != seen[0] for v in seen):
            detail = "; ".join(f"rank {r}: {v}" for r, v in enumerate(seen))
            raise RanksDisagree(f"ranks disagree on {what} before training ({detail}); stopping before any "
                               "collective could mismatch")

    def mean(self, value: float) -> float:
        """The mean of a scalar over ranks (for logging a loss that each rank computed on its own shard)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        tdist.all_reduce(t)
        return float(t) / self.world_size

    def chunks(self, n: int, chunk: int) -> list[slice]:
        """This rank's contiguous block of whole `chunk`-sized pieces of range(n).

        Ranks own whole chunks, and every process solves chunk by chunk, so each chunk is computed with the same
        batch in a 1-rank and an N-rank run: merged results are bit-identical, not merely close.
        """
        if chunk < 1:
            raise ValueError(f"chunk size must be >= 1, got {chunk}")
        bounds = [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]
        k = len(bounds)
        mine = bounds[self.rank * k // self.world_size:(self.rank + 1) * k // self.world_size]
        return [slice(lo, hi) for lo, hi in mine]


def launched_by_torchrun() -> bool:
    """torchrun (and torch.distributed.launch) export RANK and WORLD_SIZE to every worker."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto`: this rank's GPU when CUDA is present, else the CPU; `cuda` without a GPU is an error, not a fallback."""
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={name} but no CUDA device is visible (torch {torch.__version__}); "
                             "use device=cpu or device=auto")
        return torch.device(name) if ":" in name else torch.device("cuda", local_rank)
    raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")


def setup(device: str = "auto") -> Dist:
    """This process's Dist; joins torchrun's process group (gloo on CPU, NCCL on GPU) on first call."""
    if not launched_by_torchrun():
        return Dist(device=resolve_device(device))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device, local)
    die_with_parent()
    if world > 1 and not tdist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        tdist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local, dev)


def die_with_parent() -> None:
    """A torchrun worker dies with its agent (Linux): killed workers never go on writing checkpoints as orphans.

    torchrun starts each worker in a session of its own, so a SIGKILL of torchrun's process group leaves them
    running; the kernel's parent-death signal ends them with it.
    """
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the state lock still refuses a second writer
        return


def teardown() -> None:
    """Leave the process group so torchrun sees a clean exit."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def wrap(module: nn.Module, dist: Dist) -> nn.Module:
    """DistributedDataParallel around the module whose trainable parameters this phase moves; as is on one rank."""
    if not dist.active:
        return module
    ids = [dist.device.index] if dist.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def digest(module: nn.Module) -> str:
    """SHA-256 of the parameters' bytes: equal on every rank iff the replicas hold identical weights."""
    h = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
