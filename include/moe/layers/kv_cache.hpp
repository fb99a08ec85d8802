// moe/layers/kv_cache.hpp: the key/value cache of a decoder, one sequence.
//
// Storage is one block per tensor, laid out [layer][kv_head][position][head_dim], so that the
// keys (or values) of one KV head are contiguous over positions: attention streams them once per
// query group. Keys are stored already rotated (RoPE applied), as in Grok-1's reference.
//
// Capacity (positions) is fixed at construction; nothing is allocated afterwards. Appending past
// the capacity throws CapacityError before anything is written. Each layer tracks its own length
// (RotaryAttention appends to its layer); a Decoder keeps them equal, and size() is layer 0's.
//
// Element type: f32 (exact) or bf16 (KvDtype::kBF16: half the memory; keys and values are rounded
// to nearest-even bf16 when written, which is also what Grok-1's bf16 reference does).
// Memory: 2 * n_layers * n_kv_heads * head_dim * capacity * (4 or 2) bytes. Grok-1 (64 layers, 8
// KV heads of 128): 512 KiB per position in f32, 256 KiB in bf16; 4 / 2 GiB for 8192 positions.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <moe/config.hpp>
#include <moe/core/bf16.hpp>
#include <moe/core/buffer.hpp>
#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>

namespace moe {
/// Element type of a KvCache.
enum class KvDtype : std::uint8_t {
  kF32,   ///< float, exact
  kBF16,  ///< bfloat16 (round to nearest even when written): half the memory
};
inline constexpr std::string_view kv_dtype_name(KvDtype d) noexcept {
  return d == KvDtype::kF32 ? "f32" : "bf16";
}

/// Shape of a KvCache.
struct KvCacheConfig {
  std::size_t n_layers = 0;
  std::size_t n_kv_heads = 0;
  std::size_t head_dim = 0;
  std::size_t capacity = 0;  ///< positions (Grok-1: up to 8192)
  KvDtype dtype = KvDtype::kF32;

  void validate() const {
    check_config(n_layers > 0 && n_kv_heads > 0 && head_dim > 0, "kv_cache",
                 "n_layers, n_kv_heads and head_dim must be > 0");
    check_config(capacity > 0, "kv_cache", "capacity must be > 0");
  }
  /// Bytes of K and V storage together.
  [[nodiscard]] std::size_t bytes() const noexcept {
    return 2 * n_layers * n_kv_heads * head_dim * capacity * (dtype == KvDtype::kF32 ? 4 : 2);
  }
};
}  // namespace moe

MOE_SIMD_NAMESPACE_BEGIN

class KvCache {
 public:
  KvCache() = default;
  explicit KvCache(const KvCacheConfig& c) : cfg_(c), length_(c.n_layers, 0) {
    c.validate();
    const std::size_t n = c.n_layers * c.n_kv_heads * c.head_dim * c.capacity;
    if (c.dtype == KvDtype::kF32) {
      k32_ = Buffer<float>(n);
      v32_ = Buffer<float>(n);
    } else {
      k16_ = Buffer<bf16>(n);
      v16_ = Buffer<bf16>(n);
    }
  }
  KvCache(std::size_t n_layers, std::size_t n_kv_heads, std::size_t head_dim, std::size_t capacity,
          KvDtype dtype = KvDtype::kF32)
      : KvCache(KvCacheConfig{n_layers, n_kv_heads, head_dim, capacity, dtype}) {}

  [[nodiscard]] const KvCacheConfig& config() const noexcept { return cfg_; }
  [[nodiscard]] std::size_t n_layers() const noexcept { return cfg_.n_layers; }
  [[nodiscard]] std::size_t n_kv_heads() const noexcept { return cfg_.n_kv_heads; }
  [[nodiscard]] std::size_t head_dim() const noexcept { return cfg_.head_dim; }
  [[nodiscard]] std::size_t capacity() const noexcept { return cfg_.capacity; }
  [[nodiscard]] KvDtype dtype() const noexcept { return cfg_.dtype; }
  [[nodiscard]] std::size_t bytes() const noexcept { return cfg_.bytes(); }

  /// Positions stored (layer 0's length; the position the next token gets).
  [[nodiscard]] std::size_t size() const noexcept { return length_.empty() ? 0 : length_[0]; }
  /// Positions still free (in layer 0).
  [[nodiscard]] std::size_t remaining() const noexcept { return capacity() - size(); }
  /// Positions stored in `layer`.
  [[nodiscard]] std::size_t length(std::size_t layer) const noexcept { return length_[layer]; }

  /// Forgets every position (O(layers); the storage is not cleared).
  void clear() noexcept { std::fill(length_.begin(), length_.end(), std::size_t{0}); }
  /// Keeps the first n positions of every layer (rolls back a generation). n <= min length.
  void truncate(std::size_t n) {
    for (std::size_t l = 0; l < length_.size(); ++l) {
      if (n > length_[l]) {
        throw CapacityError("[kv_cache] cannot truncate layer " + std::to_string(l) + " to " +
                            std::to_string(n) + " positions: it holds " +
                            std::to_string(length_[l]));
      }
    }
    std::fill(length_.begin(), length_.end(), n);
  }

