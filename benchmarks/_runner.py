"""Runs the timing cells: every (op, batch x n, method, mode), in one process, smallest sizes first.

All the cells of one batch x n (both ops, every method and mode) are timed together, their samples interleaved
round-robin (:func:`benchmarks._timing.interleave`), so that the ratios between them, which the targets judge,
compare calls made under the same load. Each cell is first compiled and checked (finite output, MAE) and its
cost estimated from warm-up calls; calls slower than ``slow_call_s`` are timed by that estimate alone.

A cell whose call would take longer than ``max_call_s`` is skipped, and says so: the time of the same method's
largest cell so far is extrapolated with the method's cost model (n log n or n^2 per row, times the batch); a
cell whose compiling call alone already took that long is timed with one more call. A method that fails on a
cell is not tried again on larger cells of the same op and mode, and fwd+bwd is skipped where the forward alone
took more than half of ``max_call_s``.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import gc
import time

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
  regularization: str = "l2"
  status: str = "ok"  # "ok", "skipped: <why>", "fails: <why>"
  seconds: float | None = None
  samples: int = 0
  inner: int = 0
  best_seconds: float | None = None
  first_call_s: float | None = None
  mae: float | None = None  # fwd only: mean |soft - hard| (ranks: in ranks; sort: in input units)
  ratio_argsort: float | None = None  # to jnp.argsort fwd, same batch x n
  ratio_torch_sort: float | None = None  # to torch.sort fwd, same batch x n
  ratio_torchsort: float | None = None  # to torchsort, same op, mode, regularization and batch x n
  per_sample: list[float] = dataclasses.field(default_factory=list)  # seconds per call, one per round


def inputs(batch: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Standard normal float32 rows (ties have probability ~0) and the cotangent weights ``w``."""
  rng = np.random.default_rng(seed + 7919 * n + batch)
  return (rng.standard_normal((batch, n), dtype=np.float32), rng.standard_normal((batch, n), dtype=np.float32))


def hard(op: str, x: np.ndarray) -> np.ndarray:
  if op == "sort":
    return np.sort(x, axis=-1)
  return np.argsort(np.argsort(x, axis=-1, kind="stable"), axis=-1, kind="stable").astype(np.float64)


def run_cells(
  sizes: list[tuple[int, int]],
  methods: list[_methods.Method],
  *,
  ops=_methods.OPS,
  modes=_methods.MODES,
  cell_time: float = 0.5,
  max_call_s: float = 10.0,
  slow_call_s: float = 2.0,
  log: Callable[[str], None] = print,
) -> list[Cell]:
  cells: list[Cell] = []
  largest: dict[tuple[str, str, str], tuple[float, float]] = {}  # (key, op, mode) -> (cost, seconds)
  failed: dict[tuple[str, str, str], str] = {}  # (key, op, mode) -> the first size where it failed
  for batch, n in sorted(sizes, key=lambda size: (size[0] * size[1], size[1])):
    x, w = inputs(batch, n)
    group: list[tuple[Cell, _methods.Method, _methods.Call, float]] = []  # cells timed together
    estimates: dict[tuple[str, str, str], float] = {}  # (key, op, mode) -> warm-up estimate, this size
    for op in ops:
      reference = hard(op, x)
      for method in methods:
        if op not in method.ops:
          continue
        for mode in modes:
          cell = Cell(op, batch, n, method.key, method.label(op), mode, method.epsilon, method.regularization)
          cells.append(cell)
          forward = estimates.get((method.key, op, "fwd")) if mode == "fwd+bwd" else None
          if (method.key, op, mode) in failed:
            cell.status = f"skipped: fails at {failed[(method.key, op, mode)]}"
          elif forward is not None and 2 * forward > max_call_s:
            cell.status = f"skipped: fwd alone takes {forward:.0f} s, fwd+bwd > {max_call_s:g} s"
          else:
            prepared = _prepare_cell(cell, method, x, w, reference, largest, cell_time, max_call_s, slow_call_s)
            if cell.status.startswith("fails"):
              failed[(method.key, op, mode)] = f"{batch}x{n}"
            elif prepared is not None:
              call, estimate = prepared
              estimates[(method.key, op, mode)] = estimate
              if estimate >= slow_call_s or cell.first_call_s > max_call_s:
                _record(cell, method, _timing.Timing(estimate, 1, 1, estimate, (estimate,)), largest)
              else:
                group.append((cell, method, call, estimate))
          if cell.status != "ok" or cell.seconds is not None:
            log(_line(cell))
    if group:
      log(f"{batch}x{n}: timing {len(group)} cells together, {cell_time:g} s each, samples interleaved")
      timings = _timing.interleave([g[2] for g in group], [g[3] for g in group], cell_time=cell_time)
      for (cell, method, _, _), timing in zip(group, timings):
        _record(cell, method, timing, largest)
        log(_line(cell))
    del group
    gc.collect()
  _add_ratios(cells)
  return cells


