PYTHON ?= python3

.PHONY: setup demo test bench

setup:
	bash scripts/setup.sh

demo: setup
	voxel-ode demo --out demo_out

test: setup
	$(PYTHON) -m pytest

