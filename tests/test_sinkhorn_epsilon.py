"""Epsilon as data, and derivatives of the computed function (sinkhorn rows).

The backend object's operations take ``epsilon`` as ``[batch]``, one value per row, possibly
traced. Gradients (reverse mode, float64) are checked against central finite
differences without a second compilation: rows are independent problems, so
one batch holds a row at ``(x, epsilon)`` and its perturbed copies at
``(x, epsilon +- h)`` (and ``(x +- h v, epsilon)``), and one compiled
``value_and_grad`` gives the derivative and both difference quotients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from otsort import Sinkhorn


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _spread_row(seed, n):
  """Well-separated values: no near-ties, so finite differences are smooth."""
  rng = np.random.default_rng(seed)
  return (rng.permutation(n) + 0.1 * rng.uniform(size=n)) / n * 4.0 - 2.0


# Every operator as a function of ([batch, n] rows, [batch] epsilons).
def _ops(n, options, names=None):
  k = max(1, n // 3)
  backend, kw = options, {}
  ops = {
    "sort": lambda x, e: backend.sort(x, descending=False, epsilon=e, **kw),
    "ranks": lambda x, e: backend.ranks(x, descending=True, epsilon=e, **kw),
    "quantile": lambda x, e: backend.quantile(x, (0.0, 0.3, 0.5, 1.0), epsilon=e, **kw),
    "topk": lambda x, e: backend.topk(x, k, epsilon=e, **kw),
    "topk_mask": lambda x, e: backend.topk_mask(x, k, epsilon=e, **kw),
    "quantize": lambda x, e: backend.quantize(x, 3, epsilon=e, **kw),
    "sort_with": lambda x, e: backend.sort_with(x, jnp.stack([x, jnp.cos(x)], -1), k, epsilon=e, **kw),
    "quantile_normalization": lambda x, e: backend.quantile_normalization(
      x, jnp.linspace(-1.0, 2.0, 4), np.array([0.1, 0.2, 0.3, 0.4]), epsilon=e, **kw
    ),
  }
  return ops if names is None else {name: ops[name] for name in names}


def _row_losses(op):
  """``[batch]`` scalars, each with a generic dependence on its row's output."""

  def losses(x, eps):
    out = op(x, eps)
    per_row = out[0].size
    w = jnp.sin(1.0 + jnp.arange(per_row, dtype=out.dtype))
    return out.reshape(out.shape[0], per_row) @ w

  return losses


def _values_and_grads(ops, argnums):
  """Jitted ``(x, eps) -> {op: (row losses, grads of their sum)}``."""

  def one(op):
    loss = _row_losses(op)
    return jax.value_and_grad(lambda x, e: (jnp.sum(loss(x, e)), loss(x, e)), argnums=argnums, has_aux=True)

  def all_ops(x, eps):
    return {name: one(op)(x, eps) for name, op in ops.items()}

  return jax.jit(all_ops)


# ----------------------------------------------------------------------------
# Epsilon per row, traced.


def test_epsilon_per_row_traced_once_and_differentiated_implicitly(x64):
  # Tight threshold: implicit differentiation is exact at convergence (at
  # 1e-11 the gradient is still off by ~3e-8 at epsilon = 0.01).
  n = 7
  o = Sinkhorn(threshold=1e-13, max_iterations=100000)
  ops = _ops(n, o)
  traces = []

  def counted(x, eps):
    traces.append(1)
    return _values_and_grads(ops, argnums=1)(x, eps)

  f = jax.jit(counted)
  # Rows (x_r, e_r), (x_r, e_r + h_r), (x_r, e_r - h_r) for two rows r.
  x0, x1 = _spread_row(0, n), _spread_row(1, n)
  x = jnp.asarray(np.stack([x0, x0, x0, x1, x1, x1]))
  e = np.array([0.01, 0.04])
  # Relative step 1e-5: truncation ~1e-10, rounding of the solved values
  # (~1e-14) over 2h gives the absolute tolerance.
  h = 1e-5 * e
  eps = jnp.asarray(np.repeat(e, 3) + np.repeat(h, 3) * np.tile([0, 1, -1], 2))
  got = f(x, eps)
  # The same rows with one epsilon everywhere, as a scalar call would get.
  alone = [f(x, jnp.full(6, v)) for v in e]
  assert len(traces) == 1
  for name, ((_, values), grads) in got.items():
    for r in range(2):
      fd = (values[3 * r + 1] - values[3 * r + 2]) / (2 * h[r])
      np.testing.assert_allclose(grads[3 * r], fd, rtol=1e-6, atol=1e-8, err_msg=f"{name}, row {r}")
      (_, v_alone), g_alone = alone[r][name]
      np.testing.assert_allclose(values[3 * r], v_alone[3 * r], rtol=1e-12, err_msg=f"{name}, row {r}")
      np.testing.assert_allclose(grads[3 * r], g_alone[3 * r], rtol=1e-10, err_msg=f"{name}, row {r}")


