"""Training script: loss goes down, resume is exact, DDP ranks agree, checkpoints are safe to load."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from voxel_ode import schema
from voxel_ode.training.schedule import WarmupCosine, warmup_cosine
from voxel_ode.model import precision
from voxel_ode.training.config import TrainConfig, make_config
from voxel_ode.training.train import train
from voxel_ode.cli.train import add_train_args
from voxel_ode.training.distributed import param_checksum
from voxel_ode.training.schedule import rollout_k
from voxel_ode.utils import UserError
from voxel_ode.training import loss

REPO = Path(__file__).resolve().parents[1]
TINY = dict(base_channels=8, depth=2, receptive_field_radius=1, num_threads=1, quiet=True)


@pytest.fixture
def prepped(small_prepped):
    return small_prepped  # conftest.py


def _records(save_dir: Path, event: str) -> list[dict]:
    lines = (save_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def _env() -> dict:
    # one thread per process: the test machine is small and shared
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}


# ---------------------------------------------------------------------------
# schedule
# ---------------------------------------------------------------------------


def test_warmup_cosine_shape():
    f = WarmupCosine(warmup_steps=4, max_steps=14, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and math.isclose(f(9), 0.55) and math.isclose(f(14), 0.1) and math.isclose(f(100), 0.1)
    assert all(f(s) >= f(s + 1) for s in range(4, 20))  # decays monotonically after warmup
    # warmup longer than the run: still a ramp, no division by zero or negative progress
    g = WarmupCosine(warmup_steps=1000, max_steps=10)
    assert [g(s) for s in (0, 9, 10, 2000)] == [0.001, 0.01, 0.011, 1.0]


def test_scheduler_state_loads_weights_only(tmp_path):
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    sched = warmup_cosine(opt, 2, 10)
    for _ in range(5):
        opt.step()
        sched.step()
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    sched2 = warmup_cosine(torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1.0), 2, 10)
    sched2.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert sched2.last_epoch == 5 and sched2.get_last_lr() == sched.get_last_lr()


def test_rollout_curriculum():
    args = make_config(rollout_steps=4, rollout_curriculum_steps=30)
    assert [rollout_k(s, args) for s in (0, 9, 10, 20, 30, 99)] == [1, 1, 2, 3, 4, 4]
    assert rollout_k(0, make_config(rollout_steps=3)) == 3  # no curriculum: K from the start


# ---------------------------------------------------------------------------
# argument checks and AMP policy
# ---------------------------------------------------------------------------


def test_bad_arguments_are_user_errors(prepped, tmp_path):
    with pytest.raises(UserError, match="prepped_root"):
        train(save_dir=str(tmp_path))
    with pytest.raises(UserError, match="sample_mode full"):
        train(prepped_root=str(prepped), save_dir=str(tmp_path), rollout_steps=2, **TINY)
    with pytest.raises(UserError, match="stats"):
        train(prepped_root=str(tmp_path), save_dir=str(tmp_path / "ck"), **TINY)
    with pytest.raises(UserError, match="no_priors"):  # the priors read asinh-scaled changes
        train(prepped_root=str(prepped), save_dir=str(tmp_path / "ck2"), delta_norm="zscore", **TINY)


def test_amp_policy_on_cpu_follows_the_probe_and_says_so(capsys, monkeypatch, prepped, tmp_path):
    def chosen(amp):
        c = precision.choose(amp, torch.device("cpu"))
        return c.dtype, c.scaler

    monkeypatch.setenv("VOXEL_ODE_CPU_BF16", "0")  # a CPU where bf16 measured slower
    assert chosen("auto") == (None, False)
    assert "precision: fp32" in capsys.readouterr().out
    monkeypatch.setenv("VOXEL_ODE_CPU_BF16", "1")  # one where it measured faster
    assert chosen("auto") == (torch.bfloat16, False)
    assert chosen("none") == (None, False)
    assert chosen("bf16") == (torch.bfloat16, False)
    with pytest.raises(UserError, match="--use_amp"):
        train(prepped_root=str(prepped), save_dir=str(tmp_path), amp="none", use_amp=True, **TINY)


def test_amp_flags_parse():
    assert TrainConfig().amp == "auto" and not TrainConfig().use_amp
    for amp in ("auto", "bf16", "fp16", "none"):
        p = argparse.ArgumentParser()
        add_train_args(p)
        args = p.parse_args(["--prepped_root", "x", "--amp", amp, "--use_amp"])
        assert args.amp == amp and args.use_amp
    with pytest.raises(SystemExit):
        p.parse_args(["--prepped_root", "x", "--amp", "fp8"])


# ---------------------------------------------------------------------------
# training runs
# ---------------------------------------------------------------------------


def test_loss_decreases_and_checkpoint_is_safe(prepped, tmp_path, capsys):
    save = tmp_path / "ck"
    # The fixture's pressure moves by random noise the priors know nothing of: the plain grid head.
    # (The priors are trained in tests/test_demo.py on synthetic reservoirs.)
    summary = train(prepped_root=str(prepped), save_dir=str(save), max_steps=40, batch_size=4, lr=3e-3,
                    warmup_steps=5, log_every=10, eval_every=20, ckpt_every=20, use_amp=True,
                    no_priors=True, **TINY)
    assert "precision: fp32" in capsys.readouterr().out  # --use_amp on a CPU without fast bf16: fp32
    losses = [r["loss"] for r in _records(save, "train")]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0], losses
    final = summary["final_eval"]
    # the one-step prediction beats "no change" on the held-out simulation
    assert final["mse_Pressure"] < final["persist_mse_Pressure"]
    assert all(math.isfinite(final[f"mse_{n}"]) for n in schema.DYNAMIC_NAMES + schema.SCALAR_NAMES)
    for name in ("step20.pt", "step40.pt", "last.pt"):
        assert (save / name).is_file()
    assert Path(summary["best_checkpoint"]).is_file() and Path(summary["best_checkpoint"]).name.startswith("best_step")
    assert not list(save.glob(".*tmp*"))  # atomic writes leave no temp files

    ckpt = torch.load(save / "last.pt", weights_only=True)  # no code executed from the file
    assert ckpt["step"] == 40 and ckpt["model_config"]["base_channels"] == 8
    assert ckpt["stats"]["grid_shape"] == [12, 10, 8] and ckpt["train_args"]["lr"] == 3e-3
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "best_metric"} <= set(ckpt)
    from voxel_ode.model.checkpoint import load_model

    model, _ = load_model(save / "last.pt")  # rollout needs no architecture flags
    assert model.config.depth == 2 and model.config.receptive_field_radius == 1


def test_resume_reproduces_uninterrupted_run(prepped, tmp_path):
    # augmentations and noise on, and the resume point inside epoch 0 of an epoch of 7
    # batches, so skipping ahead and the next epoch's order are both exercised
    run = dict(prepped_root=str(prepped), max_steps=12, batch_size=8, lr=3e-3, warmup_steps=3, log_every=1,
               eval_every=5, ckpt_every=5, aug_xy_rot=True, aug_flip=True, noise_std=0.05, **TINY)
    train(save_dir=str(tmp_path / "a"), **run)
    train(save_dir=str(tmp_path / "b"), resume=str(tmp_path / "a" / "step5.pt"), **run)
    full = {r["step"]: (r["loss"], r["lr"], r["epoch"]) for r in _records(tmp_path / "a", "train") if r["step"] > 5}
    resumed = {r["step"]: (r["loss"], r["lr"], r["epoch"]) for r in _records(tmp_path / "b", "train")}
    assert sorted(resumed) == list(range(6, 13)) and max(e for _, _, e in resumed.values()) == 1
    assert resumed == full  # exactly equal, not approximately
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("grad_mode", ["pushforward", "full"])
def test_rollout_training_full_grid(prepped, tmp_path, grad_mode):
    save = tmp_path / grad_mode
    summary = train(prepped_root=str(prepped), save_dir=str(save), sample_mode="full", rollout_steps=2,
                    rollout_grad=grad_mode, max_steps=4, batch_size=2, log_every=1, eval_every=4, ckpt_every=100, **TINY)
    recs = _records(save, "train")
    assert [r["rollout_steps"] for r in recs] == [2, 2, 2, 2]
    assert all(math.isfinite(r["loss"]) for r in recs)
    # full-grid samples train the scalar path: its loss is reported and finite
    assert all(math.isfinite(r[f"loss_{schema.SCALAR_NAMES[0]}"]) for r in recs)
    assert summary["steps"] == 4 and math.isfinite(summary["final_eval"]["loss"])


def test_time_budget_stops_cleanly(prepped, tmp_path):
    summary = train(prepped_root=str(prepped), save_dir=str(tmp_path), max_steps=10_000, time_budget_min=0.1,
                    batch_size=2, log_every=2, eval_every=10_000, ckpt_every=10_000, warmup_steps=5,
                    min_lr_ratio=0.1, **TINY)
    assert summary["stopped_by_time_budget"] and 0 < summary["steps"] < 10_000
    # the cosine ends with the budget, not at max_steps: the LR has decayed by the end
    lrs = [r["lr"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
           if r.get("event") == "train"]
    assert lrs[-1] < 0.5 * max(lrs), lrs
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == summary["steps"]
    assert summary["final_eval"] is not None  # the stop still evaluates and keeps a best checkpoint
    assert Path(summary["best_checkpoint"]).is_file()


# ---------------------------------------------------------------------------
# command lines: the seed's single-GPU command and torchrun with 2 gloo processes
# ---------------------------------------------------------------------------


def test_seed_single_gpu_command_runs_on_cpu(prepped, tmp_path):
    cmd = [sys.executable, str(REPO / "scripts" / "train_ddp.py"),
           "--prepped_root", str(prepped), "--batch_size", "8", "--receptive_field_radius", "1",
           "--base_channels", "8", "--depth", "2", "--max_steps", "6", "--eval_every", "3", "--log_every", "2",
           "--ckpt_every", "3", "--aug_xy_rot", "--aug_flip", "--noise_std", "0.01", "--use_amp",
           "--save_dir", str(tmp_path / "ck"), "--quiet"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "precision: fp32" in out.stdout  # --use_amp still accepted; fp32 on this (test) CPU
    assert (tmp_path / "ck" / "step6.pt").is_file() and (tmp_path / "ck" / "last.pt").is_file()


def test_user_error_is_one_line(tmp_path):
    cmd = [sys.executable, str(REPO / "scripts" / "train_ddp.py"), "--prepped_root", str(tmp_path / "nope"),
           "--save_dir", str(tmp_path / "ck")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=60)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "stats" in out.stderr


def test_torchrun_two_processes_hold_identical_weights(prepped, tmp_path):
    sums = tmp_path / "sums"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "scripts" / "train_ddp.py"), "--prepped_root", str(prepped), "--save_dir", str(tmp_path / "ck"),
           "--base_channels", "8", "--depth", "2", "--receptive_field_radius", "1", "--batch_size", "4",
           "--max_steps", "6", "--log_every", "2", "--eval_every", "3", "--ckpt_every", "3", "--aug_xy_rot",
           "--lr", "3e-3", "--warmup_steps", "2", "--quiet"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                         env={**_env(), "VOXEL_ODE_PARAM_CHECKSUM_DIR": str(sums)})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    rank0, rank1 = (sums / "rank0.txt").read_text(), (sums / "rank1.txt").read_text()
    assert rank0 == rank1
    from voxel_ode.model.checkpoint import load_model

    model, ckpt = load_model(tmp_path / "ck" / "last.pt")
    assert param_checksum(model) + "\n" == rank0  # rank 0's checkpoint holds the same weights
    assert ckpt["step"] == 6 and len(ckpt["rng"]) == 2  # each rank's RNG state is kept
    # only rank 0 writes: one line per log event, not two
    assert [r["step"] for r in _records(tmp_path / "ck", "train")] == [2, 4, 6]
    # the weights moved (a run that never stepped would also agree across ranks)
    init = torch.load(tmp_path / "ck" / "step3.pt", weights_only=True)["model"]
    assert any(not torch.equal(init[k], v) for k, v in model.state_dict().items())


def test_torchrun_one_process_runs_the_distributed_path(prepped, tmp_path):
    # a one-GPU torchrun job must take the process-group path (NCCL/DDP are then exercised on
    # one GPU as on many) and train exactly like a plain run
    run = ["--base_channels", "8", "--depth", "2", "--receptive_field_radius", "1", "--batch_size", "4",
           "--max_steps", "3", "--log_every", "1", "--eval_every", "100", "--ckpt_every", "100", "--quiet",
           "--prepped_root", str(prepped)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           str(REPO / "scripts" / "train_ddp.py"), *run, "--save_dir", str(tmp_path / "ddp")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=_env())
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "1 process(es) on cpu (torch.distributed, gloo)" in out.stdout
    plain = subprocess.run([sys.executable, str(REPO / "scripts" / "train_ddp.py"), *run,
                            "--save_dir", str(tmp_path / "plain")], capture_output=True, text=True, timeout=180,
                           env=_env())
    assert plain.returncode == 0 and "torch.distributed" not in plain.stdout
    from voxel_ode.model.checkpoint import load_model

    assert param_checksum(load_model(tmp_path / "ddp" / "last.pt")[0]) == \
        param_checksum(load_model(tmp_path / "plain" / "last.pt")[0])
    assert [r["loss"] for r in _records(tmp_path / "ddp", "train")] == \
        [r["loss"] for r in _records(tmp_path / "plain", "train")]


def test_workers_give_the_same_batches(prepped, tmp_path):
    # num_workers > 0 works (each worker opens its own HDF5 handles) and, because the data
    # order and augmentations are functions of (seed, epoch, index), trains identically
    run = dict(prepped_root=str(prepped), max_steps=4, batch_size=4, log_every=1, eval_every=100, ckpt_every=100,
               aug_xy_rot=True, aug_flip=True, noise_std=0.05, **TINY)
    train(save_dir=str(tmp_path / "w0"), num_workers=0, **run)
    train(save_dir=str(tmp_path / "w2"), num_workers=2, **run)
    w0 = [r["loss"] for r in _records(tmp_path / "w0", "train")]
    w2 = [r["loss"] for r in _records(tmp_path / "w2", "train")]
    assert len(w0) == 4 and w0 == w2


def test_missing_wandb_is_a_clear_error(prepped, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.raises(UserError, match="wandb is not importable"):
        train(prepped_root=str(prepped), save_dir=str(tmp_path), use_wandb=True, max_steps=1, **TINY)


def test_pressure_loss_with_the_priors_compares_the_change_since_start(prepped, monkeypatch):
    """A first step that is wrong by e and a second step that corrects it: with the priors
    the second step's pressure loss is 0 (the change since t = 0 is right again); the increment
    loss of the plain head is not. Temperature is compared step by step either way."""
    from voxel_ode.model.features import Normalizer
    from voxel_ode.model.network import ModelConfig
    from voxel_ode.training.loss import Unroll

    norm = Normalizer(json.loads((prepped / schema.STATS_FILE).read_text()))
    shape = (1, 1, 3, 4, 5)
    active = torch.ones(shape)
    x = torch.zeros(1, schema.N_INPUT_CHANNELS, *shape[2:])
    x[:, schema.channel_index("PressureChange")] = 0.8  # true change so far: sinh(0.8) s_P
    target = torch.full((1, 2, schema.N_DYNAMIC, *shape[2:]), 0.3)  # two true steps
    err = 0.5
    # predicted increments in target units: step 1 off by +err, step 2 takes it back
    steps = [torch.asinh(torch.sinh(target[:, 0]) + torch.tensor([err, 0.0]).view(1, 2, 1, 1, 1)),
             torch.asinh(torch.sinh(target[:, 1]) - torch.tensor([err, 0.0]).view(1, 2, 1, 1, 1))]

    class Scripted(torch.nn.Module):
        def __init__(self, priors):
            super().__init__()
            self.config = ModelConfig(priors=priors)
            self.calls = 0

        def forward(self, x, params, active):
            self.calls += 1
            return steps[self.calls - 1].clone(), torch.zeros(1, schema.N_SCALARS)

    batch = {"x": x, "active": active, "params": torch.zeros(1, schema.N_CONDITIONING), "t": torch.tensor([0]),
             "target_delta": target, "target_scalars": torch.zeros(1, 2, schema.N_SCALARS),
             "priors": torch.zeros(1, 3, schema.N_PRIORS, *x.shape[2:])}
    for priors in (True, False):
        unroll = Unroll(Scripted(priors), norm, train_scalars=False, precision=precision.FP32)
        step_losses = []
        mse = loss.masked_channel_mse
        monkeypatch.setattr(loss, "masked_channel_mse",  # record the per-step [P, T] losses
                            lambda p, t, a: step_losses.append(mse(p, t, a)) or step_losses[-1])
        unroll(batch, k_steps=2, detach_between=True)
        monkeypatch.undo()
        first, second = step_losses
        assert first[0] > 1e-3 and first[1] == 0 and second[1] == 0
        if priors:
            assert second[0] < 1e-10  # the change since t = 0 is right again after step 2
        else:
            assert second[0] > 1e-3  # the increment of step 2 is off by -err


def test_budget_horizon_follows_the_step_rate(monkeypatch):
    """With a time budget the cosine (and the progress bar) ends where the budget ends: 20 steps in
    10 s of a 60 s budget leave 50 s at 2 steps/s, so the horizon is 20 + 100; capped at --max_steps."""

    from voxel_ode.training.schedule import warmup_cosine
    from voxel_ode.training.distributed import Dist
    from voxel_ode.training.schedule import fit_schedule_to_budget

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(opt, 0, 10_000)
    ddp = Dist("cpu")
    monkeypatch.setattr("voxel_ode.training.schedule.time.time", lambda: 1010.0)
    args = argparse.Namespace(time_budget_min=1.0, max_steps=10_000)
    assert fit_schedule_to_budget(scheduler, 5, 0, 1000.0, args, ddp) is None  # too few steps to tell
    assert fit_schedule_to_budget(scheduler, 20, 0, 1000.0, args, ddp) == 120
    assert scheduler.lr_lambdas[0].max_steps == 120
    args.max_steps = 50
    assert fit_schedule_to_budget(scheduler, 20, 0, 1000.0, args, ddp) == 50


def test_eval_every_zero_evaluates_only_after_the_last_step(prepped, tmp_path):
    train(prepped_root=str(prepped), save_dir=str(tmp_path), max_steps=4, batch_size=2, log_every=1, eval_every=0,
          ckpt_every=100, **TINY)
    assert [r["step"] for r in _records(tmp_path, "eval")] == [4]
    with pytest.raises(UserError, match="eval_every"):
        train(prepped_root=str(prepped), save_dir=str(tmp_path / "neg"), max_steps=1, eval_every=-1, **TINY)


def test_priors_follow_the_flag_and_the_log_says_what_prep_computed(prepped, tmp_path, capsys):
    """The prior heads are the default (--no_priors: the grid head alone); the log says whether
    prep computed physics priors (stats.json "priors") or left them at zero."""
    from voxel_ode.model.checkpoint import load_model

    assert json.loads((prepped / schema.STATS_FILE).read_text())["priors"] is True
    for flag, expected, said in ((False, True, "physics priors=yes"), (True, False, "physics priors=no")):
        out = tmp_path / str(flag)
        train(prepped_root=str(prepped), save_dir=str(out), max_steps=1, batch_size=2, eval_every=0,
              no_priors=flag, **TINY)
        model, _ = load_model(out / "last.pt")
        assert model.config.priors is expected and said in capsys.readouterr().out
        assert model.config.temperature_residual is False  # prep computed priors: the thermal prior's step alone
