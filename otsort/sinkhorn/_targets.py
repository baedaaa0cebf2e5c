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

from collections.abc import Sequence
import dataclasses

import numpy as np

from otsort import _checks

__all__ = ["TargetMeasure"]


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
    locations = _checks.concrete_floats("locations", self.locations)
    if len(locations) < 2:
      raise ValueError(f"TargetMeasure needs at least 2 locations; got {list(locations)}")
    if np.any(np.diff(locations) <= 0):
      raise ValueError(f"locations must be strictly increasing; got {list(locations)}")
    weights = _checks.check_weights("weights", self.weights, length=len(locations))
    object.__setattr__(self, "locations", locations)
    object.__setattr__(self, "weights", weights)

  @property
  def num_targets(self) -> int:
    """The number :math:`m` of target points."""
    return len(self.locations)

  @classmethod
  def uniform(cls, num_targets: int, weights: Sequence[float] | None = None) -> TargetMeasure:
    """``num_targets`` equispaced locations on :math:`[0, 1]`.

    Args:
      num_targets: ``m >= 2``.
      weights: optional ``[m]`` weights; uniform :math:`1/m` by default.

    Returns:
      The measure used by the soft sort and ranks (``m = n`` by default).
    """
    num_targets = _checks.check_int("num_targets", num_targets, low=2)
    if weights is None:
      weights = np.full(num_targets, 1.0 / num_targets)
    return cls(np.linspace(0.0, 1.0, num_targets), weights)

  @classmethod
  def topk(cls, num_points: int, k: int) -> TargetMeasure:
    r"""``k + 1`` targets: one of mass :math:`(n-k)/n`, then ``k`` of :math:`1/n`.

    The first target absorbs the :math:`n - k` smallest inputs; each of the
    others receives one of the :math:`k` largest.

    Args:
      num_points: ``n``, the number of inputs.
      k: ``1 <= k < n``.
    """
    _check_topk(num_points, k)
    weights = np.concatenate([[(num_points - k) / num_points], np.full(k, 1.0 / num_points)])
    return cls(np.linspace(0.0, 1.0, k + 1), weights)

  @classmethod
  def topk_mask(cls, num_points: int, k: int) -> TargetMeasure:
    r"""Two targets, of mass :math:`1 - k/n` and :math:`k/n`.

    Args:
      num_points: ``n``, the number of inputs.
      k: ``1 <= k < n``.
    """
    _check_topk(num_points, k)
    return cls((0.0, 1.0), (1.0 - k / num_points, k / num_points))

  @classmethod
  def quantiles(cls, q: Sequence[float], num_points: int) -> TargetMeasure:
    """The measure used to read out the soft quantiles ``q``.

    See :func:`quantile_targets`; this returns only the measure.
    """
    return quantile_targets(q, num_points)[0]


def quantile_targets(q: Sequence[float], num_points: int) -> tuple[TargetMeasure, tuple[int, ...]]:
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
  num_points = _checks.check_int("num_points", num_points, low=1)
  q = _checks.concrete_floats("q", q)
  if min(q) < 0.0 or max(q) > 1.0:
    raise ValueError(f"q must lie in [0, 1]; got {list(q)}")
  levels = np.unique(np.asarray(q))
  gaps = np.diff(np.concatenate([[0.0], levels, [1.0]]))
  w = min(0.02, 1.5 / num_points, 0.5 / len(levels), 0.5 * float(np.min(gaps[gaps > 0], initial=np.inf)))
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
  measure = TargetMeasure(np.linspace(0.0, 1.0, masses.size), masses / masses.sum())
  return measure, index


def _check_topk(num_points, k):
  num_points = _checks.check_int("num_points", num_points, low=2)
  _checks.check_int("k", k, low=1, high=num_points - 1, where=f"with num_points = {num_points}")
