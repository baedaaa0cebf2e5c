"""``otsort.losses``: soft Spearman correlation (plain and per group), its boosting gradient and Hessian, and the
soft (top-k) classification errors: their hard limits, derivatives, transformations and argument checks."""

from __future__ import annotations

import jax
from jax import test_util
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import otsort
from otsort import losses

# (backend, options, an epsilon at which ranks are hard on these inputs, tolerance on the hard results)
BACKENDS = [
  pytest.param("pav", {"regularization": "l2"}, 1e-4, 1e-5, id="pav-l2"),
  pytest.param("pav", {"regularization": "kl"}, 1e-4, 1e-5, id="pav-kl"),
  pytest.param("sinkhorn", {}, 1e-4, 2e-2, id="sinkhorn"),
]
PAV = BACKENDS[:2]


def _exact_options(backend: str, options: dict) -> dict:
  """Options that make the op a fixed, smooth function of its input, for finite differences: Sinkhorn runs a fixed
  number of iterations (a threshold would stop at different iterations for x and x + h) from zero potentials (the
  default initializer carries no gradient) and is differentiated through them."""
  if backend != "sinkhorn":
    return options
  return dict(options, min_iterations=300, max_iterations=300, differentiation="unroll", initializer="zeros")


def _fd_rtol(backend: str) -> float:
  # Sinkhorn's unrolled iterations are smooth but stiff: central differences of the losses built on them carry
  # errors up to ~3e-3 relative here; the backend's own tests check its gradients more tightly.
  return 1e-2 if backend == "sinkhorn" else 1e-4


def _data(seed: int, shape=(3, 12)):
  rng = np.random.default_rng(seed)
  pred = rng.normal(size=shape)
  target = np.round(rng.normal(size=shape))  # a few distinct values: ties in the target
  return pred, target


# ---------------------------------------------------------------------------------------------------------------
# Spearman


@pytest.mark.parametrize("backend, options, tiny, tol", BACKENDS)
def test_spearman_correlation_at_small_epsilon_equals_scipy_with_tied_targets(backend, options, tiny, tol):
  pred, target = _data(0)
  got = losses.spearman_correlation(pred, target, epsilon=tiny, backend=backend, **options)
  want = [stats.spearmanr(p, t).statistic for p, t in zip(pred, target)]
  np.testing.assert_allclose(got, want, atol=tol)


def test_spearman_correlation_works_along_any_axis():
  pred, target = _data(1, shape=(12, 3))
  got = losses.spearman_correlation(pred, target, axis=0, epsilon=1e-4)
  want = [stats.spearmanr(pred[:, j], target[:, j]).statistic for j in range(3)]
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_allclose(losses.spearman_loss(pred, target, axis=0, epsilon=1e-4), 1 - np.asarray(want), atol=1e-5)


def test_spearman_with_soft_target_equals_scipy_at_small_epsilon_and_is_differentiable_in_target():
  pred, target = _data(2)
  target = target + 1e-2 * np.arange(12)  # no ties: soft ranks of a tie are its mean only in the limit
  got = losses.spearman_correlation(pred, target, target_soft=True, epsilon=1e-4)
  want = [stats.spearmanr(p, t).statistic for p, t in zip(pred, target)]
  np.testing.assert_allclose(got, want, atol=1e-5)
  grad = jax.grad(lambda t: losses.spearman_loss(pred, t, target_soft=True, epsilon=1.0).sum())(target)
  assert np.count_nonzero(np.asarray(grad)) > 0


@pytest.mark.parametrize("backend, options, tiny, tol", BACKENDS)
def test_grouped_spearman_is_the_mean_of_the_per_group_correlations(backend, options, tiny, tol):
  rng = np.random.default_rng(3)
  groups = rng.integers(0, 4, size=40)
  groups[groups == 3] = 0  # group 3 is empty: it does not count
  groups[5] = 3  # ... and now holds one entry: still no correlation, does not count
  pred, target = rng.normal(size=40), np.round(2 * rng.normal(size=40))
  got = losses.spearman_correlation(pred, target, groups=groups, epsilon=tiny, backend=backend, **options)
  want = np.mean([stats.spearmanr(pred[groups == g], target[groups == g]).statistic for g in range(3)])
  np.testing.assert_allclose(got, want, atol=tol)


