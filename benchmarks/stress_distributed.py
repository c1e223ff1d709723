"""Run the distributed tests N times in a row beside a CPU-bound load, and count the runs that pass.

A race between ranks shows up as a rare failure; a loaded machine (CI beside other jobs) makes it likelier. This
command is how the claim "the distributed tests do not flake" is checked; it is not part of `make test`.

    python benchmarks/stress_distributed.py [--runs 20] [--load 1] [--tests tests/test_distributed.py]

Writes one line per run and a summary (passed / runs, median seconds) to stdout; exit code 0 iff every run passed.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def spin(stop: mp.Event) -> None:
    """A CPU-bound loop (the 'other load' a shared CI machine has) until told to stop."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x = (x * 1_103_515_245 + 12_345) % 2_147_483_648


def run_once(tests: list[str], log: Path) -> tuple[bool, float, str]:
    """One pytest run of the distributed tests; (passed, seconds, its last summary line)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    log.write_text(proc.stdout + proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode == 0, seconds, lines[-1] if lines else f"exit {proc.returncode}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20, help="pytest runs in a row (default 20)")
    p.add_argument("--load", type=int, default=1, help="CPU-bound processes beside them (default 1)")
    p.add_argument("--tests", nargs="+", default=["tests/test_distributed.py"], help="pytest targets")
    p.add_argument("--logs", default="out/stress", help="folder for each run's pytest output")
    args = p.parse_args(argv)
    if args.runs < 1 or args.load < 0:
        p.error("--runs must be >= 1 and --load >= 0")
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    stop = mp.Event()
    load = [mp.Process(target=spin, args=(stop,), daemon=True) for _ in range(args.load)]
    for proc in load:
        proc.start()
    results = []
    try:
        for k in range(args.runs):
            ok, seconds, summary = run_once(args.tests, logs / f"run{k + 1:02d}.log")
            results.append((ok, seconds))
            print(f"run {k + 1}/{args.runs}: {'pass' if ok else 'FAIL'} {seconds:.0f} s  {summary}", flush=True)
    finally:
        stop.set()
        for proc in load:
            proc.join(5)
    passed = sum(ok for ok, _ in results)
    median = statistics.median(s for _, s in results)
    print(f"{passed}/{len(results)} runs passed beside {args.load} CPU-bound process(es); "
          f"median {median:.0f} s a run; logs in {logs}")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
