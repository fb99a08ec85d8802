// The example programs' command-line helpers (grok1, moe-run, train): one usage-error type, strict
// parsers of flag values that name the flag, the accepted range and the value on error, the flag
// loop (for_each_flag), the flags both checkpoint runners take (RunnerArgs), the programs' main()
// (run_main), and what the runners report of the process: seconds since a time point, bytes read
// from storage, peak RSS.
#pragma once

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <new>
#include <optional>
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

/// "4G", "512M", "1048576" -> bytes (binary suffixes), 1 B to 1 PiB.
inline std::uint64_t parse_bytes(std::string_view flag, std::string_view s) {
  const std::string given(s);
  std::uint64_t unit = 1;
  const std::size_t suffix =
      s.empty() ? std::string_view::npos : std::string_view("KMG").find(s.back());
  if (suffix != std::string_view::npos) {
    unit = std::uint64_t{1} << (10 * (suffix + 1));
    s.remove_suffix(1);
  }
  try {
    return unit * parse_integer<std::uint64_t>(flag, s, 1, (std::uint64_t{1} << 50) / unit);
  } catch (const UsageError&) {  // the integer's range is after the suffix: name the whole value
    throw UsageError(std::string(flag) +
                     " expects a size from 1 byte to 1 PiB: an integer, optionally followed by "
                     "K, M or G (binary units), got '" +
                     given + "'");
  }
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

/// The value(s) of the flag for_each_flag is at: value() is the next argument, value.list(what)
/// the arguments up to the next flag ("--..."); both throw a UsageError naming the flag (and
/// `what` it needs) when there is none.
class FlagValue {
 public:
  FlagValue(int argc, char** argv, int& i) noexcept : argc_(argc), argv_(argv), i_(i) {}
  std::string_view operator()() {
    if (i_ + 1 >= argc_) throw UsageError(std::string(argv_[i_]) + " needs a value");
    return argv_[++i_];
  }
  std::vector<std::string_view> list(std::string_view what = "value") {
    const std::string_view flag = argv_[i_];
    std::vector<std::string_view> values;
    while (i_ + 1 < argc_ && std::string_view(argv_[i_ + 1]).substr(0, 2) != "--") {
      values.emplace_back(argv_[++i_]);
    }
    if (values.empty()) {
      throw UsageError(std::string(flag) + " needs at least one " + std::string(what));
    }
    return values;
  }

 private:
  int argc_;
  char** argv_;
  int& i_;
};

/// The flags both checkpoint runners take (grok1, moe-run): the checkpoint and the prompt,
/// sampling, threads, outputs, and where the weights live (moe::ResidencyOptions).
struct RunnerArgs {
  std::filesystem::path checkpoint;
  std::optional<std::filesystem::path> tokenizer;
  std::optional<std::string> prompt;
  std::optional<std::vector<std::int32_t>> tokens;
  std::size_t max_new_tokens = 100;
  double temperature = 0.0;  ///< each runner sets its default
  double top_p = 1.0;
  std::uint64_t seed = 42;
  std::size_t threads = 0;  ///< 0: all cores
  std::optional<std::filesystem::path> dump_logits;
  bool json = false;
  bool stop_at_eos = false;
  std::uint64_t ram_budget = 0;  ///< 0: default
  moe::CachePolicy cache_policy = moe::CachePolicy::kMostUsed;
  bool huge_readahead = true;
  std::size_t prefill_chunk = 0;  ///< 0: automatic
};

/// Reads `flag` into `a` when it is one of RunnerArgs' flags, its value (if it takes one) from
/// value(); false for any other flag.
inline bool parse_runner_flag(std::string_view flag, FlagValue& value, RunnerArgs& a) {
  if (flag == "--checkpoint") {
    a.checkpoint = std::string(value());
  } else if (flag == "--tokenizer") {
    a.tokenizer = std::string(value());
  } else if (flag == "--prompt") {
    a.prompt = std::string(value());
  } else if (flag == "--tokens") {
    a.tokens = parse_tokens(value());
  } else if (flag == "--max-new-tokens") {
    a.max_new_tokens = parse_integer<std::size_t>(flag, value(), 0, 1u << 20);
  } else if (flag == "--temperature") {
    a.temperature = parse_double(flag, value(), 0.0, 1e6);
  } else if (flag == "--top-p") {
    a.top_p = parse_double(flag, value(), 1e-12, 1.0);
  } else if (flag == "--seed") {
    a.seed = parse_integer<std::uint64_t>(flag, value(), 0, UINT64_MAX);
  } else if (flag == "--threads") {
    a.threads = parse_integer<std::size_t>(flag, value(), 1, 1024);
  } else if (flag == "--dump-logits") {
    a.dump_logits = std::string(value());
  } else if (flag == "--json") {
    a.json = true;
  } else if (flag == "--stop-at-eos") {
    a.stop_at_eos = true;
  } else if (flag == "--ram-budget") {
    a.ram_budget = parse_bytes(flag, value());
  } else if (flag == "--cache-policy") {
    a.cache_policy = parse_policy(value());
  } else if (flag == "--no-huge-readahead") {
    a.huge_readahead = false;
  } else if (flag == "--prefill-chunk") {
    a.prefill_chunk = parse_integer<std::size_t>(flag, value(), 1, 1u << 16);
  } else {
    return false;
  }
  return true;
}

/// The command line, argv[1..argc), flag by flag: `--help` / `-h` prints `usage` and exits 0;
/// every other flag goes to take(flag, value) (value: a FlagValue), which returns false for a
/// flag it does not know (a UsageError then).
template <class Take>
void for_each_flag(int argc, char** argv, const char* usage, Take&& take) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::fputs(usage, stdout);
      std::exit(0);
    }
    FlagValue value(argc, argv, i);
    if (!take(flag, value)) throw UsageError("unknown option '" + std::string(flag) + "'");
  }
}

/// An example's main(): args = parse(argc, argv), then run(args). A UsageError prints the
/// message and `usage` on stderr and returns 2; an exception from run prints
/// "<program>: error: <what>" and returns 1; otherwise run's return value.
template <class Parse, class Run>
int run_main(const char* program, const char* usage, int argc, char** argv, Parse&& parse,
             Run&& run) {
  decltype(parse(argc, argv)) args;
  try {
    args = parse(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "%s: error: %s\n\n%s", program, e.what(), usage);
    return 2;
  }
  try {
    return run(args);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "\n%s: error: out of memory\n", program);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\n%s: error: %s\n", program, e.what());
  }
  return 1;
}

using Clock = std::chrono::steady_clock;

/// Seconds from t0 to now.
inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
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
