"""The illumination task's command-line flags, kept free of heavy imports so its `--help` is instant."""
from __future__ import annotations

import argparse

LIGHTS = ("point", "directional")  # feedback_solver.render.shaded.KINDS (a test keeps the two equal)


def add_cli_options(parser: argparse.ArgumentParser, command: str) -> None:
    need = command == "solve"
    parser.add_argument("--light", choices=LIGHTS, required=need,
                        help="light kind" + ("" if need else " (default: both for bench, point for train)"))
    if command == "solve":
        parser.add_argument("--mesh", required=True, help="the object's mesh (OBJ/STL/PLY/GLB), canonical pose")
        parser.add_argument("--image", required=True, help="RGB PNG of the trained size")
    if command == "bench":
        parser.add_argument("--meshes", help="folder of meshes to evaluate on instead of the test objects")
