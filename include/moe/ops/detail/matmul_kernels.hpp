// moe/ops/detail/matmul_kernels.hpp: register-blocked micro-kernels and tile packers for matmul.
//
// Two micro-kernels cover every weight type and layout (see matmul.hpp for how they are used):
//
//  * axpy_kernel ("broadcast" form, for [in, out] weights or packed tiles): a block of MR token
//    rows x one strip of kNR output columns lives in MR * kNV registers. For each k it loads one
//    row of the weight strip (widened to f32, times the int8 column scale), broadcasts x[t][k]
//    and does MR * kNV FMAs. Every output element is therefore the sequential FMA chain
//        acc = fma(x[t][k], w[k][o], acc),  k = k0, k0 + 1, ...
//    whatever the tiling, the path (direct or packed) or the thread count. Splitting k into
//    blocks just stores acc to y and reloads it, which is exact.
//  * dot_kernel ("dot" form, for [out, in] weights at small T): MR tokens x NO output rows, each
//    accumulated as a vector along k (lane l sums k = l, l + L, ...; for bf16 on AVX-512
//    k = 2l, 2l + 1, 2l + 32, ...), then summed horizontally in a fixed order.
//
// bf16 on AVX-512 reads 32 weights per 64-byte load and splits them into even / odd columns with
// a shift and an AND (no widening loads); see axpy_kernel_bf16_pairs.
//
// Dequantisation is exact: w = float(int8) * float(bf16 scale) is computed in f32 (8-bit by
// 8-bit significands fit in 24 bits) BEFORE it meets x, so the FMA chain sees exactly the same
// weights as the f32 reference; the per-block scale is never folded into a partial sum.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <moe/config.hpp>
#include <moe/core/bf16.hpp>
#include <moe/ops/detail/matmul_simd.hpp>


MOE_SIMD_DETAIL_BEGIN

/// Vectors per strip and the strip width in columns.
inline constexpr std::size_t kNV = 4;
inline constexpr std::size_t kNR = kNV * Vec::kLanes;
/// Token rows per axpy micro-kernel call (6 x 4 accumulators + 4 weights + 1 broadcast <= 32).
inline constexpr std::size_t kMR = 6;

/// Lane masks of a strip with `cols` valid columns (cols may exceed kNR: all valid).
struct StripMask {
  Vec::Mask m[kNV];
};
inline StripMask strip_mask(std::size_t cols) noexcept {
  StripMask s{};
  for (std::size_t j = 0; j < kNV; ++j) {
    s.m[j] = Vec::mask(cols > j * Vec::kLanes ? cols - j * Vec::kLanes : 0);
  }
  return s;
}

template <bool kMasked, class E>
inline Vec::V load_w(const E* p, Vec::Mask m) noexcept {
  if constexpr (kMasked) {
    return Vec::load(p, m);
  } else {
    (void)m;
    return Vec::load(p);
  }
}

