# make setup   project-local virtual environment .venv with voxel-ode and its test deps
# make test    the test suite, in .venv
# make demo    synth -> prep -> train -> evaluate on this machine (~10 min on 2 cores), in .venv
#
# Nothing is installed into the Python that runs make. VENV=path re-uses another environment
# (e.g. one with your CUDA build of torch); PYTHON=python3.X picks the Python that creates it.
PYTHON ?= python3
VENV ?= .venv
# written by scripts/setup.sh when the install finished: pip runs again only when
# pyproject.toml or the setup script changed, or the environment is gone
STAMP := $(VENV)/.voxel-ode-installed

.PHONY: setup demo test

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	PYTHON=$(PYTHON) bash scripts/setup.sh $(VENV)

demo: $(STAMP)
	$(VENV)/bin/voxel-ode demo --out demo_out

test: $(STAMP)
	$(VENV)/bin/python -m pytest
