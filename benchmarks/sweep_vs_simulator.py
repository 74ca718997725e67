"""The sweep checked against the simulator (#31 items 3 and 4): one plan of >= 12 scenarios on a
darts-dev test run, simulated by open-darts (``voxel-ode synth --engine darts --plan``) and forecast
by ``voxel-ode sweep`` with a checkpoint trained on darts-dev; energy produced per scenario, rank
correlation, the simulator's best among the sweep's top 2, throughput and the sweep's time split.

    OMP_NUM_THREADS=1 PYTHONPATH=. /work/venv-darts/bin/python benchmarks/sweep_vs_simulator.py \\
        --ckpt bench_out/darts10/ckpt_full_default/last.pt --out bench_out/sweepbench

The base run and the plan are drawn with SEED, fixed before any result was seen. The base is a
test run of the darts-dev checkpoints (v2.4_0000..0009; they train on 0010..0029). Energy produced
is FieldEnergyProductionTotal from year 0 to year 30 in the files' convention (absolute IAPWS-95
enthalpy flow of the produced water, h ~ 0 at the triple point), for both; the net energy
(production - injection) integrates the yearly end-of-year rates (right-point rule), for both.
One simulation and one forecast at a time, one thread each (OMP_NUM_THREADS=1). The simulator's
files are kept (OUT/sim) and reused by a rerun; the sweep runs afresh each time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "darts-dev" / "data"
SEED = 3103  # fixed before looking at any result
N_TEST = 10  # v2.4_0000 .. v2.4_0009: not in the darts-dev checkpoints' training runs
YEAR_S = 365.0 * 86400.0


def base_file() -> Path:
    index = int(np.random.default_rng(SEED).integers(N_TEST))
    return DATA / f"v2.4_{index:04d}.h5"


def make_plan(wells) -> list[dict]:
    """>= 12 scenarios on the base's wells (data.plan.Well, named I1.., P1..): total rate scaled,
    single wells' rates changed, a well shut where the base has >= 2 of its kind, and mixes."""
    rng = np.random.default_rng([SEED, 1])
    rows = [{"name": "base"}]
    for n in range(4):
        rows.append({"name": f"scale{n}", "scale_rates": f"{rng.uniform(0.5, 1.5):.3f}"})
    for n in range(4):
        well = wells[int(rng.integers(len(wells)))]
        rows.append({"name": f"rate{n}_{well.name}", f"rate_{well.name}": f"{well.total * rng.uniform(0.5, 1.5):.3f}"})
    shuttable = [w for w in wells if sum(v.name[0] == w.name[0] for v in wells) >= 2]
    for kind in ("I", "P"):
        group = [w for w in shuttable if w.name[0] == kind]
        if group:
            rows.append({"name": f"shut_{kind}", "shut": group[int(rng.integers(len(group)))].name})
    for n in range(2):
        row = {"name": f"mix{n}", "scale_rates": f"{rng.uniform(0.5, 1.5):.3f}"}
        well = wells[int(rng.integers(len(wells)))]
        row[f"rate_{well.name}"] = f"{well.total * rng.uniform(0.5, 1.5):.3f}"
        if shuttable and n == 1:
            shut = shuttable[int(rng.integers(len(shuttable)))]
            if shut.name != well.name:
                row["shut"] = shut.name
        rows.append(row)
    while len(rows) < 12:
        rows.append({"name": f"scale{len(rows)}", "scale_rates": f"{rng.uniform(0.5, 1.5):.3f}"})
    return rows


