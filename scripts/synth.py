#!/usr/bin/env python
"""Seed-compatible wrapper: `python scripts/synth.py ...` == `voxel-ode synth ...`."""

from _entry import run

if __name__ == "__main__":
    run("synth")
