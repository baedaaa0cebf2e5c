"""Ties are pooled as in the paper's reference implementation, so derivatives at the kinks are the reference's.

On a face of the permutahedron (``x / epsilon`` a permutation of 1..n, integer scores, rescaled ranks, all-equal
rows) two adjacent blocks of the isotonic solution have equal values. The forward values do not depend on whether
they are pooled; the derivative does: pooled, it averages over both blocks (what google-research/fast-soft-sort
and torchsort return), apart, it is zero between them. These tests check values and vector-Jacobian products in
float64 against :mod:`reference` (exact rational L2, ties pooled), on both impls.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference

import otsort

IMPLS = ("native", "xla")
N = 8


def _face_rows() -> tuple[np.ndarray, np.ndarray]:
  """Rows that sit on faces, and one epsilon per row (all exact in binary, so the ties are exact)."""
  rng = np.random.default_rng(0)
  rows, epsilons = [], []
  rows.append(0.5 * (rng.permutation(N) + 1.0))
  epsilons.append(0.5)  # x / eps a permutation of 1..n
  rows.append(np.array([3.0, 1, 2, 2, 5, 1, 4, 3]))
  epsilons.append(1.0)  # integer scores with ties
  ranks = np.argsort(np.argsort(rng.normal(size=N))).astype(np.float64)
  rows.append(0.25 * ranks)
  epsilons.append(0.25)  # rescaled ranks
  rows.append(np.full(N, 2.0))
  epsilons.append(1.0)  # all equal
  rows.append(np.array([0.0, 2, 4, 6, 1, 3, 5, 7]))
  epsilons.append(2.0)  # every other step a tie
  return np.stack(rows), np.asarray(epsilons)


_CASES = [("ranks", False), ("ranks", True), ("sort", False), ("sort", True), ("topk_mask", False)]
_K = 3


@functools.cache
def _value_and_vjp(op: str, descending: bool, regularization: str, impl: str):
  def fn(x, epsilon):
    kw = dict(epsilon=epsilon, regularization=regularization, impl=impl)
    if op == "topk_mask":
      return otsort.topk_mask(x, _K, **kw)
    return getattr(otsort, op)(x, descending=descending, **kw)

  def run(x, epsilon, cotangent):
    y, pullback = jax.vjp(lambda x: fn(x, epsilon), x)
    return y, pullback(cotangent)[0]

  return jax.jit(run)


def _reference_row(op, x, epsilon, kl, descending):
  if op == "ranks":
    return reference.ranks(x, epsilon, kl=kl, descending=descending)
  if op == "sort":
    return reference.sort(x, epsilon, kl=kl, descending=descending)
  return reference.topk_mask(x / epsilon, _K, kl=kl)


def _check_against_reference(x, epsilon, op, descending, regularization, impl, seed=1):
  kl = regularization == "kl"
  cotangent = np.random.default_rng(seed).normal(size=x.shape)
  y, g = _value_and_vjp(op, descending, regularization, impl)(
    jnp.asarray(x), jnp.asarray(epsilon), jnp.asarray(cotangent)
  )
  for row in range(x.shape[0]):
    expected = _reference_row(op, x[row], epsilon[row], kl, descending)
    jac = reference.jacobian(op, x[row], epsilon[row], kl=kl, descending=descending, k=_K)
    scale = 1.0 + np.abs(x[row]).max() / epsilon[row]
    np.testing.assert_allclose(y[row], expected, atol=1e-10 * scale, err_msg=f"values, row {row}")
    np.testing.assert_allclose(g[row], cotangent[row] @ jac, atol=1e-9 * scale, err_msg=f"vjp, row {row}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("regularization", ["l2", "kl"])
@pytest.mark.parametrize("op, descending", _CASES)
def test_values_and_vjps_on_faces_match_the_reference_pooling_rule(x64, op, descending, regularization, impl):
  x, epsilon = _face_rows()
  _check_against_reference(x, epsilon, op, descending, regularization, impl)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("regularization", ["l2", "kl"])
def test_random_rows_with_ties_match_the_reference(x64, seed, impl, regularization):
  # Integer-valued rows with repeats, at epsilons that make x / epsilon land on and off the faces.
  rng = np.random.default_rng(100 + seed)
  x = rng.integers(-3, 4, size=(5, N)).astype(np.float64)
  epsilon = rng.choice([0.5, 1.0, 2.0, 0.3], size=5)
  for op, descending in _CASES:
    _check_against_reference(x, epsilon, op, descending, regularization, impl, seed=seed)


def test_the_strict_rule_would_give_a_zero_gradient_here():
  # What the pooling rule changes, stated once: at epsilon = 1 the ranks of a permutation of 1..n are the
  # permutation minus one, every block value is 0, and all blocks tie. Pooled, the Jacobian is I - 11^T / n.
  x = jnp.asarray([[3.0, 1.0, 2.0, 5.0, 4.0]])
  for impl in IMPLS:
    jac = jax.jacrev(lambda x: otsort.ranks(x, epsilon=1.0, impl=impl)[0])(x)[:, 0]
    np.testing.assert_allclose(jac, np.eye(5) - 1 / 5, atol=1e-6)


def test_spearman_loss_on_integer_predictions_has_a_gradient():
  # Integer predictions at epsilon = 1 sit exactly on a face of the L2 projection: with strict pooling the loss
  # had no gradient at all. (The KL projection of the same scores is strictly inside a region where its value is
  # the hard ranks; its gradient is 0 there, rightly.)
  pred = jnp.asarray([3.0, 1.0, 2.0, 5.0, 4.0, 6.0, 8.0, 7.0])
  target = jnp.asarray([0.1, 0.5, 0.2, 0.9, 0.3, 0.4, 0.8, 0.6])
  grad = jax.grad(lambda p: otsort.losses.spearman_loss(p, target, epsilon=1.0))(pred)
  assert np.all(np.isfinite(grad))
  assert np.abs(grad).max() > 1e-3, grad


def test_native_and_xla_kl_sort_gradients_agree_on_a_near_tie():
  # x / epsilon steps by exactly 1/epsilon here, so every block value is 0.1 up to the rounding of each libm.
  x = jnp.asarray([[0.2, 0.4, 0.3, 0.0, 0.1]])
  grads = []
  for impl in IMPLS:
    fn = lambda x: jnp.sum(
      otsort.sort(x, descending=True, epsilon=10.0, regularization="kl", impl=impl) * jnp.arange(5.0)
    )
    grads.append(jax.grad(fn)(x))
  np.testing.assert_allclose(grads[0], grads[1], atol=1e-5)


@pytest.mark.parametrize("regularization", ["l2", "kl"])
def test_native_and_xla_agree_on_rows_that_are_ties_up_to_rounding(x64, regularization):
  # 0.1 * k / 0.1 is k only up to rounding, differently in each implementation's arithmetic.
  rng = np.random.default_rng(7)
  x = 0.1 * np.stack([rng.permutation(N) + 1.0 for _ in range(4)])
  cotangent = rng.normal(size=x.shape)
  for op, descending in _CASES:
    outs = [
      _value_and_vjp(op, descending, regularization, impl)(jnp.asarray(x), jnp.full(4, 0.1), jnp.asarray(cotangent))
      for impl in IMPLS
    ]
    np.testing.assert_allclose(outs[0][0], outs[1][0], atol=1e-9, err_msg=op)
    np.testing.assert_allclose(outs[0][1], outs[1][1], atol=1e-8, err_msg=op)