def write_plan(path: Path, rows) -> None:
    columns = ["name"] + sorted({k for r in rows for k in r if k != "name"})
    lines = [",".join(columns)] + [",".join(str(r.get(c, "")) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def simulate(base: Path, plan: Path, out: Path, rows) -> dict:
    """open-darts on every scenario (kept in OUT/sim, reused by a rerun); wall and CPU seconds."""
    from voxel_ode.synth import open_darts

    record = out / "sim_timing.json"
    if record.exists() and all((out / "sim" / f"{r['name']}.h5").exists() for r in rows):
        return json.loads(record.read_text())
    shutil.rmtree(out / "sim", ignore_errors=True)
    wall, cpu = time.perf_counter(), children_cpu()
    done = open_darts.simulate_plan(out / "sim", {"file": str(base)}, plan, n_steps=30, workers=1, progress=False)
    timing = {"wall_s": time.perf_counter() - wall, "cpu_s": children_cpu() - cpu,
              "per_scenario_s": {name: secs for name, (_, secs) in done.items()}}
    record.write_text(json.dumps(timing, indent=1))
    return timing


def sweep(ckpt: Path, base: Path, plan: Path, out: Path, workers: int = 1, compile_model="auto",
          stats_path=None) -> tuple[list, dict]:
    import torch

    from voxel_ode.inference.sweep import run_sweep

    shutil.rmtree(out / "sweep", ignore_errors=True)
    wall, cpu = time.perf_counter(), time.process_time()
    rows = run_sweep(ckpt, base, plan, out / "sweep", device="cpu", amp="auto", workers=workers, progress=False,
                     compile_model=compile_model, stats_path=stats_path)
    # with workers > 1 the priors run in worker processes that the sweep does not wait for: their CPU
    # time is not known here (None)
    timing = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu if workers <= 1 else None,
              "torch_threads": torch.get_num_threads(), "workers": workers, "compile": compile_model}
    series = {r["name"]: json.loads((out / "sweep" / "scenarios" / f"{r['name']}.json").read_text()) for r in rows}
    phases = [s["seconds"] for s in series.values()]
    timing["phases_s"] = {k: float(sum(p[k] for p in phases)) for k in phases[0]}
    cpu = [s["cpu_seconds"] for s in series.values()]
    timing["phases_cpu_s"] = {k: float(sum(p[k] for p in cpu)) for k in cpu[0]}
    timing["other_s"] = timing["wall_s"] - sum(timing["phases_s"].values())  # model load, plan checks, table, picture
    return rows, timing | {"series": series}


def net(energy_total: float, injection_rates) -> float:
    """Energy produced minus the injected water's, the latter from yearly end-of-year rates."""
    return energy_total - float(np.sum(injection_rates)) * YEAR_S


def compare(out: Path, plan_rows, sweep_rows, series) -> dict:
    """Per scenario: energy produced and net by the simulator and the sweep; the summary figures."""
    from scipy.stats import spearmanr

    by_name = {r["name"]: r for r in sweep_rows}
    table = []
    for row in plan_rows:
        name = row["name"]
        with h5py.File(out / "sim" / f"{name}.h5") as f:
            sim_e = float(f["Output/FieldEnergyProductionTotal"][-1])
            sim_inj = np.asarray(f["Output/FieldEnergyInjectionRate"][()], np.float64)
            target = -float(np.asarray(f["Input/InjRate"][()], np.float64).clip(max=0).sum())
            delivered = float(f["Output/FieldWaterProductionRate"][-1])
        sw = series[name]["field_scalars"]
        sw_e = float(by_name[name]["energy_total"])
        sw_inj = np.asarray(sw["FieldEnergyInjectionRate"][1:], np.float64)
        table.append({"name": name, "changes": {k: v for k, v in row.items() if k != "name"},
                      "sim_energy_J": sim_e, "sweep_energy_J": sw_e, "rel_diff": sw_e / sim_e - 1.0,
                      "sim_net_J": net(sim_e, sim_inj), "sweep_net_J": net(sw_e, sw_inj),
                      "sweep_rank": by_name[name]["rank"], "production_target_kg_s": target,
                      "production_delivered_kg_s": delivered})
    sim_e = np.array([t["sim_energy_J"] for t in table])
    sw_e = np.array([t["sweep_energy_J"] for t in table])
    sim_n = np.array([t["sim_net_J"] for t in table])
    sw_n = np.array([t["sweep_net_J"] for t in table])
    best = table[int(np.argmax(sim_e))]["name"]
    rel = np.abs(sw_e / sim_e - 1.0)
    return {"scenarios": table, "spearman_energy": float(spearmanr(sim_e, sw_e)[0]),
            "spearman_net": float(spearmanr(sim_n, sw_n)[0]), "sim_best": best,
            "sim_best_sweep_rank": by_name[best]["rank"], "max_abs_rel_diff": float(rel.max()),
            "median_abs_rel_diff": float(np.median(rel)), "n_within_5pct": int((rel <= 0.05).sum()),
            "n": len(table)}


def base_check(base: Path, out: Path) -> float:
    """The re-simulated base scenario's year-30 energy against the darts-dev file's (relative)."""
    with h5py.File(base) as a, h5py.File(out / "sim" / "base.h5") as b:
        return float(b["Output/FieldEnergyProductionTotal"][-1] / a["Output/FieldEnergyProductionTotal"][-1] - 1.0)


def cpu_text(seconds) -> str:
    return "? s" if seconds is None else f"{seconds:.1f} s"


def report(result: dict) -> str:
    c, s, w = result["comparison"], result["simulator"], result["sweep"]
    lines = ["| scenario | change | simulator energy (PJ) | sweep energy (PJ) | rel. diff | sweep rank |"
             " simulator net (PJ) | sweep net (PJ) |", "|---|---|---|---|---|---|---|---|"]
    for t in c["scenarios"]:
        change = "; ".join(f"{k}={v}" for k, v in t["changes"].items()) or "-"
        lines.append(f"| {t['name']} | {change} | {t['sim_energy_J'] * 1e-15:.2f} | {t['sweep_energy_J'] * 1e-15:.2f}"
                     f" | {t['rel_diff'] * 100:+.1f} % | {t['sweep_rank']} | {t['sim_net_J'] * 1e-15:.2f} |"
                     f" {t['sweep_net_J'] * 1e-15:.2f} |")
    n = c["n"]
    sim_rate, sw_rate = 3600 * n / s["wall_s"], 3600 * n / w["wall_s"]
    lines += ["", f"base {result['base']}; re-simulated base vs the darts-dev file: "
              f"{result['base_resim_rel'] * 100:+.4f} % (year-30 energy)",
              f"Spearman (energy produced) {c['spearman_energy']:.3f}; (net) {c['spearman_net']:.3f}; "
              f"simulator's best {c['sim_best']} is the sweep's #{c['sim_best_sweep_rank']}; "
              f"|rel. diff| max {c['max_abs_rel_diff'] * 100:.1f} %, median {c['median_abs_rel_diff'] * 100:.1f} %, "
              f"{c['n_within_5pct']}/{n} within 5 %",
              f"simulator: {s['wall_s']:.0f} s wall, {s['cpu_s']:.0f} s CPU for {n} -> {sim_rate:.0f} scenarios/h "
              f"(wall), {3600 * n / s['cpu_s']:.0f}/CPU-h",
              f"sweep: {w['wall_s']:.1f} s wall, {cpu_text(w['cpu_s'])} CPU ({w['torch_threads']} torch thread, "
              f"--workers {w.get('workers', 1)}, --compile {w.get('compile', 'auto')}) -> {sw_rate:.0f} scenarios/h (wall)"
              + (f", {3600 * n / w['cpu_s']:.0f}/CPU-h" if w["cpu_s"] else "")
              + f"; x{sw_rate / sim_rate:.1f} the simulator's (wall)"
              + (f", x{s['cpu_s'] / w['cpu_s']:.1f} (CPU)" if w["cpu_s"] else ""),
              "sweep time split (s, all scenarios): " + ", ".join(f"{k} {v:.1f}" for k, v in w["phases_s"].items())
              + (f", other (model load, plan checks, table, picture) {w['other_s']:.1f}" if w.get("workers", 1) <= 1
                 else " (priors overlap the model: summed over processes)"),
              "sweep CPU split (s, all scenarios): " + ", ".join(f"{k} {v:.1f}" for k, v in w["phases_cpu_s"].items())]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="checkpoint trained on darts-dev 0010..0029")
    ap.add_argument("--out", default="bench_out/sweepbench", help="working folder")
    ap.add_argument("--workers", type=int, default=1,
                    help="the sweep's --workers (1: priors and model in one process, one core; 2: priors in "
                         "worker processes meanwhile, both cores); result_workers<N>.json for N > 1")
    ap.add_argument("--compile", choices=("auto", "yes", "no"), default="auto",
                    help="the sweep's --compile; result_compile_<choice>.json when not auto")
    ap.add_argument("--stats_path", help="the sweep's --stats_path (a prep's stats.json agreeing with the checkpoint's)")
    ap.add_argument("--report", action="store_true", help="only print the report of an earlier run")
    args = ap.parse_args(argv)
    out = Path(args.out)
    result_path = out / ("result" + ("" if args.workers <= 1 else f"_workers{args.workers}")
                         + ("" if args.compile == "auto" else f"_compile_{args.compile}")
                         + ("" if args.stats_path is None else "_stats") + ".json")
    if args.report:
        print(report(json.loads(result_path.read_text())))
        return 0
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("note: OMP_NUM_THREADS is not 1: the sweep's torch may use several threads", file=sys.stderr)
    from voxel_ode.data import plan as plans
    from voxel_ode.synth import darts_plan

    base = base_file()
    out.mkdir(parents=True, exist_ok=True)
    run, _ = darts_plan.base_run({"file": str(base)})
    rows = make_plan(darts_plan.named_wells(run))
    write_plan(out / "plan.csv", rows)
    rows = plans.read_rows(out / "plan.csv")
    print(f"base {base.name}, {len(rows)} scenarios ({out / 'plan.csv'})", flush=True)
    sim = simulate(base, out / "plan.csv", out, rows)
    sweep_rows, sw = sweep(Path(args.ckpt), base, out / "plan.csv", out, args.workers, args.compile, args.stats_path)
    series = sw.pop("series")
    result = {"base": base.name, "ckpt": str(args.ckpt), "stats_path": args.stats_path, "simulator": sim, "sweep": sw,
              "base_resim_rel": base_check(base, out), "comparison": compare(out, rows, sweep_rows, series)}
    result_path.write_text(json.dumps(result, indent=1))
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
