"""The PAV projections in pure JAX: the fallback where no native kernel runs, and the oracle of the tests.

Same algorithm and formulation as the native core (``csrc/pav_core.h``): a stable descending sort, then Pool
Adjacent Violators with a stack of blocks, in a ``lax.fori_loop`` over the sorted positions with a
``lax.while_loop`` popping violated blocks; adjacent blocks with equal values (up to rounding) are pooled, as in
the reference implementation (see the header for why).

Units. ``x / epsilon`` is never formed: it overflows (1e31 / 1e-8 in float32) where the projection is finite.
Block statistics are kept in the units of x (scores) or of rho (sort), and only differences within a block or
between two adjacent blocks meet epsilon. A quotient that overflows is a difference far beyond every other term
of its comparison, and its infinity decides the comparison the way the limit does. Rows with |x| above a quarter
of the dtype's range are scaled by a power of two first, so that no difference of two x's overflows, and the
scores' rows with |x| below 1 likewise into [1, 2), so that none goes subnormal (XLA flushes those to 0).

* L2 scores, P(x / eps, w): blocks keep mean_x; p (before) and c are pooled when
  ``mean_x(p) - mean_x(c) <= eps (mean_w(p) - mean_w(c))`` up to rounding; r_i = (x_i - mean_x(B)) / eps +
  mean_w(B), exactly w_i on a one-element block. The target side is not accumulated: the mean of w = rho or of
  the top-k ones over a block follows from its first position and its size.
* KL scores: the header's ``KLScores``. Blocks keep x_first (their first, largest x) and S = sum_B exp((x -
  x_first) / eps), in [1, |B|]; W = sum_B w again follows from position and size. p and c are compared through
  S_p W_c against W_p S_c e with e = exp((x_first(c) - x_first(p)) / eps), within ``_RATIO_BAND`` of a tie by the
  header's log-domain rule; r_i = exp((x_i - x_first) / eps) W / S.
* L2 sort, P(rho / eps, x), in rho units: blocks keep mean_x; mean_rho(p) - mean_rho(c) = (|p| + |c|) / 2
  exactly, and p and c are pooled when ``(|p| + |c|) / 2 <= eps (mean_x(p) - mean_x(c))`` up to rounding; the
  output is (rho_i - mean_rho(B)) / eps + mean_x(B), with rho_i - mean_rho(B) a half-integer.
* KL sort: blocks keep x_first and S_x = sum_B exp(x - x_first); the rho side of a block of m positions is
  rho_first / eps + log T_m with T_m = sum_{k < m} exp(-k / eps), a table. The output is
  x_first + log(S_x / T_|B|) - (i - first(B)) / eps.

Precision. The native core computes in double whatever the input dtype. So do float64 rows, and float32 rows when
64-bit types are enabled (``jax_enable_x64``; the outputs are cast back), with the formulas above term for term.
Without 64-bit types (and on TPUs, which have no float64) float32 rows keep every accumulated statistic as a pair
of float32 numbers ``hi + lo`` (double-float arithmetic, ~2^-46 relative): means merged as weighted averages of
pairs, sums of exponentials as pairs with each exponential to pair precision. Statistics kept in float32 drifted
merge by merge (soft ranks 57,640 away from the native ones at n = 10^7). Ties are pooled within ``_TIE_ULPS``
roundings of the pairs (``_PAIR_EPS``), where the native core pools within as many roundings of a double.

Cost. XLA fuses each output of a loop body separately and recomputes shared work in each fusion, so the loop
keeps few pair statistics (none on the target side), precomputes what does not depend on the blocks (1 / k,
exp(-k / eps)) and carries a comparison's exponential to the merge that follows it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

# Units in the last place within which two block values count as equal (kTieUlps in pav_core.h).
_TIE_ULPS = 64.0
# The relative rounding of the pair arithmetic below (~2^-46 per operation), with margin: the epsilon of the tie
# rule for float32 rows, so that they pool what the native core pools in double, and not much more.
_PAIR_EPS = 2.0**-44
# KLScores::kRatioBand: within this relative distance of a tie, KL blocks are compared by the log-domain rule.
_RATIO_BAND = 1e-9


def _pooled(da, db):
  """value(p) <= value(c) up to rounding: the tie rule of ``pav_core.h``'s ``pooled``, in the dtype at hand."""
  magnitude = jnp.abs(da) + jnp.abs(db)
  eps = jnp.finfo(jnp.result_type(da)).eps
  tolerance = jnp.where(jnp.isfinite(magnitude), _TIE_ULPS * eps * magnitude, 0)
  return da - db <= tolerance


