#!/usr/bin/env python
"""Seed-compatible wrapper: `python scripts/rollout_inference.py ...` == `voxel-ode rollout ...`."""

from _entry import run

if __name__ == "__main__":
    run("rollout")
