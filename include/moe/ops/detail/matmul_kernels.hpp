// moe/ops/detail/matmul_kernels.hpp: register-blocked micro-kernels and tile packers for matmul.
//
// Written in the shared SIMD vocabulary (moe/simd/simd.hpp: simd::fbatch, load / load_partial,
// widen, fma, prefetch). Three kernels use raw AVX-512 intrinsics because the vocabulary has no
// equivalent at the same speed; each says why: axpy_kernel_bf16_pairs, the bf16 branch of
// dot_kernel and transpose16. Three more use AVX / AVX2 ones: axpy_kernel_bf16_unpack (the
// bf16 direct path: GEMVs of 1-6 tokens), the one-token bf16 branch of dot_kernel there and
// transpose8 (transpose16's counterpart).
//
// Two micro-kernels cover every weight type and layout (see matmul.hpp for how they are used):
//
//  * axpy_kernel ("broadcast" form, for [in, out] weights or packed strips): a block of MR token
//    rows x one strip of kNR output columns lives in MR * kNV registers. For each k it loads one
//    row of the weight strip (widened to f32, times the int8 column scale), broadcasts x[t][k]
//    and does MR * kNV FMAs. Every output element is therefore the sequential FMA chain
//        acc = fma(x[t][k], w[k][o], acc),  k = k0, k0 + 1, ...
//    whatever the tiling, the path (direct or packed) or the thread count. Splitting k into
//    blocks just stores acc to y and reloads it, which is exact. With kPackOut the kernel also
//    stores each widened weight row into a packed strip (fused packing: the first token block
//    of a strip packs it for the others, see run_packed).
//  * dot_kernel ("dot" form, for [out, in] weights at small T): MR tokens x NO output rows, each
//    accumulated as a vector along k (lane l sums k = l, l + L, ...; for bf16 on AVX-512
//    k = 2l, 2l + 1, 2l + 32, ...), then summed horizontally in a fixed order.
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
#include <moe/core/dispatch.hpp>
#include <moe/simd/simd.hpp>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define MOE_MATMUL_AVX512 1
#define MOE_MATMUL_BF16_UNPACK 0
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__)
#define MOE_MATMUL_AVX512 0
#define MOE_MATMUL_BF16_UNPACK 1  // axpy_kernel_bf16_unpack
#include <immintrin.h>
#else
#define MOE_MATMUL_AVX512 0
#define MOE_MATMUL_BF16_UNPACK 0
#endif

MOE_SIMD_DETAIL_BEGIN

/// Name of the kernel set compiled into this TU (reported by the benchmarks and checked by the
/// tests): "avx512" (raw-intrinsic fast paths on) or "xsimd" (the vocabulary alone).
inline constexpr const char* kMatmulKernels = MOE_MATMUL_AVX512 ? "avx512" : "xsimd";

using simd::fbatch;
using simd::kVectorRegisters;
/// Vectors per strip and the strip width in columns: 4 with 32 registers, 2 with 16.
inline constexpr std::size_t kNV = kVectorRegisters >= 32 ? 4 : 2;
inline constexpr std::size_t kNR = kNV * simd::kLanes;
/// Token rows per axpy micro-kernel call: MR x kNV accumulators + kNV weights + 1 broadcast fit
/// the registers (6 x 4 + 4 + 1 <= 32; 6 x 2 + 2 + 1 <= 16).
inline constexpr std::size_t kMR = 6;
static_assert(kMR * kNV + kNV + 1 <= kVectorRegisters, "the axpy register block must fit");
/// Vectors per column step of the direct path (T <= kMR, weights read in place), wider than a
/// packed strip on 16 registers, which the GEMV needs (a call reads kc rows of that many weights:
/// 16 columns were 16 bytes of int8 per row and ran at 0.65-0.77 of 32 columns on Zen 3). On 16
/// registers: 8 vectors for f32 / bf16 (+3-18 % over 4 on Zen 3) and 4 for int8 (whose column
/// scales take registers too: 8 ran at 0.78-0.87 of 4). Rows that do not fit run as narrower
/// column groups (fitting_nv). 32 registers: 4 for all (the Zen 5 tuning).
constexpr std::size_t direct_nv(bool scaled) noexcept {
  return kVectorRegisters >= 32 ? 4 : scaled ? 4 : 8;
}
/// The widest direct step in columns (the plan rounds slabs to it).
inline constexpr std::size_t kDirectNR = direct_nv(false) * simd::kLanes;
static_assert(kDirectNR % (direct_nv(true) * simd::kLanes) == 0 && direct_nv(true) % kNV == 0,
              "direct steps are whole numbers of strips");
/// Bytes of one cache line (prefetch granularity).
inline constexpr std::size_t kCacheLine = 64;