#if MOE_MATMUL_AVX512
/// axpy_kernel for full strips of bf16 weights: one 64-byte load holds 32 bf16, i.e. two f32
/// vectors, the even columns (bits << 16) and the odd ones (bits & 0xffff0000): one shift and
/// one AND instead of two widening loads. The accumulators keep the columns in that even / odd
/// order; y is (de)interleaved with two permutes when it is loaded and stored. Each column is
/// still the same sequential FMA chain, so results equal the generic kernel's bit for bit.
template <std::size_t MR>
inline void axpy_kernel_bf16_pairs(std::size_t kc, const float* x, std::size_t ldx, const bf16* w,
                                   std::size_t ldw, float* y, std::size_t ldy, bool load_y,
                                   std::size_t pf_rows) noexcept {
  constexpr std::size_t G = kNR / 32;  // groups of 32 columns per strip
  constexpr __mmask16 kAll = 0xffff;
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi =
      _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512i top = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  __m512 ae[MR][G], ao[MR][G];
  for (std::size_t t = 0; t < MR; ++t) {
    for (std::size_t g = 0; g < G; ++g) {
      if (load_y) {
        const __m512 a = _mm512_loadu_ps(y + t * ldy + 32 * g);
        const __m512 b = _mm512_loadu_ps(y + t * ldy + 32 * g + 16);
        ae[t][g] = _mm512_permutex2var_ps(a, even, b);
        ao[t][g] = _mm512_permutex2var_ps(a, odd, b);
      } else {
        ae[t][g] = _mm512_setzero_ps();
        ao[t][g] = _mm512_setzero_ps();
      }
    }
  }
  const std::uintptr_t pf_offset = pf_rows * ldw * sizeof(bf16);
  for (std::size_t k = 0; k < kc; ++k) {
    const bf16* wr = w + k * ldw;
    if (pf_rows != 0) {
      const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(wr) + pf_offset;
      for (std::size_t b = 0; b < kNR * sizeof(bf16); b += kCacheLine) MOE_MM_PREFETCH(a + b);
    }
    __m512 we[G], wo[G];
    for (std::size_t g = 0; g < G; ++g) {
      const __m512i v = _mm512_loadu_si512(wr + 32 * g);
      we[g] = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll, v, 16));
      wo[g] = _mm512_castsi512_ps(_mm512_and_si512(v, top));
    }
    for (std::size_t t = 0; t < MR; ++t) {
      const __m512 xb = _mm512_set1_ps(x[t * ldx + k]);
      for (std::size_t g = 0; g < G; ++g) {
        ae[t][g] = _mm512_fmadd_ps(xb, we[g], ae[t][g]);
        ao[t][g] = _mm512_fmadd_ps(xb, wo[g], ao[t][g]);
      }
    }
  }
  for (std::size_t t = 0; t < MR; ++t) {
    for (std::size_t g = 0; g < G; ++g) {
      _mm512_storeu_ps(y + t * ldy + 32 * g, _mm512_permutex2var_ps(ae[t][g], lo, ao[t][g]));
      _mm512_storeu_ps(y + t * ldy + 32 * g + 16, _mm512_permutex2var_ps(ae[t][g], hi, ao[t][g]));
    }
  }
}
#endif

/// Y[t][c] = (load_y ? Y[t][c] : 0) + sum_{k < kc} X[t][k] * W(k, c)  for t < MR, c < kNR, with
/// W(k, c) = widen(w[k * ldw + c]) (* widen(s[c]) when kScaled). x points at X[0][k0] (row
/// stride ldx), w at W(k0, n0), y at Y[0][n0] (row stride ldy). kMaskW / kMaskY use the lane
/// masks of `sm` for the weight loads / the y loads and stores (column tails). When pf_rows > 0
/// every step also prefetches weight row k + pf_rows (the caller guarantees it exists).
template <std::size_t MR, bool kMaskW, bool kMaskY, bool kScaled, class E>
inline void axpy_kernel(std::size_t kc, const float* x, std::size_t ldx, const E* w,
                        std::size_t ldw, const bf16* s, float* y, std::size_t ldy, bool load_y,
                        const StripMask& sm, std::size_t pf_rows) noexcept {
#if MOE_MATMUL_AVX512
  if constexpr (std::is_same_v<E, bf16> && !kMaskW && !kMaskY && !kScaled) {
    axpy_kernel_bf16_pairs<MR>(kc, x, ldx, w, ldw, y, ldy, load_y, pf_rows);
    return;
  }
#endif
  constexpr std::size_t L = Vec::kLanes;
  Vec::V acc[MR][kNV];
  for (std::size_t t = 0; t < MR; ++t) {
    for (std::size_t j = 0; j < kNV; ++j) {
      if (!load_y) {
        acc[t][j] = Vec::zero();
      } else if constexpr (kMaskY) {
        acc[t][j] = Vec::load(y + t * ldy + j * L, sm.m[j]);
      } else {
        acc[t][j] = Vec::load(y + t * ldy + j * L);
      }
    }
  }
  [[maybe_unused]] Vec::V sc[kNV];
  if constexpr (kScaled) {
    for (std::size_t j = 0; j < kNV; ++j) sc[j] = load_w<kMaskW>(s + j * L, sm.m[j]);
  }
  constexpr std::size_t kRowBytes = kNR * sizeof(E);
  const std::uintptr_t pf_offset = pf_rows * ldw * sizeof(E);
  for (std::size_t k = 0; k < kc; ++k) {
    const E* wr = w + k * ldw;
    if (pf_rows != 0) {
      const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(wr) + pf_offset;
      for (std::size_t b = 0; b < kRowBytes; b += kCacheLine) MOE_MM_PREFETCH(a + b);
    }
    Vec::V wv[kNV];
    for (std::size_t j = 0; j < kNV; ++j) {
      wv[j] = load_w<kMaskW>(wr + j * L, sm.m[j]);
      if constexpr (kScaled) wv[j] = Vec::mul(wv[j], sc[j]);
    }
    for (std::size_t t = 0; t < MR; ++t) {
      const Vec::V xb = Vec::set1(x[t * ldx + k]);
      for (std::size_t j = 0; j < kNV; ++j) acc[t][j] = Vec::fma(xb, wv[j], acc[t][j]);
    }
  }
  for (std::size_t t = 0; t < MR; ++t) {
    for (std::size_t j = 0; j < kNV; ++j) {
      if constexpr (kMaskY) {
        Vec::store(y + t * ldy + j * L, acc[t][j], sm.m[j]);
      } else {
        Vec::store(y + t * ldy + j * L, acc[t][j]);
      }
    }
  }
}

