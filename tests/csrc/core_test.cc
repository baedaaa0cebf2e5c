// A standalone test of the native algorithm core (pav_core.h, cpu_sort.h), meant to run under the address and
// undefined-behaviour sanitizers (tests/test_core_sanitizers.py builds and runs it). No XLA, no JAX.
//
// Claims checked:
//   * sort_descending is std::stable_sort by `>`: same permutation (ties in input order), -0.0 == 0.0, for float
//     and double, on both sides of the insertion-sort threshold (64) and on long rows (radix passes).
//   * project_scores_row and project_sort_row, L2 and KL, agree with an independent reference: pooling adjacent
//     violators (ties included, as in the paper's reference code) right to left until none is left, block values
//     recomputed from scratch in long double; adjacent blocks of exactly equal value are pooled.
//   * The block ids are well formed (each id is the sorted position where its block starts) and describe the
//     reference solution: re-solving each of the core's blocks in long double gives the reference values.
//   * The chunked PAV (solve_chunk, join_stacks, for_each_position_in; the CPU handler's within-row parallel path)
//     finds the sequential walk's blocks and its outputs to a few ulps, for chunks of 1, 2, 3, 7, n/2 and n
//     positions, run in reverse order (as a parallel run may), on the rows the core sees (finite: a row with a NaN
//     or an infinity never reaches it).
//   * The projections stay in the permutahedron: the sum of the target is kept, top-k masks (KL: log(0) = -inf
//     in the target) lie in [0, 1] and sum to k.
//
// Exits 0 when every check passes, 1 otherwise; prints a summary line either way.
#include <algorithm>
#include <cfloat>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cpu_sort.h"
#include "pav_core.h"

