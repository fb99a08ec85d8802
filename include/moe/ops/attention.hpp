// moe/ops/attention.hpp: the attention core, forward and backward, one KV head at a time.
//
// For query head h of KV group g (g = h / group, group = Hq / Hkv) and query row t at position
// p_t, over the key and value rows j = lo_t .. p_t (causal; lo_t = 0, or with a sliding window of
// w positions lo_t = max(0, p_t - w + 1): key j is visible iff p_t - w < j <= p_t, as Mistral's
// and Hugging Face's sliding-window masks):
//
//   z_j = scale * (q_t,h . k_j)                           scale: the logit multiplier
//   c_j = cap * tanh(z_j / cap)  when cap > 0, else z_j    the logit soft-cap (Grok-1: 30)
//   w   = softmax(c)     o_t,h = sum_j w_j v_j     lse_t,h = log sum_j exp(c_j)
//
// Backward, given do = dL/do_t,h. The weights are recomputed from q, k and the saved lse
// (w_j = exp(c_j - lse), as in FlashAttention's backward pass, Dao et al. 2022, arXiv:2205.14135):
//
//   dw_j = do . v_j     dc_j = w_j (dw_j - do . o_t,h)      (sum_j w_j dw_j = do . o: softmax')
//   dz_j = dc_j (1 - (c_j / cap)^2)  when cap > 0           (tanh' = 1 - tanh^2)
//   dq_t,h += scale sum_j dz_j k_j     dk_j += scale dz_j q_t,h     dv_j += w_j do
//
// Keys and values are rows of head_dim elements with a row stride (KvRows): one KV head of a
// KvCache ([position][head_dim], stride head_dim) or one head's columns of a [T, Hkv*dh]
// projection (stride Hkv*dh). Their element type is f32 or bf16 (widened exactly).
//
// Kernels: when head_dim is a multiple of the SIMD width (every real model), the scores of kLanes
// keys come from kLanes independent accumulators and one transposing reduction (dot_rows_tiled),
// and the weighted value sum keeps up to 8 batches of the output head in registers for a whole
// tile of keys (axpy_rows_tiled). Otherwise the scalar-order twins run: moe::dot and moe::axpy per
// row (bf16 rows widened into a scratch tile first). Every summation order depends on the shapes
// only, so results are a function of the inputs for any thread count.
//
// The backward takes the queries in blocks of up to kAttentionBackwardRows rows: it computes the
// score gradients of a block's rows (and their dq) first, then adds the block's dk and dv key by
// key, two keys at a time, each key's terms in query order and the heads in order within a query
// (add_block_keys). That is the same chain of FMAs per element as adding them one query at a
// time, so the results do not depend on the block size (tested bit for bit), while each key's
// gradient rows stay in registers for a whole block instead of being loaded and stored once per
// query (1.3x on the backward of a 256-token sequence with head_dim 32 on Zen 3). With 4 or more
// query heads per KV head its dot products (q . k_j, do . v_j) run on tiles of keys and values
// transposed, the keys in the SIMD lanes: each key vector serves 4 heads and no horizontal sums
// are needed (dot_heads_transposed; 1.15x more). Their summation order (over the head dimension,
// in order) differs from the forward's, which changes the recomputed weights by rounding only.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include <moe/config.hpp>
#include <moe/core/arena.hpp>
#include <moe/core/bf16.hpp>
#include <moe/core/dispatch.hpp>
#include <moe/core/tensor.hpp>
#include <moe/ops/softmax.hpp>
#include <moe/ops/vector.hpp>
#include <moe/simd/simd.hpp>

namespace moe {

/// Shape and logit transform of an attention core.
struct AttentionCore {
  std::size_t n_q_heads = 0;   ///< Hq
  std::size_t n_kv_heads = 0;  ///< Hkv (divides Hq)
  std::size_t head_dim = 0;    ///< dh
  float scale = 1.0f;          ///< logit multiplier
  float cap = 0.0f;            ///< soft-cap (0 = off)
  std::size_t window = 0;      ///< sliding window in positions (0 = plain causal)