/// Prefetches into L1 the `bytes` that start `offset` bytes past `row`: in the micro-kernels, the
/// part of the weight row pf_rows ahead that a step reads. Always inlined, like every helper that
/// only prefetches: GCC 12 takes a call to such a function for one without effects and deletes it
/// when the function is not inlined first (its pure-const analysis), so a lambda or a plain inline
/// function around these prefetches compiled to nothing in dot_kernel.
[[gnu::always_inline]] inline void prefetch_ahead(const void* row, std::uintptr_t offset,
                                                  std::size_t bytes) noexcept {
  const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(row) + offset;
  for (std::size_t b = 0; b < bytes; b += kCacheLine) simd::prefetch_l1(a + b);
}

/// In the dot kernel, once per cache line of its NO weight rows (when element k starts the
/// line q of a row): lines q * NO .. q * NO + NO - 1 of the NO rows pf_rows further on, which are
/// one run of memory (the dot path's rows are contiguous: ldw is the row length). So the next
/// rows arrive in address order, which DRAM serves faster than the same lines fetched a column
/// at a time across the rows (line q of each): bf16 [1024 -> 4096] (2 KiB rows) 1.06x on Zen 1
/// (Blocking::dot_pf_short).
template <std::size_t NO, class E>
[[gnu::always_inline]] inline void prefetch_rows(const E* w, std::size_t ldw, std::size_t pf_rows,
                                                 std::size_t k) noexcept {
  if ((k * sizeof(E)) % kCacheLine != 0) return;
  const std::uintptr_t q = k * sizeof(E) / kCacheLine;
  prefetch_ahead(w + pf_rows * ldw, q * NO * kCacheLine, NO * kCacheLine);
}

/// Prefetches a block of rows (rows x row_bytes, row stride ld bytes) a few lines at a time, one
/// share per step, so that the memory stream of the next block overlaps the compute of this one.
/// A step is a micro-kernel call (the call-level prefetch), or a k step inside one (the packed
/// path's KernelPrefetch); `steps` is how many the block is spread over.
class BlockPrefetcher {
 public:
  BlockPrefetcher() = default;
  BlockPrefetcher(const void* base, std::size_t rows, std::size_t row_bytes, std::size_t ld,
                  std::size_t steps) noexcept
      : base_(reinterpret_cast<std::uintptr_t>(base)),
        rows_(rows),
        lines_((row_bytes + kCacheLine - 1) / kCacheLine),
        ld_(ld),
        per_step_(steps == 0 ? 0 : (rows * lines_ + steps - 1) / steps) {}
  /// Issues the next share (into L1 when `l1`, else into L2).
  template <bool kL1>
  [[gnu::always_inline]] void step() noexcept {
    for (std::size_t n = 0; n < per_step_ && row_ < rows_; ++n) {
      const std::uintptr_t a = base_ + row_ * ld_ + line_ * kCacheLine;
      if constexpr (kL1) {
        simd::prefetch_l1(a);
      } else {
        simd::prefetch_l2(a);
      }
      if (++line_ == lines_) {
        line_ = 0;
        ++row_;
      }
    }
  }

 private:
  std::uintptr_t base_ = 0;
  std::size_t rows_ = 0, lines_ = 1, ld_ = 0, per_step_ = 0;
  std::size_t row_ = 0, line_ = 0;
};

/// What a packed-path task prefetches while a micro-kernel call over a packed strip runs
/// (Plan::stream_pf): a share of the next strip into L1 every kStripEvery-th k step and of the
/// next tile into L2 every kTileEvery-th, so that the misses trickle out between the FMAs instead
/// of leaving in a burst before each call (a burst of more misses than the core has L1 fill
/// buffers holds them all, and the call's own activation and output loads wait behind it).
struct KernelPrefetch {
  static constexpr std::size_t kStripEvery = 2;
  static constexpr std::size_t kTileEvery = 4;
  BlockPrefetcher strip;  ///< into L1
  BlockPrefetcher tile;   ///< into L2

  /// The shares (one every `every` k steps) of `calls` calls of kc rows.
  static constexpr std::size_t steps(std::size_t calls, std::size_t kc,
                                     std::size_t every) noexcept {
    return calls * kc / every > 0 ? calls * kc / every : 1;
  }
  /// Called at k step k of a micro-kernel call.
  [[gnu::always_inline]] void tick(std::size_t k) noexcept {
    if (k % kStripEvery == 0) strip.template step<true>();
    if (k % kTileEvery == kTileEvery - 1) tile.template step<false>();
  }
};

/// Valid lanes of vector j of a strip with `cols` valid columns (0..simd::kLanes).
constexpr std::size_t strip_lanes(std::size_t cols, std::size_t j) noexcept {
  return cols > j * simd::kLanes
             ? (cols - j * simd::kLanes < simd::kLanes ? cols - j * simd::kLanes : simd::kLanes)
             : 0;
}

