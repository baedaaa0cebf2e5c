"""The native derivative kernels (``otsort.pav._jacobians``) against the segment-op formulas and finite differences.

The block ids come from the native forward pass on random rows with ties; each linear map is then applied by the
native kernel and by the pure-JAX formula (the oracle), forward and transposed, L2 and KL, including rows with a
NaN. Native calls run eagerly (no compile); the pure-JAX formulas are jitted once per configuration.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import otsort
from otsort.pav import _jacobians
from otsort.pav import _projections

REGULARIZATIONS = ("l2", "kl")


def _rows_with_ties(seed: int, batch: int = 5, n: int = 12) -> np.ndarray:
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch, n))
  x[:, : n // 2] = rng.integers(-2, 3, size=(batch, n // 2)) * 0.5  # ties, on and off the faces
  return x


def _ones(x):
  return jnp.ones((*x.shape[:-1], 1), x.dtype)


@functools.cache
def _xla_scores(kl: bool):
  return jax.jit(functools.partial(_jacobians.scores_jvp_xla, kl=kl))


@functools.cache
def _xla_sort(kl: bool, transpose: bool):
  return jax.jit(functools.partial(_jacobians.sort_jvp_xla, kl=kl, transpose=transpose))


@pytest.mark.parametrize("regularization", REGULARIZATIONS)
@pytest.mark.parametrize("topk", [0, 4])
def test_native_scores_jacobian_equals_the_segment_formula_and_is_symmetric(x64, regularization, topk):
  kl = regularization == "kl"
  x = _rows_with_ties(1)
  x[3, 5] = np.nan
  r, block = _projections.project_scores(jnp.asarray(x), 0.7 * _ones(x), kl, topk, "native")
  rng = np.random.default_rng(2)
  v, c = rng.normal(size=x.shape), rng.normal(size=x.shape)
  native = _jacobians.scores_jvp_p.bind(r, block, jnp.asarray(v), kl=kl)
  want = _xla_scores(kl)(r, block, jnp.asarray(v))
  assert np.isnan(native[3]).all() and np.isnan(want[3]).all()
  finite = np.array([0, 1, 2, 4])
  np.testing.assert_allclose(native[finite], want[finite], rtol=1e-12, atol=1e-12)
  assert np.any(np.abs(native[finite]) > 1e-3)
  singletons = np.array([np.sum(row == row[i]) == 1 for row in np.asarray(block) for i in range(x.shape[1])])
  assert np.all(np.asarray(native)[finite].ravel()[singletons.reshape(x.shape)[finite].ravel()] == 0)
  native_c = _jacobians.scores_jvp_p.bind(r, block, jnp.asarray(c), kl=kl)
  np.testing.assert_allclose(np.sum(c * native, -1)[finite], np.sum(v * native_c, -1)[finite], rtol=1e-12)


@pytest.mark.parametrize("regularization", REGULARIZATIONS)
def test_native_sort_jacobian_and_its_transpose_equal_the_segment_formulas(x64, regularization):
  kl = regularization == "kl"
  x = 2.0 * _rows_with_ties(3)
  x[2, 0] = np.inf
  out, block_in, block_out = _projections.project_sort(jnp.asarray(x), 1.5 * _ones(x), kl, "native")
  rng = np.random.default_rng(4)
  v, c = jnp.asarray(rng.normal(size=x.shape)), jnp.asarray(rng.normal(size=x.shape))
  finite = np.array([0, 1, 3, 4])
  results = {}
  for transpose, tangent in ((False, v), (True, c)):
    native = _jacobians.sort_jvp_p.bind(jnp.asarray(x), block_in, block_out, tangent, kl=kl, transpose=transpose)
    want = _xla_sort(kl, transpose)(jnp.asarray(x), block_in, block_out, tangent)
    assert np.isnan(native[2]).all(), "a row with an infinity has no derivative"
    np.testing.assert_allclose(native[finite], want[finite], rtol=1e-12, atol=1e-12)
    results[transpose] = np.asarray(native)
  # <c, A v> = <A^T c, v>
  np.testing.assert_allclose(np.sum(c * results[False], -1)[finite], np.sum(results[True] * v, -1)[finite], rtol=1e-12)


@pytest.mark.parametrize("op", ["ranks", "sort", "topk_mask"])
@pytest.mark.parametrize("regularization", REGULARIZATIONS)
def test_native_gradients_match_xla_and_finite_differences_on_rows_with_ties(x64, op, regularization):
  x = _rows_with_ties(5, batch=3, n=8)
  x[1, 2] = np.nan
  weights = jnp.asarray(np.random.default_rng(6).normal(size=x.shape))
  kw = dict(epsilon=0.6, regularization=regularization)
  if op == "topk_mask":
    fn = lambda x, impl: otsort.topk_mask(x, 3, impl=impl, **kw)
  else:
    fn = lambda x, impl: getattr(otsort, op)(x, impl=impl, **kw)
  loss = lambda x, impl: jnp.sum(jnp.nan_to_num(weights * fn(x, impl)))
  g_native = jax.grad(loss)(jnp.asarray(x), "native")
  g_xla = jax.jit(jax.grad(loss), static_argnums=1)(jnp.asarray(x), "xla")
  assert np.isnan(g_native[1]).all() or op == "sort" and regularization == "l2" and not np.isnan(g_xla[1]).any()
  good = np.array([0, 2])
  np.testing.assert_allclose(g_native[good], g_xla[good], rtol=1e-9, atol=1e-9)
  # Central differences on the finite rows, moved off the exact ties (where the sort has a kink) but still
  # pooling near-ties into blocks.
  x = x + 1e-3 * np.random.default_rng(8).normal(size=x.shape)
  g_native = jax.grad(loss)(jnp.asarray(x), "native")
  h = 1e-7
  fd = np.zeros((len(good), x.shape[1]))
  for k, row in enumerate(good):
    for i in range(x.shape[1]):
      e = np.zeros_like(x)
      e[row, i] = h
      fd[k, i] = (loss(jnp.asarray(x + e), "native") - loss(jnp.asarray(x - e), "native")) / (2 * h)
  np.testing.assert_allclose(g_native[good], fd, atol=1e-6)


def test_native_derivatives_compose_with_vmap_jacfwd_and_jacrev(x64):
  x = jnp.asarray(_rows_with_ties(7, batch=2, n=6))
  for regularization in REGULARIZATIONS:
    for op in ("ranks", "sort"):
      fns = {
        impl: (lambda v, impl=impl: getattr(otsort, op)(v, epsilon=0.8, regularization=regularization, impl=impl))
        for impl in ("native", "xla")
      }
      # One compiled program per configuration: eager transforms compile every small op on its own.
      both = jax.jit(lambda x, fns=fns: [jax.vmap(t(f))(x) for t in (jax.jacfwd, jax.jacrev) for f in fns.values()])
      fwd_native, fwd_xla, rev_native, rev_xla = both(x)
      np.testing.assert_allclose(fwd_native, fwd_xla, rtol=1e-10, atol=1e-10)
      np.testing.assert_allclose(rev_native, rev_xla, rtol=1e-10, atol=1e-10)
      np.testing.assert_allclose(fwd_native, rev_native, atol=1e-12)
  # Second derivatives, native against pure JAX for every operation: test_pav's
  # test_xla_second_derivatives_equal_the_native_ones_for_all_operations.


def test_native_derivative_kernels_refuse_mismatched_operands():
  r, block = jnp.ones((2, 4), jnp.float32), jnp.zeros((2, 4), jnp.int32)
  with pytest.raises(Exception, match="derivative operands"):
    jax.block_until_ready(_jacobians.scores_jvp_p.bind(r, block, jnp.ones((1, 4), jnp.float32), kl=False))
