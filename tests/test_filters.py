"""``otsort.filters``: agreement with scipy.ndimage and with a NumPy reference at small epsilon, for every border
mode, 2-D and ``[H, W, C]`` images, odd and even windows; derivatives against finite differences; jit and vmap;
argument errors.

Cost model: ``pav`` runs eagerly through the native kernel at almost no cost, so it gets the wide sweeps. Every
``sinkhorn`` configuration costs a Sinkhorn compilation (~2 s), so that backend gets a few targeted tests; the
window gathering it relies on is the same code the ``pav`` sweeps check.
"""

from __future__ import annotations

import functools
import re

import jax
from jax import test_util
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from otsort import filters

BACKENDS = ("pav", "sinkhorn")
#: Small epsilons and how far each backend then is from the hard filter (float32). pav (L2) is exact as soon as
#: 1 / epsilon exceeds every gap inside a window, i.e. for epsilon <= 1 on images in [0, 1].
SMALL_EPSILON = {"pav": 1e-2, "sinkhorn": 1e-3}
TOLERANCE = {"pav": 1e-6, "sinkhorn": 3e-3}

# (image shape, window) pairs: 2-D and [H, W, C]; square and rectangular, odd and even windows; windows as large
# as the image (the borders extended by up to half the image). Eager calls compile their small ops once per pair,
# so the sweeps below go over these pairs only.
CASES = (
  ((7, 9), 3),
  ((7, 9), (3, 5)),
  ((7, 9), 4),
  ((7, 9), (2, 3)),
  ((6, 5, 3), 3),
  ((6, 5, 3), (1, 4)),
  ((5, 6), 5),
  ((5, 6), (5, 6)),
  ((2, 3), (2, 3)),
)


def image(shape, seed=0, dtype=np.float32) -> np.ndarray:
  return np.random.default_rng(seed).random(shape).astype(dtype)


def scipy_size(size, ndim: int) -> tuple[int, ...]:
  """Our window as scipy's ``size``: one pixel along the channel axis."""
  pair = (size, size) if isinstance(size, int) else tuple(size)
  return pair + (1,) * (ndim - 2)