/// Runtime MR (1..kMR) -> template. Same arguments as axpy_kernel.
template <bool kMaskW, bool kMaskY, bool kScaled, class E>
inline void axpy_kernel_mr(std::size_t mr, std::size_t kc, const float* x, std::size_t ldx,
                           const E* w, std::size_t ldw, const bf16* s, float* y, std::size_t ldy,
                           bool load_y, const StripMask& sm, std::size_t pf_rows) noexcept {
  static_assert(kMR == 6, "update the switch below");
  switch (mr) {
    case 1:
      axpy_kernel<1, kMaskW, kMaskY, kScaled>(kc, x, ldx, w, ldw, s, y, ldy, load_y, sm, pf_rows);
      break;
    case 2:
      axpy_kernel<2, kMaskW, kMaskY, kScaled>(kc, x, ldx, w, ldw, s, y, ldy, load_y, sm, pf_rows);
      break;
    case 3:
      axpy_kernel<3, kMaskW, kMaskY, kScaled>(kc, x, ldx, w, ldw, s, y, ldy, load_y, sm, pf_rows);
      break;
    case 4:
      axpy_kernel<4, kMaskW, kMaskY, kScaled>(kc, x, ldx, w, ldw, s, y, ldy, load_y, sm, pf_rows);
      break;
    case 5:
      axpy_kernel<5, kMaskW, kMaskY, kScaled>(kc, x, ldx, w, ldw, s, y, ldy, load_y, sm, pf_rows);
      break;
    default:
      axpy_kernel<6, kMaskW, kMaskY, kScaled>(kc, x, ldx, w, ldw, s, y, ldy, load_y, sm, pf_rows);
      break;
  }
}

