"""``python -m benchmarks.gpu``: otsort's CUDA kernel against jnp.sort / jnp.argsort and otsort's pure-JAX path.

Needs a CUDA GPU, ``jax[cuda]`` and otsort built with ``nvcc`` (so ``otsort/pav/_pav_cuda.so`` exists). Times
``otsort.ranks`` and ``otsort.sort`` (L2, default epsilon) forward and forward+backward under ``jit``, float32,
with ``impl="native"`` (the CUDA kernel) and ``impl="xla"``, and the hard ``jnp.argsort`` / ``jnp.sort``, on
the same GPU; prints a markdown table with each time's ratio to ``jnp.argsort`` forward.
"""

from __future__ import annotations

import argparse
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _timing

SIZES = ((1, 1000), (64, 1000), (256, 1000), (8, 100_000), (1, 1_000_000), (1, 10_000_000))


def _cases():
  import otsort

  for op in ("ranks", "sort"):
    hard = jnp.argsort if op == "ranks" else jnp.sort
    yield op, f"jnp.{hard.__name__}", functools.partial(hard, axis=-1), op == "sort"
    for impl in ("native", "xla"):
      yield op, f"otsort {impl}", functools.partial(getattr(otsort, op), impl=impl), True


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
  parser.add_argument("--cell-time", type=float, default=0.5)
  args = parser.parse_args(argv)
  if not any(d.platform == "gpu" for d in jax.devices()):
    sys.exit(
      f"benchmarks.gpu needs a CUDA GPU visible to JAX (install jax[cuda]); JAX sees only "
      f"{jax.devices()}. Nothing was timed."
    )
  print(f"device: {jax.devices()[0].device_kind}; jax {jax.__version__}\n")
  print("| op | batch x n | method | fwd ms | fwd / argsort | fwd+bwd ms |")
  print("|---|---|---|---:|---:|---:|")
  for batch, n in SIZES:
    rng = np.random.default_rng(n + batch)
    x = jnp.asarray(rng.standard_normal((batch, n), dtype=np.float32))
    w = jnp.asarray(rng.standard_normal((batch, n), dtype=np.float32))
    argsort_s = None
    for op, name, fn, differentiable in _cases():
      times = []
      calls = [jax.jit(fn)]
      if differentiable:
        calls.append(jax.jit(jax.grad(lambda x, w, fn=fn: jnp.sum(w * fn(x)))))
      for k, compiled in enumerate(calls):
        try:
          call = (
            (lambda c=compiled: c(x).block_until_ready())
            if k == 0
            else (lambda c=compiled: c(x, w).block_until_ready())
          )
          call()
          times.append(_timing.time_call(call, cell_time=args.cell_time).seconds)
        except Exception as error:  # noqa: BLE001 - report and go on
          times.append(None)
          print(f"<!-- {op} {batch}x{n} {name}: {type(error).__name__}: {str(error).splitlines()[0][:120]} -->")
      if name == "jnp.argsort":
        argsort_s = times[0]
      fmt = lambda s: "" if s is None else f"{s * 1e3:.3g}"
      ratio = f"{times[0] / argsort_s:.2f}x" if times[0] and argsort_s else ""
      print(
        f"| {op} | {batch}x{n} | {name} | {fmt(times[0])} | {ratio} | {fmt(times[1]) if len(times) > 1 else 'n/a'} |"
      )


if __name__ == "__main__":
  main()
