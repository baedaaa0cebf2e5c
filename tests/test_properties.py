"""Property tests (hypothesis) of every public function: what must hold for any input (issue 14, item 7).

For ``sort``, ``ranks``, ``quantile``, ``topk`` and ``topk_mask`` on both backends (``pav`` with both solvers,
``impl="native"`` and ``impl="xla"``, and both regularizations), the sinkhorn-only ``quantize``, ``sort_with`` and
``quantile_normalization``, the losses and the filters, over inputs drawn across dtypes, scales (1e-30 to 1e30 in
float32, 1e-300 to 1e300 in float64), epsilons, ties and non-finite entries:

- finite in, finite out: values, gradients in ``x`` and (where the true value is representable) in ``epsilon``;
- a row holding a NaN or an infinity changes no other row's values or gradients (and, where documented, comes out
  NaN);
- the native kernel and the pure-JAX solver agree, values and gradients, within the rounding of the projection;
- invariants: the soft sort is sorted, permutation-invariant and keeps the L2 row sum; soft ranks are
  permutation-equivariant, in ``[0, n - 1]`` and sum to ``n (n - 1) / 2``; the top-k mask is in ``[0, 1]`` and
  sums to ``k``; pav results depend on ``x / epsilon`` only (exact under scaling by a power of two) and sinkhorn's
  are scale-free in ``x``; all reach the hard operations as ``epsilon -> 0``;
- bad arguments raise a ``TypeError`` or ``ValueError`` whose message names the argument, eagerly and under
  ``jit``.

Bugs this module found are kept as regression rows (``_REGRESSIONS``): each configuration a bug affected checks
its reproducer first, whatever examples hypothesis draws (its draws change between versions even when
derandomized).

Cost model: the module's time is XLA compiles, one per (function, backend, options, dtype, shape). Every value
test therefore runs on one fixed shape ``[ROWS, N]`` with fixed static arguments (``K``, ``Q``), passes
``epsilon`` as a traced operand (one value per row), and gets values and both gradients from one jitted function
per configuration (:func:`_compiled`), shared by all the tests and examples that use it. Hypothesis is
derandomized (the same examples on every run) with a small ``max_examples``.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import re
from typing import Any

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import otsort

ROWS, N = 3, 8  # the shape of every compiled call
K = 3  # top-k
Q = (0.0, 0.3, 0.5, 1.0)  # quantile levels
NUM_LEVELS = 3  # quantize
TARGETS = np.array([-1.0, 0.0, 0.5, 2.0])  # quantile_normalization
FEATURES = 2  # sort_with's values [ROWS, N, FEATURES]

# Generate only: no "explain" phase (it traces every line of the failing examples with sys.settrace, minutes through
# JAX), and no shrinking (hundreds of extra calls per failure); a failure prints its example as drawn, and
# derandomize=True draws the same examples on every run.
_settings = functools.partial(
  hypothesis.settings,
  deadline=None,
  derandomize=True,
  database=None,
  phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
  suppress_health_check=[hypothesis.HealthCheck.too_slow, hypothesis.HealthCheck.function_scoped_fixture],
)


def _fixed(shape: tuple[int, ...], seed: int) -> np.ndarray:
  """A fixed float64 array (cotangents, targets, sort_with values): the same on every run."""
  return np.random.default_rng(seed).uniform(-1, 1, size=shape)


# ---------------------------------------------------------------------------------------------------------------
# The functions under test, as rows [ROWS, N] -> [ROWS, ...] with epsilon [ROWS] (one value per row).


def _pred_target(x, epsilon, fn, **kw):
  target = jnp.asarray(_fixed((ROWS, N), 1), x.dtype)
  return fn(x, target, epsilon=epsilon, **kw)


def _labels() -> np.ndarray:
  return np.arange(ROWS) % N


# name -> (function of (x, epsilon, **options), backends it exists on)
OPS: dict[str, tuple[Callable[..., jax.Array], tuple[str, ...]]] = {
  "sort": (lambda x, e, **kw: otsort.sort(x, epsilon=e, **kw), ("pav", "sinkhorn")),
  "ranks": (lambda x, e, **kw: otsort.ranks(x, epsilon=e, **kw), ("pav", "sinkhorn")),
  "quantile": (lambda x, e, **kw: otsort.quantile(x, list(Q), epsilon=e, **kw), ("pav", "sinkhorn")),
  "topk": (lambda x, e, **kw: otsort.topk(x, K, epsilon=e, **kw), ("pav", "sinkhorn")),
  "topk_mask": (lambda x, e, **kw: otsort.topk_mask(x, K, epsilon=e, **kw), ("pav", "sinkhorn")),
  "quantize": (lambda x, e, **kw: otsort.quantize(x, NUM_LEVELS, epsilon=e, **kw), ("sinkhorn",)),
  "sort_with": (
    lambda x, e, **kw: otsort.sort_with(x, jnp.asarray(_fixed((ROWS, N, FEATURES), 2), x.dtype), epsilon=e, **kw),
    ("sinkhorn",),
  ),
  "quantile_normalization": (
    lambda x, e, **kw: otsort.quantile_normalization(x, TARGETS, epsilon=e, **kw),
    ("sinkhorn",),
  ),
  "spearman_loss": (lambda x, e, **kw: _pred_target(x, e, otsort.losses.spearman_loss, **kw), ("pav", "sinkhorn")),
  "spearman_correlation_soft": (
    lambda x, e, **kw: _pred_target(x, e, otsort.losses.spearman_correlation, target_soft=True, **kw),
    ("pav",),
  ),
  "soft_error": (lambda x, e, **kw: otsort.losses.soft_error(x, _labels(), epsilon=e, **kw), ("pav", "sinkhorn")),
  "soft_topk_error": (lambda x, e, **kw: otsort.losses.soft_topk_error(x, _labels(), K, epsilon=e, **kw), ("pav",)),
}

# A configuration: (op, backend, options as sorted (name, value) pairs, dtype name).
PAV_OPTIONS = [(("impl", impl), ("regularization", reg)) for impl in ("native", "xla") for reg in ("l2", "kl")]
CORE = ("sort", "ranks", "quantile", "topk", "topk_mask")


def _configs() -> list[tuple[str, str, tuple, str]]:
  """Every public function once at least; both pav solvers and regularizations for the projections themselves
  (``sort``, ``ranks``, ``topk_mask``; ``quantile`` and ``topk`` read the soft sort); float64 where its range is
  the point (``1e300 / 1e-300``). About 40 compiles: ~0.7 s of CPU each for native pav, ~2 s for pure-JAX pav,
  ~4 s for sinkhorn."""
  configs = []
  native_l2, native_kl, xla_l2, xla_kl = PAV_OPTIONS
  for op in ("sort", "ranks", "topk_mask"):
    configs += [(op, "pav", options, "float32") for options in PAV_OPTIONS]
    configs += [(op, "pav", options, "float64") for options in (native_l2, xla_l2, native_kl)]
  configs += [
    ("quantile", "pav", native_l2, "float32"),
    ("quantile", "pav", native_kl, "float64"),
    ("topk", "pav", native_kl, "float32"),
    ("topk", "pav", native_l2, "float64"),
  ]
  configs += [(op, "sinkhorn", (), "float32") for op in CORE + ("quantize", "sort_with", "quantile_normalization")]
  configs += [
    ("spearman_loss", "pav", native_l2, "float32"),
    ("spearman_loss", "sinkhorn", (), "float32"),
    ("spearman_correlation_soft", "pav", native_kl, "float32"),
    ("soft_error", "pav", native_l2, "float32"),
    ("soft_topk_error", "pav", native_kl, "float32"),
  ]
  return configs


CONFIGS = _configs()


def _config_id(config) -> str:
  op, backend, options, dtype = config
  return "-".join([op, backend, *(value for _, value in options), dtype])


@functools.cache
def _compiled(op: str, backend: str, options: tuple, dtype: str) -> Callable:
  """``(x [ROWS, N], epsilon [ROWS]) -> (out, d/dx, d/depsilon)`` of ``sum(w * out)``, jitted once."""
  fn = OPS[op][0]

  def value_and_grads(x, epsilon):
    def loss(x, epsilon):
      out = fn(x, epsilon, backend=backend, **dict(options))
      w = jnp.asarray(_fixed(out.shape, 3), out.dtype)
      return jnp.sum(w * out), out

    (_, out), (gx, ge) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x, epsilon)
    return out, gx, ge

  return jax.jit(value_and_grads)


def _run(config, x: np.ndarray, epsilon: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Values and gradients of a configuration, as float64 NumPy arrays (under x64 for float64 configurations)."""
  op, backend, options, dtype = config
  with jax.enable_x64(dtype == "float64"):
    fn = _compiled(op, backend, options, dtype)
    out = fn(jnp.asarray(x, dtype), jnp.asarray(epsilon, dtype))
    return tuple(np.asarray(a, np.float64) for a in out)


