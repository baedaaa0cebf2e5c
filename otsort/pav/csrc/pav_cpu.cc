// XLA FFI handlers for the CPU: sort each row, run the shared PAV core, write the projection.
// Rows run in parallel on XLA's intra-op thread pool.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <vector>

#include "cpu_sort.h"
#include "ffi_checks.h"
#include "pav_core.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace otsort {
namespace {

// Runs body(row) for every row, on the calling thread and on the pool. The caller takes chunks too and only
// waits for chunks that a running thread has claimed, so a busy (or absent) pool cannot deadlock it, and a
// helper that starts after the call returned finds no chunk left and touches nothing.
template <class Body>
void parallel_rows(ffi::ThreadPool& pool, int64_t rows, int64_t n, const Body& body) {
  constexpr int64_t kElementsPerChunk = 1 << 14;
  const int64_t rows_per_chunk = std::max<int64_t>(1, kElementsPerChunk / std::max<int64_t>(n, 1));
  const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;

  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mutex;
    std::condition_variable finished;
  };
  auto state = std::make_shared<State>();
  auto work = [state, chunks, rows, rows_per_chunk, &body] {
    int64_t c;
    while ((c = state->next.fetch_add(1)) < chunks) {
      const int64_t end = std::min(rows, (c + 1) * rows_per_chunk);
      for (int64_t r = c * rows_per_chunk; r < end; ++r) body(r);
      if (state->done.fetch_add(1) + 1 == chunks) {
        std::lock_guard<std::mutex> lock(state->mutex);
        state->finished.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks - 1);
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule(decltype(work)(work));  // a copy: Schedule takes ownership
  work();
  std::unique_lock<std::mutex> lock(state->mutex);
  state->finished.wait(lock, [&] { return state->done.load() == chunks; });
}

template <class T>
bool all_finite(int32_t n, const T* x) {
  for (int32_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) return false;
  }
  return true;
}

// A row with a NaN or an infinity has no projection: it becomes NaN, with each element its own block so the
// derivative code sees valid ids, and the other rows are untouched.
template <class T>
void fill_invalid_row(int32_t n, T* out, int32_t* block_a, int32_t* block_b) {
  for (int32_t i = 0; i < n; ++i) {
    out[i] = std::numeric_limits<T>::quiet_NaN();
    block_a[i] = i;
    if (block_b != nullptr) block_b[i] = i;
  }
}

// Per-thread buffers, grown on demand and reused across rows and calls.
template <class T>
struct RowScratch {
  SortScratch<T> sort;
  std::vector<T> sorted;
  std::vector<int32_t> perm;
  std::vector<int32_t> start;
  std::vector<char> stats;
  void reserve(int64_t n) {
    sorted.resize(n);
    perm.resize(n);
    start.resize(n);
    stats.resize(n * std::max(sizeof(L2::Stats), sizeof(KL::Stats)));
  }
  static RowScratch& local() {
    thread_local RowScratch scratch;
    return scratch;
  }
};

template <class T, class Reg>
void scores_rows(ffi::ThreadPool& pool, int64_t rows, int32_t n, int32_t topk, const T* x, const T* epsilon,
                 T* out, int32_t* block) {
  parallel_rows(pool, rows, n, [&](int64_t r) {
    const T* xr = x + r * n;
    T* out_r = out + r * n;
    int32_t* block_r = block + r * n;
    if (!all_finite(n, xr) || !valid_epsilon(epsilon[r])) {
      return fill_invalid_row(n, out_r, block_r, static_cast<int32_t*>(nullptr));
    }
    auto& s = RowScratch<T>::local();
    s.reserve(n);
    sort_descending(n, xr, s.sorted.data(), s.perm.data(), s.sort);
    project_scores_row<Reg>(n, s.sorted.data(), s.perm.data(), epsilon[r], Target{n, topk}, s.start.data(),
                            reinterpret_cast<typename Reg::Stats*>(s.stats.data()), out_r, block_r);
  });
}

template <class T, class Reg>
void sort_rows(ffi::ThreadPool& pool, int64_t rows, int32_t n, const T* x, const T* epsilon, T* out,
               int32_t* block_in, int32_t* block_out) {
  parallel_rows(pool, rows, n, [&](int64_t r) {
    const T* xr = x + r * n;
    T* out_r = out + r * n;
    int32_t* in_r = block_in + r * n;
    int32_t* out_block_r = block_out + r * n;
    if (!all_finite(n, xr) || !valid_epsilon(epsilon[r])) return fill_invalid_row(n, out_r, in_r, out_block_r);
    auto& s = RowScratch<T>::local();
    s.reserve(n);
    sort_descending(n, xr, s.sorted.data(), s.perm.data(), s.sort);
    project_sort_row<Reg>(n, s.sorted.data(), s.perm.data(), epsilon[r], s.start.data(),
                          reinterpret_cast<typename Reg::Stats*>(s.stats.data()), out_r, in_r, out_block_r);
  });
}

// Per-thread scratch of the derivative kernels, grown on demand.
struct JvpScratch {
  std::vector<BlockSums> sums;
  std::vector<double> weight;
  void reserve(int64_t n) {
    sums.resize(n);
    weight.resize(n);
  }
  static JvpScratch& local() {
    thread_local JvpScratch scratch;
    return scratch;
  }
};

template <class T>
void scores_jvp_rows(ffi::ThreadPool& pool, int64_t rows, int32_t n, bool kl, const T* r, const int32_t* block,
                     const T* v, T* out) {
  parallel_rows(pool, rows, n, [&](int64_t row) {
    const int64_t o = row * n;
    auto& s = JvpScratch::local();
    s.reserve(n);
    scores_jvp_row(n, kl, r + o, block + o, v + o, s.sums.data(), out + o);
  });
}

template <class T>
void sort_jvp_rows(ffi::ThreadPool& pool, int64_t rows, int32_t n, bool kl, bool transpose, const T* x,
                   const int32_t* block_in, const int32_t* block_out, const T* v, T* out) {
  parallel_rows(pool, rows, n, [&](int64_t row) {
    const int64_t o = row * n;
    auto& s = JvpScratch::local();
    s.reserve(n);
    sort_jvp_row(n, kl, transpose, x + o, block_in + o, block_out + o, v + o, s.sums.data(), s.weight.data(),
                 out + o);
  });
}

ffi::Error PavScoresImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer epsilon, bool kl, int64_t topk,
                         ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::S32>> block) {
  int64_t rows = 0;
  int32_t n = 0;
  if (auto error = row_shape(x, &rows, &n); error.failure()) return error;
  if (auto error = check_topk(topk, n); error.failure()) return error;
  if (auto error = check_epsilon_operand(x, epsilon, rows); error.failure()) return error;
  int32_t* b = block->typed_data();
  switch (x.element_type()) {
    case ffi::F32:
      (kl ? scores_rows<float, KL> : scores_rows<float, L2>)(pool, rows, n, topk, x.typed_data<float>(),
                                                           epsilon.typed_data<float>(), out->typed_data<float>(), b);
      return ffi::Error::Success();
    case ffi::F64:
      (kl ? scores_rows<double, KL> : scores_rows<double, L2>)(pool, rows, n, topk, x.typed_data<double>(),
                                                             epsilon.typed_data<double>(),
                                                             out->typed_data<double>(), b);
      return ffi::Error::Success();
    default:
      return unsupported_dtype();
  }
}