/// y[t * ldy + o] = sum_k x[t * ldx + k] * widen(w[o * ldw + k]) for t < MR, o < NO, k < K.
/// Lane l of each accumulator sums k = l, l + L, l + 2L, ... (a fixed order; bf16 on AVX-512:
/// 2l, 2l + 1, 2l + 2L, ... over the 2L-blocks, then the rest as above), then Vec::hsum.
template <std::size_t MR, std::size_t NO, class E>
inline void dot_kernel(std::size_t K, const float* x, std::size_t ldx, const E* w, std::size_t ldw,
                       float* y, std::size_t ldy) noexcept {
  constexpr std::size_t L = Vec::kLanes;
  Vec::V acc[MR][NO];
  for (std::size_t t = 0; t < MR; ++t) {
    for (std::size_t o = 0; o < NO; ++o) acc[t][o] = Vec::zero();
  }
  std::size_t k = 0;
#if MOE_MATMUL_AVX512
  if constexpr (std::is_same_v<E, bf16>) {
    // 32 bf16 per 64-byte load: even elements (bits << 16) and odd ones (bits & 0xffff0000),
    // matched by x split into its even and odd elements with two permutes (shared by the NO
    // rows). Lane l then sums k = 2l, 2l + 1, 2l + 32, ... (still a fixed order).
    constexpr __mmask16 kAll = 0xffff;
    const __m512i even =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd =
        _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512i top = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
    for (; k + 2 * L <= K; k += 2 * L) {
      __m512 we[NO], wo[NO];
      for (std::size_t o = 0; o < NO; ++o) {
        const __m512i v = _mm512_loadu_si512(w + o * ldw + k);
        we[o] = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll, v, 16));
        wo[o] = _mm512_castsi512_ps(_mm512_and_si512(v, top));
      }
      for (std::size_t t = 0; t < MR; ++t) {
        const __m512 a = _mm512_loadu_ps(x + t * ldx + k);
        const __m512 b = _mm512_loadu_ps(x + t * ldx + k + L);
        const __m512 xe = _mm512_permutex2var_ps(a, even, b);
        const __m512 xo = _mm512_permutex2var_ps(a, odd, b);
        for (std::size_t o = 0; o < NO; ++o) {
          acc[t][o] = _mm512_fmadd_ps(xo, wo[o], _mm512_fmadd_ps(xe, we[o], acc[t][o]));
        }
      }
    }
  }
#endif
  for (; k + L <= K; k += L) {
    Vec::V wv[NO];
    for (std::size_t o = 0; o < NO; ++o) wv[o] = Vec::load(w + o * ldw + k);
    for (std::size_t t = 0; t < MR; ++t) {
      const Vec::V xv = Vec::load(x + t * ldx + k);
      for (std::size_t o = 0; o < NO; ++o) acc[t][o] = Vec::fma(xv, wv[o], acc[t][o]);
    }
  }
  if (k < K) {
    const Vec::Mask m = Vec::mask(K - k);
    Vec::V wv[NO];
    for (std::size_t o = 0; o < NO; ++o) wv[o] = Vec::load(w + o * ldw + k, m);
    for (std::size_t t = 0; t < MR; ++t) {
      const Vec::V xv = Vec::load(x + t * ldx + k, m);
      for (std::size_t o = 0; o < NO; ++o) acc[t][o] = Vec::fma(xv, wv[o], acc[t][o]);
    }
  }
  for (std::size_t t = 0; t < MR; ++t) {
    for (std::size_t o = 0; o < NO; ++o) y[t * ldy + o] = Vec::hsum(acc[t][o]);
  }
}

/// Token rows and output rows per dot-kernel call, by the number of tokens.
inline constexpr std::size_t kDotMaxT = 4;
inline constexpr std::size_t dot_rows(std::size_t mr) noexcept {
  return mr == 1 ? 8 : 4;
}