/// simd::kLanes (or the first n, rest 0) weights from p, widened to f32.
template <bool kPartial, class E>
inline fbatch load_w(const E* p, std::size_t n) noexcept {
  if constexpr (std::is_same_v<E, float>) {
    if constexpr (kPartial)
      return simd::load_partial(p, n);
    else
      return simd::load(p);
  } else {
    if constexpr (kPartial)
      return simd::widen_partial(p, n);
    else
      return simd::widen(p);
  }
}

/// Stores the first n lanes (all when !kPartial).
template <bool kPartial>
inline void store_y(float* p, const fbatch& v, std::size_t n) noexcept {
  if constexpr (kPartial) {
    simd::store_partial(p, v, n);
  } else {
    simd::store(p, v);
  }
}

#if MOE_MATMUL_AVX512
/// axpy_kernel for full strips of bf16 weights. Raw intrinsics: one 64-byte load holds 32 bf16,
/// i.e. two f32 vectors, the even columns (bits << 16) and the odd ones (bits & 0xffff0000): one
/// shift and one AND instead of two widening loads (simd::widen), which is what makes the
/// bandwidth-bound bf16 GEMV keep up with DRAM. The accumulators keep the columns in that
/// even / odd order; y is (de)interleaved with two permutes when it is loaded and stored. Each
/// column is still the same sequential FMA chain, so results equal the generic kernel's bit for
/// bit.
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
    if (pf_rows != 0) prefetch_ahead(wr, pf_offset, kNR * sizeof(bf16));
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

#if MOE_MATMUL_BF16_UNPACK
/// axpy_kernel for full steps of bf16 weights on AVX2 (the direct path: GEMVs of 1-6 tokens).
/// Raw intrinsics: one 32-byte load holds 16 bf16, and interleaving it with zeros
/// (`vpunpck{l,h}wd`, within each 128-bit half) gives two f32 vectors, columns {0-3, 8-11} and
/// {4-7, 12-15}: one load and two shuffles per 16 weights, where simd::widen takes two widening
/// loads and two shifts (on Zen 1, whose 256-bit operations run as two halves, the GEMV's
/// bottleneck). The accumulators keep that column order; y is regrouped by 128-bit halves when
/// loaded and stored, by vinsertf128 / vextractf128 (Zen 1 splits a vperm2f128 into 8
/// micro-ops: 1.00-1.06x over it). Each column is the same sequential FMA chain as the generic
/// kernel's. MR x NV accumulators, the two halves of one group and a broadcast fit the 16
/// registers for the widths fitting_nv gives (1 x 8, 2 x 4, 3..6 x 2).
template <std::size_t MR, std::size_t NV>
inline void axpy_kernel_bf16_unpack(std::size_t kc, const float* x, std::size_t ldx, const bf16* w,
                                    std::size_t ldw, float* y, std::size_t ldy, bool load_y,
                                    std::size_t pf_rows) noexcept {
  static_assert(NV % 2 == 0, "groups of 16 columns");
  constexpr std::size_t G = NV / 2;
  __m256 lo[MR][G], hi[MR][G];  // columns {0-3, 8-11} and {4-7, 12-15} of group g, token t
  for (std::size_t t = 0; t < MR; ++t) {
    for (std::size_t g = 0; g < G; ++g) {
      if (load_y) {
        const __m256 a = _mm256_loadu_ps(y + t * ldy + 16 * g);
        const __m256 b = _mm256_loadu_ps(y + t * ldy + 16 * g + 8);
        lo[t][g] = _mm256_insertf128_ps(a, _mm256_castps256_ps128(b), 1);
        hi[t][g] = _mm256_insertf128_ps(b, _mm256_extractf128_ps(a, 1), 0);
      } else {
        lo[t][g] = hi[t][g] = _mm256_setzero_ps();
      }
    }
  }
  const __m256i zero = _mm256_setzero_si256();
  const std::uintptr_t pf_offset = pf_rows * ldw * sizeof(bf16);
  for (std::size_t k = 0; k < kc; ++k) {
    const bf16* wr = w + k * ldw;
    if (pf_rows != 0) prefetch_ahead(wr, pf_offset, 16 * G * sizeof(bf16));
    for (std::size_t g = 0; g < G; ++g) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + 16 * g));
      const __m256 wl = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, v));
      const __m256 wh = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, v));
      for (std::size_t t = 0; t < MR; ++t) {
        const __m256 xb = _mm256_set1_ps(x[t * ldx + k]);
        lo[t][g] = _mm256_fmadd_ps(xb, wl, lo[t][g]);
        hi[t][g] = _mm256_fmadd_ps(xb, wh, hi[t][g]);
      }
    }
  }
  for (std::size_t t = 0; t < MR; ++t) {
    for (std::size_t g = 0; g < G; ++g) {
      float* yt = y + t * ldy + 16 * g;
      _mm256_storeu_ps(yt, _mm256_insertf128_ps(lo[t][g], _mm256_castps256_ps128(hi[t][g]), 1));
      _mm256_storeu_ps(yt + 8,
                       _mm256_insertf128_ps(hi[t][g], _mm256_extractf128_ps(lo[t][g], 1), 0));
    }
  }
}
#endif

