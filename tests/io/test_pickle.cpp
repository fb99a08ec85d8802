// The data-only pickle VM: valid streams (hand-built and written by Python's pickle), zero-copy
// views, and every class of malformed or hostile input, each with its error message.
#include <catch2/catch.hpp>

#include <cstring>
#include <string>
#include <variant>
#include <vector>

#include <moe/io/mapped_file.hpp>
#include <moe/io/pickle.hpp>

#include "io_test_util.hpp"

using namespace io_test;
using moe::FormatError;
using moe::io::Array;
using moe::io::DType;
using moe::io::parse_pickle;
using moe::io::PickleClass;
using moe::io::PickledInstance;
using moe::io::PickledObject;

namespace {

// The caller-allowed class of these tests: Grok-1's QuantizedWeight8bit shape of object (any
// module, NEWOBJ without arguments, a {'weight', 'scales'} array state). The reader itself knows
// no class.
constexpr std::string_view kQw8Attributes[] = {"weight", "scales"};
constexpr PickleClass kClasses[] = {{"", "QuantizedWeight8bit", kQw8Attributes}};

PickledObject parse(const PickleBuilder& b, const char* name = "test.pkl") {
  return parse_pickle(b.bytes, name, kClasses);
}

std::string error_of(const std::vector<std::byte>& bytes, const char* name = "test.pkl") {
  return message_of<FormatError>([&] { (void)parse_pickle(bytes, name, kClasses); });
}
std::string error_of(const PickleBuilder& b) {
  return error_of(b.bytes);
}

/// A valid protocol-4 float32 [2, 3] array pickle.
PickleBuilder f32_2x3() {
  PickleBuilder b;
  b.proto(4).array({2, 3}, "f4", floats({1, 2, 3, 4, 5, 6})).stop();
  return b;
}

std::size_t find_bytes(const std::vector<std::byte>& hay, const std::vector<std::byte>& needle) {
  for (std::size_t i = 0; i + needle.size() <= hay.size(); ++i) {
    if (std::memcmp(hay.data() + i, needle.data(), needle.size()) == 0) return i;
  }
  return hay.size();
}

}  // namespace

TEST_CASE("pickle: a float32 array is a zero-copy view at the payload's offset", "[io][pickle]") {
  const PickleBuilder b = f32_2x3();
  const PickledObject o = parse(b);
  REQUIRE(std::holds_alternative<Array>(o));
  const Array& a = std::get<Array>(o);
  CHECK(a.dtype == DType::kF32);
  CHECK(a.shape == std::vector<std::size_t>{2, 3});
  CHECK(a.numel() == 6);
  CHECK(a.nbytes == 24);
  const std::size_t at = find_bytes(b.bytes, floats({1, 2, 3, 4, 5, 6}));
  REQUIRE(at < b.bytes.size());
  CHECK(a.offset == at);
  CHECK(a.data == b.bytes.data() + at);  // a view, not a copy
  float v[6];
  std::memcpy(v, a.data, sizeof v);
  CHECK(v[0] == 1.0f);
  CHECK(v[5] == 6.0f);
  CHECK(a.describe() == "float32 [2, 3]");
}

TEST_CASE("pickle: QuantizedWeight8bit via NEWOBJ + BUILD", "[io][pickle]") {
  PickleBuilder b;
  b.proto(4).frame(0).qw8_begin("__main__");
  b.str("weight").array({2, 4}, "i1", iota_bytes(8), "|");
  b.str("scales").array({1, 4}, "bf16", iota_bytes(8));
  b.qw8_end().stop();
  const PickledObject o = parse(b);
  REQUIRE(std::holds_alternative<PickledInstance>(o));
  const PickledInstance& q = std::get<PickledInstance>(o);
  CHECK(q.class_name == "__main__.QuantizedWeight8bit");
  CHECK(q.class_index == 0);
  REQUIRE(q.attributes.size() == 2);
  const Array& weight = q.attributes[0];
  const Array& scales = q.attributes[1];
  CHECK(weight.dtype == DType::kI8);
  CHECK(weight.shape == std::vector<std::size_t>{2, 4});
  CHECK(scales.dtype == DType::kBF16);
  CHECK(scales.shape == std::vector<std::size_t>{1, 4});
  CHECK(scales.nbytes == 8);
  CHECK(scales.offset > weight.offset + weight.nbytes);

  // a repeated attribute: the last value wins, as in Python's dict
  PickleBuilder d;
  d.proto(4).qw8_begin().str("weight").array({1, 1}, "i1", iota_bytes(1), "|");
  d.str("scales").array({1, 3}, "bf16", iota_bytes(6));
  d.str("weight").array({3, 3}, "i1", iota_bytes(9), "|").qw8_end().stop();
  CHECK(std::get<PickledInstance>(parse(d)).attributes[0].shape == std::vector<std::size_t>{3, 3});

  // any module may define the class (the release used __main__; a package would not)
  PickleBuilder c;
  c.proto(4).qw8_begin("model").str("weight").array({1, 1}, "i1", iota_bytes(1), "|");
  c.str("scales").array({1, 1}, "bf16", iota_bytes(2)).qw8_end().stop();
  CHECK(std::get<PickledInstance>(parse(c)).class_name == "model.QuantizedWeight8bit");
}