def _select(condition, a, b):
  """``jnp.where`` over the leaves of two numbers of the same arithmetic."""
  return jax.tree.map(lambda u, v: jnp.where(condition, u, v), a, b)


# ---------------------------------------------------------------------------------------------------------
# Double-float arithmetic on float32: Dekker, "A floating-point technique for extending the available
# precision", Numerische Mathematik, 1971. Every product inside an error-free transformation is of 12-bit halves
# and so exact: XLA contracts ``a * b + c`` into a fused multiply-add on CPU and GPU, which must not change it.


class _Pair(NamedTuple):
  """The number hi + lo, with |lo| <= ulp(hi) / 2 (after normalization)."""

  hi: jax.Array
  lo: jax.Array


def _pair(x) -> _Pair:
  return _Pair(x, jnp.zeros_like(x))


def _pair_from_int(k) -> _Pair:
  """An int32 as an exact pair (a float32 alone is exact only up to 2^24)."""
  hi = k.astype(jnp.float32)
  return _Pair(hi, (k - hi.astype(k.dtype)).astype(jnp.float32))


def _exp2(d):
  """2^d as a float32 for int32 d, exactly, from its bits: 0 below 2^-126 and 2^127 above 2^127."""
  return lax.bitcast_convert_type((jnp.clip(d, -127, 127) + 127) << 23, jnp.float32)


def _two_sum(a, b):
  """(s, e) with s = fl(a + b) and s + e = a + b exactly (Knuth)."""
  s = a + b
  bb = s - a
  return s, (a - (s - bb)) + (b - bb)


def _fast_two_sum(a, b):
  """_two_sum for |a| >= |b| (or a = 0)."""
  s = a + b
  return s, b - (s - a)


def _split(a):
  """a = hi + lo, each with at most 12 significant bits: hi by clearing the low 12 bits of the significand.

  Masking, not Veltkamp's multiply-and-subtract: XLA may fuse that multiply with the subtraction and so round it
  differently. Products of halves have at most 24 bits: they are exact, fused or not."""
  bits = lax.bitcast_convert_type(a, jnp.uint32)
  hi = lax.bitcast_convert_type(bits & jnp.uint32(0xFFFFF000), jnp.float32)
  return hi, a - hi


def _value(v):
  """v as the float32 it rounds to, rebuilt from its bits. XLA computes ``x / broadcast(e)`` as ``x * (1 / e)``
  and may fuse a product into a following addition, differently in each fusion that recomputes it, so an
  error-free transformation fed a quotient could see it unrounded in one place and rounded in another. Bits
  cannot be fused through."""
  bits = lax.bitcast_convert_type(v, jnp.uint32)
  hi = lax.bitcast_convert_type(bits & jnp.uint32(0xFFFFF000), jnp.float32)
  exponent = ((bits >> 23) & 0xFF).astype(jnp.int32)
  lo = (bits & 0xFFF).astype(jnp.int32).astype(jnp.float32) * _exp2(exponent - 150)  # the low 12 bits, exactly
  # Below 2^-103 the low bits would be subnormal, which XLA flushes to zero: v as it is, off by 2^-126 at most.
  # Infinities and NaN (exponent 255) pass as they are.
  rebuilt = hi + jnp.where((bits >> 31) == 1, -lo, lo)
  return jnp.where((exponent > 23) & (exponent < 255), rebuilt, v)


def _two_prod(a, b) -> _Pair:
  """a * b as a pair, from the four exact products of the halves (relative error ~2^-46)."""
  a_hi, a_lo = _split(a)
  b_hi, b_lo = _split(b)
  middle, middle_err = _two_sum(a_hi * b_lo, a_lo * b_hi)
  p, p_err = _two_sum(a_hi * b_hi, middle)
  return _Pair(*_fast_two_sum(p, p_err + (middle_err + a_lo * b_lo)))


def _add(x: _Pair, y: _Pair) -> _Pair:
  """x + y to ~2^-47 of max(|x|, |y|) (Dekker's addition: not relative to the sum when it cancels, which no
  caller needs: differences of block statistics are compared with a tolerance relative to the statistics)."""
  s, e = _two_sum(x.hi, y.hi)
  return _Pair(*_fast_two_sum(s, e + (x.lo + y.lo)))


def _neg(x: _Pair) -> _Pair:
  return _Pair(-x.hi, -x.lo)


