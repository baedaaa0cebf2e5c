"""The ``pav`` backend: soft operations as projections onto the permutahedron, on rows ``[batch, n]``.

Blondel, Teboul, Berthet, Djolonga, "Fast Differentiable Sorting and Ranking", ICML 2020:

.. math::

  r_{\\varepsilon}(x) = P(x / \\varepsilon, \\rho), \\qquad
  s_{\\varepsilon}(x) = P(\\rho / \\varepsilon, x), \\qquad \\rho = (n, n - 1, \\dots, 1),

where ``P(z, w)`` is the L2 (Euclidean) or KL projection of ``z`` onto the permutahedron of ``w``, the convex hull
of the permutations of ``w``. Argument checking and axis handling live in :mod:`otsort._api`; the backend object
:class:`Pav` holds the validated options, and its operations only see rows ``[batch, n]`` and one epsilon per row
``[batch]`` (an array, possibly traced).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from otsort import _checks
from otsort import _contract
from otsort.pav import _kernels
from otsort.pav import _projections

REGULARIZATIONS = ("l2", "kl")
IMPLS = ("auto", "native", "xla")


@dataclasses.dataclass(frozen=True)
class Pav(_contract.Backend):
  r"""The ``pav`` backend: soft operations as projections onto the permutahedron (the default backend).

  Pass it as ``backend=otsort.Pav(...)`` to any operation; ``backend="pav"`` with the same keywords as
  ``**options`` is equivalent. Its operations are ``sort``, ``ranks``, ``quantile``, ``topk`` and ``topk_mask``.

  Args:
    regularization: ``"l2"`` (Euclidean projection, the default: sparse, piecewise linear) or ``"kl"`` (entropic
      projection: soft ranks stay above -1, soft sorts are computed in the log domain of ``exp(x)``).
    impl: ``"auto"`` (the native kernel on each platform that has one, pure JAX elsewhere), ``"native"`` (the XLA
      custom call; a ``ValueError`` where there is none) or ``"xla"`` (pure JAX, the same algorithm).

  Example:
    >>> import otsort
    >>> otsort.Pav.default_epsilon
    1.0
    >>> otsort.ranks([3.0, 1.0, 2.0], epsilon=0.1, backend=otsort.Pav(regularization="kl"))
    Array([2., 0., 1.], dtype=float32)

  References:
    Blondel, Teboul, Berthet, Djolonga, "Fast Differentiable Sorting and Ranking", ICML 2020.
  """

  regularization: str = "l2"
  impl: str = "auto"

  name: ClassVar[str] = "pav"
  #: The paper's ``regularization_strength``, on the scale of ``x``.
  default_epsilon: ClassVar[float] = 1.0
  operations: ClassVar[frozenset[str]] = frozenset({"sort", "ranks", "quantile", "topk", "topk_mask"})

  def __post_init__(self):
    _checks.check_choice("regularization", self.regularization, REGULARIZATIONS)
    _checks.check_choice("impl", self.impl, IMPLS)
    if self.impl == "native":
      platform = jax.default_backend()
      reason = _kernels.unavailable_reason("cuda" if platform == "gpu" else platform)
      if reason is not None:
        raise ValueError(
          f"impl='native' asks for the native PAV kernel, which is unavailable on platform "
          f"{platform!r}: {reason}. Use impl='xla' (pure JAX) or impl='auto'."
        )

  @property
  def kl(self) -> bool:
    return self.regularization == "kl"

  def ranks(self, x: jax.Array, *, descending: bool, epsilon: jax.Array) -> jax.Array:
    """Soft ranks, 0-based: ``[batch, n]`` -> ``[batch, n]``."""
    if x.shape[1] == 0:
      return x
    # The kernel divides by epsilon in double; negating first is exact.
    r, _ = _projections.project_scores(-x if descending else x, _per_row(epsilon, x), self.kl, 0, self.impl)
    return r - 1  # the paper's ranks are 1-based

  def sort(self, x: jax.Array, *, descending: bool, epsilon: jax.Array) -> jax.Array:
    """Soft sort: ``[batch, n]`` -> ``[batch, n]``."""
    if x.shape[1] == 0:
      return x
    # The projection sorts in decreasing order; ascending is the decreasing sort of -x, negated.
    sign = 1.0 if descending else -1.0
    out, _, _ = _projections.project_sort(sign * x, _per_row(epsilon, x), self.kl, self.impl)
    return sign * out

  def quantile(self, x: jax.Array, q: tuple[float, ...], *, epsilon: jax.Array) -> jax.Array:
    """Soft quantiles at the static levels ``q``: ``[batch, n]`` -> ``[batch, len(q)]``, ``n >= 1``."""
    # Linear interpolation between neighbouring soft-sorted values, like jnp.quantile's default method.
    n = x.shape[-1]
    s = self.sort(x, descending=False, epsilon=epsilon)
    position = np.asarray(q, dtype=np.float64) * (n - 1)  # q is static: so are the positions
    below = np.floor(position).astype(np.int32)
    above = np.minimum(below + 1, n - 1)
    fraction = jnp.asarray(position - below, dtype=x.dtype)
    # Static slices, not a gather: the transposed gather (a scatter) is slow to compile on large batches.
    column = lambda i: s[:, int(i)]
    lower = jnp.stack([column(i) for i in below], axis=1)
    upper = jnp.stack([column(i) for i in above], axis=1)
    return lower * (1 - fraction) + upper * fraction

  def topk(self, x: jax.Array, k: int, *, epsilon: jax.Array) -> jax.Array:
    """Soft top-k values, largest first: ``[batch, n]`` -> ``[batch, k]``, ``1 <= k <= n``."""
    return self.sort(x, descending=True, epsilon=epsilon)[:, :k]

  def topk_mask(self, x: jax.Array, k: int, *, epsilon: jax.Array) -> jax.Array:
    """Soft top-k mask: ``[batch, n]`` -> ``[batch, n]``, values in [0, 1] summing to ``k`` per row."""
    if x.shape[1] == 0:
      return x
    # Sander, Puigcerver, Djolonga, Peyre, Blondel, "Fast, Differentiable and Sparse Top-k", ICML 2023: the
    # projection of x / epsilon onto the permutahedron of (1, ..., 1, 0, ..., 0) with k ones.
    mask, _ = _projections.project_scores(x, _per_row(epsilon, x), self.kl, k, self.impl)
    return mask


def _per_row(epsilon: jax.Array, x: jax.Array) -> jax.Array:
  """``epsilon`` (``[batch]``, or a scalar for every row) as ``[batch, 1]``, the kernels' layout."""
  return jnp.broadcast_to(jnp.asarray(epsilon, x.dtype), x.shape[:1])[:, None]
