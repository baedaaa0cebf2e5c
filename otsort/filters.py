r"""Soft rank filters for images: a differentiable :func:`scipy.ndimage.median_filter`.

Each output pixel is the soft quantile (:func:`otsort.quantile`) of the values in a ``size[0] x size[1]``
window around it (a window no larger than the image). Images are ``[H, W]`` or ``[H, W, C]``; channels are
filtered independently. There are no leading batch dimensions (a 3-D array would be ambiguous between
``[B, H, W]`` and ``[H, W, C]``): map over a batch with :func:`jax.vmap`.

Windows and borders follow :mod:`scipy.ndimage` (with ``origin=0``): the window of pixel :math:`(i, j)` covers
rows :math:`i - \lfloor h/2 \rfloor, \dots, i + \lceil h/2 \rceil - 1` and the same for columns, so an even
size reaches one pixel further up (left) than down (right), as in scipy. Pixels outside the image are filled
by ``mode``:

==============  ================================  ==========================================
``mode``        extension of ``a b c d``          :func:`jax.numpy.pad` mode
==============  ================================  ==========================================
``"reflect"``   ``d c b a | a b c d | d c b a``   ``"symmetric"``
``"mirror"``    ``d c b | a b c d | c b a``       ``"reflect"``
``"nearest"``   ``a a a a | a b c d | d d d d``   ``"edge"``
``"constant"``  ``k k k k | a b c d | k k k k``   ``"constant"``, ``constant_values=cval``
``"wrap"``      ``a b c d | a b c d | a b c d``   ``"wrap"``
==============  ================================  ==========================================

The windows are gathered without a loop over pixels: the image is padded once and one indexing operation gathers
every pixel's window along a new last axis (``[H, W, (C,) h * w]``, so memory grows with the window area), then
every window is a row of :func:`otsort.quantile`.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

import otsort
from otsort import _checks
from otsort._contract import Backend

__all__ = ["MODES", "median_filter", "quantile_filter"]

#: Border modes, named as in :mod:`scipy.ndimage`.
MODES = ("reflect", "mirror", "nearest", "constant", "wrap")

# scipy.ndimage's names -> jax.numpy.pad's names for the same extension.
_PAD_MODES = {"reflect": "symmetric", "mirror": "reflect", "nearest": "edge", "constant": "constant", "wrap": "wrap"}


def _check_image(image: ArrayLike) -> jax.Array:
  image = _checks.as_array("image", image)
  _checks.check_real_dtype("image", image.dtype)
  if image.ndim not in (2, 3):
    raise ValueError(
      f"image must be [H, W] or [H, W, C] (ndim 2 or 3); got image.shape = {image.shape} "
      f"(ndim {image.ndim}). For a batch of images, use jax.vmap over the batch axis."
    )
  if not jnp.issubdtype(image.dtype, jnp.floating):
    image = image.astype(jnp.result_type(float))  # integer images (uint8 photos) are filtered as floats
  return image


def _check_size(size: Any) -> tuple[int, int]:
  message = f"size must be a positive int or a pair (h, w) of positive ints; got size = {size!r}"
  is_int = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
  if is_int(size):
    size = (size, size)
  if not isinstance(size, (tuple, list)) or not all(is_int(v) for v in size):
    raise TypeError(message)
  if len(size) != 2 or min(size) < 1:
    raise ValueError(message)
  return int(size[0]), int(size[1])


def _check_fits(size: Any, window: tuple[int, int], shape: tuple[int, ...]) -> None:
  # Past the image, a larger window only repeats the extended borders while the work (h * w values per pixel)
  # keeps growing; an absurd size would take forever to gather before failing for lack of memory.
  if window[0] > shape[0] or window[1] > shape[1]:
    raise ValueError(
      f"size must fit in the image, h <= H and w <= W with (H, W) = {tuple(shape[:2])} "
      f"(image.shape = {tuple(shape)}); got size = {size!r}"
    )


def _check_level(q: Any) -> float:
  if _checks.is_traced(q):
    raise TypeError(
      "q must be a static Python number in [0, 1], not a traced value: it selects which "
      "soft-sorted value is read (mark it static under jit)"
    )
  if (
    isinstance(q, (bool, np.bool_))
    or not isinstance(q, (numbers.Real, np.ndarray, jax.Array))
    or np.ndim(q)
    or not (np.issubdtype(np.asarray(q).dtype, np.integer) or np.issubdtype(np.asarray(q).dtype, np.floating))
  ):
    raise TypeError(f"q must be a number in [0, 1] (one level per filter); got q = {_checks.show(q)}")
  level = float(q)
  if not 0.0 <= level <= 1.0:  # also rejects NaN
    raise ValueError(f"q must be a number in [0, 1]; got q = {q!r}")
  return level


def _windows(image: jax.Array, size: tuple[int, int], mode: str, cval: ArrayLike) -> jax.Array:
  """``[H, W, ...]`` -> ``[H, W, ..., h * w]``: each pixel's window, scipy's placement (origin 0)."""
  (h, w), (rows, cols) = size, image.shape[:2]
  widths = [(h // 2, (h - 1) // 2), (w // 2, (w - 1) // 2)] + [(0, 0)] * (image.ndim - 2)
  if mode == "constant":
    padded = jnp.pad(image, widths, mode="constant", constant_values=jnp.asarray(cval, image.dtype))
  else:
    padded = jnp.pad(image, widths, mode=_PAD_MODES[mode])
  # One gather, [H, W, h, w, ...]: stacking h * w shifted slices instead compiles for minutes once h * w is large.
  row_index = np.arange(rows)[:, None] + np.arange(h)[None, :]
  col_index = np.arange(cols)[:, None] + np.arange(w)[None, :]
  windows = padded[row_index[:, None, :, None], col_index[None, :, None, :]]
  windows = jnp.moveaxis(windows, (2, 3), (-2, -1))  # [H, W, ..., h, w]
  return windows.reshape(*windows.shape[:-2], h * w)


def quantile_filter(
  image: ArrayLike,
  q: float,
  *,
  size: int | tuple[int, int] = 3,
  mode: str = "reflect",
  cval: ArrayLike = 0.0,
  epsilon: float | None = None,
  backend: str | Backend = "pav",
  **options: Any,
) -> jax.Array:
  r"""Soft quantile filter: each pixel becomes a soft quantile of its window.

  With :math:`\tilde x` the image extended beyond its borders by ``mode`` and :math:`Q_\varepsilon(\cdot, q)`
  the soft quantile of :func:`otsort.quantile`,

  .. math::

    y_{ij} = Q_\varepsilon\bigl(\{\tilde x_{i + a,\, j + b} : -\lfloor h/2 \rfloor \le a < \lceil h/2 \rceil,\;
    -\lfloor w/2 \rfloor \le b < \lceil w/2 \rceil\},\; q\bigr).

  As :math:`\varepsilon \to 0` this is the hard quantile of each window, with :func:`jax.numpy.quantile`'s
  linear interpolation at position :math:`q (hw - 1)` of the sorted window. It then equals
  ``scipy.ndimage.percentile_filter(image, 100 q, size)`` whenever that position is an integer, since scipy
  picks the value at position :math:`\lfloor q\,hw \rfloor` without interpolating (e.g. q in {0, 1/4, 1/2, 3/4,
  1} for a 3 x 3 window).

  The scale of ``epsilon`` is the backend's. ``pav`` (L2) sorts a window exactly when no two of its consecutive
  sorted values are more than :math:`1/\varepsilon` apart, so for images in [0, 1] the default
  :math:`\varepsilon = 1` is the hard filter and smoothing starts above it; as :math:`\varepsilon \to \infty`
  the output tends to the window mean (a box filter). ``sinkhorn`` standardises each window first, so its
  ``epsilon`` does not depend on the image's scale.

  Args:
    image: ``[H, W]`` or ``[H, W, C]`` (channels filtered independently). Integer images are promoted to JAX's
      default float dtype.
    q: the level, a static number in [0, 1] (0: soft minimum filter, 0.5: soft median, 1: soft maximum).
    size: the window, an int for a square one or a pair ``(h, w)``, with ``1 <= h <= H`` and ``1 <= w <= W``
      (it must fit in the image). Even sizes are allowed and placed like scipy's (one more pixel above / left of
      the centre).
    mode: how the image is extended past its borders, as in :mod:`scipy.ndimage`: ``"reflect"`` (default),
      ``"mirror"``, ``"nearest"``, ``"constant"`` or ``"wrap"`` (see the module docstring).
    cval: the fill value for ``mode="constant"``; ignored otherwise.
    epsilon: regularization strength, > 0; ``None`` picks the backend's default (``pav``: 1.0,
      ``sinkhorn``: 1e-2).
    backend: ``"pav"``, ``"sinkhorn"`` (O(n^2) per window of n values; fine for 3 x 3 and 5 x 5), or a backend
      object (:class:`otsort.Pav`, :class:`otsort.Sinkhorn`).
    **options: backend options, passed to :func:`otsort.quantile` (``pav``: ``regularization``, ``impl``).

  Returns:
    An array of ``image``'s shape and float dtype (an empty image is returned as it is). Differentiable with
    respect to ``image`` (and ``cval``); ``jit`` with ``q``, ``size``, ``mode``, ``epsilon`` and ``backend``
    static.

  Raises:
    TypeError: for an argument of the wrong type (an image that is not an array of real numbers, a q or size that
      is not a number, a traced q).
    ValueError: for an image that is not 2-D or 3-D, q outside [0, 1], a size that is not positive or larger than
      the image, an unknown mode, or a bad epsilon, backend or option. These checks come before any work.

  Example:
    >>> import jax.numpy as jnp
    >>> from otsort import filters
    >>> image = jnp.zeros((5, 5)).at[2, 2].set(1.0)  # a single hot pixel
    >>> filters.quantile_filter(image, 1.0, size=3, epsilon=0.1)[1:4, 1:4].sum()  # a soft maximum filter
    Array(9., dtype=float32)
  """
  level = _check_level(q)
  window = _check_size(size)
  _checks.check_choice("mode", mode, MODES)
  cval = _checks.as_array("cval", cval)
  _checks.check_real_dtype("cval", cval.dtype)
  if cval.ndim != 0:
    raise ValueError(f"cval must be a scalar; got cval with shape {cval.shape}")
  image = _check_image(image)
  if image.size == 0:
    return image
  _check_fits(size, window, image.shape)
  windows = _windows(image, window, mode, cval)
  return otsort.quantile(windows, level, axis=-1, epsilon=epsilon, backend=backend, **options)


def median_filter(
  image: ArrayLike,
  *,
  size: int | tuple[int, int] = 3,
  mode: str = "reflect",
  cval: ArrayLike = 0.0,
  epsilon: float | None = None,
  backend: str | Backend = "pav",
  **options: Any,
) -> jax.Array:
  r"""Soft median filter: :func:`quantile_filter` with :math:`q = 1/2`.

  For windows with an odd number of values and small ``epsilon`` it equals
  :func:`scipy.ndimage.median_filter`. With an even number of values (e.g. ``size=4``) it tends to the mean
  of the two middle values, like :func:`jax.numpy.median`, whereas scipy returns the upper one.

  Args:
    image: ``[H, W]`` or ``[H, W, C]`` (channels filtered independently).
    size: the window, an int or a pair ``(h, w)``, with ``1 <= h <= H`` and ``1 <= w <= W``.
    mode: ``"reflect"`` (default), ``"mirror"``, ``"nearest"``, ``"constant"`` or ``"wrap"``, as in
      :mod:`scipy.ndimage`.
    cval: the fill value for ``mode="constant"``.
    epsilon: regularization strength, > 0; ``None`` picks the backend's default.
    backend: ``"pav"``, ``"sinkhorn"`` or a backend object.
    **options: backend options, passed to :func:`otsort.quantile`.

  Returns:
    An array of ``image``'s shape and float dtype.

  Example:
    >>> import numpy as np
    >>> from otsort import filters
    >>> noisy = np.array([[0.2, 0.2, 0.2], [0.2, 1.0, 0.2], [0.2, 0.2, 0.2]])
    >>> filters.median_filter(noisy, size=3, epsilon=0.1)[1, 1]
    Array(0.2, dtype=float32)

  References:
    Blondel, Teboul, Berthet, Djolonga, "Fast Differentiable Sorting and Ranking", ICML 2020 (pav).

    Cuturi, Teboul, Vert, "Differentiable Ranks and Sorting using Optimal Transport", NeurIPS 2019 (sinkhorn).
  """
  return quantile_filter(image, 0.5, size=size, mode=mode, cval=cval, epsilon=epsilon, backend=backend, **options)
