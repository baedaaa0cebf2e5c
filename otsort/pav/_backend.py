"""The ``pav`` backend: soft operations as projections onto the permutahedron, on rows ``[batch, n]``.

Blondel, Teboul, Berthet, Djolonga, "Fast Differentiable Sorting and Ranking", ICML 2020:

.. math::

  r_{\\varepsilon}(x) = P(x / \\varepsilon, \\rho), \\qquad
  s_{\\varepsilon}(x) = P(\\rho / \\varepsilon, x), \\qquad \\rho = (n, n - 1, \\dots, 1),

where ``P(z, w)`` is the L2 (Euclidean) or KL projection of ``z`` onto the permutahedron of ``w``, the convex hull
of the permutations of ``w``. Argument checking and axis handling live in :mod:`otsort._api`; this module only
sees validated options and rows.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

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


def ranks(x: jax.Array, *, descending: bool, epsilon: float, options: PavOptions) -> jax.Array:
  scale = (-1.0 if descending else 1.0) / epsilon
  r, _ = _projections.project_scores(x * scale, options.kl, 0, options.impl)
  return r - 1  # the paper's ranks are 1-based


def sort(x: jax.Array, *, descending: bool, epsilon: float, options: PavOptions) -> jax.Array:
  # The projection sorts in decreasing order; ascending is the decreasing sort of -x, negated.
  sign = 1.0 if descending else -1.0
  out, _, _ = _projections.project_sort(sign * x, options.kl, epsilon, options.impl)
  return sign * out
