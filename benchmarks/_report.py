"""The report: machine and versions, the markdown tables, the targets (PASS/FAIL), and the JSON twin."""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import subprocess
from importlib import metadata

import numpy as np

from benchmarks._runner import Cell
from benchmarks._runner import find

PACKAGES = ("jax", "jaxlib", "ott-jax", "jaxopt", "numba", "torch", "torchsort", "numpy")
TARGET_METHOD = "pav-native-l2"  # what otsort.ranks runs by default on CPU (impl="auto")


def environment() -> dict:
  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
                 platform.processor())
  except OSError:
    model = platform.processor()
  versions = {}
  for package in PACKAGES:
    try:
      versions[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
      versions[package] = None
  import otsort

  versions["otsort"] = otsort.__version__
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "cpu": model,
      "cores": len(os.sched_getaffinity(0)),
      "python": platform.python_version(),
      "versions": versions,
  }


def _ms(seconds: float | None) -> str:
  if seconds is None:
    return ""
  ms = seconds * 1e3
  return f"{ms:.3g}" if ms < 1000 else f"{ms:.0f}"


def _ratio(value: float | None) -> str:
  return "" if value is None else f"{value:.2f}x"


def _mae(value: float | None) -> str:
  return "" if value is None else f"{value:.3g}"


def tables(cells: list[Cell]) -> str:
  """One markdown table per op; a skipped or failing cell shows a note number, the notes follow the table."""
  notes: list[str] = []

  def time_or_note(cell: Cell | None) -> str:
    if cell is None:
      return ""
    if cell.status == "ok":
      return _ms(cell.seconds)
    if cell.status not in notes:
      notes.append(cell.status)
    return f"{cell.status.split(':')[0]} [{notes.index(cell.status) + 1}]"

  lines = []
  for op in dict.fromkeys(cell.op for cell in cells):
    lines += [f"### {op}", "",
              "| batch x n | method | eps | fwd ms | fwd / argsort | fwd / torchsort | fwd+bwd ms "
              "| fwd+bwd / argsort | fwd+bwd / torchsort | MAE to hard |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    rows = dict.fromkeys((c.batch, c.n, c.key, c.method, c.epsilon) for c in cells if c.op == op)
    for batch, n, key, method, epsilon in rows:
      fwd = find(cells, op=op, batch=batch, n=n, key=key, mode="fwd")
      bwd = find(cells, op=op, batch=batch, n=n, key=key, mode="fwd+bwd")
      cols = [f"{batch}x{n}", method, epsilon,
              time_or_note(fwd), _ratio(fwd and fwd.ratio_argsort), _ratio(fwd and fwd.ratio_torchsort),
              time_or_note(bwd), _ratio(bwd and bwd.ratio_argsort), _ratio(bwd and bwd.ratio_torchsort),
              _mae(fwd and fwd.mae)]
      lines.append("| " + " | ".join(cols) + " |")
    lines.append("")
  if notes:
    lines += ["Notes:", ""] + [f"{i + 1}. {note}" for i, note in enumerate(notes)] + [""]
  return "\n".join(lines)


def _seconds(cells, **fields) -> float | None:  # the median
  cell = find(cells, **fields)
  return None if cell is None else cell.seconds


def targets(cells: list[Cell], scaling: dict | None, memory: list[dict]) -> list[dict]:
  """The targets of issue 5, each ``{"target", "value", "result"}`` with result PASS, FAIL or n/a."""
  out = []

  def add(target: str, value: str, passed: bool | None):
    out.append({"target": target, "value": value, "result": "n/a" if passed is None else
                ("PASS" if passed else "FAIL")})

  # 64x1000: judged on the medians and on the fastest samples, so a stall of either side cannot decide it.
  ours = find(cells, op="ranks", key=TARGET_METHOD, mode="fwd+bwd", batch=64, n=1000)
  for target, other, limit in (("jnp.argsort (fwd)", find(cells, op="ranks", key="jnp", mode="fwd", batch=64,
                                                                 n=1000), 1.0),
                               ("torchsort soft_rank fwd+bwd", find(cells, op="ranks", key="torchsort",
                                                                    mode="fwd+bwd", batch=64, n=1000), 0.5)):
    name = f"ranks fwd+bwd 64x1000 <= {limit:g}x {target}"
    if not (ours and other and ours.seconds and other.seconds):
      add(name, "n/a", None)
      continue
    median, best = ours.seconds / other.seconds, ours.best_seconds / other.best_seconds
    add(name, f"{median:.2f}x ({ours.seconds * 1e3:.3g} ms vs {other.seconds * 1e3:.3g} ms; fastest samples: "
        f"{best:.2f}x, {ours.best_seconds * 1e3:.3g} vs {other.best_seconds * 1e3:.3g} ms)",
        median <= limit and best <= limit)

  ours = _seconds(cells, op="ranks", key=TARGET_METHOD, mode="fwd+bwd", batch=1, n=1_000_000)
  ours_fwd = _seconds(cells, op="ranks", key=TARGET_METHOD, mode="fwd", batch=1, n=1_000_000)
  sort_fwd = _seconds(cells, op="sort", key="jnp", mode="fwd", batch=1, n=1_000_000)
  sort_bwd = _seconds(cells, op="sort", key="jnp", mode="fwd+bwd", batch=1, n=1_000_000)
  ratio = ours / sort_fwd if ours and sort_fwd else None
  extra = []
  if ours and sort_bwd:
    extra.append(f"vs jnp.sort fwd+bwd: {ours / sort_bwd:.2f}x")
  if ours_fwd and sort_fwd:
    extra.append(f"ranks fwd vs jnp.sort fwd: {ours_fwd / sort_fwd:.2f}x")
  add("ranks fwd+bwd 1x1e6 <= 1.5x jnp.sort (fwd)",
      "n/a" if ratio is None else f"{ratio:.2f}x ({ours * 1e3:.3g} ms vs {sort_fwd * 1e3:.3g} ms; "
      + "; ".join(extra) + ")", None if ratio is None else ratio <= 1.5)

  if scaling and scaling.get("exponent") is not None:
    ns = [p[0] for p in scaling["points"]]
    nlogn = np.polyfit(np.log(ns), np.log([n * np.log(n) for n in ns]), 1)[0]
    points = ", ".join(f"n={n:.0e}: {s * 1e3:.3g} ms" for n, s in scaling["points"])
    full_range = min(ns) <= 1_000 and max(ns) >= 1_000_000  # the target's range; --quick fits less
    add(f"exponent of ranks fwd+bwd cost vs n, 1 row, n {min(ns):.0e}..{max(ns):.0e} (~ n log n; PASS if "
        "|p - 1| <= 0.25 over 1e3..1e6)", f"p = {scaling['exponent']:.2f} (n log n alone gives {nlogn:.2f}; "
        f"{points})", abs(scaling["exponent"] - 1) <= 0.25 if full_range else None)
  else:
    add("exponent of ranks fwd+bwd cost vs n (~ n log n)", "n/a", None)

  for mode in ("fwd+bwd", "fwd"):
    ours = find(cells, op="ranks", key="sinkhorn", mode=mode, batch=1, n=1000)
    ott_cell = find(cells, op="ranks", key="ott", mode=mode, batch=1, n=1000)
    if ours and ott_cell and ours.seconds and ott_cell.seconds:
      break
  if ours and ott_cell and ours.seconds and ott_cell.seconds:
    ours_mae = find(cells, op="ranks", key="sinkhorn", mode="fwd", batch=1, n=1000).mae
    ott_mae = find(cells, op="ranks", key="ott", mode="fwd", batch=1, n=1000).mae
    speedup = ott_cell.seconds / ours.seconds
    add(f"sinkhorn ranks 1x1000 >= 2x faster than ott ({mode}) at <= its MAE",
        f"{speedup:.2f}x faster ({ours.seconds * 1e3:.3g} ms vs {ott_cell.seconds * 1e3:.3g} ms); "
        f"MAE {ours_mae:.3g} vs ott {ott_mae:.3g}", speedup >= 2 and ours_mae <= ott_mae)
  else:
    why = ours.status if ours is not None and ours.status != "ok" else "not measured"
    add("sinkhorn ranks 1x1000 >= 2x faster than ott at <= its MAE", f"n/a ({why})", None)

  case = next((m for m in memory if m["method"] == TARGET_METHOD and m["n"] == 10_000_000), None)
  if case is not None and case.get("status") == "ok":
    add("peak extra memory, ranks fwd+bwd 1x1e7, < 64 bytes/element",
        f"{case['bytes_per_element']:.1f} B/element", case["bytes_per_element"] < 64)
  else:
    add("peak extra memory, ranks fwd+bwd 1x1e7, < 64 bytes/element",
        "n/a" if case is None else case["status"], None)
  return out


def markdown(env: dict, cells: list[Cell], scaling: dict | None, memory: list[dict], target_rows: list[dict],
             unavailable: dict[str, str], notes: dict[str, str]) -> str:
  versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v is not None)
  lines = ["## otsort benchmarks", "",
           f"{env['date']}; {env['cpu']}, {env['cores']} cores; Python {env['python']}; {versions}.", "",
           "float32, inputs standard normal, `jit`; times are medians, ms per call; ratios are to "
           "`jnp.argsort` forward at the same batch x n and to torchsort (same op and mode), same run. "
           "MAE: mean |soft - hard| of the forward output (ranks: to argsort(argsort(x)), in ranks; sort: to "
           "jnp.sort(x), in input units), each method at its own eps.", ""]
  if unavailable:
    lines += ["Not run here:", ""] + [f"- `{k}`: {v}" for k, v in unavailable.items()] + [""]
  if notes:
    lines += ["How methods were run:", ""] + [f"- `{k}`: {v}" for k, v in notes.items()] + [""]
  lines += [tables(cells)]
  if scaling:
    lines += ["### scaling", "", f"{scaling['method']}, ranks fwd+bwd, one row:", "",
              "| n | ms | ns per element |", "|---:|---:|---:|"]
    lines += [f"| {n:.0e} | {s * 1e3:.3g} | {s * 1e9 / n:.1f} |" for n, s in scaling["points"]]
    if scaling.get("exponent") is not None:
      lines += ["", f"Fitted exponent p (seconds ~ n^p): **{scaling['exponent']:.2f}**"]
    lines.append("")
  if memory:
    lines += ["### memory", "", "Peak extra resident memory of one fwd+bwd call (fresh process per case; see "
              "`benchmarks/_memory.py`), bytes per element, output included:", "",
              "| method | op | n | measured B/element | XLA temp B/element |", "|---|---|---:|---:|---:|"]
    for case in memory:
      value = f"{case['bytes_per_element']:.1f}" if case.get("status") == "ok" else case.get("status", "")
      xla = case.get("xla_temp_bytes_per_element")
      lines.append(f"| {case['method']} | {case['op']} | {case['n']:.0e} | {value} | "
                   f"{'' if xla is None else f'{xla:.1f}'} |")
    lines.append("")
  lines += ["### targets", "", f"otsort = `{TARGET_METHOD}` (the default on CPU).", "",
            "| target | value | result |", "|---|---|---|"]
  lines += [f"| {t['target']} | {t['value']} | **{t['result']}** |" for t in target_rows]
  return "\n".join(lines) + "\n"


def json_report(env, cells, scaling, memory, target_rows, unavailable, notes, options) -> dict:
  return {"environment": env, "options": options, "unavailable": unavailable, "notes": notes,
          "cells": [dataclasses.asdict(cell) for cell in cells], "scaling": scaling, "memory": memory,
          "targets": target_rows}