# ----------------------------------------------------------------------------
# Unrolled derivatives are those of the iterates computed.


# Every op once, at three sizes; 20 targets is where the bug below was
# reported.
_UNROLL_CASES = {
  5: ("ranks", "quantize"),
  12: ("quantile", "topk_mask", "quantile_normalization", "sort_with"),
  20: ("sort", "topk"),
}


@pytest.mark.parametrize("n", sorted(_UNROLL_CASES))
def test_unrolled_gradients_are_those_of_the_unconverged_iterates(x64, n):
  # Threshold 1e-2: ~10 iterations, far from convergence, where the iterates
  # still depend on where they started, the monotone duals. With the
  # gradient stopped there, d/dx was off by 0.4% (quantize, n = 5) to 76%
  # (quantile, n = 12). d/d epsilon is checked here too.
  o = Sinkhorn(differentiation="unroll", threshold=1e-2)
  f = _values_and_grads(_ops(n, o, _UNROLL_CASES[n]), argnums=(0, 1))
  rng = np.random.default_rng(n)
  x0, v = rng.normal(size=n), rng.normal(size=n)
  # he = 1e-7: a step sweep (he = 1e-3 .. 1e-9) shows the central difference's error falling as he^2 (truncation,
  # 5.6e-4 at 1e-3 for quantize, n = 5) down to ~1e-7 and then growing as (value rounding) / he (4e-8 at 1e-8, 2e-7
  # at 1e-9); at 1e-7 every op here is within 7e-9 (quantize: 2e-10 on 3.5e-3), the derivative unchanged to 1e-14.
  e, hx, he = 0.01, 1e-6, 1e-7
  # Rows at (x, e), (x +- hx v, e), (x, e +- he).
  x = jnp.asarray(np.stack([x0, x0 + hx * v, x0 - hx * v, x0, x0]))
  eps = jnp.asarray([e, e, e, e + he, e - he])
  for name, ((_, values), (gx, ge)) in f(x, eps).items():
    fd_x = (values[1] - values[2]) / (2 * hx)
    fd_e = (values[3] - values[4]) / (2 * he)
    np.testing.assert_allclose(jnp.vdot(gx[0], v), fd_x, rtol=1e-6, err_msg=f"{name}: d/dx")
    np.testing.assert_allclose(ge[0], fd_e, rtol=1e-6, atol=1e-8, err_msg=f"{name}: d/d epsilon")


# ----------------------------------------------------------------------------
# Shapes: a scalar is shared by the rows, vmap over epsilon.


def test_vmap_over_a_scalar_epsilon_matches_per_row_arrays():
  n = 6
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, n)), jnp.float32)
  op = _ops(n, Sinkhorn(), ("sort_with",))["sort_with"]
  es = jnp.array([0.01, 0.05, 0.2], jnp.float32)
  # Inside the vmap each epsilon is a 0-d tracer, shared by both rows.
  mapped = jax.jit(jax.vmap(lambda e: op(x, e)))(es)
  per_row = jax.jit(op)
  for e, out in zip(es, mapped):
    np.testing.assert_allclose(out, per_row(x, jnp.full(2, e)), rtol=1e-5, atol=1e-6)
  assert not np.allclose(mapped[0], mapped[2], atol=1e-3)


def test_epsilon_of_the_wrong_shape_is_refused():
  x = jnp.zeros((2, 5))
  with pytest.raises(
    ValueError,
    match=r"epsilon must be a scalar or "
    r"\[batch\] = \[2\] \(one value per row of x\); got "
    r"shape \(3,\)",
  ):
    Sinkhorn().sort(x, descending=False, epsilon=jnp.ones(3))


# Epsilons down to the smallest normal float, and the hard limits: tests/test_sinkhorn_extremes.py.