/// Runtime (mr in 1..kDotMaxT, no in 1..dot_rows(mr)) -> template.
template <class E>
inline void dot_kernel_rt(std::size_t mr, std::size_t no, std::size_t K, const float* x,
                          std::size_t ldx, const E* w, std::size_t ldw, float* y,
                          std::size_t ldy) noexcept {
  auto rows = [&](auto mr_c) {
    constexpr std::size_t M = decltype(mr_c)::value;
    switch (no) {
      case 1:
        dot_kernel<M, 1>(K, x, ldx, w, ldw, y, ldy);
        break;
      case 2:
        dot_kernel<M, 2>(K, x, ldx, w, ldw, y, ldy);
        break;
      case 3:
        dot_kernel<M, 3>(K, x, ldx, w, ldw, y, ldy);
        break;
      case 4:
        dot_kernel<M, 4>(K, x, ldx, w, ldw, y, ldy);
        break;
      default:
        if constexpr (M == 1) {
          switch (no) {
            case 5:
              dot_kernel<1, 5>(K, x, ldx, w, ldw, y, ldy);
              break;
            case 6:
              dot_kernel<1, 6>(K, x, ldx, w, ldw, y, ldy);
              break;
            case 7:
              dot_kernel<1, 7>(K, x, ldx, w, ldw, y, ldy);
              break;
            default:
              dot_kernel<1, 8>(K, x, ldx, w, ldw, y, ldy);
              break;
          }
        }
        break;
    }
  };
  static_assert(kDotMaxT == 4, "update the switch below");
  switch (mr) {
    case 1:
      rows(std::integral_constant<std::size_t, 1>{});
      break;
    case 2:
      rows(std::integral_constant<std::size_t, 2>{});
      break;
    case 3:
      rows(std::integral_constant<std::size_t, 3>{});
      break;
    default:
      rows(std::integral_constant<std::size_t, 4>{});
      break;
  }
}

// ---- packing: a [kc, nc] tile of W as f32, in strips of kNR columns
// ------------------------------
//
// Layout of a packed tile: strip s (columns s*kNR .. s*kNR + kNR) is kc rows of kNR floats,
// contiguous; strips follow each other (strip stride kc * kNR). Columns past nc are zero, so the
// micro-kernel never needs masked weight loads on packed data.

/// Packs W(k0 + k, n0 + c) of an [in, out] weight (w points at W(k0, n0), row stride ldw).
/// Int8: s points at the scale row of block 0 for column n0 (row stride ldw = out), block_rows
/// rows per scale block, k0 the absolute first row (to find each row's block).
/// Rows are read one after the other, each as one contiguous run of nc elements (the hardware
/// prefetcher follows that), and row k + pf_rows is prefetched while row k is packed, as long as
/// k + pf_rows < rows_after (the rows that exist from w on).
template <class E>
inline void pack_inout(const E* w, std::size_t ldw, std::size_t kc, std::size_t nc, float* bp,
                       const bf16* s, std::size_t k0, std::size_t block_rows, std::size_t pf_rows,
                       std::size_t rows_after) noexcept {
  constexpr std::size_t L = Vec::kLanes;
  const std::size_t full_strips = nc / kNR;
  const std::size_t tail = nc - full_strips * kNR;
  const StripMask tail_mask = strip_mask(tail);
  const std::size_t row_bytes = nc * sizeof(E);
  for (std::size_t k = 0; k < kc; ++k) {
    const E* wr = w + k * ldw;
    if (pf_rows != 0 && k + pf_rows < rows_after) {
      const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(wr + pf_rows * ldw);
      for (std::size_t b = 0; b < row_bytes; b += kCacheLine) MOE_MM_PREFETCH(a + b);
    }
    [[maybe_unused]] const bf16* sr = nullptr;
    if constexpr (std::is_same_v<E, std::int8_t>) sr = s + ((k0 + k) / block_rows) * ldw;
    float* dst = bp + k * kNR;
    for (std::size_t st = 0; st < full_strips; ++st, dst += kc * kNR) {
      const std::size_t n = st * kNR;
      for (std::size_t j = 0; j < kNV; ++j) {
        Vec::V v = Vec::load(wr + n + j * L);
        if constexpr (std::is_same_v<E, std::int8_t>) v = Vec::mul(v, Vec::load(sr + n + j * L));
        Vec::store(dst + j * L, v);
      }
    }
    if (tail != 0) {
      const std::size_t n = full_strips * kNR;
      for (std::size_t j = 0; j < kNV; ++j) {
        Vec::V v = Vec::load(wr + n + j * L, tail_mask.m[j]);
        if constexpr (std::is_same_v<E, std::int8_t>) {
          v = Vec::mul(v, Vec::load(sr + n + j * L, tail_mask.m[j]));
        }
        Vec::store(dst + j * L, v);  // masked-off lanes are zero
      }
    }
  }
}