/// Y[t][c] = (load_y ? Y[t][c] : 0) + sum_{k < kc} X[t][k] * W(k, c)  for t < MR, c < kNR, with
/// W(k, c) = widen(w[k * ldw + c]) (* widen(s[c]) when kScaled). x points at X[0][k0] (row
/// stride ldx), w at W(k0, n0), y at Y[0][n0] (row stride ldy). kMaskW / kMaskY: only the first
/// `cols` columns are valid for the weight loads / the y loads and stores (column tails; masked
/// weight lanes read as 0). When pf_rows > 0 every step also prefetches weight row k + pf_rows
/// (the caller guarantees it exists). kPackOut: row k of the widened (scaled) weights is also
/// stored to pk[k * kNR ..] (kNR floats, zeros past `cols`), and the `pack_pf_lines` cache lines
/// that follow the start of weight row k (the row's part of the next strips) are prefetched into
/// L2 as it is read, so that several lines of each row are in flight at once (see
/// Blocking::pack_fetch_cols). kTick (calls over a packed strip): kpf, unless null, is advanced
/// at every k step (KernelPrefetch::tick).
template <std::size_t MR, bool kMaskW, bool kMaskY, bool kScaled, bool kPackOut,
          std::size_t NV = kNV, bool kTick = false, class E>
inline void axpy_kernel(std::size_t kc, const float* x, std::size_t ldx, const E* w,
                        std::size_t ldw, const bf16* s, float* y, std::size_t ldy, bool load_y,
                        std::size_t cols, std::size_t pf_rows, float* pk, std::size_t pack_pf_lines,
                        KernelPrefetch* kpf) noexcept {
  static_assert(!kPackOut || NV == kNV, "a packed strip is kNR columns wide");
#if MOE_MATMUL_AVX512
  if constexpr (std::is_same_v<E, bf16> && NV == kNV && !kMaskW && !kMaskY && !kScaled &&
                !kPackOut) {
    axpy_kernel_bf16_pairs<MR>(kc, x, ldx, w, ldw, y, ldy, load_y, pf_rows);
    return;
  }
#elif MOE_MATMUL_BF16_UNPACK
  if constexpr (std::is_same_v<E, bf16> && NV % 2 == 0 && !kMaskW && !kMaskY && !kScaled &&
                !kPackOut) {
    axpy_kernel_bf16_unpack<MR, NV>(kc, x, ldx, w, ldw, y, ldy, load_y, pf_rows);
    return;
  }
#endif
  constexpr std::size_t L = simd::kLanes;
  fbatch acc[MR][NV];
  for (std::size_t t = 0; t < MR; ++t) {
    for (std::size_t j = 0; j < NV; ++j) {
      if (!load_y) {
        acc[t][j] = fbatch(0.0f);
      } else if constexpr (kMaskY) {
        acc[t][j] = simd::load_partial(y + t * ldy + j * L, strip_lanes(cols, j));
      } else {
        acc[t][j] = simd::load(y + t * ldy + j * L);
      }
    }
  }
  [[maybe_unused]] fbatch sc[NV];
  if constexpr (kScaled) {
    for (std::size_t j = 0; j < NV; ++j) sc[j] = load_w<kMaskW>(s + j * L, strip_lanes(cols, j));
  }
  constexpr std::size_t kRowBytes = NV * L * sizeof(E);
  const std::uintptr_t pf_offset = pf_rows * ldw * sizeof(E);
  for (std::size_t k = 0; k < kc; ++k) {
    const E* wr = w + k * ldw;
    if (pf_rows != 0) prefetch_ahead(wr, pf_offset, kRowBytes);
    if constexpr (kTick) {
      if (kpf != nullptr) kpf->tick(k);
    }
    if constexpr (kPackOut) {
      const auto row = reinterpret_cast<std::uintptr_t>(wr);
      for (std::size_t q = 1; q <= pack_pf_lines; ++q) simd::prefetch_l2(row + q * kCacheLine);
    }
    fbatch wv[NV];
    for (std::size_t j = 0; j < NV; ++j) {
      wv[j] = load_w<kMaskW>(wr + j * L, strip_lanes(cols, j));
      if constexpr (kScaled) wv[j] = wv[j] * sc[j];
      if constexpr (kPackOut) simd::store(pk + k * kNR + j * L, wv[j]);
    }
    for (std::size_t t = 0; t < MR; ++t) {
      const fbatch xb(x[t * ldx + k]);
      for (std::size_t j = 0; j < NV; ++j) acc[t][j] = simd::fma(xb, wv[j], acc[t][j]);
    }
  }
  for (std::size_t t = 0; t < MR; ++t) {
    for (std::size_t j = 0; j < NV; ++j) {
      store_y<kMaskY>(y + t * ldy + j * L, acc[t][j], strip_lanes(cols, j));
    }
  }
}

