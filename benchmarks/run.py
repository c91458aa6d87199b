"""Runs every benchmark workload and writes the report table (BENCHMARKS.md).

`make bench` calls this. Each workload is a module with `build(spec)` (see
`benchmarks/harness.py`); adding one is one line in `WORKLOADS` and its rows
in `SUITE` (model, batch, attack steps).

Run: `python -m benchmarks.run [--quick] [--workloads fwd_bwd,pgd] [--models resnet20]
      [--dtype bfloat16] [--out BENCHMARKS.md]`.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import os
import sys
import time

from benchmarks import harness

# name -> module with `build(spec)`.
WORKLOADS = {
    "fwd_bwd": "benchmarks.bench_fwd_bwd",
    "pgd": "benchmarks.bench_pgd",
    "pgd_restarts": "benchmarks.bench_pgd_restarts",
    "fgsm": "benchmarks.bench_fgsm",
    "pgd_at": "benchmarks.bench_pgd_at",
    "shared_at": "benchmarks.bench_shared_at",
    "uat": "benchmarks.bench_uat",
    "advprop": "benchmarks.bench_advprop",
    "universal": "benchmarks.bench_universal",
    "deepfool": "benchmarks.bench_deepfool",
    "universal_deepfool": "benchmarks.bench_universal_deepfool",
    "eps_search": "benchmarks.bench_eps_search",
    "seg_pgd_at": "benchmarks.bench_seg",
    "dag": "benchmarks.bench_dag",
}


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of the suite: a workload on a model at a batch size (0: the platform default)."""
  workload: str
  model: str
  batch: int = 0
  steps: int | None = None  # attack steps; None: --steps, or --pgd-at-steps for training steps


# What `make bench` runs on a CPU: the project's own model (make train's convnet) and the
# ResNets at the batch sizes people train with, plus the small-batch rows of the
# first report. `--workloads` / `--models` select rows of it.
SUITE = (
    Row("fwd_bwd", "convnet", 128), Row("pgd", "convnet", 128, 10), Row("pgd", "convnet", 128, 20),
    Row("pgd", "convnet", 128, 40), Row("pgd_restarts", "convnet", 128, 10), Row("fgsm", "convnet", 128),
    Row("pgd_at", "convnet", 128, 7), Row("shared_at", "convnet", 128, 7), Row("advprop", "convnet", 128, 7),
    Row("uat", "convnet", 128), Row("universal", "convnet", 128), Row("eps_search", "convnet", 256),
    Row("deepfool", "convnet", 128), Row("universal_deepfool", "convnet", 200),
    Row("fwd_bwd", "resnet20", 64), Row("pgd", "resnet20", 64, 10), Row("pgd_at", "resnet20", 64, 7),
    Row("fwd_bwd", "resnet20", 8), Row("pgd", "resnet20", 8, 10), Row("pgd_at", "resnet20", 8, 7),
    Row("fwd_bwd", "resnet50", 8), Row("pgd", "resnet50", 8, 10), Row("pgd_at", "resnet50", 8, 7),
    Row("fwd_bwd", "resnet50", 2), Row("pgd", "resnet50", 2, 10),
    Row("seg_pgd_at", "convnet_dense", 32, 5), Row("dag", "convnet_dense", 32, 10),
)
# On an accelerator: the batch sizes people train with there, largest models first
# (the MFU rows); the CPU's small-batch rows would only measure launch latency.
GPU_SUITE = (
    Row("fwd_bwd", "resnet50", 128), Row("pgd_at", "resnet50", 128, 7), Row("pgd", "resnet50", 128, 10),
    Row("fwd_bwd", "resnet20", 128), Row("pgd_at", "resnet20", 128, 7), Row("pgd", "resnet20", 128, 10),
    Row("fwd_bwd", "convnet", 128), Row("pgd_at", "convnet", 128, 7), Row("pgd", "convnet", 128, 10),
    Row("fgsm", "convnet", 128), Row("shared_at", "convnet", 128, 7), Row("advprop", "convnet", 128, 7),
    Row("uat", "convnet", 128), Row("universal", "convnet", 128),
    Row("seg_pgd_at", "convnet_dense", 32, 5), Row("dag", "convnet_dense", 32, 10),
)
TRAINING_STEPS_WITH_ATTACK = ("pgd_at", "shared_at", "advprop")


