"""The one API over both backends: every op, shapes and axes, epsilon limits, gradients, and bad input."""

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

import otsort

# (backend, options, a small epsilon, the tolerance to the hard op at that epsilon)
CONFIGS = {
  "pav-l2": ("pav", {}, 1e-3, 1e-4),
  "pav-kl": ("pav", {"regularization": "kl"}, 1e-3, 1e-4),
  "pav-xla": ("pav", {"impl": "xla"}, 1e-3, 1e-4),
  "sinkhorn": ("sinkhorn", {}, 1e-4, 2e-2),
}
OPS = ("sort", "ranks", "quantile", "topk", "topk_mask")


@pytest.fixture(params=sorted(CONFIGS))
def config(request):
  return CONFIGS[request.param]


def _apply(op, x, backend, options, **kwargs):
  extra = {"quantile": dict(q=[0.25, 0.5, 0.9]), "topk": dict(k=2), "topk_mask": dict(k=2)}.get(op, {})
  return getattr(otsort, op)(x, **extra, backend=backend, **options, **kwargs)


def _window_quantile(x, levels):
  """The hard limit of the sinkhorn quantile: the mean of the sorted values over a window of cumulative mass
  w around each level (each value holds mass 1/n), w = min(0.02, 1.5/n, 0.5/len(q), half the smallest gap)."""
  n = x.shape[-1]
  s = np.sort(x, axis=-1)
  gaps = np.diff(np.concatenate([[0.0], np.unique(levels), [1.0]]))
  w = min(0.02, 1.5 / n, 0.5 / len(levels), 0.5 * gaps[gaps > 0].min())
  out = []
  for level in levels:
    lo = np.clip(level - w / 2, 0, 1 - w)
    cells = np.arange(n) / n
    overlap = np.clip(np.minimum(cells + 1 / n, lo + w) - np.maximum(cells, lo), 0, None)
    out.append((s * overlap).sum(-1) / w)
  return np.stack(out, -1)


def _hard(op, x, axis=-1, backend="pav"):
  x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
  if op == "sort":
    out = np.sort(x, axis=-1)
  elif op == "ranks":
    out = np.argsort(np.argsort(x, axis=-1), axis=-1).astype(np.float64)
  elif op == "quantile" and backend == "sinkhorn":
    out = _window_quantile(x, [0.25, 0.5, 0.9])
  elif op == "quantile":
    out = np.moveaxis(np.quantile(x, [0.25, 0.5, 0.9], axis=-1), 0, -1)
  elif op == "topk":
    out = -np.sort(-x, axis=-1)[..., :2]
  else:
    order = np.argsort(-x, axis=-1)[..., :2]
    out = np.zeros_like(x)
    np.put_along_axis(out, order, 1.0, axis=-1)
  return np.moveaxis(out, -1, axis)


def _distinct(shape, seed=0):
  """Values with gaps of at least 0.1, so that a small epsilon reaches the hard result."""
  rng = np.random.default_rng(seed)
  size = int(np.prod(shape))
  return (rng.permutation(size).reshape(shape) * 0.1 + rng.uniform(0, 0.01, shape)).astype(np.float32)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_small_epsilon_gives_the_hard_op_along_any_axis(config, op, axis):
  backend, options, epsilon, tolerance = config
  x = _distinct((4, 6, 5))
  out = _apply(op, x, backend, options, axis=axis, epsilon=epsilon)
  expected = _hard(op, x, axis, backend)
  assert out.shape == expected.shape
  np.testing.assert_allclose(out, expected, atol=tolerance * max(1, np.abs(expected).max()))


@pytest.mark.parametrize("op", OPS)
def test_outputs_have_the_documented_shape_and_dtype(config, op):
  backend, options, _, _ = config
  x = jnp.ones((2, 7, 3), jnp.bfloat16)
  out = _apply(op, x, backend, options, axis=1)
  expected_length = {"quantile": 3, "topk": 2}.get(op, 7)
  assert out.shape == (2, expected_length, 3)
  assert out.dtype == jnp.bfloat16


def test_scalar_q_drops_the_axis(config):
  backend, options, _, _ = config
  x = _distinct((3, 8))
  assert otsort.quantile(x, 0.5, axis=0, backend=backend, **options).shape == (8,)
  assert otsort.quantile(x, 0.5, backend=backend, **options).shape == (3,)


