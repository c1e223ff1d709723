"""The pose task's command-line flags, kept free of heavy imports so `fbsolve solve pose --help` is instant."""
from __future__ import annotations

import argparse


def add_cli_options(parser: argparse.ArgumentParser, command: str) -> None:
    if command == "solve":
        parser.add_argument("--mesh", required=True, help="the object's mesh (OBJ/STL/PLY/GLB)")
        parser.add_argument("--silhouette", required=True, help="binary mask PNG of the trained size")
    if command == "bench":
        parser.add_argument("--meshes", help="folder of meshes to evaluate on instead of the test objects")