def _line(cell: Cell) -> str:
  ms = f"{cell.seconds * 1e3:10.3f} ms" if cell.seconds is not None else ""
  return f"{cell.op:5s} {cell.batch:>4d}x{cell.n:<8d} {cell.method:34s} {cell.mode:8s} {ms}  {cell.status}"


def _prepare_cell(
  cell, method, x, w, reference, largest, cell_time, max_call_s, slow_call_s
) -> tuple[_methods.Call, float] | None:
  """Compiles and checks one cell and estimates a call; (call, estimate), or None with the status set."""
  batch, n = x.shape
  reason = method.skip(cell.op, cell.mode, batch, n)
  if reason is not None:
    cell.status = f"skipped: {reason}"
    return None
  previous = largest.get((method.key, cell.op, cell.mode))
  if previous is not None:
    predicted = previous[1] * method.cost(batch, n) / previous[0]
    if predicted > max_call_s:
      cell.status = f"skipped: one call predicted at {predicted:.0f} s > {max_call_s:g} s"
      return None
  try:
    call = method.prepare(cell.op, cell.mode, x, w)
    start = time.perf_counter()
    out = _methods.to_numpy(call())
    cell.first_call_s = time.perf_counter() - start
    if not np.all(np.isfinite(out)):
      cell.status = "fails: output or gradient is not finite"
      return None
    if cell.mode == "fwd" and not method.hard:
      cell.mae = float(np.mean(np.abs(out.astype(np.float64) - reference)))
    del out
    if cell.first_call_s > max_call_s:  # the compiling call alone is over budget: one more call, no repeats
      return call, _timing.estimate(call, cell_time=0.0, slow_call_s=0.0)
    return call, _timing.estimate(call, cell_time=cell_time, slow_call_s=slow_call_s)
  except Exception as error:  # noqa: BLE001 - a failing anchor is a result, not a crash
    cell.status = f"fails: {_methods.summarize(error)}"
    return None


def _record(cell: Cell, method: _methods.Method, timing: _timing.Timing, largest: dict) -> None:
  cell.seconds, cell.samples, cell.inner, cell.best_seconds = timing.seconds, timing.samples, timing.inner, timing.best
  cell.per_sample = list(timing.per_sample)
  largest[(method.key, cell.op, cell.mode)] = (method.cost(cell.batch, cell.n), timing.seconds)


def find(cells: list[Cell], **fields) -> Cell | None:
  for cell in cells:
    if all(getattr(cell, name) == value for name, value in fields.items()):
      return cell
  return None


def _add_ratios(cells: list[Cell]) -> None:
  """Ratio of each timed cell to jnp.argsort's and torch.sort's forward (same batch x n) and to torchsort (same
  op, mode, regularization and batch x n), all from this run."""
  for cell in cells:
    if cell.seconds is None:
      continue
    argsort = find(cells, op="ranks", key="jnp", mode="fwd", batch=cell.batch, n=cell.n)
    if argsort is not None and argsort.seconds:
      cell.ratio_argsort = cell.seconds / argsort.seconds
    torch_sort = find(cells, op="sort", key="torch", mode="fwd", batch=cell.batch, n=cell.n)
    if torch_sort is not None and torch_sort.seconds:
      cell.ratio_torch_sort = cell.seconds / torch_sort.seconds
    anchor = "torchsort" if cell.regularization == "l2" else f"torchsort-{cell.regularization}"
    torch_cell = find(cells, op=cell.op, key=anchor, mode=cell.mode, batch=cell.batch, n=cell.n)
    if torch_cell is not None and torch_cell.seconds:
      cell.ratio_torchsort = cell.seconds / torch_cell.seconds


def paired_ratio(a: Cell, b: Cell) -> float | None:
  """Median over rounds of a's sample / b's sample, for two cells timed in the same interleaved group; None
  when they were not (different sizes) or either has fewer than 3 samples."""
  if (a.batch, a.n) != (b.batch, b.n):
    return None
  rounds = min(len(a.per_sample), len(b.per_sample))
  if rounds < 3:
    return None
  return float(np.median([a.per_sample[i] / b.per_sample[i] for i in range(rounds)]))


def scaling(
  method: _methods.Method, ns: list[int], cells: list[Cell], *, cell_time: float, log: Callable[[str], None] = print
) -> dict:
  """Seconds of ranks fwd+bwd for one row of each n (reusing cells of the main table), and the exponent p of
  the least-squares fit seconds ~ n^p."""
  points = []
  for n in ns:
    cell = find(cells, op="ranks", key=method.key, mode="fwd+bwd", batch=1, n=n)
    if cell is None:
      cell = run_cells([(1, n)], [method], ops=("ranks",), modes=("fwd+bwd",), cell_time=cell_time, log=log)[0]
    if cell.seconds is not None:
      points.append((n, cell.seconds))
  exponent = None
  if len(points) >= 2:
    exponent = float(np.polyfit(np.log([p[0] for p in points]), np.log([p[1] for p in points]), 1)[0])
  return {"method": method.label("ranks"), "mode": "fwd+bwd", "points": points, "exponent": exponent}