def _assert_at_most(error: np.ndarray, allowed: np.ndarray, err_msg: str = "") -> None:
  """``error <= allowed`` elementwise (broadcast; NaN fails), else an AssertionError listing where."""
  error, allowed = np.broadcast_arrays(np.asarray(error, np.float64), np.asarray(allowed, np.float64))
  bad = ~(error <= allowed)
  if np.any(bad):
    where = np.argwhere(bad)[:5].tolist()
    raise AssertionError(
      f"{err_msg}: {int(bad.sum())} of {bad.size} entries exceed the tolerance, first at {where}: "
      f"error {error[bad][:5].tolist()} > allowed {allowed[bad][:5].tolist()}"
    )


# ---------------------------------------------------------------------------------------------------------------
# Inputs


def _max_exponent(dtype: str) -> int:
  return 30 if dtype == "float32" else 300


@st.composite
def finite_rows(draw, dtype: str, scale: bool = True) -> np.ndarray:
  """``[ROWS, N]`` finite values: per row, generic values, few distinct values (ties) or one value repeated,
  times a power of ten from ``1e-30`` to ``1e30`` (float32; ``1e-300`` to ``1e300`` in float64), plus an offset
  that may swamp the spread (near-ties, or exact ties after rounding)."""
  rows = []
  top = _max_exponent(dtype)
  for _ in range(ROWS):
    kind = draw(st.sampled_from(["generic", "ties", "constant"]))
    if kind == "generic":
      base = draw(hnp.arrays(np.float64, N, elements=st.floats(-1, 1, width=32)))
    elif kind == "ties":
      base = draw(hnp.arrays(np.float64, N, elements=st.integers(-2, 2))).astype(np.float64)
    else:
      base = np.full(N, draw(st.floats(-1, 1, width=32)))
    exponent = draw(st.integers(-top, top)) if scale else 0
    offset = draw(st.sampled_from([0.0, 0.0, 0.0, 1.0, 1e3, -1e6])) * 10.0**exponent
    rows.append(offset + base * 10.0**exponent)
  x = np.asarray(rows, dtype=np.dtype(dtype))
  hypothesis.assume(np.all(np.isfinite(x)))
  return x


def epsilons(dtype: str, low: int | None = None, high: int | None = None) -> st.SearchStrategy:
  """One positive finite epsilon per row, ``10**e`` with ``e`` uniform in ``[low, high]`` (default: the full
  scale range of the dtype, ``+-30`` in float32, ``+-300`` in float64)."""
  top = _max_exponent(dtype)
  low, high = -top if low is None else low, top if high is None else high
  exponent = st.floats(low, high, allow_nan=False)
  return hnp.arrays(np.float64, ROWS, elements=exponent).map(lambda e: (10.0**e).astype(np.dtype(dtype)))


def _eps_gradient_representable(x: np.ndarray, epsilon: np.ndarray, dtype: str) -> np.ndarray:
  """Rows whose epsilon-derivative is surely representable: it is at most ~ n^2 (1 + |x|) / epsilon^2."""
  big = np.finfo(np.dtype(dtype)).max * 1e-6
  with np.errstate(over="ignore", divide="ignore"):
    bound = N * N * (1 + np.max(np.abs(x), -1)) * (1 / epsilon.astype(np.float64) + 1 / epsilon.astype(np.float64) ** 2)
  return bound < big


# ---------------------------------------------------------------------------------------------------------------
# Finite in, finite out; NaN rows isolated


def _x_gradient_representable(config, x: np.ndarray, epsilon: np.ndarray) -> np.ndarray:
  """Rows whose x-gradient is surely representable. pav: always (it is at most ~ n / epsilon). sinkhorn: the
  z-score divides by ``std + 1e-10 max|x|`` (the guard is relative to the row's scale), so on a constant or nearly
  constant row the true x-gradient is up to ~ n^2 1e10 / (epsilon max|x|), beyond float32 at a tiny epsilon and a
  tiny row (``1e-20`` with epsilon ``1e-19``: ~1e50); such rows are left out, their values are still checked."""
  _, backend, _, dtype = config
  if backend == "pav":
    return np.ones(ROWS, bool)
  big = np.finfo(np.dtype(dtype)).max * 1e-6
  with np.errstate(over="ignore", divide="ignore"):
    top = np.max(np.abs(x.astype(np.float64)), -1)
    bound = N * N * 1e10 / (epsilon.astype(np.float64) * np.where(top > 0, top, 1.0))
  return bound < big


# Bugs found by this module (issue 14, item 1), each with the row and epsilon that reproduced it, all fixed by
# computing in the units of x instead of forming x / epsilon (pav_core.h, _isotonic_xla.py) and by the sinkhorn
# reduced cost's exact zeros on the monotone support (sinkhorn/_transport.py). Before the fix:
_OVERFLOW_XLA_F32 = (
  "x / epsilon overflowed float32 in the pure-JAX solver: otsort.ranks(jnp.array([[1e31, -1e31, 0.]]),"
  " epsilon=1e-8, impl='xla') -> [[nan nan 1.]] (topk_mask likewise)"
)
_OVERFLOW_F64 = (
  "x / epsilon overflowed float64 (native and xla): under x64, otsort.ranks(np.array([[1e300, -1e300, 0.]]),"
  " epsilon=1e-300) -> [[nan nan 1.]] (topk_mask likewise)"
)
_SINKHORN_QUANTILE_TINY_EPSILON = (
  "sinkhorn quantile NaN at a tiny float32 epsilon: x = np.float32([[-1.000002e-20, -9.99998e-21, -1e-20, -1e-20,"
  " -1.000002e-20, -1e-20, -1.000001e-20, -1e-20]]); otsort.quantile(x, [0., .3, .5, 1.], epsilon=6.24e-21,"
  " backend='sinkhorn') -> [[-1e-20 nan -1e-20 -1e-20]]"
)
_OVERFLOW_XLA_F32_KL = (
  "x / epsilon overflowed float32 in the pure-JAX KL solver: otsort.ranks(jnp.full((1, 8), -1e35), epsilon=4.4e-6,"
  " impl='xla', regularization='kl') -> all -1 (native: 3.5) with a NaN x-gradient (topk_mask likewise)"
)

