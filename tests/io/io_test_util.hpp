// Helpers of test_io: a byte-level pickle builder, files, CRC-32, exception-message capture.
#pragma once

#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include <moe/core/error.hpp>

namespace io_test {

namespace fs = std::filesystem;

/// Where ctest's fixture step (tests/io/make_io_fixtures.py) wrote the generated checkpoints.
inline fs::path fixtures() {
  return fs::path(MOE_IO_FIXTURES);
}

/// Fails the test (instead of passing vacuously) when a fixture is missing.
inline fs::path fixture(const std::string& name) {
  const fs::path p = fixtures() / name;
  if (!fs::exists(p)) {
    FAIL("fixture '" << p.string()
                     << "' is missing: run the tests through ctest (the fixture test 'io: generate "
                        "checkpoint fixtures' creates it)");
  }
  return p;
}

/// A fresh, empty scratch directory for one test.
inline fs::path scratch(const std::string& name) {
  const fs::path p = fixtures() / "scratch" / name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

inline void write_file(const fs::path& p, const std::vector<std::byte>& data) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  REQUIRE(f.good());
}

inline void write_text(const fs::path& p, const std::string& text) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f << text;
  REQUIRE(f.good());
}

inline std::vector<std::byte> read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  REQUIRE(f.good());
  std::vector<char> c((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<std::byte> b(c.size());
  if (!c.empty()) std::memcpy(b.data(), c.data(), c.size());
  return b;
}

/// CRC-32 (zlib's polynomial), to compare payloads with the generator's sidecar.
inline std::uint32_t crc32(const void* data, std::size_t n) {
  static const auto table = [] {
    std::vector<std::uint32_t> t(256);
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  std::uint32_t c = 0xFFFFFFFFu;
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFFu] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

/// Runs f, requires it to throw E, returns what(). Fails on no exception or another type.
template <class E, class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("expected another exception type, got: " << e.what());
  }
  FAIL("expected an exception, none was thrown");
  return {};
}

using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

/// Builds pickle byte streams opcode by opcode (little-endian args, as Python writes them).
class PickleBuilder {
 public:
  std::vector<std::byte> bytes;

  PickleBuilder& op(std::uint8_t o) { return u8(o); }
  PickleBuilder& u8(std::uint8_t v) {
    bytes.push_back(static_cast<std::byte>(v));
    return *this;
  }
  PickleBuilder& u16(std::uint16_t v) { return le(v, 2); }
  PickleBuilder& u32(std::uint32_t v) { return le(v, 4); }
  PickleBuilder& u64(std::uint64_t v) { return le(v, 8); }
  PickleBuilder& raw(std::string_view s) {
    for (char c : s) bytes.push_back(static_cast<std::byte>(c));
    return *this;
  }
  PickleBuilder& raw(const std::vector<std::byte>& b) {
    bytes.insert(bytes.end(), b.begin(), b.end());
    return *this;
  }