namespace {

int64_t g_checks = 0;
int64_t g_failures = 0;

void check(bool ok, const std::string& what) {
  ++g_checks;
  if (ok) return;
  if (++g_failures <= 25) std::fprintf(stderr, "FAIL: %s\n", what.c_str());
}

template <class T>
const char* type_name() {
  return sizeof(T) == 4 ? "float" : "double";
}

std::string row_label(const char* op, const char* reg, const char* type, int32_t n, int kind, int32_t topk = 0) {
  char buffer[160];
  std::snprintf(buffer, sizeof(buffer), "%s %s %s n=%d kind=%d topk=%d", op, reg, type, n, kind, topk);
  return buffer;
}

// ---------------------------------------------------------------------------------------------------------
// Random rows. kind 0: few distinct values (many ties, signed zeros); 1: continuous, one random scale per row
// from 1e-3 to 1e6; 2: a mix of both, plus subnormals and numbers far apart.

template <class T>
std::vector<T> random_row(std::mt19937_64& rng, int32_t n, int kind) {
  std::uniform_int_distribution<int> small(-3, 3);
  std::uniform_int_distribution<int> coin(0, 1);
  std::normal_distribution<double> normal(0.0, 1.0);
  const double scale = std::pow(10.0, std::uniform_real_distribution<double>(-3.0, 6.0)(rng));
  std::vector<T> row(n);
  for (int32_t i = 0; i < n; ++i) {
    const int k = small(rng);
    const T tie = k == 0 ? (coin(rng) ? T(-0.0) : T(0.0)) : static_cast<T>(k * 0.5);
    const T smooth = static_cast<T>(normal(rng) * scale);
    switch (kind) {
      case 0:
        row[i] = tie;
        break;
      case 1:
        row[i] = smooth;
        break;
      default: {
        const int pick = std::uniform_int_distribution<int>(0, 9)(rng);
        if (pick < 4) {
          row[i] = tie;
        } else if (pick < 8) {
          row[i] = smooth;
        } else if (pick == 8) {
          row[i] = (coin(rng) ? 1 : -1) * std::numeric_limits<T>::denorm_min() * static_cast<T>(1 + small(rng) + 3);
        } else {
          row[i] = static_cast<T>((coin(rng) ? 1 : -1) * (sizeof(T) == 4 ? 1e30 : 1e200));
        }
      }
    }
  }
  return row;
}

// Decreasing order by std::stable_sort: the reference for sort_descending and the input of the PAV checks.
template <class T>
std::vector<int32_t> stable_descending(const std::vector<T>& x) {
  std::vector<int32_t> perm(x.size());
  std::iota(perm.begin(), perm.end(), 0);
  std::stable_sort(perm.begin(), perm.end(), [&](int32_t i, int32_t j) { return x[i] > x[j]; });
  return perm;
}

// ---------------------------------------------------------------------------------------------------------
// The sort.

template <class T>
void check_sort_row(const std::vector<T>& x, const std::string& label) {
  const int32_t n = static_cast<int32_t>(x.size());
  std::vector<T> sorted(n);
  std::vector<int32_t> perm(n);
  otsort::SortScratch<T> scratch;
  otsort::sort_descending(n, x.data(), sorted.data(), perm.data(), scratch);
  const std::vector<int32_t> expected = stable_descending(x);
  int32_t first_bad = -1;
  for (int32_t i = 0; i < n && first_bad < 0; ++i) {
    if (perm[i] != expected[i] || !(sorted[i] == x[expected[i]])) first_bad = i;
  }
  check(first_bad < 0, "sort " + label + ": differs from std::stable_sort at position " + std::to_string(first_bad));
}

template <class T>
void check_sorts(std::mt19937_64& rng) {
  for (int32_t n : {0, 1, 2, 3, 17, 63, 64, 65, 66, 127, 1000, 2049, 100000}) {
    for (int kind = 0; kind < 3; ++kind) {
      check_sort_row(random_row<T>(rng, n, kind), row_label("sort", "-", type_name<T>(), n, kind));
    }
  }
  // Rows where every key has the same digit in some (or every) radix pass: the passes are skipped.
  check_sort_row(std::vector<T>(1000, T(1.5)), std::string("sort constant ") + type_name<T>());
  std::vector<T> zeros(500);
  for (int32_t i = 0; i < 500; ++i) zeros[i] = i % 3 == 0 ? T(-0.0) : T(0.0);
  check_sort_row(zeros, std::string("sort signed zeros ") + type_name<T>());
  std::vector<T> steps(300);
  for (int32_t i = 0; i < 300; ++i) steps[i] = static_cast<T>(i % 7) + T(1024);
  check_sort_row(steps, std::string("sort narrow range ") + type_name<T>());
}

// ---------------------------------------------------------------------------------------------------------
// The reference isotonic regression: v_1 >= ... >= v_n, block value L2: mean(a_B) - mean(b_B),
// KL: LSE(a_B) - LSE(b_B). Adjacent violators are pooled right to left, one pair at a time, until none is left;
// any pooling order reaches the same (unique) solution.

using Real = long double;

Real log_sum_exp(const std::vector<Real>& v, int32_t begin, int32_t end) {
  Real m = -std::numeric_limits<Real>::infinity();
  for (int32_t i = begin; i < end; ++i) m = std::max(m, v[i]);
  if (m == -std::numeric_limits<Real>::infinity()) return m;
  Real sum = 0;
  for (int32_t i = begin; i < end; ++i) sum += std::exp(v[i] - m);
  return m + std::log(sum);
}

// The a-part or b-part of a block's value: its mean (L2) or log-sum-exp (KL).
Real part(bool kl, const std::vector<Real>& v, int32_t begin, int32_t end) {
  if (kl) return log_sum_exp(v, begin, end);
  Real sum = 0;
  for (int32_t i = begin; i < end; ++i) sum += v[i];
  return sum / (end - begin);
}

Real block_value(bool kl, const std::vector<Real>& a, const std::vector<Real>& b, int32_t begin, int32_t end) {
  if (kl) return log_sum_exp(a, begin, end) - log_sum_exp(b, begin, end);
  Real sa = 0, sb = 0;
  for (int32_t i = begin; i < end; ++i) {
    sa += a[i];
    sb += b[i];
  }
  return sa / (end - begin) - sb / (end - begin);
}

// v at every position.
std::vector<Real> reference_isotonic(bool kl, const std::vector<Real>& a, const std::vector<Real>& b) {
  const int32_t n = static_cast<int32_t>(a.size());
  struct Block {
    int32_t begin, end;
    Real value;
  };
  std::vector<Block> blocks;
  for (int32_t i = 0; i < n; ++i) blocks.push_back({i, i + 1, block_value(kl, a, b, i, i + 1)});
  for (bool merged = true; merged;) {
    merged = false;
    for (int64_t k = static_cast<int64_t>(blocks.size()) - 2; k >= 0; --k) {
      if (blocks[k].value <= blocks[k + 1].value) {  // ties are pooled, as in the paper's reference code
        blocks[k].end = blocks[k + 1].end;
        blocks[k].value = block_value(kl, a, b, blocks[k].begin, blocks[k].end);
        blocks.erase(blocks.begin() + k + 1);
        merged = true;
        break;
      }
    }
  }
  std::vector<Real> v(n);
  for (const Block& blk : blocks) std::fill(v.begin() + blk.begin, v.begin() + blk.end, blk.value);
  return v;
}

// Block ids in sorted order must be the sorted position where each block starts. Returns the first bad position.
int32_t first_malformed_id(const std::vector<int32_t>& ids) {
  for (int32_t i = 0; i < static_cast<int32_t>(ids.size()); ++i) {
    const bool starts = ids[i] == i;
    const bool continues = i > 0 && ids[i] == ids[i - 1];
    if (!starts && !continues) return i;
  }
  return -1;
}

// v at every position from the core's blocks, re-solved in long double.
std::vector<Real> values_of_blocks(bool kl, const std::vector<Real>& a, const std::vector<Real>& b,
                                   const std::vector<int32_t>& ids) {
  const int32_t n = static_cast<int32_t>(ids.size());
  std::vector<Real> v(n);
  for (int32_t begin = 0; begin < n;) {
    int32_t end = begin + 1;
    while (end < n && ids[end] == ids[begin]) ++end;
    std::fill(v.begin() + begin, v.begin() + end, block_value(kl, a, b, begin, end));
    begin = end;
  }
  return v;
}

Real max_abs_finite(const std::vector<Real>& v) {
  Real m = 0;
  for (Real x : v) {
    if (std::isfinite(x)) m = std::max(m, std::fabs(x));
  }
  return m;
}

// Compares one solved row with the reference. a, b: the sequences handed to PAV (sorted domain); out_sorted: the
// core's output per sorted position; ids: its block ids per sorted position; exp_output: KL scores (out = exp).
template <class T>
void compare_with_reference(bool kl, bool exp_output, const std::vector<Real>& a, const std::vector<Real>& b,
                            const std::vector<Real>& out_sorted, const std::vector<int32_t>& ids,
                            const std::string& label) {
  const int32_t n = static_cast<int32_t>(a.size());
  const int32_t bad_id = first_malformed_id(ids);
  check(bad_id < 0, label + ": malformed block id at sorted position " + std::to_string(bad_id));
  if (bad_id >= 0) return;

  // The core works in double; sums over a block lose up to ~n ulps of the largest magnitude involved.
  const Real tol_v = 8 * n * DBL_EPSILON * (max_abs_finite(a) + max_abs_finite(b)) + 1e-300L;
  const Real out_eps = 4 * std::numeric_limits<T>::epsilon();
  const std::vector<Real> v_ref = reference_isotonic(kl, a, b);
  const std::vector<Real> v_core = values_of_blocks(kl, a, b, ids);
  // Blocks are maximal: two adjacent blocks whose values are exactly equal must have been pooled. The values
  // are compared as the core does, part by part (a huge common level would swamp a difference in one number).
  for (int32_t i = 1, p_begin = 0; i < n; ++i) {
    if (ids[i] == ids[i - 1]) continue;
    int32_t c_end = i + 1;
    while (c_end < n && ids[c_end] == ids[i]) ++c_end;
    const Real da = part(kl, a, p_begin, i) - part(kl, a, i, c_end);
    const Real db = part(kl, b, p_begin, i) - part(kl, b, i, c_end);
    if (da == db) {
      check(false, label + ": two adjacent blocks with equal values were not pooled at sorted position " +
                       std::to_string(i));
      return;
    }
    p_begin = i;
  }
  for (int32_t i = 0; i < n; ++i) {
    if (!(std::fabs(v_core[i] - v_ref[i]) <= tol_v)) {
      char buffer[200];
      std::snprintf(buffer, sizeof(buffer), ": the core's blocks give v=%.17Lg at %d, the reference %.17Lg (tol %.3Lg)",
                    v_core[i], i, v_ref[i], tol_v);
      check(false, label + buffer);
      return;
    }
    const Real ref = exp_output ? std::exp(a[i] - v_ref[i]) : a[i] - v_ref[i];
    const Real tol_out = exp_output ? ref * (2 * tol_v + out_eps) + std::numeric_limits<T>::denorm_min()
                                    : tol_v + out_eps * std::fabs(ref);
    if (!(std::fabs(out_sorted[i] - ref) <= tol_out)) {
      char buffer[200];
      std::snprintf(buffer, sizeof(buffer), ": output %.17Lg at sorted position %d, the reference %.17Lg (tol %.3Lg)",
                    out_sorted[i], i, ref, tol_out);
      check(false, label + buffer);
      return;
    }
  }
  check(true, label);
}

// P(z, w) by project_scores_row: checked against the reference and against the permutahedron of w.
template <class T, class Reg>
void check_scores_row(const std::vector<T>& z, int32_t topk, const std::string& label) {
  constexpr bool kl = Reg::kLogDomain;
  const int32_t n = static_cast<int32_t>(z.size());
  const std::vector<int32_t> perm = stable_descending(z);
  std::vector<T> sorted(n), out(n, T(-12345));
  for (int32_t i = 0; i < n; ++i) sorted[i] = z[perm[i]];
  std::vector<int32_t> start(n), block(n, -1);
  std::vector<typename Reg::Stats> stats(n);
  const otsort::Target w{n, topk};
  otsort::project_scores_row<Reg>(n, sorted.data(), perm.data(), 1.0, w, start.data(), stats.data(), out.data(),
                                  block.data());

  std::vector<Real> a(n), b(n), out_sorted(n);
  std::vector<int32_t> ids(n);
  Real w_sum = 0, out_sum = 0, out_abs = 0;
  bool in_box = true;
  for (int32_t i = 0; i < n; ++i) {
    const Real w_i = topk == 0 ? n - i : (i < topk ? 1 : 0);  // written out again, not read from Target
    a[i] = sorted[i];
    b[i] = kl ? std::log(w_i) : w_i;
    out_sorted[i] = out[perm[i]];
    ids[i] = block[perm[i]];
    w_sum += w_i;
    out_sum += out[i];
    out_abs += std::fabs(static_cast<Real>(out[i]));
    if (topk > 0) in_box = in_box && out[i] >= T(-1e-6) && out[i] <= T(1 + 1e-6);
  }
  compare_with_reference<T>(kl, kl, a, b, out_sorted, ids, label);
  // L2 keeps sums up to cancellation in a - mean(a_B); KL sums exact softmaxes.
  const Real sum_tol = 16 * n * std::numeric_limits<T>::epsilon() * (w_sum + out_abs) +
                       (kl ? 0 : 8 * n * n * DBL_EPSILON * max_abs_finite(a));
  check(std::fabs(out_sum - w_sum) <= sum_tol, label + ": the outputs do not sum to the sum of the target");
  check(in_box, label + ": a top-k mask value is outside [0, 1]");
}

// P(rho / epsilon, x) by project_sort_row.
template <class T, class Reg>
void check_sort_projection_row(const std::vector<T>& x, double epsilon, const std::string& label) {
  constexpr bool kl = Reg::kLogDomain;
  const int32_t n = static_cast<int32_t>(x.size());
  const std::vector<int32_t> perm = stable_descending(x);
  std::vector<T> sorted(n), out(n, T(-12345));
  for (int32_t i = 0; i < n; ++i) sorted[i] = x[perm[i]];
  std::vector<int32_t> start(n), block_in(n, -1), block_out(n, -1);
  std::vector<typename Reg::Stats> stats(n);
  otsort::project_sort_row<Reg>(n, sorted.data(), perm.data(), epsilon, start.data(), stats.data(), out.data(),
                                block_in.data(), block_out.data());

  std::vector<Real> a(n), b(n), out_sorted(n);
  bool ids_agree = true;
  for (int32_t i = 0; i < n; ++i) {
    a[i] = static_cast<Real>(n - i) / static_cast<Real>(epsilon);
    b[i] = sorted[i];
    out_sorted[i] = out[i];
    ids_agree = ids_agree && block_in[perm[i]] == block_out[i];
  }
  check(ids_agree, label + ": block_in and block_out describe different blocks");
  compare_with_reference<T>(kl, false, a, b, out_sorted, block_out, label);
}

template <class T>
void check_projections(std::mt19937_64& rng) {
  for (int32_t n : {1, 2, 3, 5, 17, 64, 65, 200, 1000}) {
    for (int kind = 0; kind < 3; ++kind) {
      // Scores are x / epsilon: the row generator's scales already span 1e-3 .. 1e6 (and 1e30 / 1e200).
      const std::vector<T> z = random_row<T>(rng, n, kind);
      const int32_t k = std::uniform_int_distribution<int32_t>(1, n)(rng);
      for (int32_t topk : {0, k}) {
        check_scores_row<T, otsort::L2>(z, topk, row_label("scores", "l2", type_name<T>(), n, kind, topk));
        check_scores_row<T, otsort::KL>(z, topk, row_label("scores", "kl", type_name<T>(), n, kind, topk));
      }
      const double epsilon = std::pow(10.0, std::uniform_real_distribution<double>(-6.0, 3.0)(rng));
      const std::vector<T> x = random_row<T>(rng, n, kind);
      check_sort_projection_row<T, otsort::L2>(x, epsilon, row_label("sort", "l2", type_name<T>(), n, kind));
      check_sort_projection_row<T, otsort::KL>(x, epsilon, row_label("sort", "kl", type_name<T>(), n, kind));
    }
  }
  // Every top-k size on one tied row: the KL target has n - k entries log(0) = -inf.
  const std::vector<T> z = random_row<T>(rng, 40, 0);
  for (int32_t topk = 1; topk <= 40; ++topk) {
    check_scores_row<T, otsort::KL>(z, topk, row_label("scores", "kl", type_name<T>(), 40, 0, topk));
    check_scores_row<T, otsort::L2>(z, topk, row_label("scores", "l2", type_name<T>(), 40, 0, topk));
  }
}

// ---------------------------------------------------------------------------------------------------------
// The chunked PAV against the sequential walk.

// Runs the chunks last to first: the solves must not depend on their order.
struct ReversedChunks {
  template <class F>
  void operator()(int32_t count, const F& f) const {
    for (int32_t c = count - 1; c >= 0; --c) f(c);
  }
};

// Same block ids, and outputs within 8 ulps of T of the row's largest |output|, plus n ulps of double of the
// inputs' scale `in_scale`: the statistics are merged in another order (each merge rounds once in double, and a
// mean of +-1e200 that cancels keeps that rounding), while ties within kTieUlps are decided the same either way.
template <class T>
void compare_chunked(const std::vector<T>& expected, const std::vector<T>& got, const std::vector<int32_t>& ids,
                     const std::vector<int32_t>& got_ids, Real in_scale, const std::string& label) {
  Real scale = 0;
  for (T v : expected) scale = std::max(scale, std::fabs(static_cast<Real>(v)));
  const Real n = static_cast<Real>(expected.size());
  const Real tol = 8 * std::numeric_limits<T>::epsilon() * scale + n * DBL_EPSILON * in_scale;
  Real worst = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    worst = std::max(worst, std::fabs(static_cast<Real>(expected[i]) - static_cast<Real>(got[i])));
  }
  check(ids == got_ids, label + ": block ids differ from the sequential walk's");
  check(worst <= tol, label + ": outputs differ from the sequential walk's by " + std::to_string(double(worst / tol)) +
                          " tolerances");
}

