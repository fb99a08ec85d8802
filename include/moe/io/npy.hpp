// moe/io/npy.hpp: float32 .npy files (numpy's array format), e.g. `grok1 --dump-logits`.
//
//   moe::io::write_npy("logits.npy", logits.data(), {prompt_len, vocab});  // float32, C order
//   moe::io::NpyArray a = moe::io::read_npy("logits.npy");                 // a.shape, a.data
//
// The writer emits exactly what numpy 1.24's np.save writes for a C-contiguous '<f4' array:
// format version 1.0, the header dict "{'descr': '<f4', 'fortran_order': False, 'shape': (...), }"
// followed by numpy's growth padding and spaces up to a multiple of 64 bytes, then '\n'.
// The reader accepts versions 1.0, 2.0 and 3.0, '<f4' data in C order, any rank, and checks that
// the file holds exactly prod(shape) floats. Errors: IoError (open/read/write) and FormatError
// (malformed file), both "[npy] 'path': ...".
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <moe/core/error.hpp>

namespace moe::io {

/// A float32 array read from a .npy file.
struct NpyArray {
  std::vector<std::size_t> shape;
  std::vector<float> data;  ///< C order

  [[nodiscard]] std::size_t numel() const noexcept { return data.size(); }
  /// Element [r, c] of a 2-D array.
  [[nodiscard]] float at(std::size_t r, std::size_t c) const noexcept {
    return data[r * shape[1] + c];
  }
};

namespace detail {

struct FileCloser {
  void operator()(std::FILE* f) const noexcept {
    if (f) std::fclose(f);
  }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

/// numpy's repr of a shape tuple: "()", "(5,)", "(2, 3)".
inline std::string npy_shape_repr(std::span<const std::size_t> shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}

/// The full header (magic .. '\n') numpy writes for a C-order '<f4' array of this shape.
inline std::string npy_header(std::span<const std::size_t> shape) {
  std::string dict =
      "{'descr': '<f4', 'fortran_order': False, 'shape': " + npy_shape_repr(shape) + ", }";
  // numpy >= 1.23 leaves room for the first axis to grow to 21 digits.
  if (!shape.empty()) {
    const std::size_t digits = std::to_string(shape[0]).size();
    if (digits < 21) dict.append(21 - digits, ' ');
  }
  const std::size_t prefix = 6 + 2 + 2;  // magic, version, uint16 header length
  const std::size_t hlen = dict.size() + 1;
  const std::size_t pad = 64 - (prefix + hlen) % 64;
  const std::size_t total_len = hlen + pad;
  std::string h("\x93NUMPY\x01\x00", 8);
  h += static_cast<char>(total_len & 0xff);
  h += static_cast<char>((total_len >> 8) & 0xff);
  h += dict;
  h.append(pad, ' ');
  h += '\n';
  return h;
}

[[noreturn]] inline void npy_bad(const std::string& path, const std::string& msg) {
  throw FormatError("[npy] '" + path + "': " + msg);
}

}  // namespace detail

/// Writes a C-order float32 array of `shape` (prod(shape) floats at `data`). Throws IoError.
inline void write_npy(const std::filesystem::path& path, const float* data,
                      std::span<const std::size_t> shape) {
  std::size_t n = 1;
  for (std::size_t d : shape) n *= d;
  if (shape.size() > 32) throw FormatError("[npy] '" + path.string() + "': too many dimensions");
  const std::string header = detail::npy_header(shape);
  if (header.size() > 65535 + 10) {
    throw FormatError("[npy] '" + path.string() + "': header too long for format 1.0");
  }
  detail::FilePtr f(std::fopen(path.c_str(), "wb"));
  if (!f) throw IoError("[npy] cannot create '" + path.string() + "': " + std::strerror(errno));
  bool ok = std::fwrite(header.data(), 1, header.size(), f.get()) == header.size();
  ok = ok && (n == 0 || std::fwrite(data, sizeof(float), n, f.get()) == n);
  ok = std::fclose(f.release()) == 0 && ok;
  if (!ok) throw IoError("[npy] error writing '" + path.string() + "'");
}

inline void write_npy(const std::filesystem::path& path, const float* data,
                      std::initializer_list<std::size_t> shape) {
  write_npy(path, data, std::span<const std::size_t>(shape.begin(), shape.size()));
}

/// Reads a C-order '<f4' .npy file. Throws IoError / FormatError.
inline NpyArray read_npy(const std::filesystem::path& path) {
  const std::string p = path.string();
  detail::FilePtr f(std::fopen(path.c_str(), "rb"));
  if (!f) throw IoError("[npy] cannot open '" + p + "': " + std::strerror(errno));
  unsigned char pre[8];
  if (std::fread(pre, 1, 8, f.get()) != 8 || std::memcmp(pre, "\x93NUMPY", 6) != 0) {
    detail::npy_bad(p, "not a .npy file (bad magic)");
  }
  const unsigned major = pre[6];
  std::size_t hlen = 0;
  if (major == 1) {
    unsigned char b[2];
    if (std::fread(b, 1, 2, f.get()) != 2) detail::npy_bad(p, "truncated header");
    hlen = b[0] | (std::size_t{b[1]} << 8);
  } else if (major == 2 || major == 3) {
    unsigned char b[4];
    if (std::fread(b, 1, 4, f.get()) != 4) detail::npy_bad(p, "truncated header");
    hlen = b[0] | (std::size_t{b[1]} << 8) | (std::size_t{b[2]} << 16) | (std::size_t{b[3]} << 24);
    if (hlen > (1u << 20)) detail::npy_bad(p, "header longer than 1 MiB");
  } else {
    detail::npy_bad(p, "unsupported format version " + std::to_string(major));
  }
  std::string h(hlen, '\0');
  if (std::fread(h.data(), 1, hlen, f.get()) != hlen) detail::npy_bad(p, "truncated header");

  // The header is a Python dict literal with the keys 'descr', 'fortran_order' and 'shape'.
  auto value_of = [&](std::string_view key) -> std::string_view {
    const std::string k = "'" + std::string(key) + "':";
    const std::size_t at = h.find(k);
    if (at == std::string::npos) detail::npy_bad(p, "header has no '" + std::string(key) + "'");
    std::size_t v = at + k.size();
    while (v < h.size() && h[v] == ' ') ++v;
    return std::string_view(h).substr(v);
  };
  const std::string_view descr = value_of("descr");
  if (descr.substr(0, 6) != "'<f4'," && descr.substr(0, 6) != "'<f4'}") {
    detail::npy_bad(p, "dtype is " + std::string(descr.substr(0, descr.find(','))) +
                           ", only '<f4' (little-endian float32) is supported");
  }
  if (value_of("fortran_order").substr(0, 5) != "False") {
    detail::npy_bad(p, "Fortran-order arrays are not supported");
  }
  const std::string_view sh = value_of("shape");
  if (sh.empty() || sh[0] != '(') detail::npy_bad(p, "malformed shape");
  NpyArray a;
  std::size_t i = 1, n = 1;
  for (;;) {
    while (i < sh.size() && (sh[i] == ' ' || sh[i] == ',')) ++i;
    if (i >= sh.size()) detail::npy_bad(p, "malformed shape");
    if (sh[i] == ')') break;
    std::size_t d = 0, digits = 0;
    while (i < sh.size() && sh[i] >= '0' && sh[i] <= '9') {
      if (d > (std::size_t{1} << 48)) detail::npy_bad(p, "absurd dimension in shape");
      d = d * 10 + static_cast<std::size_t>(sh[i] - '0');
      ++i, ++digits;
    }
    if (digits == 0) detail::npy_bad(p, "malformed shape");
    if (a.shape.size() >= 32) detail::npy_bad(p, "too many dimensions");
    if (d != 0 && n > (std::size_t{1} << 40) / d) detail::npy_bad(p, "absurd shape");
    n *= d;
    a.shape.push_back(d);
  }
  a.data.resize(n);
  if (n != 0 && std::fread(a.data.data(), sizeof(float), n, f.get()) != n) {
    detail::npy_bad(p, "file holds fewer than the " + std::to_string(n) + " floats of shape " +
                           shape_str(a.shape));
  }
  if (std::fgetc(f.get()) != EOF) {
    detail::npy_bad(p, "file holds more than the " + std::to_string(n) + " floats of shape " +
                           shape_str(a.shape));
  }
  return a;
}

}  // namespace moe::io
