"""``python -m benchmarks``: times otsort against the hard floors and the anchors, writes a markdown table and JSON.

See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

from benchmarks import _memory
from benchmarks import _methods
from benchmarks import _provenance
from benchmarks import _report
from benchmarks import _runner

SIZES = "1x100,1x1000,64x100,64x1000,256x1000,8x100000,1x1000000"
QUICK_SIZES = "1x1000"
SCALING_NS = (1_000, 10_000, 100_000, 1_000_000)
MEMORY_NS = (1_000_000, 10_000_000)
MEMORY_CASES = (
  ("pav-native-l2", "ranks"),
  ("pav-native-kl", "ranks"),
  ("jnp", "sort"),
  ("torch", "sort"),
  ("torchsort", "ranks"),
)


def _sizes(text: str) -> list[tuple[int, int]]:
  sizes = []
  for item in text.split(","):
    try:
      batch, n = (int(float(part)) for part in item.lower().split("x"))
    except ValueError:
      raise SystemExit(f"--sizes takes comma-separated BATCHxN items like 64x1000; got {item!r}") from None
    sizes.append((batch, n))
  return sizes


def parse_args(argv) -> argparse.Namespace:
  keys = [m.key for m in _methods.all_methods()]
  parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
  parser.add_argument(
    "--out",
    default=str(pathlib.Path(__file__).parent / "out"),
    help="folder for results.md and results.json (default: benchmarks/out)",
  )
  parser.add_argument(
    "--quick", action="store_true", help=f"smoke run: sizes {QUICK_SIZES}, short cells, small scaling and memory cases"
  )
  parser.add_argument("--sizes", help=f"comma-separated BATCHxN (default: {SIZES})")
  parser.add_argument(
    "--methods", help=f"comma-separated subset of {','.join(keys)} (jnp always runs: it is the reference of the ratios)"
  )
  parser.add_argument("--cell-time", type=float, help="seconds of repeats per cell (default 0.5; quick 0.05)")
  parser.add_argument(
    "--max-call-s",
    type=float,
    default=10.0,
    help="skip cells whose one call is predicted slower than this (default 10)",
  )
  parser.add_argument(
    "--torch-threads",
    type=int,
    help="torch.set_num_threads for torchsort and torch.sort (default: as many threads as XLA's "
    "CPU client uses, so both sides run on the same threads; another value is reported, and "
    "the targets against torch are then not judged)",
  )
  parser.add_argument(
    "--otsort",
    metavar="DIR",
    help="time the otsort package in DIR (e.g. an earlier commit "
    "installed with pip install --no-deps --target DIR) instead of the installed one",
  )
  parser.add_argument("--otsort-label", help="free text saying what --otsort DIR is (shown in the report)")
  parser.add_argument("--no-scaling", action="store_true", help="skip the exponent fit")
  parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
  args = parser.parse_args(argv)
  if args.methods:
    unknown = sorted(set(args.methods.split(",")) - set(keys))
    if unknown:
      parser.error(f"--methods: unknown {unknown}; choose from {keys}")
  return args


def main(argv=None) -> dict:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if args.otsort:
    _provenance.use(args.otsort)
  sizes = _sizes(args.sizes or (QUICK_SIZES if args.quick else SIZES))
  cell_time = args.cell_time if args.cell_time is not None else (0.02 if args.quick else 0.5)
  chosen = set(args.methods.split(",")) | {"jnp"} if args.methods else None
  started = time.perf_counter()
  load_start = [round(value, 2) for value in os.getloadavg()]
  xla_threads, xla_how = _methods.xla_cpu_threads()
  torch_threads = args.torch_threads if args.torch_threads is not None else xla_threads
  print(f"threads: XLA {xla_threads} ({xla_how}); torch {torch_threads}")

  methods, unavailable = [], {}
  for method in _methods.all_methods():
    if chosen is not None and method.key not in chosen:
      continue
    if isinstance(method, _methods._TorchMethod):
      method.threads = torch_threads
    reason = method.unavailable()
    if reason is None:
      methods.append(method)
    else:
      unavailable[method.key] = reason
      print(f"skipping {method.key}: {reason}")

  cells = _runner.run_cells(sizes, methods, cell_time=cell_time, max_call_s=args.max_call_s)

  scaling = None
  reference = next((m for m in methods if m.key == _report.TARGET_METHOD), None)
  if reference is not None and not args.no_scaling:
    ns = SCALING_NS[:2] if args.quick else SCALING_NS
    scaling = _runner.scaling(reference, list(ns), cells, cell_time=cell_time)

  memory = []
  if not args.no_memory:
    cases = MEMORY_CASES[:1] if args.quick else MEMORY_CASES
    for n in (100_000,) if args.quick else MEMORY_NS:
      for key, op in cases:
        if key in unavailable or (chosen is not None and key not in chosen):
          continue
        memory.append(_memory.measure(key, op, n, torch_threads=torch_threads))
        print(f"memory {key} {op} n={n:.0e}: {memory[-1]}")

  env = _report.environment()
  env["load_average_end"], env["load_average"] = env["load_average"], load_start
  env["threads"] = {"xla": xla_threads, "xla_how": xla_how, "torch": torch_threads}
  env["otsort"] = _provenance.summary(_provenance.describe(args.otsort_label))
  target_rows = _report.targets(cells, scaling, memory, env["threads"])
  options = {
    "sizes": [f"{b}x{n}" for b, n in sizes],
    "cell_time": cell_time,
    "max_call_s": args.max_call_s,
    "quick": args.quick,
    "torch_threads": torch_threads,
    "otsort": args.otsort,
    "methods": [m.key for m in methods],
    "wall_s": round(time.perf_counter() - started, 1),
  }
  notes = {m.key: m.note for m in methods if m.note}
  text = _report.markdown(env, cells, scaling, memory, target_rows, unavailable, notes)
  report = _report.json_report(env, cells, scaling, memory, target_rows, unavailable, notes, options)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.md").write_text(text)
  (out / "results.json").write_text(json.dumps(report, indent=1))
  print()
  print(text)
  print(f"wrote {out / 'results.md'} and {out / 'results.json'} ({options['wall_s']} s)")
  return report


if __name__ == "__main__":
  main()
