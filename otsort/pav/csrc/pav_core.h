// The algorithm core of the PAV backend, shared by the CPU and the CUDA handlers.
//
// Blondel, Teboul, Berthet, Djolonga, "Fast Differentiable Sorting and Ranking", ICML 2020, reduce the
// projections onto the permutahedron to a decreasing isotonic regression in the sorted domain:
//
//   L2:  v = argmin_{v_1 >= ... >= v_n} 1/2 ||v - (a - b)||^2,          block value  mean(a_B) - mean(b_B)
//   KL:  v = argmin_{v_1 >= ... >= v_n} <exp(a - v), 1> + <exp(b), v>,  block value  LSE(a_B) - LSE(b_B)
//
// solved by Pool Adjacent Violators in O(n). The projection is then a_i - v_{B(i)}.
// Everything here is header-only and __host__ __device__, so the CPU tests run the code the GPU runs.
//
// Numerics: a and b may live on very different scales (a = x / epsilon with epsilon = 1e-6, b = log(rank)).
// So block values are never formed as one number: two blocks are compared through the differences
// a-part(p) - a-part(c) versus b-part(p) - b-part(c), each taken within its own scale, and the solution is
// written as (a_i - center(a_B)) + center(b_B). Log-sum-exps are kept as (max, log of the rest) pairs.
// Units: a = u / epsilon is never formed either (u = x for the scores, rho for the sort): it overflows a double
// (1e300 / 1e-300) where the projection is finite. Block statistics of the a side are kept in the units of u, and
// only differences within a block or between two adjacent blocks meet epsilon; a quotient that overflows is a
// difference far beyond every other term of its comparison, and its infinity decides the comparison the way the
// limit does. Rows with |x| above a quarter of the double range are scaled by a power of two first, so that no
// difference of two x's overflows, and the scores' rows with |x| below 1 into [1, 2), so that none goes
// subnormal. The pure-JAX twin (_isotonic_xla.py) uses the same formulation.
//
// Ties: adjacent blocks with EQUAL values are pooled, as in the reference implementation of the paper
// (google-research/fast-soft-sort) and torchsort. The values do not change, but the blocks, and so the
// derivative, do: on a face of the permutahedron (x / epsilon a permutation of 1..n, integer scores) the
// reference's generalized Jacobian averages over the tied blocks where a strict rule would return zero.
// "Equal" means equal up to kTieUlps units in the last place of the two differences compared, so that ties
// that are exact in real arithmetic are pooled whatever the rounding of the libm at hand (the CPU, the GPU and
// XLA round log1p and exp differently); the pure-JAX twin applies the same rule with its own dtype's epsilon.
// Pooling two blocks whose values differ by that little moves the solution by as little.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define OTSORT_HD __host__ __device__ inline
#else
#define OTSORT_HD inline
#endif

namespace otsort {

constexpr double kTieUlps = 64.0;

// Finite and not NaN; written out because std::isfinite is not a device function.
OTSORT_HD bool is_finite(double x) { return fabs(x) <= DBL_MAX; }

// Two blocks p, c (p before c) must be pooled when value(p) <= value(c), value = a-part - b-part, given the
// differences da and db of their a-parts and b-parts. A NaN compares false, so no row can loop forever.
OTSORT_HD bool pooled(double da, double db) {
  const double magnitude = fabs(da) + fabs(db);
  const double tolerance = is_finite(magnitude) ? kTieUlps * DBL_EPSILON * magnitude : 0.0;
  return da - db <= tolerance;
}

// Quadratic regularization: block statistics are means, the a side's in the units of u (a = u / epsilon). They are
// merged as weighted averages, not kept as sums: a block of equal values then has exactly that value as its mean
// (a sum of huge equal values would round, and u_i - mean(u_B) would be the rounding error instead of 0).
struct L2 {
  static constexpr bool kLogDomain = false;

  struct Stats {
    double mean_u;
    double mean_b;
    int32_t count;
  };

  OTSORT_HD static Stats make(double u, double b) { return {u, b, 1}; }

