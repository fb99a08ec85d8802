// The example programs' command-line helpers (grok1, moe-run, train): one usage-error type and
// strict parsers of flag values that name the flag, the accepted range and the value on error,
// and what the runners' --json reports of the process: bytes read from storage, peak RSS.
#pragma once

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <string_view>
#include <sys/resource.h>
#include <vector>

#include <moe/models/weight_residency.hpp>

namespace examples {

/// A bad command line (the programs exit 2 on it).
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class T>
T parse_integer(std::string_view flag, std::string_view s, T lo, T hi) {
  T v{};
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || v < lo || v > hi) {
    throw UsageError(std::string(flag) + " expects an integer in [" + std::to_string(lo) + ", " +
                     std::to_string(hi) + "], got '" + std::string(s) + "'");
  }
  return v;
}

inline double parse_double(std::string_view flag, std::string_view s, double lo, double hi) {
  const std::string str(s);
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(str.c_str(), &end);
  if (str.empty() || end != str.c_str() + str.size() || errno != 0 || !std::isfinite(v) || v < lo ||
      v > hi) {
    throw UsageError(std::string(flag) + " expects a number in [" + std::to_string(lo) + ", " +
                     std::to_string(hi) + "], got '" + str + "'");
  }
  return v;
}

/// "4G", "512M", "1048576" -> bytes (binary suffixes).
inline std::uint64_t parse_bytes(std::string_view flag, std::string_view s) {
  std::uint64_t unit = 1;
  const std::size_t suffix =
      s.empty() ? std::string_view::npos : std::string_view("KMG").find(s.back());
  if (suffix != std::string_view::npos) {
    unit = std::uint64_t{1} << (10 * (suffix + 1));
    s.remove_suffix(1);
  }
  return unit * parse_integer<std::uint64_t>(flag, s, 1, (std::uint64_t{1} << 50) / unit);
}

inline moe::CachePolicy parse_policy(std::string_view s) {
  for (moe::CachePolicy p :
       {moe::CachePolicy::kNone, moe::CachePolicy::kLru, moe::CachePolicy::kMostUsed}) {
    if (s == moe::cache_policy_name(p)) return p;
  }
  throw UsageError("--cache-policy expects none, lru or most-used, got '" + std::string(s) + "'");
}

/// "1,2,3" -> token ids (--tokens).
inline std::vector<std::int32_t> parse_tokens(std::string_view s) {
  std::vector<std::int32_t> ids;
  while (!s.empty()) {
    const std::size_t comma = s.find(',');
    ids.push_back(parse_integer<std::int32_t>("--tokens", s.substr(0, comma), 0, INT32_MAX));
    if (comma == std::string_view::npos) break;
    s.remove_prefix(comma + 1);
    if (s.empty()) throw UsageError("--tokens has a trailing comma");
  }
  if (ids.empty()) throw UsageError("--tokens is empty");
  return ids;
}

/// Bytes this process caused to be read from storage (/proc/self/io read_bytes; 0 if unknown).
inline std::uint64_t storage_read_bytes() {
  std::FILE* f = std::fopen("/proc/self/io", "r");
  if (f == nullptr) return 0;
  char key[64];
  unsigned long long v = 0;
  std::uint64_t bytes = 0;
  while (std::fscanf(f, "%63s %llu", key, &v) == 2) {
    if (std::string_view(key) == "read_bytes:") bytes = v;
  }
  std::fclose(f);
  return bytes;
}

/// Peak resident memory of this process (getrusage ru_maxrss), bytes.
inline std::uint64_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<std::uint64_t>(u.ru_maxrss) * 1024u;  // Linux reports KiB
}

}  // namespace examples
