"""The ``pav`` backend: soft operations as projections onto the permutahedron, on rows ``[batch, n]``.

Blondel, Teboul, Berthet, Djolonga, "Fast Differentiable Sorting and Ranking", ICML 2020:

.. math::

  r_{\\varepsilon}(x) = P(x / \\varepsilon, \\rho), \\qquad
  s_{\\varepsilon}(x) = P(\\rho / \\varepsilon, x), \\qquad \\rho = (n, n - 1, \\dots, 1),

where ``P(z, w)`` is the L2 (Euclidean) or KL projection of ``z`` onto the permutahedron of ``w``, the convex hull
of the permutations of ``w``. Argument checking and axis handling live in :mod:`otsort._api`; this module only
sees validated options, rows ``[batch, n]`` and one epsilon per row ``[batch]`` (an array, possibly traced).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from otsort import _checks
from otsort.pav import _kernels
from otsort.pav import _projections

DEFAULT_EPSILON = 1.0
REGULARIZATIONS = ("l2", "kl")
IMPLS = ("auto", "native", "xla")


@dataclasses.dataclass(frozen=True)
class PavOptions:
  """Options of the ``pav`` backend.

  Attributes:
    regularization: ``"l2"`` (Euclidean projection, the default) or ``"kl"`` (entropic projection; soft ranks
      stay positive and soft sorts are computed in the log domain of ``exp(x)``).
    impl: ``"auto"`` (the native kernel on each platform that has one, pure JAX elsewhere), ``"native"`` (the
      XLA custom call; an error where there is none) or ``"xla"`` (pure JAX, the same algorithm).
  """

  regularization: str = "l2"
  impl: str = "auto"

  @property
  def kl(self) -> bool:
    return self.regularization == "kl"


def parse_options(options: dict) -> PavOptions:
  _checks.check_option_names("pav", options, PavOptions)
  parsed = PavOptions(**options)
  _checks.check_choice("regularization", parsed.regularization, REGULARIZATIONS)
  _checks.check_choice("impl", parsed.impl, IMPLS)
  if parsed.impl == "native":
    platform = jax.default_backend()
    reason = _kernels.unavailable_reason("cuda" if platform == "gpu" else platform)
    if reason is not None:
      raise ValueError(f"impl='native' asks for the native PAV kernel, which is unavailable on platform "
                       f"{platform!r}: {reason}. Use impl='xla' (pure JAX) or impl='auto'.")
  return parsed


def _per_row(epsilon: jax.Array) -> jax.Array:
  return epsilon[:, None]  # [batch, 1], the layout of the kernels' epsilon operand


def ranks(x: jax.Array, *, descending: bool, epsilon: jax.Array, options: PavOptions) -> jax.Array:
  # The kernel divides by epsilon in double; negating first is exact.
  r, _ = _projections.project_scores(-x if descending else x, _per_row(epsilon), options.kl, 0, options.impl)
  return r - 1  # the paper's ranks are 1-based


def sort(x: jax.Array, *, descending: bool, epsilon: jax.Array, options: PavOptions) -> jax.Array:
  # The projection sorts in decreasing order; ascending is the decreasing sort of -x, negated.
  sign = 1.0 if descending else -1.0
  out, _, _ = _projections.project_sort(sign * x, _per_row(epsilon), options.kl, options.impl)
  return sign * out


def quantile(x: jax.Array, q: tuple[float, ...], *, epsilon: jax.Array, options: PavOptions) -> jax.Array:
  # Linear interpolation between neighbouring soft-sorted values, like jnp.quantile's default method.
  n = x.shape[-1]
  s = sort(x, descending=False, epsilon=epsilon, options=options)
  position = np.asarray(q, dtype=np.float64) * (n - 1)  # q is static: so are the positions
  below = np.floor(position).astype(np.int32)
  above = np.minimum(below + 1, n - 1)
  fraction = jnp.asarray(position - below, dtype=x.dtype)
  # Static slices, not a gather: the transposed gather (a scatter) is slow to compile on large batches.
  column = lambda i: s[:, int(i)]
  lower = jnp.stack([column(i) for i in below], axis=1)
  upper = jnp.stack([column(i) for i in above], axis=1)
  return lower * (1 - fraction) + upper * fraction


def topk(x: jax.Array, k: int, *, epsilon: jax.Array, options: PavOptions) -> jax.Array:
  return sort(x, descending=True, epsilon=epsilon, options=options)[:, :k]


def topk_mask(x: jax.Array, k: int, *, epsilon: jax.Array, options: PavOptions) -> jax.Array:
  # Sander, Puigcerver, Djolonga, Peyre, Blondel, "Fast, Differentiable and Sparse Top-k", ICML 2023: the
  # projection of x / epsilon onto the permutahedron of (1, ..., 1, 0, ..., 0) with k ones.
  mask, _ = _projections.project_scores(x, _per_row(epsilon), options.kl, k, options.impl)
  return mask
