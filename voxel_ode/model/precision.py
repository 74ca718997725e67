"""The device and precision the model runs in: precision chosen by measurement on CPU and by
capability on CUDA.

``--amp auto|bf16|fp16|none`` (train, rollout, evaluate) -> ``resolve(amp, device)`` -> a
``Precision``: the autocast dtype (None = fp32), whether training needs a GradScaler (fp16),
and why; ``Precision.autocast()`` is the one autocast every forward pass runs under. One
function for training and rollout, so both make the same choice.

auto on CUDA: bf16 where the GPU supports it, else fp16 with a GradScaler (the seed's
``--use_amp``). auto on CPU: bf16 only where this CPU measured it faster. CPUs differ by
two orders of magnitude: without AVX-512 BF16 / AMX (e.g. AMD Zen 3) bf16 matmuls ran
~0.3 GFLOP/s against ~120 fp32; with AMX (Intel Xeon) oneDNN's bf16 Conv3d in
channels_last_3d ran ~5x fp32; an AMD Zen 4 with AVX-512 BF16 but no AMX sits between
(docs/benchmarks.md). A device name does not tell these apart, a short timing does:
``cpu_bf16_fast`` times one Conv3d of the model's typical shape both ways (well under a
second) and caches the answer in ``$XDG_CACHE_HOME/voxel-ode/precision.json`` (default
~/.cache), keyed by CPU model, its bf16 flags and the torch version.
``VOXEL_ODE_CPU_BF16=0|1`` skips the probe (the tests set 0, so they run fp32 everywhere).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from voxel_ode.utils import UserError

AMP_CHOICES = ("auto", "bf16", "fp16", "none")
# bf16 must beat fp32 by this factor to be chosen: a tie is not worth the rounding
MIN_SPEEDUP = 1.2
# the probe's convolution: a residual block's 3^3 conv, channels_last_3d, batch 1. Not smaller than 28^3:
# below that torch runs batch-1 fp32 Conv3d with its native kernel (aten use_mkldnn: N*C*D*H <= 20480),
# ~10x slower than oneDNN, which would flatter bf16
PROBE_CHANNELS, PROBE_SIZE, PROBE_SMALL = 32, 32, 12
PROBE_VERSION = 2  # part of the cache key: answers of an older probe are measured again


@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype | None  # autocast dtype; None = fp32
    scaler: bool  # training needs a GradScaler (fp16's range)
    device_type: str
    reason: str

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        """The autocast context of this precision (a disabled one for fp32)."""
        return torch.autocast(self.device_type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None)


FP32 = Precision(None, False, "cpu", "fp32")
AMP_HELP = ("autocast precision. auto: bf16 on CUDA where supported (else fp16); on CPU bf16 only where a short "
            "timed convolution (cached per CPU model and torch version) ran it faster than fp32, else fp32")


def pick_device(name: str) -> str:
    """--device auto|cpu|cuda -> "cpu" or "cuda" (auto: cuda when available)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device: cuda: no CUDA device available")
    return name


def choose(amp: str | None, device, log=print) -> Precision:
    """resolve(), said in one line ("precision: bf16 (why)")."""
    chosen = resolve(amp, device, log)
    log(f"precision: {chosen.name} ({chosen.reason})")
    return chosen


def resolve(amp: str | None, device, log=print) -> Precision:
    """--amp value + device -> Precision. None means "auto"."""
    amp = amp or "auto"
    if amp not in AMP_CHOICES:
        raise UserError(f"--amp: {amp!r} is not one of {', '.join(AMP_CHOICES)}")
    kind = torch.device(device).type
    if amp == "none":
        return Precision(None, False, kind, "--amp none")
    if kind == "cuda":
        if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
            return Precision(torch.bfloat16, False, kind, f"--amp {amp} on CUDA")
        return Precision(torch.float16, True, kind, f"--amp {amp} on CUDA")
    if amp == "fp16":  # fp16 autocast on CPU has no fast kernels worth its range problems
        log("note: --amp fp16 is for CUDA; on CPU running fp32 (try --amp bf16 or auto)")
        return Precision(None, False, kind, "--amp fp16 on CPU")
    if amp == "bf16":
        return Precision(torch.bfloat16, False, kind, "--amp bf16")
    fast, why = cpu_bf16_fast()
    return Precision(torch.bfloat16 if fast else None, False, kind, f"--amp auto on CPU: {why}")


