// XLA FFI handlers for the CPU: sort each row, run the shared PAV core, write the projection.
// Rows run in parallel on XLA's intra-op thread pool.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cpu_sort.h"
#include "ffi_checks.h"
#include "pav_core.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace otsort {
namespace {

// Scratch memory of the kernels, shared by every handler and thread. A block comes from malloc and is never
// cleared, so only the pages a kernel writes become resident: a PAV stack costs its depth, not its capacity.
// After a call, blocks of up to kMaxCachedBytes in all stay cached, so the next call (a forward or a derivative,
// on whichever thread XLA runs it) reuses them without page faults: about 0.6 ms per MB on the benchmark
// machine, 25 ms for the 40 MB of a row of 10^6 (the kernel's own time) and 0.25 s for a row of 10^7, where
// freeing the block after each call made fwd+bwd 1.4-1.5x slower. A block beyond the cap is freed when its call
// ends. What stays is one block per thread that ran rows at the same time, of which at most 40 bytes per element
// of the largest row were ever written.
class ScratchCache {
 public:
  static constexpr size_t kMaxCachedBytes = size_t{1} << 30;

  struct Block {
    char* data = nullptr;
    size_t bytes = 0;
  };

  static ScratchCache& instance() {
    static ScratchCache* cache = new ScratchCache;  // never destroyed: a pool thread may give a block back at exit
    return *cache;
  }

  // The smallest cached block of at least `bytes`, or a new one. Cached blocks too small for it are freed first:
  // a kernel that needs more than the last one does not keep both resident.
  Block take(size_t bytes) {
    std::vector<Block> too_small;
    Block found;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      size_t best = blocks_.size();
      for (size_t i = 0; i < blocks_.size(); ++i) {
        if (blocks_[i].bytes >= bytes && (best == blocks_.size() || blocks_[i].bytes < blocks_[best].bytes)) best = i;
      }
      if (best < blocks_.size()) {
        found = blocks_[best];
        blocks_.erase(blocks_.begin() + best);
        cached_ -= found.bytes;
      } else {
        too_small.swap(blocks_);
        cached_ = 0;
      }
    }
    for (const Block& block : too_small) std::free(block.data);
    if (found.data == nullptr) found = {static_cast<char*>(std::malloc(bytes)), bytes};
    return found;
  }

  void give(Block block) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ + block.bytes <= kMaxCachedBytes) {
        blocks_.push_back(block);
        cached_ += block.bytes;
        return;
      }
    }
    std::free(block.data);
  }

 private:
  std::mutex mutex_;
  std::vector<Block> blocks_;
  size_t cached_ = 0;
};

// One thread's block, taken on first use and given back by release() or at the end of its scope.
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { release(); }

  // At least `bytes` of uninitialised memory, aligned for any type; null when bytes is 0 or malloc failed.
  char* get(size_t bytes) {
    if (bytes == 0) return nullptr;
    if (block_.bytes < bytes) {
      release();
      block_ = ScratchCache::instance().take(bytes);
      if (block_.data == nullptr) block_.bytes = 0;
    }
    return block_.data;
  }

  void release() {
    if (block_.data != nullptr) ScratchCache::instance().give(block_);
    block_ = {};
  }

 private:
  ScratchCache::Block block_;
};

// Carves arrays out of one scratch block, each aligned to 16 bytes; with a null base it only counts the bytes.
class Carve {
 public:
  explicit Carve(char* base) : base_(base) {}
  template <class U>
  U* take(int64_t count) {
    static_assert(alignof(U) <= kAlign, "scratch arrays are aligned to 16 bytes");
    U* array = base_ == nullptr ? nullptr : reinterpret_cast<U*>(base_ + bytes_);
    bytes_ += (sizeof(U) * static_cast<size_t>(count) + kAlign - 1) / kAlign * kAlign;
    return array;
  }
  size_t bytes() const { return bytes_; }

 private:
  static constexpr size_t kAlign = 16;
  char* base_;
  size_t bytes_ = 0;
};

