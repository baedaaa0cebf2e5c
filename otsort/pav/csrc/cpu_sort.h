// Stable descending sort of one row of floats with its permutation, for the CPU handler.
//
// XLA's CPU sort is a comparison sort through a generic comparator and is slow; a least-significant-digit
// radix sort on order-preserving integer keys is O(n) and stable, so ties keep input order exactly like a
// stable argsort of -x (the order the pure-JAX implementation uses).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace otsort {

template <class T>
using KeyOf = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;

// Maps a finite float to an unsigned key whose ascending order is the float's DESCENDING order.
// -0.0 and +0.0 map to the same key, as they compare equal.
template <class T>
inline KeyOf<T> descending_key(T x) {
  using K = KeyOf<T>;
  constexpr K sign = K{1} << (8 * sizeof(K) - 1);
  if (x == T(0)) x = T(0);
  K u;
  std::memcpy(&u, &x, sizeof(u));
  const K ascending = (u & sign) ? ~u : (u | sign);
  return ~ascending;
}

template <class T>
inline T value_of_descending_key(KeyOf<T> key) {
  using K = KeyOf<T>;
  constexpr K sign = K{1} << (8 * sizeof(K) - 1);
  const K ascending = ~key;
  const K u = (ascending & sign) ? (ascending & ~sign) : ~ascending;
  T x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}

// Sorts x[0..n) in decreasing order: sorted[i] = x[perm[i]], ties in input order. The caller provides the
// scratch: `keys` and `keys_tmp` of n keys each and `perm_tmp` of n int32. A key has the size of its float, so
// `sorted` may be the memory of `keys` or of `keys_tmp` (each value is decoded in place from its own key); no
// other two arrays may overlap.
template <class T>
void sort_descending(int32_t n, const T* x, T* sorted, int32_t* perm, KeyOf<T>* keys, KeyOf<T>* keys_tmp,
                     int32_t* perm_tmp) {
  using K = KeyOf<T>;
  static_assert(sizeof(K) == sizeof(T), "a key must have the size of its float");
  for (int32_t i = 0; i < n; ++i) {
    keys[i] = descending_key(x[i]);
    perm[i] = i;
  }

  if (n <= 64) {
    // Insertion sort: fewer operations than the histogram passes on short rows; stable.
    for (int32_t i = 1; i < n; ++i) {
      const K k = keys[i];
      const int32_t p = perm[i];
      int32_t j = i - 1;
      while (j >= 0 && keys[j] > k) {
        keys[j + 1] = keys[j];
        perm[j + 1] = perm[j];
        --j;
      }
      keys[j + 1] = k;
      perm[j + 1] = p;
    }
  } else {
    // 11-bit digits: 3 passes for 32-bit keys, 6 for 64-bit; passes where every key has the same digit
    // (common in the high bits) are skipped.
    constexpr int kBits = 11;
    constexpr int kBuckets = 1 << kBits;
    constexpr int kPasses = (8 * sizeof(K) + kBits - 1) / kBits;
    std::vector<int32_t> counts(static_cast<size_t>(kPasses) * kBuckets, 0);
    for (int32_t i = 0; i < n; ++i) {
      for (int p = 0; p < kPasses; ++p) ++counts[p * kBuckets + ((keys[i] >> (p * kBits)) & (kBuckets - 1))];
    }
    K* src_keys = keys;
    K* dst_keys = keys_tmp;
    int32_t* src_perm = perm;
    int32_t* dst_perm = perm_tmp;
    for (int p = 0; p < kPasses; ++p) {
      int32_t* count = counts.data() + p * kBuckets;
      const K first_digit = (src_keys[0] >> (p * kBits)) & (kBuckets - 1);
      if (count[first_digit] == n) continue;
      int32_t offset = 0;
      for (int d = 0; d < kBuckets; ++d) {
        const int32_t c = count[d];
        count[d] = offset;
        offset += c;
      }
      for (int32_t i = 0; i < n; ++i) {
        const int32_t dst = count[(src_keys[i] >> (p * kBits)) & (kBuckets - 1)]++;
        dst_keys[dst] = src_keys[i];
        dst_perm[dst] = src_perm[i];
      }
      std::swap(src_keys, dst_keys);
      std::swap(src_perm, dst_perm);
    }
    if (src_perm != perm) std::memcpy(perm, src_perm, sizeof(int32_t) * n);
    keys = src_keys;
  }
  // Through memcpy, a byte copy, so that `sorted` may share the keys' memory whatever its declared type.
  for (int32_t i = 0; i < n; ++i) {
    const T value = value_of_descending_key<T>(keys[i]);
    std::memcpy(sorted + i, &value, sizeof(T));
  }
}

// Scratch buffers reused across rows by one thread (for callers that do not lay out their own).
template <class T>
struct SortScratch {
  std::vector<KeyOf<T>> keys, keys_tmp;
  std::vector<int32_t> perm_tmp;
  void reserve(int64_t n) {
    keys.resize(n);
    keys_tmp.resize(n);
    perm_tmp.resize(n);
  }
};

template <class T>
void sort_descending(int32_t n, const T* x, T* sorted, int32_t* perm, SortScratch<T>& scratch) {
  scratch.reserve(n);
  sort_descending(n, x, sorted, perm, scratch.keys.data(), scratch.keys_tmp.data(), scratch.perm_tmp.data());
}

}  // namespace otsort