inline float widen_scalar(float v) noexcept {
  return v;
}
inline float widen_scalar(bf16 v) noexcept {
  return v.to_float();
}

#if MOE_MATMUL_AVX512
/// In-register transpose of 16 rows of 16 floats: r[i][c] -> r[c][i]. (All-lanes maskz forms:
/// the unmasked intrinsics trip GCC 12's bogus -Wuninitialized, bug 105593.)
inline void transpose16(__m512 r[16]) noexcept {
  constexpr __mmask16 kAll16 = 0xffff;
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_maskz_unpacklo_ps(kAll16, r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_maskz_unpackhi_ps(kAll16, r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_maskz_shuffle_ps(kAll16, t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 1] = _mm512_maskz_shuffle_ps(kAll16, t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[4 * i + 2] =
        _mm512_maskz_shuffle_ps(kAll16, t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 3] =
        _mm512_maskz_shuffle_ps(kAll16, t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int j = 0; j < 4; ++j) {
    t[j] = _mm512_maskz_shuffle_f32x4(kAll16, r[j], r[4 + j], 0x88);
    t[4 + j] = _mm512_maskz_shuffle_f32x4(kAll16, r[j], r[4 + j], 0xdd);
    t[8 + j] = _mm512_maskz_shuffle_f32x4(kAll16, r[8 + j], r[12 + j], 0x88);
    t[12 + j] = _mm512_maskz_shuffle_f32x4(kAll16, r[8 + j], r[12 + j], 0xdd);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm512_maskz_shuffle_f32x4(kAll16, t[j], t[8 + j], 0x88);
    r[8 + j] = _mm512_maskz_shuffle_f32x4(kAll16, t[j], t[8 + j], 0xdd);
    r[4 + j] = _mm512_maskz_shuffle_f32x4(kAll16, t[4 + j], t[12 + j], 0x88);
    r[12 + j] = _mm512_maskz_shuffle_f32x4(kAll16, t[4 + j], t[12 + j], 0xdd);
  }
}
#endif

/// Packs W(k0 + k, n0 + c) = data[(n0 + c) * ldw + k0 + k] of an [out, in] weight (w points at
/// output row n0, column k0): a transpose into the same strip layout as pack_inout.
template <class E>
inline void pack_outin(const E* w, std::size_t ldw, std::size_t kc, std::size_t nc,
                       float* bp) noexcept {
  for (std::size_t n = 0; n < nc; n += kNR) {
    const std::size_t cols = nc - n < kNR ? nc - n : kNR;
    float* dst = bp + (n / kNR) * kc * kNR;
    std::size_t c0 = 0;
#if MOE_MATMUL_AVX512
    // 16 x 16 blocks: 16 output rows (columns of the tile) x 16 k.
    for (; c0 + 16 <= cols; c0 += 16) {
      std::size_t k = 0;
      for (; k + 16 <= kc; k += 16) {
        __m512 r[16];
        for (std::size_t i = 0; i < 16; ++i) r[i] = Vec::load(w + (n + c0 + i) * ldw + k);
        transpose16(r);
        for (std::size_t i = 0; i < 16; ++i) Vec::store(dst + (k + i) * kNR + c0, r[i]);
      }
      for (; k < kc; ++k) {
        for (std::size_t i = 0; i < 16; ++i) {
          dst[k * kNR + c0 + i] = widen_scalar(w[(n + c0 + i) * ldw + k]);
        }
      }
    }
#endif
    for (std::size_t k = 0; k < kc; ++k) {
      for (std::size_t c = c0; c < cols; ++c) dst[k * kNR + c] = widen_scalar(w[(n + c) * ldw + k]);
      for (std::size_t c = cols; c < kNR; ++c) dst[k * kNR + c] = 0.0f;
    }
  }
}

MOE_SIMD_DETAIL_END