TEST_CASE("pickle: the caller decides which classes exist", "[io][pickle]") {
  PickleBuilder b;
  b.proto(4).qw8_begin("__main__").str("weight").array({1, 1}, "i1", iota_bytes(1), "|");
  b.str("scales").array({1, 1}, "bf16", iota_bytes(2)).qw8_end().stop();
  SECTION("no classes: the global itself is rejected, before any object exists") {
    CHECK_THAT(message_of<FormatError>([&] { (void)parse_pickle(b.bytes, "x.pkl"); }),
               Contains("(STACK_GLOBAL): global '__main__.QuantizedWeight8bit' is not allowed (a "
                        "data-only reader accepts only numpy._reconstruct, numpy.ndarray, "
                        "numpy.dtype, numpy _frombuffer, ml_dtypes.bfloat16)"));
  }
  SECTION("a module-qualified class matches only its module") {
    static constexpr PickleClass only_model[] = {{"model", "QuantizedWeight8bit", kQw8Attributes}};
    CHECK_THAT(message_of<FormatError>([&] { (void)parse_pickle(b.bytes, "x.pkl", only_model); }),
               Contains("global '__main__.QuantizedWeight8bit' is not allowed") &&
                   Contains("ml_dtypes.bfloat16 and model.QuantizedWeight8bit)"));
  }
  SECTION("another class with other attributes; the class index tells which one was built") {
    static constexpr std::string_view triple_attributes[] = {"a", "b", "c"};
    static constexpr PickleClass two[] = {{"", "QuantizedWeight8bit", kQw8Attributes},
                                          {"mylib", "Triple", triple_attributes}};
    PickleBuilder t;
    t.proto(4).qw8_begin("mylib", "Triple");
    t.str("c").array({2}, "f4", floats({5, 6}));
    t.str("a").array({1}, "f4", floats({1}));
    t.str("b").array({0}, "f4", {}).qw8_end().stop();
    const PickledInstance i = std::get<PickledInstance>(parse_pickle(t.bytes, "t.pkl", two));
    CHECK(i.class_index == 1);
    CHECK(i.class_name == "mylib.Triple");
    REQUIRE(i.attributes.size() == 3);
    CHECK(i.attributes[0].numel() == 1);
    CHECK(i.attributes[1].numel() == 0);
    CHECK(i.attributes[2].numel() == 2);
    CHECK(std::get<PickledInstance>(parse_pickle(b.bytes, "b.pkl", two)).class_index == 0);
    PickleBuilder missing;
    missing.proto(4).qw8_begin("mylib", "Triple").str("a").array({1}, "f4", floats({1}));
    missing.qw8_end().stop();
    CHECK_THAT(message_of<FormatError>([&] { (void)parse_pickle(missing.bytes, "t.pkl", two); }),
               Contains("Triple has no 'b'"));
    PickleBuilder wrong_module;
    wrong_module.proto(4).qw8_begin("other", "Triple").qw8_end().stop();
    CHECK_THAT(message_of<FormatError>([&] { (void)parse_pickle(wrong_module.bytes, "t", two); }),
               Contains("global 'other.Triple' is not allowed"));
  }
}

