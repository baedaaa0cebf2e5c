r"""Target measures: where the inputs are transported to.

A soft sorting operator transports the (squashed) inputs, each with mass
:math:`1/n`, onto a discrete *target measure*

.. math::

  \nu = \sum_{j=1}^m b_j \delta_{y_j}, \qquad y_1 < \dots < y_m,
  \quad b_j > 0, \quad \sum_j b_j = 1.

The choice of :math:`(y, b)` decides the operator: :math:`m = n` uniform targets
give the soft sort and ranks, :math:`k + 1` targets give the top-:math:`k`, two
targets the top-:math:`k` mask, :math:`2 \lvert q \rvert + 1` targets the
quantiles :math:`q` (Cuturi et al., 2019). The constructors below build exactly
the measures that ``ott.tools.soft_sort`` builds, so that defaults agree.

References:
  Cuturi, Teboul, Vert, `Differentiable Ranks and Sorting using Optimal
  Transport <https://arxiv.org/abs/1905.11885>`_, NeurIPS 2019.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

__all__ = ["TargetMeasure"]

# Target weights given by a user (often float32 arrays) must sum to 1 up to
# this absolute tolerance; they are then renormalised exactly in float64.
WEIGHT_SUM_ATOL = 1e-5


def _as_float_tuple(name: str, value) -> tuple[float, ...]:
  """Converts a concrete 1-D sequence or array to a tuple of Python floats."""
  try:
    arr = np.asarray(value, dtype=np.float64)
  except Exception as e:  # A tracer cannot become a numpy array.
    raise ValueError(
        f"{name} must be a concrete 1-D sequence of floats (a list, tuple or a"
        f" non-traced array) so that it can be checked at trace time; got "
        f"{type(value).__name__}: {e}"
    ) from None
  if arr.ndim != 1 or arr.size == 0:
    raise ValueError(
        f"{name} must be a non-empty 1-D sequence; got shape {arr.shape}"
    )
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{name} must be finite; got {arr.tolist()}")
  return tuple(float(v) for v in arr)


def check_weights(weights, *, name: str = "target_weights",
                  length: int | None = None) -> tuple[float, ...]:
  """Validates probability weights and returns them renormalised.

  Args:
    weights: concrete ``[m]`` weights.
    name: the name used in error messages.
    length: if given, the required ``m``.

  Returns:
    A tuple of ``m`` positive Python floats summing to 1.

  Raises:
    ValueError: if the weights are not 1-D, not finite, not of length
      ``length``, not all positive, or do not sum to 1 within
      ``WEIGHT_SUM_ATOL``.
  """
  w = _as_float_tuple(name, weights)
  if length is not None and len(w) != length:
    raise ValueError(
        f"{name} must have length {length}; got length {len(w)}"
    )
  arr = np.asarray(w)
  # Zero weights are refused rather than masked: a target with no mass has a
  # dual potential of -inf, which only adds NaN risks to gradients. Drop it.
  if np.any(arr <= 0):
    raise ValueError(
        f"{name} must all be positive (drop targets with zero mass); got "
        f"{list(w)}"
    )
  total = float(arr.sum())
  if abs(total - 1.0) > WEIGHT_SUM_ATOL:
    raise ValueError(
        f"{name} must sum to 1 (within {WEIGHT_SUM_ATOL}); got sum {total!r}"
    )
  return tuple(float(v) for v in arr / total)


@dataclasses.dataclass(frozen=True)
class TargetMeasure:
  r"""A discrete 1-D target measure :math:`\sum_j b_j \delta_{y_j}`.

  Immutable and hashable (it is a static option of the Sinkhorn backend), so
  ``locations`` and ``weights`` are stored as tuples of Python floats; any
  concrete 1-D array-like is accepted and converted.

  The soft sort reads out one value per target (``[m]`` outputs); the soft rank
  of an input is its expected target location mapped affinely to
  :math:`[0, n - 1]`, with :math:`y_1 \mapsto 0` and :math:`y_m \mapsto n - 1`.

  Args:
    locations: ``[m]`` strictly increasing, finite target locations
      :math:`y`. They live in the squashed space: with the default sigmoid
      squashing the inputs lie in :math:`(0, 1)` and ott-jax uses
      ``linspace(0, 1, m)``.
    weights: ``[m]`` positive weights :math:`b` summing to 1 (within
      ``1e-5``; they are renormalised exactly).

  Example:
    >>> from otsort.sinkhorn import TargetMeasure
    >>> TargetMeasure.topk(num_points=5, k=2).weights
    (0.6, 0.2, 0.2)

  References:
    Cuturi, Teboul, Vert, `Differentiable Ranks and Sorting using Optimal
    Transport <https://arxiv.org/abs/1905.11885>`_, NeurIPS 2019.
  """

  locations: tuple[float, ...]
  weights: tuple[float, ...]

  def __post_init__(self):
    locations = _as_float_tuple("locations", self.locations)
    if len(locations) < 2:
      raise ValueError(
          f"TargetMeasure needs at least 2 locations; got {list(locations)}"
      )
    if np.any(np.diff(locations) <= 0):
      raise ValueError(
          f"locations must be strictly increasing; got {list(locations)}"
      )
    weights = check_weights(self.weights, name="weights",
                            length=len(locations))
    object.__setattr__(self, "locations", locations)
    object.__setattr__(self, "weights", weights)

  @property
  def num_targets(self) -> int:
    """The number :math:`m` of target points."""
    return len(self.locations)

  @classmethod
  def uniform(cls, num_targets: int,
              weights: Sequence[float] | None = None) -> "TargetMeasure":
    """``num_targets`` equispaced locations on :math:`[0, 1]`.

    Args:
      num_targets: ``m >= 2``.
      weights: optional ``[m]`` weights; uniform :math:`1/m` by default.

    Returns:
      The measure used by the soft sort and ranks (``m = n`` by default).
    """
    _check_int("num_targets", num_targets, low=2)
    if weights is None:
      weights = np.full(num_targets, 1.0 / num_targets)
    return cls(np.linspace(0.0, 1.0, num_targets), weights)

  @classmethod
  def topk(cls, num_points: int, k: int) -> "TargetMeasure":
    r"""``k + 1`` targets: one of mass :math:`(n-k)/n`, then ``k`` of :math:`1/n`.

    The first target absorbs the :math:`n - k` smallest inputs; each of the
    others receives one of the :math:`k` largest.

    Args:
      num_points: ``n``, the number of inputs.
      k: ``1 <= k < n``.
    """
    _check_topk(num_points, k)
    weights = np.concatenate([[(num_points - k) / num_points],
                              np.full(k, 1.0 / num_points)])
    return cls(np.linspace(0.0, 1.0, k + 1), weights)

  @classmethod
  def topk_mask(cls, num_points: int, k: int) -> "TargetMeasure":
    r"""Two targets, of mass :math:`1 - k/n` and :math:`k/n`.

    Args:
      num_points: ``n``, the number of inputs.
      k: ``1 <= k < n``.
    """
    _check_topk(num_points, k)
    return cls((0.0, 1.0), (1.0 - k / num_points, k / num_points))

  @classmethod
  def quantiles(cls, q: Sequence[float], num_points: int) -> "TargetMeasure":
    """The measure used to read out the soft quantiles ``q``.

    See :func:`quantile_targets`; this returns only the measure.
    """
    return quantile_targets(q, num_points)[0]


def quantile_targets(
    q: Sequence[float], num_points: int
) -> tuple[TargetMeasure, tuple[int, ...]]:
  r"""Target measure for soft quantiles, and which target reads out each level.

  Each distinct level :math:`q_i` gets a target of small mass :math:`w`,
  centred on :math:`q_i` in cumulative mass, and consecutive quantile targets
  are separated by "filler" targets that absorb the mass in between, giving
  :math:`2 \lvert q \rvert + 1` targets at ``linspace(0, 1, m)``. With
  :math:`w = \min(0.02, 1.5/n, 0.5/\lvert q\rvert, \tfrac12 \min_i \Delta q_i)`
  this is ott-jax's construction for distinct levels in :math:`(0, 1)`. We
  extend it to repeated levels (computed once) and to the end points 0 and 1
  (the quantile's mass is shifted inside :math:`[0, 1]` and empty fillers are
  dropped), where ott-jax's weights degenerate to zero.

  Args:
    q: levels in :math:`[0, 1]`, in any order, possibly repeated.
    num_points: ``n``, the number of inputs.

  Returns:
    ``(measure, index)`` where ``index[i]`` is the target reading out ``q[i]``.
  """
  _check_int("num_points", num_points, low=1)
  q = _as_float_tuple("q", q)
  if min(q) < 0.0 or max(q) > 1.0:
    raise ValueError(f"q must lie in [0, 1]; got {list(q)}")
  levels = np.unique(np.asarray(q))
  gaps = np.diff(np.concatenate([[0.0], levels, [1.0]]))
  w = min(0.02, 1.5 / num_points, 0.5 / len(levels),
          0.5 * float(np.min(gaps[gaps > 0], initial=np.inf)))
  # Cumulative-mass interval [lo, lo + w] of each quantile target.
  lo = np.clip(levels - 0.5 * w, 0.0, 1.0 - w)
  edges = np.concatenate([[0.0], np.stack([lo, lo + w], 1).ravel(), [1.0]])
  masses = np.diff(edges)  # filler, quantile, filler, ..., quantile, filler
  is_quantile = np.zeros(masses.shape, bool)
  is_quantile[1::2] = True
  # Empty fillers (a level at 0 or 1) would be zero-mass targets: drop them.
  keep = is_quantile | (masses > 1e-12)
  masses, is_quantile = masses[keep], is_quantile[keep]
  positions = np.flatnonzero(is_quantile)
  index = tuple(int(positions[np.searchsorted(levels, v)]) for v in q)
  measure = TargetMeasure(np.linspace(0.0, 1.0, masses.size),
                          masses / masses.sum())
  return measure, index


def _check_int(name, value, *, low=None, high=None, why=""):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be an int; got {value!r}")
  if (low is not None and value < low) or (high is not None and value > high):
    rng = f"[{low if low is not None else '-inf'}, "
    rng += f"{high if high is not None else 'inf'}]"
    raise ValueError(
        f"{name} must be in {rng}{' ' + why if why else ''}; got {value}"
    )


def _check_topk(num_points, k):
  _check_int("num_points", num_points, low=2)
  _check_int("k", k, low=1, high=num_points - 1,
             why=f"with num_points = {num_points}")
