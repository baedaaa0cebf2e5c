"""Tests of the Sinkhorn backend's implicit backward (``_transport._implicit_plan_bwd``).

The reference is ott-jax's own implicit differentiation (its custom VJP and
pull-back through the first-order conditions) with the linear system solved
densely by a pseudo-inverse, in float64; then finite differences. The
preconditioned conjugate-gradient branch (above ``_DENSE_SOLVE_MAX`` unknowns)
is exercised on small problems by lowering that constant.
"""

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
from ott.geometry import pointcloud
from ott.problems.linear import linear_problem
from ott.solvers.linear import implicit_differentiation as ott_implicit
from ott.solvers.linear import sinkhorn as ott_sinkhorn
import pytest

import otsort
from otsort.sinkhorn import _transport


def _use_cg(monkeypatch):
  """Solves with CG however small the system (the dense solve stops at _DENSE_SOLVE_MAX)."""
  monkeypatch.setattr(_transport, "_DENSE_SOLVE_MAX", 0)


class _DenseImplicitDiff(ott_implicit.ImplicitDiff):
  """ott-jax's implicit differentiation, its system solved by a pseudo-inverse."""

  def solve(self, gr, ot_prob, f, g, lse_mode):
    geom = ot_prob.geom
    plan = geom.transport_from_potentials(f, g)
    jac = jnp.block([[jnp.diag(plan.sum(1)), plan], [plan.T, jnp.diag(plan.sum(0))]])
    return -jnp.linalg.pinv(jac) @ (jnp.concatenate(gr) * geom.epsilon)


def _ott_plan(z, y, b, epsilon):
  geom = pointcloud.PointCloud(z[:, None], y[:, None], epsilon=epsilon)
  a = jnp.full(z.shape, 1.0 / z.shape[0])
  problem = linear_problem.LinearProblem(geom, a=a, b=b)
  out = ott_sinkhorn.Sinkhorn(
    threshold=1e-12,
    max_iterations=200_000,
    implicit_diff=_DenseImplicitDiff(precondition_fun=lambda x: x, symmetric=True),
  )(problem)
  return geom.transport_from_potentials(out.f, out.g)


def _our_plan(z, y, b, epsilon):
  return _transport.transport(
    z,
    tuple(np.asarray(y).tolist()),
    tuple(np.asarray(b).tolist()),
    epsilon=epsilon,
    threshold=1e-12,
    min_iterations=0,
    max_iterations=200_000,
    differentiation="implicit",
    initializer="monotone",
  ).plan


def _problem(n, m, seed):
  rng = np.random.default_rng(seed)
  z = jnp.asarray(np.sort(rng.uniform(0.05, 0.95, n))[rng.permutation(n)])
  y = jnp.linspace(0.0, 1.0, m)
  b = jnp.asarray(rng.uniform(0.5, 1.5, m))
  weights = jnp.asarray(rng.normal(size=(n, m)))
  return z, y, b / b.sum(), weights


# n = m (sort, ranks), n > m (top-k, quantiles: the targets' side is solved),
# n < m (the inputs' side is solved, in sorted order).
@pytest.mark.parametrize("n, m, epsilon", [(12, 12, 3e-2), (15, 5, 3e-3), (6, 14, 1e-2)])
def test_gradients_match_ott_dense_implicit_differentiation(x64, monkeypatch, n, m, epsilon):
  z, y, b, weights = _problem(n, m, seed=n * m)

  def grad(plan_fn):
    return jax.jit(jax.grad(lambda z, e: jnp.sum(weights * plan_fn(z, y, b, e)), argnums=(0, 1)))

  ref = grad(_ott_plan)(z, epsilon)
  dense = grad(_our_plan)(z, epsilon)
  _use_cg(monkeypatch)
  cg = grad(_our_plan)(z, epsilon)
  for ours in (dense, cg):
    for got, want in zip(ours, ref):
      np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-7 * float(jnp.abs(want).max()))


