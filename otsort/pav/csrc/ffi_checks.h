// Argument checks shared by the CPU and the CUDA handlers, so both refuse the same inputs with the same words.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "xla/ffi/api/ffi.h"

namespace otsort {

// Splits [..., n] into rows; rejects rows the int32 block ids cannot index.
inline xla::ffi::Error row_shape(xla::ffi::AnyBuffer x, int64_t* rows, int32_t* n) {
  const auto dims = x.dimensions();
  if (dims.size() == 0) {
    return xla::ffi::Error::InvalidArgument("otsort pav: the input must have at least one dimension");
  }
  const int64_t last = dims.back();
  if (last > INT32_MAX) {
    return xla::ffi::Error::InvalidArgument("otsort pav: rows longer than 2^31 - 1 are not supported");
  }
  *n = static_cast<int32_t>(last);
  *rows = last == 0 ? 0 : static_cast<int64_t>(x.element_count()) / last;
  return xla::ffi::Error::Success();
}

inline xla::ffi::Error check_topk(int64_t topk, int32_t n) {
  if (topk < 0 || topk > n) return xla::ffi::Error::InvalidArgument("otsort pav: topk must be in [0, n]");
  return xla::ffi::Error::Success();
}

// epsilon holds one value per row of x, in x's dtype. Its values are not checked here: a row whose epsilon is
// not positive and finite comes out NaN (a traced epsilon cannot be checked before the call).
inline xla::ffi::Error check_epsilon_operand(xla::ffi::AnyBuffer x, xla::ffi::AnyBuffer epsilon, int64_t rows) {
  if (epsilon.element_type() != x.element_type() ||
      (rows != 0 && static_cast<int64_t>(epsilon.element_count()) != rows)) {
    return xla::ffi::Error::InvalidArgument("otsort pav: epsilon must hold one value per row, in x's dtype");
  }
  return xla::ffi::Error::Success();
}

// The derivative kernels take operands shaped like the tangent v: floats in v's dtype, block ids int32.
inline xla::ffi::Error check_same_rows(xla::ffi::AnyBuffer v, std::initializer_list<xla::ffi::AnyBuffer> floats,
                                       std::initializer_list<xla::ffi::AnyBuffer> ids) {
  auto same_shape = [&](const xla::ffi::AnyBuffer& other) {
    const auto a = v.dimensions();
    const auto b = other.dimensions();
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
  };
  bool ok = true;
  for (const auto& f : floats) ok = ok && same_shape(f) && f.element_type() == v.element_type();
  for (const auto& i : ids) ok = ok && same_shape(i) && i.element_type() == xla::ffi::S32;
  if (!ok) {
    return xla::ffi::Error::InvalidArgument(
        "otsort pav: derivative operands must have the tangent's shape, in its dtype (block ids in int32)");
  }
  return xla::ffi::Error::Success();
}

inline xla::ffi::Error unsupported_dtype() {
  return xla::ffi::Error::InvalidArgument("otsort pav: only float32 and float64 inputs are supported");
}

}  // namespace otsort