template <class T, class Reg>
void check_chunked_row(const std::vector<T>& x, int32_t topk, double epsilon, const std::string& label) {
  const int32_t n = static_cast<int32_t>(x.size());
  const std::vector<int32_t> perm = stable_descending(x);
  std::vector<T> sorted(n);
  for (int32_t i = 0; i < n; ++i) sorted[i] = x[perm[i]];
  std::vector<int32_t> start(n), seq_block(n, -1), seq_block_out(n, -1);
  std::vector<typename Reg::Stats> stats(n);
  std::vector<T> seq_scores(n), seq_sort(n);
  const otsort::Target w{n, topk};
  otsort::project_scores_row<Reg>(n, sorted.data(), perm.data(), epsilon, w, start.data(), stats.data(),
                                  seq_scores.data(), seq_block.data());
  std::vector<int32_t> seq_sort_in(n, -1);
  otsort::project_sort_row<Reg>(n, sorted.data(), perm.data(), epsilon, start.data(), stats.data(), seq_sort.data(),
                                seq_sort_in.data(), seq_block_out.data());
  // The scale of the statistics: a = x / epsilon and b = w for the scores, a = rho / epsilon and b = x for the sort.
  const Real x_scale = max_abs_finite(std::vector<Real>(sorted.begin(), sorted.end()));
  const Real scores_scale = x_scale / epsilon + n, sort_scale = x_scale + n / epsilon;
  for (int32_t chunk_len : {1, 2, 3, 7, std::max(1, n / 2), n}) {
    const std::string what = label + " chunk=" + std::to_string(chunk_len);
    std::vector<otsort::StackSegment> segments(otsort::num_chunks(n, chunk_len), otsort::StackSegment{-1, -1});
    std::vector<int32_t> block(n, -1), block_in(n, -1), block_out(n, -1);
    std::vector<T> scores(n, T(-12345));
    otsort::project_scores_row_chunked<Reg>(n, sorted.data(), perm.data(), epsilon, w, chunk_len, start.data(),
                                            stats.data(), segments.data(), ReversedChunks{}, scores.data(),
                                            block.data());
    compare_chunked(seq_scores, scores, seq_block, block, scores_scale, "scores " + what);
    // The sort as the CPU handler runs it: `out` is the sorted row itself.
    std::vector<T> inplace = sorted;
    otsort::project_sort_row_chunked<Reg>(n, inplace.data(), perm.data(), epsilon, chunk_len, start.data(),
                                          stats.data(), segments.data(), ReversedChunks{}, inplace.data(),
                                          block_in.data(), block_out.data());
    compare_chunked(seq_sort, inplace, seq_block_out, block_out, sort_scale, "sort " + what);
    check(block_in == seq_sort_in, "sort " + what + ": block_in differs from the sequential walk's");
  }
}

