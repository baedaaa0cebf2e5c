"""Sinkhorn rows at extreme epsilons and scales: finite values and gradients, the hard operations in the limit.

Every operation of the backend object is run on rows of ``n = 8`` (random, tied, a tie at 1e30, and the 1e-20-scale
row of the reported ``quantile`` NaN) with one epsilon per row, down to the smallest normal float, in one compiled
program per differentiation mode. Where epsilon is below every gap of the reduced cost the plan is the hard one, and
the values are those of the hard operations: the transport plan of sorted inputs (mass ``1/n`` each, tie groups
merged) onto the target measure, north-west corner (:func:`_hard_plan`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import otsort
from otsort import Sinkhorn
from otsort import TargetMeasure
from otsort.sinkhorn import _readouts
from otsort.sinkhorn import _targets
from otsort.sinkhorn import _transport

N, K = 8, 2
Q = (0.0, 0.3, 0.5, 1.0)
NUM_LEVELS = 3
TARGETS = np.linspace(-1.0, 2.0, 4)
TARGET_WEIGHTS = (0.1, 0.2, 0.3, 0.4)
# The row of the reported NaN: otsort.quantile(REPORTED, Q, epsilon=6.24e-21, backend="sinkhorn") gave
# [[-1e-20 nan -1e-20 -1e-20]] in float32.
REPORTED = [-1.000002e-20, -9.99998e-21, -1e-20, -1e-20, -1.000002e-20, -1e-20, -1.000001e-20, -1e-20]
ROWS = {
  "uniform": np.random.default_rng(0).uniform(-1, 1, N),
  "ties": np.array([1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 0.0, 1.0]),
  "tie at 1e30": np.array([1e30, -1e30, 3e29, -2e29, 1e30, 0.0, 5e29, -7e29]),
  "reported": np.array(REPORTED),
}
EXPONENTS = np.array([3, 8, 11, 14, 19, 20, 30, 37])
HARD = 8  # from epsilon = 1e-8 down, below every gap of the reduced cost on these rows


def _measures():
  """Per operation: (target measure, readout of the hard plan P [n, m] and the row x [n])."""
  quantile, index = _targets.quantile_targets(Q, N)
  topk = TargetMeasure.topk(N, K)
  uniform = TargetMeasure.uniform(N)
  positions = np.asarray(_readouts.normalised_positions(uniform.locations, jnp.float64))

  def col(p, v):
    return (p.T @ v) / p.sum(0)[(slice(None),) + (None,) * (v.ndim - 1)]

  def row(p, v):
    return (p @ v) / p.sum(1)

  return {
    "sort": (uniform, col),
    "ranks": (uniform, lambda p, x: (N - 1) * row(p, positions)),
    "quantile": (quantile, lambda p, x: col(p, x)[list(index)]),
    "topk": (topk, lambda p, x: col(p, x)[:0:-1]),
    "topk_mask": (TargetMeasure.topk_mask(N, K), lambda p, x: p[:, -1] / p.sum(1)),
    "quantize": (TargetMeasure.uniform(NUM_LEVELS), lambda p, x: row(p, col(p, x))),
    "sort_with": (topk, lambda p, x: col(p, np.stack([x, np.cos(x)], -1))[:0:-1]),
    "quantile_normalization": (TargetMeasure.uniform(4, TARGET_WEIGHTS), lambda p, x: row(p, TARGETS)),
  }


def _hard_plan(x, weights):
  """The unregularised plan of ``x`` (mass 1/n each) onto targets of mass ``weights``: monotone (north-west
  corner) in sorted order, with tied inputs sharing their group's mass equally."""
  n = x.shape[0]
  order = np.argsort(x, kind="stable")
  sources = np.arange(n + 1) / n
  targets = np.concatenate([[0.0], np.cumsum(weights)])
  overlap = np.minimum(sources[1:, None], targets[None, 1:]) - np.maximum(sources[:-1, None], targets[None, :-1])
  plan = np.maximum(overlap, 0.0)
  sorted_x = x[order]
  for value in np.unique(sorted_x):
    group = sorted_x == value
    plan[group] = plan[group].mean(0)
  out = np.empty_like(plan)
  out[order] = plan
  return out


