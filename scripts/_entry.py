"""Shared shim so `python scripts/X.py` works from a checkout even before `pip install -e .`."""

import os
import sys


def run(command: str) -> None:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if repo not in sys.path:
        sys.path.insert(0, repo)
    from voxel_ode.cli import main

    sys.exit(main([command, *sys.argv[1:]]))