# Each bug's reproducer as a row [N] and its epsilon.
_REGRESSIONS = {
  _OVERFLOW_XLA_F32: ([1e31, -1e31] + [0.0] * (N - 2), 1e-8),
  _OVERFLOW_F64: ([1e300, -1e300] + [0.0] * (N - 2), 1e-300),
  _SINKHORN_QUANTILE_TINY_EPSILON: (
    [-1.000002e-20, -9.99998e-21, -1e-20, -1e-20, -1.000002e-20, -1e-20, -1.000001e-20, -1e-20],
    6.24e-21,
  ),
  _OVERFLOW_XLA_F32_KL: ([-1e35] * N, 4.4e-6),
}


def _check_regression(config, bug: str | None, check) -> None:
  if bug is not None:
    row, epsilon = _REGRESSIONS[bug]
    dtype = np.dtype(config[3])
    check(config, np.tile(np.asarray(row, dtype), (ROWS, 1)), np.full(ROWS, epsilon, dtype))


def _finite_regression(config) -> str | None:
  op, backend, options, dtype = config
  options = dict(options)
  if backend == "pav" and op in ("ranks", "topk_mask"):
    if dtype == "float32" and options["impl"] == "xla":
      return _OVERFLOW_XLA_F32
    if dtype == "float64":
      return _OVERFLOW_F64
  if backend == "sinkhorn" and op == "quantile":
    return _SINKHORN_QUANTILE_TINY_EPSILON
  return None


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
@_settings(max_examples=20)
@hypothesis.given(data=st.data())
def test_finite_inputs_give_finite_values_and_gradients(config, data):
  dtype = config[3]
  _check_regression(config, _finite_regression(config), _assert_finite)
  x = data.draw(finite_rows(dtype), label="x")
  epsilon = data.draw(epsilons(dtype), label="epsilon")
  _assert_finite(config, x, epsilon)


def _assert_finite(config, x: np.ndarray, epsilon: np.ndarray) -> None:
  out, gx, ge = _run(config, x, epsilon)
  assert np.all(np.isfinite(out)), f"values not finite:\n{out}"
  rows = _x_gradient_representable(config, x, epsilon)
  assert np.all(np.isfinite(gx[rows])), f"x-gradient not finite in rows {np.flatnonzero(rows)}:\n{gx}"
  rows = _eps_gradient_representable(x, epsilon, config[3])
  assert np.all(np.isfinite(ge[rows])), f"epsilon-gradient not finite in rows {np.flatnonzero(rows)}:\n{ge}"


@st.composite
def poisoned(draw, x: np.ndarray) -> np.ndarray:
  """``x`` with NaN or infinities at 1 to N positions of row 0."""
  x = x.copy()
  positions = draw(st.lists(st.integers(0, N - 1), min_size=1, max_size=N, unique=True))
  for i in positions:
    x[0, i] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
  return x


# Where the documentation promises a NaN row (not only an isolated one): the pav operations and the losses.
_NAN_ROW_DOCUMENTED = {
  "pav": CORE + ("spearman_loss", "spearman_correlation_soft", "soft_error", "soft_topk_error"),
  "sinkhorn": ("spearman_loss", "soft_error"),
}


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
@_settings(max_examples=12)
@hypothesis.given(data=st.data())
def test_a_non_finite_row_changes_no_other_row(config, data):
  op, backend, _, dtype = config
  x = data.draw(finite_rows(dtype), label="x")
  bad = data.draw(poisoned(x), label="x with row 0 poisoned")
  epsilon = data.draw(epsilons(dtype, -3, 3), label="epsilon")
  clean, bad_out = _run(config, x, epsilon), _run(config, bad, epsilon)
  for name, c, b in zip(("values", "x-gradient", "epsilon-gradient"), clean, bad_out):
    np.testing.assert_array_equal(b[1:], c[1:], err_msg=f"{name} of the other rows changed")
  if op in _NAN_ROW_DOCUMENTED[backend]:
    assert np.all(np.isnan(bad_out[0][0])), f"the non-finite row did not come out NaN: {bad_out[0][0]}"


# ---------------------------------------------------------------------------------------------------------------
# Native kernel = pure JAX (pav)


def _projection_scale(op: str, x: np.ndarray, epsilon: np.ndarray, kl: bool = False) -> np.ndarray:
  """Per row, the magnitude of the numbers the projection works with, in the output's units: rounding errors
  are relative to it. The KL soft sort is computed in the log domain, ``out_i = z_i - LSE(z_B) + LSE(x_B)`` on each
  block B (z = (n, ..., 1) / epsilon): the log-sum-exps carry ``log |B| <= log n`` whatever the row's scale, so its
  rounding is relative to ``|x| + n / epsilon + log n`` (a constant row of 1e-24 comes out within ~1e-15 of itself
  in double, not within 1e-24 ulps: exp(1e-24) is 1 in any float)."""
  top = np.max(np.abs(x), -1)
  with np.errstate(over="ignore"):
    if op in ("ranks", "topk_mask"):  # x / epsilon onto the permutahedron of (n, ..., 1)
      return 1.0 + N + top / epsilon
    # (n, ..., 1) / epsilon onto the permutahedron of x
    return top + N / epsilon.astype(np.float64) + (np.log(N) if kl else 0.0)


def _is_kl(options: tuple) -> bool:
  return dict(options).get("regularization") == "kl"


def _agree_regression(config) -> str | None:
  op, _, options, dtype = config
  if op not in ("ranks", "topk_mask"):
    return None
  if dtype == "float64":
    return _OVERFLOW_F64
  return _OVERFLOW_XLA_F32_KL if _is_kl(options) else _OVERFLOW_XLA_F32


@pytest.mark.parametrize(
  "config", [c for c in CONFIGS if c[1] == "pav" and c[0] in CORE and c[2][0][1] == "xla"], ids=_config_id
)
@_settings(max_examples=20)
@hypothesis.given(data=st.data())
def test_native_kernel_and_pure_jax_agree(config, data):
  _check_regression(config, _agree_regression(config), _assert_agree)
  x = data.draw(finite_rows(config[3]), label="x")
  epsilon = data.draw(epsilons(config[3], -8, 8), label="epsilon")
  _assert_agree(config, x, epsilon)


def _assert_agree(config, x: np.ndarray, epsilon: np.ndarray) -> None:
  op, backend, options, dtype = config
  native = (op, backend, (("impl", "native"), options[1]), dtype)
  ulp = float(np.finfo(np.dtype(dtype)).eps)
  scale = _projection_scale(op, x, epsilon, _is_kl(options))[:, None]
  want, got = _run(native, x, epsilon), _run(config, x, epsilon)
  _assert_at_most(np.abs(got[0] - want[0]), 64 * N * ulp * scale, err_msg="values differ")
  # Both gradients are at most ~ scale / epsilon (+ 1 for the sort's x-gradient, block averages of 1).
  reference = scale[:, 0] / epsilon.astype(np.float64) + 1
  for name, w, g in zip(("x-gradient", "epsilon-gradient"), want[1:], got[1:]):
    size = np.max(np.abs(w).reshape(ROWS, -1), -1) + reference
    _assert_at_most(np.abs(g - w), 1024 * N * ulp * size.reshape(ROWS, *(1,) * (w.ndim - 1)), err_msg=f"{name}s differ")


# ---------------------------------------------------------------------------------------------------------------
# Invariants


