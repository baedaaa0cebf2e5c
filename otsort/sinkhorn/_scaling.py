r"""Readouts computed on values scaled by a power of two, so that large float32 values stay finite.

With the sigmoid squashing (scale-invariant) the sort-like readouts (sort, quantile, top-k, quantize) are
positively homogeneous in the row, :math:`f(x) = s f(x / s)`. :func:`scale_free` computes them that way with
:math:`s \approx \max |x|` a power of two (:func:`otsort.sinkhorn._transport.scale_root`, no rounding), and
differentiates them as :math:`f` at :math:`x / s`: the scale cancels and is never formed. Computed directly, the
derivative's intermediate terms (the cotangent of the plan, :math:`(x_i - \text{out}_j) / c_j`) overflow for
float32 rows near 3e38 and the gradient is NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from otsort.sinkhorn import _transport


@jax.custom_vjp
def _to_unit(x, root):
  """``x / root**2``, differentiated as the identity; pairs with :func:`_from_unit`."""
  return x / root / root  # Two steps: 1 / root**2 may be subnormal, flushed.


def _identity_bwd(root, g):
  return g, jnp.zeros_like(root)


_to_unit.defvjp(lambda x, root: (_to_unit(x, root), root), _identity_bwd)


@jax.custom_vjp
def _from_unit(y, root):
  """``y * root**2``, differentiated as the identity; pairs with :func:`_to_unit`."""
  return y * root * root


_from_unit.defvjp(lambda y, root: (_from_unit(y, root), root), _identity_bwd)


@jax.custom_vjp
def _scaled_cotangent(e, root):
  """``e`` itself, whose cotangent is multiplied by ``root**2``: the other arguments of a scale-free readout
  (epsilon, whose derivative carries the row's scale)."""
  return e


_scaled_cotangent.defvjp(lambda e, root: (e, root), lambda root, g: (g * root * root, jnp.zeros_like(root)))


def scale_free(row: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """``row(x, *rest)`` computed as ``s * row(x / s, *rest)`` (one row ``x [n]``; ``rest`` are scalars such as
  epsilon), for a ``row`` that is positively homogeneous in ``x``."""

  def scaled(x, *rest):
    root = _transport.scale_root(x)
    rest = tuple(_scaled_cotangent(r, root) for r in rest)
    return _from_unit(row(_to_unit(x, root), *rest), root)

  return scaled


def linear_in_operand(row: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """``row(x, epsilon, values)`` computed as ``s * row(x, epsilon, values / s)`` (``s`` a power of two near
  ``max |values|``), for a ``row`` linear in ``values`` (``sort_with``, ``quantile_normalization``).

  The plan's cotangent is proportional to ``values``: unrolled, the Sinkhorn iterations' backward multiplies it by
  the scalings, which overflowed for float32 values near 1e30 (NaN epsilon-gradients of ``sort_with`` at epsilon
  <= 1e-12). It is computed for ``values / s``, and the cotangents of ``x`` and ``epsilon`` multiplied by ``s`` at
  the end (``values``' own derivative does not depend on them).
  """

  def scaled(x, epsilon, values):
    root = _transport.scale_root(values)
    x, epsilon = _scaled_cotangent(x, root), _scaled_cotangent(epsilon, root)
    return _from_unit(row(x, epsilon, _to_unit(values, root)), root)

  return scaled
