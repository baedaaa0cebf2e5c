"""The native kernel's within-row parallel PAV (a row of n >= 2^16 pooled by chunks, issue 10) gives the results
of the sequential walk: against the pure-JAX twin (``impl="xla"``) to the tolerances of tests/test_pav.py, and
against the native kernel with chunking turned off (``OTSORT_PAV_CHUNK_MIN=0``, in a child process) to rounding.

One row of 2^17 with ties (values rounded to 0.01, so ties span chunk boundaries) and an epsilon at which blocks
pool across them. The chunked path runs for a single row whenever XLA's pool has a thread, as here.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import otsort

N = 1 << 17
# (op, k, epsilon): pooled blocks of hundreds to thousands of positions, crossing the chunks of 2^13 and more.
CASES = [("ranks", 0, 1e-3), ("sort", 0, 1.0), ("topk_mask", 1000, 1e-3)]
REGULARIZATIONS = ("l2", "kl")


def long_row(seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return np.round(rng.normal(size=(1, N)), 2).astype(np.float32)


def _fn(op: str, k: int, epsilon: float, regularization: str, impl: str):
  kwargs = dict(epsilon=epsilon, regularization=regularization, impl=impl)
  if op == "topk_mask":
    return functools.partial(otsort.topk_mask, k=k, **kwargs)
  return functools.partial({"sort": otsort.sort, "ranks": otsort.ranks}[op], **kwargs)


def _value_and_vjp(op: str, k: int, epsilon: float, regularization: str, impl: str, x, cotangent):
  fn = _fn(op, k, epsilon, regularization, impl)

  @jax.jit
  def run(x, cotangent):
    y, pullback = jax.vjp(fn, x)
    return y, pullback(cotangent)[0]

  y, g = run(jnp.asarray(x), jnp.asarray(cotangent))
  return np.asarray(y), np.asarray(g)


@pytest.mark.parametrize("regularization", REGULARIZATIONS)
@pytest.mark.parametrize("op,k,epsilon", CASES)
def test_chunked_native_equals_the_pure_jax_twin_on_a_long_row_with_ties(op, k, epsilon, regularization):
  x = long_row()
  assert len(np.unique(x)) < N // 100  # ties, many of them
  cotangent = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
  y_native, g_native = _value_and_vjp(op, k, epsilon, regularization, "native", x, cotangent)
  y_xla, g_xla = _value_and_vjp(op, k, epsilon, regularization, "xla", x, cotangent)
  np.testing.assert_allclose(y_native, y_xla, rtol=1e-5, atol=1e-4)
  # The VJPs (the KL ranks' reach 1e8 at epsilon 1e-3) cancel within blocks: 1e-5 of the row's scale, as values'.
  np.testing.assert_allclose(g_native, g_xla, rtol=1e-5, atol=max(1e-4, 1e-5 * np.max(np.abs(g_xla))))


_CHILD = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
import test_parallel_pav as t
out = {{}}
x = t.long_row()
cotangent = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
for op, k, epsilon in t.CASES:
  for regularization in t.REGULARIZATIONS:
    y, g = t._value_and_vjp(op, k, epsilon, regularization, "native", x, cotangent)
    out[f"{{op}} {{regularization}}"] = [y.tolist(), g.tolist()]
print(json.dumps(out))
"""


def test_chunked_native_equals_the_sequential_native_walk_to_rounding():
  tests = os.path.dirname(os.path.abspath(__file__))
  env = {**os.environ, "OTSORT_PAV_CHUNK_MIN": "0", "JAX_PLATFORMS": "cpu"}
  child = subprocess.run(
    [sys.executable, "-c", _CHILD.format(tests=tests)], capture_output=True, text=True, env=env, timeout=600
  )
  assert child.returncode == 0, child.stderr[-2000:]
  sequential = json.loads(child.stdout.strip().splitlines()[-1])
  x = long_row()
  cotangent = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
  for op, k, epsilon in CASES:
    for regularization in REGULARIZATIONS:
      y, g = _value_and_vjp(op, k, epsilon, regularization, "native", x, cotangent)
      y_seq, g_seq = (np.asarray(a, np.float32) for a in sequential[f"{op} {regularization}"])
      # 4 float32 ulps of the row's scale: the statistics are double, merged in another order.
      for got, want in ((y, y_seq), (g, g_seq)):
        atol = 4 * np.finfo(np.float32).eps * np.max(np.abs(want))
        np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=f"{op} {regularization}")