def _relative_epsilons(draw, x: np.ndarray, config) -> np.ndarray:
  """An epsilon per row on the row's own scale. pav ranks and masks (``x / epsilon``): ``10**[-4, 2]`` times the
  row's largest magnitude; pav sort, quantile, top-k (``(n, ..., 1) / epsilon`` onto the values, so
  ``sort(c x, epsilon / c) = c sort(x, epsilon)``): ``10**[-2, 4]`` over it; sinkhorn (the squashed row):
  ``10**[-3, 0]``."""
  op, backend, _, dtype = config
  if backend == "sinkhorn":
    return draw(epsilons(dtype, -3, 0), label="epsilon")
  size = np.max(np.abs(x.astype(np.float64)), -1)
  size = np.where(size > np.finfo(np.dtype(dtype)).tiny * 1e6, size, 1.0)
  if op in ("ranks", "topk_mask"):
    relative = draw(hnp.arrays(np.float64, ROWS, elements=st.floats(-4, 2)), label="log10 epsilon / max|x|")
    return (size * 10.0**relative).astype(np.dtype(dtype))
  relative = draw(hnp.arrays(np.float64, ROWS, elements=st.floats(-2, 4)), label="log10 epsilon max|x|")
  return (10.0**relative / size).astype(np.dtype(dtype))


def _tolerance(config, x: np.ndarray, epsilon: np.ndarray) -> np.ndarray:
  """Per row ``[ROWS, 1]``: pav, rounding of the projection; sinkhorn, the solver's threshold (1e-3 of the mass)
  in the output's units (ranks: n; values: the row's spread)."""
  op, backend, options, dtype = config
  if backend == "pav":
    return 64 * N * float(np.finfo(np.dtype(dtype)).eps) * _projection_scale(op, x, epsilon, _is_kl(options))[:, None]
  if op in ("ranks", "topk_mask"):
    return np.full((ROWS, 1), 0.05 * N)
  if op == "quantile_normalization":
    return np.full((ROWS, 1), 0.05 * np.ptp(TARGETS))
  spread = np.ptp(x.astype(np.float64), -1)[:, None]
  return 0.05 * spread + 64 * float(np.finfo(np.dtype(dtype)).eps) * np.max(np.abs(x), -1)[:, None]


@pytest.mark.parametrize(
  "config", [c for c in CONFIGS if c[0] in CORE + ("quantize", "quantile_normalization")], ids=_config_id
)
@_settings(max_examples=15)
@hypothesis.given(data=st.data())
def test_invariants(config, data):
  """Sorted, permutation-invariant (equivariant) outputs, within their ranges, keeping the sums they keep."""
  op, backend, options, dtype = config
  x = data.draw(finite_rows(dtype), label="x")
  epsilon = _relative_epsilons(data.draw, x, config)
  perm = data.draw(st.permutations(range(N)), label="permutation")
  out = _run(config, x, epsilon)[0]
  permuted = _run(config, x[:, perm], epsilon)[0]
  tol = _tolerance(config, x, epsilon)
  lo, hi = np.min(x, -1, keepdims=True).astype(np.float64), np.max(x, -1, keepdims=True).astype(np.float64)
  equivariant = op in ("ranks", "topk_mask", "quantize", "quantile_normalization")
  _assert_at_most(
    np.abs(permuted - (out[:, perm] if equivariant else out)),
    tol + 1e-300,
    err_msg="not permutation-" + ("equivariant" if equivariant else "invariant"),
  )
  l2 = backend == "pav" and dict(options)["regularization"] == "l2"
  if op == "sort":
    assert np.all(np.diff(out, axis=-1) >= -tol), f"soft sort not sorted:\n{out}"
    if l2:
      _assert_at_most(
        np.abs(out.sum(-1) - x.astype(np.float64).sum(-1)), N * tol[:, 0], err_msg="L2 soft sort changed the row sum"
      )
  if op in ("quantile", "topk", "sort", "quantize"):
    assert np.all((out >= lo - tol) & (out <= hi + tol)), f"{op} left [min(x), max(x)]:\n{out}"
    step = np.diff(out, axis=-1) * (-1 if op == "topk" else 1)
    if op != "quantize":
      assert np.all(step >= -tol), f"{op} not monotone:\n{out}"
  if op == "ranks":
    assert np.all((out >= -tol) & (out <= N - 1 + tol)), f"ranks left [0, n - 1]:\n{out}"
    _assert_at_most(np.abs(out.sum(-1) - N * (N - 1) / 2), N * tol[:, 0], err_msg="sum of ranks")
  if op == "topk_mask":
    assert np.all((out >= -tol) & (out <= 1 + tol)), f"top-k mask left [0, 1]:\n{out}"
    _assert_at_most(np.abs(out.sum(-1) - K), N * tol[:, 0] / N, err_msg="top-k mask mass")
  if op == "quantile_normalization":
    assert np.all((out >= TARGETS.min() - 0.05) & (out <= TARGETS.max() + 0.05)), f"left the targets' range:\n{out}"
    order = np.argsort(x, -1, kind="stable")
    ordered = np.take_along_axis(out, order, -1)
    assert np.all(np.diff(ordered, axis=-1) >= -0.05), f"quantile normalization does not keep the order:\n{out}"


_POWERS = {"float32": 60, "float64": 800}


def _feasible_powers(dtype: str, quantities: list[tuple[np.ndarray, int]]) -> tuple[int, int]:
  """The ``j`` in ``[-_POWERS, _POWERS]`` for which every non-zero ``|a| 2**(j p)`` of the ``(a, p)`` given stays in
  the normal range with a margin of the mantissa's width: the scaling law is exact in real arithmetic, and in
  floating point only while nothing overflows or goes subnormal (at ``2**530`` a float64 epsilon-gradient that
  scales by ``c**2`` overflows; at ``2**-365`` values near 1e-110 lose digits as subnormals)."""
  info = np.finfo(np.dtype(dtype))
  margin = info.nmant + 1
  low, high = np.log2(float(info.tiny)) + margin, np.log2(float(info.max)) - margin
  lo, hi = -_POWERS[dtype], _POWERS[dtype]
  for a, p in quantities:
    a = np.abs(np.asarray(a, np.float64))
    a = a[(a > 0) & np.isfinite(a)]
    if p == 0 or a.size == 0:
      continue
    small, large = np.log2(a.min()), np.log2(a.max())
    bounds = sorted(((low - small) / p, (high - large) / p))
    lo, hi = max(lo, int(np.ceil(bounds[0]))), min(hi, int(np.floor(bounds[1])))
  return (lo, hi) if lo <= hi else (0, 0)


def _two_sum_exact(x: np.ndarray, a: float) -> np.ndarray:
  """Rows where ``x + a`` rounds nothing (the TwoSum error term is 0 in the array's dtype)."""
  a = np.asarray(a, x.dtype)
  s = x + a
  b = s - x
  return np.all((x - (s - b)) + (a - b) == 0, -1)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c[0] in CORE], ids=_config_id)
