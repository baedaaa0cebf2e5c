"""Tests of the Sinkhorn backend object's row operations (``otsort.Sinkhorn``, ``[batch, n]`` inputs).

Reference values come from ott-jax itself (``ott.tools.soft_sort``) and from
the hard operators. Gradients: reverse mode only (ott-jax's Sinkhorn loops are
``custom_vjp``), checked against finite differences in float64.
"""

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
from ott.tools import soft_sort as ott_ss
import pytest

from otsort import Sinkhorn
from otsort import TargetMeasure
from otsort.sinkhorn import _backend
from otsort.sinkhorn import _targets
from otsort.sinkhorn import _transport

EPS = Sinkhorn.default_epsilon
DEFAULT = Sinkhorn()


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _rows(seed, batch, n, dtype=jnp.float32, scale=1.0):
  x = np.random.default_rng(seed).normal(size=(batch, n)) * scale
  return jnp.asarray(x, dtype=dtype)


def _spread_rows(seed, batch, n, dtype=jnp.float64):
  """Well-separated values: no near-ties, so finite differences are smooth."""
  rng = np.random.default_rng(seed)
  x = np.stack([rng.permutation(n) for _ in range(batch)]) / n
  x = x + 0.1 / n * rng.uniform(size=(batch, n))
  return jnp.asarray(x, dtype=dtype)


