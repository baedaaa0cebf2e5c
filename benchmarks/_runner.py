"""Runs the timing cells: every (op, batch x n, method, mode), in one process, smallest cells first.

A cell whose call would take longer than ``max_call_s`` is skipped, and says so: the time of the same
method's largest cell so far is extrapolated with the method's cost model (n log n or n^2 per row, times the
batch); a cell whose compiling call alone already took that long is timed with that single call's result.
A method that fails on a cell is not tried again on larger cells of the same op and mode, and fwd+bwd is
skipped where the forward alone took more than half of ``max_call_s``.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from typing import Callable

import numpy as np

from benchmarks import _methods
from benchmarks import _timing


@dataclasses.dataclass
class Cell:
  op: str
  batch: int
  n: int
  key: str
  method: str
  mode: str
  epsilon: str
  status: str = "ok"  # "ok", "skipped: <why>", "fails: <why>"
  seconds: float | None = None
  samples: int = 0
  inner: int = 0
  best_seconds: float | None = None
  first_call_s: float | None = None
  mae: float | None = None  # fwd only: mean |soft - hard| (ranks: in ranks; sort: in input units)
  ratio_argsort: float | None = None
  ratio_torchsort: float | None = None


def inputs(batch: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Standard normal float32 rows (ties have probability ~0) and the cotangent weights ``w``."""
  rng = np.random.default_rng(seed + 7919 * n + batch)
  return (rng.standard_normal((batch, n), dtype=np.float32), rng.standard_normal((batch, n), dtype=np.float32))


def hard(op: str, x: np.ndarray) -> np.ndarray:
  if op == "sort":
    return np.sort(x, axis=-1)
  return np.argsort(np.argsort(x, axis=-1, kind="stable"), axis=-1, kind="stable").astype(np.float64)


def run_cells(sizes: list[tuple[int, int]], methods: list[_methods.Method], *, ops=_methods.OPS,
              modes=_methods.MODES, cell_time: float = 0.5, max_call_s: float = 10.0,
              log: Callable[[str], None] = print) -> list[Cell]:
  cells: list[Cell] = []
  largest: dict[tuple[str, str, str], tuple[float, float]] = {}  # (key, op, mode) -> (cost, seconds)
  failed: dict[tuple[str, str, str], str] = {}  # (key, op, mode) -> the first size where it failed
  for op in ops:
    for batch, n in sorted(sizes, key=lambda size: (size[0] * size[1], size[1])):
      x, w = inputs(batch, n)
      reference = hard(op, x)
      for method in methods:
        if op not in method.ops:
          continue
        for mode in modes:
          cell = Cell(op, batch, n, method.key, method.label(op), mode, method.epsilon)
          cells.append(cell)
          forward = cells[-2] if mode == "fwd+bwd" and len(cells) > 1 else None
          if (method.key, op, mode) in failed:
            cell.status = f"skipped: fails at {failed[(method.key, op, mode)]}"
          elif forward is not None and forward.key == method.key and forward.seconds is not None and (
              2 * forward.seconds > max_call_s):
            cell.status = f"skipped: fwd alone takes {forward.seconds:.0f} s, fwd+bwd > {max_call_s:g} s"
          else:
            _run_cell(cell, method, x, w, reference, largest, cell_time, max_call_s)
            if cell.status.startswith("fails"):
              failed[(method.key, op, mode)] = f"{batch}x{n}"
          log(f"{op:5s} {batch:>4d}x{n:<8d} {cell.method:32s} {mode:8s} "
              + (f"{cell.seconds * 1e3:10.3f} ms" if cell.seconds is not None else "") + f"  {cell.status}")
          gc.collect()
  _add_ratios(cells)
  return cells


def _run_cell(cell, method, x, w, reference, largest, cell_time, max_call_s) -> None:
  batch, n = x.shape
  reason = method.skip(cell.op, cell.mode, batch, n)
  if reason is not None:
    cell.status = f"skipped: {reason}"
    return
  previous = largest.get((method.key, cell.op, cell.mode))
  if previous is not None:
    predicted = previous[1] * method.cost(batch, n) / previous[0]
    if predicted > max_call_s:
      cell.status = f"skipped: one call predicted at {predicted:.0f} s > {max_call_s:g} s"
      return
  try:
    call = method.prepare(cell.op, cell.mode, x, w)
    start = time.perf_counter()
    out = _methods.to_numpy(call())
    cell.first_call_s = time.perf_counter() - start
    if not np.all(np.isfinite(out)):
      cell.status = "fails: output or gradient is not finite"
      return
    if cell.mode == "fwd" and method.key != "jnp":
      cell.mae = float(np.mean(np.abs(out.astype(np.float64) - reference)))
    if cell.first_call_s > max_call_s:  # compiling call alone is over budget: one more call, no repeats
      timing = _timing.time_call(call, cell_time=0.0, slow_call_s=0.0)
    else:
      timing = _timing.time_call(call, cell_time=cell_time)
  except Exception as error:  # noqa: BLE001 - a failing anchor is a result, not a crash
    cell.status = f"fails: {_methods.summarize(error)}"
    return
  cell.seconds, cell.samples, cell.inner, cell.best_seconds = timing.seconds, timing.samples, timing.inner, timing.best
  largest[(method.key, cell.op, cell.mode)] = (method.cost(batch, n), timing.seconds)


def find(cells: list[Cell], **fields) -> Cell | None:
  for cell in cells:
    if all(getattr(cell, name) == value for name, value in fields.items()):
      return cell
  return None


def _add_ratios(cells: list[Cell]) -> None:
  """Ratio of each timed cell to jnp.argsort's forward (same batch x n) and to torchsort (same op, mode and
  batch x n), all from this run."""
  for cell in cells:
    if cell.seconds is None:
      continue
    argsort = find(cells, op="ranks", key="jnp", mode="fwd", batch=cell.batch, n=cell.n)
    if argsort is not None and argsort.seconds:
      cell.ratio_argsort = cell.seconds / argsort.seconds
    torch_cell = find(cells, op=cell.op, key="torchsort", mode=cell.mode, batch=cell.batch, n=cell.n)
    if torch_cell is not None and torch_cell.seconds:
      cell.ratio_torchsort = cell.seconds / torch_cell.seconds


def scaling(method: _methods.Method, ns: list[int], cells: list[Cell], *, cell_time: float,
            log: Callable[[str], None] = print) -> dict:
  """Seconds of ranks fwd+bwd for one row of each n (reusing cells of the main table), and the exponent p of
  the least-squares fit seconds ~ n^p."""
  points = []
  for n in ns:
    cell = find(cells, op="ranks", key=method.key, mode="fwd+bwd", batch=1, n=n)
    if cell is None:
      cell = run_cells([(1, n)], [method], ops=("ranks",), modes=("fwd+bwd",), cell_time=cell_time,
                       log=log)[0]
    if cell.seconds is not None:
      points.append((n, cell.seconds))
  exponent = None
  if len(points) >= 2:
    exponent = float(np.polyfit(np.log([p[0] for p in points]), np.log([p[1] for p in points]), 1)[0])
  return {"method": method.label("ranks"), "mode": "fwd+bwd", "points": points, "exponent": exponent}
