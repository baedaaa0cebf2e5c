"""The PAV projections in pure JAX: the fallback where no native kernel runs, and the oracle of the tests.

Same algorithm, same numerics and same outputs as the native core (``csrc/pav_core.h``): a stable descending
sort, then Pool Adjacent Violators with a stack of blocks, in a ``lax.fori_loop`` over the sorted positions with
a ``lax.while_loop`` popping violated blocks. Blocks are compared through differences taken within each scale,
and log-sum-exps are kept as (max, log of the rest) pairs; adjacent blocks with equal values (up to the rounding
of the comparison) are pooled, as in the reference implementation; see the header for why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp

# Units in the last place within which two block values count as equal (kTieUlps in pav_core.h).
_TIE_ULPS = 64.0


def _pooled(da, db):
  """value(p) <= value(c) up to rounding: the tie rule of ``pav_core.h``'s ``pooled``, in the dtype at hand."""
  magnitude = jnp.abs(da) + jnp.abs(db)
  eps = jnp.finfo(jnp.result_type(da)).eps
  tolerance = jnp.where(jnp.isfinite(magnitude), _TIE_ULPS * eps * magnitude, 0)
  return da - db <= tolerance


class _L2(NamedTuple):
  # Means, merged as weighted averages (see pav_core.h): a block of equal values keeps exactly that value.
  mean_a: jax.Array
  mean_b: jax.Array
  count: jax.Array

  @staticmethod
  def make(a, b):
    return _L2(a, b, jnp.ones_like(a))

  def merge(self, other):
    count = self.count + other.count
    share = other.count / count
    return _L2(
      self.mean_a + (other.mean_a - self.mean_a) * share, self.mean_b + (other.mean_b - self.mean_b) * share, count
    )

  def violated_by(self, nxt):
    return _pooled(self.mean_a - nxt.mean_a, self.mean_b - nxt.mean_b)

  def solution(self, a):
    return (a - self.mean_a) + self.mean_b


def _lse_merge(max_x, rest_x, max_y, rest_y):
  m = jnp.maximum(max_x, max_y)
  u = (max_x - m) + rest_x
  w = (max_y - m) + rest_y
  hi = jnp.maximum(u, w)
  lo = jnp.minimum(u, w)
  rest = hi + jnp.log1p(jnp.exp(lo - hi))
  # log(0) = -inf stands for an empty sum (a zero in the top-k target); -inf - -inf would be NaN.
  rest = jnp.where(max_x == -jnp.inf, rest_y, jnp.where(max_y == -jnp.inf, rest_x, rest))
  return m, rest


class _KL(NamedTuple):
  max_a: jax.Array
  rest_a: jax.Array
  max_b: jax.Array
  rest_b: jax.Array

  @staticmethod
  def make(a, b):
    zero = jnp.zeros_like(a)
    return _KL(a, zero, b, zero)

  def merge(self, other):
    return _KL(
      *_lse_merge(self.max_a, self.rest_a, other.max_a, other.rest_a),
      *_lse_merge(self.max_b, self.rest_b, other.max_b, other.rest_b),
    )

  def violated_by(self, nxt):
    da = (self.max_a - nxt.max_a) + (self.rest_a - nxt.rest_a)
    db = (self.max_b - nxt.max_b) + (self.rest_b - nxt.rest_b)
    return _pooled(da, db)

  def solution(self, a):
    return ((a - self.max_a) - self.rest_a) + (self.max_b + self.rest_b)