def _sub(x: _Pair, y: _Pair) -> _Pair:
  return _add(x, _neg(y))


def _mul(x: _Pair, y: _Pair) -> _Pair:
  p = _two_prod(x.hi, y.hi)
  return _Pair(*_fast_two_sum(p.hi, p.lo + (x.hi * y.lo + x.lo * y.hi)))


def _mul_or_infinity(x: _Pair, y: _Pair) -> _Pair:
  """x y, or (+-inf, 0) where it overflows: the error terms of an overflowing product are NaN (inf - inf), and a
  NaN would compare false where the infinity decides (exp(-inf) = 0 in a top-k mask's KL merge gave NaN)."""
  product = _mul(x, y)
  finite = jnp.isfinite(product.hi)
  return _Pair(jnp.where(finite, product.hi, x.hi * y.hi), jnp.where(finite, product.lo, 0))


def _div(x: _Pair, y: _Pair) -> _Pair:
  """x / y (outside the PAV loop: a division costs a reciprocal, a product and a remainder)."""
  q = _value(x.hi / y.hi)
  r = _sub(x, _mul(_pair(q), y))  # the remainder, small and exact to the pair's precision
  lo = (r.hi + r.lo) / y.hi
  return _Pair(*_fast_two_sum(q, jnp.where(jnp.isfinite(q), lo, 0)))


def _scale(x: _Pair, s) -> _Pair:
  """x s for a power of two s: exact (above the subnormals)."""
  return _Pair(x.hi * s, x.lo * s)


def _constant(value) -> _Pair:
  """A float64 constant (or array) as a pair of float32 numpy values."""
  hi = np.asarray(value, np.float32)
  return _Pair(hi, (np.asarray(value, np.float64) - hi).astype(np.float32))


def _truncate(value: float, bits: int) -> float:
  mantissa, exponent = np.frexp(value)
  return float(np.ldexp(np.floor(mantissa * 2.0**bits) / 2.0**bits, exponent))


# ln 2 in three parts (Cody and Waite): k times each of the first two, of 17 bits, is exact for |k| < 128.
_LN2_HI = _truncate(np.log(2.0), 17)
_LN2_MID = _truncate(np.log(2.0) - _LN2_HI, 17)
_LN2_LO = float(np.float32(np.log(2.0) - _LN2_HI - _LN2_MID))
_EXP_STEPS = 4096  # exp(j / 4096) for j / 4096 in [0, ln 2]: the rest of the series is then below 2^-25
_EXP_TABLE = _constant(np.exp(np.arange(int(np.log(2.0) * _EXP_STEPS) + 2) / _EXP_STEPS))


def _exp(t: _Pair) -> _Pair:
  """exp(t) to ~2^-46 for a pair t (float32's exp is off by up to an ulp), 0 below -87 (2^-126: the sums it feeds
  are >= 1, or it scales outputs of at most n) and inf above 88.7.

  t = k ln 2 + j / 4096 + r with 0 <= r < 1 / 4096 (up to rounding): exp(t) = 2^k exp(j / 4096) (1 + u) with
  exp(j / 4096) from a table and u = r + r^2 / 2 + r^3 / 6, r in pairs and the rest in float32 (below 2^-25, so
  rounded to 2^-49). No constant enters an error-free transformation: XLA folds (x + 1) - 1 into x."""
  k = jnp.floor(jnp.clip(t.hi, -90, 90) * np.float32(1 / np.log(2.0)))
  reduced = _add(_Pair(*_two_sum(t.hi, -k * _LN2_HI)), _pair(-k * _LN2_MID))
  reduced = _Pair(*_fast_two_sum(reduced.hi, reduced.lo + (t.lo - k * _LN2_LO)))
  j = jnp.clip(jnp.floor(reduced.hi * _EXP_STEPS), 0, len(_EXP_TABLE.hi) - 1)
  r = _Pair(reduced.hi - j / _EXP_STEPS, reduced.lo)  # exact (Sterbenz)
  u = _Pair(*_fast_two_sum(r.hi, r.lo + r.hi * (r.lo + r.hi * (0.5 + r.hi * (1 / 6)))))
  table = jax.tree.map(lambda column: jnp.asarray(column)[j.astype(jnp.int32)], _EXP_TABLE)
  e = _add(table, _mul(table, u))
  power = _exp2(k.astype(jnp.int32))
  e = _Pair(e.hi * power, e.lo * power)
  e = _select(t.hi < -87, _pair(jnp.zeros_like(t.hi)), e)
  return _select(t.hi > 88.7, _pair(jnp.full_like(t.hi, jnp.inf)), e)


