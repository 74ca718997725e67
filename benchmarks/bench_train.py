"""Training throughput on this CPU and achieved convolution GFLOP/s next to the measured peak.

    python benchmarks/bench_train.py                 # ~5 min on the 2-core CPU machine
    python benchmarks/bench_train.py --steps 10 --quick

For each model size it trains ``--steps`` optimizer steps on 32^3 patches of a
small prepped dataset (tests/fixtures data: throughput does not depend on the
physics) through ``voxel_ode.training.train.train`` (data loading included) and reports
patches/s and voxels/s from metrics.jsonl (the first log window, with warm-up,
is dropped). Convolution FLOPs are counted with forward hooks on every Conv3d:
2 * k^3 * Cin * Cout per output voxel, times 3 for forward + backward (the
input gradient and the weight gradient each cost about one forward). The
"peak" is a bare Conv3d(C, C, 3^3) forward + backward on the same batch shape,
memory format and precision (--amp: fp32 and bf16 autocast) as the residual
blocks, timed in this script. The data loader's share: reading, normalizing and
collating one batch in the training process (what --num_workers 0 adds to each
step) over the measured time of a step.
Also compares --num_workers 0 vs 2 for patch training, and 1 vs 2 threads.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from voxel_ode import schema  # noqa: E402


def make_data(root: Path, grid=(40, 40, 40)) -> Path:
    from fixtures import write_raw_dir

    from voxel_ode.data.prep import prep

    write_raw_dir(root / "raw", n=3, grid=grid, n_t=4, inactive_frac=0.2)
    prep(root / "raw", root / "prepped", patch_size=(32, 32, 32), stride=(8, 8, 8), n_test=1, progress=False)
    return root / "prepped"


def conv_flops_per_sample(model, patch: int, context_shape) -> float:
    """Forward FLOPs of all Conv3d layers for one patch sample (context net included)."""
    total = [0.0]

    def hook(mod, inp, out):
        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.kernel_size[2]
        total[0] += 2.0 * k * (mod.in_channels // mod.groups) * out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    x = torch.randn(1, schema.N_INPUT_CHANNELS, patch, patch, patch)
    active = torch.ones(1, 1, patch, patch, patch)
    extra = {}
    if model.config.global_context:
        extra = dict(origin=torch.zeros(1, 3, dtype=torch.long), context_x=torch.randn(1, schema.N_INPUT_CHANNELS, *context_shape),
                     context_active=torch.ones(1, 1, *context_shape))
    with torch.no_grad():
        model(x, torch.randn(1, schema.N_CONDITIONING), active, **extra)
    for h in handles:
        h.remove()
    return total[0]


def conv_peak_gflops(channels: int, batch: int, patch: int, reps: int = 5, amp: str = "none") -> float:
    """GFLOP/s of a bare 3^3 Conv3d forward + backward, the shape of the residual blocks, in the
    training's precision (``amp`` "none" = fp32 or "bf16" autocast)."""
    conv = torch.nn.Conv3d(channels, channels, 3, padding=1)
    x = torch.randn(batch, channels, patch, patch, patch).contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_(True)
    conv = conv.to(memory_format=torch.channels_last_3d)
    flops = 3 * 2.0 * 27 * channels * channels * batch * patch**3
    best = float("inf")
    for i in range(reps + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            y = conv(x)
        y.float().sum().backward()
        if i:  # the first run pays for oneDNN's kernel selection
            best = min(best, time.perf_counter() - t)
    return flops / best / 1e9


def conv_bf16_vs_fp32(channels: int = 32, batch: int = 2, patch: int = 16, reps: int = 3) -> dict:
    """GFLOP/s of a 3^3 Conv3d forward + backward in fp32 and under CPU bf16 autocast (1 thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    conv = torch.nn.Conv3d(channels, channels, 3, padding=1).to(memory_format=torch.channels_last_3d)
    x = torch.randn(batch, channels, patch, patch, patch).contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_(True)
    flops = 3 * 2.0 * 27 * channels * channels * batch * patch**3
    out = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        best = float("inf")
        for i in range(reps + 1):
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                y = conv(x)
            y.float().sum().backward()
            if i:
                best = min(best, time.perf_counter() - t)
        out[name] = flops / best / 1e9
    torch.set_num_threads(threads)
    return out


def loader_seconds_per_batch(prepped: Path, batch_size: int, n_batches: int = 6) -> float:
    """Seconds to read, normalize and collate one training batch of patches in this process
    (what --num_workers 0 adds to every step), median of ``n_batches``."""
    from voxel_ode.training.dataset import PatchDataset, collate

    ds = PatchDataset(prepped, "train", mode="patch", aug_xy_rot=True, aug_flip=True, noise_std=0.01)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
    times = []
    for b in range(n_batches):
        t0 = time.perf_counter()
        collate([ds[i] for i in order[b * batch_size:(b + 1) * batch_size]])
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def train_throughput(prepped: Path, out: Path, steps: int, **kw) -> dict:
    from voxel_ode.training.train import train

    shutil.rmtree(out, ignore_errors=True)
    log_every = max(1, steps // 3)
    train(prepped_root=str(prepped), save_dir=str(out), max_steps=steps, log_every=log_every, eval_every=10**9,
          ckpt_every=10**9, eval_max_batches=1, warmup_steps=1, quiet=True, **kw)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if r["event"] == "train"][1:]  # drop the warm-up window
    n = len(recs)
    return {"patches_per_s": sum(r["patches_per_s"] for r in recs) / n,
            "voxels_per_s": sum(r["voxels_per_s"] for r in recs) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--batch_size", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="one small model only")
    ap.add_argument("--amp_only", action="store_true", help="only the CPU bf16 vs fp32 convolution check")
    ap.add_argument("--amp", nargs="+", choices=("none", "bf16"), default=["none", "bf16"],
                    help="training precisions to compare (--amp of voxel-ode train; interleaved per model size)")
    a = ap.parse_args()
    if a.amp_only:
        amp = conv_bf16_vs_fp32()
        print(f"fp32 {amp['fp32']:.1f} GFLOP/s, bf16 autocast {amp['bf16']:.1f} GFLOP/s")
        return

    from voxel_ode.model.network import ModelConfig, VoxelAutoRegressor, count_parameters

    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {load}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    sizes = [(32, 4, 3)] if a.quick else [(32, 4, 3), (64, 4, 3)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepped = make_data(tmp)
        patch = 32
        ctx = tuple(-(-n // 4) for n in (40, 40, 40))
        for base, depth, r in sizes:
            for threads, workers in ((2, 0), (1, 0), (2, 2)) if (base, depth, r) == sizes[0] else ((2, 0),):
                for amp in a.amp:
                    torch.set_num_threads(threads)
                    model = VoxelAutoRegressor(ModelConfig(base_channels=base, depth=depth, receptive_field_radius=r))
                    fwd = conv_flops_per_sample(model, patch, ctx)
                    # the machine is shared: time the bare conv right before and after, keep the faster
                    peak = conv_peak_gflops(base, a.batch_size, patch, amp=amp)
                    res = train_throughput(prepped, tmp / "ck", a.steps, batch_size=a.batch_size, base_channels=base,
                                           depth=depth, receptive_field_radius=r, num_threads=threads,
                                           num_workers=workers, amp=amp)
                    achieved = 3 * fwd * res["patches_per_s"] / 1e9
                    peak = max(peak, conv_peak_gflops(base, a.batch_size, patch, amp=amp))
                    loader = loader_seconds_per_batch(prepped, a.batch_size) if workers == 0 else None
                    step_s = a.batch_size / res["patches_per_s"]
                    row = dict(base=base, depth=depth, r=r, params=count_parameters(model), threads=threads,
                               workers=workers, amp=amp, **res, gflops=achieved, peak=peak, step_s=step_s,
                               loader_share=None if loader is None else loader / step_s)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print()
    print("| base | depth | r | params | threads | workers | precision | steps/s | patches/s | voxels/s | conv GFLOP/s "
          "| bare 3^3 conv GFLOP/s (peak) | % of peak | data loader's share of a step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for w in rows:
        share = "-" if w["loader_share"] is None else f"{100 * w['loader_share']:.0f}%"
        print(f"| {w['base']} | {w['depth']} | {w['r']} | {w['params']:,} | {w['threads']} | {w['workers']} | "
              f"{'fp32' if w['amp'] == 'none' else w['amp']} | {1 / w['step_s']:.2f} | "
              f"{w['patches_per_s']:.2f} | {w['voxels_per_s']:.3g} | {w['gflops']:.1f} | {w['peak']:.1f} | "
              f"{100 * w['gflops'] / w['peak']:.0f}% | {share} |")
    amp = conv_bf16_vs_fp32()
    print(f"\nCPU bf16 check, Conv3d 32->32 3^3 on 2x32x16^3, fwd+bwd, 1 thread: fp32 {amp['fp32']:.1f} GFLOP/s, "
          f"bf16 autocast {amp['bf16']:.1f} GFLOP/s")
    print(f"\nload after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