ffi::Error PavSortImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer epsilon, bool kl,
                       ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::Buffer<ffi::S32>> block_in,
                       ffi::Result<ffi::Buffer<ffi::S32>> block_out) {
  int64_t rows = 0;
  int32_t n = 0;
  if (auto error = row_shape(x, &rows, &n); error.failure()) return error;
  if (auto error = check_epsilon_operand(x, epsilon, rows); error.failure()) return error;
  int32_t* bi = block_in->typed_data();
  int32_t* bo = block_out->typed_data();
  switch (x.element_type()) {
    case ffi::F32:
      (kl ? sort_rows<float, KL> : sort_rows<float, L2>)(pool, rows, n, x.typed_data<float>(),
                                                         epsilon.typed_data<float>(), out->typed_data<float>(), bi, bo);
      return ffi::Error::Success();
    case ffi::F64:
      (kl ? sort_rows<double, KL> : sort_rows<double, L2>)(pool, rows, n, x.typed_data<double>(),
                                                           epsilon.typed_data<double>(), out->typed_data<double>(),
                                                           bi, bo);
      return ffi::Error::Success();
    default:
      return unsupported_dtype();
  }
}

ffi::Error PavScoresJvpImpl(ffi::ThreadPool pool, ffi::AnyBuffer r, ffi::AnyBuffer block, ffi::AnyBuffer v, bool kl,
                            ffi::Result<ffi::AnyBuffer> out) {
  int64_t rows = 0;
  int32_t n = 0;
  if (auto error = row_shape(v, &rows, &n); error.failure()) return error;
  if (auto error = check_same_rows(v, {r}, {block}); error.failure()) return error;
  const int32_t* b = block.typed_data<int32_t>();
  switch (v.element_type()) {
    case ffi::F32:
      scores_jvp_rows<float>(pool, rows, n, kl, r.typed_data<float>(), b, v.typed_data<float>(),
                             out->typed_data<float>());
      return ffi::Error::Success();
    case ffi::F64:
      scores_jvp_rows<double>(pool, rows, n, kl, r.typed_data<double>(), b, v.typed_data<double>(),
                              out->typed_data<double>());
      return ffi::Error::Success();
    default:
      return unsupported_dtype();
  }
}