def test_soft_outputs_keep_their_order(config):
  backend, options, _, tolerance = config
  x = np.random.default_rng(1).normal(size=(5, 9)).astype(np.float32)
  # Each epsilon compiles anew; the Sinkhorn solver is the slow one to compile.
  for epsilon in (0.01, 0.3, 3.0) if backend == "pav" else (0.05,):
    assert np.all(np.diff(otsort.sort(x, epsilon=epsilon, backend=backend, **options), axis=-1) >= -1e-5)
    assert np.all(np.diff(otsort.topk(x, 4, epsilon=epsilon, backend=backend, **options), axis=-1) <= 1e-5)
    q = otsort.quantile(x, [0.1, 0.4, 0.8], epsilon=epsilon, backend=backend, **options)
    assert np.all(np.diff(q, axis=-1) >= -1e-5)
    mask = otsort.topk_mask(x, 3, epsilon=epsilon, backend=backend, **options)
    assert np.all((mask >= -1e-5) & (mask <= 1 + 1e-5))
    np.testing.assert_allclose(mask.sum(-1), 3.0, rtol=tolerance)


@pytest.mark.parametrize("op", OPS)
def test_float32_gradients_are_finite_on_ties_and_wide_scales(config, op):
  backend, options, _, _ = config
  rng = np.random.default_rng(2)
  rows = [
    rng.normal(size=10),
    np.repeat(rng.normal(size=5), 2),
    rng.normal(size=10) * 1e3,
    rng.normal(size=10) * 1e-3,
    np.zeros(10),
  ]
  x = jnp.asarray(np.stack(rows), jnp.float32)
  for epsilon in (1e-3, 1e-1, 1.0, 10.0) if backend == "pav" else (1e-2, 1.0):
    grad = jax.grad(lambda x: (_apply(op, x, backend, options, epsilon=epsilon) ** 2).sum())(x)
    assert np.all(np.isfinite(grad)), (op, epsilon)


@pytest.mark.parametrize("op", OPS)
def test_gradients_equal_finite_differences_in_float64(config, op):
  backend, options, _, _ = config
  with jax.enable_x64(True):
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 6)))
    check_grads(lambda x: _apply(op, x, backend, options, epsilon=0.5), (x,), order=1, modes=["rev"], eps=1e-6)


def test_every_op_runs_under_jit_and_vmap(config):
  backend, options, _, _ = config
  x = jnp.asarray(_distinct((3, 4, 6)))
  # All ops in one program per transformation: compiling is most of this test's time.
  every_op = lambda x: {op: _apply(op, x, backend, options) for op in OPS}
  direct = {op: _apply(op, x, backend, options) for op in OPS}
  for transformed in (jax.jit(every_op), jax.jit(jax.vmap(every_op))):
    got = transformed(x)
    for op in OPS:
      np.testing.assert_allclose(got[op], direct[op], rtol=1e-5, atol=1e-5, err_msg=op)


_BAD_INPUTS = [
  (ValueError, lambda x: otsort.topk(x, 0), r"k must be an int in \[1, 5\] with n = x.shape\[axis\] = 5; got k = 0"),
  (ValueError, lambda x: otsort.topk(x, 6), r"got k = 6"),
  (TypeError, lambda x: otsort.topk_mask(x, 2.5), r"got k = 2.5"),
  (TypeError, lambda x: otsort.topk_mask(x, True), r"got k = True"),
  (ValueError, lambda x: otsort.quantile(x, -0.1), r"q must lie in \[0, 1\]"),
  (ValueError, lambda x: otsort.quantile(x, [0.5, 1.5]), r"q must lie in \[0, 1\]"),
  (ValueError, lambda x: otsort.quantile(x, [[0.5]]), r"q must be a number or a non-empty 1-D sequence"),
  (ValueError, lambda x: otsort.quantile(x, []), r"q must be a number or a non-empty 1-D sequence"),
  (ValueError, lambda x: otsort.sort(x, axis=2), r"axis 2 is out of bounds for an array of dimension 2"),
  (ValueError, lambda x: otsort.ranks(x, axis=-3), r"axis -3 is out of bounds"),
  (
    ValueError,
    lambda x: otsort.sort(x, backend="torch"),
    r"backend must be one of 'pav', 'sinkhorn'; got backend = 'torch'",
  ),
  (
    ValueError,
    lambda x: otsort.sort(x, backend="sinkhorn", regularization="kl"),
    r"unknown option\(s\) 'regularization' for backend='sinkhorn'",
  ),
  (ValueError, lambda x: otsort.sort(x, squashing="none"), r"unknown option\(s\) 'squashing' for backend='pav'"),
  (ValueError, lambda x: otsort.ranks(x, backend="sinkhorn", target_weights=[0.5, 0.6]), r"target_weights"),
  (ValueError, lambda x: otsort.ranks(x, backend="sinkhorn", target_weights=[1.5, -0.5]), r"target_weights"),
  (
    ValueError,
    lambda x: otsort.ranks(x, backend="sinkhorn", num_targets=3, target_weights=[0.5, 0.5]),
    r"target_weights",
  ),
  (
    ValueError,
    lambda x: otsort.quantize(x, 3, backend="pav"),
    r"quantize is not an operation of backend 'pav' \(its operations are quantile, ranks, sort, topk, topk_mask\); "
    r"quantize exists on backend\(s\) 'sinkhorn'",
  ),
  (
    ValueError,
    lambda x: otsort.sort(x, regularisation="kl"),
    r"unknown option\(s\) 'regularisation' for backend='pav'",
  ),
  (ValueError, lambda x: otsort.sort(x, regularization="l1"), r"regularization must be one of 'l2', 'kl'"),
  (ValueError, lambda x: otsort.sort(x, impl="gpu"), r"impl must be one of 'auto', 'native', 'xla'"),
  (ValueError, lambda x: otsort.sort(x, epsilon=0.0), r"epsilon must be a positive finite number; got epsilon = 0.0"),
  (ValueError, lambda x: otsort.sort(x, epsilon=-1), r"epsilon must be a positive finite number"),
  (ValueError, lambda x: otsort.sort(x, epsilon=float("nan")), r"epsilon must be a positive finite number"),
  (ValueError, lambda x: otsort.sort(x, epsilon=float("inf")), r"epsilon must be a positive finite number"),
  (TypeError, lambda x: otsort.sort(x, epsilon=[1.0, 2.0]), r"epsilon must be a real scalar"),
  (TypeError, lambda x: otsort.sort(x, epsilon="small"), r"epsilon must be a real scalar"),
  (TypeError, lambda x: otsort.sort(x, descending="yes"), r"descending must be True or False"),
  (ValueError, lambda x: otsort.sort(x[0, 0]), r"x must have at least one dimension"),
]