def decide(fp32_s: float, bf16_s: float, min_speedup: float = MIN_SPEEDUP) -> bool:
    """bf16 when it took at most 1/min_speedup of fp32's time."""
    return bf16_s * min_speedup <= fp32_s


def _conv_seconds(size: int, reps: int) -> tuple[float, float]:
    """(fp32, bf16) seconds of one Conv3d(C, C, 3^3) forward on [1, C, size^3] in channels_last_3d,
    one thread; the two alternate and each keeps its fastest of ``reps``: on a shared machine other
    jobs only ever add time, and alternating exposes both to the same load (one probe under load
    read bf16 0.88x fp32 where the idle machine measures 2x)."""
    conv = torch.nn.Conv3d(PROBE_CHANNELS, PROBE_CHANNELS, 3, padding=1).to(memory_format=torch.channels_last_3d)
    x = torch.randn(1, PROBE_CHANNELS, size, size, size).contiguous(memory_format=torch.channels_last_3d)
    best = {False: float("inf"), True: float("inf")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for i in range(reps + 1):
                for bf16 in (False, True):
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        t0 = time.perf_counter()
                        conv(x)  # the first round builds oneDNN's kernels: not kept
                        if i:
                            best[bf16] = min(best[bf16], time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return best[False], best[True]


def probe(timer=_conv_seconds) -> dict:
    """Time fp32 and bf16 on a small shape first (a CPU without bf16 units would take seconds on
    the full one), then, when bf16 is not hopeless there, on the probe's size."""
    fp32, bf16 = timer(PROBE_SMALL, 3)
    if bf16 > 2.0 * fp32:
        return {"size": PROBE_SMALL, "fp32": fp32, "bf16": bf16, "bf16_fast": False}
    fp32, bf16 = timer(PROBE_SIZE, 5)
    return {"size": PROBE_SIZE, "fp32": fp32, "bf16": bf16, "bf16_fast": decide(fp32, bf16)}


def cpu_key() -> str:
    """CPU model (vendor family/model: a hypervisor may show just "AMD EPYC"), its bf16 flags, torch version."""
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        info["model name"] = platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    bf16 = "+".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "no-bf16-flags"
    return (f"{info.get('model name', '?')} family {info.get('cpu family', '?')} model {info.get('model', '?')} "
            f"{bf16} torch {torch.__version__} probe {PROBE_VERSION}")


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "voxel-ode" / "precision.json"


def cpu_bf16_fast(path: Path | None = None, timer=_conv_seconds) -> tuple[bool, str]:
    """(bf16 faster on this CPU, why): VOXEL_ODE_CPU_BF16 if set, else the cached probe, else a new one."""
    forced = os.environ.get("VOXEL_ODE_CPU_BF16")
    if forced is not None:
        return forced.strip() not in ("0", "", "no", "false"), f"VOXEL_ODE_CPU_BF16={forced}"
    path = Path(path) if path is not None else cache_path()
    key = cpu_key()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if not isinstance(cache, dict) or not isinstance(cache.get(key), dict) or "bf16_fast" not in cache[key]:
        cache = cache if isinstance(cache, dict) else {}
        cache[key] = probe(timer)
        try:  # a read-only home only costs a probe per run
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(cache, indent=2) + "\n")
            os.replace(tmp, path)
        except OSError:
            pass
    r = cache[key]
    ratio = r["fp32"] / max(r["bf16"], 1e-12)
    return bool(r["bf16_fast"]), f"bf16 conv {ratio:.2f}x fp32's speed on this CPU ({'bf16' if r['bf16_fast'] else 'fp32'})"
