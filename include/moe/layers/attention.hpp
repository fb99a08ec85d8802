// moe/layers/attention.hpp: RotaryAttention, grouped-query self-attention with RoPE and a KV cache.
//
// For the T rows of x ([T, D], one row per token at positions pos .. pos+T-1, pos = the layer's
// KV-cache length):
//
//   q = x . Wq  [T, Hq*dh]    k = x . Wk  [T, Hkv*dh]    v = x . Wv  [T, Hkv*dh]   (no biases)
//   q, k <- RoPE(position)                 (rotated in f32; layout and base from the config)
//   cache[layer] <- append k, v            (keys are cached already rotated)
//   for query head h (KV head g = h / (Hq/Hkv)) and token t, over keys j <= pos + t (causal):
//     s_j = logit_multiplier * (q_t,h . k_j,g)
//     s_j = softcap * tanh(s_j / softcap)   (only when softcap > 0; Grok-1: 30)
//     w   = softmax_j(s)                    (f32)
//     o_t,h = sum_j w_j v_j,g
//   y = o . Wo  [T, D]
//
// Prefill (T tokens) and decode (T = 1) are the same code: both append to the cache and attend
// over everything in it. Grok-1's masking of keys whose token id is 0 (its padding) is not
// applied: moe never pads, so id 0 is an ordinary token.
//
// Work split: the projections are moe::matmul; the attention core runs one task per (KV head,
// block of tokens) and computes every query head of the group together, reading each cached key
// and value row once per block. Each output element is computed by exactly one task in a fixed
// order, so results are bit-identical for every pool size. Scores live in the pool's per-thread
// scratch (group * block * (pos + T) floats); the projections' outputs in the caller's Arena.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include <xsimd/xsimd.hpp>

#if XSIMD_WITH_AVX512F || XSIMD_WITH_AVX2
#include <immintrin.h>
#endif

#include <moe/config.hpp>
#include <moe/core/arena.hpp>
#include <moe/core/bf16.hpp>
#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/layers/kv_cache.hpp>
#include <moe/ops/matmul.hpp>
#include <moe/ops/rope.hpp>
#include <moe/ops/softmax.hpp>
#include <moe/ops/vector.hpp>
#include <moe/ops/weights.hpp>

namespace moe {

/// Configuration of a RotaryAttention layer.
struct AttentionConfig {
  std::size_t d_model = 0;     ///< D: input and output width
  std::size_t n_q_heads = 0;   ///< Hq
  std::size_t n_kv_heads = 0;  ///< Hkv; query head h uses KV head h / (Hq / Hkv)
  std::size_t head_dim = 0;    ///< dh (keys, queries and values)
  double rope_base = 10000.0;
  RopeLayout rope_layout = RopeLayout::kHalfSplit;
  std::size_t rotary_dims = 0;  ///< dims of each head that rotate (0 = all)
  /// Scale of the attention logits q.k (0 = 1/sqrt(head_dim)). Grok-1: 0.08838834764831845.
  double logit_multiplier = 0.0;
  /// Logit soft-cap c: s -> c tanh(s / c) after the multiplier (0 = off). Grok-1: 30.
  double softcap = 0.0;

  [[nodiscard]] std::size_t q_dim() const noexcept { return n_q_heads * head_dim; }
  [[nodiscard]] std::size_t kv_dim() const noexcept { return n_kv_heads * head_dim; }
  [[nodiscard]] std::size_t group() const noexcept { return n_q_heads / n_kv_heads; }
  [[nodiscard]] double multiplier() const noexcept {
    return logit_multiplier > 0 ? logit_multiplier : 1.0 / std::sqrt(static_cast<double>(head_dim));
  }