template <class T>
void check_chunked(std::mt19937_64& rng) {
  for (int32_t n : {1, 2, 3, 5, 17, 64, 200, 1000, 5000}) {
    for (int kind = 0; kind < 3; ++kind) {
      const std::vector<T> x = random_row<T>(rng, n, kind);
      const int32_t k = std::uniform_int_distribution<int32_t>(1, n)(rng);
      const double epsilon = std::pow(10.0, std::uniform_real_distribution<double>(-3.0, 3.0)(rng));
      for (int32_t topk : {0, k}) {
        const std::string tail = " eps=" + std::to_string(epsilon);
        const char* type = type_name<T>();
        check_chunked_row<T, otsort::L2>(x, topk, epsilon, row_label("chunked", "l2", type, n, kind, topk) + tail);
        check_chunked_row<T, otsort::KL>(x, topk, epsilon, row_label("chunked", "kl", type, n, kind, topk) + tail);
      }
    }
  }
}

}  // namespace

int main() {
  std::mt19937_64 rng(20200713);
  check_sorts<float>(rng);
  check_sorts<double>(rng);
  check_projections<float>(rng);
  check_projections<double>(rng);
  check_chunked<float>(rng);
  check_chunked<double>(rng);
  std::printf("core_test: %" PRId64 " checks, %" PRId64 " failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