@pytest.mark.parametrize("backend, options, tiny, tol", PAV)
@pytest.mark.parametrize("epsilon", [1e-4, 1.0])
def test_grouped_spearman_under_jit_equals_each_group_ranked_alone(backend, options, tiny, tol, epsilon):
  rng = np.random.default_rng(4)
  groups = rng.integers(0, 3, size=30)
  pred, target = rng.normal(size=30), rng.normal(size=30)
  fn = jax.jit(
    lambda p, t, g: losses.spearman_correlation(
      p, t, groups=g, num_groups=3, epsilon=epsilon, backend=backend, **options
    )
  )
  want = np.mean(
    [
      losses.spearman_correlation(pred[groups == g], target[groups == g], epsilon=epsilon, backend=backend, **options)
      for g in range(3)
    ]
  )
  np.testing.assert_allclose(fn(pred, target, groups), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    losses.spearman_correlation(pred, target, groups=groups, epsilon=epsilon, backend=backend, **options),
    want,
    rtol=1e-5,
    atol=1e-6,
  )


def test_spearman_gradient_is_zero_at_tiny_epsilon_and_dense_at_moderate_epsilon():
  pred, target = _data(5)
  grad = lambda eps: np.asarray(jax.grad(lambda p: losses.spearman_loss(p, target, epsilon=eps).sum())(pred))
  assert np.count_nonzero(grad(1e-4)) == 0
  assert np.count_nonzero(grad(3.0)) == pred.size


@pytest.mark.parametrize("backend, options, tiny, tol", BACKENDS)
def test_spearman_loss_gradients_equal_finite_differences_in_float64(x64, backend, options, tiny, tol):
  pred, target = _data(6, shape=(2, 6))
  epsilon = 1.0 if backend == "pav" else 0.1
  options = _exact_options(backend, options)
  fn = jax.jit(lambda p: losses.spearman_loss(p, target, epsilon=epsilon, backend=backend, **options))
  test_util.check_grads(fn, (jnp.asarray(pred),), order=1, modes=["rev"], atol=1e-5, rtol=_fd_rtol(backend))
  groups = np.array([0, 1, 0, 1, 1, 0])
  fn = jax.jit(lambda p: losses.spearman_loss(p, target[0], groups=groups, epsilon=epsilon, backend=backend, **options))
  test_util.check_grads(fn, (jnp.asarray(pred[0]),), order=1, modes=["rev"], atol=1e-5, rtol=_fd_rtol(backend))


def test_spearman_is_batched_equal_to_vmapped():
  pred, target = _data(7)
  batched = losses.spearman_loss(pred, target, epsilon=0.5)
  mapped = jax.vmap(lambda p, t: losses.spearman_loss(p, t, epsilon=0.5))(pred, target)
  np.testing.assert_allclose(batched, mapped, rtol=1e-6)


def test_spearman_bad_arguments_raise_errors_naming_them():
  with pytest.raises(ValueError, match=r"pred and target must have the same shape"):
    losses.spearman_loss(np.zeros(4), np.zeros(5))
  with pytest.raises(ValueError, match=r"axis 2 is out of bounds"):
    losses.spearman_loss(np.zeros((2, 3)), np.zeros((2, 3)), axis=2)
  with pytest.raises(ValueError, match=r"groups must be a 1-D array .* shape \(4,\)"):
    losses.spearman_loss(np.zeros(4), np.zeros(4), groups=np.zeros(5, int))
  with pytest.raises(ValueError, match=r"groups must hold ids in \[0, num_groups\) = \[0, 2\)"):
    losses.spearman_loss(np.zeros(4), np.zeros(4), groups=np.array([0, 1, 2, 0]), num_groups=2)
  with pytest.raises(ValueError, match=r"groups= needs 1-D pred"):
    losses.spearman_loss(np.zeros((2, 4)), np.zeros((2, 4)), groups=np.zeros(4, int))
  with pytest.raises(ValueError, match=r"num_groups is required when groups is traced"):
    jax.jit(lambda g: losses.spearman_loss(jnp.zeros(4), jnp.zeros(4), groups=g))(jnp.zeros(4, int))
  with pytest.raises(TypeError, match=r"target_soft must be True or False"):
    losses.spearman_loss(np.zeros(4), np.zeros(4), target_soft="yes")
  with pytest.raises(ValueError, match=r"epsilon must be a positive finite number"):
    losses.spearman_loss(np.zeros(4), np.zeros(4), epsilon=0.0)