def _log(x: _Pair) -> _Pair:
  """log(x) for x > 0 to ~2^-46 of its magnitude: float32's log, then one Newton step with the pair exp."""
  y = jnp.log(x.hi)
  near_one = _mul(x, _exp(_pair(-y)))  # x / exp(y) = 1 + u, u ~ 1e-7; near_one.hi - 1 is exact
  u = (near_one.hi - 1) + near_one.lo
  return _Pair(*_fast_two_sum(y, u - 0.5 * u * u))


# ---------------------------------------------------------------------------------------------------------
# Two arithmetics with one interface, so that each projection is written once: numbers of one floating dtype
# (float64: the header's double, term for term), or float32 pairs. Each holds the row's epsilon.


class _Plain:
  """Numbers of one floating dtype, with the header's rules."""

  def __init__(self, epsilon):
    self.dtype = jnp.result_type(epsilon)
    self.epsilon = epsilon

  def of(self, x):
    return x

  def of_int(self, k):
    return k.astype(self.dtype)

  def hi(self, x):
    return x

  add = staticmethod(jnp.add)
  sub = staticmethod(jnp.subtract)
  mul = staticmethod(jnp.multiply)
  exp = staticmethod(jnp.exp)
  log = staticmethod(jnp.log)
  two_sum = staticmethod(jnp.subtract)

  def neg(self, x):
    return -x

  def over_epsilon(self, x):
    return x / self.epsilon

  def times_epsilon(self, x):
    return x * self.epsilon

  def reciprocals(self, n: int):
    return None

  def ratio(self, k, m, reciprocals):
    """k / m for int32 k, m > 0."""
    return k.astype(self.dtype) / m.astype(self.dtype)

  def prefix_sums(self, x):
    return jnp.cumsum(x)

  def gather(self, table, index):
    return table[index]

  pooled = staticmethod(_pooled)

  def kl_pooled(self, lhs, rhs, da, db):
    """The KLScores rule: lhs < rhs (value(p) < value(c)) outside the band, the log-domain rule within it."""
    outside = ~(jnp.abs(lhs - rhs) <= _RATIO_BAND * rhs)
    return jnp.where(outside, lhs < rhs, _pooled(da, db))

  def kl_sort_pooled(self, lhs, rhs, da, db):
    """The header's generic KL rule (the sort): log-sum-exp differences, compared by ``pooled``."""
    return _pooled(da, db)


class _Pairs:
  """float32 pairs (see the module docstring)."""

  dtype = jnp.dtype(jnp.float32)

  def __init__(self, epsilon):
    self.epsilon = _pair(epsilon)
    self.inverse_epsilon = _div(_pair(jnp.ones_like(epsilon)), self.epsilon)

  of = staticmethod(_pair)
  of_int = staticmethod(_pair_from_int)

  def hi(self, x):
    return x.hi

  add = staticmethod(_add)
  sub = staticmethod(_sub)
  mul = staticmethod(_mul)
  exp = staticmethod(_exp)
  log = staticmethod(_log)
  neg = staticmethod(_neg)

  def two_sum(self, a, b):
    """a - b as a pair, for a >= b: (inf, 0) where it overflows."""
    s, e = _two_sum(a, -b)
    return _Pair(s, jnp.where(jnp.isfinite(s), e, 0))

  def over_epsilon(self, x):
    return _mul_or_infinity(x, self.inverse_epsilon)

  def times_epsilon(self, x):
    return _mul_or_infinity(x, self.epsilon)

  def reciprocals(self, n: int):
    """1 / k for k = 1..n as pairs (at k - 1): the weights of the L2 merges without a division in the loop."""
    k = _pair_from_int(jnp.arange(1, n + 1, dtype=jnp.int32))
    return _div(_pair(jnp.ones_like(k.hi)), k)

  def ratio(self, k, m, reciprocals):
    return _mul(_pair_from_int(k), jax.tree.map(lambda column: column[m - 1], reciprocals))

  def prefix_sums(self, x):
    """Running sums of pairs, sequentially (``lax.associative_scan`` over pairs took seconds to compile)."""

    def step(total, term):
      total = _add(total, term)
      return total, total

    return lax.scan(step, _pair(jnp.zeros((), jnp.float32)), x)[1]

  def gather(self, table, index):
    return jax.tree.map(lambda column: column[index], table)

  def pooled(self, da, db):
    magnitude = jnp.abs(da.hi) + jnp.abs(db.hi)
    return _sub(da, db).hi <= jnp.where(jnp.isfinite(magnitude), _TIE_ULPS * _PAIR_EPS * magnitude, 0)

  def kl_pooled(self, lhs, rhs, da, db):
    """value(p) - value(c) = log(lhs / rhs) <= the tie tolerance: lhs - rhs, exact to the pairs, against the
    tolerance times rhs, with |da| + |db| taken as 2 |db| (they are equal at a tie). No band: the difference is
    resolved to ~2^-46 of rhs everywhere."""
    magnitude = 2 * jnp.abs(db)
    tolerance = jnp.where(jnp.isfinite(magnitude), _TIE_ULPS * _PAIR_EPS * magnitude, 0)
    return _sub(lhs, rhs).hi <= tolerance * rhs.hi

  kl_sort_pooled = kl_pooled


