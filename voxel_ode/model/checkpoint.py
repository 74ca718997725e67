"""Checkpoints: the one place that writes, reads and checks them.

A checkpoint is a dict of tensors and plain Python types (``torch.load(weights_only=True)``
reads it; no code from the file runs): "model" (weights), "model_config" (ModelConfig as a
dict), "stats" (the stats.json dict the model was trained with) and "stats_digest" (of its
result-relevant part), "delta_mode"; a training checkpoint adds "optimizer", "scheduler",
"scaler", "step", "best_metric", "best_path", "rng" (one state per rank) and "train_args".
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from voxel_ode import files, schema
from voxel_ode.data import stats as stats_json
from voxel_ode.data.stats import Stats
from voxel_ode.model.features import Normalizer
from voxel_ode.model.network import ModelConfig, VoxelAutoRegressor
from voxel_ode.utils import UserError

# --stats_path of the inference commands (load_for_inference checks that it agrees)
STATS_PATH_HELP = ("stats.json (default: the stats stored in the checkpoint; must agree; e.g. a prep re-run "
                   "for what a newer voxel-ode records)")

RESUME_KEYS = ("model", "model_config", "optimizer", "scheduler", "step")
# the seed's architecture flags of `rollout`: accepted, checked against the checkpoint
ARCH_FLAGS = ("receptive_field_radius", "base_channels", "depth")


def load(path, map_location="cpu"):
    """Read a checkpoint file: the only place one is read (training's --resume and load_model).

    A missing, truncated or foreign file is a one-line UserError with the reader's cause. What
    the contents must hold is checked by model_config, checked_stats and check_resume.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint: no such file")
    try:
        # mmap: tensors are read where they lie in the file, never allocated at the sizes the file
        # declares (a few MB of compressed zeros declared as GBs is refused, not inflated)
        return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except Exception as err:  # corrupt file or one holding arbitrary objects: name the cause
        cause = (str(err).strip().splitlines() or [""])[0].split(". ")[0][:200]  # the reader's first sentence
        raise UserError(f"{path}: checkpoint: cannot load with weights_only=True ({type(err).__name__}: {cause})") from None


def save(path: Path, ckpt: dict) -> None:
    """Write atomically: a kill leaves the previous file or none, never half of one."""
    try:
        with files.atomic_path(path) as tmp:
            torch.save(ckpt, tmp)
    except (OSError, RuntimeError) as err:  # a full disk, a file-size limit: torch says it as RuntimeError
        raise UserError(f"{path}: checkpoint: cannot write ({' '.join(str(err).split())[:160]})") from None


def training_checkpoint(model, stats: Stats, delta_mode: str, train_args: dict, optimizer, scheduler, scaler,
                        step: int, best_metric: float, best_path, rng: list) -> dict:
    """What `train` writes (module doc); ``rng``: every rank's RNG state."""
    return {
        "model": model.state_dict(), "model_config": asdict(model.config),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(), "step": step, "best_metric": best_metric,
        "best_path": str(best_path) if best_path else None, "rng": rng, "stats": stats.data,
        "train_args": train_args, "delta_mode": delta_mode,
        "stats_digest": stats.digest,  # a rollout compares a given stats.json with it
    }


def model_config(ckpt, path) -> ModelConfig:
    """The architecture a checkpoint's weights fit, checked before any weight is allocated
    (ModelConfig's bounds: a hostile checkpoint could ask for 1 TB)."""
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise UserError(f"{path}: checkpoint: missing 'model' or 'model_config'")
    try:
        stored = dict(ckpt["model_config"])
    except (TypeError, ValueError):
        raise UserError(f"{path}: model_config: not a mapping") from None
    try:
        config = ModelConfig.from_dict(stored)
    except (UserError, TypeError, ValueError) as err:
        raise UserError(f"{path}: {err}") from None
    if (config.in_channels, config.n_params) != (schema.N_INPUT_CHANNELS, schema.N_CONDITIONING):
        raise UserError(f"{path}: checkpoint: model takes {config.in_channels} input channels and "
                        f"{config.n_params} conditioning values, this version builds {schema.N_INPUT_CHANNELS} "
                        f"and {schema.N_CONDITIONING}: it was made by an older voxel-ode, retrain it")
    return config


def load_model(path, map_location="cpu"):
    """(model in eval mode, checkpoint dict), rebuilt from a checkpoint file."""
    path = Path(path)
    ckpt = load(path, map_location)
    model = VoxelAutoRegressor(model_config(ckpt, path))
    try:
        state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
        model.load_state_dict(state)
    except (AttributeError, RuntimeError) as err:  # missing / extra / misshapen weights
        raise UserError(f"{path}: model: weights do not fit its model_config ({str(err).splitlines()[0][:200]})") from None
    model.eval()
    return model, ckpt


def checked_stats(ckpt: dict, path) -> Stats:
    """The stats stored in a checkpoint: present, valid, and equal to the digest stored beside them.
    Without them nothing tells what data the model fits, so the checkpoint is refused."""
    if ckpt.get("delta_mode") not in (None, "asinh", "zscore"):
        raise UserError(f"{path}: delta_mode: {ckpt['delta_mode']!r} is not 'asinh' or 'zscore'")
    missing = [key for key in ("stats", "stats_digest") if ckpt.get(key) is None]
    if missing:
        raise UserError(f"{path}: {missing[0]}: missing, so nothing tells what data the model was trained on "
                        "(a checkpoint of an older or another tool, or edited): retrain it with this voxel-ode")
    stats = Stats(ckpt["stats"], f"{path} (stats inside)")
    if ckpt["stats_digest"] != stats.digest:
        raise UserError(f"{path}: stats: the stored stats do not match the digest written with them "
                        "(edited checkpoint?)")
    return stats


def check_data(stats: Stats, path, data_record: dict, data_source) -> None:
    """Data a checkpoint is applied to must be prepared as its training data was (the same schema,
    channels, description, declared and calibrated, and priors): else its inputs mean something else
    and the result is silently wrong. One line naming both sides and the first difference."""
    diff = stats_json.first_difference(data_record, stats.preparation)
    if diff:
        raise UserError(f"{data_source}: {diff[0]}: prepared differently from the data {path} was trained on: "
                        f"{diff[1]} (data vs checkpoint); prep the data with the checkpoint's description "
                        "(stats.json \"description\" of its training data) or use a checkpoint trained on it")


def check_resume(ckpt, path, stats: Stats) -> None:
    """A checkpoint given to `train --resume`: a training checkpoint whose stats are valid and
    equal to the prepped root's (the normalization must not change half way)."""
    if not isinstance(ckpt, dict):
        raise UserError(f"{path}: checkpoint: not a training checkpoint (holds a {type(ckpt).__name__})")
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"{path}: checkpoint: missing {missing} (not a training checkpoint?)")
    step = ckpt["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise UserError(f"{path}: step: {step!r} is not a step count")
    checked_stats(ckpt, path)
    stats_json.check_same_stats(stats.data, stats.source, ckpt["stats"], path, ckpt.get("stats_digest"))


def stats_for(ckpt: dict, path, stats_path=None) -> Stats:
    """The stats a checkpoint's model runs with: its own; a given stats.json must agree with them
    in every field that changes the result (stats.RESULT_KEYS)."""
    own = checked_stats(ckpt, path)
    if stats_path is None:
        return own
    try:
        given = Stats(json.loads(Path(stats_path).read_text()), stats_path)
    except (OSError, ValueError) as err:
        raise UserError(f"{stats_path}: -: cannot read stats.json ({err})") from None
    stats_json.check_same_stats(given.data, stats_path, own.data, path, ckpt.get("stats_digest"))
    return given


def check_arch_flags(flags: dict, config: dict, path) -> None:
    """The architecture comes from the checkpoint; a flag that disagrees is a user error."""
    for name in ARCH_FLAGS:
        given = flags.get(name)
        if given is None or name not in config:
            continue
        if int(given) != int(config[name]):
            raise UserError(
                f"{path}: model_config.{name}: checkpoint has {config[name]}, --{name} says {given} "
                f"(the architecture is read from the checkpoint; drop the flag)"
            )


def load_for_inference(path, stats_path=None, device="cpu", arch_flags=None):
    """(model on device, Normalizer, Stats, model_config dict) from a checkpoint; the normalization
    is the checkpoint's (its stats and ``delta_mode``)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: -: no such checkpoint")
    model, ckpt = load_model(path, map_location="cpu")
    config = dict(ckpt.get("model_config") or {})
    check_arch_flags(arch_flags or {}, config, path)
    stats = stats_for(ckpt, path, stats_path)
    for warning in stats.calibration_warnings:  # the priors this model reads came from that fit
        print(f"note: calibration: {warning}")
    normalizer = Normalizer(stats, delta_mode=ckpt.get("delta_mode", "asinh"))
    return model.to(device).eval(), normalizer, stats, config
