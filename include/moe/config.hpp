// moe/config.hpp: build configuration, the SIMD ABI namespace and assertion macros.
//
// Header-only SIMD code is compiled separately in every translation unit (TU), with that TU's
// flags. If two TUs were built with different -m flags, the linker would silently keep ONE copy
// of each inline kernel (ODR), so an SSE2 TU could end up running AVX-512 code (SIGILL) or the
// reverse. Everything that touches SIMD therefore lives in an inline namespace named after the
// instruction set the TU was compiled for: `moe::simd_avx512bw::matmul` and
// `moe::simd_sse2::matmul` are distinct symbols. Users still write `moe::matmul`.
//
// Plain data types (errors, bf16, weight views, configs, file readers) carry no SIMD code and
// live directly in `namespace moe`, so they are the same type in every TU (an exception thrown in
// one TU is caught as moe::Error in another).
#pragma once

// GCC 12 raises bogus -Wuninitialized / -Wmaybe-uninitialized warnings inside xsimd's AVX-512
// kernels when they are not inlined (sanitizer and -O0 builds; GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <xsimd/xsimd.hpp>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#include <cstdio>
#include <cstdlib>

#if XSIMD_WITH_AVX512BW
#define MOE_SIMD_ABI simd_avx512bw
#elif XSIMD_WITH_AVX512F
#define MOE_SIMD_ABI simd_avx512f
#elif XSIMD_WITH_FMA3_AVX2
#define MOE_SIMD_ABI simd_avx2fma
#elif XSIMD_WITH_AVX2
#define MOE_SIMD_ABI simd_avx2
#elif XSIMD_WITH_FMA3_AVX
#define MOE_SIMD_ABI simd_avxfma
#elif XSIMD_WITH_AVX
#define MOE_SIMD_ABI simd_avx
#elif XSIMD_WITH_SSE4_2
#define MOE_SIMD_ABI simd_sse42
#elif XSIMD_WITH_SSE2
#define MOE_SIMD_ABI simd_sse2
#elif XSIMD_WITH_NEON64
#define MOE_SIMD_ABI simd_neon64
#else
#define MOE_SIMD_ABI simd_scalar
#endif

/// Opens `namespace moe { inline namespace <isa> {` for code that (transitively) uses SIMD.
#define MOE_SIMD_NAMESPACE_BEGIN \
  namespace moe {                \
  inline namespace MOE_SIMD_ABI {
#define MOE_SIMD_NAMESPACE_END \
  }                            \
  }

/// Opens `namespace moe::detail { inline namespace <isa> {` for the SIMD helpers behind the
/// public functions. `detail` is the one helper-namespace name of the library: plain helpers live
/// in `moe::detail`, SIMD helpers in its ISA-keyed inline namespace, so `detail::f` reaches both.
#define MOE_SIMD_DETAIL_BEGIN \
  namespace moe::detail {     \
  inline namespace MOE_SIMD_ABI {
#define MOE_SIMD_DETAIL_END \
  }                         \
  }

#define MOE_STRINGIFY_IMPL(x) #x
#define MOE_STRINGIFY(x) MOE_STRINGIFY_IMPL(x)

namespace moe {
/// Name of the instruction-set namespace of this TU, e.g. "simd_avx512bw".
inline constexpr const char* simd_abi_name() noexcept {
  return MOE_STRINGIFY(MOE_SIMD_ABI);
}

namespace detail {
[[noreturn]] inline void assert_fail(const char* expr, const char* file, int line) noexcept {
  std::fprintf(stderr, "moe: assertion failed: %s (%s:%d)\n", expr, file, line);
  std::abort();
}
}  // namespace detail
}  // namespace moe

/// MOE_ASSERT: debug-only invariant check for hot paths (compiled out under NDEBUG). Argument
/// validation that users can trigger is done with exceptions at construction time instead.
#ifdef NDEBUG
#define MOE_ASSERT(expr) ((void)0)
#else
#define MOE_ASSERT(expr) ((expr) ? (void)0 : ::moe::detail::assert_fail(#expr, __FILE__, __LINE__))
#endif

/// MOE_CHECK: always-on invariant check that aborts (for "cannot happen" states).
#define MOE_CHECK(expr) ((expr) ? (void)0 : ::moe::detail::assert_fail(#expr, __FILE__, __LINE__))