# ---------------------------------------------------------------------------------------------------------
# The algorithm. A projection is a leaf (the statistics of position i alone), a comparison of two adjacent blocks
# p, c returning (pooled?, aux), and a merge of p and c given that aux.


def _pack(tree) -> jax.Array:
  """The scalars of a statistics tree as one vector of their floating dtype (int32 fields bitcast into float32,
  converted into float64): the PAV loop then reads and writes a block with one gather and one scatter."""
  fields = jax.tree.leaves(tree)
  dtype = next(f.dtype for f in fields if jnp.issubdtype(f.dtype, jnp.floating))

  def field(f):
    if f.dtype == dtype:
      return f
    return lax.bitcast_convert_type(f, dtype) if f.dtype.itemsize == dtype.itemsize else f.astype(dtype)

  return jnp.stack([field(f) for f in fields], axis=-1)


def _unpack(packed: jax.Array, like):
  """Inverse of :func:`_pack` for a tree with the structure and dtypes of ``like``."""
  fields, treedef = jax.tree.flatten(like)

  def field(column, f):
    if column.dtype == f.dtype:
      return column
    if column.dtype.itemsize == f.dtype.itemsize:
      return lax.bitcast_convert_type(column, f.dtype)
    return column.astype(f.dtype)

  return treedef.unflatten([field(packed[..., j], f) for j, f in enumerate(fields)])


def _pav_row(n: int, leaf: Callable, compare: Callable, merge: Callable):
  """PAV on one row of n positions; returns the statistics of the block of each position (leaves ``[n]``) and
  the start of that block.

  Each comparison runs once, in the loop body right after the merge before it, and hands its aux (an
  exponential) to the merge that follows. The current block is carried packed into one vector: XLA:CPU runs a
  loop body as a graph of small kernels, and one fusion per statistic (with its own copy of the shared work, and
  its own dispatch) made the loop three times slower."""
  like = leaf(jnp.int32(0))
  packed_like = _pack(like)

  def push(i, carry):
    i = i.astype(jnp.int32)  # int64 with 64-bit types: it would be bitcast, not converted, into float64 stacks
    m, start, stack = carry

    def check(m, cur):
      top = _unpack(stack[jnp.maximum(m - 1, 0)], like)
      pooled, aux = compare(top, _unpack(cur, like))
      return (m > 0) & pooled, aux

    def pop(state):
      m, cur, _, _, aux = state
      merged = _pack(merge(_unpack(stack[m - 1], like), _unpack(cur, like), aux))
      return m - 1, merged, start[m - 1], *check(m - 1, merged)

    cur = _pack(leaf(i))
    m, cur, cur_start, _, _ = lax.while_loop(lambda state: state[3], pop, (m, cur, i, *check(m, cur)))
    return m + 1, start.at[m].set(cur_start), stack.at[m].set(cur)

  init = (jnp.int32(0), jnp.zeros(n, jnp.int32), jnp.zeros((n, packed_like.shape[-1]), packed_like.dtype))
  num_blocks, start, stack = lax.fori_loop(0, n, push, init)

  # Expand the stack to positions: position i lies in the last block starting at or before i.
  position = jnp.arange(n, dtype=jnp.int32)
  is_live = position < num_blocks
  marks = jnp.zeros(n, jnp.int32).at[jnp.where(is_live, start, n)].set(position, mode="drop")
  stack_index = lax.cummax(marks)  # index into the stack; start[0] = 0, so it is defined everywhere
  return _unpack(stack[stack_index], like), start[stack_index]