  /// Throws CapacityError unless `layer` can take `tokens` more positions.
  void check_room(std::size_t layer, std::size_t tokens) const {
    if (layer >= cfg_.n_layers) {
      throw ShapeError("[kv_cache] layer " + std::to_string(layer) + " out of range (cache has " +
                       std::to_string(cfg_.n_layers) + " layers)");
    }
    if (tokens > cfg_.capacity - length_[layer]) {
      throw CapacityError("[kv_cache] full: layer " + std::to_string(layer) + " holds " +
                          std::to_string(length_[layer]) + " of " + std::to_string(cfg_.capacity) +
                          " positions, cannot append " + std::to_string(tokens) + " more");
    }
  }

  /// Appends the rows of k and v ([T, n_kv_heads * head_dim], heads contiguous) to `layer` at
  /// positions [length, length + T). Throws CapacityError when they do not fit.
  void append(std::size_t layer, MatrixView<const float> k, MatrixView<const float> v) {
    const std::size_t kv_dim = cfg_.n_kv_heads * cfg_.head_dim;
    check_shape("kv_cache", "k", {k.rows, k.cols}, {k.rows, kv_dim});
    check_shape("kv_cache", "v", {v.rows, v.cols}, {k.rows, kv_dim});
    check_room(layer, k.rows);
    const std::size_t pos = length_[layer];
    if (cfg_.dtype == KvDtype::kF32) {
      scatter(k, k32_.data(), layer, pos);
      scatter(v, v32_.data(), layer, pos);
    } else {
      scatter(k, k16_.data(), layer, pos);
      scatter(v, v16_.data(), layer, pos);
    }
    length_[layer] = pos + k.rows;
  }

  /// Keys of (layer, kv_head): [capacity, head_dim] contiguous; rows [0, length) are valid.
  /// Only for the matching dtype (f32: keys_f32, bf16: keys_bf16).
  [[nodiscard]] const float* keys_f32(std::size_t layer, std::size_t head) const noexcept {
    MOE_ASSERT(cfg_.dtype == KvDtype::kF32);
    return k32_.data() + offset(layer, head);
  }
  [[nodiscard]] const float* values_f32(std::size_t layer, std::size_t head) const noexcept {
    MOE_ASSERT(cfg_.dtype == KvDtype::kF32);
    return v32_.data() + offset(layer, head);
  }
  [[nodiscard]] const bf16* keys_bf16(std::size_t layer, std::size_t head) const noexcept {
    MOE_ASSERT(cfg_.dtype == KvDtype::kBF16);
    return k16_.data() + offset(layer, head);
  }
  [[nodiscard]] const bf16* values_bf16(std::size_t layer, std::size_t head) const noexcept {
    MOE_ASSERT(cfg_.dtype == KvDtype::kBF16);
    return v16_.data() + offset(layer, head);
  }

  /// Key element (layer, head, pos, dim) as float, whatever the dtype (tests, debugging).
  [[nodiscard]] float key_at(std::size_t layer, std::size_t head, std::size_t pos,
                             std::size_t dim) const noexcept {
    const std::size_t i = offset(layer, head) + pos * cfg_.head_dim + dim;
    return cfg_.dtype == KvDtype::kF32 ? k32_[i] : k16_[i].to_float();
  }
  [[nodiscard]] float value_at(std::size_t layer, std::size_t head, std::size_t pos,
                               std::size_t dim) const noexcept {
    const std::size_t i = offset(layer, head) + pos * cfg_.head_dim + dim;
    return cfg_.dtype == KvDtype::kF32 ? v32_[i] : v16_[i].to_float();
  }

 private:
  [[nodiscard]] std::size_t offset(std::size_t layer, std::size_t head) const noexcept {
    return (layer * cfg_.n_kv_heads + head) * cfg_.capacity * cfg_.head_dim;
  }

  template <class T>
  void scatter(MatrixView<const float> src, T* base, std::size_t layer, std::size_t pos) {
    const std::size_t dh = cfg_.head_dim;
    for (std::size_t h = 0; h < cfg_.n_kv_heads; ++h) {
      T* dst = base + offset(layer, h) + pos * dh;
      for (std::size_t t = 0; t < src.rows; ++t) {
        const float* s = src.row(t) + h * dh;
        T* d = dst + t * dh;
        if constexpr (std::is_same_v<T, float>) {
          std::copy(s, s + dh, d);
        } else {
          for (std::size_t i = 0; i < dh; ++i) d[i] = bf16(s[i]);
        }
      }
    }
  }

  KvCacheConfig cfg_{};
  std::vector<std::size_t> length_;
  Buffer<float> k32_, v32_;
  Buffer<bf16> k16_, v16_;
};

MOE_SIMD_NAMESPACE_END