@pytest.mark.parametrize("error, call, message", _BAD_INPUTS)
def test_bad_input_raises_an_error_naming_the_argument_even_under_jit(error, call, message):
  x = jnp.ones((3, 5))
  with pytest.raises(error, match=message):
    call(x)
  with pytest.raises(error, match=message):
    jax.jit(call)(x)


def test_a_traced_q_is_refused_with_an_explanation():
  x = jnp.ones((3, 5))
  with pytest.raises(TypeError, match="q must be .*static .*not a traced value"):
    jax.jit(lambda x, q: otsort.quantile(x, q))(x, 0.5)


def test_sinkhorn_only_ops_reach_their_hard_versions_along_any_axis():
  x = _distinct((3, 6))
  values = np.random.default_rng(4).normal(size=(3, 6, 2)).astype(np.float32)
  order = np.argsort(x, axis=-1)
  np.testing.assert_allclose(
    otsort.sort_with(x, values, epsilon=1e-4), np.take_along_axis(values, order[..., None], axis=1), atol=2e-2
  )
  top = otsort.sort_with(x.T, values.transpose(1, 0, 2), topk=2, axis=0, epsilon=1e-4)
  np.testing.assert_allclose(
    top, np.take_along_axis(values, order[:, ::-1, None], axis=1)[:, :2].transpose(1, 0, 2), atol=2e-2
  )
  targets = np.linspace(-1.0, 1.0, 6)
  np.testing.assert_allclose(
    otsort.quantile_normalization(x, targets, epsilon=1e-4), targets[np.argsort(order, axis=-1)], atol=2e-2
  )
  # Three levels over six sorted values: each value becomes the mean of its pair.
  pairs = np.sort(x, axis=-1).reshape(3, 3, 2).mean(-1)
  expected = np.take_along_axis(np.repeat(pairs, 2, axis=-1), np.argsort(order, axis=-1), axis=-1)
  np.testing.assert_allclose(otsort.quantize(x, 3, epsilon=1e-4), expected, atol=2e-2)


def test_sinkhorn_only_ops_refuse_the_pav_backend_and_mismatched_values():
  x = np.ones((2, 4), np.float32)
  for call in (
    lambda: otsort.quantize(x, 2, backend="pav"),
    lambda: otsort.sort_with(x, x, backend="pav"),
    lambda: otsort.quantile_normalization(x, [0.0, 1.0], backend="pav"),
  ):
    with pytest.raises(ValueError, match=r"is not an operation of backend 'pav' .* exists on backend\(s\) 'sinkhorn'"):
      call()
  with pytest.raises(ValueError, match=r"values must have x's shape \(2, 4\) followed by feature dimensions"):
    otsort.sort_with(x, np.ones((2, 5)))
