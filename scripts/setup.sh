#!/usr/bin/env bash
# Install voxel-ode and its test dependencies into a project-local virtual environment.
#   bash scripts/setup.sh [VENV]     (default .venv; `make setup` calls this)
# - creates VENV with $PYTHON -m venv (default python3) unless it exists; never installs
#   into the Python that runs this script;
# - keeps a torch already installed in VENV (e.g. your CUDA build) untouched;
# - on a machine without an NVIDIA GPU installs a CPU-only torch, never a multi-GB CUDA build;
# - wandb is optional: `VENV/bin/pip install -e ".[wandb]"` for train --use_wandb.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PY="$VENV/bin/python"

if [ -x "$PY" ]; then
  echo "setup: using the environment in $VENV"
else
  echo "setup: creating a virtual environment in $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi

if "$PY" -c "import torch" 2>/dev/null; then
  echo "setup: keeping installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1; then
  echo "setup: NVIDIA GPU found, installing a CUDA build of torch"
  "$PY" -m pip install torch
else
  echo "setup: no GPU, installing a CPU build of torch"
  # torch==2.13.0 is served from local disk on this project's machines; elsewhere use
  # PyTorch's CPU wheel index so pip does not pull the CUDA build.
  "$PY" -m pip install torch==2.13.0 2>/dev/null \
    || "$PY" -m pip install torch --index-url https://download.pytorch.org/whl/cpu
fi
"$PY" -m pip install -q -e ".[dev]"
touch "$VENV/.voxel-ode-installed"
echo "setup: done ($("$PY" -c 'import voxel_ode, torch; print("voxel_ode", voxel_ode.__version__, "torch", torch.__version__)') in $VENV)"
