"""Argument checks shared by the front end and the backends. Each raises a ``ValueError`` that names the
argument, the value it got and the values it allows, at trace time."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
  if not isinstance(value, str) or value not in choices:
    allowed = ", ".join(repr(c) for c in choices)
    raise ValueError(f"{name} must be one of {allowed}; got {name} = {value!r}")


def check_option_names(backend: str, options: dict, options_type: type) -> None:
  allowed = [f.name for f in dataclasses.fields(options_type)]
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for backend={backend!r}; "
                     f"its options are {', '.join(map(repr, allowed))}")


def normalize_axis(axis: Any, ndim: int) -> int:
  if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
    raise ValueError(f"axis must be an int; got axis = {axis!r}")
  if not -ndim <= axis < ndim:
    raise ValueError(f"axis {axis} is out of bounds for an array of dimension {ndim}")
  return int(axis) % ndim


def epsilon_array(epsilon: Any, batch_shape: tuple[int, ...], axis: int, dtype: Any) -> jax.Array:
  """``epsilon`` as one value per row: an array of ``batch_shape`` (``x.shape`` without ``axis``) in ``dtype``.

  Accepts a Python or NumPy number, or an array broadcastable to ``batch_shape`` (or to ``x.shape`` with size 1
  along ``axis``). Concrete values must be positive, finite and at least the smallest normal number of ``dtype``
  (XLA flushes subnormals to zero); a traced epsilon cannot be checked and is passed on as it is.
  """
  if isinstance(epsilon, (bool, np.bool_, str, bytes)) or not (
      isinstance(epsilon, (numbers.Real, np.ndarray, np.generic, jax.Array)) or hasattr(epsilon, "__jax_array__")):
    raise ValueError(f"epsilon must be a real scalar or an array of them (one per row); got epsilon = {epsilon!r}")
  traced = isinstance(epsilon, jax.core.Tracer)
  value = epsilon if traced else np.asarray(epsilon)
  if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)) or \
      np.issubdtype(value.dtype, np.bool_):
    raise ValueError(f"epsilon must be a real scalar or an array of them; got epsilon with dtype {value.dtype}")
  shape = tuple(value.shape)
  if len(shape) == len(batch_shape) + 1 and shape[axis] == 1:  # x's layout, size 1 along axis
    shape = shape[:axis] + shape[axis + 1:]
    value = value.reshape(shape)
  try:
    np.broadcast_shapes(shape, batch_shape)
    fits = np.broadcast_shapes(shape, batch_shape) == tuple(batch_shape)
  except ValueError:
    fits = False
  if not fits:
    raise ValueError(f"epsilon must be a number or an array broadcastable to x.shape without axis, "
                     f"{tuple(batch_shape)} (one epsilon per row; or x's shape with size 1 along axis); got "
                     f"epsilon.shape = {tuple(value.shape)}")
  if not traced:
    with np.errstate(over="ignore"):
      cast = np.asarray(value, dtype=np.dtype(dtype))
      overflow = (np.isinf(cast) & np.isfinite(np.asarray(value, np.float64))).ravel()
    tiny = np.finfo(np.dtype(dtype)).tiny
    if np.any(overflow):
      raise ValueError(f"epsilon must be a positive finite number in x's compute dtype {np.dtype(dtype).name}, at "
                       f"most {np.finfo(np.dtype(dtype)).max:.3g}; got epsilon = "
                       f"{np.asarray(value).ravel()[overflow][0].item()!r}")
    if cast.size and not np.all(np.isfinite(cast) & (cast >= tiny)):
      bad = np.asarray(value).ravel()[~(np.isfinite(cast) & (cast >= tiny)).ravel()][0]
      raise ValueError(f"epsilon must be a positive finite number; got epsilon = {bad.item()!r} (at least "
                       f"{tiny:.3g}, the smallest normal number of x's compute dtype {np.dtype(dtype).name}: XLA "
                       f"flushes smaller ones to zero)")
  return jnp.broadcast_to(jnp.asarray(value, dtype), batch_shape)