def parse(argv):
  import argparse
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: " + ", ".join(WORKLOADS))
  p.add_argument("--out", default="BENCHMARKS.md")
  p.add_argument("--json", default="", help="also write the result rows as JSON lines here")
  p.add_argument("--pgd-at-steps", type=int, default=7, help="attack steps k inside the adversarial-training steps (" + ", ".join(TRAINING_STEPS_WITH_ATTACK) + ") of rows that do not fix it")
  known, rest = p.parse_known_args(argv)
  models = sorted({r.model for r in SUITE})
  return known, harness.parse_args(rest, default_models=models)


def suite_specs(known, args) -> list[tuple[str, harness.Spec]]:
  """(workload, spec) of every selected suite row; `--quick` runs each distinct row on a tiny model."""
  selected = [w for w in known.workloads.split(",") if w]
  for name in selected:
    if name not in WORKLOADS:
      raise SystemExit(f"--workloads: unknown {name!r}; known: {', '.join(WORKLOADS)}")
  models = [m for m in args.models.split(",") if m]
  for model in models:
    if model not in harness.SHAPES:
      raise SystemExit(f"--models: unknown model {model!r}; known: {', '.join(harness.SHAPES)}")
  out, seen = [], set()
  for row in SUITE if harness.platform_name() == "cpu" else GPU_SUITE:
    model = row.model if not args.quick else (row.model if row.model.endswith("_tiny") else f"{row.model}_tiny")
    if row.workload not in selected or model not in models:
      continue
    default_steps = known.pgd_at_steps if row.workload in TRAINING_STEPS_WITH_ATTACK else args.steps
    steps = default_steps if row.steps is None else row.steps
    batch = args.batch or (harness.DEFAULT_BATCH[(model, harness.platform_name())] if args.quick or not row.batch
                           else row.batch)
    spec = harness.Spec(model=model, batch=batch, dtype=args.dtype, steps=steps,
                        torch_compile=args.torch_compile != "off")
    if (row.workload, spec) not in seen:
      seen.add((row.workload, spec))
      out.append((row.workload, spec))
  return out


def _fmt_ms(s: float) -> str:
  return f"{s * 1e3:.1f}"


# Hand-written analysis below this line in BENCHMARKS.md survives regeneration.
ANALYSIS_MARKER = "<!-- analysis: kept when the tables above are regenerated -->"


def summary_lines(rows: list[dict]) -> list[str]:
  """One line per (workload, model, batch): JAX against the fastest eager PyTorch variant."""
  out = []
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    groups.setdefault((r["workload"], r["model"], r["batch"]), []).append(r)
  for (workload, model, batch), group in groups.items():
    jax_row = next(r for r in group if r["variant"] == "jax")
    torch_rows = [r for r in group if harness.is_torch_eager(r["variant"])]
    best = min(torch_rows, key=lambda r: r["median_s"])
    out.append(f"| {workload} | {model} | {batch} | {_fmt_ms(jax_row['median_s'])} | {best['variant']} | "
               f"{_fmt_ms(best['median_s'])} | {jax_row['median_s'] / best['median_s']:.2f} |")
  return out