def test_grouped_spearman_with_sinkhorn_under_jit_says_to_use_pav_or_concrete_groups():
  with pytest.raises(ValueError, match=r"groups= under jit needs backend='pav'"):
    jax.jit(
      lambda g: losses.spearman_loss(jnp.arange(4.0), jnp.arange(4.0), groups=g, num_groups=2, backend="sinkhorn")
    )(jnp.array([0, 1, 0, 1]))


# ---------------------------------------------------------------------------------------------------------------
# Boosting gradient and Hessian


@pytest.mark.parametrize("hessian, grouped", [("diagonal", True), ("constant", False)])
def test_spearman_grad_hess_gradient_equals_jax_grad_and_hessian_is_positive_and_finite(hessian, grouped):
  rng = np.random.default_rng(8)
  pred, target = rng.normal(size=50), rng.normal(size=50)
  groups = rng.integers(0, 5, size=50) if grouped else None
  loss = lambda p: losses.spearman_loss(p, target, groups=groups, epsilon=0.5)
  want = np.asarray(jax.grad(loss)(jnp.asarray(pred)))
  grad, hess = losses.spearman_grad_hess(pred, target, groups=groups, hessian=hessian, normalize=False, epsilon=0.5)
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-8)
  assert grad.dtype == hess.dtype == np.float64 and grad.shape == hess.shape == (50,)
  assert np.all(np.isfinite(hess)) and np.all(hess > 0)
  grad_n, hess_n = losses.spearman_grad_hess(pred, target, groups=groups, hessian=hessian, epsilon=0.5)
  np.testing.assert_allclose(hess_n.mean(), 1.0, rtol=1e-6)
  np.testing.assert_allclose(grad_n / hess_n, grad / hess, rtol=1e-5)  # Newton steps do not change


def test_spearman_grad_hess_diagonal_estimates_the_exact_gauss_newton_diagonal():
  rng = np.random.default_rng(9)
  pred, target = rng.normal(size=8), rng.normal(size=8)

  def residual(p):  # 1 - rho = 1/2 ||u - v||^2 with u, v the unit-norm centred rank vectors
    u = otsort.ranks(p, epsilon=3.0)
    u = (u - u.mean()) / jnp.linalg.norm(u - u.mean())
    v = jnp.asarray(stats.rankdata(target) - 1.0, u.dtype)
    return u - (v - v.mean()) / jnp.linalg.norm(v - v.mean())

  jac = np.asarray(jax.jacrev(residual)(jnp.asarray(pred, jnp.float32)), np.float64)
  exact = np.sum(jac**2, axis=0)
  _, hess = losses.spearman_grad_hess(pred, target, epsilon=3.0, num_probes=4000, normalize=False)
  np.testing.assert_allclose(hess, np.maximum(exact, 0.01 * exact.mean()), rtol=0.15, atol=0.02 * exact.mean())


def test_spearman_boosting_objective_reads_the_label_like_xgboost_and_lightgbm():

  class Dataset:  # the part of xgboost.DMatrix / lightgbm.Dataset a custom objective uses
    def __init__(self, label):
      self._label = label

    def get_label(self):
      return self._label

  rng = np.random.default_rng(10)
  preds, label, eras = rng.normal(size=30), rng.normal(size=30), rng.integers(0, 3, size=30)
  objective = losses.spearman_boosting_objective(groups=eras, epsilon=0.5)
  grad, hess = objective(preds, Dataset(label))
  want = losses.spearman_grad_hess(preds, label, groups=eras, epsilon=0.5)
  np.testing.assert_allclose(grad, want[0])
  np.testing.assert_allclose(hess, want[1])
  np.testing.assert_allclose(objective(preds, label)[0], want[0])


def test_spearman_grad_hess_bad_arguments_raise_errors_naming_them():
  with pytest.raises(ValueError, match=r"hessian must be one of 'diagonal', 'constant'; got hessian = 'full'"):
    losses.spearman_grad_hess(np.zeros(4), np.zeros(4), hessian="full")
  with pytest.raises(ValueError, match=r"num_probes must be an int >= 1; got num_probes = 0"):
    losses.spearman_grad_hess(np.zeros(4), np.zeros(4), num_probes=0)
  with pytest.raises(ValueError, match=r"pred must be 1-D"):
    losses.spearman_grad_hess(np.zeros((2, 4)), np.zeros((2, 4)))


