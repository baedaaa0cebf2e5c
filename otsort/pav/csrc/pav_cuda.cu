// XLA FFI handlers for CUDA GPUs: the interface and the results of pav_cpu.cc, on the same core (pav_core.h).
//
// One call enqueues, on XLA's stream:
//   1. keys     one thread per element: the value becomes an unsigned key whose ascending order is the value's
//               descending order (-0.0 and +0.0 share a key; NaNs and infinities go to the ends), and its
//               position in the row becomes the payload.
//   2. sort     cub::DeviceSegmentedSort::StableSortPairs, one segment per row. Stable, so ties keep input order,
//               exactly like the CPU radix sort; CUB sorts short rows within a warp or a block and long rows with
//               device-wide passes, so neither many short rows nor a few long ones leave the GPU idle.
//   3. values   one thread per element: the sorted keys become values again, in place.
//   4. PAV      one thread per row runs the core's project_scores_row / project_sort_row. PAV is a sequential
//               stack walk; the rows are the parallelism.
//   5. invalid  one thread per element: a row with a NaN or an infinity (its first or last sorted value is not
//               finite), or whose epsilon is not positive and finite, becomes NaN, with block ids 0..n-1, as on
//               the CPU.
// Temporary memory comes from XLA's scratch allocator (no cudaMalloc); the PAV stack reuses the sort's storage.
//
// The derivative handlers (J v for the scores, A v or A^T v for the sort) run the core's scores_jvp_row /
// sort_jvp_row, one thread per row, with per-row block sums in scratch memory.
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include <cub/device/device_segmented_sort.cuh>