  /// Throws ConfigError("[attention] ...") naming the first inconsistent value.
  void validate() const {
    auto need = [](bool ok, const std::string& m) { check_config(ok, "attention", m); };
    need(d_model > 0 && head_dim > 0, "d_model and head_dim must be > 0");
    need(n_q_heads > 0 && n_kv_heads > 0, "n_q_heads and n_kv_heads must be > 0");
    need(n_q_heads % n_kv_heads == 0, "n_q_heads (" + std::to_string(n_q_heads) +
                                          ") must be a multiple of n_kv_heads (" +
                                          std::to_string(n_kv_heads) + ")");
    const std::size_t rd = rotary_dims ? rotary_dims : head_dim;
    need(rd % 2 == 0 && rd <= head_dim, "rotary_dims (" + std::to_string(rd) +
                                            ") must be even and <= head_dim (" +
                                            std::to_string(head_dim) + ")");
    need(rope_base > 0, "rope_base must be > 0");
    need(logit_multiplier >= 0 && std::isfinite(logit_multiplier),
         "logit_multiplier must be finite and >= 0 (0 = 1/sqrt(head_dim))");
    need(softcap >= 0 && std::isfinite(softcap), "softcap must be finite and >= 0 (0 = off)");
  }
};

/// The four projections of an attention layer (views, JAX [in, out] or PyTorch layout).
template <class W>
struct AttentionWeights {
  W wq{};  ///< [D, Hq*dh]
  W wk{};  ///< [D, Hkv*dh]
  W wv{};  ///< [D, Hkv*dh]
  W wo{};  ///< [Hq*dh, D]
};

}  // namespace moe


MOE_SIMD_DETAIL_BEGIN

/// dst[i] = float(src[i]) (exact widening).
inline void widen_bf16(const bf16* src, float* dst, std::size_t n) noexcept {
  const auto* s = reinterpret_cast<const std::uint16_t*>(src);
  for (std::size_t i = 0; i < n; ++i) {
    dst[i] = std::bit_cast<float>(static_cast<std::uint32_t>(s[i]) << 16);
  }
}

// Tile kernels of the attention core. They need head_dim % kLanes == 0 (every real model); the
// core falls back to moe::dot / moe::axpy otherwise. GCC 12 warns about the _mm512_undefined_*
// merge sources of some AVX-512 intrinsics (GCC bug 105593): silenced for these functions.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

using Batch = xsimd::batch<float>;
inline constexpr std::size_t kLanes = Batch::size;

/// The sums of kLanes batches as one batch: lane j = sum of the lanes of acc[j].
inline Batch reduce_lanes(const Batch* acc) noexcept {
#if XSIMD_WITH_AVX512F
  // Own transposing reduction: xsimd 8.1's AVX-512 haddp returns the sums in a permuted lane
  // order (0 1 4 5 2 3 6 7 ...) and needs AVX512DQ. Four levels, AVX512F only.
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

/// kLanes elements of a cached row as floats: f32 as is, bf16 widened exactly in registers.
template <class KV>
inline Batch load_kv(const KV* p) noexcept {
  if constexpr (std::is_same_v<KV, float>) {
    return Batch::load_unaligned(p);
  } else {
#if XSIMD_WITH_AVX512F
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
#elif XSIMD_WITH_AVX2
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
#else
    alignas(64) float buf[kLanes];
    widen_bf16(p, buf, kLanes);
    return Batch::load_aligned(buf);
#endif
  }
}

template <class KV, std::size_t... J>
inline Batch dot_lanes_impl(const float* q, const KV* k, std::size_t dh,
                            std::index_sequence<J...>) noexcept {
  Batch acc[kLanes] = {(static_cast<void>(J), Batch(0.0f))...};
  for (std::size_t c = 0; c < dh; c += kLanes) {
    const Batch qv = Batch::load_unaligned(q + c);
    ((acc[J] = xsimd::fma(qv, load_kv(k + J * dh + c), acc[J])), ...);
  }
  return reduce_lanes(acc);
}

/// out[j] = q . k[j] for j < n (k: n rows of dh elements, contiguous). Full groups of kLanes
/// keys use kLanes independent accumulators and one transposing reduction.
template <class KV>
inline void dot_rows(const float* q, const KV* k, std::size_t n, std::size_t dh,
                     float* out) noexcept {
  std::size_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    dot_lanes_impl(q, k + j * dh, dh, std::make_index_sequence<kLanes>{}).store_unaligned(out + j);
  }
  for (; j < n; ++j) {  // the last < kLanes keys, one at a time
    if constexpr (std::is_same_v<KV, float>) {
      out[j] = dot(q, k + j * dh, dh);
    } else {
      Batch acc(0.0f);
      for (std::size_t c = 0; c < dh; c += kLanes) {
        acc = xsimd::fma(Batch::load_unaligned(q + c), load_kv(k + j * dh + c), acc);
      }
      alignas(64) float lanes[kLanes];
      acc.store_aligned(lanes);
      float sum = 0.0f;
      for (float x : lanes) sum += x;
      out[j] = sum;
    }
  }
}