TEST_CASE("pickle: memo opcodes, GLOBAL, numpy 2 names, frames", "[io][pickle]") {
  SECTION("MEMOIZE/BINGET reuse a dtype object built once") {
    PickleBuilder b;
    b.proto(4).qw8_begin().str("weight");
    b.stack_global("numpy.core.multiarray", "_reconstruct").memoize();  // memo 0
    b.stack_global("numpy", "ndarray").memoize();                       // memo 1
    b.integer(0).tuple(1).blob({std::byte{'b'}}).tuple(3).reduce();
    b.mark().integer(1).integer(2).integer(2).tuple(2).dtype("i1", "|").memoize();  // memo 2
    b.boolean(false).blob(iota_bytes(4)).op('t').build();
    b.str("scales").op('h').u8(0).op('h').u8(1).integer(0).tuple(1).blob({std::byte{'b'}});
    b.tuple(3).reduce().mark().integer(1).integer(1).integer(2).tuple(2).dtype("bf16");
    b.boolean(false).blob(iota_bytes(4)).op('t').build().qw8_end().stop();
    const PickledInstance q = std::get<PickledInstance>(parse(b));
    CHECK(q.attributes[0].shape == std::vector<std::size_t>{2, 2});
    CHECK(q.attributes[1].dtype == DType::kBF16);
  }
  SECTION("text GLOBAL and BINPUT/LONG_BINPUT (protocols 2-3)") {
    PickleBuilder b;
    b.proto(3).global("numpy.core.multiarray", "_reconstruct").op('q').u8(7);
    b.global("numpy", "ndarray").op('r').u32(300).integer(0).tuple(1).blob({std::byte{'b'}});
    b.tuple(3).reduce().mark().integer(1).integer(3).tuple(1);
    b.global("numpy", "dtype").str("f4").boolean(false).boolean(true).tuple(3).reduce();
    b.mark().integer(3).str("<").none().none().none().integer(-1).integer(-1).integer(0);
    b.op('t').build().boolean(false).blob(floats({1, 2, 3})).op('t').build().stop();
    CHECK(std::get<Array>(parse(b)).shape == std::vector<std::size_t>{3});
  }
  SECTION("BINBYTES8 and BYTEARRAY8 payloads, LONG1 dimensions, BINUNICODE8 strings") {
    for (std::uint8_t data_op : {std::uint8_t{0x8e}, std::uint8_t{0x96}}) {
      PickleBuilder b;
      b.proto(4).op(0x8d).u64(21).raw("numpy.core.multiarray").op('X').u32(12).raw("_reconstruct");
      b.op(0x93).stack_global("numpy", "ndarray").integer(0).tuple(1).blob({std::byte{'b'}});
      b.tuple(3).reduce().mark().integer(1).op(0x8a).u8(2).u16(3).tuple(1).dtype("f4");
      b.boolean(false).op(data_op).u64(12).raw(floats({1, 2, 3})).op('t').build().stop();
      const Array a = std::get<Array>(parse(b));
      CHECK(a.shape == std::vector<std::size_t>{3});
      CHECK(a.offset == b.bytes.size() - 1 - 2 - 12);  // payload, TUPLE, BUILD, STOP
    }
  }
  SECTION("numpy 2 module names") {
    PickleBuilder b;
    b.proto(4).array({1}, "f4", floats({7}), "<", false, "numpy._core.multiarray").stop();
    CHECK(std::get<Array>(parse(b)).numel() == 1);
  }
}

TEST_CASE("pickle: files written by Python's own pickle (protocols 3, 4, 5)", "[io][pickle]") {
  const auto dir = fixture("pickles");
  for (int proto : {3, 4, 5}) {
    INFO("protocol " << proto);
    const std::string p = std::to_string(proto);
    {
      moe::io::MappedFile f(dir / ("f32_2x3.p" + p));
      const Array a = std::get<Array>(parse_pickle(f.bytes(), f.path()));
      REQUIRE(a.shape == std::vector<std::size_t>{2, 3});
      REQUIRE(a.dtype == DType::kF32);
      float v[6];
      std::memcpy(v, a.data, sizeof v);
      for (int i = 0; i < 6; ++i) CHECK(v[i] == static_cast<float>(i) - 2.5f);
    }
    {
      moe::io::MappedFile f(dir / ("f32_big.p" + p));
      const Array a = std::get<Array>(parse_pickle(f.bytes(), f.path()));
      REQUIRE(a.numel() == 20000);
      float first, last;
      std::memcpy(&first, a.data, 4);
      std::memcpy(&last, a.data + a.nbytes - 4, 4);
      CHECK(first == -1.0f);
      CHECK(last == 1.0f);
      CHECK(a.offset + a.nbytes < f.size());
    }
    {
      moe::io::MappedFile f(dir / ("i8_3x4.p" + p));
      const Array a = std::get<Array>(parse_pickle(f.bytes(), f.path()));
      REQUIRE(a.dtype == DType::kI8);
      CHECK(static_cast<std::int8_t>(a.data[0]) == -6);
      CHECK(static_cast<std::int8_t>(a.data[11]) == 5);
    }
    {
      moe::io::MappedFile f(dir / ("f64_2x3.p" + p));
      CHECK(std::get<Array>(parse_pickle(f.bytes(), f.path())).dtype == DType::kF64);
    }
  }
}