# ---------------------------------------------------------------------------------------------------------------
# Classification


def _logits(seed: int, batch: int = 64, classes: int = 6):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(batch, classes)), rng.integers(0, classes, size=batch)


@pytest.mark.parametrize("backend, options, tiny, tol", PAV)
@pytest.mark.parametrize("k", [1, 2, 5, 6])
def test_soft_topk_error_at_small_epsilon_is_zero_exactly_for_hits_and_the_scaled_hard_rank_otherwise(
  backend, options, tiny, tol, k
):
  logits, labels = _logits(11)
  loss = np.asarray(losses.soft_topk_error(logits, labels, k, epsilon=tiny, backend=backend, **options))
  rank = np.argsort(np.argsort(-logits, axis=-1), axis=-1)[np.arange(len(labels)), labels]  # 0 = top
  hit = rank < k
  np.testing.assert_allclose(loss[hit], 0, atol=tol)
  if k < 6:
    np.testing.assert_allclose(loss[~hit], (rank[~hit] - (k - 1)) / (6 - k), atol=tol)
    assert np.array_equal(loss > tol, ~hit)  # the top-k 0/1 error
  if k == 1:
    np.testing.assert_allclose(losses.soft_error(logits, labels, epsilon=tiny, backend=backend, **options), loss)


def test_soft_errors_lie_in_unit_interval_and_reach_the_mean_rank_at_large_epsilon():
  logits, labels = _logits(12)
  for loss in (
    losses.soft_error(logits, labels, epsilon=1.0),
    losses.soft_topk_error(logits, labels, 3, epsilon=1.0, regularization="kl"),
  ):
    assert np.all((np.asarray(loss) >= 0) & (np.asarray(loss) <= 1))
  np.testing.assert_allclose(losses.soft_error(logits, labels, epsilon=1e6), 0.5, atol=1e-4)


def test_soft_topk_error_works_along_any_class_axis():
  logits, labels = _logits(13)
  np.testing.assert_allclose(
    losses.soft_topk_error(logits.T, labels, 2, axis=0, epsilon=0.5),
    losses.soft_topk_error(logits, labels, 2, epsilon=0.5),
    rtol=1e-6,
  )


@pytest.mark.parametrize("backend, options, tiny, tol", BACKENDS)
@pytest.mark.parametrize("k", [1, 3])
def test_soft_topk_error_gradients_equal_finite_differences_in_float64(x64, backend, options, tiny, tol, k):
  logits, labels = _logits(14, batch=3, classes=5)
  epsilon = 1.0 if backend == "pav" else 0.1
  options = _exact_options(backend, options)
  fn = jax.jit(lambda z: losses.soft_topk_error(z, labels, k, epsilon=epsilon, backend=backend, **options))
  test_util.check_grads(fn, (jnp.asarray(logits),), order=1, modes=["rev"], atol=1e-5, rtol=_fd_rtol(backend))


def test_soft_errors_work_under_jit_and_vmap_and_give_finite_gradients():
  logits, labels = _logits(15)
  fn = jax.jit(lambda z, y: losses.soft_topk_error(z, y, 2, epsilon=0.5))
  np.testing.assert_allclose(fn(logits, labels), losses.soft_topk_error(logits, labels, 2, epsilon=0.5), rtol=1e-6)
  mapped = jax.vmap(lambda z, y: losses.soft_error(z, y, epsilon=0.5))(logits, labels)
  np.testing.assert_allclose(mapped, losses.soft_error(logits, labels, epsilon=0.5), rtol=1e-6)
  grad = jax.jit(jax.grad(lambda z: losses.soft_error(z, labels, epsilon=0.5).mean()))(logits)
  assert np.all(np.isfinite(grad)) and np.count_nonzero(np.asarray(grad)) > 0


def test_soft_error_of_an_out_of_range_label_under_jit_is_nan_not_another_class():
  fn = jax.jit(lambda z, y: losses.soft_error(z, y, epsilon=0.5))
  out = np.asarray(fn(jnp.zeros((2, 3)), jnp.array([1, 3])))
  assert np.isfinite(out[0]) and np.isnan(out[1])


