// moe/core/bf16.hpp: bfloat16 storage type.
//
// bf16 is the upper 16 bits of an IEEE-754 binary32. Conversion to float is exact (a shift);
// conversion from float rounds to nearest, ties to even, and keeps NaNs quiet NaNs. This is the
// same rounding as ml_dtypes / JAX / PyTorch, so values written by numpy-based tools round-trip.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>

namespace moe {

struct bf16 {
  std::uint16_t bits;

  bf16() = default;
  /// Rounds to nearest even (NaN stays NaN).
  explicit bf16(float f) noexcept : bits(from_float_bits(f)) {}

  static constexpr bf16 from_bits(std::uint16_t b) noexcept {
    bf16 r{};
    r.bits = b;
    return r;
  }

  /// Exact widening to float.
  explicit operator float() const noexcept { return to_float(); }

  [[nodiscard]] float to_float() const noexcept {
    return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
  }

  static std::uint16_t from_float_bits(float f) noexcept {
    const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep sign, force a quiet-NaN payload
      return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
    }
    const std::uint32_t rounding_bias = 0x7fffu + ((u >> 16) & 1u);
    return static_cast<std::uint16_t>((u + rounding_bias) >> 16);
  }

  friend bool operator==(bf16 a, bf16 b) noexcept { return a.bits == b.bits; }
};

static_assert(sizeof(bf16) == 2);

/// Exact bf16 -> float.
inline float to_float(bf16 x) noexcept {
  return x.to_float();
}
/// Exact bf16 -> float of the value stored at p, which may be at ANY byte address (Grok-1's
/// scales start at an odd offset of their file and are read in place): two bytes copied with
/// memcpy (one unaligned 16-bit load on x86), never a dereference of a misaligned bf16*.
inline float load_bf16(const void* p) noexcept {
  std::uint16_t b = 0;
  std::memcpy(&b, p, sizeof b);
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}
/// float -> bf16, round to nearest even.
inline bf16 to_bf16(float x) noexcept {
  return bf16(x);
}
/// Rounds a float to the nearest bf16 value and returns it as a float.
inline float round_to_bf16(float x) noexcept {
  return bf16(x).to_float();
}

}  // namespace moe