@_settings(max_examples=10)
@hypothesis.given(data=st.data())
def test_scaling_by_a_power_of_two(config, data):
  """Exact homogeneity, checked at extreme scales for accuracy, not only finiteness. pav ranks and masks depend on
  ``x / epsilon`` only: ``f(c x, c epsilon) = f(x, epsilon)``; pav L2 sort, quantile and top-k project
  ``(n, ..., 1) / epsilon`` onto the values: ``f(c x, epsilon / c) = c f(x, epsilon)``. sinkhorn is scale-free in
  ``x`` (epsilon acts on the squashed row): ``f(c x, epsilon) = c**p f(x, epsilon)``, p = 1 for sort-like outputs,
  0 for ranks and masks. ``c = 2**j``, so the scaling itself rounds nothing, with ``j`` limited to where no input,
  value or gradient of either call overflows or goes subnormal (:func:`_feasible_powers`). Gradients scale
  accordingly (the sinkhorn gradients of a constant row are left out: there the z-score's ``std + 1e-10`` is not
  scale-free).

  The KL soft sort (and its quantile and top-k) is not homogeneous: on a block B it is
  ``out_i = z_i - LSE(z_B) + LSE(x_B)``, z = (n, ..., 1) / epsilon, and ``LSE(c v) != c LSE(v)`` (n = 2, x = (1, 0),
  a large epsilon, one block: ``log((e + 1) / 2) = 0.62``, and at c = 2, ``log((e**2 + 1) / 2) = 1.43``, not 1.24).
  What it keeps exactly is translation, ``LSE(x + a) = LSE(x) + a``: ``f(x + a, epsilon) = f(x, epsilon) + a`` with
  unchanged gradients, checked instead (gradients where ``x + a`` rounds nothing: a rounded shift can move a tie,
  where the Jacobian jumps)."""
  op, backend, options, dtype = config
  x = data.draw(finite_rows(dtype, scale=False), label="x")
  epsilon = _relative_epsilons(data.draw, x, config)
  sort_like = op in ("sort", "quantile", "topk")
  kl = _is_kl(options)
  base = _run(config, x, epsilon)
  tol = _tolerance(config, x, epsilon)
  ulp = float(np.finfo(np.dtype(dtype)).eps)
  reference = (
    _projection_scale(op, x, epsilon, kl) / epsilon.astype(np.float64) + 1
    if backend == "pav"
    else N + np.max(np.abs(x.astype(np.float64)), -1)
  )
  checked = np.ones(ROWS, bool) if backend == "pav" else np.ptp(x, -1) > 0

  def gradient_allowed(b):
    size = np.max(np.abs(b).reshape(ROWS, -1), -1) + reference
    return 1024 * N * ulp * size.reshape(ROWS, *(1,) * (b.ndim - 1))

  if backend == "pav" and sort_like and kl:
    a = data.draw(st.sampled_from([-1.0, 1.0]), label="sign") * 2.0 ** data.draw(st.integers(-4, 4), label="log2 a")
    shifted = _run(config, (x + np.asarray(a, x.dtype)).astype(x.dtype), epsilon)
    shifted_x = np.abs(x.astype(np.float64)) + abs(a)
    # Both calls round relative to their own scale, and x + a itself rounds by half an ulp of |x| + |a|.
    allowed = tol + _tolerance(config, shifted_x, epsilon) + ulp * np.max(shifted_x, -1, keepdims=True)
    _assert_at_most(
      np.abs(shifted[0] - a - base[0]),
      np.broadcast_to(allowed, base[0].shape),
      err_msg=f"values not translated by a = {a}",
    )
    exact = _two_sum_exact(x, a)
    for name, b, s in zip(("x-gradient", "epsilon-gradient"), base[1:], shifted[1:]):
      _assert_at_most(
        np.abs(s - b)[exact],
        np.broadcast_to(gradient_allowed(b), b.shape)[exact],
        err_msg=f"{name} changed by the translation a = {a}",
      )
    return

  if backend == "pav" and sort_like:  # out(c x, e / c) = c out(x, e): d/dx by c**0, d/de by c**2
    epsilon_power, powers = -1, (1, 0, 2)
  elif backend == "pav":  # out(c x, c e) = out(x, e): d/dx and d/de by c**-1
    epsilon_power, powers = 1, (0, -1, -1)
  else:  # out(c x, e) = c**p out(x, e)
    epsilon_power, powers = 0, ((1, 0, 1) if sort_like else (0, -1, 0))
  quantities = [(x, 1), (epsilon, epsilon_power), (tol, powers[0])] + list(zip(base, powers))
  j = data.draw(st.integers(*_feasible_powers(dtype, quantities)), label="j")
  scaled_epsilon = np.ldexp(epsilon, j * epsilon_power).astype(epsilon.dtype)
  scaled = _run(config, np.ldexp(x, j).astype(x.dtype), scaled_epsilon)
  for name, b, s, p in zip(("values", "x-gradient", "epsilon-gradient"), base, scaled, powers):
    allowed = tol if name == "values" else gradient_allowed(b)
    rows = np.ones(ROWS, bool) if name == "values" else checked
    _assert_at_most(
      np.abs(np.ldexp(s, -j * p) - b)[rows],
      np.broadcast_to(allowed, b.shape)[rows],
      err_msg=f"{name} not scaled by c**{p}, c = 2**{j}",
    )


# ---------------------------------------------------------------------------------------------------------------
# The hard limit


def _average_ranks(x: np.ndarray) -> np.ndarray:
  """0-based ranks, ties sharing the mean of their ranks (``scipy.stats.rankdata(x) - 1`` per row)."""
  s = np.sort(x, -1)
  left = np.stack([np.searchsorted(s[i], x[i], "left") for i in range(x.shape[0])])
  right = np.stack([np.searchsorted(s[i], x[i], "right") for i in range(x.shape[0])])
  return (left + right - 1) / 2