/// The widest of NV, NV / 2, ... (at least kNV) vectors whose MR-row register block fits: MR x NV
/// accumulators + NV weights + 1 broadcast; one row uses each weight once, so it needs only the
/// accumulators and a few temporaries (scales, when kept, are reloaded from L1).
constexpr std::size_t fitting_nv(std::size_t mr, std::size_t nv) noexcept {
  auto fits = [mr](std::size_t v) {
    return mr == 1 ? v + 3 <= kVectorRegisters : mr * v + v + 1 <= kVectorRegisters;
  };
  while (nv > kNV && !fits(nv)) nv /= 2;
  return nv;
}

/// Runtime MR (1..kMR) -> template. Same arguments as axpy_kernel.
template <bool kMaskW, bool kMaskY, bool kScaled, bool kPackOut = false, std::size_t NV = kNV,
          bool kTick = false, class E>
inline void axpy_kernel_mr(std::size_t mr, std::size_t kc, const float* x, std::size_t ldx,
                           const E* w, std::size_t ldw, const bf16* s, float* y, std::size_t ldy,
                           bool load_y, std::size_t cols, std::size_t pf_rows, float* pk,
                           std::size_t pack_pf_lines, KernelPrefetch* kpf) noexcept {
  auto call = [&](auto m) {
    constexpr std::size_t M = decltype(m)::value;
    constexpr std::size_t V = fitting_nv(M, NV);
    if constexpr (V == NV) {
      axpy_kernel<M, kMaskW, kMaskY, kScaled, kPackOut, NV, kTick>(
          kc, x, ldx, w, ldw, s, y, ldy, load_y, cols, pf_rows, pk, pack_pf_lines, kpf);
    } else {  // too many rows for NV vectors: V-wide column groups (never with kPackOut)
      static_assert(V == NV || !kPackOut, "a packed strip is one kNV-wide call");
      constexpr std::size_t W = V * simd::kLanes;
      for (std::size_t c = 0; c < cols; c += W) {
        const std::size_t n = cols - c < W ? cols - c : W;
        axpy_kernel<M, kMaskW, kMaskY, kScaled, false, V>(kc, x, ldx, w + c, ldw,
                                                          kScaled ? s + c : s, y + c, ldy, load_y,
                                                          n, pf_rows, nullptr, 0, nullptr);
      }
    }
  };
  dispatch_count<kMR>(mr, call);
}

/// One micro-kernel call over a strip of cols <= NV * kLanes columns: a full strip runs unmasked;
/// a narrower one masks y, and the weights too unless they are a packed strip, whose columns past
/// `cols` are zeros (kPaddedW; only such calls take a KernelPrefetch). Same arguments as
/// axpy_kernel.
template <bool kPaddedW, bool kScaled, bool kPackOut = false, std::size_t NV = kNV, class E>
inline void axpy_strip(std::size_t mr, std::size_t kc, const float* x, std::size_t ldx, const E* w,
                       std::size_t ldw, const bf16* s, float* y, std::size_t ldy, bool load_y,
                       std::size_t cols, std::size_t pf_rows, float* pk = nullptr,
                       std::size_t pack_pf_lines = 0, KernelPrefetch* kpf = nullptr) noexcept {
  if (cols == NV * simd::kLanes) {
    axpy_kernel_mr<false, false, kScaled, kPackOut, NV, kPaddedW>(
        mr, kc, x, ldx, w, ldw, s, y, ldy, load_y, cols, pf_rows, pk, pack_pf_lines, kpf);
  } else {
    axpy_kernel_mr<!kPaddedW, true, kScaled, kPackOut, NV, kPaddedW>(
        mr, kc, x, ldx, w, ldw, s, y, ldy, load_y, cols, pf_rows, pk, pack_pf_lines, kpf);
  }
}

