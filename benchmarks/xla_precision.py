"""``python -m benchmarks.xla_precision``: how far the pure-JAX PAV (``impl="xla"``) is from the native kernel in
float32 on long rows.

The native kernel accumulates in double; the pure-JAX twin works in float32 (without ``jax_enable_x64``). For each
row length n, regularization and operation (soft ranks, soft sort, top-k mask with k = n / 2, top-3 mask), three
float32 rows are computed both ways: standard normals, +-1e20 at random, and an all-equal row (2.5). The error is
``max |xla - native|`` in float32 ulps of the row's scale ``max |native|`` (issue 14 asks for a few), printed as a
markdown table with the sum of the all-equal row's top-3 mask (3 exactly) and the pure-JAX times (compile, then
one call on the three rows).

The epsilons are 1 for the scores, and for the sort n / 8 on the normals and n on the +-1e20 row, so that blocks
grow large and every merge path runs.

``--isotonic-xla FILE`` measures another version of ``otsort/pav/_isotonic_xla.py`` in its place (an earlier
commit's: ``git show COMMIT:otsort/pav/_isotonic_xla.py > FILE``), against the same native kernel. n = 1e7 takes
minutes per call on a CPU core: the PAV loop is sequential.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import jax
import jax.numpy as jnp
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)
ROWS = ("normal", "+-1e20", "all equal")
OPS = ("ranks", "sort", "topk_mask", "top3_mask")


def rows(n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """float32 rows ``[3, n]`` (see ``ROWS``) and the per-row epsilons of each operation."""
  rng = np.random.default_rng(n)
  x = np.stack([rng.standard_normal(n), np.where(rng.random(n) < 0.5, -1e20, 1e20), np.full(n, 2.5)])
  scores = np.ones(3)
  epsilons = {"ranks": scores, "sort": np.array([n / 8, float(n), 1.0]), "topk_mask": scores, "top3_mask": scores}
  return x.astype(np.float32), {k: v.astype(np.float32) for k, v in epsilons.items()}


def operation(name: str, n: int):
  """``f(x, epsilon, **options)`` for an entry of ``OPS``."""
  import otsort

  return {
    "ranks": lambda x, e, **kw: otsort.ranks(x, epsilon=e, **kw),
    "sort": lambda x, e, **kw: otsort.sort(x, epsilon=e, **kw),
    "topk_mask": lambda x, e, **kw: otsort.topk_mask(x, n // 2, epsilon=e, **kw),
    "top3_mask": lambda x, e, **kw: otsort.topk_mask(x, 3, epsilon=e, **kw),
  }[name]


def ulps_of_row_scale(got: np.ndarray, want: np.ndarray) -> np.ndarray:
  """max |got - want| per row, in float32 ulps of the row's max |want| (NaN where either is NaN)."""
  got, want = got.astype(np.float64), want.astype(np.float64)
  return np.abs(got - want).max(axis=-1) / (EPS32 * np.abs(want).max(axis=-1))


def use_isotonic_xla(path: str) -> None:
  """Routes ``impl="xla"`` to the solvers of the module at ``path``."""
  from otsort.pav import _isotonic_xla

  spec = importlib.util.spec_from_file_location("isotonic_xla_under_test", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  _isotonic_xla.scores, _isotonic_xla.sort = module.scores, module.sort


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.xla_precision", description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="1e5,1e6,1e7", help="comma-separated row lengths (default 1e5,1e6,1e7)")
  parser.add_argument("--regularizations", default="l2,kl", help="comma-separated subset of l2,kl")
  parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
  parser.add_argument("--isotonic-xla", metavar="FILE", help="measure this version of otsort/pav/_isotonic_xla.py")
  args = parser.parse_args(argv)
  if jax.config.jax_enable_x64:
    raise SystemExit("run without JAX_ENABLE_X64: with 64-bit types the pure-JAX path computes float32 in float64")
  if args.isotonic_xla:
    use_isotonic_xla(args.isotonic_xla)
  solver = f", pure-JAX solver from {args.isotonic_xla}" if args.isotonic_xla else ""
  print(f"pure-JAX PAV vs native, float32, jax {jax.__version__} on {jax.devices()[0].device_kind}{solver}")
  print(f"\n| n | reg | op | {' | '.join(f'{r}: ulps' for r in ROWS)} | all-equal top-3 sum | xla s (compile + run) |")
  print("|---|---|---|" + "---|" * len(ROWS) + "---|---|")
  for n in (int(float(s)) for s in args.sizes.split(",")):
    x, epsilons = rows(n)
    for regularization in args.regularizations.split(","):
      for name in args.ops.split(","):
        op = operation(name, n)
        e = jnp.asarray(epsilons[name])
        want = np.asarray(op(jnp.asarray(x), e, regularization=regularization, impl="native"))
        start = time.perf_counter()
        xla = jax.jit(lambda x, e: op(x, e, regularization=regularization, impl="xla")).lower(x, e).compile()
        compile_seconds = time.perf_counter() - start
        got = np.asarray(xla(jnp.asarray(x), e))
        seconds = time.perf_counter() - start - compile_seconds
        errors = " | ".join(f"{u:.3g}" for u in ulps_of_row_scale(got, want))
        top3 = f"{got[2].astype(np.float64).sum():.7g}" if name == "top3_mask" else ""
        times = f"{compile_seconds:.1f} + {seconds:.1f}"
        print(f"| {n:.0e} | {regularization} | {name} | {errors} | {top3} | {times} |", flush=True)


if __name__ == "__main__":
  main()