def _hard(op: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The hard operation on rows, and a mask of the entries it defines (a top-k mask with a tie across the k-th
  place, a rank with ties under KL, are not defined)."""
  x = x.astype(np.float64)
  defined = np.ones((ROWS, 1), bool)
  if op == "sort":
    return np.sort(x, -1), defined
  if op == "ranks":
    return _average_ranks(x), defined
  if op == "quantile":
    return np.quantile(x, Q, axis=-1).T, defined
  if op == "topk":
    return -np.sort(-x, -1)[:, :K], defined
  if op == "topk_mask":
    s = -np.sort(-x, -1)
    return (x >= s[:, K - 1 : K]).astype(np.float64), s[:, K - 1 : K] > s[:, K : K + 1]
  if op == "sort_with":
    order = np.argsort(x, -1, kind="stable")
    return np.take_along_axis(_fixed((ROWS, N, FEATURES), 2), order[..., None], 1), defined
  if op == "sort_with_topk":
    order = np.argsort(-x, -1, kind="stable")[:, :K]
    return np.take_along_axis(_fixed((ROWS, N, FEATURES), 2), order[..., None], 1), defined
  if op == "quantile_normalization":  # N = 8 values onto 4 targets of mass 1/4: two values per target
    ranks = np.argsort(np.argsort(x, -1, kind="stable"), -1, kind="stable")
    return TARGETS[ranks // (N // len(TARGETS))], defined
  raise AssertionError(op)


@st.composite
def separated_rows(draw, dtype: str) -> np.ndarray:
  """Rows of distinct values one unit apart (a permutation of ``0 .. n - 1``), with ties when drawn (a value
  repeated), scaled by ``10**[-30, 30]`` (float32) and offset: the hard operations are defined and the gaps known."""
  rows = []
  top = _max_exponent(dtype) // 2
  for _ in range(ROWS):
    row = np.asarray(draw(st.permutations(range(N))), np.float64)
    if draw(st.booleans()):
      i, j = draw(st.lists(st.integers(0, N - 1), min_size=2, max_size=2, unique=True))
      row[i] = row[j]
    scale = 10.0 ** draw(st.integers(-top, top))
    rows.append(draw(st.sampled_from([0.0, 1.0, -100.0])) * scale + row * scale)
  return np.asarray(rows, np.dtype(dtype))


_LIMIT_CONFIGS = [c for c in CONFIGS if c[0] in CORE or c[0] in ("sort_with", "quantile_normalization")]


@pytest.mark.parametrize("config", _LIMIT_CONFIGS, ids=_config_id)
@_settings(max_examples=10)
@hypothesis.given(data=st.data())
def test_epsilon_to_zero_gives_the_hard_operation(config, data):
  op, backend, options, dtype = config
  x = data.draw(separated_rows(dtype), label="x")
  gap = np.array([np.min(np.diff(np.unique(row.astype(np.float64)))) for row in x])
  if backend == "pav" and op in ("ranks", "topk_mask"):
    epsilon = (gap / (4 * N)).astype(x.dtype)  # no two distinct values of x / epsilon closer than 4 n
    tol = _tolerance(config, x, epsilon)
  elif backend == "pav":  # hard when every gap of x is below 1 / epsilon
    epsilon = (1 / (4 * N * np.ptp(x.astype(np.float64), -1))).astype(x.dtype)
    tol = _tolerance(config, x, epsilon)
  else:
    epsilon = np.full(ROWS, 1e-3, x.dtype)  # the squashed rows have gaps of ~0.05 or more
    tol = _tolerance(config, x, epsilon) / 5
  out = _run(config, x, epsilon)[0]
  want, defined = _hard(op, x)
  distinct = np.array([[len(np.unique(row)) == N] for row in x])
  if op == "ranks" and backend == "pav" and dict(options)["regularization"] == "kl":
    defined = distinct  # KL's value for a tie is not the mean rank
  if op in ("sort_with", "quantile_normalization"):
    defined = distinct  # tied criteria share their values or targets
  if op == "quantile" and backend == "sinkhorn":  # ott's quantile: within one sorted position of jnp.quantile's
    s = np.sort(x.astype(np.float64), -1)
    positions = np.asarray(Q) * (N - 1)
    below = s[:, np.clip(np.floor(positions).astype(int) - 1, 0, N - 1)]
    above = s[:, np.clip(np.ceil(positions).astype(int) + 1, 0, N - 1)]
    assert np.all((out >= below - tol) & (out <= above + tol)), f"soft quantile far from the hard one:\n{out}"
    return
  error = np.where(defined.reshape(ROWS, *(1,) * (out.ndim - 1)), np.abs(out - want), 0)
  size = tol.reshape(ROWS, *(1,) * (out.ndim - 1)) if op not in ("sort_with", "quantile_normalization") else 0.05
  _assert_at_most(error, size + 1e-300, err_msg=f"not the hard {op}; want\n{want}\ngot\n{out}")


# ---------------------------------------------------------------------------------------------------------------
# Other dtypes: computed in float32, returned in their own dtype (floats) or promoted (integers)


@pytest.mark.parametrize("op", CORE)
@_settings(max_examples=8)
@hypothesis.given(data=st.data())
def test_half_precision_and_integer_inputs(op, data):
  ints = data.draw(hnp.arrays(np.int32, (ROWS, N), elements=st.integers(-1000, 1000)), label="x")
  fn = OPS[op][0]
  want = np.asarray(fn(jnp.asarray(ints, jnp.float32), 10.0), np.float64)
  for dtype in (jnp.float16, jnp.bfloat16, jnp.int32):
    out = fn(jnp.asarray(ints, dtype), 10.0)
    assert out.dtype == (jnp.float32 if dtype == jnp.int32 else dtype), (dtype, out.dtype)
    out = np.asarray(out, np.float64)
    assert np.all(np.isfinite(out)), (dtype, out)
    inputs = np.asarray(jnp.asarray(ints, dtype), np.float64)  # bfloat16 rounds the integers themselves
    shift = np.max(np.abs(inputs - ints), -1, keepdims=True)
    resolution = float(jnp.finfo(dtype).eps) if dtype != jnp.int32 else 1e-6
    scale = 1 + np.max(np.abs(want), -1, keepdims=True)
    sensitivity = N / 10.0 if op in ("ranks", "topk_mask") else 1.0  # d out / dx is at most n / epsilon
    _assert_at_most(np.abs(out - want), 2 * resolution * scale + sensitivity * N * shift + 1e-6, err_msg=str(dtype))


# ---------------------------------------------------------------------------------------------------------------
# Grouped losses and boosting objectives (NumPy in, NumPy out): a bad group changes no other group


GROUPS = np.repeat(np.arange(ROWS), N)  # ROWS groups of N entries, group 0 first


def _grouped_case(normalize: bool, part: str):
  return pytest.param(normalize, part, id=f"{part}-normalize={normalize}")


@pytest.mark.parametrize(
  "normalize, part", [_grouped_case(n, p) for n in (False, True) for p in ("gradient", "hessian")]
)
@_settings(max_examples=8)
@hypothesis.given(data=st.data())
def test_grouped_spearman_a_non_finite_group_changes_no_other(normalize, part, data):
  """``part``: the gradients (and the boosting objective's, and the grouped loss), or the Hessians; apart so that
  a bug in one does not hide the other."""
  x = data.draw(finite_rows("float32", scale=False), label="pred").reshape(-1)
  bad = data.draw(poisoned(x.reshape(ROWS, N)), label="poisoned pred").reshape(-1)
  target = _fixed((ROWS * N,), 4).astype(np.float32)
  grad, hess = otsort.losses.spearman_grad_hess(x, target, groups=GROUPS, epsilon=0.1, normalize=normalize)
  bad_grad, bad_hess = otsort.losses.spearman_grad_hess(bad, target, groups=GROUPS, epsilon=0.1, normalize=normalize)
  if part == "hessian":
    assert np.all(np.isfinite(hess)) and np.all(hess > 0), hess
    np.testing.assert_array_equal(bad_hess[N:], hess[N:], err_msg="Hessians of the other groups changed")
    return
  assert np.all(np.isfinite(grad)), grad
  np.testing.assert_array_equal(bad_grad[N:], grad[N:], err_msg="gradients of the other groups changed")
  assert np.all(np.isnan(bad_grad[:N])), f"the bad group's gradient is not NaN: {bad_grad[:N]}"
  objective = otsort.losses.spearman_boosting_objective(groups=GROUPS, epsilon=0.1, normalize=normalize)
  obj_grad, _ = objective(bad, target)
  np.testing.assert_array_equal(obj_grad[N:], grad[N:])
  loss = otsort.losses.spearman_loss(jnp.asarray(bad), target, groups=GROUPS, epsilon=0.1)
  assert np.isnan(loss), f"a grouped loss with a non-finite group is not NaN: {loss}"


# ---------------------------------------------------------------------------------------------------------------
# Filters


IMAGE = (7, 6)


@functools.cache
def _filter(backend: str, q: float, mode: str) -> Callable:
  def value_and_grad(image, epsilon):
    def loss(image):
      out = otsort.filters.quantile_filter(image, q, size=3, mode=mode, epsilon=epsilon, backend=backend)
      return jnp.sum(jnp.asarray(_fixed(IMAGE, 5), out.dtype) * out), out

    (_, out), grad = jax.value_and_grad(loss, has_aux=True)(image)
    return out, grad

  return jax.jit(value_and_grad)


@pytest.mark.parametrize("backend", ["pav", "sinkhorn"])
@_settings(max_examples=10)
@hypothesis.given(data=st.data())
def test_filters_finite_local_and_hard_in_the_limit(backend, data):
  """Finite images give finite results and gradients; a NaN pixel reaches only the windows that hold it; at a
  small epsilon (pav) the median filter is scipy's."""
  import scipy.ndimage  # pylint: disable=import-outside-toplevel

  image = data.draw(hnp.arrays(np.float32, IMAGE, elements=st.integers(0, 255).map(float)), label="image")
  i, j = data.draw(st.integers(0, IMAGE[0] - 1), label="i"), data.draw(st.integers(0, IMAGE[1] - 1), label="j")
  fn = _filter(backend, 0.5, "constant")
  epsilon = jnp.float32(1e-3 if backend == "pav" else 1e-2)
  out, grad = (np.asarray(a) for a in fn(jnp.asarray(image), epsilon))
  assert np.all(np.isfinite(out)) and np.all(np.isfinite(grad)), (out, grad)
  bad = image.copy()
  bad[i, j] = np.nan
  bad_out, bad_grad = (np.asarray(a) for a in fn(jnp.asarray(bad), epsilon))
  near = np.zeros(IMAGE, bool)
  near[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2] = True  # the outputs whose 3 x 3 window holds (i, j)
  np.testing.assert_array_equal(bad_out[~near], out[~near], err_msg="a NaN pixel changed outputs beyond its windows")
  assert np.all(np.isnan(bad_out[near])), f"windows holding a NaN pixel are not NaN:\n{bad_out}"
  reach = np.zeros(IMAGE, bool)
  reach[max(i - 2, 0) : i + 3, max(j - 2, 0) : j + 3] = True  # the pixels that share a window with (i, j)
  np.testing.assert_array_equal(bad_grad[~reach], grad[~reach], err_msg="a NaN pixel changed far gradients")
  if backend == "pav":
    want = scipy.ndimage.median_filter(image, size=3, mode="constant", cval=0.0)
    np.testing.assert_allclose(out, want, atol=1e-2, err_msg="soft median filter at epsilon 1e-3 is not scipy's")


# ---------------------------------------------------------------------------------------------------------------
# Bad arguments: a TypeError or ValueError naming the argument, eagerly and under jit


X = np.linspace(-1.0, 1.0, 2 * N, dtype=np.float32).reshape(2, N)

_not_a_bool = st.sampled_from(["yes", 1, 0, None, 1.0, np.array([True, False])])
_not_a_string = st.sampled_from([None, 1, 2.5, ("l2",), b"l2"])


def _not_in(choices: tuple[str, ...]) -> st.SearchStrategy:
  return st.text(max_size=6).filter(lambda s: s not in choices) | _not_a_string


_bad_epsilon = st.one_of(
  st.floats(max_value=0.0),  # zero, negative, -inf
  st.sampled_from([np.nan, np.inf, 1e-45, 1e39, "0.1", True, 1j, object(), [0.1, "a"]]),
  st.sampled_from([np.ones(N), np.ones((2, 2)), np.array([0.1, -0.1])]),  # wrong shape; one bad row
)
_bad_k = st.one_of(
  st.integers(max_value=0),
  st.integers(min_value=N + 1),
  st.floats(0.5, 7.5).filter(lambda v: v != int(v)),
  st.sampled_from(["2", True, None, np.float32(2.0), [2], np.array([1, 2])]),
)
_bad_axis = st.one_of(
  st.integers(max_value=-3), st.integers(min_value=2), st.sampled_from([1.0, "0", True, None, (0, 1)])
)
_bad_q = st.one_of(
  st.floats(max_value=-1e-9),
  st.floats(min_value=1.000001),
  st.sampled_from([np.nan, [], [[0.5]], "0.5", [0.5, 2.0], None, [0.5, np.nan], 1j]),
)
_bad_num_levels = st.one_of(st.integers(max_value=1), st.sampled_from([2.5, "3", True, None, np.array([3, 4])]))


def _case(label: str, call: Callable[[Any, Any], Any], name: str, values: st.SearchStrategy) -> st.SearchStrategy:
  """(label, call(x, value), the argument's name, value)."""
  return values.map(lambda v: (label, call, name, v))


def _op_cases(backend: str) -> list[st.SearchStrategy]:
  b = {"backend": backend}
  ops = {
    "sort": lambda x, **kw: otsort.sort(x, **{**b, **kw}),
    "ranks": lambda x, **kw: otsort.ranks(x, **{**b, **kw}),
    "quantile": lambda x, **kw: otsort.quantile(x, kw.pop("q", 0.5), **{**b, **kw}),
    "topk": lambda x, **kw: otsort.topk(x, kw.pop("k", 2), **{**b, **kw}),
    "topk_mask": lambda x, **kw: otsort.topk_mask(x, kw.pop("k", 2), **{**b, **kw}),
  }
  cases = []
  for label, op in ops.items():
    label = f"{label}[{backend}]"
    cases += [
      _case(label, lambda x, v, op=op: op(x, epsilon=v), "epsilon", _bad_epsilon),
      _case(label, lambda x, v, op=op: op(x, axis=v), "axis", _bad_axis),
      _case(label, lambda x, v, op=op: op(x, **{"backend": v}), "backend", _not_in(("pav", "sinkhorn"))),
    ]
    if label.startswith("topk"):
      cases.append(_case(label, lambda x, v, op=op: op(x, k=v), "k", _bad_k))
    if label.startswith("quantile"):
      cases.append(_case(label, lambda x, v, op=op: op(x, q=v), "q", _bad_q))
    if label.startswith(("sort", "ranks")):
      cases.append(_case(label, lambda x, v, op=op: op(x, descending=v), "descending", _not_a_bool))
    if backend == "pav":
      cases += [
        _case(label, lambda x, v, op=op: op(x, regularization=v), "regularization", _not_in(("l2", "kl"))),
        _case(label, lambda x, v, op=op: op(x, impl=v), "impl", _not_in(("auto", "native", "xla"))),
        _case(label, lambda x, v, op=op: op(x, threshold=v), "threshold", st.just(1e-3)),
      ]  # sinkhorn's
    else:
      cases += [
        _case(
          label, lambda x, v, op=op: op(x, threshold=v), "threshold", st.sampled_from([0.0, -1.0, np.nan, "a", None])
        ),
        _case(
          label,
          lambda x, v, op=op: op(x, max_iterations=v),
          "max_iterations",
          st.sampled_from([0, -5, 2.5, "10", None]),
        ),
        _case(label, lambda x, v, op=op: op(x, differentiation=v), "differentiation", _not_in(("implicit", "unroll"))),
        _case(label, lambda x, v, op=op: op(x, regularization=v), "regularization", st.just("l2")),
      ]
    cases.append(
      _case(
        label,
        lambda x, v, op=op: op(x, **{v: 1}),
        "",
        st.sampled_from(["regularisation", "epsilonn", "eps", "temperature"]),
      )
    )  # unknown option: named by its own name
    cases.append(
      _case(
        label,
        lambda x, v, op=op: op(v),
        "x",
        st.sampled_from([np.float32(1.0), np.array(1.0), X.astype(np.complex64), ["a", "b"], None, {"a": 1}]),
      )
    )
  return cases


_SINKHORN_ONLY = [
  _case("quantize", lambda x, v: otsort.quantize(x, v), "num_levels", _bad_num_levels),
  _case("quantize", lambda x, v: otsort.quantize(x, 3, backend=v), "backend", st.sampled_from(["pav", "foo"])),
  _case("quantize", lambda x, v: otsort.quantize(x, 3, epsilon=v), "epsilon", _bad_epsilon),
  _case(
    "sort_with",
    lambda x, v: otsort.sort_with(x, v),
    "values",
    st.sampled_from([np.ones((2, N + 1)), np.ones(N), np.ones((2, N), np.complex64), "a"]),
  ),
  _case(
    "sort_with",
    lambda x, v: otsort.sort_with(x, np.ones((2, N)), topk=v),
    "topk",
    _bad_k.filter(lambda v: v is not None),
  ),
  _case(
    "sort_with",
    lambda x, v: otsort.sort_with(x, np.ones((2, N)), backend=v),
    "backend",
    st.sampled_from(["pav", "foo"]),
  ),
  _case(
    "quantile_normalization",
    lambda x, v: otsort.quantile_normalization(x, v),
    "targets",
    st.sampled_from(
      [
        np.array([2.0, 1.0]),
        np.array([0.0, np.nan]),
        np.ones((2, 2)),
        1.0,
        np.array([1.0]),
        "ab",
        np.array([0.0, np.inf]),
        np.array([1j, 2j]),
      ]
    ),
  ),
  _case(
    "quantile_normalization",
    lambda x, v: otsort.quantile_normalization(x, [0.0, 1.0, 2.0], weights=v),
    "weights",
    st.sampled_from(
      [
        np.array([0.5, 0.5]),
        np.array([0.5, 0.6, -0.1]),
        np.array([0.3, 0.3, 0.3]),
        np.array([0.5, np.nan, 0.5]),
        np.ones((1, 3)) / 3,
        "abc",
      ]
    ),
  ),
]

_LABELS = np.array([0, 1])
_LOSSES = [
  _case(
    "spearman_loss",
    lambda x, v: otsort.losses.spearman_loss(x, v),
    "target",
    st.sampled_from([np.ones((2, N + 1)), np.ones(N), np.ones((3, N))]),
  ),
  _case("spearman_loss", lambda x, v: otsort.losses.spearman_loss(x, x, epsilon=v), "epsilon", _bad_epsilon),
  _case("spearman_loss", lambda x, v: otsort.losses.spearman_loss(x, x, target_soft=v), "target_soft", _not_a_bool),
  _case("spearman_loss", lambda x, v: otsort.losses.spearman_loss(x, x, axis=v), "axis", _bad_axis),
  _case(
    "spearman_loss",
    lambda x, v: otsort.losses.spearman_loss(x[0], x[0], groups=v),
    "groups",
    st.sampled_from([np.zeros(N - 1, int), np.zeros(N), np.zeros((1, N), int), np.full(N, -1)]),
  ),
  _case(
    "spearman_loss",
    lambda x, v: otsort.losses.spearman_loss(x[0], x[0], groups=np.zeros(N, int), num_groups=v),
    "num_groups",
    st.sampled_from([0, -1, 1.5, "2", True]),
  ),
  _case(
    "soft_error",
    lambda x, v: otsort.losses.soft_error(x, v),
    "labels",
    st.sampled_from([np.array([0, N]), np.array([-1, 0]), np.array([0.0, 1.0]), np.array([0, 1, 2]), "ab"]),
  ),
  _case("soft_error", lambda x, v: otsort.losses.soft_error(x, _LABELS, epsilon=v), "epsilon", _bad_epsilon),
  _case("soft_topk_error", lambda x, v: otsort.losses.soft_topk_error(x, _LABELS, v), "k", _bad_k),
  _case(
    "spearman_grad_hess",
    lambda x, v: otsort.losses.spearman_grad_hess(x[0], x[0], hessian=v),
    "hessian",
    _not_in(("diagonal", "constant")),
  ),
  _case(
    "spearman_grad_hess",
    lambda x, v: otsort.losses.spearman_grad_hess(x[0], x[0], num_probes=v),
    "num_probes",
    st.sampled_from([0, -1, 2.5, "4", None, True]),
  ),
  _case(
    "spearman_grad_hess",
    lambda x, v: otsort.losses.spearman_grad_hess(x[0], x[0], normalize=v),
    "normalize",
    _not_a_bool,
  ),
  _case(
    "spearman_grad_hess",
    lambda x, v: otsort.losses.spearman_grad_hess(v, x[0]),
    "pred",
    st.sampled_from([x_ for x_ in (X, X[0].astype(np.complex64), "abc")]),
  ),
  _case(
    "spearman_boosting_objective",
    lambda x, v: otsort.losses.spearman_boosting_objective(hessian=v),
    "hessian",
    _not_in(("diagonal", "constant")),
  ),
  _case(
    "spearman_boosting_objective",
    lambda x, v: otsort.losses.spearman_boosting_objective(**{v: 0.1}),
    "",
    st.sampled_from(["epsilonn", "regularisation", "num_probe"]),
  ),
]

_IMAGE = np.linspace(0.0, 1.0, 20, dtype=np.float32).reshape(4, 5)
_FILTERS = [
  _case("quantile_filter", lambda x, v: otsort.filters.quantile_filter(_IMAGE, v), "q", _bad_q),
  _case(
    "median_filter",
    lambda x, v: otsort.filters.median_filter(_IMAGE, size=v),
    "size",
    st.one_of(
      st.integers(max_value=0),
      st.integers(min_value=6),
      st.sampled_from([(3,), (3, 3, 3), 2.5, "3", (0, 3), (3, 6), True, None]),
    ),
  ),
  _case(
    "median_filter", lambda x, v: otsort.filters.median_filter(_IMAGE, mode=v), "mode", _not_in(otsort.filters.MODES)
  ),
  _case(
    "median_filter",
    lambda x, v: otsort.filters.median_filter(v),
    "image",
    st.sampled_from([np.ones(5), np.ones((2, 2, 2, 2)), np.ones((3, 3), np.complex64), "abc"]),
  ),
  _case("median_filter", lambda x, v: otsort.filters.median_filter(_IMAGE, epsilon=v), "epsilon", _bad_epsilon),
  _case(
    "median_filter",
    lambda x, v: otsort.filters.median_filter(_IMAGE, backend=v),
    "backend",
    _not_in(("pav", "sinkhorn")),
  ),
]

_EAGER_ONLY = ("spearman_grad_hess", "spearman_boosting_objective")  # NumPy in, NumPy out: not jit-able
BAD_ARGUMENTS = st.one_of(*_op_cases("pav"), *_op_cases("sinkhorn"), *_SINKHORN_ONLY, *_LOSSES, *_FILTERS)


def _check_bad_argument(label: str, call: Callable, name: str, value: Any, under_jit: bool) -> None:
  name = name or value  # an unknown keyword is named by itself
  run = (lambda: jax.jit(lambda x: call(x, value))(X)) if under_jit else (lambda: call(X, value))
  with pytest.raises((TypeError, ValueError)) as error:
    run()
  assert re.search(rf"\b{re.escape(name)}\b", str(error.value)), (
    f"{label}: the error for {name} = {value!r} does not name it: {type(error.value).__name__}: {error.value}"
  )


# quantile_normalization's concrete targets whose values (not shape or dtype) are bad: eagerly in the main test,
# under jit in test_bad_arguments_once_broken (each of them, every run).
_QN_BAD_TARGET_VALUES = (np.array([2.0, 1.0]), np.array([0.0, np.nan]), np.array([0.0, np.inf]))


def _is_qn_bad_target_value(label: str, name: str, value: Any) -> bool:
  return label == "quantile_normalization" and name == "targets" and any(value is v for v in _QN_BAD_TARGET_VALUES)


@_settings(max_examples=400)
@hypothesis.given(case=BAD_ARGUMENTS, under_jit=st.booleans())
def test_bad_arguments_raise_an_error_naming_them(case, under_jit):
  label, call, name, value = case
  under_jit = under_jit and name != "x" and label not in _EAGER_ONLY and not _is_qn_bad_target_value(label, name, value)
  _check_bad_argument(label, call, name, value, under_jit)


@pytest.mark.parametrize(
  "case",
  [
    pytest.param(
      ("quantile_normalization", lambda x, v: otsort.quantile_normalization(x, v), "targets", v, True),
      id=f"qn-targets-{label}-jit",
    )
    for label, v in zip(("unsorted", "nan", "inf"), _QN_BAD_TARGET_VALUES)
  ]
  + [
    pytest.param(
      ("spearman_loss", lambda x, v: otsort.losses.spearman_loss(x[0], x[0], groups=v), "groups", np.full(N, -1), jit),
      id=f"groups-minus-one-{'jit' if jit else 'eager'}",
    )
    for jit in (False, True)
  ],
)
def test_bad_arguments_once_broken(case):
  """Cases once found broken, run every time: quantile_normalization's bad target values under jit (once
  unchecked there) and negative group ids (once blamed on ``num_groups``)."""
  _check_bad_argument(*case)
