"""The ``pav`` backend against an independent float64 reference, its invariants, its two solvers and its
derivatives.

Cost model: the native kernel runs eagerly at almost no cost, so it gets the wide sweeps (eager calls, no jit).
Every compiled function that contains the pure-JAX solver (``impl="xla"``) costs ~0.5 s of CPU to compile, so
those are built once per configuration by :func:`_value_and_vjp` on one fixed shape ``[BATCH, N]`` and shared
between tests.
"""

from __future__ import annotations

import functools

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
from jax import test_util
import jax.numpy as jnp
import numpy as np
import pytest
import reference

import otsort
from otsort.pav import _projections

REGULARIZATIONS = ("l2", "kl")
IMPLS = ("native", "xla")
EPSILONS = (1e-3, 1e-1, 1.0, 10.0, 1e3)
BATCH, N = 6, 9  # the shape of every compiled pure-JAX call

_hypothesis = hypothesis.settings(
  max_examples=25,
  deadline=None,
  derandomize=True,
  database=None,
  suppress_health_check=[hypothesis.HealthCheck.too_slow],
)


def rows_with_ties(seed: int, batch: int = BATCH, n: int = N, scale: float = 1.0) -> np.ndarray:
  """Random rows whose entries repeat (drawn from a few generic values); row 0 has no ties."""
  rng = np.random.default_rng(seed)
  pool = scale * rng.normal(size=(batch, max(2, n // 2)))
  x = np.take_along_axis(pool, rng.integers(0, pool.shape[1], size=(batch, n)), axis=1)
  x[0] = scale * rng.normal(size=n)
  return x


def reference_rows(op: str, x: np.ndarray, **kwargs) -> np.ndarray:
  fn = {"sort": reference.sort, "ranks": reference.ranks}[op]
  return np.stack([fn(row, **kwargs) for row in np.asarray(x, np.float64)])


def projection_scale(op: str, x: np.ndarray, epsilon: float) -> float:
  """The magnitude of the numbers inside the projection: the error a float format makes is relative to it."""
  n = x.shape[-1]
  inputs = np.max(np.abs(x)) / epsilon if op == "ranks" else n / epsilon + np.max(np.abs(x))
  return 1.0 + n + inputs


def scores_fn(kl: bool, topk: int, impl: str):
  """The 1-based rank projection (topk = 0) or the top-k mask projection of rows ``[batch, n]``."""
  return lambda z: _projections.project_scores(z, jnp.ones((*z.shape[:-1], 1), z.dtype), kl, topk, impl)[0]


# --- The reference itself ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_reference_pav_solves_the_projection_problems(seed):
  rng = np.random.default_rng(seed)
  n = 5
  z, x = 2.0 * rng.normal(size=n), rng.normal(size=n)
  w = np.exp(x)
  np.testing.assert_allclose(reference.project(z, x, kl=False), reference.dense_projection_l2(z, x), atol=1e-7)
  np.testing.assert_allclose(reference.project(z, w, kl=True), reference.dense_projection_kl(z, w), atol=1e-6)
  # The KL soft sort is the log of the KL projection of exp(rho / eps) onto the permutahedron of exp(x).
  np.testing.assert_allclose(
    reference.sort(x, 0.7, kl=True, descending=True),
    np.log(reference.dense_projection_kl(reference.rho(n) / 0.7, w)),
    atol=1e-6,
  )
  for k in range(1, n):
    np.testing.assert_allclose(reference.topk_mask(z, k), reference.capped_simplex_l2(z, k), atol=1e-10)
    np.testing.assert_allclose(reference.topk_mask(z, k, kl=True), reference.capped_simplex_kl(z, k), atol=1e-10)


def test_reference_matches_hand_computed_values():
  np.testing.assert_allclose(reference.ranks([3.0, 1.0, 2.0], 0.1), [2.0, 0.0, 1.0])
  np.testing.assert_allclose(reference.ranks([3.0, 1.0, 2.0], 0.1, descending=True), [0.0, 2.0, 1.0])
  np.testing.assert_allclose(reference.sort([3.0, 1.0, 2.0], 0.1), [1.0, 2.0, 3.0])
  np.testing.assert_allclose(reference.sort([3.0, 1.0, 2.0], 0.1, descending=True), [3.0, 2.0, 1.0])
  # Everything pools at eps = 100: the L2 sort is the mean plus rho / eps centred.
  np.testing.assert_allclose(reference.sort([3.0, 1.0, 2.0], 100.0), [1.99, 2.0, 2.01])
  np.testing.assert_allclose(reference.ranks([0.0, 0.0, 5.0], 1.0), [0.5, 0.5, 2.0])
  np.testing.assert_allclose(reference.topk_mask([2.0, 0.0, 1.0], 1), [1.0, 0.0, 0.0])


# --- Against the reference ---------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["sort", "ranks"])
@pytest.mark.parametrize("regularization", REGULARIZATIONS)
@pytest.mark.parametrize("descending", [False, True])
def test_native_matches_reference_in_float64(x64, op, regularization, descending):
  for i, epsilon in enumerate(EPSILONS):
    x = rows_with_ties(i)
    got = getattr(otsort, op)(x, epsilon=epsilon, descending=descending, regularization=regularization, impl="native")
    assert got.dtype == jnp.float64
    want = reference_rows(op, x, epsilon=epsilon, kl=regularization == "kl", descending=descending)
    np.testing.assert_allclose(
      got, want, rtol=0, atol=1e-12 * projection_scale(op, x, epsilon), err_msg=f"epsilon={epsilon}"
    )


@pytest.mark.parametrize("op", ["sort", "ranks"])
@pytest.mark.parametrize("regularization", REGULARIZATIONS)
@pytest.mark.parametrize("descending", [False, True])
def test_native_matches_reference_in_float32(op, regularization, descending):
  for i, epsilon in enumerate(EPSILONS):
    x = rows_with_ties(i).astype(np.float32)
    got = getattr(otsort, op)(x, epsilon=epsilon, descending=descending, regularization=regularization, impl="native")
    assert got.dtype == jnp.float32
    want = reference_rows(op, x, epsilon=epsilon, kl=regularization == "kl", descending=descending)
    np.testing.assert_allclose(
      got, want, rtol=0, atol=1e-6 * projection_scale(op, x, epsilon), err_msg=f"epsilon={epsilon}"
    )


@pytest.mark.parametrize(
  "op,regularization,epsilon,descending",
  [("sort", "l2", 1e-2, False), ("sort", "kl", 1e2, True), ("ranks", "l2", 1.0, True), ("ranks", "kl", 0.1, False)],
)
def test_xla_matches_reference_in_float64(x64, op, regularization, epsilon, descending):
  x = rows_with_ties(7)
  got, _ = _value_and_vjp(op, 0, regularization, "xla", epsilon, descending)(x, np.zeros_like(x))
  want = reference_rows(op, x, epsilon=epsilon, kl=regularization == "kl", descending=descending)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * projection_scale(op, x, epsilon))


@pytest.mark.parametrize("regularization", REGULARIZATIONS)
def test_topk_mask_projection_matches_reference(x64, regularization):
  kl = regularization == "kl"
  z = 3.0 * rows_with_ties(11)
  for k in (1, 3, N - 1, N):
    got = scores_fn(kl, k, "native")(jnp.asarray(z))
    want = np.stack([reference.topk_mask(row, k, kl=kl) for row in z])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=f"k={k}")
    np.testing.assert_allclose(np.sum(got, axis=-1), k, rtol=1e-12)
    assert np.all((got >= 0) & (got <= 1 + 1e-12))


def test_topk_mask_projection_matches_reference_in_float32():
  z = (3.0 * rows_with_ties(12)).astype(np.float32)
  for kl in (False, True):
    got = scores_fn(kl, 2, "native")(jnp.asarray(z))
    want = np.stack([reference.topk_mask(row, 2, kl=kl) for row in z])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


# --- Invariants (hypothesis) -------------------------------------------------------------------------------

# Values on a coarse grid so that ties are frequent; a fixed shape so that each configuration compiles once.
_grid_rows = hnp.arrays(np.float32, (3, 6), elements=st.integers(-8, 8).map(lambda i: i / 2.0))
_epsilons = st.sampled_from([1e-2, 0.3, 1.0, 4.0])
_regularizations = st.sampled_from(REGULARIZATIONS)


@_hypothesis
@hypothesis.given(
  x=_grid_rows,
  perm_seed=st.integers(0, 2**31),
  epsilon=_epsilons,
  regularization=_regularizations,
  descending=st.booleans(),
)
def test_ranks_are_permutation_equivariant_and_sort_invariant(x, perm_seed, epsilon, regularization, descending):
  perm = np.random.default_rng(perm_seed).permutation(x.shape[-1])
  kwargs = dict(epsilon=epsilon, regularization=regularization, descending=descending)
  np.testing.assert_allclose(
    otsort.ranks(x[:, perm], **kwargs), otsort.ranks(x, **kwargs)[:, perm], rtol=1e-6, atol=1e-5
  )
  np.testing.assert_allclose(otsort.sort(x[:, perm], **kwargs), otsort.sort(x, **kwargs), rtol=1e-6, atol=1e-5)


@_hypothesis
@hypothesis.given(x=_grid_rows, epsilon=_epsilons, regularization=_regularizations, descending=st.booleans())
def test_soft_sort_output_is_sorted(x, epsilon, regularization, descending):
  out = np.asarray(otsort.sort(x, epsilon=epsilon, regularization=regularization, descending=descending))
  steps = np.diff(out, axis=-1) * (-1 if descending else 1)
  assert np.all(steps >= -1e-6 * (1 + 6 / epsilon)), out


@_hypothesis
@hypothesis.given(x=_grid_rows, epsilon=_epsilons, descending=st.booleans())
def test_l2_sort_keeps_the_row_sum_and_l2_ranks_sum_to_n_choose_2(x, epsilon, descending):
  n = x.shape[-1]
  out = otsort.sort(x, epsilon=epsilon, descending=descending)
  np.testing.assert_allclose(np.sum(out, -1), np.sum(x, -1), atol=1e-5 * (1 + n / epsilon))
  r = otsort.ranks(x, epsilon=epsilon, descending=descending)
  np.testing.assert_allclose(np.sum(r, -1), n * (n - 1) / 2, rtol=1e-6)
  assert np.all((np.asarray(r) >= -1e-6) & (np.asarray(r) <= n - 1 + 1e-5))


@_hypothesis
@hypothesis.given(
  x=hnp.arrays(np.float32, (3, 6), elements=st.floats(-4, 4, width=32)),
  epsilon=st.sampled_from([0.5, 1.0, 10.0]),
  descending=st.booleans(),
)
def test_kl_ranks_stay_above_minus_one(x, epsilon, descending):
  r = np.asarray(otsort.ranks(x, epsilon=epsilon, regularization="kl", descending=descending))
  assert np.all(r > -1), r
  np.testing.assert_allclose(np.sum(r, -1), 15.0, rtol=1e-5)  # the KL projection also lies in P(rho)


@_hypothesis
@hypothesis.given(x=_grid_rows, regularization=_regularizations, descending=st.booleans())
def test_small_epsilon_gives_the_hard_sort_and_hard_ranks_with_mean_ranks_for_ties(x, regularization, descending):
  kwargs = dict(epsilon=1e-3, regularization=regularization, descending=descending)
  hard_sort = -np.sort(-x, axis=-1) if descending else np.sort(x, axis=-1)
  np.testing.assert_allclose(otsort.sort(x, **kwargs), hard_sort, atol=1e-6)
  hard = np.stack([reference.hard_ranks(row, descending=descending) for row in x])
  np.testing.assert_allclose(otsort.ranks(x, **kwargs), hard, atol=1e-5)


@_hypothesis
@hypothesis.given(x=_grid_rows, descending=st.booleans())
def test_large_epsilon_collapses_to_the_mean(x, descending):
  n, epsilon = x.shape[-1], 1e5
  mean = np.mean(x, axis=-1, keepdims=True)
  np.testing.assert_allclose(
    otsort.sort(x, epsilon=epsilon, descending=descending), np.broadcast_to(mean, x.shape), atol=1e-4
  )
  np.testing.assert_allclose(
    otsort.ranks(x, epsilon=epsilon, descending=descending), np.full(x.shape, (n - 1) / 2), atol=1e-3
  )
  # KL: ranks also go to (n - 1) / 2; the sort goes to the log-mean-exp of the row.
  np.testing.assert_allclose(
    otsort.ranks(x, epsilon=epsilon, regularization="kl", descending=descending),
    np.full(x.shape, (n - 1) / 2),
    atol=1e-3,
  )
  log_mean_exp = np.log(np.mean(np.exp(x.astype(np.float64) * (1 if descending else -1)), -1, keepdims=True))
  np.testing.assert_allclose(
    otsort.sort(x, epsilon=epsilon, regularization="kl", descending=descending),
    np.broadcast_to(log_mean_exp * (1 if descending else -1), x.shape),
    atol=1e-4,
  )


# --- Native kernel against the pure-JAX twin ---------------------------------------------------------------


def _api_op(op: str, regularization: str, impl: str, epsilon: float = 0.5, descending: bool = False):
  fn = {"sort": otsort.sort, "ranks": otsort.ranks}[op]
  return functools.partial(fn, epsilon=epsilon, regularization=regularization, impl=impl, descending=descending)


def _make_op(op: str, k: int, regularization: str, impl: str, epsilon: float = 0.5, descending: bool = False):
  if op == "topk":
    return scores_fn(regularization == "kl", k, impl)
  return _api_op(op, regularization, impl, epsilon=epsilon, descending=descending)


@functools.cache
def _value_and_vjp(op: str, k: int, regularization: str, impl: str, epsilon: float = 0.5, descending: bool = False):
  """``(x, cotangent) -> (op(x), vjp of op at x applied to cotangent)``: compiled once per configuration for
  the pure-JAX solver, eager for the native kernel (cheaper than compiling)."""
  fn = _make_op(op, k, regularization, impl, epsilon, descending)

  def run(x, cotangent):
    y, pullback = jax.vjp(fn, jnp.asarray(x))
    return y, pullback(jnp.asarray(cotangent, y.dtype))[0]

  return jax.jit(run) if impl == "xla" else run


_FOUR_OPS = [("sort", 0), ("ranks", 0), ("topk", 2), ("topk", 6)]


@pytest.mark.parametrize("op,k", _FOUR_OPS)
@pytest.mark.parametrize("regularization", REGULARIZATIONS)
def test_native_and_xla_agree_on_values_and_vjps(op, k, regularization):
  x = rows_with_ties(20 + k, scale=2.0).astype(np.float32)
  x[1, :3] = [0.0, -0.0, 0.0]  # signed zeros are ties too
  cotangent = np.random.default_rng(1).normal(size=x.shape)
  y_native, g_native = _value_and_vjp(op, k, regularization, "native")(x, cotangent)
  y_xla, g_xla = _value_and_vjp(op, k, regularization, "xla")(x, cotangent)
  np.testing.assert_allclose(y_native, y_xla, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g_native, g_xla, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op,regularization", [("sort", "kl"), ("ranks", "l2")])
def test_native_and_xla_agree_on_long_rows_with_ties(op, regularization):
  # n > 64 takes the native radix sort instead of its insertion sort.
  x = np.round(rows_with_ties(30, batch=2, n=100, scale=3.0), 1).astype(np.float32)
  cotangent = np.random.default_rng(2).normal(size=x.shape)
  y_native, g_native = _value_and_vjp(op, 0, regularization, "native", 0.5, True)(x, cotangent)
  y_xla, g_xla = _value_and_vjp(op, 0, regularization, "xla", 0.5, True)(x, cotangent)
  np.testing.assert_allclose(y_native, y_xla, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(g_native, g_xla, rtol=1e-5, atol=1e-4)


# --- Derivatives -------------------------------------------------------------------------------------------

_DISTINCT = np.array([[0.3, -1.2, 0.9, 0.1, -0.4], [1.0, 0.2, -0.5, 0.7, -1.1]])  # no ties: unique derivative

# Epsilons (and a scale for the top-k scores) at which the rows of _DISTINCT pool into blocks of mixed sizes, so
# that the derivatives checked are neither those of a permutation nor of one global average.
_POOLING_EPSILON = {("sort", "l2"): 1.5, ("sort", "kl"): 1.5, ("ranks", "l2"): 0.5, ("ranks", "kl"): 1.0}
_DERIVATIVE_CONFIGS = [
  (op, k, regularization) for op, k in [("sort", 0), ("ranks", 0), ("topk", 2)] for regularization in REGULARIZATIONS
]


def _derivative_op(op: str, k: int, regularization: str, impl: str):
  if op == "topk":
    fn = scores_fn(regularization == "kl", k, impl)
    return lambda z: fn(3.0 * z)
  return _api_op(op, regularization, impl, epsilon=_POOLING_EPSILON[op, regularization])


@pytest.mark.parametrize("op,k,regularization", _DERIVATIVE_CONFIGS)
def test_derivatives_match_finite_differences_to_second_order(x64, op, k, regularization):
  fn = _derivative_op(op, k, regularization, "native")
  x = jnp.asarray(_DISTINCT)
  jacobian = np.asarray(jax.vmap(jax.jacfwd(lambda row: fn(row[None])[0]))(x))
  block_sizes = np.sum(np.abs(jacobian) > 1e-9, axis=-1)  # an output depends on exactly the inputs of its block
  assert np.any((np.max(block_sizes, -1) > 1) & (np.min(block_sizes, -1) < x.shape[-1])), block_sizes
  test_util.check_grads(fn, (x,), order=2, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


def test_xla_derivatives_match_finite_differences_to_second_order(x64):
  # The derivative rules are shared by both solvers (the native ones are checked above); the pure-JAX solver is
  # checked once here, on the operation whose derivative is the hardest: the KL soft sort.
  fn = jax.jit(_derivative_op("sort", 0, "kl", "xla"))
  test_util.check_grads(fn, (jnp.asarray(_DISTINCT),), order=2, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


# At epsilon = 1.5 the soft sorts of this row pool values in blocks of 2 and 3.
_POOLING_POINT = np.array([0.4, -1.3, 2.1, 0.0, 0.9, -0.2])


def test_xla_second_derivatives_equal_the_native_ones_for_all_operations(x64):
  # check_grads runs on every native operation above and on one pure-JAX one; here the pure-JAX solver's block
  # structure feeds the second derivatives of all six operations, compared with the native ones in one program.
  def hessians(impl):
    def all_six(x):
      weights = jnp.arange(1.0, x.shape[-1] + 1)

      def loss(fn):
        return lambda v: jnp.sum(weights * fn(v[None])[0])

      losses = [loss(_derivative_op(op, k, reg, impl)) for op, k, reg in _DERIVATIVE_CONFIGS]
      return [jax.vmap(jax.hessian(loss))(x) for loss in losses]

    return jax.jit(all_six)(jnp.asarray(_DISTINCT))

  for config, native, xla in zip(_DERIVATIVE_CONFIGS, hessians("native"), hessians("xla")):
    np.testing.assert_allclose(xla, native, rtol=1e-10, atol=1e-10, err_msg=str(config))
    if config[2] == "kl":
      assert np.max(np.abs(native)) > 1e-3, config


def _central_differences(fn, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
  return np.stack([(fn(x + h * e) - fn(x - h * e)) / (2 * h) for e in np.eye(len(x))], axis=1)


@pytest.mark.parametrize("impl,descending", [("native", False), ("native", True), ("xla", False)])
def test_kl_soft_sort_jacobian_matches_finite_differences_of_the_reference(x64, impl, descending):
  # Blondel et al.'s reference code differentiated the KL soft sort wrongly; ours must match the definition.
  x, epsilon = _POOLING_POINT, 1.5
  fn = _api_op("sort", "kl", impl, epsilon=epsilon, descending=descending)
  jacobian = jax.jacrev(jax.jit(fn) if impl == "xla" else fn)(jnp.asarray(x))
  fd = _central_differences(lambda v: reference.sort(v, epsilon, kl=True, descending=descending), x)
  assert np.sum(np.abs(fd) > 1e-3) > len(x), "the test point must pool some values"
  np.testing.assert_allclose(jacobian, fd, atol=1e-7)


@pytest.mark.parametrize("op", ["sort", "ranks"])
@pytest.mark.parametrize("regularization", REGULARIZATIONS)
def test_jacobians_match_finite_differences_of_the_reference(x64, op, regularization):
  x, epsilon = _POOLING_POINT, 1.5
  kl = regularization == "kl"
  fn = {"sort": reference.sort, "ranks": reference.ranks}[op]
  jacobian = jax.jacfwd(_api_op(op, regularization, "native", epsilon=epsilon))(jnp.asarray(x))
  np.testing.assert_allclose(jacobian, _central_differences(lambda v: fn(v, epsilon, kl=kl), x), atol=1e-7)


# --- Numerical robustness ----------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kl_is_finite_with_tiny_epsilon_and_huge_inputs(impl, dtype):
  x = rows_with_ties(60, scale=1e6)
  x[1, :4] = [1e6, -1e6, 1e-3, 1e-3]
  with jax.enable_x64(dtype == "float64"):
    x = x.astype(dtype)
    cotangent = np.random.default_rng(4).normal(size=x.shape)
    for op in ("sort", "ranks"):
      y, g = _value_and_vjp(op, 0, "kl", impl, 1e-6)(x, cotangent)
      assert y.dtype == x.dtype and g.dtype == x.dtype
      assert np.all(np.isfinite(y)) and np.all(np.isfinite(g)), (op, y, g)
      if dtype == "float64":
        want = reference_rows(op, x, epsilon=1e-6, kl=True)
        np.testing.assert_allclose(y, want, rtol=0, atol=1e-12 * projection_scale(op, x, 1e-6))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_value_spoils_only_its_own_row(impl, bad):
  x = rows_with_ties(50).astype(np.float32)
  x_bad = x.copy()
  x_bad[2, 3] = bad
  cotangent = np.random.default_rng(3).normal(size=x.shape)
  others = np.array([0, 1, 3, 4, 5])
  for op in ("sort", "ranks"):
    for regularization in REGULARIZATIONS:
      run = _value_and_vjp(op, 0, regularization, impl)
      y, g = map(np.asarray, run(x, cotangent))
      y_bad, g_bad = map(np.asarray, run(x_bad, cotangent))
      assert np.all(np.isnan(y_bad[2])), (op, regularization, y_bad)
      np.testing.assert_array_equal(y_bad[others], y[others])
      np.testing.assert_array_equal(g_bad[others], g[others])
