"""Processes: one, or many under torchrun (DDP: NCCL on GPUs, gloo on CPU), and the RNG state
each rank saves in a checkpoint (as tensors and lists, so checkpoints load with weights_only=True).

Multi-GPU: NCCL peer-to-peer is left on (the seed disabled it, which slows NVLink machines). On a
PCIe box where NCCL hangs, opt in with ``export NCCL_P2P_DISABLE=1`` before torchrun.
"""

from __future__ import annotations

import hashlib
import os
import random

import numpy as np
import torch
import torch.distributed as dist

from voxel_ode.utils import UserError

class Dist:
    """Rank/world of this process; single process when not launched by torchrun."""

    def __init__(self, device_flag: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() if device_flag == "auto" else device_flag == "cuda"
        if use_cuda and not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is visible to torch")
        if use_cuda:
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        # launched by torchrun (even with one process): run the process-group code path, so a
        # one-GPU torchrun job exercises NCCL, DDP and the RNG gather exactly as N GPUs do
        self.enabled = self.world > 1 or all(k in os.environ for k in ("MASTER_ADDR", "RANK", "WORLD_SIZE"))
        self.owns_group = False
        if self.enabled and not dist.is_initialized():
            # NCCL for GPUs, gloo for CPU. NCCL_P2P_DISABLE is NOT forced (it slows
            # NVLink machines); set NCCL_P2P_DISABLE=1 yourself on PCIe boxes that hang.
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
            self.owns_group = True
        self.is_main = self.rank == 0

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def any_flag(self, flag: bool) -> bool:
        """True on every rank when any rank says True (used to stop all ranks together)."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self.all_reduce_sum(t).item() > 0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():  # leave a caller's process group alone
            dist.destroy_process_group()


def get_rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def param_checksum(model: torch.nn.Module) -> str:
    """sha256 over all parameters (name order), to compare weights across DDP ranks."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
