// moe/core/error.hpp: the exception family thrown by moe.
//
// Policy: errors a user can cause (bad shapes, bad configs, bad files) throw, once, at
// construction or load time. Messages start with "[component]" and name the tensor or file and
// both shapes involved. Hot loops are noexcept and never throw.
#pragma once

#include <cstddef>
#include <initializer_list>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace moe {

/// Base of every exception moe throws.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A configuration value is invalid (e.g. top_k > n_experts).
class ConfigError : public Error {
 public:
  using Error::Error;
};

/// A tensor has the wrong shape or dtype.
class ShapeError : public Error {
 public:
  using Error::Error;
};

/// Operating-system I/O failed (open, mmap, ...). The message carries the path and errno text.
class IoError : public Error {
 public:
  using Error::Error;
};

/// A file's content is malformed (truncated, bad opcode, out-of-bounds length, ...).
class FormatError : public Error {
 public:
  using Error::Error;
};

/// A runtime capacity was exceeded (e.g. the KV cache is full).
class CapacityError : public Error {
 public:
  using Error::Error;
};

/// A token id outside a vocabulary [0, vocab_size) (prompt ids, ids to decode).
class TokenError : public Error {
 public:
  using Error::Error;
};

/// Formats a shape as "[a, b, c]".
inline std::string shape_str(std::span<const std::size_t> shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

inline std::string shape_str(std::initializer_list<std::size_t> shape) {
  return shape_str(std::span<const std::size_t>(shape.begin(), shape.size()));
}

inline std::string shape_str(const std::vector<std::size_t>& shape) {
  return shape_str(std::span<const std::size_t>(shape.data(), shape.size()));
}

/// Throws ShapeError "[component] tensor 'name' has shape [got], expected [want]" when they differ.
inline void check_shape(std::string_view component, std::string_view name,
                        std::span<const std::size_t> got, std::span<const std::size_t> want) {
  bool same = got.size() == want.size();
  for (std::size_t i = 0; same && i < got.size(); ++i) same = got[i] == want[i];
  if (!same) {
    throw ShapeError("[" + std::string(component) + "] tensor '" + std::string(name) +
                     "' has shape " + shape_str(got) + ", expected " + shape_str(want));
  }
}

inline void check_shape(std::string_view component, std::string_view name,
                        std::initializer_list<std::size_t> got,
                        std::initializer_list<std::size_t> want) {
  check_shape(component, name, std::span<const std::size_t>(got.begin(), got.size()),
              std::span<const std::size_t>(want.begin(), want.size()));
}

/// Throws ConfigError("[component] message") unless `ok`.
inline void check_config(bool ok, std::string_view component, std::string_view message) {
  if (!ok) throw ConfigError("[" + std::string(component) + "] " + std::string(message));
}

}  // namespace moe
