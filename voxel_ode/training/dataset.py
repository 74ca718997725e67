"""Training samples read from the prepped files (normalized by model.features.Normalizer).

API (see docs/design.md for the file layouts)
---------------------------------------------
``PatchDataset(prepped_root, split, stats=None, mode="patch"|"full", rollout_steps=1,
               aug_xy_rot=False, aug_flip=False, noise_std=0.0, seed=0, context_factor=4,
               delta_mode="asinh")``
    mode="patch": one sample per line of index_{split}.jsonl; rollout_steps must be 1.
    mode="full":  one sample per (simulation, t) with the whole grid, t = 0..T-1-K.
    Sample (dict of tensors):
      "x"             [19,d,h,w] float32  normalized input at t, 0 at inactive cells
      "priors"        [K+1,2,d,h,w] float32 the priors at t..t+K as stored (update_input's next pairs)
      "active"        [1,d,h,w]  float32  1 = active cell
      "params"        [27]       float32  normalized ParamsScalar + time feature of t (Normalizer.conditioning)
      "target_delta"  [K,2,d,h,w] float32 normalized change of (P, T), steps t->t+1 .. t+K-1->t+K; 0 at inactive
      "target_scalars"[K,5]      float32  normalized scalars at t+1..t+K (increment for the total)
      "scalars_prev"  [5]        float64  physical scalars at t (to denormalize the total)
      "production_ratio" [K]     float64  production_enthalpy_ratio of steps t..t+K-1 (scalar references)
      "origin"        [3]        int64    position of the patch's first cell in the coarse-aligned
                                          frame of the (augmented) whole field: coarse cell c covers
                                          fine cells [c*F, (c+1)*F). Without augmentation this is the
                                          patch origin (z0, y0, x0) in the full grid. Zeros in full mode.
      "context_x"     [19,Dc,Hc,Wc] float32  (patch mode only) whole field at t, network.coarsen by
      "context_active"[1,Dc,Hc,Wc]  float32   context_factor F, augmented like the patch
      "sim", "t"      int64      index of the simulation in ``dataset.sim_paths`` and the input step
    In full mode there is no context_x: the model computes the context from x itself.
    Augmentations act in the XY plane only (never Z) and identically on every grid of a
    sample; a 90 degree turn swaps the PermX and PermY channels. They are drawn from
    (seed, epoch, index), so a run is reproducible; call set_epoch(e) every epoch.
    h5py files are opened lazily in each worker process (safe with num_workers > 0);
    each worker caches per simulation the normalized params, scalars and the coarse
    whole-field context of every t (about 1 MB per simulation at full size).

``collate(samples) -> batch``: stacks; grids whose shapes differ (turned non-cubic
patches) are zero-padded at the far end, so padding is inactive (active=0, x=0, targets=0).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch

from voxel_ode import schema
from voxel_ode.data import index, prepped
from voxel_ode.data.stats import Stats
from voxel_ode.model.features import Normalizer, prior_pair, producer_cells, production_enthalpy_ratio
from voxel_ode.model.network import coarsen
from voxel_ode.training.augment import apply_ops, apply_ops_box, augmentation_ops
from voxel_ode.utils import UserError


class _CoarseContext:
    """Patch mode: a simulation's whole field at every t, normalized and coarsened once by
    ``factor`` (network.coarsen), for its samples' context_x / context_active."""

    def __init__(self, normalizer: Normalizer, f: h5py.File, static: torch.Tensor, factor: int):
        self.normalizer, self.f, self.factor = normalizer, f, factor
        self.active = static[schema.STATIC_ACTIVE : schema.STATIC_ACTIVE + 1] > 0.5
        self.initial = static[list(schema.INITIAL_STATE_STATIC)]
        self.static_norm = normalizer.normalize_static(static, self.active)
        self.dynamic = []

    def add(self, t: int, grid_t: np.ndarray, n_t: int) -> None:
        """The dynamic channels of step t (grid_t: its stored P, T)."""
        pair = prior_pair(prepped.read_priors(self.f, slice(t, min(t + 2, n_t))), 0)
        state = self.normalizer.normalize_dynamic(torch.from_numpy(grid_t), self.initial, pair) * self.active
        self.dynamic.append(coarsen(state, self.active.float(), self.factor)[0])

    def entries(self) -> dict:
        static_c, frac = coarsen(self.static_norm, self.active.float(), self.factor)
        return {"context_static": static_c, "context_dynamic": torch.stack(self.dynamic), "context_active": frac}


