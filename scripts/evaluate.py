#!/usr/bin/env python
"""Seed-compatible wrapper: `python scripts/evaluate.py ...` == `voxel-ode evaluate ...`."""

from _entry import run

if __name__ == "__main__":
    run("evaluate")
