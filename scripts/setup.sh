#!/usr/bin/env bash
# Install voxel-ode and its dependencies into the current Python environment.
# - keeps an already installed torch (e.g. your CUDA build) untouched;
# - on a machine without an NVIDIA GPU installs a CPU-only torch, never a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

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
"$PY" -m pip install -q -e ".[dev,wandb]"
echo "setup: done ($("$PY" -c 'import voxel_ode, torch; print("voxel_ode", voxel_ode.__version__, "torch", torch.__version__)'))"