  [[nodiscard]] std::size_t group() const noexcept { return n_q_heads / n_kv_heads; }
  [[nodiscard]] std::size_t q_dim() const noexcept { return n_q_heads * head_dim; }
  /// The first key a query at position p sees.
  [[nodiscard]] std::size_t first_key(std::size_t p) const noexcept {
    return window != 0 && p + 1 > window ? p + 1 - window : 0;
  }
};

/// The key and value rows of one KV head: row j at keys + j * stride (values likewise).
template <class KV>
struct KvRows {
  const KV* keys = nullptr;
  const KV* values = nullptr;
  std::size_t stride = 0;
};

/// Keys / values per tile of the score and value loops.
inline constexpr std::size_t kAttentionTile = 64;

/// Bytes of scratch attend_causal() needs for `tokens` query rows at a context of `context`
/// positions (the scores of every query head of the group, plus one widening tile).
[[nodiscard]] inline std::size_t attend_scratch_bytes(const AttentionCore& c, std::size_t tokens,
                                                      std::size_t context) noexcept {
  return Arena::round_up(tokens * c.group() * context * sizeof(float)) +
         Arena::round_up(kAttentionTile * c.head_dim * sizeof(float));
}

/// Query rows per block of attend_causal_backward at most (see the file comment).
inline constexpr std::size_t kAttentionBackwardRows = 16;

/// Floats of one score-gradient row of attend_causal_backward (and of one row of its transposed
/// keys and values): T floats and the up to 31 past them that a query's last key vectors reach,
/// rounded up to whole cache lines, plus one line, so that the rows of a block (read down a
/// column, key by key) do not all map to the same few L1 sets.
[[nodiscard]] inline std::size_t attend_backward_row_floats(std::size_t seq_len) noexcept {
  return (Arena::round_up((seq_len + 31) * sizeof(float)) + Arena::kAlignment) / sizeof(float);
}

/// Floats of one row of attend_causal_backward's transposed key (or value) tile: kAttentionTile
/// keys, the up to 31 past them that a query's last key vectors reach, and one cache line.
inline constexpr std::size_t kTransposedTileFloats = kAttentionTile + 32 + 16;

/// Bytes of scratch attend_causal_backward() needs for a sequence of T tokens in blocks of
/// `block_rows` query rows: two score-gradient rows per query head of a KV group and query row,
/// and one tile of keys and one of values transposed (head_dim rows each).
[[nodiscard]] inline std::size_t attend_backward_scratch_bytes(
    const AttentionCore& c, std::size_t seq_len,
    std::size_t block_rows = kAttentionBackwardRows) noexcept {
  return (2 * block_rows * c.group() * attend_backward_row_floats(seq_len) +
          2 * c.head_dim * kTransposedTileFloats) *
         sizeof(float);
}

/// The largest block (at most kAttentionBackwardRows rows, at least 1) whose scratch fits in
/// `scratch_bytes`.
[[nodiscard]] inline std::size_t attend_backward_block_rows(const AttentionCore& c,
                                                            std::size_t seq_len,
                                                            std::size_t scratch_bytes) noexcept {
  const std::size_t one = attend_backward_scratch_bytes(c, seq_len, 1);
  const std::size_t per_row = attend_backward_scratch_bytes(c, seq_len, 2) - one;
  const std::size_t fit =
      scratch_bytes > one && per_row > 0 ? 1 + (scratch_bytes - one) / per_row : 1;
  return std::min(fit, kAttentionBackwardRows);
}

}  // namespace moe

// GCC 12 warns about the _mm512_undefined_* merge sources of some AVX-512 intrinsics (GCC bug
// 105593): silenced for the kernels below.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

MOE_SIMD_DETAIL_BEGIN

// The register-level pieces below are forced inline: GCC otherwise keeps dot_lanes out of line in
// some callers, which costs the bf16 decode path ~10% (measured).
//
// Two register-level primitives the tiled kernels need and simd/simd.hpp does not offer yet. They
// are written with intrinsics because the portable forms cost the kernels their speed: xsimd 8.1's
// AVX-512 haddp returns its sums in a permuted lane order and needs AVX512DQ, and widening bf16
// through memory adds a store and a reload per element.

