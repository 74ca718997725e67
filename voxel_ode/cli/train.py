"""`voxel-ode train` (== `python scripts/train_ddp.py`, also under torchrun): one flag per
TrainConfig field, in its groups, with its default and help."""

from __future__ import annotations

import argparse
import dataclasses

from voxel_ode.training.config import TrainConfig
from voxel_ode.training.train import train


def add_train_args(parser: argparse.ArgumentParser) -> None:
    groups = {}
    for f in dataclasses.fields(TrainConfig):
        meta = dict(f.metadata)
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        kwargs = {"default": f.default, "help": meta["help"]}
        if isinstance(f.default, bool):
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = type(f.default) if f.default is not None else str
            for key in ("choices", "metavar"):
                if key in meta:
                    kwargs[key] = meta[key]
        group.add_argument(f"--{f.name}", **kwargs)


def run_train(args: argparse.Namespace) -> int:
    train(args)
    return 0
