"""The Jacobians of the permutahedron projections as linear maps, native on CPU and CUDA.

Within the blocks of the isotonic solution the L2 projection averages and the KL projection takes a
softmax-weighted average (Blondel et al., 2020, Section 5); nothing crosses a block. So each derivative is a
linear map fixed by the block ids the forward pass returns:

- scores, ``P(z, w)`` in z at its solution r: ``J v = v - mean_B(v)`` (L2) or ``r (v - mean_{B, r}(v))`` (KL) on
  pooled blocks, exactly 0 on one-element blocks. J is symmetric.
- sort, ``P(rho / epsilon, x)`` in x: ``(A v)_i = sum_{j in B} w_j v_j / sum_{j in B} w_j`` for the sorted position
  i of block B, with w = 1 (L2) or exp(x) (KL). Its transpose spreads each sorted cotangent back over the inputs
  of its block with the same weights.

Each map is a JAX primitive, so that every transform composes: it lowers to the native FFI kernel where the
platform has one (one pass over the row, no XLA scatter) and to the same formula in segment ops elsewhere; it
transposes to itself (scores) or to the other direction of the same kernel (sort); it is linear in the tangent,
and its derivative in r or x (KL only, for second derivatives) is the segment-op formula differentiated by JAX;
rows are independent, so a mapped axis is one more leading dimension. ``impl="xla"`` uses the segment-op
formulas directly (the oracle).

Arrays are rows ``[..., n]``; block ids are sorted positions in ``[0, n)``, per row.
"""

from __future__ import annotations

import functools

import jax
from jax.extend import core
from jax.interpreters import ad
from jax.interpreters import batching
from jax.interpreters import mlir
from jax.interpreters import xla
import jax.numpy as jnp

from otsort.pav import _kernels

# --- Segment-op formulas ----------------------------------------------------------------------------------


def _rows(fn):
  """Applies ``fn`` to 2-D rows ``[batch, n]``: leading dimensions are flattened and restored."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    shape = args[0].shape
    flat = [a.reshape(-1, shape[-1]) for a in args]
    return fn(*flat, **kwargs).reshape(shape)

  return wrapped


def _per_row(segment_op, values: jax.Array, block: jax.Array) -> jax.Array:
  """Applies ``segment_op`` over the blocks of each row; row r's block j lands at [r, j]. Mapped over rows
  (a batched scatter, not one flat one), so a batch sharded over devices stays where it is."""
  n = block.shape[1]
  return jax.vmap(lambda v, b: segment_op(v, b, num_segments=n))(values, block)


def block_sums(values: jax.Array, block: jax.Array) -> jax.Array:
  return _per_row(jax.ops.segment_sum, values, block)


def _block_max(values: jax.Array, block: jax.Array) -> jax.Array:
  return _per_row(jax.ops.segment_max, values, block)


def gather(per_block: jax.Array, block: jax.Array) -> jax.Array:
  return jnp.take_along_axis(per_block, block, axis=1)


def block_weighted_mean(values: jax.Array, weights: jax.Array, block_in: jax.Array, block_out: jax.Array) -> jax.Array:
  """sum_{j in B} w_j v_j / sum_{j in B} w_j for the block B of each output position (linear in values).

  The weights are normalized first: a one-element block then has weight w / w = 1 exactly, so the projection's
  derivative there is exactly zero, not rounding noise."""
  normalized = weights / gather(block_sums(weights, block_in), block_in)
  return gather(block_sums(normalized * values, block_in), block_out)


def block_weights(values: jax.Array, block: jax.Array, kl: bool) -> jax.Array:
  """Ones (L2), or exp(values) within each block (KL), shifted by the block maximum: the shift keeps exp() in
  range, cancels in every weighted mean, and needs no derivative."""
  if not kl:
    return jnp.ones_like(values)
  return jnp.exp(values - gather(_block_max(jax.lax.stop_gradient(values), block), block))


@_rows
def scores_jvp_xla(r: jax.Array, block: jax.Array, v: jax.Array, *, kl: bool) -> jax.Array:
  """J v for the scores projection at its solution ``r``, in segment ops.

  J is exactly 0 on one-element blocks, written as a mask rather than left to ``v - mean(v)``: XLA may compute
  the two ``v`` in different fusions (``ct / epsilon`` as a reciprocal product in one, contracted into a fused
  multiply-add in the other), and their difference would then be rounding noise instead of 0."""
  pooled = gather(block_sums(jnp.ones_like(r), block), block) > 1
  # v * 0 keeps the map linear (so it transposes) and turns into NaN on a NaN row (a non-finite input), whose
  # derivatives are NaN like its values.
  alone = v * jnp.where(jnp.isnan(r), jnp.nan, 0).astype(r.dtype)
  if kl:
    # r = softmax_B(z) * sum_B(w): dr = r * (dz - sum_B softmax_B(z) dz), and softmax_B(z) = r / sum_B r.
    return jnp.where(pooled, r * (v - block_weighted_mean(v, r, block, block)), alone)
  return jnp.where(pooled, v - block_weighted_mean(v, jnp.ones_like(v), block, block), alone)


@_rows
def sort_jvp_xla(
  x: jax.Array, block_in: jax.Array, block_out: jax.Array, v: jax.Array, *, kl: bool, transpose: bool
) -> jax.Array:
  """A v (input order to sorted) or A^T v (sorted to input order) for the soft sort, in segment ops."""
  weights = block_weights(x, block_in, kl)
  if not transpose:
    return block_weighted_mean(v, weights, block_in, block_out)
  normalized = weights / gather(block_sums(weights, block_in), block_in)
  return normalized * gather(block_sums(v, block_out), block_in)


# --- Primitives -------------------------------------------------------------------------------------------


def _define(name: str, native, formula, linear_index: int) -> core.Primitive:
  """A primitive for the linear map ``formula(*residuals, v, **params)``, lowered to ``native`` where the
  platform's kernel is available. The JVP and transpose rules are added by the caller."""
  primitive = core.Primitive(name)
  primitive.def_impl(functools.partial(xla.apply_primitive, primitive))
  primitive.def_abstract_eval(lambda *args, **params: args[linear_index].update(weak_type=False))

  def lower(platform, ctx, *args, **params):
    if platform is not None and _kernels.unavailable_reason(platform) is None:
      # custom_partitioning needs to know the devices; a computation on one device needs no partitioning rule.
      context = ctx.module_context.axis_context
      several = getattr(context, "num_devices", 2) > 1 and getattr(context, "device_assignment", ()) is not None
      fn = functools.partial(native, partitioned=several)
    else:
      fn = formula
    return mlir.lower_fun(functools.partial(fn, **params), multiple_results=False)(ctx, *args)

  mlir.register_lowering(primitive, functools.partial(lower, None))
  for platform in ("cpu", "cuda"):
    mlir.register_lowering(primitive, functools.partial(lower, platform), platform=platform)

  def batch(args, dims, **params):
    # Rows are independent: the mapped axis becomes one more leading dimension; unmapped operands are broadcast.
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    args = [jnp.broadcast_to(a, (size, *a.shape)) if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims)]
    return primitive.bind(*args, **params), 0

  batching.primitive_batchers[primitive] = batch
  return primitive