def write_report(path: str, info: dict, peak: dict, rows: list[dict], notes: list[str], args,
                 elapsed_s: float) -> None:
  lines = [
      "# Benchmarks: advjax (JAX) vs PyTorch on identical weights and work",
      "",
      f"Generated by `make bench` (`python -m benchmarks.run`) on "
      f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC in {elapsed_s / 60:.1f} min.",
      "",
      "## Machine",
      "",
      f"- CPU: {info['cpu']}, {info['cores']} cores; load average at start "
      f"{', '.join(f'{v:.1f}' for v in info['load_average'] or ())}",
      f"- JAX devices: {', '.join(info['jax_devices'])}; PyTorch device: {info['torch_device']} "
      f"({info['torch_threads']} intra-op threads, OMP_WAIT_POLICY {info['omp_wait_policy']})",
      f"- Versions: python {info['python']}, jax {info['jax']}, jaxlib {info['jaxlib']}, "
      f"flax {info['flax']}, torch {info['torch']}",
      f"- XLA_FLAGS: `{info['xla_flags'] or '(none)'}`; JAX matmul precision "
      f"{info['jax_matmul_precision']}; PyTorch TF32 {info['torch_tf32']}",
      f"- Peak: {peak['dtype']} {peak['n']}x{peak['n']} matmul, JAX {peak['jax'] / 1e9:.1f} GFLOP/s, "
      f"PyTorch {peak['torch'] / 1e9:.1f} GFLOP/s at the start; `% of peak` uses the larger of the two "
      "re-measured inside each workload's interleaved loop (column `peak GFLOP/s`), i.e. at the same load.",
      f"- Options: dtype {args.dtype}, budget {args.budget:.0f} s of timed calls per workload and model, "
      f"at least {args.min_reps} reps, torch.compile {args.torch_compile}"
      + (", QUICK smoke run (tiny models): numbers are not meaningful" if args.quick else ""),
      "",
      "## Summary: JAX time over the best PyTorch eager time (< 1: JAX faster)",
      "",
      "| workload | model | batch | JAX ms | best PyTorch eager | its ms | ratio |",
      "|---|---|---|---|---|---|---|",
  ]
  lines += summary_lines(rows)
  lines += [
      "",
      "## Results",
      "",
      "Per-call wall time, median and inter-quartile range over interleaved reps. "
      "`JAX speed-up` is the variant's median over JAX's (>1: JAX faster). "
      "`compile` is the first call minus a steady call (JAX: trace + XLA compile; "
      "torch.compile: Dynamo + Inductor). Every row passed its JAX/PyTorch agreement check first.",
      "",
      "| workload | model | batch | variant | median ms | IQR ms | reps | images/s | JAX speed-up | "
      "compile s | GFLOP/step | peak GFLOP/s | % of peak |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    compile_s = f"{r['compile_s']:.1f}" if r["variant"] in ("jax", "torch.compile") else ""
    lines.append(
        f"| {r['workload']} | {r['model']} | {r['batch']} | {r['variant']} | {_fmt_ms(r['median_s'])} | "
        f"{_fmt_ms(r['iqr_s'])} | {r['reps']} | {r['images_per_s']:.1f} | {r['jax_speedup']:.2f} | "
        f"{compile_s} | {r['gflop_per_step']:.1f} | {r.get('peak_gflops', float('nan')):.0f} | "
        f"{100 * r['fraction_of_peak']:.1f} |")
  lines += ["", "## Agreement checks (relative error, or fraction of differing pixels)", ""]
  seen = set()
  for r in rows:
    key = (r["workload"], r["model"])
    if key in seen:
      continue
    seen.add(key)
    lines.append(f"- {r['workload']} {r['model']}: "
                 + ", ".join(f"{k} {v:.2g}" for k, v in r["agreement"].items())
                 + ("; " + "; ".join(r["notes"]) if r["notes"] else ""))
  if notes:
    lines += ["", "## Run notes", ""] + [f"- {n}" for n in notes]
  analysis = ""
  if os.path.exists(path):
    with open(path) as f:
      old = f.read()
    if ANALYSIS_MARKER in old:
      analysis = old[old.index(ANALYSIS_MARKER):]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n\n" + (analysis or ANALYSIS_MARKER + "\n"))


def main(argv=None) -> None:
  known, args = parse(sys.argv[1:] if argv is None else argv)
  start = time.time()
  harness.set_precision(args.dtype)
  info = harness.machine_info()
  print(json.dumps(info))
  peak = {"n": harness.peak_size(), "dtype": harness.peak_dtype(args.dtype),
          **harness.peak_matmul_flops(dtype=args.dtype)}
  print(f"peak {peak['dtype']} matmul: JAX {peak['jax'] / 1e9:.1f}, PyTorch {peak['torch'] / 1e9:.1f} GFLOP/s")
  rows, notes = [], []
  for name, spec in suite_specs(known, args):
    build = importlib.import_module(WORKLOADS[name]).build
    if (spec.torch_compile and harness.platform_name() == "cpu" and spec.model == "resnet50"
        and args.torch_compile == "on"):
      spec = dataclasses.replace(spec, torch_compile=False)
      notes.append(f"{name} {spec.model}: torch.compile skipped on CPU (Inductor's compile of the "
                   "50-layer model takes many minutes on this machine); --torch-compile force to time it")
    t0 = time.time()
    try:
      rows += harness.run_workload(build(spec), budget_s=args.budget, min_reps=args.min_reps)
    except harness.AgreementError as e:
      # A disagreeing pair is not timed; the report says so and the run goes on.
      notes.append(f"{name} {spec.model} batch {spec.batch}: NOT TIMED, agreement check failed: {e}")
      print(f"    agreement check failed: {e}")
    print(f"    ({time.time() - t0:.0f}s)")
    harness.flush()
    # Rewritten after every workload, so an interrupted run still leaves its results.
    write_report(known.out, info, peak, rows, notes, args, time.time() - start)
    if known.json:
      with open(known.json, "w") as f:
        for row in rows:
          f.write(json.dumps(row) + "\n")
  notes.append("load average at the end: " + ", ".join(f"{v:.1f}" for v in os.getloadavg()))
  write_report(known.out, info, peak, rows, notes, args, time.time() - start)
  print(f"wrote {known.out}")


if __name__ == "__main__":
  main()