def _hard(op, x):
  measure, readout = _measures()[op]
  return readout(_hard_plan(np.asarray(x, np.float64), np.asarray(measure.weights)), np.asarray(x, np.float64))


def _hard_jacobian(op, x):
  """``d out / d x`` ``[out, n]`` of the sort-like operations with the hard plan (a constant): the column means'
  weights, read off the identity as values."""
  measure, readout = _measures()[op]
  plan = _hard_plan(np.asarray(x, np.float64), np.asarray(measure.weights))
  return readout(plan, np.eye(x.shape[0]))


def _ops(backend):
  """Every operation as a function of ``([batch, n] rows, [batch] epsilons)``."""
  return {
    "sort": lambda x, e: backend.sort(x, descending=False, epsilon=e),
    "ranks": lambda x, e: backend.ranks(x, descending=False, epsilon=e),
    "quantile": lambda x, e: backend.quantile(x, Q, epsilon=e),
    "topk": lambda x, e: backend.topk(x, K, epsilon=e),
    "topk_mask": lambda x, e: backend.topk_mask(x, K, epsilon=e),
    "quantize": lambda x, e: backend.quantize(x, NUM_LEVELS, epsilon=e),
    "sort_with": lambda x, e: backend.sort_with(x, jnp.stack([x, jnp.cos(x)], -1), K, epsilon=e),
    "quantile_normalization": lambda x, e: backend.quantile_normalization(
      x, jnp.asarray(TARGETS, x.dtype), TARGET_WEIGHTS, epsilon=e
    ),
  }


def _weights(size, dtype):
  return jnp.sin(1.0 + jnp.arange(size, dtype=dtype))


def _values_and_grads(ops):
  """Jitted ``(x, eps) -> {op: (values, d/dx, d/deps)}`` of the row losses ``sum(w * out)``, one compile."""

  def one(op, x, e):
    def loss(x, e):
      out = op(x, e)
      flat = out.reshape(out.shape[0], -1)
      return jnp.sum(flat @ _weights(flat.shape[1], flat.dtype)), out

    (_, out), (gx, ge) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x, e)
    return out, gx, ge

  return jax.jit(lambda x, e: {name: one(op, x, e) for name, op in ops.items()})


@pytest.fixture(scope="module", params=["implicit", "unroll"])
def extremes(request):
  """``(mode, x [rows * eps, n], exponents [rows * eps], names, {op: (values, d/dx, d/deps)})`` in float32."""
  x = np.repeat(np.stack([np.asarray(r, np.float32) for r in ROWS.values()]), len(EXPONENTS), axis=0)
  exponents = np.tile(EXPONENTS, len(ROWS))
  names = np.repeat(list(ROWS), len(EXPONENTS))
  eps = jnp.asarray(10.0**-exponents, jnp.float32)
  # A tight threshold: on the hard plan's support (a tree) the marginals then fix the plan, to 1e-6; at the
  # default 1e-3 a quantile target of mass 0.02 split between two inputs was off by 5% of their gap.
  f = _values_and_grads(_ops(Sinkhorn(differentiation=request.param, threshold=1e-6)))
  got = {op: tuple(np.asarray(a, np.float64) for a in out) for op, out in f(jnp.asarray(x), eps).items()}
  return request.param, x.astype(np.float64), exponents, names, got


# The true x-gradient of the operations that are not scale-free (ranks, masks, quantile normalization) on the
# 1e-20-scale row, whose z-scores divide by a spread of ~1e-26, with ties (split between targets, where the
# derivative is ~ 1 / epsilon): up to ~2e24 / epsilon, beyond float32 at epsilon = 1e-14. It overflows to +-inf,
# not NaN.
_UNREPRESENTABLE = {"ranks", "topk_mask", "quantile_normalization"}


