"""Argument checks shared by the front end, the backends, the losses and the filters.

One vocabulary: a wrong type raises ``TypeError``, a wrong value ``ValueError``, and every message names the
argument, the value it got and what is allowed (``"k must be an int in [1, 5]; got k = 9"``). The checks run at
trace time, so they also fire under ``jit``; a traced value cannot be checked and is refused where the value fixes
a shape (``k``, ``q``, ``num_levels``), passed on elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def show(value: Any, limit: int = 80) -> str:
  """``repr(value)``, cut to ``limit`` characters (an error message should not print a whole array)."""
  text = repr(value)
  return text if len(text) <= limit else text[: limit - 3] + "..."


def is_traced(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def _is_bool(value: Any) -> bool:
  return isinstance(value, (bool, np.bool_))


def _scalar(value: Any) -> Any:
  """A concrete 0-d NumPy or JAX array as a NumPy scalar; anything else as it is."""
  if isinstance(value, (np.ndarray, jax.Array)) and not is_traced(value) and value.ndim == 0:
    return np.asarray(value)[()]
  return value


def check_bool(name: str, value: Any) -> bool:
  """``value`` as a Python bool; ``TypeError`` for anything that is not ``True`` or ``False``."""
  if not _is_bool(value):
    raise TypeError(f"{name} must be True or False; got {name} = {show(value)}")
  return bool(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
  """``value`` if it is one of the strings ``choices``: ``TypeError`` for a non-string, ``ValueError`` otherwise."""
  allowed = ", ".join(repr(c) for c in choices)
  if not isinstance(value, str):
    raise TypeError(f"{name} must be one of {allowed}; got {name} = {show(value)}")
  if value not in choices:
    raise ValueError(f"{name} must be one of {allowed}; got {name} = {value!r}")
  return value


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None, where: str = "") -> int:
  """``value`` as a Python int in ``[low, high]``.

  Accepts Python and NumPy integers and concrete 0-d integer arrays; ``TypeError`` for anything else (a bool, a
  float, a traced value: these numbers fix shapes or loop bounds, so they must be static), ``ValueError`` out of
  range. ``where`` completes the range in the message (``"with n = x.shape[axis] = 7"``).
  """
  scalar = _scalar(value)
  if _is_bool(scalar) or not isinstance(scalar, (int, np.integer)):
    raise TypeError(
      f"{name} must be an int{_range(low, high, where)} (a Python or NumPy integer, not traced); got "
      f"{name} = {show(value)}"
    )
  if (low is not None and scalar < low) or (high is not None and scalar > high):
    raise ValueError(f"{name} must be an int{_range(low, high, where)}; got {name} = {show(value)}")
  return int(scalar)


def _range(low: Any, high: Any, where: str) -> str:
  if low is None and high is None:
    text = ""
  elif high is None:
    text = f" >= {low}"
  elif low is None:
    text = f" <= {high}"
  else:
    text = f" in [{low}, {high}]"
  return f"{text} {where}" if where else text


def check_real(name: str, value: Any, *, positive: bool = False) -> float:
  """``value`` as a finite Python float (positive if asked).

  Accepts Python, NumPy and concrete 0-d real numbers; ``TypeError`` for anything else (a bool, a string, an
  array with dimensions, a traced value), ``ValueError`` for a non-finite or (with ``positive``) non-positive one.
  """
  scalar = _scalar(value)
  if _is_bool(scalar) or not isinstance(scalar, (numbers.Real, np.integer, np.floating)):
    raise TypeError(f"{name} must be a real number (a Python or NumPy number, not traced); got {name} = {show(value)}")
  number = float(scalar)
  if not np.isfinite(number) or (positive and number <= 0):
    raise ValueError(f"{name} must be a {'positive ' if positive else ''}finite number; got {name} = {show(value)}")
  return number


def check_option_names(backend: str, options: dict, allowed: Sequence[str]) -> None:
  """``ValueError`` naming the options that ``backend`` does not have, and the ones it has."""
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise ValueError(
      f"unknown option(s) {', '.join(map(repr, unknown))} for backend={backend!r}; "
      f"its options are {', '.join(map(repr, allowed))}"
    )


def field_names(options_type: type) -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(options_type))


def normalize_axis(axis: Any, ndim: int) -> int:
  """``axis`` in ``[0, ndim)``; ``TypeError`` for a non-int, ``ValueError`` out of bounds."""
  if _is_bool(axis) or not isinstance(axis, (int, np.integer)):
    raise TypeError(f"axis must be an int; got axis = {show(axis)}")
  if not -ndim <= axis < ndim:
    raise ValueError(f"axis {axis} is out of bounds for an array of dimension {ndim}")
  return int(axis) % ndim


def as_array(name: str, value: Any) -> jax.Array:
  """``value`` as a JAX array of numbers or booleans; ``TypeError`` naming ``name`` for anything else (``None``, a
  string, a dict, ragged lists, objects)."""
  if is_traced(value) or isinstance(value, jax.Array):
    return value
  if value is None or isinstance(value, (str, bytes, dict, set)):
    raise TypeError(f"{name} must be an array of numbers; got {name} = {show(value)}")
  try:
    array = np.asarray(value) if not hasattr(value, "__jax_array__") else value
    if isinstance(array, np.ndarray) and not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
      raise TypeError(f"dtype {array.dtype}")
    return jnp.asarray(array)
  except (TypeError, ValueError) as error:
    raise TypeError(f"{name} must be an array of numbers; got {name} = {show(value)} ({error})") from None


def check_real_dtype(name: str, dtype: Any) -> None:
  """``TypeError`` for a complex dtype: the soft operations order real numbers."""
  if jnp.issubdtype(jnp.dtype(dtype), jnp.complexfloating):
    raise TypeError(f"{name} must be real; got dtype {jnp.dtype(dtype)}")


def float_dtypes(dtype: Any, name: str = "x") -> tuple[jnp.dtype, jnp.dtype]:
  """(the dtype to compute in, the dtype to return) for an input of ``dtype``.

  float32 and float64 as they are; float16 and bfloat16 computed in float32 and returned in their own dtype;
  integers and booleans promoted to JAX's default float dtype; complex refused (``TypeError`` naming ``name``).
  """
  dtype = jnp.dtype(dtype)
  check_real_dtype(name, dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    promoted = jnp.dtype(jnp.result_type(float))
    return promoted, promoted
  if dtype.itemsize < 4:
    return jnp.dtype(jnp.float32), dtype
  return dtype, dtype


def epsilon_array(epsilon: Any, batch_shape: tuple[int, ...], axis: int, dtype: Any) -> jax.Array:
  """``epsilon`` as one value per row: an array of ``batch_shape`` (``x.shape`` without ``axis``) in ``dtype``.

  Accepts a Python or NumPy number, or an array broadcastable to ``batch_shape`` (or to ``x.shape`` with size 1
  along ``axis``). Concrete values must be positive, finite and at least the smallest normal number of ``dtype``
  (XLA flushes subnormals to zero); a traced epsilon cannot be checked and is passed on as it is.
  """
  if (
    _is_bool(epsilon)
    or isinstance(epsilon, (str, bytes))
    or not (isinstance(epsilon, (numbers.Real, np.ndarray, np.generic, jax.Array)) or hasattr(epsilon, "__jax_array__"))
  ):
    raise TypeError(f"epsilon must be a real scalar or an array of them (one per row); got epsilon = {show(epsilon)}")
  traced = is_traced(epsilon)
  value = epsilon if traced else np.asarray(epsilon)
  if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)) or np.issubdtype(
    value.dtype, np.bool_
  ):
    raise TypeError(f"epsilon must be a real scalar or an array of them; got epsilon with dtype {value.dtype}")
  shape = tuple(value.shape)
  if len(shape) == len(batch_shape) + 1 and shape[axis] == 1:  # x's layout, size 1 along axis
    shape = shape[:axis] + shape[axis + 1 :]
    value = value.reshape(shape)
  try:
    fits = np.broadcast_shapes(shape, batch_shape) == tuple(batch_shape)
  except ValueError:
    fits = False
  if not fits:
    raise ValueError(
      f"epsilon must be a number or an array broadcastable to x.shape without axis, "
      f"{tuple(batch_shape)} (one epsilon per row; or x's shape with size 1 along axis); got "
      f"epsilon.shape = {tuple(value.shape)}"
    )
  if not traced:
    with np.errstate(over="ignore"):
      cast = np.asarray(value, dtype=np.dtype(dtype))
      overflow = (np.isinf(cast) & np.isfinite(np.asarray(value, np.float64))).ravel()
    tiny = np.finfo(np.dtype(dtype)).tiny
    if np.any(overflow):
      raise ValueError(
        f"epsilon must be a positive finite number in x's compute dtype {np.dtype(dtype).name}, at "
        f"most {np.finfo(np.dtype(dtype)).max:.3g}; got epsilon = "
        f"{np.asarray(value).ravel()[overflow][0].item()!r}"
      )
    if cast.size and not np.all(np.isfinite(cast) & (cast >= tiny)):
      bad = np.asarray(value).ravel()[~(np.isfinite(cast) & (cast >= tiny)).ravel()][0]
      raise ValueError(
        f"epsilon must be a positive finite number; got epsilon = {bad.item()!r} (at least "
        f"{tiny:.3g}, the smallest normal number of x's compute dtype {np.dtype(dtype).name}: XLA "
        f"flushes smaller ones to zero)"
      )
  return jnp.broadcast_to(jnp.asarray(value, dtype), batch_shape)


#: Weights given by a user (often float32 arrays) must sum to 1 up to this absolute tolerance; they are then
#: renormalised exactly in float64.
WEIGHT_SUM_ATOL = 1e-5


def concrete_floats(name: str, value: Any) -> tuple[float, ...]:
  """A concrete, finite, non-empty 1-D sequence or array as a tuple of Python floats (checked at trace time)."""
  if is_traced(value):
    raise TypeError(
      f"{name} must be a concrete 1-D sequence of floats (a list, tuple or a non-traced array) so "
      f"that it can be checked at trace time; got a traced {name}"
    )
  if value is None or isinstance(value, (str, bytes, dict, set)):
    raise TypeError(f"{name} must be a 1-D sequence of real numbers; got {name} = {show(value)}")
  try:
    array = np.asarray(value)
    check_real_dtype(name, array.dtype)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
      raise TypeError(f"dtype {array.dtype}")
    array = array.astype(np.float64)
  except (TypeError, ValueError) as error:
    raise TypeError(f"{name} must be a 1-D sequence of real numbers; got {name} = {show(value)} ({error})") from None
  if array.ndim != 1 or array.size == 0:
    raise ValueError(f"{name} must be a non-empty 1-D sequence; got shape {array.shape}")
  if not np.all(np.isfinite(array)):
    raise ValueError(f"{name} must be finite; got {name} = {array.tolist()}")
  return tuple(float(v) for v in array)


def check_weights(name: str, weights: Any, *, length: int | None = None) -> tuple[float, ...]:
  """Probability weights ``[m]``: concrete, positive, summing to 1 within ``WEIGHT_SUM_ATOL``; returned as
  Python floats renormalised to sum to 1. ``length``, if given, is the required ``m``."""
  w = np.asarray(concrete_floats(name, weights))
  if length is not None and w.size != length:
    raise ValueError(f"{name} must have length {length}; got length {w.size}")
  # Zero weights are refused rather than masked: a target with no mass has a dual potential of -inf, which only
  # adds NaN risks to gradients. Drop it.
  if np.any(w <= 0):
    raise ValueError(f"{name} must all be positive (drop targets with zero mass); got {name} = {w.tolist()}")
  total = float(w.sum())
  if abs(total - 1.0) > WEIGHT_SUM_ATOL:
    raise ValueError(f"{name} must sum to 1 (within {WEIGHT_SUM_ATOL}); got sum {total!r}")
  return tuple(float(v) for v in w / total)


def check_sorted_values(name: str, values: Any, dtype: Any, *, min_size: int = 2) -> jax.Array:
  """``[m]`` real values, ``m >= min_size``; if concrete, also finite and non-decreasing. Returned in ``dtype``.

  A traced array can only be checked for its shape and dtype. Whether ``values`` is traced is decided on the
  argument as given: a NumPy array or a list is concrete under ``jit`` too (``jnp.asarray`` would trace it).
  """
  concrete = not is_traced(values)
  array = as_array(name, values)
  check_real_dtype(name, array.dtype)
  if array.ndim != 1 or array.shape[0] < min_size:
    raise ValueError(f"{name} must be a 1-D array [m] of at least {min_size} values; got {name}.shape = {array.shape}")
  if concrete:
    value = np.asarray(values if is_traced(array) else array, np.float64)
    if not np.all(np.isfinite(value)):
      raise ValueError(f"{name} must be finite; got {name} = {value.tolist()}")
    if np.any(np.diff(value) < 0):
      at = int(np.flatnonzero(np.diff(value) < 0)[0])
      raise ValueError(
        f"{name} must be sorted in non-decreasing order; got {name}[{at}] = {float(value[at])!r} > "
        f"{name}[{at + 1}] = {float(value[at + 1])!r} in {name} = {show(value.tolist())}"
      )
  return array.astype(dtype)
