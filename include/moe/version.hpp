// moe/version.hpp: library version macros.
#pragma once

#define MOE_VERSION_MAJOR 0
#define MOE_VERSION_MINOR 1
#define MOE_VERSION_PATCH 0
/// Single integer: major * 10000 + minor * 100 + patch (fmt style).
#define MOE_VERSION (MOE_VERSION_MAJOR * 10000 + MOE_VERSION_MINOR * 100 + MOE_VERSION_PATCH)
/// True when the moe headers in use are at least version (x, y, z).
#define MOE_VERSION_AT_LEAST(x, y, z) (MOE_VERSION >= ((x)*10000 + (y)*100 + (z)))

namespace moe {
/// The version as "major.minor.patch".
inline constexpr const char* version_string() noexcept {
  return "0.1.0";
}
}  // namespace moe
