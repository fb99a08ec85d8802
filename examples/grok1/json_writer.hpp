// A minimal streaming JSON writer for the grok1 example's --json output.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

namespace grok1_example {

class JsonWriter {
 public:
  explicit JsonWriter(std::FILE* out) : out_(out) {}

  JsonWriter& begin_object() {
    std::fputc('{', out_);
    first_.push_back(true);
    return *this;
  }
  JsonWriter& end_object() {
    std::fputc('}', out_);
    first_.pop_back();
    return *this;
  }
  JsonWriter& key(std::string_view k) {
    if (!first_.back()) std::fputc(',', out_);
    first_.back() = false;
    write_string(k);
    std::fputc(':', out_);
    return *this;
  }
  JsonWriter& string(std::string_view s) {
    write_string(s);
    return *this;
  }
  JsonWriter& number(double v) {
    if (std::isfinite(v)) {
      std::fprintf(out_, "%.17g", v);
    } else {
      std::fputs("null", out_);
    }
    return *this;
  }
  JsonWriter& boolean(bool b) {
    std::fputs(b ? "true" : "false", out_);
    return *this;
  }
  JsonWriter& int_array(const std::vector<std::int32_t>& v) {
    std::fputc('[', out_);
    for (std::size_t i = 0; i < v.size(); ++i) std::fprintf(out_, i ? ",%d" : "%d", v[i]);
    std::fputc(']', out_);
    return *this;
  }

 private:
  // Escapes per RFC 8259; invalid UTF-8 bytes become U+FFFD so the output is always valid JSON.
  void write_string(std::string_view s) {
    std::fputc('"', out_);
    for (std::size_t i = 0; i < s.size();) {
      const auto c = static_cast<unsigned char>(s[i]);
      if (c == '"' || c == '\\') {
        std::fputc('\\', out_);
        std::fputc(c, out_);
        ++i;
      } else if (c < 0x20) {
        switch (c) {
          case '\n':
            std::fputs("\\n", out_);
            break;
          case '\r':
            std::fputs("\\r", out_);
            break;
          case '\t':
            std::fputs("\\t", out_);
            break;
          default:
            std::fprintf(out_, "\\u%04x", c);
        }
        ++i;
      } else if (c < 0x80) {
        std::fputc(c, out_);
        ++i;
      } else {
        const std::size_t n = utf8_length(s, i);
        if (n == 0) {
          std::fputs("\\ufffd", out_);
          ++i;
        } else {
          std::fwrite(s.data() + i, 1, n, out_);
          i += n;
        }
      }
    }
    std::fputc('"', out_);
  }

  // Length of the valid UTF-8 sequence at s[i] (lead byte >= 0x80), or 0 if invalid.
  static std::size_t utf8_length(std::string_view s, std::size_t i) {
    const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
    const unsigned char c = b(0);
    std::size_t n = 0;
    std::uint32_t cp = 0;
    if (c >= 0xc2 && c <= 0xdf) {
      n = 2;
      cp = c & 0x1fu;
    } else if (c >= 0xe0 && c <= 0xef) {
      n = 3;
      cp = c & 0x0fu;
    } else if (c >= 0xf0 && c <= 0xf4) {
      n = 4;
      cp = c & 0x07u;
    } else {
      return 0;
    }
    if (i + n > s.size()) return 0;
    for (std::size_t k = 1; k < n; ++k) {
      if ((b(k) & 0xc0u) != 0x80u) return 0;
      cp = (cp << 6) | (b(k) & 0x3fu);
    }
    if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (n == 4 && (cp < 0x10000 || cp > 0x10ffff))) {
      return 0;
    }
    return n;
  }

  std::FILE* out_;
  std::vector<bool> first_;
};

}  // namespace grok1_example