// Runs body(row, scratch) for every row, on the calling thread and on the pool; `scratch` is a block of
// scratch_bytes of the running thread, reused for all its rows. Returns false, with the rows of the chunks that
// found no memory not run, when a block could not be allocated. The caller takes chunks too and only waits for
// chunks that a running thread has claimed, so a busy (or absent) pool cannot deadlock it, and a helper that
// starts after the call returned finds no chunk left and touches nothing.
template <class Body>
[[nodiscard]] bool parallel_rows(ffi::ThreadPool& pool, int64_t rows, int64_t n, size_t scratch_bytes,
                                 const Body& body) {
  constexpr int64_t kElementsPerChunk = 1 << 14;
  const int64_t rows_per_chunk = std::max<int64_t>(1, kElementsPerChunk / std::max<int64_t>(n, 1));
  const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;

  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::atomic<bool> out_of_memory{false};
    std::mutex mutex;
    std::condition_variable finished;
  };
  auto state = std::make_shared<State>();
  auto work = [state, chunks, rows, rows_per_chunk, scratch_bytes, &body] {
    Scratch scratch;
    int64_t c;
    while ((c = state->next.fetch_add(1)) < chunks) {
      char* s = scratch.get(scratch_bytes);
      if (s == nullptr && scratch_bytes > 0) {
        state->out_of_memory = true;
      } else {
        const int64_t end = std::min(rows, (c + 1) * rows_per_chunk);
        for (int64_t r = c * rows_per_chunk; r < end; ++r) body(r, s);
      }
      // No chunk left to claim: give the block back before the caller can return, so that the next kernel
      // (the derivative after the forward) finds it cached.
      if (state->next.load() >= chunks) scratch.release();
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
  return !state->out_of_memory.load();
}

// Runs f(task) for task in [0, count) on the calling thread and on the pool, by the protocol of parallel_rows (one
// task per claim, no scratch): safe to call from a row that itself runs on the pool.
template <class F>
void parallel_tasks(ffi::ThreadPool& pool, int64_t count, const F& f) {
  constexpr int64_t kOneTaskPerClaim = int64_t{1} << 30;  // a "row length" that makes parallel_rows claim one at a time
  const bool done = parallel_rows(pool, count, kOneTaskPerClaim, 0, [&](int64_t task, char*) { f(task); });
  (void)done;  // no scratch is asked for, so none can be missing
}

// A row of at least this many elements is pooled by chunks in parallel (pav_core.h, Within-row parallel PAV) when
// the rows alone leave threads of the pool idle. Below it, a row's PAV takes well under a millisecond and the
// scheduling would cost a noticeable part of it. The environment variable OTSORT_PAV_CHUNK_MIN, read once when the
// library is loaded, overrides it (0 or a negative value: never chunk), for benchmarks and tests.
constexpr int64_t kDefaultChunkMin = int64_t{1} << 16;
// Chunks are at least this long, so that the sequential joins (O(chunks + blocks popped)) stay small.
constexpr int32_t kMinChunkLen = 1 << 13;
// Chunks per worker of a row: a few, so that a worker done early takes another instead of idling.
constexpr int64_t kChunksPerWorker = 4;

int64_t chunk_min_from_environment() {
  const char* text = std::getenv("OTSORT_PAV_CHUNK_MIN");
  if (text == nullptr || *text == '\0') return kDefaultChunkMin;
  const long long value = std::strtoll(text, nullptr, 10);
  return value > 0 ? value : std::numeric_limits<int64_t>::max();
}

const int64_t kChunkMin = chunk_min_from_environment();

// The chunk length for a row of n among `rows`, or 0 to run the sequential walk.
int32_t chunk_length(const ffi::ThreadPool& pool, int64_t rows, int32_t n) {
  const int64_t workers = static_cast<int64_t>(pool.num_threads()) + 1;  // the pool and the calling thread
  if (n < kChunkMin || rows >= workers) return 0;
  const int64_t workers_per_row = (workers + rows - 1) / rows;
  const int64_t chunks = workers_per_row * kChunksPerWorker;
  return static_cast<int32_t>(std::max<int64_t>(kMinChunkLen, (n + chunks - 1) / chunks));
}

ffi::Error out_of_memory(size_t bytes_per_thread) {
  return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                    "otsort PAV kernel: could not allocate " + std::to_string(bytes_per_thread) + " bytes of scratch");
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

// Scratch layouts, bytes per element for float32 (the radix sort's arrays overlap the PAV stack, dead by then):
//   sort:    perm 4 + start 4 + stats (L2 24, KL 32) = 32 / 40; the sorted values live in the output.
//   scores:  perm 4 + sorted 4 + start 4 + stats 24 (L2, and KL, which runs as KLScores: 24 of its 32 bytes per
//            entry are written) = 36 touched.
//   derivatives: sums 32 (+ weight 8 for the sort) = 32 / 40.
// The stack (start, stats) is written only as deep as it grows; a shallow one leaves its pages untouched.

// The sort: `out` first holds the keys, then the sorted values, then the projection. project_sort_row reads
// sorted[i] in its pooling pass only (b(i)) and writes out[i] after, so the two may be one array.
template <class T, class Reg>
struct SortRowScratch {
  int32_t* perm;
  int32_t* start;
  typename Reg::Stats* stats;
  size_t bytes;
  SortRowScratch(char* base, int32_t n) {
    Carve carve(base);
    perm = carve.take<int32_t>(n);
    start = carve.take<int32_t>(n);
    stats = carve.take<typename Reg::Stats>(n);
    bytes = carve.bytes();
  }
  // The radix sort's second key array and second permutation, in the stack's memory.
  KeyOf<T>* keys_tmp() const {
    static_assert(sizeof(KeyOf<T>) <= sizeof(typename Reg::Stats), "the keys must fit in the stack");
    return reinterpret_cast<KeyOf<T>*>(stats);
  }
  int32_t* perm_tmp() const { return start; }
};

// The scores: out is in input order and written through the permutation while the sorted row is still read,
// so the sorted row has its own array (where the keys are sorted and decoded in place).
template <class T, class Reg>
struct ScoresRowScratch {
  int32_t* perm;
  T* sorted;
  int32_t* start;
  typename Reg::Stats* stats;
  size_t bytes;
  ScoresRowScratch(char* base, int32_t n) {
    Carve carve(base);
    perm = carve.take<int32_t>(n);
    sorted = carve.take<T>(n);
    start = carve.take<int32_t>(n);
    stats = carve.take<typename Reg::Stats>(n);
    bytes = carve.bytes();
  }
  KeyOf<T>* keys() const { return reinterpret_cast<KeyOf<T>*>(sorted); }
  KeyOf<T>* keys_tmp() const {
    static_assert(sizeof(KeyOf<T>) <= sizeof(typename Reg::Stats), "the keys must fit in the stack");
    return reinterpret_cast<KeyOf<T>*>(stats);
  }
  int32_t* perm_tmp() const { return start; }
};

template <class T, class Reg>
ffi::Error scores_rows(ffi::ThreadPool& pool, int64_t rows, int32_t n, int32_t topk, const T* x, const T* epsilon,
                       T* out, int32_t* block) {
  using Layout = ScoresRowScratch<T, Reg>;
  const size_t bytes = Layout(nullptr, n).bytes;
  // Each chunk's stack is the slice of the row's stack at its offset: no scratch beyond the segments.
  const int32_t chunk_len = chunk_length(pool, rows, n);
  auto for_each_chunk = [&pool](int32_t count, const auto& f) { parallel_tasks(pool, count, f); };
  const bool done = parallel_rows(pool, rows, n, bytes, [&](int64_t r, char* scratch) {
    const T* xr = x + r * n;
    T* out_r = out + r * n;
    int32_t* block_r = block + r * n;
    if (!all_finite(n, xr) || !valid_epsilon(epsilon[r])) {
      return fill_invalid_row(n, out_r, block_r, static_cast<int32_t*>(nullptr));
    }
    const Layout s(scratch, n);
    sort_descending(n, xr, s.sorted, s.perm, s.keys(), s.keys_tmp(), s.perm_tmp());
    if (chunk_len == 0) {
      return project_scores_row<Reg>(n, s.sorted, s.perm, epsilon[r], Target{n, topk}, s.start, s.stats, out_r,
                                     block_r);
    }
    std::vector<StackSegment> segments(num_chunks(n, chunk_len));
    project_scores_row_chunked<Reg>(n, s.sorted, s.perm, epsilon[r], Target{n, topk}, chunk_len, s.start, s.stats,
                                    segments.data(), for_each_chunk, out_r, block_r);
  });
  return done ? ffi::Error::Success() : out_of_memory(bytes);
}

template <class T, class Reg>
ffi::Error sort_rows(ffi::ThreadPool& pool, int64_t rows, int32_t n, const T* x, const T* epsilon, T* out,
                     int32_t* block_in, int32_t* block_out) {
  using Layout = SortRowScratch<T, Reg>;
  const size_t bytes = Layout(nullptr, n).bytes;
  // Each chunk's stack is the slice of the row's stack at its offset: no scratch beyond the segments.
  const int32_t chunk_len = chunk_length(pool, rows, n);
  auto for_each_chunk = [&pool](int32_t count, const auto& f) { parallel_tasks(pool, count, f); };
  const bool done = parallel_rows(pool, rows, n, bytes, [&](int64_t r, char* scratch) {
    const T* xr = x + r * n;
    T* out_r = out + r * n;
    int32_t* in_r = block_in + r * n;
    int32_t* out_block_r = block_out + r * n;
    if (!all_finite(n, xr) || !valid_epsilon(epsilon[r])) return fill_invalid_row(n, out_r, in_r, out_block_r);
    const Layout s(scratch, n);
    sort_descending(n, xr, out_r, s.perm, reinterpret_cast<KeyOf<T>*>(out_r), s.keys_tmp(), s.perm_tmp());
    if (chunk_len == 0) {
      return project_sort_row<Reg>(n, out_r, s.perm, epsilon[r], s.start, s.stats, out_r, in_r, out_block_r);
    }
    std::vector<StackSegment> segments(num_chunks(n, chunk_len));
    project_sort_row_chunked<Reg>(n, out_r, s.perm, epsilon[r], chunk_len, s.start, s.stats, segments.data(),
                                  for_each_chunk, out_r, in_r, out_block_r);
  });
  return done ? ffi::Error::Success() : out_of_memory(bytes);
}

// The derivative kernels' scratch: block sums indexed by block id, and the sort's per-element weights.
struct JvpRowScratch {
  BlockSums* sums;
  double* weight;
  size_t bytes;
  JvpRowScratch(char* base, int32_t n, bool with_weight) {
    Carve carve(base);
    sums = carve.take<BlockSums>(n);
    weight = with_weight ? carve.take<double>(n) : nullptr;
    bytes = carve.bytes();
  }
};

template <class T>
ffi::Error scores_jvp_rows(ffi::ThreadPool& pool, int64_t rows, int32_t n, bool kl, const T* r,
                           const int32_t* block, const T* v, T* out) {
  const size_t bytes = JvpRowScratch(nullptr, n, false).bytes;
  const bool done = parallel_rows(pool, rows, n, bytes, [&](int64_t row, char* scratch) {
    const int64_t o = row * n;
    const JvpRowScratch s(scratch, n, false);
    scores_jvp_row(n, kl, r + o, block + o, v + o, s.sums, out + o);
  });
  return done ? ffi::Error::Success() : out_of_memory(bytes);
}

template <class T>
ffi::Error sort_jvp_rows(ffi::ThreadPool& pool, int64_t rows, int32_t n, bool kl, bool transpose, const T* x,
                         const int32_t* block_in, const int32_t* block_out, const T* v, T* out) {
  const size_t bytes = JvpRowScratch(nullptr, n, true).bytes;
  const bool done = parallel_rows(pool, rows, n, bytes, [&](int64_t row, char* scratch) {
    const int64_t o = row * n;
    const JvpRowScratch s(scratch, n, true);
    sort_jvp_row(n, kl, transpose, x + o, block_in + o, block_out + o, v + o, s.sums, s.weight, out + o);
  });
  return done ? ffi::Error::Success() : out_of_memory(bytes);
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
      return (kl ? scores_rows<float, KL> : scores_rows<float, L2>)(
          pool, rows, n, topk, x.typed_data<float>(), epsilon.typed_data<float>(), out->typed_data<float>(), b);
    case ffi::F64:
      return (kl ? scores_rows<double, KL> : scores_rows<double, L2>)(
          pool, rows, n, topk, x.typed_data<double>(), epsilon.typed_data<double>(), out->typed_data<double>(), b);
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
      return (kl ? sort_rows<float, KL> : sort_rows<float, L2>)(
          pool, rows, n, x.typed_data<float>(), epsilon.typed_data<float>(), out->typed_data<float>(), bi, bo);
    case ffi::F64:
      return (kl ? sort_rows<double, KL> : sort_rows<double, L2>)(
          pool, rows, n, x.typed_data<double>(), epsilon.typed_data<double>(), out->typed_data<double>(), bi, bo);
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
      return scores_jvp_rows<float>(pool, rows, n, kl, r.typed_data<float>(), b, v.typed_data<float>(),
                                    out->typed_data<float>());
    case ffi::F64:
      return scores_jvp_rows<double>(pool, rows, n, kl, r.typed_data<double>(), b, v.typed_data<double>(),
                                     out->typed_data<double>());
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
      return sort_jvp_rows<float>(pool, rows, n, kl, transpose, x.typed_data<float>(), bi, bo,
                                  v.typed_data<float>(), out->typed_data<float>());
    case ffi::F64:
      return sort_jvp_rows<double>(pool, rows, n, kl, transpose, x.typed_data<double>(), bi, bo,
                                   v.typed_data<double>(), out->typed_data<double>());
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
