// What the `train` example prints: the progress line on stderr and the --json metrics log.
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

namespace train_example {

/// One line of JSON, built key by key: {"a":1,"b":"x","c":[[0.5,0.5]]}.
class JsonLine {
 public:
  JsonLine& key(std::string_view k) {
    s_ += s_.size() > 1 ? "," : "";
    string(k);
    s_ += ':';
    return *this;
  }
  JsonLine& number(double v) {
    if (!std::isfinite(v)) {
      s_ += "null";
      return *this;
    }
    char buf[64];
    const auto r = std::to_chars(buf, buf + sizeof buf, v);
    s_.append(buf, r.ptr);
    return *this;
  }
  JsonLine& integer(std::uint64_t v) {
    s_ += std::to_string(v);
    return *this;
  }
  JsonLine& string(std::string_view v) {
    s_ += '"';
    for (const char ch : v) {
      const auto c = static_cast<unsigned char>(ch);
      if (c == '"' || c == '\\') {
        s_ += '\\';
        s_ += ch;
      } else if (c < 0x20) {
        char esc[8];
        std::snprintf(esc, sizeof esc, "\\u%04x", c);
        s_ += esc;
      } else {
        s_ += ch;  // UTF-8 passes through (paths and messages are UTF-8)
      }
    }
    s_ += '"';
    return *this;
  }
  JsonLine& raw(std::string_view json) {
    s_ += json;
    return *this;
  }
  JsonLine& array(const std::vector<double>& v) {
    s_ += '[';
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (i) s_ += ',';
      number(v[i]);
    }
    s_ += ']';
    return *this;
  }
  JsonLine& matrix(const std::vector<std::vector<double>>& m) {
    s_ += '[';
    for (std::size_t i = 0; i < m.size(); ++i) {
      s_ += i ? ",[" : "[";
      for (std::size_t j = 0; j < m[i].size(); ++j) {
        if (j) s_ += ',';
        number(m[i][j]);
      }
      s_ += ']';
    }
    s_ += ']';
    return *this;
  }
  [[nodiscard]] std::string str() const { return s_ + "}"; }

 private:
  std::string s_ = "{";
};

/// "1h02m", "3m05s", "42s".
inline std::string duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<long long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", s / 3600, (s / 60) % 60);
  } else if (s >= 60) {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%llds", s);
  }
  return buf;
}

/// One layer's expert load as bars, one per expert, height = share / largest share:
/// "▃▅▄█▂▃▄▄". Uniform load shows as a row of full blocks.
inline std::string load_bars(const std::vector<double>& load) {
  static const char* kBars[8] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
  const double top = load.empty() ? 0.0 : *std::max_element(load.begin(), load.end());
  std::string s;
  for (double x : load) {
    const int level = top > 0 ? std::clamp(static_cast<int>(std::lround(x / top * 7.0)), 0, 7) : 0;
    s += kBars[level];
  }
  return s;
}

/// Everything one progress line shows.
struct ProgressLine {
  std::uint64_t step = 0, steps = 0;
  double loss = NAN, val_loss = NAN, lr = 0, tokens_per_second = 0, elapsed = 0, eta = NAN;
  std::vector<std::vector<double>> expert_load;  ///< [layer][expert] shares, may be empty

  [[nodiscard]] std::string str() const {
    const double done = steps ? static_cast<double>(step) / static_cast<double>(steps) : 0.0;
    const int filled = static_cast<int>(done * 20.0);
    char buf[256];
    std::snprintf(buf, sizeof buf, "step %llu/%llu [%.*s%*s] %3.0f%% | loss %.4f",
                  static_cast<unsigned long long>(step), static_cast<unsigned long long>(steps),
                  filled, "####################", 20 - filled, "", 100.0 * done, loss);
    std::string s = buf;
    if (std::isfinite(val_loss)) {
      std::snprintf(buf, sizeof buf, " val %.4f", val_loss);
      s += buf;
    }
    std::snprintf(buf, sizeof buf, " | lr %.2e | %.0f tok/s | %s, ETA %s", lr, tokens_per_second,
                  duration(elapsed).c_str(), duration(eta).c_str());
    s += buf;
    for (std::size_t l = 0; l < expert_load.size(); ++l) {
      s += (l ? " L" : " | load L") + std::to_string(l) + " " + load_bars(expert_load[l]);
    }
    return s;
  }
};

/// Prints progress lines on stderr: on a terminal, the current line is redrawn in place (at most
/// 5 times a second) and every evaluation leaves a line; in a log, only the evaluations do.
class Progress {
 public:
  Progress(bool enabled, bool tty) : enabled_(enabled), tty_(tty) {}

  /// After a training step (no validation loss yet).
  void update(const ProgressLine& p, double now) {
    if (!enabled_ || !tty_ || now - last_ < 0.2) return;
    last_ = now;
    std::fprintf(stderr, "\r\033[K%s", p.str().c_str());
    std::fflush(stderr);
  }
  /// After an evaluation: a permanent line.
  void evaluation(const ProgressLine& p) {
    if (!enabled_) return;
    std::fprintf(stderr, "%s%s\n", tty_ ? "\r\033[K" : "", p.str().c_str());
    std::fflush(stderr);
  }
  /// A message on its own line (clears the in-place line first).
  void message(const std::string& m) {
    if (!enabled_) return;
    std::fprintf(stderr, "%strain: %s\n", tty_ ? "\r\033[K" : "", m.c_str());
    std::fflush(stderr);
  }

 private:
  bool enabled_, tty_;
  double last_ = -1e9;
};

}  // namespace train_example
