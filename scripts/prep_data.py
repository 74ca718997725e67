#!/usr/bin/env python
"""Seed-compatible wrapper: `python scripts/prep_data.py ...` == `voxel-ode prep ...`."""

from _entry import run

if __name__ == "__main__":
    run("prep")