class _SimFiles:
    """The prepped files of a split, opened lazily in each process (never shared by forked
    DataLoader workers), and per simulation what all its samples share (``entry``)."""

    def __init__(self, root: Path, sim_paths: list[str], normalizer: Normalizer, context_factor: int | None):
        self.root, self.sim_paths, self.normalizer = root, sim_paths, normalizer
        self.context_factor = context_factor  # None: no whole-field context (full mode)
        self._pid = None
        self._files: dict[int, h5py.File] = {}
        self._cache: dict[int, dict] = {}

    def file(self, sim: int) -> h5py.File:
        if self._pid != os.getpid():  # first use in this process: drop anything inherited
            self._pid, self._files, self._cache = os.getpid(), {}, {}
        if sim not in self._files:
            path = self.root / self.sim_paths[sim]
            try:
                self._files[sim] = h5py.File(path, "r")
            except OSError as err:
                raise UserError(f"{path}: file: cannot open ({err})") from None
        return self._files[sim]

    def entry(self, sim: int) -> dict:
        """Normalized params, physical scalars, grid shape, the producers' enthalpy ratio of every
        step and, with a context factor, the coarse whole-field context of every t."""
        f = self.file(sim)
        if sim in self._cache:
            return self._cache[sim]
        static = torch.from_numpy(f[schema.PREPPED_STATIC][...].astype(np.float32))
        grids = f[schema.PREPPED_OUTPUTS_GRID]
        n_t = grids.shape[0]
        entry = {
            "n_timesteps": n_t,
            "params": self.normalizer.normalize_params(f[schema.PREPPED_PARAMS][...]),
            "scalars": np.asarray(f[schema.PREPPED_OUTPUTS_SCALAR][...], np.float64),
            "grid_shape": tuple(static.shape[-3:]),
        }
        context = None if self.context_factor is None else \
            _CoarseContext(self.normalizer, f, static, self.context_factor)
        # one pass over the steps, each read once: the grids are the bulk of a file
        producers = producer_cells(static.numpy())
        ratios, temp_prev = [], None
        for t in range(n_t):
            grid_t = grids[t].astype(np.float32)
            if temp_prev is not None:
                ratios.append(production_enthalpy_ratio(producers, temp_prev, grid_t[1]))
            temp_prev = grid_t[1]
            if context is not None:
                context.add(t, grid_t, n_t)
        entry["production_ratio"] = np.asarray(ratios, np.float64)
        if context is not None:
            entry.update(context.entries())
        self._cache[sim] = entry
        return entry

    def __del__(self):
        for f in getattr(self, "_files", {}).values():
            try:
                f.close()
            except Exception:
                pass