TEST_CASE("pickle: hostile and unsupported Python pickles are rejected", "[io][pickle]") {
  const auto dir = fixture("pickles");
  auto err = [&](const std::string& file) {
    moe::io::MappedFile f(dir / file);
    return message_of<FormatError>([&] { (void)parse_pickle(f.bytes(), f.path(), kClasses); });
  };
  for (int proto : {2, 3, 4, 5}) {
    INFO("protocol " << proto);
    const std::string p = std::to_string(proto);
    // os.system('echo ...') via a global + REDUCE: rejected at the global, nothing runs
    const std::string e = err("exploit.p" + p);
    CHECK_THAT(e, StartsWith("[pickle] '") && Contains("exploit.p" + p) &&
                      Contains("global 'posix.system' is not allowed"));
    CHECK_THAT(err("dict.p" + p), Contains("the pickle holds a dict, expected a numpy.ndarray"));
    CHECK_THAT(err("f32_bigendian.p" + p),
               proto == 2 ? Contains("_codecs.encode") : Contains("big-endian dtype >float32"));
    if (proto != 5) {  // protocol 5 stores a Fortran array as _frombuffer(..., order='F')
      CHECK_THAT(err("f32_fortran.p" + p),
                 proto == 2 ? Contains("_codecs.encode")
                            : Contains("Fortran (column-major) order; only C order"));
    } else {
      CHECK_THAT(err("f32_fortran.p5"), Contains("Fortran (column-major) order"));
    }
  }
  CHECK_THAT(err("f32_2x3.p2"), Contains("protocol 2 stores bytes as _codecs.encode") &&
                                    Contains("re-pickle with protocol 3"));
  CHECK_FALSE(std::filesystem::exists(dir / "exploit_ran.txt"));
  CHECK_FALSE(std::filesystem::exists("exploit_ran.txt"));
}

TEST_CASE("pickle: globals outside the whitelist are rejected before any call", "[io][pickle]") {
  SECTION("os.system via GLOBAL + REDUCE") {
    PickleBuilder b;
    b.proto(2).global("os", "system").str("touch /tmp/moe_pwned").tuple(1).reduce().stop();
    CHECK(error_of(b) ==
          "[pickle] 'test.pkl' at byte 2 (GLOBAL): global 'os.system' is not allowed (a "
          "data-only reader accepts only numpy._reconstruct, numpy.ndarray, numpy.dtype, numpy "
          "_frombuffer, ml_dtypes.bfloat16 and *.QuantizedWeight8bit)");
  }
  SECTION("builtins.eval via STACK_GLOBAL") {
    PickleBuilder b;
    b.proto(4).stack_global("builtins", "eval").str("1+1").tuple(1).reduce().stop();
    CHECK_THAT(error_of(b),
               Contains("at byte 18 (STACK_GLOBAL): global 'builtins.eval' is not allowed"));
  }
  SECTION("lookalikes") {
    for (auto [m, n] : {std::pair{"numpy", "load"},
                        {"numpy.core.multiarray", "scalar"},
                        {"ml_dtypes", "float8_e4m3"},
                        {"numpy.core.multiarray ", "_reconstruct"},
                        {"os.", "QuantizedWeight8bit"},
                        {"", "QuantizedWeight8bit"}}) {
      PickleBuilder b;
      b.proto(4).stack_global(m, n).stop();
      CHECK_THAT(error_of(b), Contains(std::string("global '") + m + "." + n + "' is not allowed"));
    }
  }
  SECTION("whitelisted globals may not be called in other ways") {
    PickleBuilder b;
    b.proto(4).stack_global("numpy", "ndarray").integer(3).tuple(1).reduce().stop();
    CHECK_THAT(error_of(b), Contains("(REDUCE): REDUCE cannot call 'numpy.ndarray'"));
    PickleBuilder c;
    c.proto(4).stack_global("numpy", "dtype").tuple(0).op(0x81).stop();
    CHECK_THAT(error_of(c), Contains("(NEWOBJ): cannot create an instance of the global "
                                     "'numpy.dtype' (only *.QuantizedWeight8bit)"));
    CHECK_THAT(message_of<FormatError>([&] { (void)parse_pickle(c.bytes, "c.pkl"); }),
               Contains("(only the classes the caller allows: none)"));
    PickleBuilder d;
    d.proto(4).stack_global("__main__", "QuantizedWeight8bit").integer(1).tuple(1).op(0x81).stop();
    CHECK_THAT(error_of(d), Contains("QuantizedWeight8bit.__new__ takes no arguments"));
    PickleBuilder e;
    e.proto(4).integer(5).tuple(0).reduce().stop();
    CHECK_THAT(error_of(e), Contains("REDUCE calls an int (only whitelisted globals"));
  }
}