/// y[t * ldy + o] (+)= sum_k x[t * ldx + k] * widen(w[o * ldw + k]) for t < MR, o < NO, k < K
/// (added to y when `add`). Lane l of each accumulator sums k = l, l + L, l + 2L, ... (a fixed
/// order; bf16 on AVX-512: 2l, 2l + 1, 2l + 2L, ... over the 2L-blocks, then the rest as above),
/// then simd::reduce_add. kPrefetch: each step also prefetches its share of the NO rows pf_rows
/// further on (prefetch_rows; the caller guarantees they exist; a template flag, so that the
/// loops without it carry no test).
template <std::size_t MR, std::size_t NO, bool kPrefetch, class E>
inline void dot_kernel(std::size_t K, const float* x, std::size_t ldx, const E* w, std::size_t ldw,
                       float* y, std::size_t ldy, bool add, std::size_t pf_rows) noexcept {
  constexpr std::size_t L = simd::kLanes;
  fbatch acc[MR][NO];
  for (std::size_t t = 0; t < MR; ++t) {
    for (std::size_t o = 0; o < NO; ++o) acc[t][o] = fbatch(0.0f);
  }
  std::size_t k = 0;
#if MOE_MATMUL_AVX512
  if constexpr (std::is_same_v<E, bf16>) {
    // Raw intrinsics (same reason as axpy_kernel_bf16_pairs): 32 bf16 per 64-byte load, even
    // elements (bits << 16) and odd ones (bits & 0xffff0000), matched by x split into its even
    // and odd elements with two permutes (shared by the NO rows). Lane l then sums k = 2l,
    // 2l + 1, 2l + 32, ... (still a fixed order).
    constexpr __mmask16 kAll = 0xffff;
    const __m512i even =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd =
        _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512i top = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
    for (; k + 2 * L <= K; k += 2 * L) {
      if constexpr (kPrefetch) prefetch_rows<NO>(w, ldw, pf_rows, k);
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
#elif MOE_MATMUL_BF16_UNPACK
  if constexpr (std::is_same_v<E, bf16> && MR == 1) {
    // The one-token GEMV, in raw intrinsics (as axpy_kernel_bf16_unpack): 16 bf16 per 32-byte
    // load, its 64-bit quarters reordered (0, 2, 1, 3) so that interleaving with zeros within each
    // 128-bit half gives the f32 vectors of k .. k + 7 and k + 8 .. k + 15 in order: one load and
    // three shuffles per 16 weights, where simd::widen takes two widening loads and two shifts.
    // The FMAs are those of the loop below, in the same order. (With 2 tokens, whose vectors then
    // exceed the 16 registers, it ran 0.93x on long rows; 3 and 4 tokens gained nothing.)
    const __m256i zero = _mm256_setzero_si256();
    for (; k + 2 * L <= K; k += 2 * L) {
      if constexpr (kPrefetch) prefetch_rows<NO>(w, ldw, pf_rows, k);
      __m256 lo[NO], hi[NO];
      for (std::size_t o = 0; o < NO; ++o) {
        const __m256i v = _mm256_permute4x64_epi64(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + o * ldw + k)), 0xD8);
        lo[o] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, v));
        hi[o] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, v));
      }
      for (std::size_t t = 0; t < MR; ++t) {
        const __m256 a = _mm256_loadu_ps(x + t * ldx + k);
        const __m256 b = _mm256_loadu_ps(x + t * ldx + k + L);
        for (std::size_t o = 0; o < NO; ++o) {
          acc[t][o] = _mm256_fmadd_ps(b, hi[o], _mm256_fmadd_ps(a, lo[o], acc[t][o]));
        }
      }
    }
  }
#endif
  for (; k + L <= K; k += L) {
    if constexpr (kPrefetch) prefetch_rows<NO>(w, ldw, pf_rows, k);
    fbatch wv[NO];
    for (std::size_t o = 0; o < NO; ++o) wv[o] = load_w<false>(w + o * ldw + k, L);
    for (std::size_t t = 0; t < MR; ++t) {
      const fbatch xv = simd::load(x + t * ldx + k);
      for (std::size_t o = 0; o < NO; ++o) acc[t][o] = simd::fma(xv, wv[o], acc[t][o]);
    }
  }
  if (k < K) {
    const std::size_t n = K - k;
    fbatch wv[NO];
    for (std::size_t o = 0; o < NO; ++o) wv[o] = load_w<true>(w + o * ldw + k, n);
    for (std::size_t t = 0; t < MR; ++t) {
      const fbatch xv = simd::load_partial(x + t * ldx + k, n);
      for (std::size_t o = 0; o < NO; ++o) acc[t][o] = simd::fma(xv, wv[o], acc[t][o]);
    }
  }
  for (std::size_t t = 0; t < MR; ++t) {
    for (std::size_t o = 0; o < NO; ++o) {
      const float v = simd::reduce_add(acc[t][o]);
      y[t * ldy + o] = add ? y[t * ldy + o] + v : v;
    }
  }
}

/// Token rows and output rows per dot-kernel call, by the number of tokens: MR x NO accumulators
/// + NO weights + 1 activation vector fit the registers (32: 1 x 8, 4 x 4; 16: 1 x 7, 2 x 4,
/// 3 x 3, 4 x 2).
inline constexpr std::size_t kDotMaxT = 4;
inline constexpr std::size_t dot_rows(std::size_t mr) noexcept {
  if constexpr (kVectorRegisters >= 32) {
    return mr == 1 ? 8 : 4;
  } else {
    return mr == 1 ? 7 : mr == 2 ? 4 : mr == 3 ? 3 : 2;
  }
}

