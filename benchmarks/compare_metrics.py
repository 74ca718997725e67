#!/usr/bin/env python
"""Side-by-side table of the model's summary metrics from several `voxel-ode evaluate` runs.

    python benchmarks/compare_metrics.py eval_a/metrics.json eval_b/metrics.json ...

Used by gpu_check.sh to show that CUDA fp32, CUDA bf16 and the CPU agree on one checkpoint.
"""

import json
import sys
from pathlib import Path


def main(paths):
    runs = {}
    for p in map(Path, paths):
        runs[p.stem if p.name != "metrics.json" else p.parent.name] = json.loads(p.read_text())["summary"]["model"]
    if not runs:
        sys.exit("compare_metrics: no metrics.json given")
    names = list(runs)
    print("| metric (last step / mean) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for metric in next(iter(runs.values())):
        cells = [f"{runs[n][metric]['last']:.4g} / {runs[n][metric]['mean']:.4g}" if metric in runs[n] else "-"
                 for n in names]
        print(f"| {metric} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