TEST_CASE("pickle: opcodes outside the whitelist", "[io][pickle]") {
  struct Case {
    std::uint8_t op;
    const char* msg;
  };
  for (const Case& c : {Case{'i', "opcode INST (0x69) is not allowed in a data-only pickle"},
                        Case{'o', "opcode OBJ (0x6f) is not allowed"},
                        Case{'P', "opcode PERSID (0x50) is not allowed"},
                        Case{'Q', "opcode BINPERSID (0x51) is not allowed"},
                        Case{0x82, "opcode EXT1 (0x82) is not allowed"},
                        Case{0x97, "opcode NEXT_BUFFER (0x97) is not allowed"},
                        Case{'I', "opcode INT (0x49) is not allowed"},
                        Case{0x8f, "opcode EMPTY_SET (0x8f) is not allowed"},
                        Case{0xff, "unknown opcode 0xff"}, Case{'z', "unknown opcode 0x7a"}}) {
    PickleBuilder b;
    b.proto(4).none().op(c.op).stop();
    INFO(c.msg);
    CHECK(error_of(b).find(std::string("at byte 3")) != std::string::npos);
    CHECK_THAT(error_of(b), Contains(c.msg));
  }
  PickleBuilder p;
  p.proto(6).none().stop();
  CHECK_THAT(error_of(p), Contains("at byte 0 (PROTO): unsupported pickle protocol 6"));
}

TEST_CASE("pickle: every truncation of a valid file is an error, never a crash", "[io][pickle]") {
  PickleBuilder b;
  b.proto(4).qw8_begin().str("weight").array({2, 4}, "i1", iota_bytes(8), "|");
  b.str("scales").array({1, 4}, "bf16", iota_bytes(8)).qw8_end().stop();
  REQUIRE_NOTHROW(parse(b));
  for (std::size_t n = 0; n < b.bytes.size(); ++n) {
    std::vector<std::byte> cut(b.bytes.begin(), b.bytes.begin() + static_cast<std::ptrdiff_t>(n));
    INFO("first " << n << " bytes");
    CHECK_THROWS_AS(parse_pickle(cut, "cut.pkl"), FormatError);
  }
  std::vector<std::byte> no_stop(b.bytes.begin(), b.bytes.end() - 1);
  CHECK_THAT(error_of(no_stop), Contains("file ends without a STOP opcode (truncated?)"));
  std::vector<std::byte> cut_len(b.bytes.begin(), b.bytes.begin() + 3);  // PROTO 4, 0x8c
  CHECK_THAT(error_of(cut_len), Contains("at byte 2 (SHORT_BINUNICODE): SHORT_BINUNICODE needs 1 "
                                         "bytes but the file ends 0 bytes later (truncated?)"));
  std::vector<std::byte> cut_str(b.bytes.begin(), b.bytes.begin() + 5);  // ... 0x08 "_"
  CHECK_THAT(error_of(cut_str), Contains("at byte 2 (SHORT_BINUNICODE): str length 8 goes past "
                                         "the end of the file (1 bytes left)"));
  CHECK_THAT(error_of(std::vector<std::byte>{std::byte{0x80}}),
             Contains("at byte 0 (PROTO): PROTO needs 1 bytes but the file ends 0 bytes later"));
}

TEST_CASE("pickle: lengths past the end of the file", "[io][pickle]") {
  SECTION("BINBYTES") {
    PickleBuilder b;
    b.proto(4).op('B').u32(1000000000).raw("abc");
    CHECK(error_of(b) ==
          "[pickle] 'test.pkl' at byte 2 (BINBYTES): bytes length 1000000000 "
          "goes past the end of the file (3 bytes left)");
  }
  SECTION("BINBYTES8 and BYTEARRAY8 with 2^63 and 2^64-1") {
    for (std::uint8_t op : {std::uint8_t{0x8e}, std::uint8_t{0x96}}) {
      for (std::uint64_t n : {std::uint64_t{1} << 63, ~std::uint64_t{0}}) {
        PickleBuilder b;
        b.proto(4).op(op).u64(n).stop();
        CHECK_THAT(error_of(b), Contains("length " + std::to_string(n) +
                                         " goes past the end of the file (1 bytes left)"));
      }
    }
  }
  SECTION("BINUNICODE8, BINUNICODE, FRAME, LONG4") {
    PickleBuilder a;
    a.proto(4).op(0x8d).u64(~std::uint64_t{0} - 3);
    CHECK_THAT(error_of(a), Contains("(BINUNICODE8): str length"));
    PickleBuilder b;
    b.proto(4).op('X').u32(0xffffffffu).raw("x");
    CHECK_THAT(error_of(b), Contains("(BINUNICODE): str length 4294967295 goes past the end"));
    PickleBuilder c;
    c.proto(4).frame(~std::uint64_t{0}).none().stop();
    CHECK_THAT(error_of(c), Contains("(FRAME): frame length 18446744073709551615 goes past"));
    PickleBuilder d;
    d.proto(4).op(0x8b).u32(0xffffffffu).stop();
    CHECK_THAT(error_of(d), Contains("(LONG4): integer of 4294967295 bytes is too large"));
  }
  SECTION("the array payload must match the shape exactly") {
    PickleBuilder b;
    b.proto(4).array({1000000}, "f4", floats({1})).stop();
    CHECK_THAT(error_of(b), Contains("(BUILD): array float32 [1000000] needs 4000000 bytes of "
                                     "data, the pickle has 4"));
    PickleBuilder c;
    c.proto(4).array({2}, "f4", floats({1, 2, 3})).stop();
    CHECK_THAT(error_of(c), Contains("array float32 [2] needs 8 bytes of data, the pickle has 12"));
  }
}

