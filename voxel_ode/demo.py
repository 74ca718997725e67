"""`voxel-ode demo`: the whole chain on this machine, on data it generates itself.

synth -> prep -> train -> evaluate, everything under one folder:

    OUT/raw/            synthetic v2.4 simulations
    OUT/prepped/        packed files, stats.json, patch index
    OUT/checkpoints/    best_step*.pt, last.pt, metrics.jsonl
    OUT/eval/           metrics.json, metrics_per_step.csv, predictions/*.h5 + .xdmf, plots/*.png

The sizes below are chosen for a 2-core laptop CPU: the full demo takes about
10 minutes, `--quick` about 2. Each stage reuses its output when the folder
already holds a finished one made with the same settings (delete OUT to start
over), so an interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from voxel_ode import files, schema
from voxel_ode.data.prep import prep
from voxel_ode.inference.evaluate import evaluate
from voxel_ode.synth.voxel import generate_dataset
from voxel_ode.training.train import train
from voxel_ode.utils import UserError


@dataclass
class DemoConfig:
    n_sims: int
    n_test: int
    grid: tuple
    train_minutes: float
    base_channels: int
    depth: int
    batch_size: int
    rollout_steps: int
    lr: float
    max_steps: int = 100_000
    eval_every: int = 250
    seed: int = 0


FULL = DemoConfig(n_sims=40, n_test=5, grid=(32, 16, 16), train_minutes=6.0, base_channels=24, depth=4,
                  batch_size=4, rollout_steps=3, lr=2e-3)
# quick: a fixed number of steps (not a time budget) so the result does not depend on machine speed,
# and no test-split evaluation during training (the demo evaluates the final model anyway)
QUICK = DemoConfig(n_sims=24, n_test=4, grid=(24, 12, 12), train_minutes=4.0, base_channels=16, depth=3,
                   batch_size=4, rollout_steps=2, lr=3e-3, max_steps=300, eval_every=0)


def demo_config(quick=False, n_sims=None, grid=None, train_minutes=None, max_steps=None, seed=0) -> DemoConfig:
    """The FULL or QUICK settings with the given ones (None: keep)."""
    cfg = DemoConfig(**asdict(QUICK if quick else FULL))
    if n_sims is not None:
        cfg.n_sims = n_sims
    if grid is not None:
        cfg.grid = tuple(grid)
    if train_minutes is not None:
        cfg.train_minutes = train_minutes
    if max_steps is not None:
        cfg.max_steps = max_steps
    cfg.seed = seed
    cfg.grid = tuple(cfg.grid)
    if cfg.n_sims < cfg.n_test + 1:
        raise UserError(f"--n_sims must be at least {cfg.n_test + 1} ({cfg.n_test} test + 1 train simulations)")
    return cfg


def _stage_done(marker: Path, settings: dict) -> bool:
    """True when ``marker`` records a finished stage made with the same settings."""
    if not marker.exists():
        return False
    try:
        return json.loads(marker.read_text()) == settings
    except json.JSONDecodeError:
        return False


def _banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def run_demo(out, cfg: DemoConfig, workers: int = 2) -> dict:
    """synth -> prep -> train -> evaluate in ``out``; returns what demo_summary.json holds."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    raw, prepped, ckpts, evaldir = out / "raw", out / "prepped", out / "checkpoints", out / "eval"
    start = time.time()
    print(f"voxel-ode demo: {cfg.n_sims} synthetic simulations on a {'x'.join(map(str, cfg.grid))} grid, "
          f"{cfg.train_minutes:g} min of training, everything in {out}/")

    settings = {"n_sims": cfg.n_sims, "grid": list(cfg.grid), "seed": cfg.seed}
    _banner(f"1/4 synth: {cfg.n_sims} simulations -> {raw}/")
    if _stage_done(raw / ".demo_done.json", settings):
        print("reusing the simulations already there")
    else:
        generate_dataset(raw, cfg.n_sims, grid=cfg.grid, seed=cfg.seed, workers=workers)
        files.write_json_atomic(raw / ".demo_done.json", settings)

    # the channel list too: prepped data of an older version (other derived channels, no thermal
    # prior) is redone
    settings = {**settings, "n_test": cfg.n_test, "input_channels": list(schema.INPUT_CHANNELS)}
    _banner(f"2/4 prep -> {prepped}/")
    if _stage_done(prepped / ".demo_done.json", settings):
        print("reusing the prepped data already there")
    else:
        # The demo trains on whole-grid samples (the grid is small), so one patch
        # covering the grid is enough for the patch index.
        summary = prep(raw, prepped, patch_size=cfg.grid, stride=cfg.grid, n_test=cfg.n_test,
                       min_active_frac=0.0, workers=workers)
        print(f"prepped {len(summary['train'])} train + {len(summary['test'])} test simulations")
        files.write_json_atomic(prepped / ".demo_done.json", settings)

    _banner(f"3/4 train: {cfg.train_minutes:g} min on whole-grid samples, {cfg.rollout_steps}-step rollout training")
    result = train(
        prepped_root=str(prepped), save_dir=str(ckpts), sample_mode="full",
        base_channels=cfg.base_channels, depth=cfg.depth, receptive_field_radius=2,
        batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=50, max_steps=cfg.max_steps,
        time_budget_min=cfg.train_minutes, rollout_steps=cfg.rollout_steps,
        rollout_curriculum_steps=200, aug_xy_rot=True, aug_flip=True, noise_std=0.0,
        eval_every=cfg.eval_every, log_every=50, ckpt_every=1000,
        seed=cfg.seed, device="cpu",
    )
    # the final model, not the "best" one: that is picked on the test split, which the
    # evaluation below then reports on (a test-set choice would flatter the numbers)
    ckpt = result["last_checkpoint"]

    _banner(f"4/4 evaluate {Path(ckpt).name} (the final model): rollouts of the {cfg.n_test} test simulations "
            f"-> {evaldir}/")
    summary = evaluate(prepped, ckpt, evaldir, split="test", device="cpu", plots=True,
                       linear_baseline=True)
    minutes = (time.time() - start) / 60
    print(f"\ndone in {minutes:.1f} min. Look at:")
    print(f"  {evaldir / 'metrics.json'}            metrics per simulation and step")
    print(f"  {evaldir / 'plots'}/                  error curves, P/T slices, field scalars (PNG)")
    print(f"  {evaldir / 'predictions'}/            predictions (*.h5) + ParaView files (*.xdmf)")
    print(f"  {ckpt}   the model evaluated above: the final one, step {result['steps']}")
    if result.get("best_checkpoint"):
        print(f"  ({result['best_checkpoint']} was picked on the test split during training; "
              "it is not evaluated here)")
    result = {"config": asdict(cfg), "minutes": minutes, "checkpoint": str(ckpt), "evaluation": summary}
    files.write_json_atomic(out / "demo_summary.json", result)
    return result
