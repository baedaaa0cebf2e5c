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
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

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


def _block_weights(values: jax.Array, block: jax.Array, kl: bool) -> jax.Array:
  """Ones (L2), or exp(values) within each block (KL), shifted by the block maximum: the shift keeps exp() in
  range, cancels in every weighted mean, and needs no derivative."""
  if not kl:
    return jnp.ones_like(values)
  return jnp.exp(values - _gather(_block_max(jax.lax.stop_gradient(values), block), block))


def _int_tangent(x: jax.Array) -> np.ndarray:
  return np.zeros(x.shape, dtype=jax.dtypes.float0)


def _is_zero(tangent) -> bool:
  return isinstance(tangent, SymbolicZero)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def project_scores(x: jax.Array, epsilon: jax.Array, kl: bool, topk: int, impl: str) -> tuple[jax.Array, jax.Array]:
  """P(x / epsilon, w) for each row of ``x`` ``[batch, n]`` and its block ids; ``epsilon`` is ``[batch, 1]``.

  w = rho = (n, ..., 1) for ``topk`` = 0 (1-based soft ranks), else k ones then zeros (soft top-k mask).
  """
  return _solver(impl, _kernels.scores, _isotonic_xla.scores)(x, epsilon, kl=kl, topk=topk)


def _scores_jacobian(r: jax.Array, block: jax.Array, kl: bool) -> Callable[[jax.Array], jax.Array]:
  """v -> J v, the Jacobian of P(z, w) in z at the solution ``r`` (linear in v).

  J is exactly 0 on one-element blocks, written as a mask rather than left to ``v - mean(v)``: XLA may compute
  the two ``v`` in different fusions (``ct / epsilon`` as a reciprocal product in one, contracted into a fused
  multiply-add in the other), and their difference would then be rounding noise instead of 0."""
  pooled = _gather(_block_sums(jnp.ones_like(r), block), block) > 1
  # v * 0 keeps the map linear (so it transposes) and turns into NaN on a NaN row (a non-finite input), whose
  # derivatives are NaN like its values.
  alone = jnp.where(jnp.isnan(r), jnp.nan, 0).astype(r.dtype)
  if kl:
    # r = softmax_B(z) * sum_B(w): dr = r * (dz - sum_B softmax_B(z) dz), and softmax_B(z) = r / sum_B r.
    return lambda v: jnp.where(pooled, r * (v - _block_weighted_mean(v, r, block, block)), v * alone)
  return lambda v: jnp.where(pooled, v - _block_weighted_mean(v, jnp.ones_like(v), block, block), v * alone)


@functools.partial(project_scores.defjvp, symbolic_zeros=True)
def _project_scores_jvp(kl, topk, impl, primals, tangents):
  (x, epsilon), (dx, depsilon) = primals, tangents
  r, block = project_scores(x, epsilon, kl, topk, impl)  # called again: higher derivatives see r as a function
  jacobian = _scores_jacobian(r, block, kl)
  dr = jnp.zeros_like(r)
  if not _is_zero(dx):
    dr = dr + jacobian(dx) / epsilon  # J (dx / epsilon), scaled after J: J is exactly 0 on one-element blocks
  if not _is_zero(depsilon):
    # dz = -z * depsilon / epsilon, and J z is read off the solution, not formed from z = x / epsilon (which
    # may overflow): within a block r - z is constant (L2), or log r - z is (KL).
    if kl:
      log_r = jnp.where(r > 0, jnp.log(jnp.where(r > 0, r, 1)), 0)
      jz = jacobian(log_r)
    else:
      jz = jacobian(r)
    dr = dr - jz * (depsilon / epsilon)
  return (r, block), (dr, _int_tangent(block))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def project_sort(x: jax.Array, epsilon: jax.Array, kl: bool, impl: str) -> tuple[jax.Array, jax.Array, jax.Array]:
  """P(rho / epsilon, x): the soft sort of each row of ``x`` in decreasing order, and block ids (in, out)."""
  return _solver(impl, _kernels.sort, _isotonic_xla.sort)(x, epsilon, kl=kl)


@functools.partial(project_sort.defjvp, symbolic_zeros=True)
def _project_sort_jvp(kl, impl, primals, tangents):
  (x, epsilon), (dx, depsilon) = primals, tangents
  out, block_in, block_out = project_sort(x, epsilon, kl, impl)
  dout = jnp.zeros_like(out)
  if not _is_zero(dx):
    # Each output is a block mean of x (L2), or LSE_B(x) plus a constant (KL): its derivative is the softmax of x
    # over the block.
    dout = dout + _block_weighted_mean(dx, _block_weights(x, block_in, kl), block_in, block_out)
  if not _is_zero(depsilon):
    # out = a - v_B with a = rho / epsilon, da = -a depsilon / epsilon. Within a block a - out is constant, so
    # the centred a (L2: minus its block mean; KL: minus its block softmax mean) is the centred output.
    weights = _block_weights(out, block_out, kl)
    pooled = _gather(_block_sums(jnp.ones_like(out), block_out), block_out) > 1
    centred = jnp.where(pooled, out - _block_weighted_mean(out, weights, block_out, block_out), 0)
    dout = dout - centred * (depsilon / epsilon)
  return (out, block_in, block_out), (dout, _int_tangent(block_in), _int_tangent(block_out))
