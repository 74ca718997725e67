"""Training: `voxel-ode train` == `python scripts/train_ddp.py` == `torchrun ... scripts/train_ddp.py`.

``train()`` = ``build_run`` (model, data, optimizer; a resumed run from its checkpoint:
``start_from`` and ``restore`` are all that --resume reads) -> ``train_loop`` (train step, log,
evaluate, checkpoint, time budget) -> ``finish`` (final evaluation, last.pt, summary). The
pieces live in their homes: options (config.py), processes and RNG (distributed.py), samples
(dataset.py) and their order (batches.py), the loss (loss.py), validation (validation.py),
metrics.jsonl and wandb (log.py), schedules (schedule.py), the checkpoint format
(model/checkpoint.py).

* One process when not under torchrun; DDP when torchrun sets WORLD_SIZE > 1 (NCCL on CUDA,
  gloo on CPU). Only rank 0 logs and writes files.
* ``--rollout_steps K`` (full-grid samples) feeds the model its own predictions for K steps.
* Library use: ``train(prepped_root=..., max_steps=..., ...)`` (TrainConfig's names) returns a
  summary dict; the demo calls it in-process.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from voxel_ode import files, schema
from voxel_ode.data import prepped
from voxel_ode.data.stats import Stats
from voxel_ode.model import checkpoint, precision
from voxel_ode.model.features import Normalizer
from voxel_ode.model.network import ModelConfig, VoxelAutoRegressor, count_parameters
from voxel_ode.training import config as train_config
from voxel_ode.training.batches import eval_loader, to_device, training_batches
from voxel_ode.training.config import TrainConfig
from voxel_ode.training.dataset import PatchDataset
from voxel_ode.training.distributed import Dist, get_rng_state, param_checksum, set_rng_state
from voxel_ode.training.log import Logger, LogWindow
from voxel_ode.training.loss import Unroll
from voxel_ode.training.schedule import WarmupCosine, fit_schedule_to_budget, rollout_k, warmup_cosine
from voxel_ode.training.validation import validate
from voxel_ode.utils import UserError


@dataclass
class TrainState:
    """Where a run is; saved in every checkpoint beside weights, optimizer, schedule and scaler."""

    step: int = 0
    best_metric: float = float("inf")  # the lowest eval loss so far
    best_path: str | Path | None = None  # its checkpoint (a str when read back from a checkpoint)


def start_from(args: TrainConfig, stats: Stats):
    """(checkpoint or None, model config, delta_mode) to build the run from. A resumed run takes
    the architecture and change normalization from its checkpoint (its weights fit only those),
    a fresh run from the flags."""
    if args.resume:
        ckpt = checkpoint.load(args.resume)
        checkpoint.check_resume(ckpt, args.resume, stats)
        return ckpt, checkpoint.model_config(ckpt, args.resume), ckpt.get("delta_mode", args.delta_norm)
    if not args.no_priors and args.delta_norm != "asinh":
        raise UserError("train: the prior heads need --delta_norm asinh (add --no_priors for zscore)")
    config = ModelConfig(base_channels=args.base_channels, depth=args.depth,
                         receptive_field_radius=args.receptive_field_radius, norm=args.norm,
                         global_context=not args.no_global_context, priors=not args.no_priors,
                         temperature_residual=needs_temperature_residual(stats))
    return None, config, args.delta_norm


def needs_temperature_residual(stats: Stats) -> bool:
    """Whether the temperature head needs a residual beside the thermal prior: where prep computed
    no priors, or computed them with calibrated constants (fitted on six runs: a guess for the rest)."""
    return not stats.priors or bool(stats.description.calibrated)


def restore(ckpt: dict, args: TrainConfig, model, opt: Optim, ddp: Dist, log) -> TrainState:
    """Load a --resume checkpoint into the built run: weights, optimizer, schedule, scaler, this
    rank's RNG state; returns its step and best so far."""
    try:
        model.load_state_dict(ckpt["model"])
        opt.optimizer.load_state_dict(ckpt["optimizer"])
        opt.scheduler.load_state_dict(ckpt["scheduler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{args.resume}: checkpoint: its state does not fit this model "
                        f"({(str(err).splitlines() or [''])[0][:200]})") from None
    # keep the schedule of THIS invocation's flags (e.g. a longer --max_steps)
    opt.scheduler.lr_lambdas[0] = WarmupCosine(args.warmup_steps, args.max_steps, args.min_lr_ratio)
    if ckpt.get("scaler"):
        opt.scaler.load_state_dict(ckpt["scaler"])
    state = TrainState(step=int(ckpt["step"]), best_metric=float(ckpt.get("best_metric", float("inf"))),
                       best_path=ckpt.get("best_path"))
    rng = ckpt.get("rng") or []
    if rng:
        set_rng_state(rng[ddp.rank] if ddp.rank < len(rng) else rng[0])
    log(f"resumed from {args.resume} at step {state.step}")
    return state


def save_training_checkpoint(run: Run, state: TrainState, name: str) -> Path:
    """Gather every rank's RNG state, then rank 0 writes ``name`` atomically."""
    rng = [get_rng_state()]
    if run.ddp.enabled:
        rng = [None] * run.ddp.world
        dist.all_gather_object(rng, get_rng_state())
    path = run.save_dir / name
    if run.ddp.is_main:
        opt = run.opt
        checkpoint.save(path, checkpoint.training_checkpoint(
            run.model, run.stats, run.delta_mode, run.train_args, opt.optimizer, opt.scheduler, opt.scaler,
            state.step, state.best_metric, state.best_path, rng))
    return path


def evaluate_and_keep_best(run: Run, state: TrainState) -> dict | None:
    """Evaluate, log the "eval" record, and checkpoint a new best (deleting the previous best)."""
    if run.eval_loader is None:
        return None
    t0 = time.time()
    res = validate(run.model, run.eval_loader, run.normalizer, run.ddp.device, run.opt.precision, run.ddp,
                   run.train_scalars)
    res = {"event": "eval", "step": state.step, **res, "eval_s": time.time() - t0}
    run.logger.log(res)
    if run.ddp.is_main:
        tqdm.write(f"eval step {state.step}: loss {res['loss']:.4g} | P mse {res['mse_Pressure']:.3g} "
                   f"(no-change {res['persist_mse_Pressure']:.3g}) | T mse {res['mse_Temperature']:.3g} "
                   f"(no-change {res['persist_mse_Temperature']:.3g}) | +/-5 bar {res['acc_abs_Pressure']:.3f} "
                   f"+/-5 K {res['acc_abs_Temperature']:.3f}")
    if res["loss"] < state.best_metric:
        state.best_metric = res["loss"]
        old = state.best_path  # the new best checkpoint still names the previous one as best_path
        state.best_path = save_training_checkpoint(run, state, f"best_step{state.step}.pt")
        # keep only the best one, and never delete files of another run's folder
        if (run.ddp.is_main and old is not None and Path(old) != state.best_path and Path(old).exists()
                and Path(old).parent.resolve() == run.save_dir.resolve()):
            Path(old).unlink()
    return res


@dataclass
class Optim:
    """AdamW, its LR schedule, and the precision the steps run in."""

    params: list  # the trained parameters (their gradient norm is clipped)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    precision: precision.Precision  # the autocast every forward pass runs under


@dataclass
class Run:
    """The built pieces of one training run; the loop, the evaluation and the checkpoints read them."""

    args: TrainConfig
    ddp: Dist
    log: Callable[..., None]  # print on rank 0, silent elsewhere
    save_dir: Path
    stats: Stats
    delta_mode: str
    model: torch.nn.Module  # the plain model (what checkpoints hold)
    unroll: torch.nn.Module  # the training loss (Unroll), wrapped in DDP under torchrun
    normalizer: Normalizer
    train_ds: PatchDataset
    eval_loader: torch.utils.data.DataLoader | None  # None without a test split
    train_scalars: bool  # whether the loss counts the field scalars (build_data says when)
    opt: Optim
    logger: Logger
    train_args: dict  # the flags as plain types (stored in every checkpoint)


def train(config=None, **options) -> dict:
    """Train; returns a summary dict (best/last checkpoint paths, final eval metrics, steps, timing).

    ``config``: a TrainConfig, a dict of its option names or an argparse namespace; ``options``
    override it.
    """
    args = train_config.make_config(config, **options)
    train_config.check(args)
    t_start = time.time()
    threads_before = torch.get_num_threads()
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    ddp = Dist(args.device)
    try:
        with contextlib.ExitStack() as held:
            if ddp.is_main:  # one training per save_dir, checked writable before any work
                files.writable_folder(args.save_dir, "--save_dir")
                held.enter_context(files.folder_lock(args.save_dir, "train"))
            run, state = build_run(args, ddp)
            start_step = state.step
            last_eval, stopped_by_budget = train_loop(run, state, t_start)
            return finish(run, state, start_step, last_eval, stopped_by_budget, t_start)
    finally:
        ddp.close()
        torch.set_num_threads(threads_before)  # an in-process caller keeps its own setting


def build_run(args: TrainConfig, ddp: Dist) -> tuple[Run, TrainState]:
    """Model, data, optimizer and logger of a fresh or resumed run, and the state it starts at."""
    log = print if ddp.is_main else (lambda *a, **k: None)
    root, save_dir = Path(args.prepped_root), Path(args.save_dir)
    stats = Stats.load(root)
    for warning in stats.calibration_warnings:
        log(f"note: calibration: {warning}")
    ckpt, config, delta_mode = start_from(args, stats)
    model = build_model(config, stats, args.seed, ddp, log)
    normalizer, train_ds, test_ds, train_scalars = build_data(args, stats, config, delta_mode, ddp, log)
    opt = build_optimizer(args, model, ddp, log)
    if ddp.is_main:  # weights + AdamW's two moments per checkpoint; last, best and a periodic one
        size = 3 * 4 * sum(p.numel() for p in model.parameters()) + 1e6
        files.check_room(save_dir, 3 * size, size, "train")
    state = restore(ckpt, args, model, opt, ddp, log) if ckpt is not None else TrainState()

    unroll = Unroll(model, normalizer, train_scalars, opt.precision)
    if ddp.enabled:
        unroll = torch.nn.parallel.DistributedDataParallel(
            unroll, device_ids=[ddp.local_rank] if ddp.device.type == "cuda" else None)
    train_args = args.as_dict()
    if ddp.is_main:  # temporary files of a killed run (whose process is gone)
        files.clean_leftovers(save_dir, log)
        if ckpt is None:  # a fresh run: an earlier run's files are kept whole, not mixed with this one's
            earlier = files.move_aside(save_dir, ["metrics.jsonl"] + sorted(p.name for p in save_dir.glob("*.pt")))
            if earlier is not None:
                log(f"note: {save_dir} held an earlier run: its files are now in {earlier}")
    logger = Logger(save_dir, ddp.is_main, args.use_wandb, train_args, resume=ckpt is not None,
                    resume_step=state.step if ckpt is not None else None)
    run = Run(args=args, ddp=ddp, log=log, save_dir=save_dir, stats=stats, delta_mode=delta_mode, model=model,
              unroll=unroll, normalizer=normalizer, train_ds=train_ds, eval_loader=eval_loader(test_ds, args, ddp),
              train_scalars=train_scalars, opt=opt, logger=logger, train_args=train_args)
    return run, state


def build_model(config: ModelConfig, stats: Stats, seed: int, ddp: Dist, log) -> torch.nn.Module:
    torch.manual_seed(seed)  # same initial weights on every rank
    model = VoxelAutoRegressor(config).to(ddp.device)
    yes_no = {True: "yes", False: "no"}
    heads = "no (the grid head alone)"
    if config.priors:
        heads = "yes" if stats.priors else \
            "none computed by prep (zeros: the pressure head predicts the change since t = 0 itself)"
    log(f"model: {count_parameters(model):,} parameters, local receptive field {model.receptive_field} cells, "
        f"norm={config.norm}, whole-field path={yes_no[config.global_context]}, physics priors={heads}")
    return model


def build_data(args: TrainConfig, stats: Stats, config: ModelConfig, delta_mode: str, ddp: Dist, log):
    """(normalizer, train dataset, test dataset or None, whether the scalars are trained)."""
    if config.priors and delta_mode != "asinh":
        raise UserError("train: the physics priors need --delta_norm asinh")
    root = Path(args.prepped_root)
    normalizer = Normalizer(stats, delta_mode=delta_mode)
    prepped.check_prepped_files(sorted(p for split in schema.SPLITS
                                       for p in (root / split).glob(f"*{schema.PREPPED_SUFFIX}")))
    common = dict(stats=stats, mode=args.sample_mode, seed=args.seed,
                  context_factor=config.context_factor, delta_mode=delta_mode)
    train_ds = PatchDataset(root, "train", rollout_steps=args.rollout_steps, aug_xy_rot=args.aug_xy_rot,
                            aug_flip=args.aug_flip, noise_std=args.noise_std, **common)
    try:
        test_ds = PatchDataset(root, "test", **common)
    except UserError as err:
        test_ds = None
        log(f"note: no evaluation ({err})")
    # scalars are field sums: trainable from the whole-field path or from whole grids only
    train_scalars = config.global_context or args.sample_mode == "full"
    n_local = math.ceil(len(train_ds) / ddp.world)
    log(f"data: {len(train_ds):,} train samples ({args.sample_mode}), "
        f"{len(test_ds) if test_ds is not None else 0:,} test; "
        f"{max(1, n_local // args.batch_size)} batches/epoch/process, {ddp.world} process(es) on {ddp.device}"
        + (f" (torch.distributed, {dist.get_backend()})" if ddp.enabled else ""))
    return normalizer, train_ds, test_ds, train_scalars


def build_optimizer(args: TrainConfig, model: torch.nn.Module, ddp: Dist, log) -> Optim:
    """AdamW (weight decay on conv/linear weights only), the warmup-cosine schedule, --amp precision."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]  # conv/linear weights
    no_decay = [p for p in params if p.dim() < 2]  # biases, norm gains
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr,
                                  fused=ddp.device.type == "cuda")
    scheduler = warmup_cosine(optimizer, args.warmup_steps, args.max_steps, args.min_lr_ratio)
    chosen = precision.choose(args.amp, ddp.device, log)  # --use_amp, the seed's GPU AMP, is --amp auto
    scaler = torch.amp.GradScaler(ddp.device.type, enabled=chosen.scaler)
    return Optim(params=params, optimizer=optimizer, scheduler=scheduler, scaler=scaler, precision=chosen)


def train_loop(run: Run, state: TrainState, t_start: float) -> tuple[dict | None, bool]:
    """Step until --max_steps or the time budget; log, evaluate and checkpoint on their schedules.
    Returns (the last evaluation or None, whether the time budget stopped the run)."""
    args, ddp = run.args, run.ddp
    start_step, last_eval, stopped_by_budget, t_loop = state.step, None, False, time.time()
    window = LogWindow()
    bar = tqdm(total=args.max_steps, initial=state.step, disable=not ddp.is_main or args.quiet,
               desc="train", dynamic_ncols=True)
    batches = training_batches(run.train_ds, args, ddp, state.step)
    run.model.train()
    while state.step < args.max_steps:
        epoch, batch = next(batches)
        batch = to_device(batch, ddp.device)
        k_steps = rollout_k(state.step, args)
        loss, grid_parts, scalar_parts, grad_norm, lr = train_step(run, batch, k_steps, state.step)
        state.step += 1
        bar.update(1)

        window.add(batch, k_steps, ddp.world, loss, grid_parts, scalar_parts)
        if state.step % args.log_every == 0 or state.step == args.max_steps:
            rec = window.record(state.step, epoch, lr, grad_norm, k_steps, t_start)
            run.logger.log(rec)
            bar.set_postfix(loss=f"{rec['loss']:.4g}", lr=f"{lr:.2e}", pps=f"{rec['patches_per_s']:.1f}")
            window.reset()
            if args.time_budget_min > 0:
                horizon = fit_schedule_to_budget(run.opt.scheduler, state.step, start_step, t_start, args, ddp,
                                                 t_loop)
                if horizon is not None:  # the bar's end where the budget ends, not at --max_steps
                    bar.total = horizon
                    bar.refresh()
        if args.eval_every and state.step % args.eval_every == 0:
            last_eval = evaluate_and_keep_best(run, state)
        if state.step % args.ckpt_every == 0:
            save_training_checkpoint(run, state, f"step{state.step}.pt")
        if args.time_budget_min > 0:
            over = time.time() - t_start > args.time_budget_min * 60
            if ddp.any_flag(over):  # every rank stops at the same step
                stopped_by_budget = True
                run.log(f"\ntime budget of {args.time_budget_min} min reached at step {state.step}: stopping")
                break
    bar.close()
    return last_eval, stopped_by_budget


def train_step(run: Run, batch: dict, k_steps: int, step: int):
    """One optimizer step on ``batch`` unrolled for ``k_steps``.
    Returns (loss, grid and scalar loss parts, gradient norm, the LR this step used)."""
    opt, args = run.opt, run.args
    loss, grid_parts, scalar_parts = run.unroll(batch, k_steps, args.rollout_grad == "pushforward")
    if not torch.isfinite(loss):  # no step on it: the checkpoints written so far stay the last good ones
        raise UserError(f"loss is {loss.item()} at step {step + 1}: stopped before updating the weights "
                        f"(checkpoints written so far are kept in {args.save_dir}); lower --lr or check the data")
    opt.scaler.scale(loss).backward()
    opt.scaler.unscale_(opt.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(opt.params, args.grad_clip if args.grad_clip > 0 else float("inf"))
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    opt.optimizer.zero_grad(set_to_none=True)
    lr = opt.scheduler.get_last_lr()[0]
    opt.scheduler.step()
    return loss, grid_parts, scalar_parts, grad_norm, lr


def finish(run: Run, state: TrainState, start_step: int, last_eval: dict | None, stopped_by_budget: bool,
           t_start: float) -> dict:
    """A final evaluation (unless the last step had one), last.pt, and the summary."""
    if state.step > start_step and (last_eval is None or last_eval["step"] != state.step):
        last_eval = evaluate_and_keep_best(run, state)
    last_path = save_training_checkpoint(run, state, "last.pt")
    if os.environ.get("VOXEL_ODE_PARAM_CHECKSUM_DIR"):  # tests: compare weights across DDP ranks
        out = Path(os.environ["VOXEL_ODE_PARAM_CHECKSUM_DIR"]) / f"rank{run.ddp.rank}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(param_checksum(run.model) + "\n")
    run.ddp.barrier()
    run.logger.close()
    summary = {
        "best_checkpoint": str(state.best_path) if state.best_path else None,
        "last_checkpoint": str(last_path),
        "best_metric": state.best_metric if math.isfinite(state.best_metric) else None,
        "final_eval": last_eval,
        "steps": state.step, "start_step": start_step,
        "stopped_by_time_budget": stopped_by_budget,
        "elapsed_s": time.time() - t_start,
        "metrics_path": str(run.save_dir / "metrics.jsonl"),
    }
    if run.ddp.is_main:
        run.log(f"done: {state.step} steps in {summary['elapsed_s']:.0f} s; best {summary['best_checkpoint']}, "
                f"last {last_path}; metrics in {summary['metrics_path']}")
    return summary