ffi::Error PavSortJvpImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer block_in, ffi::AnyBuffer block_out,
                          ffi::AnyBuffer v, bool kl, bool transpose, ffi::Result<ffi::AnyBuffer> out) {
  int64_t rows = 0;
  int32_t n = 0;
  if (auto error = row_shape(v, &rows, &n); error.failure()) return error;
  if (auto error = check_same_rows(v, {x}, {block_in, block_out}); error.failure()) return error;
  const int32_t* bi = block_in.typed_data<int32_t>();
  const int32_t* bo = block_out.typed_data<int32_t>();
  switch (v.element_type()) {
    case ffi::F32:
      sort_jvp_rows<float>(pool, rows, n, kl, transpose, x.typed_data<float>(), bi, bo, v.typed_data<float>(),
                           out->typed_data<float>());
      return ffi::Error::Success();
    case ffi::F64:
      sort_jvp_rows<double>(pool, rows, n, kl, transpose, x.typed_data<double>(), bi, bo, v.typed_data<double>(),
                            out->typed_data<double>());
      return ffi::Error::Success();
    default:
      return unsupported_dtype();
  }
}

}  // namespace
}  // namespace otsort

// The library is built with hidden visibility; only the handlers are exported.
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* OtsortPavScoresCpu(XLA_FFI_CallFrame*);
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* OtsortPavSortCpu(XLA_FFI_CallFrame*);
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* OtsortPavScoresJvpCpu(XLA_FFI_CallFrame*);
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* OtsortPavSortJvpCpu(XLA_FFI_CallFrame*);

XLA_FFI_DEFINE_HANDLER_SYMBOL(OtsortPavScoresCpu, otsort::PavScoresImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()          // x (sign applied), [..., n]
                                  .Arg<ffi::AnyBuffer>()          // epsilon of each row, [..., 1], x's dtype
                                  .Attr<bool>("kl")               // KL (true) or L2 (false) regularization
                                  .Attr<int64_t>("topk")          // target: 0 for rho = (n..1), k for k ones
                                  .Ret<ffi::AnyBuffer>()          // P(z, target), input order
                                  .Ret<ffi::Buffer<ffi::S32>>());  // block id of each element, input order

XLA_FFI_DEFINE_HANDLER_SYMBOL(OtsortPavSortCpu, otsort::PavSortImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()          // x (sign applied), [..., n]
                                  .Arg<ffi::AnyBuffer>()          // epsilon of each row, [..., 1], x's dtype
                                  .Attr<bool>("kl")               // KL (true) or L2 (false) regularization
                                  .Ret<ffi::AnyBuffer>()          // soft sort, decreasing order
                                  .Ret<ffi::Buffer<ffi::S32>>()   // block id of each input element
                                  .Ret<ffi::Buffer<ffi::S32>>());  // block id of each sorted position

XLA_FFI_DEFINE_HANDLER_SYMBOL(OtsortPavScoresJvpCpu, otsort::PavScoresJvpImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()          // r, the projection, input order, [..., n]
                                  .Arg<ffi::AnyBuffer>()          // block id of each element, int32 (the forward's)
                                  .Arg<ffi::AnyBuffer>()          // v, [..., n], r's dtype
                                  .Attr<bool>("kl")               // KL (true) or L2 (false) regularization
                                  .Ret<ffi::AnyBuffer>());        // J v = J^T v

XLA_FFI_DEFINE_HANDLER_SYMBOL(OtsortPavSortJvpCpu, otsort::PavSortJvpImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()          // x (sign applied), input order, [..., n]
                                  .Arg<ffi::AnyBuffer>()          // block id of each input element, int32
                                  .Arg<ffi::AnyBuffer>()          // block id of each sorted position, int32
                                  .Arg<ffi::AnyBuffer>()          // v: input order (A v) or sorted (A^T v)
                                  .Attr<bool>("kl")               // KL (true) or L2 (false) regularization
                                  .Attr<bool>("transpose")        // A^T v instead of A v
                                  .Ret<ffi::AnyBuffer>());        // sorted order (A v) or input order (A^T v)