TEST_CASE("pickle: absurd shapes", "[io][pickle]") {
  SECTION("the element count overflows") {
    PickleBuilder b;
    b.proto(4).array({std::int64_t{1} << 40, std::int64_t{1} << 40}, "f4", floats({1})).stop();
    CHECK_THAT(error_of(b), Contains("array shape [1099511627776, 1099511627776] x 4 bytes "
                                     "overflows 64 bits"));
  }
  SECTION("the byte count overflows") {
    PickleBuilder b;
    b.proto(4).array({std::int64_t{1} << 62}, "f4", floats({1})).stop();
    CHECK_THAT(error_of(b), Contains("overflows 64 bits"));
  }
  SECTION("negative dimension") {
    PickleBuilder b;
    b.proto(4).array({2, -3}, "f4", floats({1})).stop();
    CHECK_THAT(error_of(b), Contains("array has a negative dimension -3"));
  }
  SECTION("too many dimensions") {
    PickleBuilder b;
    b.proto(4).array_v(std::vector<std::int64_t>(33, 1), "f4", floats({1})).stop();
    CHECK_THAT(error_of(b), Contains("array has 33 dimensions (limit 32)"));
  }
  SECTION("zero-size arrays are fine") {
    PickleBuilder b;
    b.proto(4).array({0, 5}, "f4", {}).stop();
    CHECK(std::get<Array>(parse(b)).numel() == 0);
  }
}

TEST_CASE("pickle: dtypes and array states", "[io][pickle]") {
  SECTION("big-endian") {
    PickleBuilder b;
    b.proto(4).array({1}, "f4", floats({1}), ">").stop();
    CHECK_THAT(error_of(b),
               Contains("(BUILD): big-endian dtype >float32 is not supported (only little-endian"));
  }
  SECTION("Fortran order") {
    PickleBuilder b;
    b.proto(4).array({2, 3}, "f4", floats({1, 2, 3, 4, 5, 6}), "<", true).stop();
    CHECK_THAT(error_of(b), Contains("array float32 [2, 3] is in Fortran (column-major) order"));
  }
  SECTION("unsupported descriptors") {
    for (const char* d : {"O8", "c8", "U1", "f16", "V2", ""}) {
      PickleBuilder b;
      b.proto(4).array({1}, d, floats({1})).stop();
      CHECK_THAT(error_of(b), Contains(std::string("unsupported dtype '") + d + "'"));
    }
  }
  SECTION("'|' byte order on a multi-byte type, bad elsize, structured") {
    PickleBuilder b;
    b.proto(4).array({1}, "f4", floats({1}), "|").stop();
    CHECK_THAT(error_of(b), Contains("dtype float32 has byte order '|'"));
    PickleBuilder c;
    c.proto(4).dtype("f4", "<", 8).stop();
    CHECK_THAT(error_of(c), Contains("dtype float32 declares an item size of 8 bytes, expected 4"));
    PickleBuilder d;
    d.proto(4).stack_global("numpy", "dtype").str("f4").boolean(false).boolean(true).tuple(3);
    d.reduce().mark().integer(3).str("<").none().tuple(0).none().integer(-1).integer(-1);
    d.integer(0).op('t').build().stop();
    CHECK_THAT(error_of(d), Contains("structured or sub-array dtypes are not supported"));
  }
  SECTION("object arrays (data is a list)") {
    PickleBuilder b;
    b.proto(4).stack_global("numpy.core.multiarray", "_reconstruct");
    b.stack_global("numpy", "ndarray").integer(0).tuple(1).blob({std::byte{'b'}}).tuple(3);
    b.reduce().mark().integer(1).integer(1).tuple(1).dtype("f4").boolean(false);
    b.op(']').op('t').build().stop();
    CHECK_THAT(error_of(b), Contains("array data must be bytes, got a list"));
  }
  SECTION("building twice, bad versions") {
    PickleBuilder b;
    b.proto(4).array({1}, "f4", floats({1})).mark().integer(1).integer(1).tuple(1);
    b.dtype("f4").boolean(false).blob(floats({2})).op('t').build().stop();
    CHECK_THAT(error_of(b), Contains("numpy.ndarray is built twice"));
    PickleBuilder c;
    c.proto(4).dtype("f4").op('b');
    CHECK_THAT(error_of(c), Contains("stack underflow"));
  }
}

