"""``epsilon`` is an ordinary array argument: one value or one per row, traced under ``jit`` without retracing,
mapped by ``vmap``, differentiated by ``grad`` and ``jvp``; a traced epsilon that is not positive and finite makes
its own rows NaN and no others."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import otsort

_OPS = {
  "sort": lambda x, **kw: otsort.sort(x, **kw),
  "ranks": lambda x, **kw: otsort.ranks(x, **kw),
  "quantile": lambda x, **kw: otsort.quantile(x, [0.3, 0.5], **kw),
  "topk": lambda x, **kw: otsort.topk(x, 2, **kw),
  "topk_mask": lambda x, **kw: otsort.topk_mask(x, 2, **kw),
}
_SINKHORN_ONLY = {
  "quantize": lambda x, **kw: otsort.quantize(x, 3, **kw),
  "sort_with": lambda x, **kw: otsort.sort_with(x, jnp.cos(x), **kw),
  "quantile_normalization": lambda x, **kw: otsort.quantile_normalization(x, jnp.linspace(-1.0, 1.0, 4), **kw),
}
_PAV = [dict(backend="pav", regularization=r, impl=i) for r in ("l2", "kl") for i in ("native", "xla")]
_PAV_IDS = [f"{o['regularization']}-{o['impl']}" for o in _PAV]
_SINKHORN = dict(backend="sinkhorn", threshold=1e-9, max_iterations=5000)


def _rows(seed: int = 0, shape=(3, 6)) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=shape)


def _all_ops(pav_options):
  yield from ((name, op, options) for name, op in _OPS.items() for options in pav_options)
  yield from ((name, op, _SINKHORN) for name, op in {**_OPS, **_SINKHORN_ONLY}.items())


def _ids(cases):
  return [
    f"{name}-{options['backend']}-{options.get('regularization', '')}{options.get('impl', '')}"
    for name, _, options in cases
  ]


# Derivatives on every solver; the front end's row handling once per backend and regularization (the pure-JAX
# solver costs a compilation per case, and its values are checked against the native one elsewhere).
_ALL = list(_all_ops(_PAV))
_ALL_IDS = _ids(_ALL)
_FRONT = list(_all_ops([_PAV[0], _PAV[2]]))
_FRONT_IDS = _ids(_FRONT)


@pytest.mark.parametrize("backend", ["pav", "sinkhorn"])
def test_a_sweep_of_twenty_epsilons_compiles_once(backend):
  x = jnp.asarray(_rows(), jnp.float32)
  traces = []

  @jax.jit
  def loss(x, epsilon):
    traces.append(1)
    return otsort.ranks(x, epsilon=epsilon, backend=backend).sum()

  for epsilon in np.geomspace(1e-2, 10.0, 20):
    loss(x, epsilon)
  assert len(traces) == 1
  # Eagerly too: the front end's jitted row application takes epsilon as an operand.
  before = otsort._api._apply_on_rows._cache_size()  # pylint: disable=protected-access
  for epsilon in np.geomspace(1e-2, 10.0, 20):
    otsort.ranks(x, epsilon=float(epsilon), backend=backend)
  assert otsort._api._apply_on_rows._cache_size() - before <= 1  # pylint: disable=protected-access


@pytest.mark.parametrize("name, op, options", _FRONT, ids=_FRONT_IDS)
def test_one_epsilon_per_row_equals_one_call_per_row(name, op, options):
  x = _rows(1).astype(np.float32)
  epsilon = np.array([0.3, 1.0, 2.5], np.float32) * (1.0 if options["backend"] == "pav" else 0.05)
  together = op(jnp.asarray(x), epsilon=epsilon, **options)
  for row in range(x.shape[0]):
    alone = op(jnp.asarray(x[row : row + 1]), epsilon=float(epsilon[row]), **options)
    np.testing.assert_allclose(together[row], alone[0], rtol=1e-5, atol=1e-5, err_msg=f"row {row}")


def test_epsilon_follows_the_rows_along_any_axis():
  x = _rows(2, (4, 3, 5))  # ranks along axis 1: the batch shape is (4, 5)
  epsilon = np.geomspace(0.1, 3.0, 20).reshape(4, 5)
  out = otsort.ranks(x, axis=1, epsilon=epsilon)
  keepdims = otsort.ranks(x, axis=1, epsilon=epsilon[:, None, :])  # x's layout, size 1 along axis
  broadcast = otsort.ranks(x, axis=1, epsilon=epsilon[0])  # one value per column, broadcast over axis 0
  np.testing.assert_array_equal(out, keepdims)
  for i in range(4):
    for j in range(5):
      np.testing.assert_allclose(out[i, :, j], otsort.ranks(x[i, :, j], epsilon=epsilon[i, j]), atol=1e-6)
      np.testing.assert_allclose(broadcast[i, :, j], otsort.ranks(x[i, :, j], epsilon=epsilon[0, j]), atol=1e-6)


@pytest.mark.parametrize("backend", ["pav", "sinkhorn"])
def test_vmap_over_epsilon_equals_a_loop(backend):
  x = jnp.asarray(_rows(3), jnp.float32)
  epsilons = jnp.asarray([0.05, 0.2, 1.0]) * (1.0 if backend == "pav" else 0.1)
  mapped = jax.vmap(lambda e: otsort.sort(x, epsilon=e, backend=backend))(epsilons)
  for i, e in enumerate(epsilons):
    np.testing.assert_allclose(mapped[i], otsort.sort(x, epsilon=float(e), backend=backend), rtol=1e-5, atol=1e-5)


def _central_difference(fn, epsilon, h):
  return (fn(epsilon + h) - fn(epsilon - h)) / (2 * h)


@pytest.mark.parametrize("name, op, options", _ALL, ids=_ALL_IDS)
def test_derivatives_with_respect_to_epsilon_match_finite_differences(x64, name, op, options):
  x = jnp.asarray(_rows(4))
  weights = jnp.asarray(np.random.default_rng(5).normal(size=op(x, epsilon=0.5, **options).shape))
  epsilon = jnp.asarray([0.7, 0.4, 1.3]) * (1.0 if options["backend"] == "pav" else 0.1)
  loss = lambda e: jnp.sum(op(x, epsilon=e, **options) * weights)
  grad = jax.grad(loss)(epsilon)
  for row in range(3):
    step = jnp.zeros(3).at[row].set(1.0)
    expected = _central_difference(lambda t: loss(epsilon + t * step), 0.0, 1e-6 * float(epsilon[row]))
    np.testing.assert_allclose(grad[row], expected, rtol=1e-5, atol=1e-6, err_msg=f"row {row}")
  if options["backend"] == "pav":  # sinkhorn is reverse mode only
    tangent = jnp.asarray([1.0, -2.0, 0.5])
    _, forward = jax.jvp(loss, (epsilon,), (tangent,))
    np.testing.assert_allclose(forward, grad @ tangent, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name, op, options", _FRONT, ids=_FRONT_IDS)
def test_a_traced_epsilon_that_is_not_positive_and_finite_makes_only_its_rows_nan(name, op, options):
  x = jnp.asarray(_rows(6, (4, 6)), jnp.float32)
  good = 0.5 if options["backend"] == "pav" else 0.05
  epsilon = jnp.asarray([good, -1.0, jnp.nan, 0.0])
  out = jax.jit(lambda x, e: op(x, epsilon=e, **options))(x, epsilon)
  assert np.all(np.isnan(out[1:]))
  np.testing.assert_allclose(out[0], op(x[:1], epsilon=good, **options)[0], rtol=1e-5, atol=1e-5)
  grad = jax.jit(jax.grad(lambda x, e: jnp.sum(op(x, epsilon=e, **options)[:1])))(x, epsilon)
  assert np.all(np.isfinite(grad))


def test_losses_take_a_traced_epsilon_under_jit():
  rng = np.random.default_rng(8)
  pred, target = jnp.asarray(rng.normal(size=(2, 12)), jnp.float32), jnp.asarray(rng.normal(size=(2, 12)))
  groups = np.repeat(np.arange(3), 8)
  flat_pred, flat_target = pred.reshape(-1)[:24], target.reshape(-1)[:24]
  traces = []

  @jax.jit
  def losses(epsilon):
    traces.append(1)
    return (
      otsort.losses.spearman_loss(pred, target, epsilon=epsilon),
      otsort.losses.spearman_loss(flat_pred, flat_target, groups=groups, num_groups=3, epsilon=epsilon),
      otsort.losses.soft_topk_error(pred, jnp.asarray([3, 5]), 2, epsilon=epsilon),
    )

  for epsilon in (0.1, 0.5, 2.0):
    got = losses(epsilon)
    expected = (
      otsort.losses.spearman_loss(pred, target, epsilon=epsilon),
      otsort.losses.spearman_loss(flat_pred, flat_target, groups=groups, epsilon=epsilon),
      otsort.losses.soft_topk_error(pred, np.array([3, 5]), 2, epsilon=epsilon),
    )
    for g, e in zip(got, expected):
      np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
  assert len(traces) == 1
  # A learned temperature: the loss is differentiable in epsilon.
  grad = jax.grad(lambda e: otsort.losses.spearman_loss(pred, target, epsilon=e).sum())(0.5)
  assert np.isfinite(grad) and grad != 0


def test_grouped_losses_take_one_epsilon():
  with pytest.raises(
    ValueError,
    match=r"epsilon must be a number or an array broadcastable to x.shape without "
    r"axis, \(\)",
  ):
    otsort.losses.spearman_loss(
      jnp.arange(4.0), jnp.arange(4.0), groups=np.array([0, 0, 1, 1]), epsilon=np.array([0.1, 0.2])
    )


def test_boosting_gradients_do_not_recompile_for_a_new_epsilon():
  rng = np.random.default_rng(9)
  pred, target = rng.normal(size=50), rng.normal(size=50)
  otsort.losses.spearman_grad_hess(pred, target, epsilon=0.1)
  cached = len(otsort.losses._GRAD_CACHE)  # pylint: disable=protected-access
  grad, hess = otsort.losses.spearman_grad_hess(pred, target, epsilon=0.3)
  assert len(otsort.losses._GRAD_CACHE) == cached  # pylint: disable=protected-access
  assert np.all(np.isfinite(grad)) and np.all(hess > 0)


def test_filters_take_a_traced_epsilon():
  image = jnp.asarray(np.random.default_rng(10).uniform(size=(6, 7)), jnp.float32)
  traces = []

  @jax.jit
  def median(epsilon):
    traces.append(1)
    return otsort.filters.median_filter(image, size=3, epsilon=epsilon)

  for epsilon in (0.05, 0.5):
    np.testing.assert_allclose(
      median(epsilon), otsort.filters.median_filter(image, size=3, epsilon=epsilon), rtol=1e-6, atol=1e-6
    )
  assert len(traces) == 1