  OTSORT_HD static Stats merge(const Stats& p, const Stats& c) {
    const int32_t count = p.count + c.count;
    const double share = static_cast<double>(c.count) / count;
    return {p.mean_u + (c.mean_u - p.mean_u) * share, p.mean_b + (c.mean_b - p.mean_b) * share, count};
  }

  // True when the block before (p) has a value no larger than the block after (c): v must strictly decrease.
  // (mean_u(p) - mean_u(c)) / epsilon against mean_b(p) - mean_b(c), compared as du against epsilon * db; the
  // latter overflows only far beyond du (b is w or x, which never decrease along the blocks here): pooled.
  OTSORT_HD static bool violated(const Stats& p, const Stats& c, double epsilon) {
    const double scaled_db = epsilon * (p.mean_b - c.mean_b);
    return scaled_db == INFINITY || pooled(p.mean_u - c.mean_u, scaled_db);
  }

  // When p and *c violate the order, *c becomes their union.
  OTSORT_HD static bool pool_if_violated(const Stats& p, Stats* c, double epsilon) {
    if (!violated(p, *c, epsilon)) return false;
    *c = merge(p, *c);
    return true;
  }

  // a_i - v_B, in the sorted domain: exactly b_i on a one-element block.
  OTSORT_HD static double solution(double u, const Stats& s, double epsilon) {
    return (u - s.mean_u) / epsilon + s.mean_b;
  }
};

// log(sum(exp(.))) of a block, as max + log_rest with log_rest in [0, log n].
struct LogSumExp {
  double max;
  double log_rest;
};

OTSORT_HD LogSumExp lse_leaf(double x) { return {x, 0.0}; }

// The log-sum-exp of the union of two blocks, for terms u / epsilon with x and y kept in the units of u (the
// maxima in u units, log_rest natural).
OTSORT_HD LogSumExp lse_merge(const LogSumExp& x, const LogSumExp& y, double epsilon) {
  // log(0) = -inf stands for an empty sum (a zero in the top-k target); -inf - -inf would be NaN.
  if (x.max == -INFINITY) return y;
  if (y.max == -INFINITY) return x;
  const double m = x.max > y.max ? x.max : y.max;
  const double u = (x.max - m) / epsilon + x.log_rest;
  const double w = (y.max - m) / epsilon + y.log_rest;
  const double hi = u > w ? u : w;
  const double lo = u > w ? w : u;
  return {m, hi + log1p(exp(lo - hi))};
}

// x - y for two log-sum-exps in u units, natural units out, differences of maxima taken first.
OTSORT_HD double lse_diff(const LogSumExp& x, const LogSumExp& y, double epsilon) {
  return (x.max - y.max) / epsilon + (x.log_rest - y.log_rest);
}

// Entropic (KL) regularization: block statistics are log-sum-exps, the a side's in the units of u.
struct KL {
  static constexpr bool kLogDomain = true;

  struct Stats {
    LogSumExp a;
    LogSumExp b;
  };

  OTSORT_HD static Stats make(double u, double b) { return {lse_leaf(u), lse_leaf(b)}; }

  OTSORT_HD static Stats merge(const Stats& p, const Stats& c, double epsilon) {
    return {lse_merge(p.a, c.a, epsilon), lse_merge(p.b, c.b, 1.0)};
  }

  OTSORT_HD static bool violated(const Stats& p, const Stats& c, double epsilon) {
    return pooled(lse_diff(p.a, c.a, epsilon), lse_diff(p.b, c.b, 1.0));
  }

  OTSORT_HD static bool pool_if_violated(const Stats& p, Stats* c, double epsilon) {
    if (!violated(p, *c, epsilon)) return false;
    *c = merge(p, *c, epsilon);
    return true;
  }