#include "ffi_checks.h"
#include "pav_core.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace otsort {
namespace {

constexpr int kElementThreads = 256;
constexpr int kRowThreads = 128;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // kernels loop over the rest (grid-stride)
constexpr size_t kAlignment = 256;

// ---------------------------------------------------------------------------------------------------------
// Order-preserving keys, the mapping of cpu_sort.h written with CUDA's bit casts.

template <class T>
using Key = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;

__device__ inline uint32_t bits_of(float x) { return __float_as_uint(x); }
__device__ inline uint64_t bits_of(double x) { return static_cast<uint64_t>(__double_as_longlong(x)); }

template <class T>
__device__ inline Key<T> descending_key(T x) {
  using K = Key<T>;
  constexpr K sign = K{1} << (8 * sizeof(K) - 1);
  if (x == T(0)) x = T(0);  // -0.0 -> +0.0
  const K u = bits_of(x);
  const K ascending = (u & sign) ? ~u : (u | sign);
  return ~ascending;
}

// The bit pattern of the value whose key is `key`.
template <class K>
__device__ inline K value_bits_of_descending_key(K key) {
  constexpr K sign = K{1} << (8 * sizeof(K) - 1);
  const K ascending = ~key;
  return (ascending & sign) ? (ascending & ~sign) : ~ascending;
}

// Non-finite values sort to the ends of a row (+inf and NaNs with the sign bit clear first, the others last),
// so two reads decide whether the whole row is finite.
template <class T>
__device__ inline bool sorted_row_is_valid(int32_t n, const T* sorted, T epsilon) {
  return isfinite(sorted[0]) && isfinite(sorted[n - 1]) && valid_epsilon(epsilon);
}

__device__ inline int64_t first_index() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ inline int64_t grid_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// ---------------------------------------------------------------------------------------------------------
// Kernels.

__global__ void row_offsets_kernel(int64_t rows, int32_t n, int64_t* offsets) {
  for (int64_t r = first_index(); r <= rows; r += grid_stride()) offsets[r] = r * n;
}

template <class T>
__global__ void keys_kernel(int64_t total, int32_t n, const T* x, Key<T>* keys, int32_t* positions) {
  for (int64_t e = first_index(); e < total; e += grid_stride()) {
    keys[e] = descending_key(x[e]);
    positions[e] = static_cast<int32_t>(e % n);
  }
}

template <class K>
__global__ void keys_to_values_kernel(int64_t total, K* keys) {
  for (int64_t e = first_index(); e < total; e += grid_stride()) keys[e] = value_bits_of_descending_key(keys[e]);
}

template <class T, class Reg>
__global__ void scores_kernel(int64_t rows, int32_t n, int32_t topk, const T* sorted, const int32_t* perm,
                              const T* epsilon, int32_t* start, typename Reg::Stats* stats, T* out, int32_t* block) {
  for (int64_t r = first_index(); r < rows; r += grid_stride()) {
    const int64_t o = r * n;
    if (!sorted_row_is_valid(n, sorted + o, epsilon[r])) continue;
    project_scores_row<Reg>(n, sorted + o, perm + o, epsilon[r], Target{n, topk}, start + o, stats + o, out + o,
                            block + o);
  }
}

template <class T, class Reg>
__global__ void sort_kernel(int64_t rows, int32_t n, const T* sorted, const int32_t* perm, const T* epsilon,
                            int32_t* start, typename Reg::Stats* stats, T* out, int32_t* block_in,
                            int32_t* block_out) {
  for (int64_t r = first_index(); r < rows; r += grid_stride()) {
    const int64_t o = r * n;
    if (!sorted_row_is_valid(n, sorted + o, epsilon[r])) continue;
    project_sort_row<Reg>(n, sorted + o, perm + o, epsilon[r], start + o, stats + o, out + o, block_in + o,
                          block_out + o);
  }
}

// Rows with a NaN, an infinity or an invalid epsilon have no projection: NaN, each element its own block
// (block_b may be null).
template <class T>
__global__ void invalid_rows_kernel(int64_t total, int32_t n, const T* sorted, const T* epsilon, T* out,
                                    int32_t* block_a, int32_t* block_b) {
  for (int64_t e = first_index(); e < total; e += grid_stride()) {
    const int64_t r = e / n;
    if (sorted_row_is_valid(n, sorted + r * n, epsilon[r])) continue;
    const int32_t i = static_cast<int32_t>(e - r * n);
    out[e] = static_cast<T>(NAN);
    block_a[e] = i;
    if (block_b != nullptr) block_b[e] = i;
  }
}

template <class T>
__global__ void scores_jvp_kernel(int64_t rows, int32_t n, bool kl, const T* r, const int32_t* block, const T* v,
                                  BlockSums* sums, T* out) {
  for (int64_t row = first_index(); row < rows; row += grid_stride()) {
    const int64_t o = row * n;
    scores_jvp_row(n, kl, r + o, block + o, v + o, sums + o, out + o);
  }
}

template <class T>
__global__ void sort_jvp_kernel(int64_t rows, int32_t n, bool kl, bool transpose, const T* x, const int32_t* block_in,
                                const int32_t* block_out, const T* v, BlockSums* sums, double* weight, T* out) {
  for (int64_t row = first_index(); row < rows; row += grid_stride()) {
    const int64_t o = row * n;
    sort_jvp_row(n, kl, transpose, x + o, block_in + o, block_out + o, v + o, sums + o, weight + o, out + o);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Host side.

int blocks_for(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<int>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

ffi::Error cuda_error(const char* step, cudaError_t status) {
  return ffi::Error::Internal(std::string("otsort pav (CUDA): ") + step + " failed: " + cudaGetErrorString(status));
}

ffi::Error launch_status(const char* step) {
  const cudaError_t status = cudaGetLastError();
  return status == cudaSuccess ? ffi::Error::Success() : cuda_error(step, status);
}

ffi::Error allocate(ffi::ScratchAllocator& scratch, size_t bytes, void** data) {
  const auto memory = scratch.Allocate(bytes > 0 ? bytes : 1, kAlignment);
  if (!memory.has_value()) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      "otsort pav (CUDA): could not allocate " + std::to_string(bytes) + " bytes of scratch memory");
  }
  *data = *memory;
  return ffi::Error::Success();
}

size_t round_up(size_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

// The rows sorted in decreasing order, and the temporary memory the PAV stack may reuse.
template <class T>
struct SortedRows {
  const T* values;      // [rows, n]
  const int32_t* perm;  // [rows, n]: values[r, i] = x[r, perm[r, i]]
  void* workspace;
  size_t workspace_bytes;
};

// Sorts each row of x. keys_in and positions_in are caller memory of `total` elements that is free until
// the sort has run (the handlers lend their outputs); reuse_bytes is what the workspace must hold afterwards.
template <class T>
ffi::Error sort_rows(cudaStream_t stream, ffi::ScratchAllocator& scratch, int64_t rows, int32_t n, const T* x,
                     Key<T>* keys_in, int32_t* positions_in, size_t reuse_bytes, SortedRows<T>* sorted) {
  using K = Key<T>;
  const int64_t total = rows * n;
  const size_t offsets_bytes = round_up(sizeof(int64_t) * (rows + 1));
  const size_t keys_bytes = round_up(sizeof(K) * total);
  const size_t perm_bytes = round_up(sizeof(int32_t) * total);

  // Pointers are only needed for sizing; CUB does not touch them when asked for the temporary storage size.
  size_t sort_bytes = 0;
  K* keys_out = nullptr;
  int32_t* perm_out = nullptr;
  int64_t* offsets = nullptr;
  cudaError_t status = cub::DeviceSegmentedSort::StableSortPairs(nullptr, sort_bytes, keys_in, keys_out, positions_in,
                                                                 perm_out, total, rows, offsets, offsets + 1, stream);
  if (status != cudaSuccess) return cuda_error("sizing the segmented sort", status);
  const size_t workspace_bytes = round_up(sort_bytes > reuse_bytes ? sort_bytes : reuse_bytes);

  void* memory = nullptr;
  if (auto error = allocate(scratch, offsets_bytes + keys_bytes + perm_bytes + workspace_bytes, &memory);
      error.failure()) {
    return error;
  }
  char* bytes = static_cast<char*>(memory);
  offsets = reinterpret_cast<int64_t*>(bytes);
  keys_out = reinterpret_cast<K*>(bytes + offsets_bytes);
  perm_out = reinterpret_cast<int32_t*>(bytes + offsets_bytes + keys_bytes);
  void* workspace = bytes + offsets_bytes + keys_bytes + perm_bytes;

  row_offsets_kernel<<<blocks_for(rows + 1, kElementThreads), kElementThreads, 0, stream>>>(rows, n, offsets);
  keys_kernel<T><<<blocks_for(total, kElementThreads), kElementThreads, 0, stream>>>(total, n, x, keys_in,
                                                                                       positions_in);
  if (auto error = launch_status("building the sort keys"); error.failure()) return error;
  status = cub::DeviceSegmentedSort::StableSortPairs(workspace, sort_bytes, keys_in, keys_out, positions_in, perm_out,
                                                     total, rows, offsets, offsets + 1, stream);
  if (status != cudaSuccess) return cuda_error("the segmented sort", status);
  keys_to_values_kernel<K><<<blocks_for(total, kElementThreads), kElementThreads, 0, stream>>>(total, keys_out);
  if (auto error = launch_status("reading the sorted values"); error.failure()) return error;

  *sorted = {reinterpret_cast<const T*>(keys_out), perm_out, workspace, workspace_bytes};
  return ffi::Error::Success();
}

// The PAV stack of every row, carved out of the workspace: start [rows, n], then stats [rows, n].
template <class Reg>
size_t stack_bytes(int64_t total) {
  return round_up(sizeof(int32_t) * total) + sizeof(typename Reg::Stats) * total;
}

template <class Reg>
void split_stack(void* workspace, int64_t total, int32_t** start, typename Reg::Stats** stats) {
  *start = static_cast<int32_t*>(workspace);
  *stats = reinterpret_cast<typename Reg::Stats*>(static_cast<char*>(workspace) + round_up(sizeof(int32_t) * total));
}

// Sorts the rows and carves the PAV stack out of the sort's workspace. The handler's value and block outputs
// hold the sort keys and positions until the sort has read them.
template <class T, class Reg>
ffi::Error sort_with_stack(cudaStream_t stream, ffi::ScratchAllocator& scratch, int64_t rows, int32_t n, const T* x,
                           T* out, int32_t* block, SortedRows<T>* sorted, int32_t** start,
                           typename Reg::Stats** stats) {
  const int64_t total = rows * n;
  if (auto error = sort_rows<T>(stream, scratch, rows, n, x, reinterpret_cast<Key<T>*>(out), block,
                                stack_bytes<Reg>(total), sorted);
      error.failure()) {
    return error;
  }
  split_stack<Reg>(sorted->workspace, total, start, stats);
  return ffi::Error::Success();
}

template <class T, class Reg>
ffi::Error scores_rows(cudaStream_t stream, ffi::ScratchAllocator& scratch, int64_t rows, int32_t n, int32_t topk,
                       const T* x, const T* epsilon, T* out, int32_t* block) {
  const int64_t total = rows * n;
  SortedRows<T> sorted;
  int32_t* start = nullptr;
  typename Reg::Stats* stats = nullptr;
  if (auto error = sort_with_stack<T, Reg>(stream, scratch, rows, n, x, out, block, &sorted, &start, &stats);
      error.failure()) {
    return error;
  }
  scores_kernel<T, Reg><<<blocks_for(rows, kRowThreads), kRowThreads, 0, stream>>>(
      rows, n, topk, sorted.values, sorted.perm, epsilon, start, stats, out, block);
  invalid_rows_kernel<T><<<blocks_for(total, kElementThreads), kElementThreads, 0, stream>>>(
      total, n, sorted.values, epsilon, out, block, nullptr);
  return launch_status("the PAV scores kernel");
}

template <class T, class Reg>
ffi::Error sort_rows_soft(cudaStream_t stream, ffi::ScratchAllocator& scratch, int64_t rows, int32_t n,
                          const T* x, const T* epsilon, T* out, int32_t* block_in, int32_t* block_out) {
  const int64_t total = rows * n;
  SortedRows<T> sorted;
  int32_t* start = nullptr;
  typename Reg::Stats* stats = nullptr;
  if (auto error = sort_with_stack<T, Reg>(stream, scratch, rows, n, x, out, block_in, &sorted, &start, &stats);
      error.failure()) {
    return error;
  }
  sort_kernel<T, Reg><<<blocks_for(rows, kRowThreads), kRowThreads, 0, stream>>>(
      rows, n, sorted.values, sorted.perm, epsilon, start, stats, out, block_in, block_out);
  invalid_rows_kernel<T><<<blocks_for(total, kElementThreads), kElementThreads, 0, stream>>>(
      total, n, sorted.values, epsilon, out, block_in, block_out);
  return launch_status("the PAV sort kernel");
}

// Scratch of the derivative kernels: block sums, then (sort only) weights, one of each per element.
ffi::Error jvp_scratch(ffi::ScratchAllocator& scratch, int64_t total, BlockSums** sums, double** weight) {
  const size_t sums_bytes = round_up(sizeof(BlockSums) * total);
  void* memory = nullptr;
  if (auto error = allocate(scratch, sums_bytes + sizeof(double) * total, &memory); error.failure()) return error;
  *sums = static_cast<BlockSums*>(memory);
  *weight = reinterpret_cast<double*>(static_cast<char*>(memory) + sums_bytes);
  return ffi::Error::Success();
}

template <class T>
ffi::Error scores_jvp_rows(cudaStream_t stream, ffi::ScratchAllocator& scratch, int64_t rows, int32_t n, bool kl,
                           const T* r, const int32_t* block, const T* v, T* out) {
  BlockSums* sums = nullptr;
  double* weight = nullptr;
  if (auto error = jvp_scratch(scratch, rows * n, &sums, &weight); error.failure()) return error;
  scores_jvp_kernel<T><<<blocks_for(rows, kRowThreads), kRowThreads, 0, stream>>>(rows, n, kl, r, block, v, sums, out);
  return launch_status("the PAV scores derivative kernel");
}

template <class T>
ffi::Error sort_jvp_rows(cudaStream_t stream, ffi::ScratchAllocator& scratch, int64_t rows, int32_t n, bool kl,
                         bool transpose, const T* x, const int32_t* block_in, const int32_t* block_out, const T* v,
                         T* out) {
  BlockSums* sums = nullptr;
  double* weight = nullptr;
  if (auto error = jvp_scratch(scratch, rows * n, &sums, &weight); error.failure()) return error;
  sort_jvp_kernel<T><<<blocks_for(rows, kRowThreads), kRowThreads, 0, stream>>>(rows, n, kl, transpose, x, block_in,
                                                                                 block_out, v, sums, weight, out);
  return launch_status("the PAV sort derivative kernel");
}

ffi::Error PavScoresCudaImpl(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer x,
                             ffi::AnyBuffer epsilon, bool kl, int64_t topk, ffi::Result<ffi::AnyBuffer> out,
                             ffi::Result<ffi::Buffer<ffi::S32>> block) {
  int64_t rows = 0;
  int32_t n = 0;
  if (auto error = row_shape(x, &rows, &n); error.failure()) return error;
  if (auto error = check_topk(topk, n); error.failure()) return error;
  if (auto error = check_epsilon_operand(x, epsilon, rows); error.failure()) return error;
  if (rows == 0) return ffi::Error::Success();
  const int32_t k = static_cast<int32_t>(topk);
  int32_t* b = block->typed_data();
  switch (x.element_type()) {
    case ffi::F32:
      return (kl ? scores_rows<float, KL> : scores_rows<float, L2>)(
          stream, scratch, rows, n, k, x.typed_data<float>(), epsilon.typed_data<float>(), out->typed_data<float>(), b);
    case ffi::F64:
      return (kl ? scores_rows<double, KL> : scores_rows<double, L2>)(stream, scratch, rows, n, k,
                                                                      x.typed_data<double>(),
                                                                      epsilon.typed_data<double>(),
                                                                      out->typed_data<double>(), b);
    default:
      return unsupported_dtype();
  }
}

ffi::Error PavSortCudaImpl(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer x,
                           ffi::AnyBuffer epsilon, bool kl, ffi::Result<ffi::AnyBuffer> out,
                           ffi::Result<ffi::Buffer<ffi::S32>> block_in, ffi::Result<ffi::Buffer<ffi::S32>> block_out) {
  int64_t rows = 0;
  int32_t n = 0;
  if (auto error = row_shape(x, &rows, &n); error.failure()) return error;
  if (auto error = check_epsilon_operand(x, epsilon, rows); error.failure()) return error;
  if (rows == 0) return ffi::Error::Success();
  int32_t* bi = block_in->typed_data();
  int32_t* bo = block_out->typed_data();
  switch (x.element_type()) {
    case ffi::F32:
      return (kl ? sort_rows_soft<float, KL> : sort_rows_soft<float, L2>)(
          stream, scratch, rows, n, x.typed_data<float>(), epsilon.typed_data<float>(), out->typed_data<float>(), bi,
          bo);
    case ffi::F64:
      return (kl ? sort_rows_soft<double, KL> : sort_rows_soft<double, L2>)(
          stream, scratch, rows, n, x.typed_data<double>(), epsilon.typed_data<double>(), out->typed_data<double>(),
          bi, bo);
    default:
      return unsupported_dtype();
  }
}

ffi::Error PavScoresJvpCudaImpl(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer r,
                                ffi::AnyBuffer block, ffi::AnyBuffer v, bool kl, ffi::Result<ffi::AnyBuffer> out) {
  int64_t rows = 0;
  int32_t n = 0;
  if (auto error = row_shape(v, &rows, &n); error.failure()) return error;
  if (auto error = check_same_rows(v, {r}, {block}); error.failure()) return error;
  if (rows == 0) return ffi::Error::Success();
  const int32_t* b = block.typed_data<int32_t>();
  switch (v.element_type()) {
    case ffi::F32:
      return scores_jvp_rows<float>(stream, scratch, rows, n, kl, r.typed_data<float>(), b, v.typed_data<float>(),
                                    out->typed_data<float>());
    case ffi::F64:
      return scores_jvp_rows<double>(stream, scratch, rows, n, kl, r.typed_data<double>(), b,
                                     v.typed_data<double>(), out->typed_data<double>());
    default:
      return unsupported_dtype();
  }
}

ffi::Error PavSortJvpCudaImpl(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer x,
                              ffi::AnyBuffer block_in, ffi::AnyBuffer block_out, ffi::AnyBuffer v, bool kl,
                              bool transpose, ffi::Result<ffi::AnyBuffer> out) {
  int64_t rows = 0;
  int32_t n = 0;
  if (auto error = row_shape(v, &rows, &n); error.failure()) return error;
  if (auto error = check_same_rows(v, {x}, {block_in, block_out}); error.failure()) return error;
  if (rows == 0) return ffi::Error::Success();
  const int32_t* bi = block_in.typed_data<int32_t>();
  const int32_t* bo = block_out.typed_data<int32_t>();
  switch (v.element_type()) {
    case ffi::F32:
      return sort_jvp_rows<float>(stream, scratch, rows, n, kl, transpose, x.typed_data<float>(), bi, bo,
                                  v.typed_data<float>(), out->typed_data<float>());
    case ffi::F64:
      return sort_jvp_rows<double>(stream, scratch, rows, n, kl, transpose, x.typed_data<double>(), bi, bo,
                                   v.typed_data<double>(), out->typed_data<double>());
    default:
      return unsupported_dtype();
  }
}

}  // namespace
}  // namespace otsort

// The library is built with hidden visibility; only the handlers are exported.
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* OtsortPavScoresCuda(XLA_FFI_CallFrame*);
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* OtsortPavSortCuda(XLA_FFI_CallFrame*);
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* OtsortPavScoresJvpCuda(XLA_FFI_CallFrame*);
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* OtsortPavSortJvpCuda(XLA_FFI_CallFrame*);

XLA_FFI_DEFINE_HANDLER_SYMBOL(OtsortPavScoresCuda, otsort::PavScoresCudaImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()  // XLA's stream: every launch goes here
                                  .Ctx<ffi::ScratchAllocator>()            // temporary device memory
                                  .Arg<ffi::AnyBuffer>()          // x (sign applied), [..., n]
                                  .Arg<ffi::AnyBuffer>()          // epsilon of each row, [..., 1], x's dtype
                                  .Attr<bool>("kl")               // KL (true) or L2 (false) regularization
                                  .Attr<int64_t>("topk")          // target: 0 for rho = (n..1), k for k ones
                                  .Ret<ffi::AnyBuffer>()          // P(z, target), input order
                                  .Ret<ffi::Buffer<ffi::S32>>());  // block id of each element, input order

XLA_FFI_DEFINE_HANDLER_SYMBOL(OtsortPavSortCuda, otsort::PavSortCudaImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()  // XLA's stream: every launch goes here
                                  .Ctx<ffi::ScratchAllocator>()            // temporary device memory
                                  .Arg<ffi::AnyBuffer>()          // x (sign applied), [..., n]
                                  .Arg<ffi::AnyBuffer>()          // epsilon of each row, [..., 1], x's dtype
                                  .Attr<bool>("kl")               // KL (true) or L2 (false) regularization
                                  .Ret<ffi::AnyBuffer>()          // soft sort, decreasing order
                                  .Ret<ffi::Buffer<ffi::S32>>()   // block id of each input element
                                  .Ret<ffi::Buffer<ffi::S32>>());  // block id of each sorted position

XLA_FFI_DEFINE_HANDLER_SYMBOL(OtsortPavScoresJvpCuda, otsort::PavScoresJvpCudaImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()  // XLA's stream: every launch goes here
                                  .Ctx<ffi::ScratchAllocator>()            // temporary device memory
                                  .Arg<ffi::AnyBuffer>()          // r, the projection, input order, [..., n]
                                  .Arg<ffi::AnyBuffer>()          // block id of each element, int32 (the forward's)
                                  .Arg<ffi::AnyBuffer>()          // v, [..., n], r's dtype
                                  .Attr<bool>("kl")               // KL (true) or L2 (false) regularization
                                  .Ret<ffi::AnyBuffer>());        // J v = J^T v

XLA_FFI_DEFINE_HANDLER_SYMBOL(OtsortPavSortJvpCuda, otsort::PavSortJvpCudaImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()  // XLA's stream: every launch goes here
                                  .Ctx<ffi::ScratchAllocator>()            // temporary device memory
                                  .Arg<ffi::AnyBuffer>()          // x (sign applied), input order, [..., n]
                                  .Arg<ffi::AnyBuffer>()          // block id of each input element, int32
                                  .Arg<ffi::AnyBuffer>()          // block id of each sorted position, int32
                                  .Arg<ffi::AnyBuffer>()          // v: input order (A v) or sorted (A^T v)
                                  .Attr<bool>("kl")               // KL (true) or L2 (false) regularization
                                  .Attr<bool>("transpose")        // A^T v instead of A v
                                  .Ret<ffi::AnyBuffer>());        // sorted order (A v) or input order (A^T v)