def _lerp(A, p, c, share):
  """p + (c - p) share: a weighted mean of two means, exactly p when c = p."""
  return A.add(p, A.mul(A.sub(c, p), share))


class _Target(NamedTuple):
  """The target w of the scores, decreasing: rho = (n, ..., 1) (topk = 0) or k ones then zeros, summed over the
  block of ``count`` positions from ``first``."""

  n: int
  topk: int

  def ones(self, first, count):
    return jnp.clip(self.topk - first, 0, count)

  def mean(self, A, first, count, reciprocals):
    if self.topk == 0:  # n - first - (count - 1) / 2
      return A.mul(A.of_int(2 * (self.n - first) - count + 1), A.of(jnp.asarray(0.5, A.dtype)))
    ones = self.ones(first, count)
    exact = (ones == 0) | (ones == count)  # 0 or 1 exactly, as the header's merged means of equal values
    return _select(exact, A.of_int(jnp.minimum(ones, 1)), A.ratio(ones, count, reciprocals))

  def mean_difference(self, A, p, c, reciprocals):
    """mean_w(p) - mean_w(c) for adjacent blocks p, c."""
    if self.topk == 0:
      return A.mul(A.of_int(p.count + c.count), A.of(jnp.asarray(0.5, A.dtype)))
    return A.sub(self.mean(A, p.first, p.count, reciprocals), self.mean(A, c.first, c.count, reciprocals))

  def total(self, A, first, count):
    if self.topk == 0:  # count (2 n - 2 first - count + 1) / 2
      twice = A.mul(A.of_int(count), A.of_int(2 * (self.n - first) - count + 1))
      return A.mul(twice, A.of(jnp.asarray(0.5, A.dtype)))
    return A.of_int(self.ones(first, count))


class _L2ScoresStats(NamedTuple):
  mean_x: object
  first: jax.Array
  count: jax.Array


def _l2_scores(A, x, target: _Target):
  """(r, block) for P(x / epsilon, w), x decreasing: see the module docstring."""
  n = x.shape[0]
  reciprocals = A.reciprocals(n)

  def leaf(i):
    return _L2ScoresStats(A.of(x[i]), i, jnp.int32(1))

  def compare(p, c):
    scaled_dw = A.times_epsilon(target.mean_difference(A, p, c, reciprocals))
    # eps (mean_w(p) - mean_w(c)) overflows only far beyond mean_x(p) - mean_x(c): pooled.
    return (A.hi(scaled_dw) == jnp.inf) | A.pooled(A.sub(p.mean_x, c.mean_x), scaled_dw), ()

  def merge(p, c, _):
    count = p.count + c.count
    return _L2ScoresStats(_lerp(A, p.mean_x, c.mean_x, A.ratio(c.count, count, reciprocals)), p.first, count)

  stats, block = _pav_row(n, leaf, compare, merge)
  mean_w = target.mean(A, block, stats.count, reciprocals)
  return A.hi(A.add(A.over_epsilon(A.sub(A.of(x), stats.mean_x)), mean_w)), block


class _KLScoresStats(NamedTuple):
  x_first: jax.Array  # the block's first (largest) x
  s: object  # sum_B exp((x - x_first) / epsilon), >= 1
  first: jax.Array
  count: jax.Array


def _kl_scores(A, x, target: _Target):
  """(r, block) for the KL projection of x / epsilon onto the permutahedron of w: the header's KLScores."""

  def leaf(i):
    return _KLScoresStats(x[i], A.of(jnp.ones((), A.dtype)), i, jnp.int32(1))

  def compare(p, c):
    d = A.over_epsilon(A.two_sum(p.x_first, c.x_first))  # >= 0; +inf where it overflows
    e = A.exp(A.neg(d))
    w_p = target.total(A, p.first, p.count)
    w_c = target.total(A, c.first, c.count)
    lhs = A.mul(p.s, w_c)  # value(p) <= value(c)  <=>  lhs <= rhs
    rhs = A.mul(A.mul(w_p, c.s), e)
    da = A.hi(d) + (jnp.log(A.hi(p.s)) - jnp.log(A.hi(c.s)))
    db = jnp.log(A.hi(w_p)) - jnp.log(A.hi(w_c))
    # A zero target (top-k) has value +inf: always pooled into a block with a target (x_first(p) - x_first(c) may
    # overflow where the header's double does not, and inf - inf would not compare).
    return jnp.where(A.hi(w_c) == 0, A.hi(w_p) > 0, A.kl_pooled(lhs, rhs, da, db)), e

  def merge(p, c, e):
    return _KLScoresStats(p.x_first, A.add(p.s, A.mul(c.s, e)), p.first, p.count + c.count)

  stats, block = _pav_row(x.shape[0], leaf, compare, merge)
  e = A.exp(A.neg(A.over_epsilon(A.two_sum(stats.x_first, x))))
  w = target.total(A, block, stats.count)
  return A.hi(A.mul(e, _divide(A, w, stats.s))), block