  // a_i - v_B, the projection in the log domain.
  OTSORT_HD static double solution(double u, const Stats& s, double epsilon) {
    return ((u - s.a.max) / epsilon - s.a.log_rest) + (s.b.max + s.b.log_rest);
  }
};

// KL for the scores projection, where the target side is a plain vector w (rho or the top-k ones) and the score
// side a = x / epsilon is sorted in decreasing order, so a block's largest x is its first. Blocks keep plain sums:
// W = sum_B w and S = sum_B exp((x - x_first) / epsilon), so LSE_B(a) = x_first / epsilon + log S and
// LSE_B(log w) = log W. Two blocks are compared through the ratio of exp(values), S_p W_c / (S_c W_p e) against 1
// with e = exp((x_first(c) - x_first(p)) / epsilon): one exp per comparison, reused by the merge, and no log, where
// the generic KL takes an exp and a log1p per side and merge. Within kRatioBand of a tie the values are formed with
// logs and compared by the common rule (pooled), so ties are decided as everywhere else: the band is far wider than
// the ratio's rounding and than any tie tolerance that can matter (|LSE_B(log w) differences| <= 2 log n, so a tie
// has |da| + |db| <= 4 log n).
struct KLScores {
  static constexpr bool kLogDomain = true;
  static constexpr double kRatioBand = 1e-9;

  struct Stats {
    double x_first;  // the block's first (largest) x
    double a_sum;    // sum_B exp((x - x_first) / epsilon), >= 1
    double w_sum;    // sum_B w, >= 0
  };

  OTSORT_HD static Stats make(double x, double w) { return {x, 1.0, w}; }

  OTSORT_HD static bool pool_if_violated(const Stats& p, Stats* c, double epsilon) {
    const double e = exp((c->x_first - p.x_first) / epsilon);
    bool violated;
    if (c->w_sum == 0) {
      // A zero target (top-k) has value +inf: pooled into a block with a target, never into another zero block
      // (the fallback below would agree, but for x_first differences whose quotient overflows: inf - inf).
      violated = p.w_sum > 0;
    } else {
      const double lhs = p.a_sum * c->w_sum;  // value(p) <= value(c)  <=>  lhs <= rhs
      const double rhs = p.w_sum * c->a_sum * e;
      if (lhs > 0 && rhs > 0 && lhs <= DBL_MAX && rhs <= DBL_MAX && !(fabs(lhs - rhs) <= kRatioBand * rhs)) {
        violated = lhs < rhs;
      } else {
        const double da = (p.x_first - c->x_first) / epsilon + (log(p.a_sum) - log(c->a_sum));
        violated = pooled(da, log(p.w_sum) - log(c->w_sum));
      }
    }
    if (!violated) return false;
    // x_first(p) >= x_first(c) in sorted order; the other case keeps the sums finite too.
    if (e <= 1.0) {
      *c = {p.x_first, p.a_sum + c->a_sum * e, p.w_sum + c->w_sum};
    } else {
      *c = {c->x_first, p.a_sum / e + c->a_sum, p.w_sum + c->w_sum};
    }
    return true;
  }