def test_values_and_gradients_are_finite_down_to_the_smallest_normal_epsilon(extremes):
  # Regression (issue 14): in float32, quantile with several levels, quantile_normalization with unequal target
  # weights and quantize gave NaN values at epsilon <= 1e-11, unrolled gradients of every op were NaN on some of
  # these rows (through ott-jax's potentials, f = eps log u and back), and implicit epsilon-gradients were inf on
  # the row with a tie at 1e30.
  _, x, exponents, names, got = extremes
  for op, (values, gx, ge) in got.items():
    assert np.all(np.isfinite(values)), op
    assert not np.any(np.isnan(gx)) and not np.any(np.isnan(ge)), op
    finite = (names != "reported") | (exponents < 14) if op in _UNREPRESENTABLE else np.ones(len(names), bool)
    assert np.all(np.isfinite(gx[finite])), f"{op}: rows {np.flatnonzero(~np.isfinite(gx).all(-1) & finite)}"
    assert np.all(np.isfinite(ge)), op


def test_tiny_epsilons_give_the_hard_operations(extremes):
  _, x, exponents, names, got = extremes
  for op, (values, _, _) in got.items():
    for i in np.flatnonzero(exponents >= HARD):
      spread = np.ptp(x[i]) if op not in ("ranks", "topk_mask", "quantile_normalization") else 1.0
      np.testing.assert_allclose(
        values[i], _hard(op, x[i]), rtol=1e-5, atol=1e-5 * spread, err_msg=f"{op}, {names[i]}, eps 1e-{exponents[i]}"
      )


@pytest.mark.parametrize("op", ["sort", "quantile", "topk"])
def test_tiny_epsilons_give_the_hard_gradients(extremes, op):
  # The hard operation's x-gradient puts the cotangent of each output on the inputs it averages (tied inputs share
  # it), and its epsilon-gradient is 0. Before: the implicit backward divided the rounding of its linear solve by
  # epsilon: sort's gradient was [1.03, 3.41, -3.82, ...] for [-0.62, 0.84, -0.76, ...] at 1e-15 (1e4 at 1e-19),
  # quantile's 1e11 at 1e-19, and the epsilon-gradient inf on the row with a tie at 1e30 (1e-12 to 1e-18).
  # Unrolled, the tied inputs' one-sided derivatives cancelled only to rounding over epsilon (sort of the tied row:
  # [..., -211, 106, 106, ...] for 0.456 each at 1e-19).
  _, x, exponents, names, got = extremes
  _, gx, ge = got[op]
  hard = exponents >= HARD
  for i in np.flatnonzero(hard):
    jacobian = _hard_jacobian(op, x[i])
    want = np.asarray(_weights(jacobian.shape[0], jnp.float64)) @ jacobian
    np.testing.assert_allclose(gx[i], want, rtol=1e-5, atol=1e-5, err_msg=f"{op}, {names[i]}, eps 1e-{exponents[i]}")
  np.testing.assert_array_less(np.abs(ge[hard]), 1e-6 * np.max(np.abs(x[hard]), -1) + 1e-300)


def test_the_reported_row_gives_the_hard_quantiles():
  x = np.float32([REPORTED])
  out = otsort.quantile(x, list(Q), epsilon=6.24e-21, backend="sinkhorn")
  # Sorted: -1.000002e-20 (twice), -1.000001e-20, -1e-20 (four times), -9.99998e-21; q = 0.5 falls between the
  # fourth and fifth (both -1e-20).
  np.testing.assert_array_equal(np.asarray(out), np.float32([[-1.000002e-20, -1.000001e-20, -1e-20, -9.99998e-21]]))