def reference_quantile_filter(x: np.ndarray, q: float, size, mode: str, cval: float) -> np.ndarray:
  """jnp.quantile of each window (linear interpolation), windows placed like scipy's, in float64 NumPy."""
  h, w = scipy_size(size, 2)
  widths = [(h // 2, (h - 1) // 2), (w // 2, (w - 1) // 2)] + [(0, 0)] * (x.ndim - 2)
  numpy_mode = {"reflect": "symmetric", "mirror": "reflect", "nearest": "edge", "wrap": "wrap"}
  if mode == "constant":
    padded = np.pad(x.astype(np.float64), widths, mode="constant", constant_values=cval)
  else:
    padded = np.pad(x.astype(np.float64), widths, mode=numpy_mode[mode])
  windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(0, 1))  # [H, W, (C,) h, w]
  return np.quantile(windows.reshape(*windows.shape[:-2], h * w), q, axis=-1)


@pytest.mark.parametrize("mode", filters.MODES)
def test_median_filter_equals_scipy_at_small_epsilon(mode):
  for shape, size in CASES:
    if np.prod(scipy_size(size, 2)) % 2 == 0:
      continue  # an even number of values: scipy's median is the upper middle one, ours the mean of both
    x = image(shape)
    expected = scipy.ndimage.median_filter(x, size=scipy_size(size, x.ndim), mode=mode, cval=0.3)
    out = filters.median_filter(x, size=size, mode=mode, cval=0.3, epsilon=SMALL_EPSILON["pav"])
    assert out.shape == x.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(out, expected, atol=TOLERANCE["pav"], err_msg=f"shape={shape}, size={size}")


@pytest.mark.parametrize("mode", filters.MODES)
def test_quantile_filter_equals_scipy_percentile_filter_where_no_interpolation(mode):
  # scipy.ndimage.percentile_filter reads position floor(q n) of the sorted window, jnp.quantile interpolates
  # at q (n - 1): they agree at q = 0, 1, and wherever both positions are the same integer.
  for shape, size in CASES:
    x = image(shape, seed=1)
    n = int(np.prod(scipy_size(size, 2)))
    for q in (0.0, 0.25, 0.5, 0.75, 1.0):
      position = q * (n - 1)
      if q not in (0.0, 1.0) and (position != int(position) or int(position) != int(q * n)):
        continue
      expected = scipy.ndimage.percentile_filter(x, 100 * q, size=scipy_size(size, x.ndim), mode=mode, cval=-0.5)
      out = filters.quantile_filter(x, q, size=size, mode=mode, cval=-0.5, epsilon=SMALL_EPSILON["pav"])
      np.testing.assert_allclose(out, expected, atol=TOLERANCE["pav"], err_msg=f"shape={shape}, size={size}, q={q}")


@pytest.mark.parametrize("mode", filters.MODES)
def test_quantile_filter_interpolates_like_jnp_quantile(mode):
  for shape, size in CASES:
    x = image(shape, seed=2)
    for q in (0.1, 0.5, 0.9):
      expected = reference_quantile_filter(x, q, size, mode, cval=0.7)
      out = filters.quantile_filter(x, q, size=size, mode=mode, cval=0.7, epsilon=SMALL_EPSILON["pav"])
      np.testing.assert_allclose(out, expected, atol=1e-6, err_msg=f"shape={shape}, size={size}, q={q}")


def test_even_windows_reach_further_up_and_left_like_scipy():
  # A single hot pixel under a maximum filter shows where the window sits.
  x = np.zeros((6, 6), np.float32)
  x[2, 3] = 1.0
  out = np.asarray(filters.quantile_filter(x, 1.0, size=(2, 4), mode="constant", epsilon=1e-2))
  np.testing.assert_array_equal(out, scipy.ndimage.maximum_filter(x, size=(2, 4), mode="constant"))
  assert out[2:4, 2:6].all() and out.sum() == 8  # windows cover rows i - 1 .. i and columns j - 2 .. j + 1


def test_even_window_median_averages_the_two_middle_values():
  x = np.array([[0.0, 1.0], [2.0, 10.0]], np.float32)  # the top-left window under size 2 and mode "nearest"
  out = filters.median_filter(x, size=2, mode="nearest", epsilon=1e-3)
  assert out[1, 1] == pytest.approx(1.5)  # (1 + 2) / 2, where scipy.ndimage.median_filter returns 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", ((7, 9), (6, 5, 3)))
def test_median_filter_equals_scipy_on_both_backends(backend, shape):
  x = image(shape, seed=3)
  fn = jax.jit(
    functools.partial(filters.median_filter, size=3, mode="reflect", epsilon=SMALL_EPSILON[backend], backend=backend)
  )
  expected = scipy.ndimage.median_filter(x, size=scipy_size(3, x.ndim), mode="reflect")
  np.testing.assert_allclose(fn(x), expected, atol=TOLERANCE[backend])


@pytest.mark.parametrize("backend", BACKENDS)
def test_soft_median_moves_towards_the_window_mean_as_epsilon_grows(backend):
  x = image((6, 7), seed=4)
  mean = scipy.ndimage.uniform_filter(x.astype(np.float64), size=3, mode="reflect")
  hard = scipy.ndimage.median_filter(x, size=3, mode="reflect")
  epsilons = {"pav": (3.0, 10.0, 1e6), "sinkhorn": (1e-2, 1e-1, 1e2)}[backend]
  fn = jax.jit(filters.median_filter, static_argnames=("epsilon", "backend"))  # one Sinkhorn compile, not many
  outs = [fn(x, epsilon=e, backend=backend) for e in epsilons]
  distances = [np.abs(out - mean).mean() for out in outs]
  assert np.abs(hard - mean).mean() + TOLERANCE[backend] >= distances[0] > distances[1] > distances[2]
  np.testing.assert_allclose(outs[2], mean, atol=1e-5)  # every window's soft sort tends to its mean


def test_integer_images_are_filtered_as_floats():
  x = (255 * image((5, 6))).astype(np.uint8)
  out = filters.median_filter(x, epsilon=1e-3)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, scipy.ndimage.median_filter(x, size=3), atol=1e-4)


def test_float64_stays_float64(x64):
  x = image((5, 6), dtype=np.float64)
  out = filters.median_filter(x, epsilon=1e-3)
  assert out.dtype == jnp.float64
  np.testing.assert_allclose(out, scipy.ndimage.median_filter(x, size=3), atol=1e-12)


def test_jit_with_static_options_equals_eager():
  x = image((6, 5, 3), seed=5)
  fn = jax.jit(filters.quantile_filter, static_argnames=("q", "size", "mode", "epsilon", "backend"))
  kwargs = dict(q=0.3, size=(3, 5), mode="wrap", epsilon=3.0)
  np.testing.assert_allclose(fn(x, **kwargs), filters.quantile_filter(x, **kwargs), atol=1e-6)


def test_cval_may_be_traced_under_jit():
  x = image((5, 5), seed=6)
  fn = jax.jit(lambda x, c: filters.quantile_filter(x, 1.0, mode="constant", cval=c, epsilon=1e-2))
  np.testing.assert_allclose(fn(x, 2.0), scipy.ndimage.maximum_filter(x, size=3, mode="constant", cval=2.0))


def test_vmap_over_a_batch_of_images_equals_a_loop():
  batch = image((3, 6, 7), seed=7)
  out = jax.vmap(lambda x: filters.median_filter(x, size=3, epsilon=5.0))(batch)
  np.testing.assert_allclose(out, np.stack([filters.median_filter(x, size=3, epsilon=5.0) for x in batch]), atol=1e-6)