TEST_CASE("pickle: memo indices", "[io][pickle]") {
  PickleBuilder a;
  a.proto(4).none().memoize().op('h').u8(5).stop();
  CHECK_THAT(error_of(a),
             Contains("at byte 4 (BINGET): memo index 5 is out of range (the memo has 1 entries)"));
  PickleBuilder b;
  b.proto(4).op('j').u32(0xffffffffu).stop();
  CHECK_THAT(error_of(b), Contains("(LONG_BINGET): memo index 4294967295 is out of range"));
  PickleBuilder c;
  c.proto(4).none().op('r').u32(0x80000000u).stop();
  CHECK_THAT(error_of(c), Contains("(LONG_BINPUT): memo index 2147483648 is too large (limit"));
  PickleBuilder d;
  d.proto(4).none().op('q').u8(9).op('h').u8(3).stop();  // a hole in the memo
  CHECK_THAT(error_of(d), Contains("memo index 3 is out of range (the memo has 10 entries)"));
  PickleBuilder e;
  e.proto(4).op(0x94).stop();
  CHECK_THAT(error_of(e), Contains("(MEMOIZE): stack underflow"));
}

TEST_CASE("pickle: stack discipline and resource limits", "[io][pickle]") {
  SECTION("underflow, also across a MARK") {
    PickleBuilder a;
    a.proto(4).op(0x86).stop();
    CHECK_THAT(error_of(a), Contains("at byte 2 (TUPLE2): stack underflow"));
    PickleBuilder b;
    b.proto(4).none().mark().op(0x85).stop();  // TUPLE1 may not take the value below the MARK
    CHECK_THAT(error_of(b), Contains("(TUPLE1): stack underflow"));
    PickleBuilder c;
    c.proto(4).none().op('t').stop();
    CHECK_THAT(error_of(c), Contains("(TUPLE): no MARK on the stack"));
  }
  SECTION("STOP needs exactly one value and no open MARK; nothing may follow it") {
    PickleBuilder a;
    a.proto(4).none().none().stop();
    CHECK_THAT(error_of(a), Contains("STOP with 2 values on the stack (expected exactly 1)"));
    PickleBuilder b;
    b.proto(4).none().mark().stop();
    CHECK_THAT(error_of(b), Contains("STOP inside an unclosed MARK"));
    PickleBuilder c = f32_2x3();
    c.raw("junk");
    CHECK_THAT(error_of(c), Contains("4 unexpected bytes after the STOP opcode"));
  }
  SECTION("deep MARK nesting") {
    PickleBuilder b;
    b.proto(4);
    for (int i = 0; i < 300; ++i) b.mark();
    CHECK_THAT(error_of(b), Contains("MARKs nested deeper than 256 (limit)"));
  }
  SECTION("a deep stack") {
    PickleBuilder b;
    b.proto(4);
    for (int i = 0; i < 20000; ++i) b.none();
    CHECK_THAT(error_of(b), Contains("stack deeper than 16384 (limit)"));
  }
  SECTION("too many objects") {
    PickleBuilder b;
    b.proto(4);
    for (int i = 0; i < 70000; ++i) b.none().op('0');
    CHECK_THAT(error_of(b), Contains("more than 65536 objects (limit)"));
  }
  SECTION("too many container items (a list of references to one object)") {
    PickleBuilder b;
    b.proto(4).none().memoize().op(']');
    for (int i = 0; i < 3000; ++i) {  // BINGET creates no object: only the item count grows
      b.mark();
      for (int k = 0; k < 100; ++k) b.op('h').u8(0);
      b.op('e');
    }
    CHECK_THAT(error_of(b), Contains("(APPENDS): more than 262144 container items (limit)"));
  }
  SECTION("custom limits") {
    moe::io::PickleLimits lim;
    lim.max_ndim = 1;
    PickleBuilder b = f32_2x3();
    CHECK_THAT(message_of<FormatError>([&] { (void)parse_pickle(b.bytes, "x", {}, lim); }),
               Contains("array has 2 dimensions (limit 1)"));
  }
}

