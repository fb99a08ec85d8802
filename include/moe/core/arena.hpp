// moe/core/arena.hpp: explicit scratch memory.
//
// An Arena is one aligned block reserved up front (layers report how much they need through
// `workspace_bytes(...)`). Hot paths carve temporary arrays out of it with alloc<T>(n); nothing
// in a forward pass calls malloc. An Arena::Scope restores the offset when it goes out of scope,
// so nested layers can reuse the same block. Running out is a programming error in the size
// computation and throws CapacityError (it never corrupts memory).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <moe/core/buffer.hpp>
#include <moe/core/error.hpp>

namespace moe {

class Arena {
 public:
  static constexpr std::size_t kAlignment = 64;

  Arena() = default;
  explicit Arena(std::size_t bytes) : block_(round_up(bytes)) {}

  /// Rounds n bytes up to the arena's alignment (use it when summing workspace sizes).
  static constexpr std::size_t round_up(std::size_t n) noexcept {
    return (n + kAlignment - 1) / kAlignment * kAlignment;
  }
  /// Bytes alloc<T>(n) consumes.
  template <class T>
  static constexpr std::size_t bytes_for(std::size_t n) noexcept {
    return round_up(n * sizeof(T));
  }

  /// n uninitialised elements, 64-byte aligned. Throws CapacityError when the arena is too small.
  template <class T>
  T* alloc(std::size_t n) {
    const std::size_t bytes = bytes_for<T>(n);
    if (bytes > block_.size() - offset_) {
      throw CapacityError("[arena] out of scratch: need " + std::to_string(bytes) +
                          " more bytes, " + std::to_string(block_.size() - offset_) + " of " +
                          std::to_string(block_.size()) + " left");
    }
    T* p = reinterpret_cast<T*>(block_.data() + offset_);
    offset_ += bytes;
    high_water_ = offset_ > high_water_ ? offset_ : high_water_;
    return p;
  }

  std::size_t capacity() const noexcept { return block_.size(); }
  std::size_t used() const noexcept { return offset_; }
  std::size_t high_water() const noexcept { return high_water_; }
  void reset() noexcept { offset_ = 0; }

  /// Restores the arena's offset on destruction.
  class Scope {
   public:
    explicit Scope(Arena& a) noexcept : arena_(a), saved_(a.offset_) {}
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;
    ~Scope() { arena_.offset_ = saved_; }

   private:
    Arena& arena_;
    std::size_t saved_;
  };

 private:
  Buffer<std::uint8_t> block_;
  std::size_t offset_ = 0;
  std::size_t high_water_ = 0;
};

}  // namespace moe
