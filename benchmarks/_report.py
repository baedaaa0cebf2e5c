"""The report: machine and versions, the markdown tables, the targets (PASS/FAIL), and the JSON twin."""

from __future__ import annotations

import dataclasses
import datetime
from importlib import metadata
import os
import platform
import subprocess

import numpy as np

from benchmarks._runner import Cell
from benchmarks._runner import find
from benchmarks._runner import paired_ratio

PACKAGES = ("jax", "jaxlib", "ott-jax", "jaxopt", "numba", "torch", "torchsort", "numpy")
TARGET_METHOD = "pav-native-l2"  # what otsort.ranks runs by default on CPU (impl="auto")
BUSY_LOAD = 1.0  # 1-min load average before the run from which the report warns that other work was running


def environment() -> dict:
  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = next(
      (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
      platform.processor(),
    )
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
  priority = {"nice": os.getpriority(os.PRIO_PROCESS, 0), "autogroup_nice": None}
  try:  # Linux with CONFIG_SCHED_AUTOGROUP: "/autogroup-42 nice 0"
    with open("/proc/self/autogroup") as autogroup:
      priority["autogroup_nice"] = int(autogroup.read().split()[-1])
  except (OSError, ValueError, IndexError):
    pass
  return {
    "priority": priority,
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "cpu": model,
    "cores": len(os.sched_getaffinity(0)),
    "load_average": [round(value, 2) for value in os.getloadavg()],
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
    lines += [
      f"### {op}",
      "",
      "| batch x n | method | eps | fwd ms | / argsort | / torch.sort | / torchsort | fwd+bwd ms "
      "| / argsort | / torch.sort | / torchsort | MAE to hard |",
      "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = dict.fromkeys((c.batch, c.n, c.key, c.method, c.epsilon) for c in cells if c.op == op)
    for batch, n, key, method, epsilon in rows:
      fwd = find(cells, op=op, batch=batch, n=n, key=key, mode="fwd")
      bwd = find(cells, op=op, batch=batch, n=n, key=key, mode="fwd+bwd")
      cols = [
        f"{batch}x{n}",
        method,
        epsilon,
        time_or_note(fwd),
        _ratio(fwd and fwd.ratio_argsort),
        _ratio(fwd and fwd.ratio_torch_sort),
        _ratio(fwd and fwd.ratio_torchsort),
        time_or_note(bwd),
        _ratio(bwd and bwd.ratio_argsort),
        _ratio(bwd and bwd.ratio_torch_sort),
        _ratio(bwd and bwd.ratio_torchsort),
        _mae(fwd and fwd.mae),
      ]
      lines.append("| " + " | ".join(cols) + " |")
    lines.append("")
  if notes:
    lines += ["Notes:", ""] + [f"{i + 1}. {note}" for i, note in enumerate(notes)] + [""]
  return "\n".join(lines)


def _seconds(cells, **fields) -> float | None:  # the median
  cell = find(cells, **fields)
  return None if cell is None else cell.seconds


def _describe(cell: Cell | None, what: str) -> str:
  if cell is None:
    return f"{what} not measured"
  return f"{what} {cell.status}"


def _versus(
  ours: Cell | None, other: Cell | None, limit: float, names: tuple[str, str], excuse: str | None = None
) -> tuple[str, bool | None, float | None]:
  """(value text, passed, ratio) of ``ours / other`` against ``limit``: judged on the medians and on the fastest
  samples, so that a stall of either side alone cannot decide it; the median of the per-round ratios (the two
  cells' samples were interleaved) is shown beside them."""
  if excuse is not None:
    return f"n/a ({excuse})", None, None
  if not (ours and ours.seconds):
    return f"n/a ({_describe(ours, names[0])})", None, None
  if not (other and other.seconds):
    return f"n/a ({_describe(other, names[1])})", None, None
  median, best = ours.seconds / other.seconds, ours.best_seconds / other.best_seconds
  paired = paired_ratio(ours, other)
  text = (
    f"{median:.2f}x ({ours.seconds * 1e3:.3g} ms vs {other.seconds * 1e3:.3g} ms; "
    + ("" if paired is None else f"per round {paired:.2f}x; ")
    + f"fastest samples {best:.2f}x)"
  )
  return text, median <= limit and best <= limit, median


def targets(cells: list[Cell], scaling: dict | None, memory: list[dict], threads: dict | None = None) -> list[dict]:
  """The targets of issues 10 and 5, each ``{"issue", "target", "value", "ratio", "result"}``, result PASS,
  FAIL or n/a. ``threads``: ``{"xla": k, "torch": k'}``; the torch anchors are not judged when k' != k."""
  out = []

  def add(issue: int, target: str, value: str, passed: bool | None, ratio: float | None = None):
    out.append(
      {
        "issue": issue,
        "target": target,
        "value": value,
        "ratio": ratio,
        "result": "n/a" if passed is None else ("PASS" if passed else "FAIL"),
      }
    )

  def ranks_cell(key, mode, batch, n):
    return find(cells, op="ranks", key=key, mode=mode, batch=batch, n=n)

  unfair = None
  if threads and threads.get("torch") != threads.get("xla"):
    unfair = f"torch ran on {threads.get('torch')} threads, XLA on {threads.get('xla')}: not the same threads"
  torch_sort = "torch.sort fwd"

  # Issue 10: otsort pav ranks fwd+bwd against torchsort (same threads) and PyTorch's hard sort, KL against L2.
  for batch, n in ((64, 1000), (256, 1000), (1, 1_000_000)):
    size = f"{batch}x{n:g}" if n < 1e6 else f"{batch}x1e6"
    l2 = ranks_cell("pav-native-l2", "fwd+bwd", batch, n)
    kl = ranks_cell("pav-native-kl", "fwd+bwd", batch, n)
    floor = find(cells, op="sort", key="torch", mode="fwd", batch=batch, n=n)
    if n == 1000:
      for reg, ours in (("l2", l2), ("kl", kl)):
        anchor_key = "torchsort" if reg == "l2" else "torchsort-kl"
        anchor = ranks_cell(anchor_key, "fwd+bwd", batch, n)
        value, passed, ratio = _versus(ours, anchor, 0.5, (f"pav-native-{reg}", anchor_key), unfair)
        add(
          10,
          f"ranks fwd+bwd {size} {reg.upper()} <= 0.5x torchsort soft_rank {reg} fwd+bwd (same threads)",
          value,
          passed,
          ratio,
        )
        value, passed, ratio = _versus(ours, floor, 1.0, (f"pav-native-{reg}", torch_sort), unfair)
        add(10, f"ranks fwd+bwd {size} {reg.upper()} <= 1x {torch_sort} (same batch)", value, passed, ratio)
    else:
      value, passed, ratio = _versus(l2, floor, 0.5, ("pav-native-l2", torch_sort), unfair)
      add(10, f"ranks fwd+bwd {size} L2 <= 0.5x {torch_sort}", value, passed, ratio)
    value, passed, ratio = _versus(kl, l2, 1.5, ("pav-native-kl", "pav-native-l2"))
    add(10, f"ranks fwd+bwd {size}: KL <= 1.5x L2", value, passed, ratio)

  value, passed, ratio = _versus(
    ranks_cell("sinkhorn", "fwd+bwd", 1, 1000),
    ranks_cell("sinkhorn", "fwd", 1, 1000),
    2.0,
    ("sinkhorn fwd+bwd", "sinkhorn fwd"),
  )
  add(10, "sinkhorn ranks 1x1000: fwd+bwd <= 2x its own fwd", value, passed, ratio)

  # Issue 5 (met before issue 10; kept to see they stay met).
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
  add(
    5,
    "ranks fwd+bwd 1x1e6 <= 1.5x jnp.sort (fwd)",
    "n/a"
    if ratio is None
    else f"{ratio:.2f}x ({ours * 1e3:.3g} ms vs {sort_fwd * 1e3:.3g} ms; " + "; ".join(extra) + ")",
    None if ratio is None else ratio <= 1.5,
    ratio,
  )

  if scaling and scaling.get("exponent") is not None:
    ns = [p[0] for p in scaling["points"]]
    nlogn = np.polyfit(np.log(ns), np.log([n * np.log(n) for n in ns]), 1)[0]
    points = ", ".join(f"n={n:.0e}: {s * 1e3:.3g} ms" for n, s in scaling["points"])
    full_range = min(ns) <= 1_000 and max(ns) >= 1_000_000  # the target's range; --quick fits less
    add(
      5,
      f"exponent of ranks fwd+bwd cost vs n, 1 row, n {min(ns):.0e}..{max(ns):.0e} (~ n log n; PASS if "
      "abs(p - 1) <= 0.25 over 1e3..1e6)",
      f"p = {scaling['exponent']:.2f} (n log n alone gives {nlogn:.2f}; {points})",
      abs(scaling["exponent"] - 1) <= 0.25 if full_range else None,
    )
  else:
    add(5, "exponent of ranks fwd+bwd cost vs n (~ n log n)", "n/a", None)

  for mode in ("fwd+bwd", "fwd"):
    ours = find(cells, op="ranks", key="sinkhorn", mode=mode, batch=1, n=1000)
    ott_cell = find(cells, op="ranks", key="ott", mode=mode, batch=1, n=1000)
    if ours and ott_cell and ours.seconds and ott_cell.seconds:
      break
  if ours and ott_cell and ours.seconds and ott_cell.seconds:
    ours_mae = find(cells, op="ranks", key="sinkhorn", mode="fwd", batch=1, n=1000).mae
    ott_mae = find(cells, op="ranks", key="ott", mode="fwd", batch=1, n=1000).mae
    speedup = ott_cell.seconds / ours.seconds
    add(
      5,
      f"sinkhorn ranks 1x1000 >= 2x faster than ott ({mode}) at <= its MAE",
      f"{speedup:.2f}x faster ({ours.seconds * 1e3:.3g} ms vs {ott_cell.seconds * 1e3:.3g} ms); "
      f"MAE {ours_mae:.3g} vs ott {ott_mae:.3g}",
      speedup >= 2 and ours_mae <= ott_mae,
    )
  else:
    why = ours.status if ours is not None and ours.status != "ok" else "not measured"
    add(5, "sinkhorn ranks 1x1000 >= 2x faster than ott at <= its MAE", f"n/a ({why})", None)

  case = next((m for m in memory if m["method"] == TARGET_METHOD and m["n"] == 10_000_000), None)
  if case is not None and case.get("status") == "ok":
    add(
      5,
      "peak extra memory, ranks fwd+bwd 1x1e7, < 64 bytes/element",
      f"{case['bytes_per_element']:.1f} B/element",
      case["bytes_per_element"] < 64,
    )
  else:
    add(
      5, "peak extra memory, ranks fwd+bwd 1x1e7, < 64 bytes/element", "n/a" if case is None else case["status"], None
    )
  return out


def markdown(
  env: dict,
  cells: list[Cell],
  scaling: dict | None,
  memory: list[dict],
  target_rows: list[dict],
  unavailable: dict[str, str],
  notes: dict[str, str],
) -> str:
  versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v is not None)
  threads = env.get("threads") or {}
  load = env.get("load_average")
  lines = [
    "## otsort benchmarks",
    "",
    f"{env['date']}; {env['cpu']}, {env['cores']} cores; Python {env['python']}; {versions}.",
    "",
  ]
  if env.get("otsort"):
    lines += [f"Timed: {env['otsort']}.", ""]
  if threads:
    lines += [
      f"Threads: XLA's CPU client {threads.get('xla')} ({threads.get('xla_how')}); torch "
      f"{threads.get('torch')} (`torch.set_num_threads`)"
      + (
        ""
        if threads.get("torch") == threads.get("xla")
        else " **differs from XLA's: ratios to the "
        "torch anchors are not same-threads and their targets are not judged**"
      )
      + ".",
      "",
    ]
  priority = env.get("priority") or {}
  raised = min(priority.get("nice") or 0, priority.get("autogroup_nice") or 0) < 0
  if priority:
    lines += [
      f"Scheduling: nice {priority.get('nice')}, autogroup nice {priority.get('autogroup_nice')}"
      + (" (raised above the other work on the machine)." if raised else "."),
      "",
    ]
  if load:
    busy = load[0] >= BUSY_LOAD and not raised
    lines += [
      f"Load average (1, 5, 15 min) at the start {load}, at the end {env.get('load_average_end')}."
      + (
        f" **Other work was running** (1-min load {load[0]} on {env['cores']} cores before the run): "
        "torch's OpenMP threads stall when the cores are oversubscribed, far more than XLA's pool "
        "(see README), so the ratios to the torch rows of this run are not reliable."
        if busy
        else ""
      ),
      "",
    ]
  lines += [
    "float32, inputs standard normal, `jit`; times are medians, ms per call; the cells of one batch x n are "
    "timed together, their samples interleaved. Ratios, all from this run: to `jnp.argsort` forward and "
    "to `torch.sort` forward (values and indices) at the same batch x n, and to torchsort's same op and "
    "mode (KL rows: to torchsort KL). MAE: mean |soft - hard| of the forward output (ranks: to "
    "argsort(argsort(x)), in ranks; sort: to jnp.sort(x), in input units), each method at its own eps.",
    "",
  ]
  if unavailable:
    lines += ["Not run here:", ""] + [f"- `{k}`: {v}" for k, v in unavailable.items()] + [""]
  if notes:
    lines += ["How methods were run:", ""] + [f"- `{k}`: {v}" for k, v in notes.items()] + [""]
  lines += [tables(cells)]
  if scaling:
    lines += [
      "### scaling",
      "",
      f"{scaling['method']}, ranks fwd+bwd, one row:",
      "",
      "| n | ms | ns per element |",
      "|---:|---:|---:|",
    ]
    lines += [f"| {n:.0e} | {s * 1e3:.3g} | {s * 1e9 / n:.1f} |" for n, s in scaling["points"]]
    if scaling.get("exponent") is not None:
      lines += ["", f"Fitted exponent p (seconds ~ n^p): **{scaling['exponent']:.2f}**"]
    lines.append("")
  if memory:
    lines += [
      "### memory",
      "",
      "Peak extra resident memory of one fwd+bwd call (fresh process per case; see "
      "`benchmarks/_memory.py`), bytes per element, output included:",
      "",
      "| method | op | n | measured B/element | XLA temp B/element |",
      "|---|---|---:|---:|---:|",
    ]
    for case in memory:
      value = f"{case['bytes_per_element']:.1f}" if case.get("status") == "ok" else case.get("status", "")
      xla = case.get("xla_temp_bytes_per_element")
      lines.append(
        f"| {case['method']} | {case['op']} | {case['n']:.0e} | {value} | {'' if xla is None else f'{xla:.1f}'} |"
      )
    lines.append("")
  lines += [
    "### targets",
    "",
    "otsort = `pav-native-l2` / `pav-native-kl` (the default on CPU is L2). "
    'Ratios: medians; PASS needs the fastest samples\' ratio within the limit too; "per round" is the '
    "median of the ratios of interleaved samples.",
    "",
    "| issue | target | value | result |",
    "|---|---|---|---|",
  ]
  lines += [f"| {t['issue']} | {t['target']} | {t['value']} | **{t['result']}** |" for t in target_rows]
  return "\n".join(lines) + "\n"


def json_report(env, cells, scaling, memory, target_rows, unavailable, notes, options) -> dict:
  return {
    "environment": env,
    "options": options,
    "unavailable": unavailable,
    "notes": notes,
    "cells": [dataclasses.asdict(cell) for cell in cells],
    "scaling": scaling,
    "memory": memory,
    "targets": target_rows,
  }