def _divide(A, x, y):
  return _div(x, y) if isinstance(A, _Pairs) else x / y


class _L2SortStats(NamedTuple):
  mean_x: object
  count: jax.Array  # the rho side of a block is fixed by its size and position


def _l2_sort(A, x):
  """(out, block) for P(rho / epsilon, x), x decreasing, in rho units: see the module docstring."""
  n = x.shape[0]
  reciprocals = A.reciprocals(n)
  half = A.of(jnp.asarray(0.5, A.dtype))

  def leaf(i):
    return _L2SortStats(A.of(x[i]), jnp.int32(1))

  def compare(p, c):
    scaled_dx = A.times_epsilon(A.sub(p.mean_x, c.mean_x))
    drho = A.mul(A.of_int(p.count + c.count), half)  # mean_rho(p) - mean_rho(c)
    # eps (mean_x(p) - mean_x(c)) overflows only far beyond (|p| + |c|) / 2: pooled.
    return (A.hi(scaled_dx) == jnp.inf) | A.pooled(drho, scaled_dx), ()

  def merge(p, c, _):
    count = p.count + c.count
    return _L2SortStats(_lerp(A, p.mean_x, c.mean_x, A.ratio(c.count, count, reciprocals)), count)

  stats, block = _pav_row(n, leaf, compare, merge)
  twice = 2 * block + stats.count - 1 - 2 * jnp.arange(n, dtype=jnp.int32)  # 2 (rho_i - mean_rho(B))
  return A.hi(A.add(A.over_epsilon(A.mul(A.of_int(twice), half)), stats.mean_x)), block


class _KLSortStats(NamedTuple):
  x_first: jax.Array
  s: object  # sum_B exp(x - x_first), >= 1
  count: jax.Array


def _kl_sort(A, x):
  """(out, block) for the KL projection of rho / epsilon onto the permutahedron of x, x decreasing."""
  n = x.shape[0]
  steps = A.over_epsilon(A.of_int(jnp.arange(n, dtype=jnp.int32)))  # k / epsilon
  rho_sums = A.prefix_sums(A.exp(A.neg(steps)))  # T_m = sum_{k < m} exp(-k / epsilon), at m - 1

  def leaf(i):
    return _KLSortStats(x[i], A.of(jnp.ones((), A.dtype)), jnp.int32(1))

  def compare(p, c):
    # value(p) - value(c) = da - db with da = |p| / eps + log(T_p / T_c) and db = dx + log(S_p / S_c),
    # dx = x_first(p) - x_first(c): so value(p) <= value(c)  <=>  T_p S_c exp(g) <= T_c S_p, g = |p| / eps - dx,
    # compared with exp(-|g|) on the side it shrinks. Where it underflows, |g| > 87 decides alone: the log ratios
    # are within 2 log n. The merge that may follow needs exp(-dx).
    dx = A.two_sum(p.x_first, c.x_first)  # +inf where it overflows
    step = A.gather(steps, p.count)
    g = A.sub(step, dx)
    g_hi = A.hi(step) - A.hi(dx)  # the right infinity, or NaN, where a term overflows
    g = _select(jnp.isfinite(g_hi), g, A.of(g_hi))
    negative = g_hi < 0
    shrink = A.exp(A.neg(_select(negative, A.neg(g), g)))
    t_p = A.gather(rho_sums, p.count - 1)
    t_c = A.gather(rho_sums, c.count - 1)
    lhs = A.mul(t_p, c.s)
    rhs = A.mul(t_c, p.s)
    lhs, rhs = _select(negative, A.mul(lhs, shrink), lhs), _select(negative, rhs, A.mul(rhs, shrink))
    da = A.hi(step) + (jnp.log(A.hi(t_p)) - jnp.log(A.hi(t_c)))
    db = A.hi(dx) + (jnp.log(A.hi(p.s)) - jnp.log(A.hi(c.s)))
    return A.kl_sort_pooled(lhs, rhs, da, db), A.exp(A.neg(dx))

  def merge(p, c, e):
    return _KLSortStats(p.x_first, A.add(p.s, A.mul(c.s, e)), p.count + c.count)

  stats, block = _pav_row(n, leaf, compare, merge)
  offset = A.over_epsilon(A.of_int(jnp.arange(n, dtype=jnp.int32) - block))  # (i - first(B)) / epsilon
  lse = A.add(A.of(stats.x_first), A.log(_divide(A, stats.s, A.gather(rho_sums, stats.count - 1))))
  return A.hi(A.sub(lse, offset)), block