def test_soft_errors_bad_arguments_raise_errors_naming_them():
  logits, labels = _logits(16, batch=4, classes=5)
  with pytest.raises(ValueError, match=r"labels must be class ids in \[0, C\) = \[0, 5\); got 5"):
    losses.soft_error(logits, np.array([0, 1, 5, 2]))
  with pytest.raises(ValueError, match=r"labels must be class ids in \[0, C\) = \[0, 5\); got -1"):
    losses.soft_topk_error(logits, np.array([0, -1, 4, 2]), 2)
  for k, error in ((0, ValueError), (6, ValueError), (2.0, TypeError), (True, TypeError)):
    with pytest.raises(error, match=r"k must be an int in \[1, 5\] with C = logits.shape\[axis\] = 5"):
      losses.soft_topk_error(logits, labels, k)
  with pytest.raises(
    ValueError,
    match=r"labels must have logits' shape without the class axis, \(4,\); got "
    r"labels.shape = \(3,\)",
  ):
    losses.soft_error(logits, labels[:3])
  with pytest.raises(TypeError, match=r"labels must be integer class ids"):
    losses.soft_error(logits, labels.astype(float))
  with pytest.raises(ValueError, match=r"logits must hold at least 2 classes"):
    losses.soft_error(logits[:, :1], labels)
  with pytest.raises(ValueError, match=r"backend must be one of"):
    losses.soft_error(logits, labels, backend="nope")


# --- Non-finite data is not hidden (issue 14) -------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_row_with_a_nan_or_an_infinity_has_a_nan_correlation_and_leaves_other_rows_alone(bad):
  rng = np.random.default_rng(20)
  pred, target = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
  clean = np.asarray(otsort.losses.spearman_correlation(pred, target, epsilon=0.1))
  for which in ("pred", "target"):
    p, t = pred.copy(), target.copy()
    (p if which == "pred" else t)[1, 2] = bad
    corr = np.asarray(otsort.losses.spearman_correlation(p, t, epsilon=0.1))
    assert np.isnan(corr[1]), which
    np.testing.assert_allclose(corr[[0, 2]], clean[[0, 2]], rtol=1e-6)
    grad = jax.grad(lambda q: jnp.sum(otsort.losses.spearman_loss(q, t, epsilon=0.1)[jnp.array([0, 2])]))(
      jnp.asarray(p)
    )
    assert np.all(np.isfinite(grad[jnp.array([0, 2])]))


def test_one_group_with_a_nan_changes_no_other_groups_boosting_gradient():
  rng = np.random.default_rng(21)
  pred, target = rng.normal(size=60), rng.normal(size=60)
  groups = np.repeat(np.arange(3), 20)
  bad = pred.copy()
  bad[3] = np.nan
  for normalize in (False, True):
    g_clean, h_clean = otsort.losses.spearman_grad_hess(pred, target, groups=groups, epsilon=0.1, normalize=normalize)
    g_bad, h_bad = otsort.losses.spearman_grad_hess(bad, target, groups=groups, epsilon=0.1, normalize=normalize)
    assert np.isnan(g_bad[:20]).all() and np.isnan(h_bad[:20]).all()
    assert np.all(np.isfinite(g_bad[20:])) and np.all(h_bad[20:] > 0)
    # Every scale (floor, normalization) is taken within a group: the other groups' results are unchanged.
    np.testing.assert_array_equal(g_bad[20:], g_clean[20:])
    np.testing.assert_array_equal(h_bad[20:], h_clean[20:])


