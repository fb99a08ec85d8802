// moe/core/dispatch.hpp: a run-time count as a compile-time constant.
//
// The kernels' register blocks (token rows, output rows, vectors per row, heads) are template
// parameters, so that their accumulators live in registers; their callers learn the block's size
// at run time (the last block of a loop is usually smaller). dispatch_count turns one into the
// other, in place of a switch with one case per size.
#pragma once

#include <cstddef>
#include <type_traits>
#include <utility>

namespace moe::detail {

/// Calls f(std::integral_constant<std::size_t, N>{}) once, with N = n clamped to [1, Max].
template <std::size_t Max, class F>
[[gnu::always_inline]] inline void dispatch_count(std::size_t n, F&& f) {
  static_assert(Max >= 1, "dispatch_count needs at least one size");
  // The first N = I + 1 with n <= N (or the last): the || fold stops at the first call.
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (void)((n <= I + 1 || I + 1 == Max ? (f(std::integral_constant<std::size_t, I + 1>{}), true)
                                       : false) ||
           ...);
  }
  (std::make_index_sequence<Max>{});
}

}  // namespace moe::detail
