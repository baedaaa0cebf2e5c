"""Compares the regularizations across an epsilon sweep: L2 and KL permutahedron projections (``pav``) and
entropic optimal transport (``sinkhorn``).

For each method and epsilon, on the same random rows ``[batch, n]`` (standard normal, float32):

- ``sort_error``, ``ranks_error``: mean absolute error of the soft sort and soft ranks against the hard ones
  (``jnp.sort``; 0-based ranks, in rank units);
- ``ranks_grad_density``: the fraction of inputs that receive a non-zero gradient from the scalar loss
  ``sum(w * ranks(x))``, ``w`` fixed random normal weights. An entry counts as non-zero when
  ``|grad| > 1e-5 * max|w| / epsilon``: the ranks' Jacobian has entries of order ``1 / epsilon``, and float32
  rounding leaves values far below that in entries that are exactly zero. Both ``pav`` projections have
  block-sparse Jacobians (in sorted order, an input gets a gradient only if isotonic regression pools it with a
  neighbour), Sinkhorn's is dense. (The sort's gradient reaches every input, a permuted ``w``, so it is not
  measured.)
- ``sort_ms``, ``ranks_ms``, ``ranks_grad_ms``: median wall time of one jitted call (forward sort, forward
  ranks, value and gradient of the ranks loss) over ``repeats`` calls, after compilation. Each is compiled once per
  method and takes epsilon as an argument: the sweep over epsilon does not recompile.

:func:`compare` returns one dict per (method, epsilon); :func:`write_report` writes them as a markdown table,
CSV, JSON and PNG plots, each file atomically (a temporary file, then ``os.replace``), so an interrupted run never
leaves a half-written output. ``otsort compare`` and ``tutorials/comparing_regularizations.py`` call both.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from pathlib import Path
import tempfile
import time
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from otsort import _api

#: Method name -> (backend, backend options).
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "pav-l2": ("pav", {"regularization": "l2"}),
    "pav-kl": ("pav", {"regularization": "kl"}),
    "sinkhorn": ("sinkhorn", {}),
}

COLUMNS = ("method", "backend", "epsilon", "n", "batch", "sort_error", "ranks_error", "ranks_grad_density",
           "sort_ms", "ranks_ms", "ranks_grad_ms")

# Plot name -> (y label, log scale, panels (column, title)).
_PLOTS = {
    "error": ("mean absolute error to the hard op", True,
              (("sort_error", "soft sort vs jnp.sort"), ("ranks_error", "soft ranks vs ranks (rank units)"))),
    "grad_density": ("fraction of inputs with a non-zero gradient", False,
                     (("ranks_grad_density", "gradient of sum(w * ranks(x))"),)),
    "time": ("median time per jitted call (ms)", True,
             (("ranks_ms", "ranks, forward"), ("ranks_grad_ms", "ranks, value and gradient"))),
}


def settings(*, small: bool) -> dict[str, Any]:
  """The sweep the tutorial and ``otsort compare`` run: ``small`` takes seconds, the full one about a minute."""
  if small:
    return dict(n=32, batch=8, epsilons=tuple(np.logspace(-3, 1, 5)), repeats=5)
  return dict(n=200, batch=64, epsilons=tuple(np.logspace(-3, 1, 9)), repeats=20)


def available_methods() -> tuple[str, ...]:
  """The methods whose backend this installation provides (``sinkhorn`` only once it is wired in)."""
  return tuple(name for name, (backend, _) in METHODS.items() if backend in _api.BACKENDS)


def _check_positive_int(name: str, value: Any) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive int; got {name} = {value!r}")
  return int(value)


def _median_ms(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def _density(grad: jax.Array, tiny: float) -> float:
  grad = np.abs(np.asarray(grad, np.float64))
  return float(np.mean(grad > tiny)) if np.all(np.isfinite(grad)) else float("nan")


def compare(*, n: int = 100, batch: int = 32, epsilons: Sequence[float] | None = None,
            methods: Sequence[str] | None = None, seed: int = 0, repeats: int = 5) -> list[dict[str, Any]]:
  """Runs the comparison; one row (a dict with the keys :data:`COLUMNS`) per method and epsilon.

  Args:
    n: the length of each row, >= 2.
    batch: the number of rows.
    epsilons: regularization strengths, each > 0; default ``np.logspace(-3, 1, 9)``. The same values are given
      to every backend (``pav`` ranks ``x / epsilon``, Sinkhorn's epsilon regularizes a cost between squashed
      inputs and targets in [0, 1]), so the curves compare shapes more than positions.
    methods: names from :data:`METHODS`; default: :func:`available_methods`.
    seed: seed of the input rows and of the loss weights.
    repeats: timed calls per measurement (the median is reported), >= 1.

  Returns:
    A list of dicts, ordered by method then epsilon.
  """
  n = _check_positive_int("n", n)
  if n < 2:
    raise ValueError(f"n must be >= 2 to compare sorts; got n = {n}")
  batch = _check_positive_int("batch", batch)
  repeats = _check_positive_int("repeats", repeats)
  epsilons = np.logspace(-3, 1, 9) if epsilons is None else np.asarray(epsilons, np.float64).reshape(-1)
  if epsilons.size == 0 or not np.all(np.isfinite(epsilons) & (epsilons > 0)):
    raise ValueError(f"epsilons must be a non-empty sequence of positive finite numbers; got {epsilons!r}")
  methods = available_methods() if methods is None else tuple(methods)
  for name in methods:
    if name not in METHODS:
      raise ValueError(f"methods must be names from {', '.join(map(repr, METHODS))}; got {name!r}")
    if METHODS[name][0] not in _api.BACKENDS:
      raise ValueError(f"method {name!r} needs backend {METHODS[name][0]!r}, which this installation does not "
                       f"provide; available methods: {', '.join(map(repr, available_methods()))}")
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(batch, n)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(batch, n)), jnp.float32)
  hard_sort = np.sort(np.asarray(x), axis=-1)
  hard_ranks = np.argsort(np.argsort(np.asarray(x), axis=-1), axis=-1).astype(np.float64)
  max_weight = float(jnp.max(jnp.abs(weights)))

  rows = []
  for name in methods:
    backend, options = METHODS[name]
    # One compiled function per method: epsilon is an argument, so the whole sweep compiles each once.
    sort = jax.jit(lambda v, e, b=backend, o=options: _api.sort(v, epsilon=e, backend=b, **o))
    ranks = jax.jit(lambda v, e, b=backend, o=options: _api.ranks(v, epsilon=e, backend=b, **o))
    ranks_value_grad = jax.jit(jax.value_and_grad(
        lambda v, e, b=backend, o=options: jnp.sum(weights * _api.ranks(v, epsilon=e, backend=b, **o))))
    for epsilon in epsilons:
      e = jnp.float32(epsilon)
      tiny = 1e-5 * max_weight / float(epsilon)
      rows.append({
          "method": name,
          "backend": backend,
          "epsilon": float(epsilon),
          "n": n,
          "batch": batch,
          "sort_error": float(np.mean(np.abs(np.asarray(sort(x, e), np.float64) - hard_sort))),
          "ranks_error": float(np.mean(np.abs(np.asarray(ranks(x, e), np.float64) - hard_ranks))),
          "ranks_grad_density": _density(ranks_value_grad(x, e)[1], tiny),
          "sort_ms": _median_ms(sort, x, e, repeats=repeats),
          "ranks_ms": _median_ms(ranks, x, e, repeats=repeats),
          "ranks_grad_ms": _median_ms(ranks_value_grad, x, e, repeats=repeats),
      })
  return rows


@contextlib.contextmanager
def _atomic(path: Path, mode: str = "w") -> Iterator[Any]:
  """Opens a temporary file beside ``path``; on success it replaces ``path`` in one step, on error it is removed."""
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
      yield f
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def _format(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.3g}"
  return str(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
  """The rows as a GitHub markdown table, columns :data:`COLUMNS`."""
  lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
  lines += ["| " + " | ".join(_format(row[c]) for c in COLUMNS) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def _plot(rows: Sequence[dict[str, Any]], name: str, path: Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

  ylabel, log_y, panels = _PLOTS[name]
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), constrained_layout=True, squeeze=False)
  for ax, (key, title) in zip(axes[0], panels):
    for method in dict.fromkeys(row["method"] for row in rows):
      mine = [row for row in rows if row["method"] == method]
      ax.plot([row["epsilon"] for row in mine], [row[key] for row in mine], marker="o", label=method)
    ax.set_xscale("log")
    if log_y:
      ax.set_yscale("symlog", linthresh=1e-4)  # log scale that also shows exact zeros
      ax.set_ylim(bottom=0)
    ax.set_xlabel("epsilon")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  plt.close(fig)
  with _atomic(path, "wb") as f:
    f.write(buffer.getvalue())


def write_report(rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike, *, plots: bool = True) -> list[Path]:
  """Writes ``comparison.md``, ``.csv``, ``.json`` and (with ``plots``, needs matplotlib) ``comparison_error.png``,
  ``comparison_grad_density.png``, ``comparison_time.png`` into ``out_dir`` (created if missing).

  Returns:
    The paths written, in that order.
  """
  rows = list(rows)
  if not rows:
    raise ValueError("rows must hold at least one result of compare(); got none")
  missing = [c for c in COLUMNS if c not in rows[0]]
  if missing:
    raise ValueError(f"rows must be compare()'s dicts; the first lacks {', '.join(missing)}")
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = [out / "comparison.md", out / "comparison.csv", out / "comparison.json"]
  with _atomic(paths[0]) as f:
    f.write(markdown_table(rows))
  with _atomic(paths[1]) as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
  with _atomic(paths[2]) as f:
    json.dump(rows, f, indent=1)
    f.write("\n")
  if plots:
    for name in _PLOTS:
      path = out / f"comparison_{name}.png"
      _plot(rows, name, path)
      paths.append(path)
  return paths