@pytest.mark.parametrize(("regularization", "mode"), (("l2", "reflect"), ("kl", "constant")))
def test_pav_gradients_equal_finite_differences(x64, regularization, mode):
  # With mode="constant" the derivative with respect to cval is checked too.
  x = image((4, 5, 2), seed=8, dtype=np.float64)
  fn = lambda x, cval: filters.quantile_filter(
    x, 0.4, size=3, mode=mode, cval=cval, epsilon=5.0, regularization=regularization
  )
  test_util.check_grads(fn, (x, 0.2), order=1, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


def test_soft_median_gradient_spreads_over_the_window():
  # The hard median's gradient picks one pixel of the window; the soft one reaches several.
  x = image((5, 5), seed=10)
  center = lambda e: jax.grad(lambda x: filters.median_filter(x, size=3, epsilon=e)[2, 2])(x)
  hard, soft = np.asarray(center(1.0)), np.asarray(center(10.0))
  assert np.count_nonzero(hard) == 1 and np.count_nonzero(soft) > 1
  assert np.count_nonzero(soft[1:4, 1:4]) == np.count_nonzero(soft)  # only the window itself
  np.testing.assert_allclose(soft.sum(), 1.0, atol=1e-5)  # shifting the image shifts the median


def test_sinkhorn_gradients_equal_finite_differences(x64):
  x = image((3, 4), seed=11, dtype=np.float64)
  fn = jax.jit(
    functools.partial(filters.median_filter, size=3, mode="reflect", epsilon=0.1, backend="sinkhorn", threshold=1e-10)
  )
  # Reverse mode only: the Sinkhorn solver is a custom_vjp function.
  test_util.check_grads(fn, (x,), order=1, modes=("rev",), atol=1e-5, rtol=1e-5)


def test_empty_image_is_returned_as_is():
  assert filters.median_filter(np.zeros((0, 4), np.float32)).shape == (0, 4)


@pytest.mark.parametrize(
  ("error", "kwargs", "match"),
  [
    (ValueError, dict(q=1.5), r"q must be a number in \[0, 1\]; got q = 1.5"),
    (ValueError, dict(q=-0.1), r"q must be a number in \[0, 1\]"),
    (ValueError, dict(q=float("nan")), r"q must be a number in \[0, 1\]"),
    (TypeError, dict(q=(0.2, 0.5)), r"q must be a number in \[0, 1\] \(one level per filter\)"),
    (TypeError, dict(q=True), r"q must be a number"),
    (ValueError, dict(size=0), r"size must be a positive int or a pair \(h, w\) of positive ints; got size = 0"),
    (ValueError, dict(size=-3), r"size must be a positive int .*; got size = -3"),
    (ValueError, dict(size=(3, 0)), r"size must be a positive int .*; got size = \(3, 0\)"),
    (ValueError, dict(size=(3, 3, 3)), r"size must be a positive int or a pair \(h, w\)"),
    (TypeError, dict(size=2.5), r"size must be a positive int"),
    (
      ValueError,
      dict(mode="same"),
      r"mode must be one of 'reflect', 'mirror', 'nearest', 'constant', 'wrap'; "
      r"got mode = 'same'",
    ),
    (ValueError, dict(mode="symmetric"), r"mode must be one of .*; got mode = 'symmetric'"),
    (ValueError, dict(cval=np.zeros(3)), r"cval must be a scalar"),
    (ValueError, dict(epsilon=-1.0), r"epsilon must be a positive finite number"),
    (ValueError, dict(backend="sort"), r"backend must be one of .*'pav'.*; got backend = 'sort'"),
    (ValueError, dict(regularization="l1"), r"regularization must be one of 'l2', 'kl'"),
  ],
)
def test_bad_arguments_raise_errors_naming_them(error, kwargs, match):
  kwargs = {"q": 0.5, **kwargs}
  with pytest.raises(error, match=match):
    filters.quantile_filter(image((4, 4)), **kwargs)


@pytest.mark.parametrize("size", (5, (4, 7), (2, 7), 10**12))
def test_a_window_larger_than_the_image_is_refused_before_any_work(size, monkeypatch):
  def gather(*args):
    raise AssertionError("the windows were gathered before the size was checked")

  monkeypatch.setattr(filters, "_windows", gather)
  with pytest.raises(
    ValueError,
    match=r"size must fit in the image, h <= H and w <= W with \(H, W\) = \(4, 6\) "
    rf"\(image.shape = \(4, 6, 3\)\); got size = {re.escape(repr(size))}$",
  ):
    filters.median_filter(image((4, 6, 3)), size=size)


def test_windows_are_gathered_in_as_many_operations_whatever_their_size():
  # One slice per window offset compiled for minutes once h * w reached the thousands.
  def count(size):
    return len(jax.make_jaxpr(lambda x: filters._windows(x, size, "mirror", 0.0))(image((8, 9))).jaxpr.eqns)

  assert count((2, 2)) == count((8, 9))


@pytest.mark.parametrize("shape", ((5,), (2, 4, 4, 3), ()))
def test_images_must_be_2d_or_3d(shape):
  with pytest.raises(
    ValueError,
    match=r"image must be \[H, W\] or \[H, W, C\] \(ndim 2 or 3\); got image.shape"
    r" = .*For a batch of images, use jax.vmap",
  ):
    filters.median_filter(np.zeros(shape, np.float32))


def test_traced_q_is_rejected():
  with pytest.raises(TypeError, match="q must be a static Python number"):
    jax.jit(lambda q: filters.quantile_filter(image((4, 4)), q))(0.5)