def test_monotone_support_holds_a_coupling_with_every_row_and_column():
  # The reduced cost of the reported row, in float32, at the quantile targets: the sources tied at z = 0.58 (four
  # of them) hold cumulative mass [3/8, 7/8] and so reach the targets 3 to 5, but the rounded reduced cost at
  # target 3 was 3.7e-9, whose kernel is 0 below epsilon ~ 1e-10: target 2 then had no source (0/0, NaN).
  measure, _ = _targets.quantile_targets(Q, N)
  z = _transport.sigmoid_zscore(jnp.asarray(np.float32(REPORTED) * np.float32(1e20)))
  a = jnp.full((N,), 1.0 / N, jnp.float32)
  b = jnp.asarray(measure.weights, jnp.float32)
  support, tied, leader = map(np.asarray, _transport.monotone_support(z, a, b))
  assert support.any(0).all() and support.any(1).all()
  group = np.asarray(z) == np.asarray(z)[2]
  assert group.sum() == 4 and np.all(support[group][:, 3:6]) and not np.any(support[group][:, :3])
  # Tied: the entries of tie groups split between targets (these four, and the two smallest, on targets 0 and 1).
  sizes = (np.asarray(z)[:, None] == np.asarray(z)[None, :]).sum(1)
  np.testing.assert_array_equal(tied, support & ((sizes > 1) & (support.sum(1) > 1))[:, None])
  assert tied.any(1).sum() == 6 and np.all(np.asarray(z)[leader] == np.asarray(z))
  y = jnp.asarray(measure.locations, jnp.float32)
  reduced = _transport._reduced_cost(z, a, y, b, differentiate_duals=False)
  assert np.all(np.asarray(reduced)[support] == 0) and np.all(np.asarray(reduced) >= 0)


def test_implicit_gradients_agree_with_float64_and_stay_finite_at_small_epsilons():
  # The implicit backward divides lambda_i + mu_j - dL/dP_ij by epsilon; one solve left it off by ~1e-5 of
  # dL/dP in float32: quantile's x-gradient was off by O(1) at epsilon = 1e-8 (1e11 at 1e-19), and the float64
  # reference of quantile normalization itself grew like 1 / epsilon^2. The refined solve keeps float32 within
  # ~1e-5 of float64. In float64 the epsilon-gradient on a row with a tie at 1e300 was inf below ~1e-20.
  names = ("sort", "quantile", "quantile_normalization")
  exponents = np.array([4, 8, 12])
  rows = np.repeat(np.stack([ROWS["uniform"], ROWS["ties"]]), len(exponents), axis=0)
  eps = 10.0 ** -np.tile(exponents, 2)
  tiny = np.array([20, 60, 150, 154, 200, 300])
  big = np.repeat([[1e300, -1e300, 3e299, -2e299, 1e300, 0.0, 5e299, -7e299]], len(tiny), axis=0)
  results = []
  cases = ((jnp.float32, rows, eps), (jnp.float64, np.vstack([rows, big]), np.concatenate([eps, 10.0**-tiny])))
  for dtype, x, e in cases:
    with jax.enable_x64(dtype == jnp.float64):
      ops = {name: op for name, op in _ops(Sinkhorn(threshold=1e-6)).items() if name in names}
      got = _values_and_grads(ops)(jnp.asarray(x, dtype), jnp.asarray(e, dtype))
      results.append({op: tuple(np.asarray(a, np.float64) for a in out) for op, out in got.items()})
  for op in names:
    (_, gx32, ge32), (values, gx64, ge64) = results[0][op], results[1][op]
    np.testing.assert_allclose(gx32, gx64[: len(rows)], atol=1e-4 * (1 + np.max(np.abs(gx64[: len(rows)]))), err_msg=op)
    np.testing.assert_allclose(ge32, ge64[: len(rows)], atol=1e-4 * (1 + np.max(np.abs(ge64[: len(rows)]))), err_msg=op)
    assert np.all(np.isfinite(gx64)) and np.all(np.isfinite(ge64)), op
    np.testing.assert_allclose(values[len(rows) :], np.stack([_hard(op, r) for r in big]), rtol=1e-4, err_msg=op)