def _is_zero(tangent) -> bool:
  return type(tangent) is ad.Zero  # pylint: disable=unidiomatic-typecheck


scores_jvp_p = _define("otsort_pav_scores_jvp", _kernels.scores_jvp, scores_jvp_xla, 2)
sort_jvp_p = _define("otsort_pav_sort_jvp", _kernels.sort_jvp, sort_jvp_xla, 3)


def _scores_jvp_rule(primals, tangents, *, kl):
  r, block, v = primals
  dr, _, dv = tangents
  out = scores_jvp_p.bind(r, block, v, kl=kl)
  terms = []
  if not _is_zero(dv):
    terms.append(scores_jvp_p.bind(r, block, dv, kl=kl))
  if kl and not _is_zero(dr):  # L2's J does not depend on r
    terms.append(jax.jvp(lambda r: scores_jvp_xla(r, block, v, kl=kl), (r,), (dr,))[1])
  return out, sum(terms[1:], terms[0]) if terms else jnp.zeros_like(out)


def _scores_transpose_rule(ct, r, block, v, *, kl):
  assert not ad.is_undefined_primal(r) and not ad.is_undefined_primal(block), "J v is linear in v only"
  if _is_zero(ct):
    return None, None, None  # a zero cotangent
  return None, None, scores_jvp_p.bind(r, block, ct, kl=kl)  # J is symmetric


def _sort_jvp_rule(primals, tangents, *, kl, transpose):
  x, block_in, block_out, v = primals
  dx, _, _, dv = tangents
  params = dict(kl=kl, transpose=transpose)
  out = sort_jvp_p.bind(x, block_in, block_out, v, **params)
  terms = []
  if not _is_zero(dv):
    terms.append(sort_jvp_p.bind(x, block_in, block_out, dv, **params))
  if kl and not _is_zero(dx):  # L2's weights do not depend on x
    terms.append(jax.jvp(lambda x: sort_jvp_xla(x, block_in, block_out, v, **params), (x,), (dx,))[1])
  return out, sum(terms[1:], terms[0]) if terms else jnp.zeros_like(out)


def _sort_transpose_rule(ct, x, block_in, block_out, v, *, kl, transpose):
  assert not any(map(ad.is_undefined_primal, (x, block_in, block_out))), "A v is linear in v only"
  if _is_zero(ct):
    return None, None, None, None  # a zero cotangent
  return None, None, None, sort_jvp_p.bind(x, block_in, block_out, ct, kl=kl, transpose=not transpose)


ad.primitive_jvps[scores_jvp_p] = _scores_jvp_rule
ad.primitive_transposes[scores_jvp_p] = _scores_transpose_rule
ad.primitive_jvps[sort_jvp_p] = _sort_jvp_rule
ad.primitive_transposes[sort_jvp_p] = _sort_transpose_rule


# --- Entry points -----------------------------------------------------------------------------------------


def scores_jvp(r: jax.Array, block: jax.Array, v: jax.Array, *, kl: bool, impl: str) -> jax.Array:
  """J v (= J^T v) for P(z, w) in z at its solution ``r`` ``[batch, n]`` with block ids ``block``."""
  if impl == "xla":
    return scores_jvp_xla(r, block, v, kl=kl)
  return scores_jvp_p.bind(r, block, v, kl=bool(kl))


def sort_jvp(
  x: jax.Array, block_in: jax.Array, block_out: jax.Array, v: jax.Array, *, kl: bool, impl: str
) -> jax.Array:
  """A v for the soft sort P(rho / epsilon, x) in x: ``v`` in input order, the result in sorted order."""
  if impl == "xla":
    return sort_jvp_xla(x, block_in, block_out, v, kl=kl, transpose=False)
  return sort_jvp_p.bind(x, block_in, block_out, v, kl=bool(kl), transpose=False)