  PickleBuilder& proto(int v = 4) { return op(0x80).u8(static_cast<std::uint8_t>(v)); }
  PickleBuilder& frame(std::uint64_t n) { return op(0x95).u64(n); }
  PickleBuilder& mark() { return op('('); }
  PickleBuilder& stop() { return op('.'); }
  PickleBuilder& memoize() { return op(0x94); }
  PickleBuilder& none() { return op('N'); }
  PickleBuilder& boolean(bool v) { return op(v ? 0x88 : 0x89); }
  PickleBuilder& integer(std::int64_t v) {
    if (v >= 0 && v < 256) return op('K').u8(static_cast<std::uint8_t>(v));
    if (v >= 0 && v < 65536) return op('M').u16(static_cast<std::uint16_t>(v));
    if (v >= INT32_MIN && v <= INT32_MAX) {
      return op('J').u32(static_cast<std::uint32_t>(static_cast<std::int32_t>(v)));
    }
    op(0x8a).u8(8);
    return le(static_cast<std::uint64_t>(v), 8);
  }
  PickleBuilder& str(std::string_view s) {
    if (s.size() < 256) return op(0x8c).u8(static_cast<std::uint8_t>(s.size())).raw(s);
    return op('X').u32(static_cast<std::uint32_t>(s.size())).raw(s);
  }
  PickleBuilder& blob(const std::vector<std::byte>& b) {
    if (b.size() < 256) return op('C').u8(static_cast<std::uint8_t>(b.size())).raw(b);
    return op('B').u32(static_cast<std::uint32_t>(b.size())).raw(b);
  }
  PickleBuilder& stack_global(std::string_view module, std::string_view name) {
    return str(module).str(name).op(0x93);
  }
  PickleBuilder& global(std::string_view module, std::string_view name) {
    op('c').raw(module).raw("\n").raw(name).raw("\n");
    return *this;
  }
  PickleBuilder& tuple(std::size_t n) {  // TUPLE1..3 (after n values) or needs a prior mark()
    if (n >= 1 && n <= 3) return op(static_cast<std::uint8_t>(0x84 + n));
    return op(n == 0 ? ')' : 't');
  }
  PickleBuilder& reduce() { return op('R'); }
  PickleBuilder& build() { return op('b'); }

  /// numpy.dtype(descr, False, True) + BUILD (3, endian, None, None, None, elsize, align, flags);
  /// descr "bf16" pickles the ml_dtypes.bfloat16 global.
  PickleBuilder& dtype(std::string_view descr, std::string_view endian = "<",
                       std::int64_t elsize = -1, std::string_view numpy = "numpy") {
    stack_global(numpy, "dtype");
    if (descr == "bf16") {
      stack_global("ml_dtypes", "bfloat16");
    } else {
      str(descr);
    }
    boolean(false).boolean(true).tuple(3).reduce();
    mark().integer(3).str(endian).none().none().none().integer(elsize).integer(elsize);
    return integer(0).op('t').build();
  }

  /// numpy 1.x array: _reconstruct(ndarray, (0,), b'b') + BUILD (1, shape, dtype, fortran, data).
  PickleBuilder& array(std::initializer_list<std::int64_t> shape, std::string_view descr,
                       const std::vector<std::byte>& data, std::string_view endian = "<",
                       bool fortran = false, std::string_view module = "numpy.core.multiarray") {
    return array_v(std::vector<std::int64_t>(shape), descr, data, endian, fortran, module);
  }
  PickleBuilder& array_v(const std::vector<std::int64_t>& shape, std::string_view descr,
                         const std::vector<std::byte>& data, std::string_view endian = "<",
                         bool fortran = false, std::string_view module = "numpy.core.multiarray") {
    stack_global(module, "_reconstruct");
    stack_global("numpy", "ndarray").integer(0).tuple(1).blob({std::byte{'b'}}).tuple(3).reduce();
    mark().integer(1).mark();
    for (std::int64_t d : shape) integer(d);
    op('t');
    dtype(descr, endian).boolean(fortran).blob(data);
    return op('t').build();
  }

  /// __main__.QuantizedWeight8bit via NEWOBJ + BUILD {'weight': w, 'scales': s}.
  PickleBuilder& qw8_begin(std::string_view module = "__main__",
                           std::string_view name = "QuantizedWeight8bit") {
    stack_global(module, name).tuple(0).op(0x81);
    return op('}').mark();
  }
  PickleBuilder& qw8_end() { return op('u').build(); }

 private:
  PickleBuilder& le(std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) u8(static_cast<std::uint8_t>(v >> (8 * i)));
    return *this;
  }
};

/// n bytes 0, 1, 2, ...
inline std::vector<std::byte> iota_bytes(std::size_t n) {
  std::vector<std::byte> b(n);
  for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<std::byte>(i & 0xff);
  return b;
}

inline std::vector<std::byte> floats(std::initializer_list<float> v) {
  std::vector<std::byte> b(v.size() * 4);
  std::memcpy(b.data(), v.begin(), b.size());
  return b;
}

}  // namespace io_test
