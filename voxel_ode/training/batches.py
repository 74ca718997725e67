"""Batches: the data order is a deterministic function of (seed, epoch), so a resumed run skips
the batches already seen and its loss curve equals the uninterrupted one."""

from __future__ import annotations

import torch
from torch.utils.data.distributed import DistributedSampler

from voxel_ode.training.dataset import collate, worker_init_fn
from voxel_ode.training.distributed import Dist

def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def epoch_batches(n_items: int, batch_size: int, seed: int, epoch: int, ddp: Dist) -> list[list[int]]:
    """This rank's batches (lists of dataset indices) of ``epoch``; every rank gets the same count."""
    sampler = DistributedSampler(range(n_items), num_replicas=ddp.world, rank=ddp.rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    idx = list(sampler)
    n_batches = max(1, len(idx) // batch_size)  # tiny data: one (smaller) batch per epoch
    return [idx[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]


def _loader(dataset, batch_sampler, args, collate):
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batch_sampler, num_workers=args.num_workers, collate_fn=collate,
        worker_init_fn=worker_init_fn if args.num_workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
    )


def training_batches(train_ds, args, ddp: Dist, step: int):
    """Endless (epoch, batch) from ``step`` on: a resumed run skips the batches already seen."""
    n_batches = len(epoch_batches(len(train_ds), args.batch_size, args.seed, 0, ddp))
    epoch, offset = divmod(step, n_batches)
    while True:
        train_ds.set_epoch(epoch)  # augmentations are drawn from (seed, epoch, index)
        batches = epoch_batches(len(train_ds), args.batch_size, args.seed, epoch, ddp)[offset:]
        for batch in _loader(train_ds, batches, args, collate):
            yield epoch, batch
        epoch, offset = epoch + 1, 0


def eval_loader(test_ds, args, ddp: Dist):
    """A fixed random subset of the test split (the index is ordered by sim and t), split over
    ranks; None without a test split."""
    if test_ds is None:
        return None
    order = torch.randperm(len(test_ds), generator=torch.Generator().manual_seed(1234)).tolist()
    if args.eval_max_batches > 0:
        order = order[: args.eval_max_batches * args.batch_size * ddp.world]
    mine = order[ddp.rank:: ddp.world]
    return _loader(test_ds, [mine[i:i + args.batch_size] for i in range(0, len(mine), args.batch_size)],
                   args, collate)


def context_of(batch: dict) -> dict:
    """The whole-field context arguments of a batch: patch samples carry the coarse whole field
    (the model computes the context from it); whole-grid samples are their own context."""
    if "context_x" not in batch:
        return {}
    return dict(origin=batch["origin"], context_x=batch["context_x"], context_active=batch["context_active"])
