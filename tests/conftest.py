import os
import sys

import pytest

# tests import `fixtures` as a plain module
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("WANDB_MODE", "offline")
# --amp auto on CPU: fp32 without a timing probe, so results do not depend on the machine
# (tests/test_precision.py tests the probe itself)
os.environ.setdefault("VOXEL_ODE_CPU_BF16", "0")


@pytest.fixture(scope="session")
def small_prepped(tmp_path_factory):
    """A prepped root of 4 tiny runs (3 train, 1 test) shared by the training tests; read-only."""
    from fixtures import write_raw_dir
    from voxel_ode.data.prep import prep

    root = tmp_path_factory.mktemp("small_prepped")
    write_raw_dir(root / "raw", n=4, grid=(12, 10, 8), n_t=6)
    prep(root / "raw", root / "prepped", patch_size=(8, 8, 8), stride=(4, 4, 4), n_test=1, progress=False)
    return root / "prepped"
