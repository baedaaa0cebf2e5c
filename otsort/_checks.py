"""Argument checks shared by the front end and the backends. Each raises a ``ValueError`` that names the
argument, the value it got and the values it allows, at trace time."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Sequence

import jax
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


def static_float(name: str, value: Any) -> float:
  """A Python float from a Python or NumPy real scalar (or a concrete 0-d array); rejects tracers."""
  if isinstance(value, jax.core.Tracer):
    raise ValueError(f"{name} must be a static Python number, not a traced value: it selects the solver's "
                     f"behaviour at trace time; pass it as a Python float (or mark it static under jit)")
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.ndarray, jax.Array)):
    raise ValueError(f"{name} must be a real scalar; got {name} = {value!r}")
  array = np.asarray(value)
  if array.ndim != 0 or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
    raise ValueError(f"{name} must be a real scalar; got {name} with shape {array.shape} and dtype {array.dtype}")
  return float(array)


def positive_finite(name: str, value: Any) -> float:
  number = static_float(name, value)
  if not math.isfinite(number) or number <= 0:
    raise ValueError(f"{name} must be a positive finite number; got {name} = {value!r}")
  return number


def normalize_axis(axis: Any, ndim: int) -> int:
  if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
    raise ValueError(f"axis must be an int; got axis = {axis!r}")
  if not -ndim <= axis < ndim:
    raise ValueError(f"axis {axis} is out of bounds for an array of dimension {ndim}")
  return int(axis) % ndim