  // The projection itself (not its log): exp(a - LSE_B(a) + LSE_B(log w)) = exp((x - x_first) / epsilon) W / S.
  OTSORT_HD static double projection(double x, const Stats& s, double epsilon) {
    return exp((x - s.x_first) / epsilon) * (s.w_sum / s.a_sum);
  }
};

// Pool Adjacent Violators on the sequences a(i) = u(i) / epsilon, b(i), i = 0..n-1 (u and b any callables).
// Writes the blocks as a stack: start[k] is the first position of block k, stats[k] its statistics.
// Returns the number of blocks. Each position is pushed once and popped at most once: O(n), and a NaN
// comparison is false, so the loop ends on any input.
template <class Reg, class SeqU, class SeqB>
OTSORT_HD int32_t pool_adjacent_violators(int32_t n, const SeqU& u, const SeqB& b, double epsilon, int32_t* start,
                                          typename Reg::Stats* stats) {
  int32_t m = 0;
  for (int32_t i = 0; i < n; ++i) {
    typename Reg::Stats cur = Reg::make(u(i), b(i));
    int32_t cur_start = i;
    while (m > 0 && Reg::pool_if_violated(stats[m - 1], &cur, epsilon)) {
      --m;
      cur_start = start[m];
    }
    start[m] = cur_start;
    stats[m] = cur;
    ++m;
  }
  return m;
}

// Calls emit(position, block_start, stats) for every sorted position, block by block.
template <class Reg, class Emit>
OTSORT_HD void for_each_position(int32_t n, int32_t num_blocks, const int32_t* start,
                                 const typename Reg::Stats* stats, const Emit& emit) {
  for (int32_t k = 0; k < num_blocks; ++k) {
    const int32_t end = k + 1 < num_blocks ? start[k + 1] : n;
    for (int32_t i = start[k]; i < end; ++i) emit(i, start[k], stats[k]);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Within-row parallel PAV. A row is cut into chunks of consecutive positions; each chunk is solved alone
// (solve_chunk), then the solutions are joined left to right (join_stacks): the blocks of a solved chunk do not
// violate each other, so only blocks at the junction can pool, and pushing the right chunk's blocks in order onto
// the left stack with the same pool loop (Reg::pool_if_violated of the top with the incoming block) finds the
// sequential walk's blocks. The merges run in another order than the walk's, so the statistics agree up to rounding.
// A chunk's stack is never deeper than the chunk, so it lives in the slice of `start` and `stats` at the chunk's own
// offset and the joined stack is the chunks' segments in order (no copy). Emitting then runs per chunk again.

// The surviving blocks of one chunk: stack entries [begin, end) of `start` and `stats`.
struct StackSegment {
  int32_t begin;
  int32_t end;
};

// Pool Adjacent Violators on positions [begin, end) alone, its stack at start + begin, stats + begin.
template <class Reg, class SeqU, class SeqB>
OTSORT_HD StackSegment solve_chunk(int32_t begin, int32_t end, const SeqU& u, const SeqB& b, double epsilon,
                                   int32_t* start, typename Reg::Stats* stats) {
  int32_t m = begin;
  for (int32_t i = begin; i < end; ++i) {
    typename Reg::Stats cur = Reg::make(u(i), b(i));
    int32_t cur_start = i;
    while (m > begin && Reg::pool_if_violated(stats[m - 1], &cur, epsilon)) {
      --m;
      cur_start = start[m];
    }
    start[m] = cur_start;
    stats[m] = cur;
    ++m;
  }
  return {begin, m};
}

// Joins the solved chunk c onto the joined stack of chunks [0, c), whose last non-empty segment is *top (-1: none).
// Right block k pooled with anything becomes the only surviving entry of c's consumed part, at slot k, and the next
// block is compared with it first; a block that pools with nothing ends the join, since the rest of c's blocks are
// in order after it. O(1 + blocks popped).
template <class Reg>
OTSORT_HD void join_stacks(int32_t c, StackSegment* segments, int32_t* top, double epsilon, int32_t* start,
                           typename Reg::Stats* stats) {
  StackSegment& right = segments[c];
  for (int32_t k = right.begin; k < right.end; ++k) {
    typename Reg::Stats cur = stats[k];
    int32_t cur_start = start[k];
    bool pooled_any = false;
    for (;;) {
      const bool own = right.begin < k;  // the top is c's previous (merged) block, else the left stack's
      if (!own && *top < 0) break;
      const int32_t t = own ? k - 1 : segments[*top].end - 1;
      if (!Reg::pool_if_violated(stats[t], &cur, epsilon)) break;
      pooled_any = true;
      cur_start = start[t];
      if (own) {
        ++right.begin;
      } else {
        --segments[*top].end;
        while (*top >= 0 && segments[*top].begin == segments[*top].end) --*top;
      }
    }
    if (!pooled_any) break;
    start[k] = cur_start;
    stats[k] = cur;
  }
  if (right.begin < right.end) *top = c;
}

// Calls emit(position, block_start, stats) for the positions [lo, hi) of a row of n solved in segments (in order,
// some empty), so that disjoint ranges can be emitted concurrently.
template <class Reg, class Emit>
OTSORT_HD void for_each_position_in(int32_t lo, int32_t hi, int32_t n, int32_t num_segments,
                                    const StackSegment* segments, const int32_t* start,
                                    const typename Reg::Stats* stats, const Emit& emit) {
  if (lo >= hi) return;
  // The last non-empty segment whose first block starts at or before lo (the first block of all starts at 0).
  int32_t s = -1;
  for (int32_t j = 0; j < num_segments; ++j) {
    if (segments[j].begin < segments[j].end && start[segments[j].begin] <= lo) s = j;
  }
  if (s < 0) return;
  // Its last block starting at or before lo.
  int32_t left = segments[s].begin, right = segments[s].end - 1;
  while (left < right) {
    const int32_t mid = left + (right - left + 1) / 2;
    if (start[mid] <= lo) {
      left = mid;
    } else {
      right = mid - 1;
    }
  }
  int32_t k = left;
  int32_t i = lo;
  while (i < hi) {
    int32_t next_segment = s;
    int32_t block_end;
    if (k + 1 < segments[s].end) {
      block_end = start[k + 1];
    } else {
      next_segment = s + 1;
      while (next_segment < num_segments && segments[next_segment].begin == segments[next_segment].end) ++next_segment;
      block_end = next_segment < num_segments ? start[segments[next_segment].begin] : n;
    }
    const int32_t stop = block_end < hi ? block_end : hi;
    for (; i < stop; ++i) emit(i, start[k], stats[k]);
    if (next_segment == s) {
      ++k;
    } else {
      s = next_segment;
      if (s >= num_segments) break;
      k = segments[s].begin;
    }
  }
}

// Runs f(c) for c in [0, count) one after the other; a handler passes a functor with the same call that runs them
// concurrently (and returns when all are done).
struct SequentialChunks {
  template <class F>
  OTSORT_HD void operator()(int32_t count, const F& f) const {
    for (int32_t c = 0; c < count; ++c) f(c);
  }
};

// Chunks of chunk_len positions (the last one shorter) for a row of n; `segments` needs one entry per chunk.
OTSORT_HD int32_t num_chunks(int32_t n, int32_t chunk_len) {
  return static_cast<int32_t>((static_cast<int64_t>(n) + chunk_len - 1) / chunk_len);
}

// PAV by chunks, then emit(position, block_start, stats) for every position. The pooling (solve, join) is finished
// before the first emit, so emit may overwrite what u and b read.
template <class Reg, class SeqU, class SeqB, class ForEachChunk, class Emit>
OTSORT_HD void pool_and_emit_chunked(int32_t n, int32_t chunk_len, const SeqU& u, const SeqB& b, double epsilon,
                                     int32_t* start, typename Reg::Stats* stats, StackSegment* segments,
                                     const ForEachChunk& for_each_chunk, const Emit& emit) {
  const int32_t chunks = num_chunks(n, chunk_len);
  auto chunk_end = [&](int32_t c) {
    return static_cast<int32_t>(static_cast<int64_t>(c + 1) * chunk_len < n ? (c + 1) * chunk_len : n);
  };
  for_each_chunk(chunks, [&](int32_t c) {
    segments[c] = solve_chunk<Reg>(c * chunk_len, chunk_end(c), u, b, epsilon, start, stats);
  });
  int32_t top = 0;
  for (int32_t c = 1; c < chunks; ++c) join_stacks<Reg>(c, segments, &top, epsilon, start, stats);
  for_each_chunk(chunks, [&](int32_t c) {
    for_each_position_in<Reg>(c * chunk_len, chunk_end(c), n, chunks, segments, start, stats, emit);
  });
}

// ---------------------------------------------------------------------------------------------------------
// The two projections of the paper, one row each, in the sorted domain. `sorted` holds the row in decreasing
// order and `perm[i]` the input position of sorted[i]. Block ids are the sorted position where a block starts.
// Workspace: `start` and `stats` of n entries each.

// The vector w whose permutahedron the scores are projected onto, in decreasing order: rho = (n, ..., 1) for
// soft ranks, or (1, ..., 1, 0, ..., 0) with k ones for the soft top-k mask (Sander et al., ICML 2023).
struct Target {
  int32_t n;
  int32_t topk;  // 0 for rho
  OTSORT_HD double operator()(int32_t i) const {
    if (topk == 0) return static_cast<double>(n - i);
    return i < topk ? 1.0 : 0.0;
  }
};

// The largest |x| of a row in decreasing order (its ends).
template <class T>
OTSORT_HD double largest_magnitude(int32_t n, const T* sorted) {
  return fmax(fabs(static_cast<double>(sorted[0])), fabs(static_cast<double>(sorted[n - 1])));
}

// 1, or 1/4 for a row with |x| above a quarter of the double range, so that no difference of two x's overflows.
// A float row is never scaled.
OTSORT_HD double huge_row_scale(double top) { return top > DBL_MAX / 4 ? 0.25 : 1.0; }

// The power of two that brings the largest |x| of a row into [1, 2) from below (at most 2^1000), or 1/4 as above.
// Tiny rows (|x| near 1e-300) would otherwise leave differences of x's below the smallest normal double, which
// XLA's flush-to-zero mode turns into 0 (a top-k mask then lost 2e-8 of its mass).
OTSORT_HD double scores_row_scale(double top) {
  if (!(top > 0) || top >= 1) return huge_row_scale(top);
  int exponent;
  frexp(top, &exponent);  // top = m 2^exponent, m in [0.5, 1)
  return ldexp(1.0, 1 - exponent < 1000 ? 1 - exponent : 1000);
}

// P(x / epsilon, w): L2 gives z - v with b = w, KL gives exp(z - v) with b = log(w), z = x / epsilon, in x units
// (see Units above), so no finite x and positive epsilon overflow. P depends on x / epsilon only, so a row scaled
// by a power of two (scores_row_scale) is projected with epsilon scaled alike. out and block are in input order.
// KL runs as KLScores here (plain target sums); `stats` has room for it, as KLScores::Stats is no larger.
// The chunked form pools by chunks of chunk_len (see Within-row parallel PAV), `segments` holding one entry per
// chunk, and runs the chunks through for_each_chunk.
template <class Reg, class T, class ForEachChunk>
OTSORT_HD void project_scores_row_chunked(int32_t n, const T* sorted, const int32_t* perm, double epsilon, Target w,
                                          int32_t chunk_len, int32_t* start, typename Reg::Stats* stats,
                                          StackSegment* segments, const ForEachChunk& for_each_chunk, T* out,
                                          int32_t* block) {
  if (n == 0) return;
  const double scale = scores_row_scale(largest_magnitude(n, sorted));
  const double eps = fmin(fmax(epsilon * scale, DBL_MIN), DBL_MAX);
  auto x = [&](int32_t i) { return static_cast<double>(sorted[i]) * scale; };
  if constexpr (Reg::kLogDomain) {
    static_assert(sizeof(KLScores::Stats) <= sizeof(typename Reg::Stats), "the stack must hold KLScores");
    auto* s = reinterpret_cast<KLScores::Stats*>(stats);
    pool_and_emit_chunked<KLScores>(n, chunk_len, x, w, eps, start, s, segments, for_each_chunk,
                                    [&](int32_t i, int32_t block_start, const KLScores::Stats& b) {
                                      out[perm[i]] = static_cast<T>(KLScores::projection(x(i), b, eps));
                                      block[perm[i]] = block_start;
                                    });
  } else {
    pool_and_emit_chunked<Reg>(n, chunk_len, x, w, eps, start, stats, segments, for_each_chunk,
                               [&](int32_t i, int32_t block_start, const typename Reg::Stats& s) {
                                 out[perm[i]] = static_cast<T>(Reg::solution(x(i), s, eps));
                                 block[perm[i]] = block_start;
                               });
  }
}

// The sequential walk: one chunk.
template <class Reg, class T>
OTSORT_HD void project_scores_row(int32_t n, const T* sorted, const int32_t* perm, double epsilon, Target w,
                                  int32_t* start, typename Reg::Stats* stats, T* out, int32_t* block) {
  StackSegment segment;
  project_scores_row_chunked<Reg>(n, sorted, perm, epsilon, w, n, start, stats, &segment, SequentialChunks{}, out,
                                  block);
}

// Soft sort, P(rho / epsilon, s) for the row s: rho / epsilon projected onto the permutahedron of s, in rho units.
// L2 scales a row with huge values: P(rho / epsilon, s) = P(rho / (epsilon / c), c s) / c. (KL has no difference
// of two x's outside a log-sum-exp's max, which stays within the row's range.)
// out and block_out are in sorted order, block_in in input order. `out` may be `sorted` itself: sorted[i] is read
// only before out[i] is written (the pooling passes and largest_magnitude read it, all before the first emit; the
// emit pass does not). Chunked as project_scores_row_chunked.
template <class Reg, class T, class ForEachChunk>
OTSORT_HD void project_sort_row_chunked(int32_t n, const T* sorted, const int32_t* perm, double epsilon,
                                        int32_t chunk_len, int32_t* start, typename Reg::Stats* stats,
                                        StackSegment* segments, const ForEachChunk& for_each_chunk, T* out,
                                        int32_t* block_in, int32_t* block_out) {
  if (n == 0) return;
  const double scale = Reg::kLogDomain ? 1.0 : huge_row_scale(largest_magnitude(n, sorted));
  const double eps = fmin(epsilon / scale, DBL_MAX);
  auto rho = [&](int32_t i) { return static_cast<double>(n - i); };
  auto b = [&](int32_t i) { return static_cast<double>(sorted[i]) * scale; };
  pool_and_emit_chunked<Reg>(n, chunk_len, rho, b, eps, start, stats, segments, for_each_chunk,
                             [&](int32_t i, int32_t block_start, const typename Reg::Stats& s) {
                               out[i] = static_cast<T>(Reg::solution(rho(i), s, eps) / scale);
                               block_out[i] = block_start;
                               block_in[perm[i]] = block_start;
                             });
}

// The sequential walk: one chunk.
template <class Reg, class T>
OTSORT_HD void project_sort_row(int32_t n, const T* sorted, const int32_t* perm, double epsilon, int32_t* start,
                                typename Reg::Stats* stats, T* out, int32_t* block_in, int32_t* block_out) {
  StackSegment segment;
  project_sort_row_chunked<Reg>(n, sorted, perm, epsilon, n, start, stats, &segment, SequentialChunks{}, out,
                                block_in, block_out);
}

// ---------------------------------------------------------------------------------------------------------
// Derivatives (Blondel et al., 2020, Section 5). Within the blocks the forward pass found, the L2 projection
// averages and the KL projection takes a softmax-weighted average; nothing crosses a block. Block ids are the
// forward's: the sorted position where the block starts, so per-block sums live at that index of a row-sized
// scratch array and one pass gathers them back. Sums are in double. Ids outside [0, n) (not written by a forward
// pass) give NaN for their element instead of touching memory out of range.

struct BlockSums {
  double max;     // largest x of the block (KL sort weights)
  double weight;  // sum of weights: |B| (L2), sum_B r (KL scores), sum_B exp(x - max) (KL sort)
  double sum;     // sum of weight * v
  int32_t count;  // |B|
};

OTSORT_HD bool valid_id(int32_t id, int32_t n) { return id >= 0 && id < n; }

OTSORT_HD void clear_sums(int32_t n, BlockSums* sums) {
  for (int32_t i = 0; i < n; ++i) sums[i] = {-INFINITY, 0.0, 0.0, 0};
}

// J v for P(z, w) at its solution r, one row in input order. On each pooled block J = I - 11^T / |B| (L2) or
// diag(r) - r r^T / sum_B r (KL); on a one-element block J = 0 exactly (not v - v, which can be rounding noise),
// and NaN where r is NaN (a row without a projection). J is symmetric, so this is also the transpose (VJP).
template <class T>
OTSORT_HD void scores_jvp_row(int32_t n, bool kl, const T* r, const int32_t* block, const T* v, BlockSums* sums,
                              T* out) {
  clear_sums(n, sums);
  for (int32_t i = 0; i < n; ++i) {
    if (!valid_id(block[i], n)) continue;
    BlockSums& s = sums[block[i]];
    const double w = kl ? static_cast<double>(r[i]) : 1.0;
    s.weight += w;
    s.sum += w * static_cast<double>(v[i]);
    s.count += 1;
  }
  for (int32_t i = 0; i < n; ++i) {
    if (!valid_id(block[i], n)) {
      out[i] = static_cast<T>(NAN);
      continue;
    }
    const BlockSums& s = sums[block[i]];
    const double vi = static_cast<double>(v[i]);
    if (s.count > 1) {
      const double centred = vi - s.sum / s.weight;
      out[i] = static_cast<T>(kl ? static_cast<double>(r[i]) * centred : centred);
    } else {
      out[i] = static_cast<T>(vi * (r[i] != r[i] ? NAN : 0.0));
    }
  }
}

// The soft sort's Jacobian in x, A[i, j] = w_j / sum_B w for sorted position i and input j in the same block B,
// with w = 1 (L2) or exp(x) (KL: the sorted value is a block log-sum-exp of x plus a constant). transpose = false:
// out = A v (v in input order, out in sorted order); true: out = A^T v (v in sorted order, out in input order).
// `weight` is n doubles of scratch. A row with a NaN or an infinity has no projection: NaN.
template <class T>
OTSORT_HD void sort_jvp_row(int32_t n, bool kl, bool transpose, const T* x, const int32_t* block_in,
                            const int32_t* block_out, const T* v, BlockSums* sums, double* weight, T* out) {
  bool valid = true;
  for (int32_t i = 0; i < n; ++i) {
    valid = valid && is_finite(static_cast<double>(x[i])) && valid_id(block_in[i], n) && valid_id(block_out[i], n);
  }
  if (!valid) {
    for (int32_t i = 0; i < n; ++i) out[i] = static_cast<T>(NAN);
    return;
  }
  clear_sums(n, sums);
  if (kl) {
    for (int32_t j = 0; j < n; ++j) {
      BlockSums& s = sums[block_in[j]];
      s.max = fmax(s.max, static_cast<double>(x[j]));
    }
  }
  for (int32_t j = 0; j < n; ++j) {
    BlockSums& s = sums[block_in[j]];
    weight[j] = kl ? exp(static_cast<double>(x[j]) - s.max) : 1.0;  // the shift cancels in every ratio
    s.weight += weight[j];
    if (!transpose) s.sum += weight[j] * static_cast<double>(v[j]);
  }
  if (!transpose) {
    for (int32_t i = 0; i < n; ++i) {
      const BlockSums& s = sums[block_out[i]];
      out[i] = static_cast<T>(s.sum / s.weight);
    }
    return;
  }
  for (int32_t i = 0; i < n; ++i) sums[block_out[i]].sum += static_cast<double>(v[i]);
  for (int32_t j = 0; j < n; ++j) {
    const BlockSums& s = sums[block_in[j]];
    out[j] = static_cast<T>(weight[j] / s.weight * s.sum);
  }
}

// Scratch bytes per element of the derivative kernels.
constexpr int64_t kJvpBytesPerElement = sizeof(BlockSums) + sizeof(double);

// Rows are projected only with a positive, finite epsilon (the front end checks concrete values; a traced one
// reaches the kernel as it is and its row comes out NaN).
OTSORT_HD bool valid_epsilon(double epsilon) { return epsilon > 0 && is_finite(epsilon); }

// Workspace bytes per element for the PAV stack (start + stats), the larger of the two regularizations.
constexpr int64_t kStackBytesPerElement =
    sizeof(int32_t) + (sizeof(L2::Stats) > sizeof(KL::Stats) ? sizeof(L2::Stats) : sizeof(KL::Stats));

}  // namespace otsort