/// The sums of kLanes batches as one batch: lane j = sum of the lanes of acc[j].
[[gnu::always_inline]] inline simd::fbatch reduce_lanes(const simd::fbatch* acc) noexcept {
#if XSIMD_WITH_AVX512F
  // Transposing reduction in four levels, AVX512F only.
  __m512 x[8], y[4], z[2];
  for (int i = 0; i < 8; ++i) {  // per 128-bit quarter: [a0+a2, b0+b2, a1+a3, b1+b3]
    const __m512 a = acc[2 * i], b = acc[2 * i + 1];
    x[i] = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  }
  for (int i = 0; i < 4; ++i) {  // per quarter: partial sums of rows 4i .. 4i+3
    y[i] = _mm512_add_ps(_mm512_shuffle_ps(x[2 * i], x[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(x[2 * i], x[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  for (int i = 0; i < 2; ++i) {  // quarters (q0+q1, q2+q3) of two row groups
    z[i] = _mm512_add_ps(_mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  }
  return _mm512_add_ps(_mm512_shuffle_f32x4(z[0], z[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(z[0], z[1], _MM_SHUFFLE(3, 1, 3, 1)));
#else
  return xsimd::haddp(acc);
#endif
}

/// kLanes elements of a key or value row as floats: f32 loaded, bf16 widened exactly.
template <class KV>
[[gnu::always_inline]] inline simd::fbatch load_row(const KV* p) noexcept {
  if constexpr (std::is_same_v<KV, float>) {
    return simd::load(p);
  } else {
#if XSIMD_WITH_AVX512F
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
#elif XSIMD_WITH_AVX2
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
#else
    alignas(64) float buf[simd::kLanes];
    bf16_to_f32(p, buf, simd::kLanes);
    return simd::fbatch::load_aligned(buf);
#endif
  }
}

template <class KV, std::size_t... J>
[[gnu::always_inline]] inline simd::fbatch dot_lanes(const float* q, const KV* k,
                                                     std::size_t stride, std::size_t dh,
                                                     std::index_sequence<J...>) noexcept {
  simd::fbatch acc[simd::kLanes] = {(static_cast<void>(J), simd::fbatch(0.0f))...};
  for (std::size_t c = 0; c < dh; c += simd::kLanes) {
    const simd::fbatch qv = simd::load(q + c);
    ((acc[J] = simd::fma(qv, load_row(k + J * stride + c), acc[J])), ...);
  }
  return reduce_lanes(acc);
}

/// out[j] = q . k_j for j < n (row j at k + j * stride). Needs dh % kLanes == 0. Full groups of
/// kLanes keys use kLanes independent accumulators and one transposing reduction.
template <class KV>
inline void dot_rows_tiled(const float* q, const KV* k, std::size_t stride, std::size_t n,
                           std::size_t dh, float* out) noexcept {
  std::size_t j = 0;
  for (; j + simd::kLanes <= n; j += simd::kLanes) {
    simd::store(out + j,
                dot_lanes(q, k + j * stride, stride, dh, std::make_index_sequence<simd::kLanes>{}));
  }
  for (; j < n; ++j) {  // the last < kLanes keys, one at a time (same order for f32 and bf16)
    const KV* kj = k + j * stride;
    simd::fbatch acc(0.0f);
    for (std::size_t c = 0; c < dh; c += simd::kLanes) {
      acc = simd::fma(simd::load(q + c), load_row(kj + c), acc);
    }
    out[j] = simd::reduce_add(acc);
  }
}

template <std::size_t NB, class KV>
[[gnu::always_inline]] inline void axpy_rows_block(const float* w, const KV* v, std::size_t stride,
                                                   std::size_t n, float* o) noexcept {
  simd::fbatch acc[NB];
  for (std::size_t b = 0; b < NB; ++b) acc[b] = simd::load(o + b * simd::kLanes);
  for (std::size_t j = 0; j < n; ++j) {
    const simd::fbatch wj(w[j]);
    const KV* vr = v + j * stride;
    for (std::size_t b = 0; b < NB; ++b) {
      acc[b] = simd::fma(wj, load_row(vr + b * simd::kLanes), acc[b]);
    }
  }
  for (std::size_t b = 0; b < NB; ++b) simd::store(o + b * simd::kLanes, acc[b]);
}

/// o[0..dh) += sum_j w[j] v_j over n rows (row j at v + j * stride), keeping up to 8 batches of o
/// in registers for the whole pass over the rows. Needs dh % kLanes == 0.
template <class KV>
inline void axpy_rows_tiled(const float* w, const KV* v, std::size_t stride, std::size_t n,
                            std::size_t dh, float* o) noexcept {
  for (std::size_t c0 = 0; c0 < dh; c0 += 8 * simd::kLanes) {
    dispatch_count<8>((dh - c0) / simd::kLanes, [&](auto nb) {
      axpy_rows_block<decltype(nb)::value>(w, v + c0, stride, n, o + c0);
    });
  }
}

/// The scalar-order twin of dot_rows_tiled (f32 rows): out[j] = dot(q, k_j).
inline void dot_rows_simple(const float* q, const float* k, std::size_t stride, std::size_t n,
                            std::size_t dh, float* out) noexcept {
  for (std::size_t j = 0; j < n; ++j) out[j] = dot(q, k + j * stride, dh);
}

/// The scalar-order twin of axpy_rows_tiled (f32 rows): o += w[j] v_j, one row at a time.
inline void axpy_rows_simple(const float* w, const float* v, std::size_t stride, std::size_t n,
                             std::size_t dh, float* o) noexcept {
  for (std::size_t j = 0; j < n; ++j) axpy(w[j], v + j * stride, o, dh);
}

/// Rows [j0, j1) of a KV head as f32 rows: a pointer into the rows themselves (f32; row stride
/// `stride`) or into `tile` after widening (bf16; row stride dh). Returns the pointer and sets
/// `tile_stride`.
template <class KV>
inline const float* rows_as_f32(const KV* base, std::size_t stride, std::size_t j0, std::size_t j1,
                                std::size_t dh, float* tile, std::size_t& tile_stride) noexcept {
  if constexpr (std::is_same_v<KV, float>) {
    (void)j1;
    (void)dh;
    (void)tile;
    tile_stride = stride;
    return base + j0 * stride;
  } else {
    for (std::size_t j = j0; j < j1; ++j) bf16_to_f32(base + j * stride, tile + (j - j0) * dh, dh);
    tile_stride = dh;
    return tile;
  }
}

/// c = cap(scale * z) over n scores in place.
inline void attention_logits(float* s, std::size_t n, float scale, float cap) noexcept {
  scale_softcap(s, n, scale, cap);
}

MOE_SIMD_DETAIL_END

MOE_SIMD_NAMESPACE_BEGIN

/// The forward core for query rows [t0, t1) of q / o ([T, Hq*dh]; row t at position pos0 + t) and
/// the query heads of KV group g, over the rows [c.first_key(pos0 + t), pos0 + t + 1) of `kv`
/// (causal, within the sliding window if any). `scratch`
/// holds attend_scratch_bytes(c, t1 - t0, pos0 + t1) bytes (64-byte aligned). When `lse` is not
/// null, lse[t * lse_stride + h] receives log sum_j exp(c_j) for backward.
template <class KV>
void attend_causal(const AttentionCore& c, MatrixView<const float> q, MatrixView<float> o,
                   const KvRows<KV>& kv, std::size_t g, std::size_t t0, std::size_t t1,
                   std::size_t pos0, float* scratch, float* lse = nullptr,
                   std::size_t lse_stride = 0) noexcept {
  const std::size_t dh = c.head_dim, group = c.group();
  const bool tiled = dh % simd::kLanes == 0;
  const std::size_t ls = pos0 + t1;  // score row stride: the longest context in the block
  const std::size_t n_rows = (t1 - t0) * group;
  float* scores = scratch;  // [n_rows, ls], row (t - t0) * group + hi
  float* tile = scratch + Arena::round_up(n_rows * ls * sizeof(float)) / sizeof(float);
  const auto score_row = [&](std::size_t t, std::size_t hi) {
    return scores + ((t - t0) * group + hi) * ls;
  };

  // 1. scores s[t, hi, j] = q[t, h] . k_j for lo_t <= j < pos0 + t + 1, one pass over the keys
  //    (tiles wholly before the window are not widened).
  const std::size_t j_first = c.first_key(pos0 + t0);
  for (std::size_t j0 = j_first / kAttentionTile * kAttentionTile; j0 < ls; j0 += kAttentionTile) {
    const std::size_t j1 = std::min(ls, j0 + kAttentionTile);
    std::size_t ts = 0;
    const float* kt =
        tiled ? nullptr : detail::rows_as_f32(kv.keys, kv.stride, j0, j1, dh, tile, ts);
    for (std::size_t t = t0; t < t1; ++t) {
      const std::size_t js = std::max(j0, c.first_key(pos0 + t));
      const std::size_t je = std::min(j1, pos0 + t + 1);
      if (je <= js) continue;
      for (std::size_t hi = 0; hi < group; ++hi) {
        const float* qh = q.row(t) + (g * group + hi) * dh;
        float* s = score_row(t, hi);
        if (tiled) {  // straight from the rows (bf16 widened in registers)
          detail::dot_rows_tiled(qh, kv.keys + js * kv.stride, kv.stride, je - js, dh, s + js);
        } else {
          detail::dot_rows_simple(qh, kt + (js - j0) * ts, ts, je - js, dh, s + js);
        }
      }
    }
  }
  // 2. multiplier, soft-cap, softmax per row over its own visible keys.
  for (std::size_t t = t0; t < t1; ++t) {
    const std::size_t lo = c.first_key(pos0 + t), len = pos0 + t + 1 - lo;
    for (std::size_t hi = 0; hi < group; ++hi) {
      float* s = score_row(t, hi) + lo;
      detail::attention_logits(s, len, c.scale, c.cap);
      if (lse) lse[t * lse_stride + g * group + hi] = logsumexp(s, len);
      softmax(s, len);
    }
  }
  // 3. o[t, h] = sum_j w[t, hi, j] v_j, one pass over the values.
  for (std::size_t t = t0; t < t1; ++t) {
    for (std::size_t hi = 0; hi < group; ++hi) fill(o.row(t) + (g * group + hi) * dh, dh, 0.0f);
  }
  for (std::size_t j0 = j_first / kAttentionTile * kAttentionTile; j0 < ls; j0 += kAttentionTile) {
    const std::size_t j1 = std::min(ls, j0 + kAttentionTile);
    std::size_t ts = 0;
    const float* vt =
        tiled ? nullptr : detail::rows_as_f32(kv.values, kv.stride, j0, j1, dh, tile, ts);
    for (std::size_t t = t0; t < t1; ++t) {
      const std::size_t js = std::max(j0, c.first_key(pos0 + t));
      const std::size_t je = std::min(j1, pos0 + t + 1);
      if (je <= js) continue;
      for (std::size_t hi = 0; hi < group; ++hi) {
        float* oh = o.row(t) + (g * group + hi) * dh;
        const float* w = score_row(t, hi) + js;
        if (tiled) {
          detail::axpy_rows_tiled(w, kv.values + js * kv.stride, kv.stride, je - js, dh, oh);
        } else {
          detail::axpy_rows_simple(w, vt + (js - j0) * ts, ts, je - js, dh, oh);
        }
      }
    }
  }
}

MOE_SIMD_NAMESPACE_END

MOE_SIMD_DETAIL_BEGIN

/// One query row and head of attend_causal_backward, given s_j = q . k_j in ds and dw_j = do . v_j
/// in dw for the len keys: with z_j = scale s_j (soft-capped), w_j = exp(z_j - lse),
/// D = do . o, overwrites them with ds[j] = scale dL/dz_j and dw[j] = w_j.
inline void score_grads(const AttentionCore& c, const float* oh, const float* doh, std::size_t len,
                        float lse, float* ds, float* dw) noexcept {
  const std::size_t dh = c.head_dim;
  const simd::fbatch scale(c.scale), cap(c.cap), inv_cap(c.cap > 0 ? 1.0f / c.cap : 0.0f);
  const bool capped = c.cap > 0.0f;
  const simd::fbatch big_d(dot(doh, oh, dh));
  const simd::fbatch l(lse);
  for (std::size_t j = 0; j < len; j += simd::kLanes) {
    const std::size_t n = std::min(simd::kLanes, len - j);
    simd::fbatch z = simd::load_n(ds + j, n) * scale;
    simd::fbatch factor(1.0f);
    if (capped) {
      const simd::fbatch th = simd::tanh(z * inv_cap);
      z = cap * th;
      factor = simd::fnma(th, th, simd::fbatch(1.0f));
    }
    const simd::fbatch w = simd::exp(z - l);
    const simd::fbatch dz = w * (simd::load_n(dw + j, n) - big_d) * factor;
    simd::store_n(ds + j, dz * scale, n);
    simd::store_n(dw + j, w, n);
  }
}

/// Rows [0, n) of a KV head transposed: t[d * ld + j] = rows[j * stride + d] for d < dh, and
/// zeros in the columns [n, width) (read by the last, partial key vectors of dots_transposed).
inline void transpose_rows(const float* rows, std::size_t stride, std::size_t n, std::size_t dh,
                           float* t, std::size_t ld, std::size_t width) noexcept {
  for (std::size_t d = 0; d < dh; ++d) {
    float* td = t + d * ld;
    for (std::size_t j = 0; j < n; ++j) td[j] = rows[j * stride + d];
    for (std::size_t j = n; j < width; ++j) td[j] = 0.0f;
  }
}

/// s[h * ls + j] = x_h . k_j for NH heads (x_h = x + h * dh) and the NJ * kLanes keys
/// j = j0, j0 + 1, ... of a transposed KV head (k_j[d] = kt[d * ld + j]): one FMA chain per score
/// over d in order, the keys in the lanes, so no horizontal sums; each key vector is loaded once
/// for the NH heads.
template <std::size_t NH, std::size_t NJ>
[[gnu::always_inline]] inline void dots_transposed(const float* x, std::size_t dh, const float* kt,
                                                   std::size_t ld, std::size_t j0, float* s,
                                                   std::size_t ls) noexcept {
  constexpr std::size_t L = simd::kLanes;
  simd::fbatch acc[NH][NJ];
  for (std::size_t h = 0; h < NH; ++h) {
    for (std::size_t v = 0; v < NJ; ++v) acc[h][v] = simd::fbatch(0.0f);
  }
  for (std::size_t d = 0; d < dh; ++d) {
    simd::fbatch kv[NJ];
    for (std::size_t v = 0; v < NJ; ++v) kv[v] = simd::load(kt + d * ld + j0 + v * L);
    for (std::size_t h = 0; h < NH; ++h) {
      const simd::fbatch b(x[h * dh + d]);
      for (std::size_t v = 0; v < NJ; ++v) acc[h][v] = simd::fma(b, kv[v], acc[h][v]);
    }
  }
  for (std::size_t h = 0; h < NH; ++h) {
    for (std::size_t v = 0; v < NJ; ++v) simd::store(s + h * ls + j0 + v * L, acc[h][v]);
  }
}

/// Heads per dots_transposed call and key vectors per step: 4 x 2 accumulators, 2 key vectors
/// and a broadcast fit 16 registers.
inline constexpr std::size_t kDotHeads = 4;
inline constexpr std::size_t kDotKeyVectors = 2;
static_assert(kDotKeyVectors * simd::kLanes <= 32,
              "attend_backward_row_floats and kTransposedTileFloats leave room for 31 keys past "
              "the last one a step starts on");

/// s[h * ls + j] = x_h . k_j for heads h < n_heads and keys j in [lo, hi) (rounded up to whole key
/// vectors: up to kDotKeyVectors * kLanes - 1 scores past hi are written too; kt's columns
/// must reach that far).
inline void dot_heads_transposed(const float* x, std::size_t n_heads, std::size_t dh,
                                 const float* kt, std::size_t ld, std::size_t lo, std::size_t hi,
                                 float* s, std::size_t ls) noexcept {
  constexpr std::size_t L = simd::kLanes, kStep = kDotKeyVectors * L;
  for (std::size_t h0 = 0; h0 < n_heads; h0 += kDotHeads) {
    const float* xh = x + h0 * dh;
    float* sh = s + h0 * ls;
    for (std::size_t j = lo; j < hi; j += kStep) {
      dispatch_count<kDotHeads>(n_heads - h0, [&](auto nh) {
        dots_transposed<decltype(nh)::value, kDotKeyVectors>(xh, dh, kt, ld, j, sh, ls);
      });
    }
  }
}

/// y[0, dh) += sum_{hi < group} a[hi * a_stride] * x[hi * dh .. hi * dh + dh), the heads in order
/// (each element the same chain of FMAs as group successive axpy calls), y loaded and stored once.
inline void add_group_rows(const float* a, std::size_t a_stride, const float* x, std::size_t dh,
                           std::size_t group, float* y) noexcept {
  std::size_t c = 0;
  for (; c + simd::kLanes <= dh; c += simd::kLanes) {
    simd::fbatch acc = simd::load(y + c);
    for (std::size_t hi = 0; hi < group; ++hi) {
      acc = simd::fma(simd::fbatch(a[hi * a_stride]), simd::load(x + hi * dh + c), acc);
    }
    simd::store(y + c, acc);
  }
  if (c < dh) {
    const std::size_t n = dh - c;
    simd::fbatch acc = simd::load_n(y + c, n);
    for (std::size_t hi = 0; hi < group; ++hi) {
      acc = simd::fma(simd::fbatch(a[hi * a_stride]), simd::load_n(x + hi * dh + c, n), acc);
    }
    simd::store_n(y + c, acc, n);
  }
}

/// y_k[0, NV * kLanes) += sum_{t < nt} sum_{hi < group} a[t * a_t + hi * a_h + k] x_t,hi for NK
/// consecutive key rows y_k = y + k * ldy, with x_t,hi = x + t * x_t + hi * dh: the queries in
/// order and the heads in order within a query (the chain of successive add_group_rows calls).
/// The key rows stay in registers for all nt queries.
template <std::size_t NK, std::size_t NV>
[[gnu::always_inline]] inline void add_key_rows(const float* a, std::size_t a_t, std::size_t a_h,
                                                const float* x, std::size_t x_t, std::size_t dh,
                                                std::size_t group, std::size_t nt, float* y,
                                                std::size_t ldy) noexcept {
  constexpr std::size_t L = simd::kLanes;
  simd::fbatch acc[NK][NV];
  for (std::size_t k = 0; k < NK; ++k) {
    for (std::size_t v = 0; v < NV; ++v) acc[k][v] = simd::load(y + k * ldy + v * L);
  }
  for (std::size_t t = 0; t < nt; ++t) {
    for (std::size_t hi = 0; hi < group; ++hi) {
      const float* xr = x + t * x_t + hi * dh;
      const float* ar = a + t * a_t + hi * a_h;
      simd::fbatch xv[NV];
      for (std::size_t v = 0; v < NV; ++v) xv[v] = simd::load(xr + v * L);
      for (std::size_t k = 0; k < NK; ++k) {
        const simd::fbatch b(ar[k]);
        for (std::size_t v = 0; v < NV; ++v) acc[k][v] = simd::fma(b, xv[v], acc[k][v]);
      }
    }
  }
  for (std::size_t k = 0; k < NK; ++k) {
    for (std::size_t v = 0; v < NV; ++v) simd::store(y + k * ldy + v * L, acc[k][v]);
  }
}

/// Widest vector count per add_key_rows call: NK x NV accumulators, NV x rows and a broadcast
/// fit the registers for two keys (2 x 4 + 4 + 1 <= 16).
inline constexpr std::size_t kKeyRowVectors = 4;

/// add_key_rows for nv (1..kKeyRowVectors) vectors chosen at run time; nothing when nt == 0.
template <std::size_t NK>
inline void add_key_rows_nv(std::size_t nv, const float* a, std::size_t a_t, std::size_t a_h,
                            const float* x, std::size_t x_t, std::size_t dh, std::size_t group,
                            std::size_t nt, float* y, std::size_t ldy) noexcept {
  if (nt == 0) return;
  dispatch_count<kKeyRowVectors>(nv, [&](auto v) {
    add_key_rows<NK, decltype(v)::value>(a, a_t, a_h, x, x_t, dh, group, nt, y, ldy);
  });
}

/// For the query rows [t0, t1) of a block and the keys [j0, t1): key row j of y (y + j * ldy)
/// += sum over the queries t of the block that see key j, and the heads hi, of a(t, hi, j) x_t,hi;
/// a(t, hi, j) = a[((t - t0) * group + hi) * ar + j] (rows indexed by the absolute key),
/// x_t,hi = x + t * ldx + hi * dh. Keys two at a time: the first alone while the second is not
/// visible yet, both together, the second alone after the first left the window; so every key
/// gets its terms in query order. Needs dh % kLanes == 0.
inline void add_block_keys(const AttentionCore& c, const float* a, std::size_t ar, const float* x,
                           std::size_t ldx, std::size_t t0, std::size_t t1, std::size_t j0,
                           float* y, std::size_t ldy) noexcept {
  constexpr std::size_t L = simd::kLanes;
  const std::size_t dh = c.head_dim, group = c.group(), a_t = group * ar;
  // The queries of the block that see key j: [first(j), last(j)).
  const auto first = [t0](std::size_t j) { return std::max(t0, j); };
  const auto last = [&c, t1](std::size_t j) {
    return c.window != 0 ? std::min(t1, j + c.window) : t1;
  };
  for (std::size_t col = 0; col < dh; col += kKeyRowVectors * L) {
    const std::size_t nv = std::min(kKeyRowVectors, (dh - col) / L);
    const auto keys = [&]<std::size_t NK>(std::size_t j, std::size_t ta, std::size_t tb) {
      if (tb > ta) {
        add_key_rows_nv<NK>(nv, a + (ta - t0) * a_t + j, a_t, ar, x + ta * ldx + col, ldx, dh,
                            group, tb - ta, y + j * ldy + col, ldy);
      }
    };
    std::size_t j = j0;
    for (; j + 2 <= t1; j += 2) {
      const std::size_t both = std::max(first(j), first(j + 1));
      const std::size_t end = std::min(last(j), last(j + 1));
      if (end <= both) {  // no query sees both keys (a window of 1)
        keys.template operator()<1>(j, first(j), last(j));
        keys.template operator()<1>(j + 1, first(j + 1), last(j + 1));
        continue;
      }
      keys.template operator()<1>(j, first(j), both);
      keys.template operator()<2>(j, both, end);
      keys.template operator()<1>(j + 1, end, last(j + 1));
    }
    if (j < t1) keys.template operator()<1>(j, first(j), last(j));
  }
}

/// attend_causal_backward's dot products for the query rows [t0, t1) of a block, the group's
/// heads at once: s_j = q_t,hi . k_j into ds and do_t,hi . v_j into dw (row (t - t0) * group + hi
/// at ds + that * row, indexed by the absolute key), for the keys each row sees, tile by tile of
/// kAttentionTile keys and values transposed into kt / vt (dh x kTransposedTileFloats each).
/// q_g / do_g: the group's heads of query row 0 (row strides ldq / ldo).
inline void block_dots_transposed(const AttentionCore& c, const float* q_g, std::size_t ldq,
                                  const float* do_g, std::size_t ldo, const KvRows<float>& kv,
                                  std::size_t t0, std::size_t t1, float* ds, float* dw,
                                  std::size_t row, float* kt, float* vt) noexcept {
  const std::size_t dh = c.head_dim, group = c.group(), n_rows = group * row;
  const std::size_t ldt = kTransposedTileFloats;
  const std::size_t j_lo = c.first_key(t0);
  for (std::size_t jt = j_lo / kAttentionTile * kAttentionTile; jt < t1; jt += kAttentionTile) {
    // The block's keys of this tile, [ja, jb), at columns ja - jt ...
    const std::size_t ja = std::max(jt, j_lo), jb = std::min(jt + kAttentionTile, t1);
    const std::size_t off = ja - jt;
    transpose_rows(kv.keys + ja * kv.stride, kv.stride, jb - ja, dh, kt + off, ldt, ldt - off);
    transpose_rows(kv.values + ja * kv.stride, kv.stride, jb - ja, dh, vt + off, ldt, ldt - off);
    for (std::size_t t = std::max(t0, jt); t < t1; ++t) {
      const std::size_t a = std::max(c.first_key(t), jt), b = std::min(t + 1, jb);
      if (b <= a) continue;
      const std::size_t r = (t - t0) * n_rows + jt;
      dot_heads_transposed(q_g + t * ldq, group, dh, kt, ldt, a - jt, b - jt, ds + r, row);
      dot_heads_transposed(do_g + t * ldo, group, dh, vt, ldt, a - jt, b - jt, dw + r, row);
    }
  }
}

MOE_SIMD_DETAIL_END

MOE_SIMD_NAMESPACE_BEGIN

/// Where attend_causal_backward() adds the key and value gradients of one KV head: row j at
/// keys + j * stride (values likewise).
struct KvGradRows {
  float* keys = nullptr;
  float* values = nullptr;
  std::size_t stride = 0;
};

/// Backward of attend_causal over one whole sequence (query row t at position t, t < T =
/// q.rows; keys [c.first_key(t), t]) for the query heads of KV group g: dq (same layout as q, this
/// group's columns) += ..., dkv rows [0, T) += ... (see the file comment). q, o, d_o: [T, Hq*dh];
/// lse: the forward's, lse[t * lse_stride + h]. scratch: attend_backward_scratch_bytes(c, T,
/// block_rows) bytes; the results are the same for every block_rows. Keys and values are f32
/// (training keeps them in f32).
inline void attend_causal_backward(const AttentionCore& c, MatrixView<const float> q,
                                   MatrixView<const float> o, MatrixView<const float> d_o,
                                   const float* lse, std::size_t lse_stride,
                                   const KvRows<float>& kv, MatrixView<float> dq,
                                   const KvGradRows& dkv, std::size_t g, float* scratch,
                                   std::size_t block_rows = kAttentionBackwardRows) noexcept {
  const std::size_t dh = c.head_dim, group = c.group(), n_tokens = q.rows;
  const bool tiled = dh % simd::kLanes == 0;
  const std::size_t qb = std::max<std::size_t>(1, block_rows);
  // Per query row t of a block and head hi: a row of ds (scores, then scale * dz) and one of dw
  // (dw, then w), indexed by the absolute key.
  const std::size_t row = attend_backward_row_floats(n_tokens);
  float* const ds = scratch;
  float* const dw = scratch + qb * group * row;
  // With 4 or more query heads per KV head (Mixtral, Grok-1), the dot products run on tiles of
  // kAttentionTile keys and values transposed (key j's element d at kt[d * ld + j - jt]): each
  // key vector loaded once for 4 heads, no horizontal sums (1.15x on the whole backward at 8 / 2
  // heads of 32, T = 256, Zen 3). With fewer heads to share a load the row form (dot_rows_tiled)
  // was as fast or faster (2 heads 0.93x, one head (MHA) 0.47x for the transposed form), and so
  // with a window narrower than a tile (a window of 7: 0.84x).
  const bool transposed = tiled && group >= 4 && (c.window == 0 || c.window >= kAttentionTile);
  float* const kt = dw + qb * group * row;
  float* const vt = kt + dh * kTransposedTileFloats;
  const auto ds_row = [&](std::size_t t, std::size_t t0, std::size_t hi) {
    return ds + ((t - t0) * group + hi) * row;
  };
  const auto dw_row = [&](std::size_t t, std::size_t t0, std::size_t hi) {
    return dw + ((t - t0) * group + hi) * row;
  };
  const float* const q_g = q.row(0) + g * group * dh;  // the group's heads of query row 0
  const float* const do_g = d_o.row(0) + g * group * dh;
  for (std::size_t t0 = 0; t0 < n_tokens; t0 += qb) {
    const std::size_t t1 = std::min(n_tokens, t0 + qb);
    // 1. s_j = q . k_j and dw_j = do . v_j of the block's rows: the group's heads at once, tile
    //    by tile of keys (transposed), or below one head at a time.
    if (transposed) {
      detail::block_dots_transposed(c, q_g, q.stride, do_g, d_o.stride, kv, t0, t1, ds, dw, row, kt,
                                    vt);
    }
    //    Then the score gradients and dq.
    for (std::size_t t = t0; t < t1; ++t) {
      const std::size_t lo = c.first_key(t), len = t + 1 - lo;
      const float* keys = kv.keys + lo * kv.stride;
      const float* values = kv.values + lo * kv.stride;
      for (std::size_t hi = 0; hi < group; ++hi) {
        const std::size_t h = g * group + hi;
        float* dsr = ds_row(t, t0, hi) + lo;
        float* dwr = dw_row(t, t0, hi) + lo;
        if (tiled && !transposed) {
          detail::dot_rows_tiled(q.row(t) + h * dh, keys, kv.stride, len, dh, dsr);
          detail::dot_rows_tiled(d_o.row(t) + h * dh, values, kv.stride, len, dh, dwr);
        } else if (!tiled) {
          detail::dot_rows_simple(q.row(t) + h * dh, keys, kv.stride, len, dh, dsr);
          detail::dot_rows_simple(d_o.row(t) + h * dh, values, kv.stride, len, dh, dwr);
        }
        detail::score_grads(c, o.row(t) + h * dh, d_o.row(t) + h * dh, len, lse[t * lse_stride + h],
                            dsr, dwr);
        float* dqh = dq.row(t) + h * dh;
        if (tiled) {
          detail::axpy_rows_tiled(dsr, keys, kv.stride, len, dh, dqh);
        } else {
          detail::axpy_rows_simple(dsr, keys, kv.stride, len, dh, dqh);
        }
      }
    }
    // 2. dk_j += sum_t,hi ds[t][hi][j] q_t,hi, dv_j += sum_t,hi w[t][hi][j] do_t,hi.
    if (tiled && qb > 1) {
      const std::size_t j0 = c.first_key(t0);
      detail::add_block_keys(c, ds, row, q_g, q.stride, t0, t1, j0, dkv.keys, dkv.stride);
      detail::add_block_keys(c, dw, row, do_g, d_o.stride, t0, t1, j0, dkv.values, dkv.stride);
      continue;
    }
    // Otherwise one query at a time: each key row loaded and stored once per query, for the
    // whole group (the heads in order, as one head at a time would add them).
    for (std::size_t t = t0; t < t1; ++t) {
      const std::size_t lo = c.first_key(t);
      const float* qt = q_g + t * q.stride;
      const float* do_t = do_g + t * d_o.stride;
      for (std::size_t j = lo; j <= t; ++j) {
        detail::add_group_rows(ds_row(t, t0, 0) + j, row, qt, dh, group, dkv.keys + j * dkv.stride);
        detail::add_group_rows(dw_row(t, t0, 0) + j, row, do_t, dh, group,
                               dkv.values + j * dkv.stride);
      }
    }
  }
}

MOE_SIMD_NAMESPACE_END

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