# Every operator as a function of [batch, n] rows only (k, q fixed).
def _ops(n, options=DEFAULT, epsilon=EPS):
  k = max(1, n // 3)
  backend, kw = options, dict(epsilon=epsilon)
  return {
    "sort": lambda x: backend.sort(x, descending=False, **kw),
    "ranks": lambda x: backend.ranks(x, descending=False, **kw),
    "quantile": lambda x: backend.quantile(x, (0.0, 0.25, 0.5, 1.0), **kw),
    "topk": lambda x: backend.topk(x, k, **kw),
    "topk_mask": lambda x: backend.topk_mask(x, k, **kw),
    "quantize": lambda x: backend.quantize(x, 3, **kw),
    "sort_with_topk": lambda x: backend.sort_with(x, jnp.stack([x, jnp.cos(x)], -1), k, **kw),
    "quantile_normalization": lambda x: backend.quantile_normalization(
      x, jnp.linspace(-1.0, 2.0, 4), np.array([0.1, 0.2, 0.3, 0.4]), **kw
    ),
  }


def _loss(op):
  """A scalar with a generic (not symmetric) dependence on every output."""

  def loss(x):
    out = op(x)
    w = jnp.sin(1.0 + jnp.arange(out.size, dtype=out.dtype)).reshape(out.shape)
    return jnp.sum(w * out)

  return loss


def _all_losses(ops):
  """One jitted vector of every operator's loss: a single compilation."""
  return jax.jit(lambda x: jnp.stack([_loss(op)(x) for op in ops.values()]))


# ----------------------------------------------------------------------------
# Agreement with ott-jax defaults.

# ott-jax starts its two-target (topk_mask) problems from zero potentials, far
# from a degenerate solution, and needs ~1e5 iterations to reach 1e-9 there:
# at 2e4 its mask is off by 2e-5 (ours, started from centred monotone duals,
# converges in far fewer).
_OTT_TIGHT = dict(threshold=1e-9, max_iterations=100000)


def _ott_pairs(x):
  """(ours, ott) for every operator, ott-jax's conventions converted."""
  o = Sinkhorn(threshold=1e-9, max_iterations=20000)
  backend, kw = o, dict(epsilon=EPS)
  v = jnp.stack([x, x**2], -1)
  q = (0.2, 0.5, 0.9)
  # Weights must be concrete for us (checked at trace time), not for ott.
  t, w = jnp.linspace(-1.0, 2.0, 5), np.array([0.1, 0.2, 0.3, 0.2, 0.2])
  per_row = lambda fn: jnp.stack([fn(i) for i in range(x.shape[0])])
  return {
    "sort": (backend.sort(x, descending=False, **kw), ott_ss.sort(x, **_OTT_TIGHT)),
    "sort_descending": (backend.sort(x, descending=True, **kw), ott_ss.sort(x, **_OTT_TIGHT)[:, ::-1]),
    "ranks": (backend.ranks(x, descending=False, **kw), ott_ss.ranks(x, **_OTT_TIGHT)),
    "quantile": (backend.quantile(x, q, **kw), ott_ss.quantile(x, jnp.array(q), **_OTT_TIGHT)),
    # ott returns the top-k ascending; ours descend like lax.top_k.
    "topk": (backend.topk(x, 3, **kw), ott_ss.sort(x, topk=3, **_OTT_TIGHT)[:, ::-1]),
    "topk_mask": (backend.topk_mask(x, 3, **kw), ott_ss.topk_mask(x, k=3, **_OTT_TIGHT)),
    "quantize": (backend.quantize(x, 4, **kw), ott_ss.quantize(x, num_levels=4, **_OTT_TIGHT)),
    "sort_with": (
      backend.sort_with(x, v, None, **kw),
      per_row(lambda i: ott_ss.sort_with(v[i], x[i][:, None], **_OTT_TIGHT)),
    ),
    "sort_with_topk": (
      backend.sort_with(x, v, 3, **kw),
      per_row(lambda i: ott_ss.sort_with(v[i], x[i][:, None], topk=3, **_OTT_TIGHT)[::-1]),
    ),
    "quantile_normalization": (
      backend.quantile_normalization(x, t, w, **kw),
      ott_ss.quantile_normalization(x, t, jnp.asarray(w), **_OTT_TIGHT),
    ),
  }


def test_defaults_agree_with_ott_soft_sort_in_float64(x64):
  # Separated values so that both solvers converge to 1e-9 (near-ties make
  # the two-target problems converge very slowly, for ott-jax and for us).
  x = _spread_rows(0, 2, 9) * 3.0 - 1.0
  for name, (ours, ref) in jax.jit(_ott_pairs)(x).items():
    assert ours.shape == ref.shape, name
    np.testing.assert_allclose(ours, ref, atol=1e-6, err_msg=name)


def test_default_epsilon_matches_ott():
  import inspect

  sig = inspect.signature(ott_ss.transport_for_sort)
  assert sig.parameters["epsilon"].default == Sinkhorn.default_epsilon


def test_float32_defaults_agree_with_ott_within_threshold():
  x = _rows(1, 3, 16)
  ours, ref = jax.jit(lambda x: (DEFAULT.ranks(x, descending=False, epsilon=EPS), ott_ss.ranks(x)))(x)
  # Both stop at an L1 marginal error of 1e-3: ranks move by ~n * 1e-3.
  np.testing.assert_allclose(ours, ref, atol=16 * 2e-3)


def test_ott_target_weights_and_num_targets_options_agree(x64):
  x = _spread_rows(2, 2, 8)
  w = np.array([0.1, 0.2, 0.3, 0.2, 0.2])
  tight = {"threshold": 1e-9, "max_iterations": 20000}
  o = Sinkhorn(**tight)
  weighted = _backend.target_measure(target_weights=w)
  five = _backend.target_measure(num_targets=5)

  @jax.jit
  def pairs(x):
    return [
      (
        o.ranks(x, descending=False, epsilon=EPS, target=weighted),
        ott_ss.ranks(x, target_weights=jnp.asarray(w), **_OTT_TIGHT),
      ),
      (o.sort(x, descending=False, epsilon=EPS, target=five), ott_ss.sort(x, num_targets=5, **_OTT_TIGHT)),
    ]

  for ours, ref in pairs(x):
    np.testing.assert_allclose(ours, ref, atol=1e-6)


# ----------------------------------------------------------------------------
# Invariants of the outputs.


_N, _K = 20, 4


@pytest.fixture(scope="module")
def invariants():
  x = _rows(3, 4, _N, scale=5.0)
  backend, kw = DEFAULT, dict(epsilon=EPS)
  out = jax.jit(
    lambda x: dict(
      sort=backend.sort(x, descending=False, **kw),
      sort_descending=backend.sort(x, descending=True, **kw),
      ranks=backend.ranks(x, descending=False, **kw),
      ranks_descending=backend.ranks(x, descending=True, **kw),
      topk_mask=backend.topk_mask(x, _K, **kw),
      topk_mask_n=backend.topk_mask(x, _N, **kw),
    )
  )(x)
  return x, out


def test_sort_output_is_monotone_and_within_input_range(invariants):
  x, out = invariants
  s = out["sort"]
  assert bool(jnp.all(jnp.diff(s, axis=1) >= -1e-5))
  assert bool(jnp.all(s >= x.min(1, keepdims=True) - 1e-5))
  assert bool(jnp.all(s <= x.max(1, keepdims=True) + 1e-5))
  np.testing.assert_allclose(out["sort_descending"], s[:, ::-1])


def test_ranks_lie_in_range_and_sum_to_n_choose_2(invariants):
  _, out = invariants
  r = out["ranks"]
  assert bool(jnp.all((r >= 0) & (r <= _N - 1)))
  np.testing.assert_allclose(r.sum(1), _N * (_N - 1) / 2, rtol=2e-3)
  np.testing.assert_allclose(out["ranks_descending"], (_N - 1) - r, atol=1e-5)


def test_topk_mask_lies_in_unit_interval_and_sums_to_k(invariants):
  _, out = invariants
  m = out["topk_mask"]
  assert bool(jnp.all((m >= 0) & (m <= 1)))
  # Column error <= threshold (1e-3) in L1, times n.
  np.testing.assert_allclose(m.sum(1), _K, atol=_N * 1e-3)
  np.testing.assert_allclose(out["topk_mask_n"], jnp.ones((4, _N)))


def test_rows_of_one_element():
  x = _rows(6, 2, 1)
  ops = _ops(1)
  outs = jax.jit(lambda x: [op(x) for op in ops.values()])(x)
  for name, out in zip(ops, outs):
    assert bool(jnp.all(jnp.isfinite(out))), name


# ----------------------------------------------------------------------------
# Small epsilon: the hard operators.


def test_small_epsilon_recovers_hard_operators(x64):
  # Values spread on [0, 1] with gaps >= 1/n; squashed gaps are then ~0.03,
  # so epsilon = 1e-4 gives a plan within ~1e-3 of the permutation.
  n = 8
  x = _spread_rows(7, 3, n)
  o = Sinkhorn(threshold=1e-8, max_iterations=50000)
  backend, kw = o, dict(epsilon=1e-4)
  # Soft quantile q reads the order statistic at cumulative mass q; at
  # mid-cells (k + 0.5) / n that is jnp.quantile(..., method="nearest").
  q = (0.5 / n, 3.5 / n, 6.5 / n)
  soft = jax.jit(
    lambda x: dict(
      sort=backend.sort(x, descending=False, **kw),
      ranks=backend.ranks(x, descending=False, **kw),
      topk=backend.topk(x, 3, **kw),
      topk_mask=backend.topk_mask(x, 3, **kw),
      quantile=backend.quantile(x, q, **kw),
    )
  )(x)
  hard = dict(
    sort=jnp.sort(x, axis=1),
    ranks=jnp.argsort(jnp.argsort(x, axis=1), axis=1),
    topk=jax.lax.top_k(x, 3)[0],
    topk_mask=x >= jnp.sort(x, axis=1)[:, -3:-2],
    quantile=jnp.quantile(x, jnp.array(q), axis=1, method="nearest").T,
  )
  for name in hard:
    np.testing.assert_allclose(soft[name], hard[name], atol=2e-2, err_msg=name)


# ----------------------------------------------------------------------------
# Gradients.


def test_float32_gradients_in_x_and_epsilon_are_finite_for_every_op():
  n = 8
  rng = np.random.default_rng(8)
  # Rows are independent problems: stack every hard case in one batch.
  cases = [rng.normal(size=(2, n)) * s for s in (1e-3, 1.0, 1e3)]
  cases.append(np.round(rng.normal(size=(2, n)) * 2))  # ties
  cases.append(np.ones((1, n)))  # all equal
  cases.append(np.r_[np.zeros(n - 1), 1e3][None])  # one outlier
  x = jnp.asarray(np.concatenate(cases), jnp.float32)
  eps = jnp.full(x.shape[0], EPS, jnp.float32)
  names = list(_ops(n))

  def losses(x, eps):
    return _all_losses(_ops(n, epsilon=eps))(x)

  # Jacobians of the per-op losses in x and in the per-row epsilons: every
  # op's gradients, one compilation.
  jac_x, jac_eps = jax.jit(jax.jacrev(losses, argnums=(0, 1)))(x, eps)
  assert jac_x.dtype == jac_eps.dtype == jnp.float32
  for name, gx, ge in zip(names, jac_x, jac_eps):
    assert bool(jnp.all(jnp.isfinite(gx))), name
    assert bool(jnp.all(jnp.isfinite(ge))), name
    assert float(jnp.abs(gx).max()) > 0, name
    assert float(jnp.abs(ge).max()) > 0, name


def test_gradients_match_finite_differences_in_float64(x64):
  # Default epsilon; well separated values, tight threshold (implicit
  # differentiation assumes the solver converged).
  o = Sinkhorn(threshold=1e-10, max_iterations=20000)
  x = _spread_rows(9, 2, 6) * 4.0
  check_grads(_all_losses(_ops(6, options=o)), (x,), order=1, modes=("rev",), atol=1e-3, rtol=1e-3, eps=1e-6)


def test_unrolled_gradients_match_finite_differences_in_float64(x64):
  o = Sinkhorn(threshold=1e-10, max_iterations=20000, differentiation="unroll")
  x = _spread_rows(10, 2, 6)
  ops = _ops(6, options=o, epsilon=0.05)
  ops = {name: ops[name] for name in ("sort", "ranks", "topk_mask")}
  check_grads(_all_losses(ops), (x,), order=1, modes=("rev",), atol=1e-4, rtol=1e-4, eps=1e-5)


def test_large_rows_use_conjugate_gradient_and_agree_with_unrolling():
  # n > 256 takes the CG branch of the implicit solve.
  n = 300
  x = _rows(11, 1, n)
  loss = lambda d: _loss(_ops(n, options=Sinkhorn(differentiation=d))["ranks"])
  g_imp = jax.jit(jax.grad(loss("implicit")))(x)
  g_unr = jax.jit(jax.grad(loss("unroll")))(x)
  assert bool(jnp.all(jnp.isfinite(g_imp)))
  np.testing.assert_allclose(g_imp, g_unr, atol=0.05 * float(jnp.abs(g_unr).max()))


def test_vmap_over_rows_agrees_with_batched_rows():
  x = _rows(12, 3, 7)
  op = _ops(7)["ranks"]
  batched = jax.jit(op)(x)
  vm = jax.jit(jax.vmap(lambda r: op(r[None])[0]))(x)
  # Rows solved alone stop at slightly different iterates (threshold 1e-3).
  np.testing.assert_allclose(vm, batched, atol=7 * 1e-3)


def test_monotone_initializer_returns_feasible_tight_duals(x64):
  rng = np.random.default_rng(13)
  z = jnp.asarray(rng.uniform(size=9))
  a = jnp.full(9, 1 / 9)
  y = jnp.linspace(0.0, 1.0, 4)
  b = jnp.array([0.4, 0.1, 0.3, 0.2])
  f, g = _transport.monotone_dual_potentials(z, a, y, b)
  slack = (z[:, None] - y[None, :]) ** 2 - f[:, None] - g[None, :]
  assert float(slack.min()) > -1e-12
  # Each source is tight with some target, and targets 2..m with a source.
  assert float(jnp.max(jnp.min(slack, 1))) < 1e-12
  assert float(jnp.max(jnp.min(slack, 0))) < 1e-12


# ----------------------------------------------------------------------------
# Targets and options.


def test_target_measure_constructors_match_ott():
  t = TargetMeasure.topk(num_points=5, k=2)
  np.testing.assert_allclose(t.weights, [0.6, 0.2, 0.2])
  np.testing.assert_allclose(t.locations, [0.0, 0.5, 1.0])
  t = TargetMeasure.topk_mask(num_points=10, k=3)
  np.testing.assert_allclose(t.weights, [0.7, 0.3])
  # ott: w = min(0.02, 1.5/n, 0.5/|q|, half the gaps), fillers around.
  t, index = _targets.quantile_targets((0.5, 0.2), num_points=50)
  np.testing.assert_allclose(t.weights, [0.19, 0.02, 0.28, 0.02, 0.49])
  assert index == (3, 1)
  t, index = _targets.quantile_targets((0.0, 1.0, 0.0), num_points=50)
  assert index == (0, 2, 0) and t.num_targets == 3
  assert hash(t) == hash(_targets.quantile_targets((0.0, 1.0), 50)[0])


@pytest.mark.parametrize(
  "options, error, match",
  [
    ({"foo": 1}, TypeError, r"unexpected keyword argument 'foo'"),
    ({"squashing": "tanh"}, ValueError, r"squashing must be one of 'sigmoid', 'none'; got squashing = 'tanh'"),
    ({"squashing": 3}, TypeError, r"squashing must be one of 'sigmoid', 'none'; got squashing = 3"),
    (
      {"differentiation": "auto"},
      ValueError,
      r"differentiation must be one of 'implicit', 'unroll'; got differentiation = 'auto'",
    ),
    ({"initializer": "sorting"}, ValueError, r"initializer must be one of"),
    ({"threshold": 0.0}, ValueError, r"threshold must be a positive finite number; got threshold = 0.0"),
    ({"threshold": float("nan")}, ValueError, r"threshold must be a positive finite"),
    ({"threshold": "1e-3"}, TypeError, r"threshold must be a real number"),
    ({"max_iterations": 0}, ValueError, r"max_iterations must be an int in \[1, 2147483647\]"),
    ({"max_iterations": 2**63}, ValueError, r"max_iterations must be an int in \[1, 2147483647\]"),
    ({"max_iterations": 10.0}, TypeError, r"max_iterations must be an int"),
    (
      {"min_iterations": 5, "max_iterations": 3},
      ValueError,
      r"max_iterations must be an int in \[5, 2147483647\] \(at least min_iterations, at least 1\); got "
      r"max_iterations = 3",
    ),
  ],
)
def test_bad_options_raise_errors_naming_them(options, error, match):
  with pytest.raises(error, match=match):
    Sinkhorn(**options)


@pytest.mark.parametrize(
  "options, error, match",
  [
    ({"num_targets": 1}, ValueError, r"num_targets must be an int >= 2; got num_targets = 1"),
    ({"num_targets": 2.5}, TypeError, r"num_targets must be an int >= 2 .*; got num_targets = 2.5"),
    ({"target_weights": [0.5, 0.6]}, ValueError, r"target_weights must sum to 1 \(within 1e-05\); got sum 1.1"),
    ({"target_weights": [1.5, -0.5]}, ValueError, r"target_weights must all be positive"),
    ({"target_weights": [0.5, 0.5], "num_targets": 3}, ValueError, r"target_weights must have length 3; got length 2"),
    ({"target_weights": [[0.5, 0.5]]}, ValueError, r"target_weights must be a non-empty"),
    ({"target": "uniform"}, TypeError, r"target must be an otsort.TargetMeasure or None; got target = 'uniform'"),
    (
      {"target": TargetMeasure.uniform(3), "num_targets": 3},
      ValueError,
      r"give either target=TargetMeasure\(...\) or num_targets",
    ),
  ],
)
def test_bad_target_options_raise_errors_naming_them(options, error, match):
  with pytest.raises(error, match=match):
    _backend.target_measure(**options)


def test_numpy_scalars_are_accepted_as_solver_settings():
  backend = Sinkhorn(threshold=np.float32(1e-3), max_iterations=np.int64(50), min_iterations=np.array(2))
  assert (backend.threshold, backend.max_iterations, backend.min_iterations) == (np.float32(1e-3), 50, 2)
  assert type(backend.max_iterations) is int and type(backend.threshold) is float
  assert hash(backend) == hash(Sinkhorn(threshold=float(np.float32(1e-3)), max_iterations=50, min_iterations=2))


def test_target_measure_validation():
  with pytest.raises(ValueError, match=r"locations must be strictly increas"):
    TargetMeasure((0.0, 0.0), (0.5, 0.5))
  with pytest.raises(ValueError, match=r"weights must have length 2; got length 3"):
    TargetMeasure((0.0, 1.0), (0.2, 0.3, 0.5))
  with pytest.raises(ValueError, match=r"k must be an int in \[1, 4\] with num_points = 5; got k = 5"):
    TargetMeasure.topk(num_points=5, k=5)


def test_traced_target_weights_are_refused():
  def f(w):
    return _backend.target_measure(target_weights=w)

  with pytest.raises(TypeError, match=r"target_weights must be a concrete"):
    jax.jit(f)(jnp.array([0.5, 0.5]))


def test_target_measures_are_hashable_and_apply_to_sort_ranks_and_sort_with_only():
  target = _backend.target_measure(target_weights=np.array([0.25, 0.75]))
  assert hash(target) == hash(_backend.target_measure(target_weights=(0.25, 0.75)))
  x = _rows(14, 2, 6)
  shapes = jax.eval_shape(
    lambda x: (
      DEFAULT.sort(x, descending=False, epsilon=EPS, target=target),
      DEFAULT.ranks(x, descending=False, epsilon=EPS, target=target),
      DEFAULT.sort_with(x, x[..., None], epsilon=EPS, target=target),
    ),
    x,
  )
  assert [s.shape for s in shapes] == [(2, 2), (2, 6), (2, 2, 1)]
  with pytest.raises(TypeError, match=r"unexpected keyword argument 'target'"):
    DEFAULT.topk(x, 2, epsilon=EPS, target=target)
  with pytest.raises(ValueError, match=r"sort_with\(topk=k\) builds its own target measure"):
    DEFAULT.sort_with(x, x[..., None], 2, epsilon=EPS, target=target)


def test_custom_target_and_callable_squashing():
  x = _rows(15, 2, 6)
  target = TargetMeasure((-3.0, 0.0, 3.0), (0.25, 0.5, 0.25))
  o1 = Sinkhorn(squashing="none")
  o2 = Sinkhorn(squashing=jax.nn.sigmoid)
  s, r = jax.jit(
    lambda x: (o1.sort(x, descending=False, epsilon=0.5, target=target), o2.ranks(x, descending=False, epsilon=EPS))
  )(x)
  assert s.shape == (2, 3) and bool(jnp.all(jnp.diff(s, axis=1) > 0))
  np.testing.assert_allclose(jnp.argsort(r), jnp.argsort(x))