/// Runtime (mr in 1..kDotMaxT, no in 1..dot_rows(mr), prefetch or not) -> template.
template <class E>
inline void dot_kernel_rt(std::size_t mr, std::size_t no, std::size_t K, const float* x,
                          std::size_t ldx, const E* w, std::size_t ldw, float* y, std::size_t ldy,
                          bool add, std::size_t pf_rows) noexcept {
  dispatch_count<kDotMaxT>(mr, [&](auto mr_c) {
    constexpr std::size_t M = decltype(mr_c)::value;
    dispatch_count<dot_rows(M)>(no, [&](auto no_c) {
      constexpr std::size_t N = decltype(no_c)::value;
      if (pf_rows != 0) {
        dot_kernel<M, N, true>(K, x, ldx, w, ldw, y, ldy, add, pf_rows);
      } else {
        dot_kernel<M, N, false>(K, x, ldx, w, ldw, y, ldy, add, pf_rows);
      }
    });
  });
}

// ---- transposing packers --------------------------------------------------------------------
//
// A packed strip is kc rows of kNR floats, contiguous (row k at k * kNR); columns past the
// valid ones are zero, so the micro-kernel never needs masked weight loads on packed data.

/// Element access of a matrix stored row-major with row stride ld whose rows are read as floats:
/// f32 as is, bf16 widened, int8 widened and multiplied by a per-row-block scale row
/// (scales + (r / block_rows) * ld): the transposed view of an Int8Weight.
template <class E>
struct RowReader {
  const E* data = nullptr;
  std::size_t ld = 0;
  const bf16* scales = nullptr;  ///< int8 only
  std::size_t block_rows = 1;    ///< int8 only

  float at(std::size_t r, std::size_t c) const noexcept {
    float v = 0.0f;
    if constexpr (std::is_same_v<E, float>) {
      v = data[r * ld + c];
    } else if constexpr (std::is_same_v<E, bf16>) {
      v = simd::detail::widen_one(data[r * ld + c]);
    } else {
      v = static_cast<float>(data[r * ld + c]) * load_bf16(scales + (r / block_rows) * ld + c);
    }
    return v;
  }
  /// Elements (r, c .. c + simd::kLanes) as a batch.
  fbatch row(std::size_t r, std::size_t c) const noexcept {
    fbatch v = load_w<false>(data + r * ld + c, simd::kLanes);
    if constexpr (std::is_same_v<E, std::int8_t>) {
      v = v * simd::widen(scales + (r / block_rows) * ld + c);
    }
    return v;
  }
};