def test_a_nan_in_one_group_leaves_the_other_groups_gradient_and_hessian_identical_with_every_setting():
  # Before: normalize=True (and hessian="constant") took the Hessian's mean over the finite entries of all groups,
  # so a NaN in group 0 scaled group 1's gradient and Hessian by about 1.41.
  pred = np.array([0, 2, -1, 0, 1, -2, 1, 0.5, -1, 2], np.float32)
  bad = pred.copy()
  bad[0] = np.nan
  target = np.array([1, 2, 3, 4, 5, 5, 4, 3, 2, 1], np.float32)
  groups = np.array([0] * 5 + [1] * 5)
  for kwargs in ({}, {"normalize": False}, {"hessian": "constant"}):
    g, h = losses.spearman_grad_hess(pred, target, groups=groups, epsilon=3.0, **kwargs)
    g_bad, h_bad = losses.spearman_grad_hess(bad, target, groups=groups, epsilon=3.0, **kwargs)
    assert np.isnan(g_bad[:5]).all() and np.isnan(h_bad[:5]).all(), kwargs
    np.testing.assert_array_equal(g_bad[5:], g[5:], err_msg=str(kwargs))
    np.testing.assert_array_equal(h_bad[5:], h[5:], err_msg=str(kwargs))
    assert np.all(np.isfinite(g)) and np.all(h > 0)
  objective = losses.spearman_boosting_objective(groups=groups, epsilon=3.0)
  (g, h), (g_bad, h_bad) = objective(pred, target), objective(bad, target)
  assert np.isnan(g_bad[:5]).all()
  np.testing.assert_array_equal(g_bad[5:], g[5:])
  np.testing.assert_array_equal(h_bad[5:], h[5:])
  loss = lambda p: losses.spearman_loss(p, target, groups=groups, epsilon=3.0)  # noqa: E731
  assert np.isfinite(float(loss(pred))) and np.isnan(float(loss(bad)))
  np.testing.assert_array_equal(jax.grad(loss)(jnp.asarray(bad))[5:], jax.grad(loss)(jnp.asarray(pred))[5:])


def test_negative_group_ids_are_refused_naming_groups_not_num_groups():
  # Before: groups of -1 inferred num_groups = 0 and blamed num_groups, which the caller never passed.
  x = np.arange(8.0)
  with pytest.raises(ValueError, match=r"groups must hold non-negative integer group ids in \[0, num_groups\)"):
    losses.spearman_loss(x, x, groups=np.full(8, -1))
  with pytest.raises(ValueError, match=r"non-negative integer group ids in \[0, num_groups\) = \[0, 2\)"):
    losses.spearman_loss(x, x, groups=np.array([0, 0, 0, 0, 1, 1, 1, -3]), num_groups=2)
  with pytest.raises(ValueError, match=r"^groups must hold non-negative"):
    losses.spearman_grad_hess(x, x, groups=np.full(8, -1))


def test_boosting_gradients_accept_integer_predictions():
  grad, hess = otsort.losses.spearman_grad_hess(np.arange(10), np.arange(10.0)[::-1], epsilon=1.0)
  assert grad.dtype == np.float64 and np.all(np.isfinite(grad)) and np.all(hess > 0)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(hessian="bad"), r"hessian must be one of 'diagonal', 'constant'; got hessian = 'bad'"),
    (dict(epsilonn=0.1), r"unknown option\(s\) 'epsilonn' for backend='pav'"),
    (dict(epsilon=-1.0), r"epsilon must be a positive finite number"),
    (dict(num_probes=0), r"num_probes must be an int >= 1"),
    (dict(backend="sinkorn"), r"backend must be one of"),
  ],
)
def test_a_boosting_objective_checks_its_arguments_when_it_is_made(kwargs, message):
  with pytest.raises(ValueError, match=message):
    otsort.losses.spearman_boosting_objective(**kwargs)


def test_spearman_refuses_complex_targets_and_empty_rows_naming_them():
  with pytest.raises(TypeError, match=r"target must be real; got dtype complex"):
    losses.spearman_correlation(np.arange(3.0), np.arange(3.0) + 1j)
  for shape in ((0,), (2, 0)):
    with pytest.raises(ValueError, match=r"pred must hold at least one value along axis to correlate"):
      losses.spearman_correlation(np.zeros(shape), np.zeros(shape))
  assert losses.spearman_correlation(np.zeros((0, 3)), np.zeros((0, 3))).shape == (0,)


def test_grouped_spearman_under_jit_with_an_out_of_range_group_id_is_nan_not_a_dropped_entry():
  pred, target = jnp.arange(6.0), jnp.array([0.0, 2.0, 1.0, 3.0, 5.0, 4.0])
  fn = jax.jit(lambda g: losses.spearman_correlation(pred, target, groups=g, num_groups=2, epsilon=1e-3))
  assert np.isfinite(float(fn(jnp.array([0, 0, 0, 1, 1, 1]))))
  assert np.isnan(float(fn(jnp.array([0, 0, 0, 1, 1, 2]))))
  assert np.isnan(float(fn(jnp.array([0, 0, -1, 1, 1, 1]))))