TEST_CASE("pickle: malformed QuantizedWeight8bit objects", "[io][pickle]") {
  auto weight = [](PickleBuilder& b) { b.str("weight").array({1, 2}, "i1", iota_bytes(2), "|"); };
  auto scales = [](PickleBuilder& b) { b.str("scales").array({1, 2}, "bf16", iota_bytes(4)); };
  SECTION("missing scales") {
    PickleBuilder b;
    b.proto(4).qw8_begin();
    weight(b);
    b.qw8_end().stop();
    CHECK_THAT(error_of(b), Contains("QuantizedWeight8bit has no 'scales'"));
  }
  SECTION("an unexpected attribute") {
    PickleBuilder b;
    b.proto(4).qw8_begin();
    weight(b);
    scales(b);
    b.str("bias").none().qw8_end().stop();
    CHECK_THAT(error_of(b), Contains("(BUILD): QuantizedWeight8bit has an unexpected attribute "
                                     "'bias'"));
  }
  SECTION("scales is not an array") {
    PickleBuilder b;
    b.proto(4).qw8_begin();
    weight(b);
    b.str("scales").integer(3).qw8_end().stop();
    CHECK_THAT(error_of(b), Contains("QuantizedWeight8bit.scales is an int, expected a "
                                     "numpy.ndarray"));
  }
  SECTION("no BUILD, or a tuple state") {
    PickleBuilder b;
    b.proto(4).stack_global("__main__", "QuantizedWeight8bit").tuple(0).op(0x81).stop();
    CHECK_THAT(error_of(b), Contains("QuantizedWeight8bit has no state (no BUILD)"));
    PickleBuilder c;
    c.proto(4).stack_global("__main__", "QuantizedWeight8bit").tuple(0).op(0x81);
    c.none().op('}').tuple(2).build().stop();
    CHECK_THAT(error_of(c), Contains("QuantizedWeight8bit state must be a dict, got a tuple of 2"));
  }
  SECTION("an array that was reconstructed but never built") {
    PickleBuilder b;
    b.proto(4).stack_global("numpy.core.multiarray", "_reconstruct");
    b.stack_global("numpy", "ndarray").integer(0).tuple(1).blob({std::byte{'b'}}).tuple(3);
    b.reduce().stop();
    CHECK_THAT(error_of(b), Contains("the pickled object is a numpy.ndarray that was never built"));
  }
}

TEST_CASE("mapped file: RAII, moves, empty files, directories, errors", "[io][mmap]") {
  using moe::IoError;
  using moe::io::Advice;
  using moe::io::MappedFile;
  const auto dir = scratch("mapped_file");
  write_file(dir / "ten", iota_bytes(10));
  write_file(dir / "empty", {});

  MappedFile f(dir / "ten");
  REQUIRE(f.size() == 10);
  REQUIRE(f.is_mapped());
  CHECK(reinterpret_cast<std::uintptr_t>(f.data()) % 4096 == 0);
  CHECK(f.bytes()[9] == std::byte{9});
  CHECK(f.bytes(2, 3)[0] == std::byte{2});
  CHECK(f.path() == (dir / "ten").string());
  CHECK_NOTHROW(f.advise(Advice::kWillNeed));
  CHECK_NOTHROW(f.advise(Advice::kDontNeed, 1, 5));
  CHECK_NOTHROW(f.advise(Advice::kSequential, 10, 0));
  CHECK(f.bytes()[3] == std::byte{3});  // still readable after DONTNEED (re-read from the cache)
  CHECK(f.resident_bytes() <= 4096);
  CHECK_THAT(message_of<IoError>([&] { f.advise(Advice::kRandom, 5, 6); }),
             Contains("advise range [5, +6) is outside '") && Contains("(10 bytes)"));
  CHECK_THAT(message_of<IoError>([&] { (void)f.bytes(11, 0); }), Contains("range [11, +0)"));
  CHECK_THROWS_AS(f.bytes(0, ~std::size_t{0}), IoError);

  MappedFile g(std::move(f));
  CHECK(g.size() == 10);
  CHECK(f.size() == 0);  // NOLINT(bugprone-use-after-move): moved-from is empty
  CHECK(f.data() == nullptr);
  MappedFile h;
  h = std::move(g);
  CHECK(h.bytes()[1] == std::byte{1});
  h.close();
  CHECK_FALSE(h.is_mapped());

  MappedFile e(dir / "empty");
  CHECK(e.size() == 0);
  CHECK(e.data() == nullptr);
  CHECK(e.bytes().empty());
  CHECK_NOTHROW(e.advise(Advice::kWillNeed));
  CHECK(e.resident_bytes() == 0);
  CHECK_THAT(message_of<FormatError>([&] { (void)parse_pickle(e.bytes(), e.path()); }),
             Contains("at byte 0: file ends without a STOP opcode"));

  CHECK(message_of<IoError>([&] { MappedFile x(dir / "missing"); }) ==
        "[io] cannot open '" + (dir / "missing").string() + "': No such file or directory");
  CHECK(message_of<IoError>([&] { MappedFile x(dir); }) ==
        "[io] cannot map '" + dir.string() + "': it is a directory");
  CHECK_THAT(message_of<IoError>([&] { MappedFile x("/dev/null"); }),
             Contains("'/dev/null': not a regular file"));
}