def test_cg_gradients_match_finite_differences(x64, monkeypatch):
  _use_cg(monkeypatch)
  z, y, b, weights = _problem(6, 7, seed=3)
  loss = jax.jit(lambda z, e: jnp.sum(weights * jnp.sin(20.0 * _our_plan(z, y, b, e))))
  check_grads(loss, (z, 1e-2), order=1, modes=("rev",), atol=1e-5, rtol=1e-5, eps=1e-6)


@pytest.mark.parametrize("solve", ["dense", "cg"])
def test_float32_gradients_are_finite_on_hard_rows(monkeypatch, solve):
  if solve == "cg":
    _use_cg(monkeypatch)
  n = 8
  rng = np.random.default_rng(8)
  cases = [rng.normal(size=(2, n)) * s for s in (1e-3, 1.0, 1e3)]
  cases.append(np.round(rng.normal(size=(2, n)) * 2))  # ties
  cases.append(np.ones((1, n)))  # all equal
  cases.append(np.r_[np.zeros(n - 1), 1e3][None])  # one outlier
  x = jnp.asarray(np.concatenate(cases), jnp.float32)
  w = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  kw = dict(backend=otsort.Sinkhorn())

  def loss(x, eps):
    kw["epsilon"] = eps
    return (
      jnp.sum(w * otsort.ranks(x, **kw))
      + jnp.sum(w * otsort.sort(x, **kw))
      + jnp.sum(otsort.quantile(x, (0.2, 0.5), **kw))
    )

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  for eps in (1e-1, 1e-2, 1e-4, 1e-6):
    gx, ge = grad(x, jnp.full(x.shape[0], eps, jnp.float32))
    assert bool(jnp.all(jnp.isfinite(gx))) and bool(jnp.all(jnp.isfinite(ge))), eps


def test_per_row_traced_epsilon_under_vmap_matches_rows_alone():
  # n = 300 > _DENSE_SOLVE_MAX: the CG branch, with rows at different epsilons
  # (a batched CG runs until its slowest row converges).
  n = 300
  x = jnp.asarray(np.random.default_rng(4).normal(size=(3, n)), jnp.float32)
  w = jnp.asarray(np.random.default_rng(5).normal(size=(3, n)), jnp.float32)
  eps = jnp.asarray([1e-1, 1e-2, 1e-4], jnp.float32)

  def loss(x, e, w):
    return jnp.sum(w * otsort.ranks(x, epsilon=e, backend=otsort.Sinkhorn()))

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  gx, ge = grad(x, eps, w)
  for i in range(3):
    gxi, gei = grad(x[i : i + 1], eps[i : i + 1], w[i : i + 1])
    # A batched CG iterates on converged rows until the slowest converges.
    np.testing.assert_allclose(gx[i], gxi[0], rtol=1e-3, atol=1e-3 * float(jnp.abs(gxi).max()))
    np.testing.assert_allclose(ge[i], gei[0], rtol=1e-3)


@pytest.mark.parametrize("epsilon", [1e-1, 1e-2, 1e-3, 1e-4])
def test_path_preconditioner_bounds_the_condition_number(x64, epsilon):
  # The preconditioned Schur complement has a small condition number from a
  # nearly dense plan to a nearly banded one. (At 1e-5 and n = 200, with this
  # test's negligible floor instead of the solver's ridge, it measured 5e5.)
  n = 200
  z = _transport.sigmoid_zscore(jnp.asarray(np.random.default_rng(6).normal(size=n)))
  plan = _our_plan(z, jnp.linspace(0.0, 1.0, n), jnp.full(n, 1.0 / n), epsilon)
  r, c = plan.sum(1), plan.sum(0)
  rho = 1.0 / n**2
  schur = jnp.diag(c) - (plan.T / r) @ plan + rho
  apply = _transport._path_preconditioner(plan, r, c, rho, 1e-300, None)
  inverse = jax.vmap(apply)(jnp.eye(n))
  root = jnp.linalg.cholesky(0.5 * (inverse + inverse.T))
  eig = jnp.linalg.eigvalsh(root.T @ schur @ root)
  plain = jnp.linalg.eigvalsh(schur)
  assert float(eig[-1] / eig[0]) < 12
  assert float(eig[-1] / eig[0]) < float(plain[-1] / plain[0])