def _pav_row(a: jax.Array, b: jax.Array, stats_type) -> tuple[jax.Array, jax.Array]:
  """PAV on one row; returns (a_i - v_{B(i)}, start of the block of i), both per sorted position."""
  n = a.shape[0]
  leaves = stats_type.make(a, b)  # per-position leaves; also the storage shape of the stack

  def push(i, carry):
    m, start, stack = carry
    cur = jax.tree.map(lambda leaf: leaf[i], leaves)

    def violated(state):
      m, cur, _ = state
      prev = jax.tree.map(lambda s: s[jnp.maximum(m - 1, 0)], stack)
      return (m > 0) & prev.violated_by(cur)

    def pop(state):
      m, cur, _ = state
      prev = jax.tree.map(lambda s: s[m - 1], stack)
      return m - 1, prev.merge(cur), start[m - 1]

    m, cur, cur_start = lax.while_loop(violated, pop, (m, cur, i))
    start = start.at[m].set(cur_start)
    stack = jax.tree.map(lambda s, c: s.at[m].set(c), stack, cur)
    return m + 1, start, stack

  init = (jnp.int32(0), jnp.zeros(n, jnp.int32), leaves)
  num_blocks, start, stack = lax.fori_loop(0, n, push, init)

  # Expand the stack to positions: position i lies in the last block starting at or before i.
  position = jnp.arange(n, dtype=jnp.int32)
  is_live = position < num_blocks
  marks = jnp.zeros(n, jnp.int32).at[jnp.where(is_live, start, n)].set(position, mode="drop")
  stack_index = lax.cummax(marks)  # index into the stack; start[0] = 0, so it is defined everywhere
  block_start = start[stack_index]
  stats = jax.tree.map(lambda s: s[stack_index], stack)
  return stats.solution(a), block_start


def _sort_descending(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(x in decreasing order, the permutation): stable, ties in input order (like the native radix sort), -0.0
  and 0.0 equal.

  The sorted values are the sort's own output, a materialized array. That matters when x is computed (x / epsilon):
  XLA would otherwise recompute x in every consumer's fusion and contract ``x * (1 / epsilon) - mean`` into a fused
  multiply-add, so a_i - mean(a_B) on a one-element block would be the rounding error of a_i instead of 0.
  """
  keys = -jnp.where(x == 0, jnp.zeros_like(x), x)
  sorted_keys, perm = lax.sort((keys, jnp.arange(x.shape[-1], dtype=jnp.int32)), num_keys=1, is_stable=True)
  return -sorted_keys, perm


def _rows(fn: Callable, x: jax.Array, epsilon: jax.Array):
  """Applies a one-row function ``fn(row, epsilon)`` to every row of ``[..., n]`` (``epsilon`` ``[..., 1]``), with
  NaN rows for non-finite inputs and for an epsilon that is not positive and finite."""
  n = x.shape[-1]
  flat = x.reshape(-1, n)
  flat_epsilon = epsilon.reshape(-1)
  valid_epsilon = (flat_epsilon > 0) & jnp.isfinite(flat_epsilon)
  outs = jax.vmap(fn)(flat, jnp.where(valid_epsilon, flat_epsilon, 1))
  finite = jnp.all(jnp.isfinite(flat), axis=-1, keepdims=True) & valid_epsilon[:, None]
  valid_ids = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), flat.shape)
  outs = tuple(jnp.where(finite, o, jnp.nan if jnp.issubdtype(o.dtype, jnp.floating) else valid_ids) for o in outs)
  return tuple(o.reshape(x.shape) for o in outs)


def _stats_type(kl: bool):
  return _KL if kl else _L2


def scores(x: jax.Array, epsilon: jax.Array, *, kl: bool, topk: int) -> tuple[jax.Array, jax.Array]:
  """Pure-JAX twin of :func:`otsort.pav._kernels.scores`."""
  n = x.shape[-1]
  position = jnp.arange(n)
  w = (n - position if topk == 0 else position < topk).astype(x.dtype)
  target = jnp.log(w) if kl else w

  def row(xr, eps):
    z, perm = _sort_descending(xr / eps)  # dividing first keeps the order and the ties
    solution, block = _pav_row(z, target, _stats_type(kl))
    value = jnp.exp(solution) if kl else solution
    unsort = lambda v: jnp.zeros_like(v).at[perm].set(v)
    return unsort(value), unsort(block)

  return _rows(row, x, epsilon)


def sort(x: jax.Array, epsilon: jax.Array, *, kl: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Pure-JAX twin of :func:`otsort.pav._kernels.sort`."""
  n = x.shape[-1]
  rho = jnp.arange(n, 0, -1).astype(x.dtype)

  def row(xr, eps):
    sorted_x, perm = _sort_descending(xr)
    a, _ = _sort_descending(rho / eps)  # already decreasing: the sort only materializes it (see above)
    solution, block_out = _pav_row(a, sorted_x, _stats_type(kl))
    block_in = jnp.zeros_like(block_out).at[perm].set(block_out)
    return solution, block_in, block_out

  return _rows(row, x, epsilon)
