"""The public ``otsort.sort`` / ``otsort.ranks`` with ``backend="pav"``: transformations, shapes, axes, dtypes and
argument checks.

Calls run eagerly on the native kernel (the default ``impl="auto"`` on CPU) unless a test is about ``jit``: eager
calls of the native kernel cost almost nothing, while every compiled configuration costs a fraction of a second.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import otsort

OPS = {"sort": otsort.sort, "ranks": otsort.ranks}
OP_REGULARIZATIONS = [("sort", "l2"), ("sort", "kl"), ("ranks", "l2"), ("ranks", "kl")]

# Generic rows (no ties, away from block boundaries) so that every derivative exists.
X = np.array([[0.4, -1.3, 2.1, 0.0, 0.9, -0.2], [1.0, 0.2, -0.5, 0.7, -1.1, 0.35]], np.float32)


def _op(op: str, regularization: str, **kwargs):
  return functools.partial(OPS[op], epsilon=1.5, regularization=regularization, **kwargs)


# --- Transformations ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("op,regularization", OP_REGULARIZATIONS)
def test_jit_and_vmap_give_the_eager_batched_result(op, regularization):
  fn = _op(op, regularization)
  eager = fn(X)
  np.testing.assert_allclose(jax.jit(fn)(X), eager, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jax.vmap(fn)(X), eager, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jax.vmap(fn, in_axes=1, out_axes=1)(X.T), eager.T, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jax.vmap(jax.vmap(fn))(X[:, None]), eager[:, None], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op,regularization", OP_REGULARIZATIONS)
def test_grad_jvp_jacfwd_jacrev_and_vmap_of_grad_agree(op, regularization):
  fn = _op(op, regularization)
  row = jnp.asarray(X[0])
  tangent = jnp.asarray(np.linspace(-1.0, 1.0, row.size), jnp.float32)
  weights = jnp.asarray(np.arange(1.0, row.size + 1), jnp.float32)
  jac_fwd = jax.jacfwd(fn)(row)
  jac_rev = jax.jacrev(fn)(row)
  np.testing.assert_allclose(jac_fwd, jac_rev, atol=1e-6)
  _, jvp_out = jax.jvp(fn, (row,), (tangent,))
  np.testing.assert_allclose(jvp_out, jac_fwd @ tangent, atol=1e-5)
  loss = lambda v: jnp.sum(weights * fn(v))
  np.testing.assert_allclose(jax.grad(loss)(row), weights @ jac_rev, atol=1e-5)
  per_row = jax.vmap(jax.grad(loss))(jnp.asarray(X))
  np.testing.assert_allclose(per_row[1], jax.grad(loss)(jnp.asarray(X[1])), atol=1e-6)
  np.testing.assert_allclose(jax.jit(jax.vmap(jax.grad(loss)))(jnp.asarray(X)), per_row, atol=1e-6)


@pytest.mark.parametrize("op,regularization", OP_REGULARIZATIONS)
def test_hessian_is_jacfwd_of_jacrev_and_vanishes_for_l2(op, regularization):
  fn = _op(op, regularization)
  loss = lambda v: jnp.sum(jnp.arange(1.0, v.size + 1) * fn(v))
  row = jnp.asarray(X[0])
  hessian = jax.hessian(loss)(row)
  np.testing.assert_allclose(hessian, jax.jacrev(jax.jacrev(loss))(row), atol=1e-5)
  np.testing.assert_allclose(hessian, hessian.T, atol=1e-5)
  if regularization == "l2":  # the L2 projection is piecewise linear
    np.testing.assert_array_equal(hessian, 0.0)
  else:
    assert np.max(np.abs(hessian)) > 1e-2


def test_pure_jax_solver_composes_under_jit_vmap_and_hessian_like_the_native_kernel():
  def hessian_of(impl):
    loss = lambda v: jnp.sum(jnp.arange(1.0, v.size + 1) * otsort.sort(v, epsilon=1.5, regularization="kl", impl=impl))
    return jax.jit(jax.vmap(jax.hessian(loss)))(jnp.asarray(X))

  np.testing.assert_allclose(hessian_of("xla"), hessian_of("native"), rtol=1e-5, atol=1e-5)


# --- Semantics of the options ------------------------------------------------------------------------------


@pytest.mark.parametrize("regularization", ["l2", "kl"])
def test_descending_is_the_mirror_of_ascending(regularization):
  fn = functools.partial(otsort.sort, epsilon=0.7, regularization=regularization)
  np.testing.assert_allclose(fn(X), -fn(-X, descending=True), rtol=1e-6, atol=1e-6)
  rk = functools.partial(otsort.ranks, epsilon=0.7, regularization=regularization)
  np.testing.assert_allclose(rk(X, descending=True), rk(-X), rtol=1e-6, atol=1e-6)


def test_docstring_examples_hold_and_lists_are_accepted():
  np.testing.assert_allclose(otsort.sort([3.0, 1.0, 2.0], epsilon=0.1), [1.0, 2.0, 3.0])
  np.testing.assert_allclose(otsort.ranks([3.0, 1.0, 2.0], epsilon=0.1), [2.0, 0.0, 1.0])
  np.testing.assert_allclose(otsort.ranks([3.0, 1.0, 2.0], epsilon=0.1, descending=True), [0.0, 2.0, 1.0])


def test_default_epsilon_is_one_and_impls_agree():
  for fn in OPS.values():
    np.testing.assert_allclose(fn(X), fn(X, epsilon=1.0), rtol=1e-6)
    np.testing.assert_allclose(fn(X, impl="native"), fn(X, impl="auto"), rtol=1e-6)
    np.testing.assert_allclose(fn(X, epsilon=np.float32(0.5)), fn(X, epsilon=jnp.asarray(0.5)), rtol=1e-6)


# --- Shapes, axes and dtypes -------------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2, -3])
def test_any_axis_of_any_batch_shape_is_handled_like_the_last_axis_of_rows(op, axis):
  x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
  x[1, 2, :2] = x[1, 2, 2]  # ties
  out = OPS[op](x, axis=axis, epsilon=0.3)
  assert out.shape == x.shape
  moved = np.moveaxis(x, axis, -1)
  rows = OPS[op](moved.reshape(-1, moved.shape[-1]), epsilon=0.3)
  np.testing.assert_allclose(out, np.moveaxis(np.reshape(rows, moved.shape), -1, axis), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("regularization", ["l2", "kl"])
@pytest.mark.parametrize("descending", [False, True])
def test_a_single_value_sorts_to_itself_and_has_rank_zero(regularization, descending):
  x = jnp.asarray([[2.5], [-1.0]])
  kwargs = dict(epsilon=0.3, regularization=regularization, descending=descending)
  np.testing.assert_allclose(otsort.sort(x, **kwargs), x, rtol=1e-6)
  np.testing.assert_allclose(otsort.ranks(x, **kwargs), 0.0, atol=1e-6)
  np.testing.assert_allclose(jax.grad(lambda v: otsort.sort(v, **kwargs).sum())(x), 1.0, rtol=1e-6)
  np.testing.assert_allclose(jax.grad(lambda v: otsort.ranks(v, **kwargs).sum())(x), 0.0, atol=1e-6)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape,axis", [((0, 4), -1), ((2, 0, 3), -1), ((3, 0), -1), ((0,), 0), ((2, 0, 3), 1)])
def test_empty_arrays_keep_their_shape(op, shape, axis):
  # (3, 0) and (0,) along axis 0 sort an empty axis (n = 0); the others have an empty batch.
  out = OPS[op](jnp.zeros(shape), axis=axis)
  assert out.shape == shape and out.dtype == jnp.float32
  assert jax.jit(functools.partial(OPS[op], axis=axis))(jnp.zeros(shape)).shape == shape


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("op", OPS)
def test_half_precision_is_computed_in_float32_and_returned_in_its_own_dtype(dtype, op):
  x = jnp.asarray(X, dtype)
  out = OPS[op](x, epsilon=0.3, regularization="kl")
  assert out.dtype == dtype
  want = OPS[op](x.astype(jnp.float32), epsilon=0.3, regularization="kl").astype(dtype)
  np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(want, np.float32))
  grad = jax.grad(lambda v: OPS[op](v, epsilon=0.3).astype(jnp.float32).sum())(x)
  assert grad.dtype == dtype


@pytest.mark.parametrize("op", OPS)
def test_integers_are_promoted_to_the_default_float(op):
  x = np.array([[3, 1, 2, 2]], np.int32)
  out = OPS[op](x, epsilon=0.1)
  assert out.dtype == jnp.float32
  with jax.enable_x64(True):
    out64 = OPS[op](x, epsilon=0.1)
    assert out64.dtype == jnp.float64
  want = {"sort": [[1.0, 2.0, 2.0, 3.0]], "ranks": [[3.0, 0.0, 1.5, 1.5]]}[op]
  np.testing.assert_allclose(out, want, atol=1e-5)
  np.testing.assert_allclose(out64, want, atol=1e-12)


def test_float64_is_kept_under_x64(x64):
  x = jnp.asarray(X, jnp.float64)
  assert x.dtype == jnp.float64
  for fn in OPS.values():
    assert fn(x).dtype == jnp.float64
    assert jax.grad(lambda v: fn(v).sum())(x).dtype == jnp.float64


def test_x64_fixture_does_not_leak_into_later_tests():
  assert jnp.asarray(1.0).dtype == jnp.float32


# --- Bad arguments -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "epsilon, error",
  [
    (0.0, ValueError),
    (-1.0, ValueError),
    (np.nan, ValueError),
    (np.inf, ValueError),
    (-np.inf, ValueError),
    (np.array([0.1, -0.2]), ValueError),
    (1e-40, ValueError),
    ([0.1], TypeError),
    ("0.1", TypeError),
    (True, TypeError),
    (1j, TypeError),
  ],
)
@pytest.mark.parametrize("op", OPS)
def test_epsilon_must_be_positive_finite_and_real(op, epsilon, error):
  with pytest.raises(error, match=r"epsilon must be a (positive finite number|real scalar)"):
    OPS[op](X, epsilon=epsilon)


@pytest.mark.parametrize("op", OPS)
def test_epsilon_must_have_one_value_per_row(op):
  with pytest.raises(
    ValueError,
    match=r"epsilon must be a number or an array broadcastable to x.shape without "
    r"axis, \(2,\) \(one epsilon per row; or x's shape with size 1 along axis\); got "
    r"epsilon.shape = \(3,\)",
  ):
    OPS[op](X, epsilon=np.array([0.1, 0.2, 0.3]))


@pytest.mark.parametrize("op", OPS)
def test_unknown_choices_are_rejected_with_the_list_of_choices(op):
  fn = OPS[op]
  with pytest.raises(ValueError, match=r"regularization must be one of 'l2', 'kl'; got regularization = 'L1'"):
    fn(X, regularization="L1")
  with pytest.raises(ValueError, match=r"impl must be one of 'auto', 'native', 'xla'; got impl = 'cuda'"):
    fn(X, impl="cuda")
  with pytest.raises(ValueError, match=r"backend must be one of .*'pav'.*; got backend = 'pava'"):
    fn(X, backend="pava")
  with pytest.raises(TypeError, match=r"backend must be one of 'pav', 'sinkhorn' or a backend object"):
    fn(X, backend=None)
  with pytest.raises(
    ValueError,
    match=r"unknown option\(s\) 'regularisation' for backend='pav'; "
    r"its options are 'regularization', 'impl'",
  ):
    fn(X, regularisation="kl")


@pytest.mark.parametrize("op", OPS)
def test_descending_must_be_a_bool(op):
  with pytest.raises(TypeError, match=r"descending must be True or False; got descending = 'yes'"):
    OPS[op](X, descending="yes")


@pytest.mark.parametrize("op", OPS)
def test_axis_must_be_an_int_within_the_array(op):
  fn = OPS[op]
  with pytest.raises(ValueError, match=r"axis 2 is out of bounds for an array of dimension 2"):
    fn(X, axis=2)
  with pytest.raises(ValueError, match=r"axis -3 is out of bounds for an array of dimension 2"):
    fn(X, axis=-3)
  with pytest.raises(TypeError, match=r"axis must be an int; got axis = 1.0"):
    fn(X, axis=1.0)


def test_scalars_and_complex_inputs_are_rejected():
  with pytest.raises(ValueError, match=r"at least one dimension"):
    otsort.sort(1.0)
  with pytest.raises(TypeError, match=r"x must be real; got dtype complex64"):
    otsort.ranks(jnp.asarray([1.0, 2.0], jnp.complex64))


def test_argument_checks_fire_under_jit():
  with pytest.raises(ValueError, match=r"epsilon must be a positive finite number"):
    jax.jit(lambda x: otsort.sort(x, epsilon=-1.0))(X)
  with pytest.raises(ValueError, match=r"axis 5 is out of bounds"):
    jax.jit(lambda x: otsort.ranks(x, axis=5))(X)