#if MOE_MATMUL_AVX512
#define MOE_MATMUL_TRANSPOSE 1
/// In-register transpose of 16 rows of 16 floats: r[i][c] -> r[c][i]. Raw intrinsics: the
/// vocabulary has no cross-lane shuffles (xsimd 8.1's are incomplete for AVX-512), and this is
/// the packing cost of every [out, in] GEMM. (All-lanes maskz forms: the unmasked intrinsics
/// trip GCC 12's bogus -Wuninitialized, bug 105593.)
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
#elif defined(__AVX__)
#define MOE_MATMUL_TRANSPOSE 1
/// In-register transpose of 8 rows of 8 floats (AVX / AVX2): r[i][c] -> r[c][i]. Raw intrinsics
/// for the same reason as transpose16; without it every [out, in] strip and every transposed
/// activation block of a weight gradient was packed one float at a time (grad_weight products
/// at 0.30-0.68 of the FMA peak on Zen 3, against 0.8-0.9 for the others).
inline void transpose8(__m256 r[8]) noexcept {
  __m256 t[8];
  for (int i = 0; i < 4; ++i) {  // pairs of rows, interleaved: (r0_0 r1_0 r0_1 r1_1 | r0_4 ...)
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {  // rows 4i..4i+3 of columns (c | c + 4), c = 0..3
    r[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int j = 0; j < 4; ++j) {  // the 128-bit halves of rows 0-3 and 4-7 joined
    t[j] = _mm256_permute2f128_ps(r[j], r[4 + j], 0x20);
    t[4 + j] = _mm256_permute2f128_ps(r[j], r[4 + j], 0x31);
  }
  for (int j = 0; j < 8; ++j) r[j] = t[j];
}
#endif

/// dst[c * ldd + r] = src(r0 + r, c0 + c) for r < rows, c < cols: a transposed block, read
/// through `src` (widened / dequantised). Used for [out, in] weight strips (rows = output
/// columns of the strip, cols = k; ldd = kNR) and for transposed activations (ldd = kc).
template <class E>
inline void transpose_block(const RowReader<E>& src, std::size_t r0, std::size_t rows,
                            std::size_t c0, std::size_t cols, float* dst,
                            std::size_t ldd) noexcept {
  std::size_t r = 0;
#if defined(MOE_MATMUL_TRANSPOSE)
  // kLanes x kLanes blocks transposed in registers (16 x 16 or 8 x 8), the column tail by element.
  constexpr std::size_t L = simd::kLanes;
  for (; r + L <= rows; r += L) {
    std::size_t c = 0;
    for (; c + L <= cols; c += L) {
      fbatch::register_type v[L];
      for (std::size_t i = 0; i < L; ++i) v[i] = src.row(r0 + r + i, c0 + c);
#if MOE_MATMUL_AVX512
      transpose16(v);
#else
      transpose8(v);
#endif
      for (std::size_t i = 0; i < L; ++i) simd::store(dst + (c + i) * ldd + r, fbatch(v[i]));
    }
    for (; c < cols; ++c) {
      for (std::size_t i = 0; i < L; ++i) dst[c * ldd + r + i] = src.at(r0 + r + i, c0 + c);
    }
  }
#endif
  for (; r < rows; ++r) {
    for (std::size_t c = 0; c < cols; ++c) dst[c * ldd + r] = src.at(r0 + r, c0 + c);
  }
}

/// Packs W(k, c), k < kc, c < cols, of a weight stored [in, out] (w at W(0, 0), row stride ldw;
/// when kScaled, times the column scales s[c], one row of them for all kc rows) as consecutive
/// kc x kNR strips: columns [j * kNR, (j + 1) * kNR) at bp + j * strip_floats, zeros past `cols`.
/// Each weight row's `cols` columns are read together, and row k + pf_rows is prefetched into L1
/// while row k is packed (0: no prefetch; only rows below kc).
template <bool kScaled, class E>
inline void pack_strips_inout(std::size_t kc, const E* w, std::size_t ldw, const bf16* s,
                              std::size_t cols, float* bp, std::size_t strip_floats,
                              std::size_t pf_rows) noexcept {
  constexpr std::size_t L = simd::kLanes;
  const std::size_t strips = (cols + kNR - 1) / kNR;
  const std::uintptr_t pf_offset = pf_rows * ldw * sizeof(E);
  for (std::size_t k = 0; k < kc; ++k) {
    const E* wr = w + k * ldw;
    if (pf_rows != 0 && k + pf_rows < kc) prefetch_ahead(wr, pf_offset, cols * sizeof(E));
    for (std::size_t j = 0; j < strips; ++j) {
      float* dst = bp + j * strip_floats + k * kNR;
      for (std::size_t v = 0; v < kNV; ++v) {
        const std::size_t c = j * kNR + v * L;
        const std::size_t n = strip_lanes(cols, c / L);
        fbatch wv(0.0f);
        if (n == L) {
          wv = load_w<false>(wr + c, L);
          if constexpr (kScaled) wv = wv * load_w<false>(s + c, L);
        } else if (n != 0) {
          wv = load_w<true>(wr + c, n);
          if constexpr (kScaled) wv = wv * load_w<true>(s + c, n);
        }
        simd::store(dst + v * L, wv);
      }
    }
  }
}

/// Packs the strip W(k0 + k, n0 + c), k < kc, c < cols (<= kNR) of a weight stored [out, in]
/// (`src` row = output column) into `bp` (kc x kNR, zero columns past `cols`).
template <class E>
inline void pack_strip_outin(const RowReader<E>& src, std::size_t n0, std::size_t cols,
                             std::size_t k0, std::size_t kc, float* bp) noexcept {
  transpose_block(src, n0, cols, k0, kc, bp, kNR);
  if (cols < kNR) {
    for (std::size_t k = 0; k < kc; ++k) {
      for (std::size_t c = cols; c < kNR; ++c) bp[k * kNR + c] = 0.0f;
    }
  }
}

/// d[t][n] = s[t][n] for t < rows, n < cols.
inline void copy_tile(const float* s, std::size_t lds, float* d, std::size_t ldd, std::size_t rows,
                      std::size_t cols) noexcept {
  for (std::size_t t = 0; t < rows; ++t) {
    const float* sr = s + t * lds;
    float* dr = d + t * ldd;
    std::size_t n = 0;
    for (; n + simd::kLanes <= cols; n += simd::kLanes) simd::store(dr + n, simd::load(sr + n));
    if (n < cols) simd::store_partial(dr + n, simd::load_partial(sr + n, cols - n), cols - n);
  }
}

/// y[t][n] += p[t][n] for t < rows, n < cols.
inline void add_tile(float* y, std::size_t ldy, const float* p, std::size_t ldp, std::size_t rows,
                     std::size_t cols) noexcept {
  for (std::size_t t = 0; t < rows; ++t) {
    float* yr = y + t * ldy;
    const float* pr = p + t * ldp;
    std::size_t n = 0;
    for (; n + simd::kLanes <= cols; n += simd::kLanes)
      simd::store(yr + n, simd::load(yr + n) + simd::load(pr + n));
    if (n < cols) {
      const std::size_t m = cols - n;
      simd::store_partial(yr + n, simd::load_partial(yr + n, m) + simd::load_partial(pr + n, m), m);
    }
  }
}

MOE_SIMD_DETAIL_END
