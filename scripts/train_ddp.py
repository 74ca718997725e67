#!/usr/bin/env python
"""Seed-compatible wrapper: `python scripts/train_ddp.py ...` == `voxel-ode train ...`."""

from _entry import run

if __name__ == "__main__":
    run("train")