# ---------------------------------------------------------------------------------------------------------
# The two solvers: sorting, rows, dtypes, scaling.


def _sort_descending(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(x in decreasing order, the permutation): stable, ties in input order (like the native radix sort), -0.0
  and 0.0 equal."""
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


def _solve(fn: Callable, x: jax.Array, epsilon: jax.Array):
  """``fn(A, row, epsilon)`` on the rows of x in the arithmetic of its dtype: float32 pairs for float32 without
  64-bit types, else float64 (float32 rows widened, floating outputs cast back)."""
  if jnp.dtype(x.dtype) == jnp.float32 and not jax.config.jax_enable_x64:
    return _rows(lambda xr, eps: fn(_Pairs, xr, eps), x, epsilon)
  wide = jnp.promote_types(x.dtype, jnp.float64)
  outs = _rows(lambda xr, eps: fn(_Plain, xr, eps), x.astype(wide), epsilon.astype(wide))
  return tuple(o.astype(x.dtype) if jnp.issubdtype(o.dtype, jnp.floating) else o for o in outs)


def _scale_of(x: jax.Array) -> jax.Array:
  """1, or 1/4 for a row with |x| above a quarter of the dtype's range: then no difference of two x's overflows."""
  big = jnp.max(jnp.abs(x)) > jnp.finfo(x.dtype).max / 4
  return jnp.where(big, 0.25, 1.0).astype(x.dtype)


def _scores_scale_of(x: jax.Array) -> jax.Array:
  """The power of two that brings the largest |x| into [1, 2) from below (at most 2^100 in float32, 2^1000 in
  float64), else :func:`_scale_of`: the header's ``scores_row_scale``. Differences of tiny x's would otherwise go
  subnormal, which XLA flushes to 0."""
  top = jnp.max(jnp.abs(x))
  _, exponent = jnp.frexp(top)
  cap = 100 if jnp.dtype(x.dtype) == jnp.float32 else 1000
  up = jnp.ldexp(jnp.ones((), x.dtype), jnp.minimum(1 - exponent, cap))
  return jnp.where((top > 0) & (top < 1), up, _scale_of(x))


def scores(x: jax.Array, epsilon: jax.Array, *, kl: bool, topk: int) -> tuple[jax.Array, jax.Array]:
  """Pure-JAX twin of :func:`otsort.pav._kernels.scores`."""
  target = _Target(x.shape[-1], topk)

  def row(arithmetic, xr, eps):
    sorted_x, perm = _sort_descending(xr)  # the order and the ties of x / eps
    s = _scores_scale_of(xr)  # P(x / eps, w) depends on x / eps only
    A = arithmetic(jnp.clip(eps * s, jnp.finfo(eps.dtype).tiny, jnp.finfo(eps.dtype).max))
    value, block = (_kl_scores if kl else _l2_scores)(A, sorted_x * s, target)
    unsort = lambda v: jnp.zeros_like(v).at[perm].set(v)
    return unsort(value), unsort(block)

  return _solve(row, x, epsilon)


def sort(x: jax.Array, epsilon: jax.Array, *, kl: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Pure-JAX twin of :func:`otsort.pav._kernels.sort`."""

  def row(arithmetic, xr, eps):
    sorted_x, perm = _sort_descending(xr)
    if kl:
      value, block_out = _kl_sort(arithmetic(eps), sorted_x)
    else:  # P(rho / eps, x) s = P(rho / (eps / s), s x)
      s = _scale_of(xr)
      value, block_out = _l2_sort(arithmetic(jnp.minimum(eps / s, jnp.finfo(eps.dtype).max)), sorted_x * s)
      value = value / s
    block_in = jnp.zeros_like(block_out).at[perm].set(block_out)
    return value, block_in, block_out

  return _solve(row, x, epsilon)