class _PatchSampling:
    """mode="patch": one sample per line of index_{split}.jsonl (a box of the grid at t),
    with the simulation's coarse whole field at t as context.

    A sampling (this or _FullSampling) lists the samples, gives a row's box and adds what the
    mode adds to a sample; PatchDataset picks one by ``mode``."""

    def __init__(self, context_factor: int):
        self.context_factor = context_factor

    @staticmethod
    def list_samples(root: Path, split: str, rollout_steps: int) -> tuple[list[str], np.ndarray]:
        """(sim_paths, rows (sim, t, z0, z1, y0, y1, x0, x1)) from the split's patch index."""
        return index.read_index(root, split)

    @staticmethod
    def box(row, grid_shape) -> tuple:
        z0, z1, y0, y1, x0, x1 = (int(v) for v in row[2:])
        return (z0, z1), (y0, y1), (x0, x1)

    def add_context(self, sample: dict, entry: dict, t: int, box, ops) -> None:
        """origin and context_x / context_active; the patch box moves in the padded
        (coarse-aligned) frame of the augmented whole field."""
        (z0, _), (y0, y1), (x0, x1) = box
        ctx_x = torch.cat([entry["context_static"], entry["context_dynamic"][t]], dim=0)
        ctx_active = entry["context_active"]
        padded = tuple(c * self.context_factor for c in ctx_active.shape[-2:])
        ((y0, _), (x0, _)), _ = apply_ops_box(((y0, y1), (x0, x1)), padded, ops)
        sample["origin"] = torch.tensor([z0, y0, x0], dtype=torch.int64)
        sample["context_x"] = apply_ops(ctx_x, ops, (schema.STATIC_PERM_X, schema.STATIC_PERM_Y))
        sample["context_active"] = apply_ops(ctx_active, ops)


class _FullSampling:
    """mode="full": one sample per (simulation, t) with the whole grid, t = 0..T-1-K; no
    context (the model computes it from x itself)."""

    context_factor = None

    @staticmethod
    def list_samples(root: Path, split: str, rollout_steps: int) -> tuple[list[str], np.ndarray]:
        """(sim_paths, rows (sim, t)) of the split's prepped files."""
        sim_paths, n_t = prepped.split_runs(root, split)
        rows = [(s, t) for s in range(len(sim_paths)) for t in range(0, n_t - rollout_steps)]
        return sim_paths, np.asarray(rows, np.int64).reshape(-1, 2)

    @staticmethod
    def box(row, grid_shape) -> tuple:
        return tuple((0, n) for n in grid_shape)

    def add_context(self, sample: dict, entry: dict, t: int, box, ops) -> None:
        pass  # the whole grid is its own context, and its origin is 0


