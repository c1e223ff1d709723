"""The IK task's command-line flags, kept free of heavy imports so its `--help` is instant."""
from __future__ import annotations

import argparse


def add_cli_options(parser: argparse.ArgumentParser, command: str) -> None:
    if command in ("solve", "bench"):
        parser.add_argument("--bvh", help="CMU-skeleton BVH clip whose joint positions are solved")
        parser.add_argument("--frames", help="frame range A:B of the clip, B exclusive (solve: default 1:11)")
