"""precision.py: the CPU probe's decision (with fake timings), its cache, and --amp resolution."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from voxel_ode.model import precision as P
from voxel_ode.utils import UserError


def fake_timer(fp32_s: float, bf16_s: float, calls: list | None = None):
    def timer(size, reps):
        if calls is not None:
            calls.append(size)
        return fp32_s, bf16_s
    return timer


def test_decide_needs_a_real_speedup():
    assert P.decide(1.0, 0.5)  # 2x faster: bf16
    assert not P.decide(1.0, 0.9)  # 1.1x: not worth the rounding
    assert not P.decide(1.0, 300.0)  # a CPU without bf16 units


def test_probe_stops_on_the_small_shape_when_bf16_is_hopeless():
    calls = []
    r = P.probe(fake_timer(1e-3, 0.4, calls))
    assert r["bf16_fast"] is False and r["size"] == P.PROBE_SMALL
    assert set(calls) == {P.PROBE_SMALL}  # never timed the big shape slowly
    calls.clear()
    r = P.probe(fake_timer(1e-2, 2e-3, calls))
    assert r["bf16_fast"] is True and r["size"] == P.PROBE_SIZE
    assert set(calls) == {P.PROBE_SMALL, P.PROBE_SIZE}


def test_probe_runs_once_per_cpu_and_torch_version(tmp_path, monkeypatch):
    monkeypatch.delenv("VOXEL_ODE_CPU_BF16", raising=False)
    path = tmp_path / "cache" / "precision.json"
    calls = []
    fast, why = P.cpu_bf16_fast(path, fake_timer(1e-2, 2e-3, calls))
    assert fast and "5.00x" in why
    n = len(calls)
    # cached: a timer that would say "slow" is not consulted
    assert P.cpu_bf16_fast(path, fake_timer(1e-3, 1.0, calls))[0] is True and len(calls) == n
    cache = json.loads(path.read_text())
    assert list(cache) == [P.cpu_key()] and torch.__version__ in P.cpu_key()
    # another CPU model / torch version (another key) is probed anew
    cache = {"other cpu torch 0.1": cache[P.cpu_key()]}
    path.write_text(json.dumps(cache))
    assert P.cpu_bf16_fast(path, fake_timer(1e-3, 1.0, calls))[0] is False and len(calls) > n
    assert len(json.loads(path.read_text())) == 2
    # a corrupt cache is probed again, not a crash
    path.write_text("{not json")
    assert P.cpu_bf16_fast(path, fake_timer(1e-2, 2e-3))[0] is True


def test_env_override_skips_the_probe(tmp_path, monkeypatch):
    def boom(*a):
        raise AssertionError("probed")

    monkeypatch.setenv("VOXEL_ODE_CPU_BF16", "1")
    assert P.cpu_bf16_fast(tmp_path / "c.json", boom)[0] is True
    monkeypatch.setenv("VOXEL_ODE_CPU_BF16", "0")
    assert P.cpu_bf16_fast(tmp_path / "c.json", boom)[0] is False


def test_resolve_on_cpu(monkeypatch, capsys):
    monkeypatch.setenv("VOXEL_ODE_CPU_BF16", "1")
    assert P.resolve("auto", "cpu").dtype is torch.bfloat16
    assert P.resolve(None, "cpu").dtype is torch.bfloat16  # None = auto
    monkeypatch.setenv("VOXEL_ODE_CPU_BF16", "0")
    assert P.resolve("auto", "cpu").dtype is None
    assert P.resolve("bf16", "cpu").dtype is torch.bfloat16  # asked for: honoured
    assert P.resolve("none", "cpu").dtype is None
    fp16 = P.resolve("fp16", "cpu")
    assert fp16.dtype is None and "for CUDA" in capsys.readouterr().out
    assert not any(P.resolve(a, "cpu").scaler for a in P.AMP_CHOICES)
    with pytest.raises(UserError):
        P.resolve("fp8", "cpu")


def test_amp_flag_of_rollout_and_evaluate():
    from voxel_ode.cli.inference import add_evaluate_args, add_rollout_args

    for add, base in ((add_rollout_args, ["--prepped_sim_path", "s.h5", "--ckpt_path", "c.pt"]),
                      (add_evaluate_args, ["--prepped_root", "r", "--ckpt_path", "c.pt"])):
        p = argparse.ArgumentParser()
        add(p)
        assert p.parse_args(base).amp == "auto"
        for amp in P.AMP_CHOICES:
            assert p.parse_args(base + ["--amp", amp]).amp == amp
        with pytest.raises(SystemExit):
            p.parse_args(base + ["--amp", "fp8"])


def test_real_probe_is_short(tmp_path, monkeypatch):
    """The real timing on this machine: an answer, cached, in well under a second of convolutions."""
    import time

    monkeypatch.delenv("VOXEL_ODE_CPU_BF16", raising=False)
    t0 = time.perf_counter()
    fast, why = P.cpu_bf16_fast(tmp_path / "p.json")
    assert isinstance(fast, bool) and "fp32's speed" in why
    assert time.perf_counter() - t0 < 10.0  # generous: a shared, loaded CPU
