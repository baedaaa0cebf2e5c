"""Bad arguments of the sinkhorn-only operations are refused, with a message naming the argument (issue 14).

A refused argument compiles nothing, so these tests are fast; each one failed before its fix.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import otsort
from otsort.sinkhorn import TargetMeasure

X = jnp.array([[3.0, 1.0, 2.0, 0.5]])


# quantile_normalization: targets and weights


@pytest.mark.parametrize("targets, error, message", [
    ([3.0, 2.0, 1.0], ValueError, "targets must be sorted in non-decreasing order"),
    ([1.0, float("nan"), 3.0], ValueError, "targets must be finite"),
    ([1.0, float("inf"), 3.0], ValueError, "targets must be finite"),
    ([[1.0, 2.0, 3.0]], ValueError, "targets must be a 1-D array"),
    ([1.0], ValueError, "targets must be a 1-D array [m] of at least 2 values"),
    (2.0, ValueError, "targets must be a 1-D array"),
    ([1.0 + 1j, 2.0], TypeError, "targets must be real; got dtype complex"),
])
def test_quantile_normalization_refuses_bad_targets(targets, error, message):
  with pytest.raises(error, match=re.escape(message)):
    otsort.quantile_normalization(X, jnp.asarray(targets) if not isinstance(targets, float) else targets)


def test_quantile_normalization_unsorted_targets_message_shows_where():
  with pytest.raises(ValueError, match=re.escape("got targets[1] = 3.0 > targets[2] = 2.0")):
    otsort.quantile_normalization(X, np.array([1.0, 3.0, 2.0]))


def test_quantile_normalization_accepts_ties_in_targets_and_traced_targets():
  out = otsort.quantile_normalization(X, [0.0, 1.0, 1.0, 2.0])
  assert out.shape == X.shape and bool(jnp.all(jnp.isfinite(out)))
  traced = jax.jit(lambda t: otsort.quantile_normalization(X, t))(jnp.array([0.0, 1.0, 2.0, 3.0]))
  np.testing.assert_allclose(traced, otsort.quantile_normalization(X, [0.0, 1.0, 2.0, 3.0]), rtol=1e-5)


@pytest.mark.parametrize("weights, message", [
    ([[0.3, 0.3, 0.4]], "weights must be a non-empty 1-D sequence; got shape (1, 3)"),
    ([0.5, float("nan"), 0.5], "weights must be finite"),
    ([0.5, 0.6, -0.1], "weights must all be positive"),
    ([0.3, 0.3, 0.3], "weights must sum to 1"),
    ([0.5, 0.5], "weights must have length 3; got length 2"),
])
def test_quantile_normalization_refuses_bad_weights(weights, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    otsort.quantile_normalization(X, [0.0, 1.0, 2.0], weights=np.asarray(weights))


# sort_with: complex values


def test_sort_with_refuses_complex_values():
  with pytest.raises(TypeError, match=re.escape("values must be real; got dtype complex64")):
    otsort.sort_with(X, X + 1j)


# quantize: num_levels


@pytest.mark.parametrize("num_levels", [np.int32(3), np.array(3), jnp.array(3)])
def test_quantize_accepts_numpy_integer_scalars_and_0d_integer_arrays(num_levels):
  np.testing.assert_array_equal(otsort.quantize(X, num_levels), otsort.quantize(X, 3))


@pytest.mark.parametrize("num_levels, error", [(np.array(3.0), TypeError), (np.array([3]), TypeError),
                                               (2.5, TypeError), (True, TypeError), (1, ValueError),
                                               ("3", TypeError), (None, TypeError)])
def test_quantize_refuses_bad_num_levels(num_levels, error):
  with pytest.raises(error, match=re.escape("num_levels must be an int >= 2") + ".*got num_levels = "):
    otsort.quantize(X, num_levels)


# Empty inputs: the arguments are checked before the empty shortcut


@pytest.mark.parametrize("call, error, message", [
    (lambda x: otsort.quantize(x, -5), ValueError, "num_levels must be an int >= 2"),
    (lambda x: otsort.quantize(x, 3, target_weights=[0.5, 0.5]), ValueError,
     "quantize takes no option(s) 'target_weights' on backend 'sinkhorn'"),
    (lambda x: otsort.sort_with(x, jnp.zeros(x.shape, jnp.complex64)), TypeError, "values must be real"),
    (lambda x: otsort.sort_with(x, jnp.zeros((3, 1))), ValueError, "values must have x's shape"),
    (lambda x: otsort.quantile_normalization(x, [2.0, 1.0]), ValueError, "targets must be sorted"),
    (lambda x: otsort.quantile_normalization(x, [1.0, 2.0], weights=[0.5]), ValueError,
     "weights must have length 2"),
    (lambda x: otsort.quantile_normalization(x, [1.0, 2.0], num_targets=2), ValueError,
     "quantile_normalization takes no option(s) 'num_targets'"),
])
def test_empty_inputs_still_check_arguments(call, error, message):
  with pytest.raises(error, match=re.escape(message)):
    call(jnp.zeros((2, 0)))


# Target measures


@pytest.mark.parametrize("num_points, error", [(0, ValueError), (-1, ValueError), (2.0, TypeError)])
def test_quantile_targets_refuse_bad_num_points(num_points, error):
  with pytest.raises(error, match="num_points must be"):
    TargetMeasure.quantiles([0.5], num_points)


# Finite inputs with an accepted epsilon give finite values and gradients (sinkhorn)


def _finite_value_and_grads(x, epsilon):
  loss = lambda x, e: jnp.sum(otsort.sort(x, epsilon=e, backend="sinkhorn") * jnp.arange(1.0, x.shape[-1] + 1))
  value = otsort.sort(x, epsilon=epsilon, backend="sinkhorn")
  gx, ge = jax.grad(loss, argnums=(0, 1))(x, jnp.asarray(epsilon, x.dtype))
  return value, gx, ge


def test_sinkhorn_float32_rows_near_the_largest_float_are_finite_and_sorted():
  x = jnp.array([[3e38, -3e38, 1.0]], jnp.float32)
  value, gx, ge = _finite_value_and_grads(x, 1e-2)
  assert bool(jnp.all(jnp.isfinite(value))) and bool(jnp.all(jnp.isfinite(gx))) and bool(jnp.isfinite(ge))
  np.testing.assert_allclose(value[0, [0, 2]], [-3e38, 3e38], rtol=1e-3)


@pytest.mark.parametrize("epsilon", [1e30, 3e38])
def test_sinkhorn_huge_epsilon_gives_the_mean_and_finite_gradients(epsilon):
  value, gx, ge = _finite_value_and_grads(X, epsilon)
  np.testing.assert_allclose(value, jnp.full_like(X, jnp.mean(X)), rtol=1e-5)
  assert bool(jnp.all(jnp.isfinite(gx))) and bool(jnp.isfinite(ge))
