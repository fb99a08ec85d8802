// Helpers for the ops tests: awkward sizes, guard-page buffers, misaligned placement, ulp maths.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <sys/mman.h>
#include <unistd.h>
#include <vector>

#include <moe/core/buffer.hpp>
#include <moe/simd/simd.hpp>

namespace ops_test {

/// Sizes around every vector width (4, 8, 16) plus the Grok-1 model width.
inline const std::vector<std::size_t> kSizes = {1,   2,   3,   4,   5,   7,   8,    9,    15,
                                                16,  17,  31,  32,  33,  47,  63,   64,   65,
                                                100, 127, 129, 255, 256, 257, 1000, 6144, 6145};

/// 2^-24: half an ulp of 1.0f, the unit roundoff of f32.
inline constexpr double kU = 1.0 / 16777216.0;

/// The ulp of float value v (the spacing of floats at |v|; denormal spacing below FLT_MIN).
inline double ulp_of(double v) {
  const double a = std::fabs(v);
  if (a < static_cast<double>(std::numeric_limits<float>::min())) return std::ldexp(1.0, -149);
  return std::ldexp(1.0, std::ilogb(a) - 23);
}

/// n floats that end exactly at a PROT_NONE guard page: any read or write past element n - 1
/// faults (SIGSEGV), in every build, also inside masked SIMD instructions (which ASan does not
/// see). The start address is 4-byte aligned only (misaligned for n not a multiple of 16).
class GuardedFloats {
 public:
  explicit GuardedFloats(std::size_t n) : n_(n) {
    page_ = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    const std::size_t data_pages = (n * sizeof(float) + page_ - 1) / page_;
    bytes_ = (data_pages + 1) * page_;
    void* m = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::runtime_error("mmap failed");
    base_ = static_cast<unsigned char*>(m);
    if (mprotect(base_ + data_pages * page_, page_, PROT_NONE) != 0) {
      throw std::runtime_error("mprotect failed");
    }
    data_ = reinterpret_cast<float*>(base_ + data_pages * page_) - n;
  }
  GuardedFloats(const GuardedFloats&) = delete;
  GuardedFloats& operator=(const GuardedFloats&) = delete;
  ~GuardedFloats() { munmap(base_, bytes_); }

  float* data() noexcept { return data_; }
  std::size_t size() const noexcept { return n_; }
  float& operator[](std::size_t i) noexcept { return data_[i]; }
  void assign(const std::vector<float>& v) {
    if (!v.empty()) std::memcpy(data_, v.data(), v.size() * sizeof(float));
  }
  std::vector<float> vec() const { return std::vector<float>(data_, data_ + n_); }

 private:
  std::size_t n_ = 0, page_ = 0, bytes_ = 0;
  unsigned char* base_ = nullptr;
  float* data_ = nullptr;
};

/// n floats at `offset` elements past a 64-byte boundary (offset 1 = 4-byte misaligned).
class OffsetFloats {
 public:
  OffsetFloats(std::size_t n, std::size_t offset)
      : buf_(n + offset + 1), p_(buf_.data() + offset) {}
  float* data() noexcept { return p_; }
  void assign(const std::vector<float>& v) {
    if (!v.empty()) std::memcpy(p_, v.data(), v.size() * sizeof(float));
  }
  std::vector<float> vec(std::size_t n) const { return std::vector<float>(p_, p_ + n); }

 private:
  moe::Buffer<float> buf_;
  float* p_;
};

/// Worst-case relative error bound, in units of kU, of moe's blocked f32 sums of n terms
/// (simd::blocked_sum): each term goes through at most n / (4 W) + 2 additions in its accumulator,
/// 2 when the accumulators are combined and log2(W) in the horizontal sum.
inline double blocked_sum_bound(std::size_t n) {
  const double w = static_cast<double>(moe::simd::kLanes);
  return static_cast<double>(n) / (4.0 * w) + 4.0 + std::log2(w);
}

/// Bit pattern of a float (for bit-identity checks).
inline std::uint32_t bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

}  // namespace ops_test
