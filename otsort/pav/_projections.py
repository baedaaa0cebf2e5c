"""The two permutahedron projections of Blondel et al. (2020) as differentiable JAX functions.

The solvers (native kernels or pure JAX) return the projection and its block structure. The derivative is then
linear algebra on blocks (Blondel et al., 2020, Section 5): within a block, the L2 projection averages and the
KL projection takes a softmax-weighted average. It is written with segment sums and gathers, which JAX
transposes and batches itself, so ``grad``, ``jvp``, ``jacfwd``, ``jacrev``, ``vmap`` and higher derivatives all
compose; each costs O(n) on top of the forward pass.

Inputs are rows ``[batch, n]``; block ids are sorted positions in ``[0, n)``, per row.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from otsort.pav import _isotonic_xla
from otsort.pav import _kernels


def _solver(impl: str, native_fn, xla_fn):
  """Picks the solver for ``impl``; "auto" lowers to the native kernel on each platform that has one."""
  if impl == "xla":
    return xla_fn
  if impl == "native":
    return native_fn

  def auto(*args, **kwargs):
    native = functools.partial(native_fn, **kwargs)
    fallback = functools.partial(xla_fn, **kwargs)
    branches = {p: native if _kernels.unavailable_reason(p) is None else fallback for p in ("cpu", "cuda")}
    return jax.lax.platform_dependent(*args, **branches, default=fallback)

  return auto


def _per_row(segment_op, values: jax.Array, block: jax.Array) -> jax.Array:
  """Applies ``segment_op`` over the blocks of each row; row r's block j lands at [r, j]. Mapped over rows
  (a batched scatter, not one flat one), so a batch sharded over devices stays where it is."""
  n = block.shape[1]
  return jax.vmap(lambda v, b: segment_op(v, b, num_segments=n))(values, block)


def _block_sums(values: jax.Array, block: jax.Array) -> jax.Array:
  return _per_row(jax.ops.segment_sum, values, block)


def _block_max(values: jax.Array, block: jax.Array) -> jax.Array:
  return _per_row(jax.ops.segment_max, values, block)


def _gather(per_block: jax.Array, block: jax.Array) -> jax.Array:
  return jnp.take_along_axis(per_block, block, axis=1)


def _block_weighted_mean(values: jax.Array, weights: jax.Array, block_in: jax.Array,
                         block_out: jax.Array) -> jax.Array:
  """sum_{j in B} w_j v_j / sum_{j in B} w_j for the block B of each output position (linear in values).

  The weights are normalized first: a one-element block then has weight w / w = 1 exactly, so the projection's
  derivative there is exactly zero, not rounding noise."""
  normalized = weights / _gather(_block_sums(weights, block_in), block_in)
  return _gather(_block_sums(normalized * values, block_in), block_out)


def _int_tangent(x: jax.Array) -> np.ndarray:
  return np.zeros(x.shape, dtype=jax.dtypes.float0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def project_scores(z: jax.Array, kl: bool, topk: int, impl: str) -> tuple[jax.Array, jax.Array]:
  """P(z, w) for each row of ``z`` and its block ids; w = rho = (n, ..., 1) for ``topk`` = 0 (1-based soft
  ranks), else k ones then zeros (soft top-k mask)."""
  return _solver(impl, _kernels.scores, _isotonic_xla.scores)(z, kl=kl, topk=topk)


@project_scores.defjvp
def _project_scores_jvp(kl, topk, impl, primals, tangents):
  (z,), (dz,) = primals, tangents
  r, block = project_scores(z, kl, topk, impl)  # called again: higher derivatives see r as a function of z
  if kl:
    # r = softmax_B(z) * sum_B(w): dr = r * (dz - sum_B softmax_B(z) dz), and softmax_B(z) = r / sum_B r.
    dr = r * (dz - _block_weighted_mean(dz, r, block, block))
  else:
    dr = dz - _block_weighted_mean(dz, jnp.ones_like(dz), block, block)
  return (r, block), (dr, _int_tangent(block))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def project_sort(x: jax.Array, kl: bool, epsilon: float, impl: str) -> tuple[jax.Array, jax.Array, jax.Array]:
  """P(rho / epsilon, x): the soft sort of each row of ``x`` in decreasing order, and block ids (in, out)."""
  return _solver(impl, _kernels.sort, _isotonic_xla.sort)(x, kl=kl, epsilon=epsilon)


@project_sort.defjvp
def _project_sort_jvp(kl, epsilon, impl, primals, tangents):
  (x,), (dx,) = primals, tangents
  out, block_in, block_out = project_sort(x, kl, epsilon, impl)
  if kl:
    # Each output is LSE_B(x) plus a constant: its derivative is the softmax of x over the block.
    # The block maximum only shifts the exponent; it keeps exp() in range and needs no derivative.
    block_max = _gather(_block_max(jax.lax.stop_gradient(x), block_in), block_in)
    weights = jnp.exp(x - block_max)
  else:
    weights = jnp.ones_like(dx)
  dout = _block_weighted_mean(dx, weights, block_in, block_out)
  return (out, block_in, block_out), (dout, _int_tangent(block_in), _int_tangent(block_out))