class PatchDataset(torch.utils.data.Dataset):
    """Training samples from a prepped root (see the module doc for the sample layout).

    Where the samples lie (patches or whole grids) is the sampling's (_PatchSampling,
    _FullSampling); the files and what a simulation's samples share are _SimFiles'; this
    class reads a sample's box, normalizes and augments it."""

    def __init__(
        self,
        prepped_root,
        split: str,
        stats: dict | None = None,
        mode: str = "patch",
        rollout_steps: int = 1,
        aug_xy_rot: bool = False,
        aug_flip: bool = False,
        noise_std: float = 0.0,
        seed: int = 0,
        context_factor: int = 4,
        delta_mode: str = "asinh",
    ):
        self.root = Path(prepped_root)
        if split not in schema.SPLITS:
            raise UserError(f"{self.root}: split: {split!r} is not one of {schema.SPLITS}")
        if mode not in ("patch", "full"):
            raise ValueError(f"mode must be 'patch' or 'full', not {mode!r}")
        if rollout_steps < 1 or (mode == "patch" and rollout_steps != 1):
            raise UserError(f"{self.root}: rollout_steps: {rollout_steps} (patch mode needs 1; use mode='full' for K > 1)")
        self.stats = Stats.load(self.root) if stats is None else stats
        self.normalizer = Normalizer(self.stats, delta_mode=delta_mode)
        self.split, self.mode, self.K = split, mode, rollout_steps
        self.aug_xy_rot, self.aug_flip, self.noise_std = aug_xy_rot, aug_flip, float(noise_std)
        self.seed, self.epoch, self.factor = int(seed), 0, int(context_factor)
        self.sampling = _PatchSampling(self.factor) if mode == "patch" else _FullSampling()
        self.sim_paths, self.samples = self.sampling.list_samples(self.root, split, self.K)
        self._sims = _SimFiles(self.root, self.sim_paths, self.normalizer, self.sampling.context_factor)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def _draw_ops(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        turns = int(rng.integers(4)) if self.aug_xy_rot else 0
        flips = rng.random(2) < 0.5 if self.aug_flip else (False, False)
        return augmentation_ops(turns, bool(flips[0]), bool(flips[1])), rng

    def __getitem__(self, index: int) -> dict:
        row = self.samples[index]
        sim, t = int(row[0]), int(row[1])
        f, entry = self._sims.file(sim), self._sims.entry(sim)
        box = self.sampling.box(row, entry["grid_shape"])
        sample = self._read(f, entry, sim, t, box)
        ops, rng = self._draw_ops(index)
        self._augment(sample, ops, rng)
        self.sampling.add_context(sample, entry, t, box, ops)
        return sample

    def _read(self, f: h5py.File, entry: dict, sim: int, t: int, box) -> dict:
        """The sample of steps t..t+K in ``box`` ((lo, hi) per axis), normalized, not augmented."""
        nrm, K = self.normalizer, self.K
        box = tuple(slice(lo, hi) for lo, hi in box)
        static = f[schema.PREPPED_STATIC][(slice(None),) + box].astype(np.float32)
        grids = f[schema.PREPPED_OUTPUTS_GRID][(slice(t, t + K + 1), slice(None)) + box]
        active = torch.from_numpy(static[schema.STATIC_ACTIVE : schema.STATIC_ACTIVE + 1] > 0.5)
        frames = prepped.read_priors(f, slice(t, t + K + 1), box)  # step k's pair: frames k and k + 1
        x = nrm.normalize_input(static, grids[0].astype(np.float32), prior_pair(frames, 0), active)
        delta = np.diff(grids.astype(np.float64), axis=0)  # exact differences of the stored values
        scalars = entry["scalars"]
        production_ratio = entry["production_ratio"][t:t + K]
        return {
            "x": x,
            "active": active.float(),
            "params": nrm.conditioning(entry["params"], t),
            "target_delta": nrm.normalize_delta(delta) * active,
            "priors": torch.from_numpy(frames),
            "target_scalars": nrm.normalize_scalars(scalars[t + 1 : t + K + 1], scalars[t:t + K], production_ratio),
            "scalars_prev": torch.from_numpy(scalars[t].copy()),
            "production_ratio": torch.from_numpy(production_ratio.copy()),
            "origin": torch.zeros(3, dtype=torch.int64),
            "sim": torch.tensor(sim),
            "t": torch.tensor(t),
        }

    def _augment(self, sample: dict, ops, rng) -> None:
        """The XY ops on every grid of the sample, then the input noise (drawn from ``rng``)."""
        sample["x"] = apply_ops(sample["x"], ops, (schema.STATIC_PERM_X, schema.STATIC_PERM_Y))
        for key in ("priors", "active", "target_delta"):
            sample[key] = apply_ops(sample[key], ops)
        if self.noise_std > 0:  # on the predicted inputs only (not the prior), at active cells
            x = sample["x"]
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            noise = torch.randn(x[schema.PREDICTED_CHANNELS].shape, generator=gen) * self.noise_std
            x[schema.PREDICTED_CHANNELS] += noise * sample["active"]


def collate(samples: list[dict]) -> dict:
    """Stack samples; grids of different shapes are zero-padded at the far end (= inactive)."""
    batch = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            target = [max(n) for n in zip(*shapes)]
            padded = []
            for v in values:
                pad = []
                for have, want in zip(reversed(v.shape), reversed(target)):
                    pad += [0, want - have]
                padded.append(torch.nn.functional.pad(v, pad))
            values = padded
        batch[key] = torch.stack(values)
    return batch


def worker_init_fn(worker_id: int) -> None:
    """Keep each DataLoader worker on one thread: the 3D convolutions want the cores."""
    torch.set_num_threads(1)