template <std::size_t NB, class KV>
inline void axpy_rows_impl(const float* w, const KV* v, std::size_t n, std::size_t dh,
                           float* o) noexcept {
  Batch acc[NB];
  for (std::size_t b = 0; b < NB; ++b) acc[b] = Batch::load_unaligned(o + b * kLanes);
  for (std::size_t j = 0; j < n; ++j) {
    const Batch wj(w[j]);
    const KV* vr = v + j * dh;
    for (std::size_t b = 0; b < NB; ++b) acc[b] = xsimd::fma(wj, load_kv(vr + b * kLanes), acc[b]);
  }
  for (std::size_t b = 0; b < NB; ++b) acc[b].store_unaligned(o + b * kLanes);
}

/// o[0..dh) += sum_j w[j] v[j] over n rows of dh elements, keeping up to 8 batches of o in
/// registers for the whole pass over the rows.
template <class KV>
inline void axpy_rows(const float* w, const KV* v, std::size_t n, std::size_t dh,
                      float* o) noexcept {
  for (std::size_t c0 = 0; c0 < dh; c0 += 8 * kLanes) {
    switch (std::min<std::size_t>(8, (dh - c0) / kLanes)) {
      case 8:
        axpy_rows_impl<8>(w, v + c0, n, dh, o + c0);
        break;
      case 7:
        axpy_rows_impl<7>(w, v + c0, n, dh, o + c0);
        break;
      case 6:
        axpy_rows_impl<6>(w, v + c0, n, dh, o + c0);
        break;
      case 5:
        axpy_rows_impl<5>(w, v + c0, n, dh, o + c0);
        break;
      case 4:
        axpy_rows_impl<4>(w, v + c0, n, dh, o + c0);
        break;
      case 3:
        axpy_rows_impl<3>(w, v + c0, n, dh, o + c0);
        break;
      case 2:
        axpy_rows_impl<2>(w, v + c0, n, dh, o + c0);
        break;
      default:
        axpy_rows_impl<1>(w, v + c0, n, dh, o + c0);
        break;
    }
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

MOE_SIMD_DETAIL_END

MOE_SIMD_NAMESPACE_BEGIN

template <class W>
class RotaryAttention {
 public:
  using weight_type = W;

  /// Keys/values per tile of the score and value loops (widened into scratch when the cache is
  /// bf16 and head_dim is not a multiple of the SIMD width).
  static constexpr std::size_t kTile = 64;
  /// Tokens per task (upper bound; shrunk when the scores would not fit the thread scratch).
  static constexpr std::size_t kTokenBlock = 8;
  /// Below this many score multiply-adds (T * context * Hq * dh) the core runs on one thread.
  static constexpr std::size_t kSerialMacs = std::size_t{1} << 17;

  RotaryAttention() = default;
  RotaryAttention(const AttentionConfig& config, const AttentionWeights<W>& weights)
      : cfg_(config), w_(weights) {
    cfg_.validate();
    check_weight_shape(w_.wq, "attention", "wq", cfg_.d_model, cfg_.q_dim());
    check_weight_shape(w_.wk, "attention", "wk", cfg_.d_model, cfg_.kv_dim());
    check_weight_shape(w_.wv, "attention", "wv", cfg_.d_model, cfg_.kv_dim());
    check_weight_shape(w_.wo, "attention", "wo", cfg_.q_dim(), cfg_.d_model);
    rope_ = Rope(cfg_.head_dim, cfg_.rope_base, cfg_.rope_layout, cfg_.rotary_dims);
    scale_ = static_cast<float>(cfg_.multiplier());
    cap_ = static_cast<float>(cfg_.softcap);
  }

  [[nodiscard]] const AttentionConfig& config() const noexcept { return cfg_; }
  [[nodiscard]] const AttentionWeights<W>& weights() const noexcept { return w_; }
  [[nodiscard]] std::size_t dim() const noexcept { return cfg_.d_model; }

  /// Arena bytes forward() needs for up to max_tokens rows.
  [[nodiscard]] std::size_t workspace_bytes(std::size_t max_tokens) const noexcept {
    return 2 * Arena::bytes_for<float>(max_tokens * cfg_.q_dim()) +
           2 * Arena::bytes_for<float>(max_tokens * cfg_.kv_dim());
  }

  /// Bytes of the pool's per-thread scratch the attention core needs at a context of `context`
  /// positions (one token per task: the minimum).
  [[nodiscard]] std::size_t scratch_bytes(std::size_t context) const noexcept {
    return Arena::round_up(cfg_.group() * context * sizeof(float)) +
           2 * Arena::round_up(kTile * cfg_.head_dim * sizeof(float));
  }

  /// Throws unless `cache` matches this layer's KV shape, has `layer`, and has room for `tokens`
  /// more positions; and unless the pool's scratch can hold the scores. Nothing is modified.
  void check(const ThreadPool& pool, const KvCache& cache, std::size_t layer,
             std::size_t tokens) const {
    if (cache.n_kv_heads() != cfg_.n_kv_heads || cache.head_dim() != cfg_.head_dim) {
      throw ShapeError("[attention] KV cache has " + std::to_string(cache.n_kv_heads()) +
                       " heads of " + std::to_string(cache.head_dim()) + ", layer expects " +
                       std::to_string(cfg_.n_kv_heads) + " heads of " +
                       std::to_string(cfg_.head_dim));
    }
    cache.check_room(layer, tokens);
    const std::size_t need = scratch_bytes(cache.length(layer) + tokens);
    if (need > pool.scratch_bytes()) {
      throw CapacityError("[attention] the thread pool's scratch (" +
                          std::to_string(pool.scratch_bytes()) + " bytes per thread) cannot hold " +
                          std::to_string(need) + " bytes of attention scores for a context of " +
                          std::to_string(cache.length(layer) + tokens) +
                          " positions; construct the ThreadPool with more scratch");
    }
  }

  /// y [T, D] = attention over x [T, D] at positions cache.length(layer) + t; appends the T new
  /// keys and values to `cache` (layer `layer`). x and y must not alias. Throws (before any
  /// work) when the cache is full or does not match; see check().
  void forward(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> y, KvCache& cache,
               std::size_t layer, Arena& arena) const {
    MOE_ASSERT(x.cols == cfg_.d_model && y.cols == cfg_.d_model && x.rows == y.rows);
    const std::size_t T = x.rows;
    if (T == 0) return;
    check(pool, cache, layer, T);
    const std::size_t pos = cache.length(layer);
    const std::size_t qd = cfg_.q_dim(), kvd = cfg_.kv_dim();

    Arena::Scope scope(arena);
    MatrixView<float> q(arena.alloc<float>(T * qd), T, qd);
    MatrixView<float> k(arena.alloc<float>(T * kvd), T, kvd);
    MatrixView<float> v(arena.alloc<float>(T * kvd), T, kvd);
    MatrixView<float> o(arena.alloc<float>(T * qd), T, qd);

    matmul(pool, x, w_.wq, q);
    matmul(pool, x, w_.wk, k);
    matmul(pool, x, w_.wv, v);

    // RoPE: keys first, then queries (the order does not matter: they are independent).
    constexpr std::size_t kRopeRows = 16;
    pool.parallel_for((T + kRopeRows - 1) / kRopeRows, [&](std::size_t task, std::size_t) {
      const std::size_t t1 = std::min(T, (task + 1) * kRopeRows);
      for (std::size_t t = task * kRopeRows; t < t1; ++t) {
        rope_.apply(k.row(t), cfg_.n_kv_heads, pos + t);
        rope_.apply(q.row(t), cfg_.n_q_heads, pos + t);
      }
    });

    cache.append(layer, k, v);
    attend(pool, q, o, cache, layer, pos);
    matmul(pool, MatrixView<const float>(o), w_.wo, y);
  }

  /// The attention core alone: o [T, Hq*dh] from rotated queries q [T, Hq*dh] at positions
  /// pos .. pos+T-1, over cache positions [0, pos + t] of `layer` (which must already hold
  /// them). Exposed for tests and benchmarks.
  void attend(ThreadPool& pool, MatrixView<const float> q, MatrixView<float> o,
              const KvCache& cache, std::size_t layer, std::size_t pos) const {
    const std::size_t T = q.rows;
    const std::size_t group = cfg_.group();
    const std::size_t context = pos + T;
    MOE_ASSERT(cache.length(layer) >= context);
    // Tokens per task: as many as fit the per-thread scratch (results do not depend on it).
    const std::size_t tiles = 2 * Arena::round_up(kTile * cfg_.head_dim * sizeof(float));
    const std::size_t per_token = group * context * sizeof(float);
    std::size_t block = kTokenBlock;
    while (block > 1 && Arena::round_up(block * per_token) + tiles > pool.scratch_bytes()) --block;
    const std::size_t n_blocks = (T + block - 1) / block;
    const std::size_t n_tasks = cfg_.n_kv_heads * n_blocks;
    const auto run = [&](std::size_t task, std::size_t thread) {
      const std::size_t g = task % cfg_.n_kv_heads;
      const std::size_t t0 = (task / cfg_.n_kv_heads) * block;
      const std::size_t t1 = std::min(T, t0 + block);
      auto* scratch = reinterpret_cast<float*>(pool.scratch(thread));
      if (cache.dtype() == KvDtype::kF32) {
        attend_block<float>(q, o, cache.keys_f32(layer, g), cache.values_f32(layer, g), g, t0, t1,
                            pos, scratch);
      } else {
        attend_block<bf16>(q, o, cache.keys_bf16(layer, g), cache.values_bf16(layer, g), g, t0, t1,
                           pos, scratch);
      }
    };
    // Small problems (a decode step at a short context) run as one task on the calling thread:
    // waking the workers would cost more than the work. Same tasks, same order, same results.
    if (T * context * cfg_.q_dim() < kSerialMacs) {
      pool.parallel_for(1, [&](std::size_t, std::size_t thread) {
        for (std::size_t task = 0; task < n_tasks; ++task) run(task, thread);
      });
    } else {
      pool.parallel_for(n_tasks, run);
    }
  }

 private:
  /// Tokens [t0, t1) of KV head g. K and V are [capacity, dh] (rows [0, pos + t1) valid).
  template <class KV>
  void attend_block(MatrixView<const float> q, MatrixView<float> o, const KV* keys,
                    const KV* values, std::size_t g, std::size_t t0, std::size_t t1,
                    std::size_t pos, float* scratch) const noexcept {
    const std::size_t dh = cfg_.head_dim;
    const std::size_t group = cfg_.group();
    const bool fast = dh % detail::kLanes == 0;
    const std::size_t ls = pos + t1;  // score row stride: the longest context in the block
    const std::size_t n_rows = (t1 - t0) * group;
    float* scores = scratch;  // [n_rows, ls], row (t - t0) * group + hi
    float* tile = scratch + Arena::round_up(n_rows * ls * sizeof(float)) / sizeof(float);

    // 1. scores s[t, hi, j] = q[t, h] . k[j] for j < pos + t + 1, one pass over the keys.
    for (std::size_t j0 = 0; j0 < ls; j0 += kTile) {
      const std::size_t j1 = std::min(ls, j0 + kTile);
      const float* kt = fast ? nullptr : rows_f32(keys, j0, j1, tile);
      for (std::size_t t = t0; t < t1; ++t) {
        const std::size_t len = pos + t + 1;  // causal: keys [0, len)
        const std::size_t je = std::min(j1, len);
        for (std::size_t hi = 0; hi < group; ++hi) {
          const float* qh = q.row(t) + (g * group + hi) * dh;
          float* s = scores + ((t - t0) * group + hi) * ls;
          if (fast) {  // straight from the cache (bf16 widened in registers)
            detail::dot_rows(qh, keys + j0 * dh, je - j0, dh, s + j0);
          } else {
            for (std::size_t j = j0; j < je; ++j) s[j] = dot(qh, kt + (j - j0) * dh, dh);
          }
        }
      }
    }
    // 2. multiplier, soft-cap, softmax per row over its own causal length.
    for (std::size_t t = t0; t < t1; ++t) {
      const std::size_t len = pos + t + 1;
      for (std::size_t hi = 0; hi < group; ++hi) {
        float* s = scores + ((t - t0) * group + hi) * ls;
        scale(s, len, scale_);
        if (cap_ > 0.0f) softcap(s, len, cap_);
        softmax(s, len);
      }
    }
    // 3. o[t, h] = sum_j w[t, hi, j] v[j], one pass over the values.
    for (std::size_t t = t0; t < t1; ++t) {
      for (std::size_t hi = 0; hi < group; ++hi) {
        std::fill_n(o.row(t) + (g * group + hi) * dh, dh, 0.0f);
      }
    }
    for (std::size_t j0 = 0; j0 < ls; j0 += kTile) {
      const std::size_t j1 = std::min(ls, j0 + kTile);
      const float* vt = fast ? nullptr : rows_f32(values, j0, j1, tile);
      for (std::size_t t = t0; t < t1; ++t) {
        const std::size_t je = std::min(j1, pos + t + 1);
        for (std::size_t hi = 0; hi < group; ++hi) {
          float* oh = o.row(t) + (g * group + hi) * dh;
          const float* s = scores + ((t - t0) * group + hi) * ls;
          if (fast) {
            detail::axpy_rows(s + j0, values + j0 * dh, je - j0, dh, oh);
          } else {
            for (std::size_t j = j0; j < je; ++j) axpy(s[j], vt + (j - j0) * dh, oh, dh);
          }
        }
      }
    }
  }

  /// Rows [j0, j1) of a [capacity, dh] cache block as f32: a pointer into the cache (f32) or
  /// into `tile` after widening (bf16).
  template <class KV>
  const float* rows_f32(const KV* base, std::size_t j0, std::size_t j1,
                        float* tile) const noexcept {
    const std::size_t dh = cfg_.head_dim;
    if constexpr (std::is_same_v<KV, float>) {
      (void)j1;
      (void)tile;
      return base + j0 * dh;
    } else {
      detail::widen_bf16(base + j0 * dh, tile, (j1 - j0) * dh);
      return tile;
    }
  }

  AttentionConfig cfg_{};
  AttentionWeights<W> w_{};
  Rope rope_;
  float scale_ = 1.0f;
  float cap_ = 0.0f;
};

MOE_SIMD_NAMESPACE_END
