// The strict JSON reader and the float32 .npy writer/reader (byte-identical to numpy's np.save).
#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <vector>

#include <moe/io/json.hpp>
#include <moe/io/npy.hpp>

#include "io_test_util.hpp"

using namespace io_test;
using moe::FormatError;
using moe::io::JsonValue;
using moe::io::parse_json;

namespace {
std::string json_error(const std::string& text) {
  return message_of<FormatError>([&] { (void)parse_json(text, "c.json"); });
}
}  // namespace

TEST_CASE("json: values, nesting, escapes, numbers", "[io][json]") {
  const JsonValue v = parse_json(
      R"( {"a": 1, "b": [true, false, null, -0.5e2, "x\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"],
           "c": {"d": 12345678901234, "e": 1.0, "f": 1e3}, "g": "caf\u00e9", "h": "ü"} )");
  REQUIRE(v.is_object());
  CHECK(v.size() == 5);
  CHECK(v.at("a").is_integer());
  CHECK(v.at("a").as_int64() == 1);
  CHECK(v.at("a").as_number() == 1.0);
  const JsonValue& b = v.at("b");
  REQUIRE(b.size() == 5);
  CHECK(b.at(0).as_bool());
  CHECK_FALSE(b.at(1).as_bool());
  CHECK(b.at(2).is_null());
  CHECK(b.at(3).as_number() == -50.0);
  CHECK_FALSE(b.at(3).is_integer());
  CHECK(b.at(4).as_string() == "x\"\\/\b\f\n\r\t\xc3\xa9\xf0\x9f\x98\x80");
  CHECK(v.at("c").at("d").as_int64() == 12345678901234);
  CHECK_FALSE(v.at("c").at("e").is_integer());  // 1.0 is a number, not an integer literal
  CHECK(v.at("c").at("f").as_number() == 1000.0);
  CHECK(v.at("g").as_string() == "caf\xc3\xa9");
  CHECK(v.at("h").as_string() == "\xc3\xbc");
  CHECK(v.find("zz") == nullptr);
  CHECK(v.as_object()[0].first == "a");  // file order is kept
  CHECK(parse_json("0.1").as_number() == 0.1);
  CHECK(parse_json("78.38367176906169").as_number() == 78.38367176906169);
  CHECK(parse_json("-9223372036854775808").as_int64() == INT64_MIN);
  CHECK_FALSE(parse_json("9223372036854775808").is_integer());  // too large for int64
  CHECK(parse_json("[]").size() == 0);
  CHECK(parse_json("{}").size() == 0);
}

TEST_CASE("json: strictness, with line and column", "[io][json]") {
  CHECK(json_error("{\"a\": 1,}") == "[json] 'c.json' line 1, column 9: expected a string key");
  CHECK(json_error("[1, 2,]") == "[json] 'c.json' line 1, column 7: unexpected character ']'");
  CHECK(json_error("{\n  \"a\": 1,\n  \"a\": 2\n}") ==
        "[json] 'c.json' line 3, column 6: duplicate key 'a'");
  CHECK_THAT(json_error("{\"a\" 1}"), Contains("expected ':' after key 'a'"));
  CHECK_THAT(json_error("012"), Contains("leading zeros are not allowed"));
  CHECK_THAT(json_error("1."), Contains("expected digits after the decimal point"));
  CHECK_THAT(json_error("1e"), Contains("expected digits in the exponent"));
  CHECK_THAT(json_error("-"), Contains("invalid number"));
  CHECK_THAT(json_error("NaN"), Contains("unexpected character 'N'"));
  CHECK_THAT(json_error("Infinity"), Contains("unexpected character 'I'"));
  CHECK_THAT(json_error("1e999"), Contains("number 1e999 is out of range"));
  CHECK_THAT(json_error("tru"), Contains("invalid literal"));
  CHECK_THAT(json_error("// c\n1"), Contains("unexpected character '/'"));
  CHECK_THAT(json_error("1 2"), Contains("line 1, column 3: unexpected text after the JSON value"));
  CHECK_THAT(json_error(""), Contains("unexpected end of input"));
  CHECK_THAT(json_error("\"a\tb\""), Contains("unescaped control character"));
  CHECK_THAT(json_error("\"\\x\""), Contains("invalid escape '\\x'"));
  CHECK_THAT(json_error("\"\\u12zz\""), Contains("invalid \\u escape"));
  CHECK_THAT(json_error("\"\\u12\""), Contains("truncated \\u escape"));
  CHECK_THAT(json_error("\"\\ud800\""), Contains("unpaired surrogate"));
  CHECK_THAT(json_error("\"\\udc00\""), Contains("unpaired surrogate"));
  CHECK_THAT(json_error("\"\xff\""), Contains("invalid UTF-8"));
  CHECK_THAT(json_error("\"\xc0\xaf\""), Contains("invalid UTF-8"));      // overlong '/'
  CHECK_THAT(json_error("\"\xed\xa0\x80\""), Contains("invalid UTF-8"));  // encoded surrogate
  CHECK_THAT(json_error("\"abc"), Contains("unterminated string"));
  CHECK_THAT(json_error(std::string(65, '[') + std::string(65, ']')),
             Contains("nesting deeper than 64"));
  CHECK_NOTHROW(parse_json(std::string(64, '[') + std::string(64, ']')));
}

TEST_CASE("json: typed access errors name the types", "[io][json]") {
  const JsonValue v = parse_json(R"({"s": "abc", "n": 12.5})");
  CHECK(message_of<FormatError>([&] { (void)v.at("s").as_number(); }) ==
        "[json] expected a number, got a string (\"abc\")");
  CHECK(message_of<FormatError>([&] { (void)v.at("n").as_int64(); }) ==
        "[json] expected an integer, got a number (12.5)");
  CHECK(message_of<FormatError>([&] { (void)v.at("missing"); }) == "[json] missing key 'missing'");
  CHECK_THROWS_AS(v.at(0), FormatError);
  const std::filesystem::path missing = fixtures() / "no_such.json";
  CHECK(message_of<moe::IoError>([&] { (void)moe::io::read_json_file(missing); }) ==
        "[json] cannot read '" + missing.string() + "': No such file or directory");
}

TEST_CASE("npy: the writer reproduces numpy's np.save bytes", "[io][npy]") {
  const auto ref = fixture("npy");
  const auto out = scratch("npy");
  {
    const float a[6] = {-2.5f, -1.5f, -0.5f, 0.5f, 1.5f, 2.5f};
    moe::io::write_npy(out / "a.npy", a, {2, 3});
    CHECK(read_file(out / "a.npy") == read_file(ref / "f32_2x3.npy"));
  }
  {
    std::vector<float> a(7);
    for (int i = 0; i < 7; ++i) a[static_cast<std::size_t>(i)] = 0.5f * static_cast<float>(i);
    moe::io::write_npy(out / "b.npy", a.data(), {7});
    CHECK(read_file(out / "b.npy") == read_file(ref / "f32_7.npy"));
  }
  {
    std::vector<float> a(24);
    for (int i = 0; i < 24; ++i) a[static_cast<std::size_t>(i)] = static_cast<float>(i);
    const std::size_t shape[3] = {2, 3, 4};
    moe::io::write_npy(out / "c.npy", a.data(), std::span<const std::size_t>(shape));
    CHECK(read_file(out / "c.npy") == read_file(ref / "f32_2x3x4.npy"));
  }
  {
    std::vector<float> a(12345 * 2, 1.0f);
    moe::io::write_npy(out / "d.npy", a.data(), {12345, 2});
    CHECK(read_file(out / "d.npy") == read_file(ref / "f32_12345x2.npy"));
  }
}

TEST_CASE("npy: reading numpy's files and our own", "[io][npy]") {
  const auto ref = fixture("npy");
  const moe::io::NpyArray a = moe::io::read_npy(ref / "f32_2x3.npy");
  REQUIRE(a.shape == std::vector<std::size_t>{2, 3});
  CHECK(a.at(0, 0) == -2.5f);
  CHECK(a.at(1, 2) == 2.5f);
  const moe::io::NpyArray c = moe::io::read_npy(ref / "f32_2x3x4.npy");
  CHECK(c.shape == std::vector<std::size_t>{2, 3, 4});
  CHECK(c.data[23] == 23.0f);

  const auto out = scratch("npy_roundtrip");
  std::vector<float> logits(5 * 131);
  for (std::size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(static_cast<float>(i));
  moe::io::write_npy(out / "logits.npy", logits.data(), {5, 131});
  const moe::io::NpyArray r = moe::io::read_npy(out / "logits.npy");
  CHECK(r.shape == std::vector<std::size_t>{5, 131});
  CHECK(r.data == logits);
  moe::io::write_npy(out / "empty.npy", nullptr, {0, 4});
  CHECK(moe::io::read_npy(out / "empty.npy").shape == std::vector<std::size_t>{0, 4});
}

TEST_CASE("npy: malformed files", "[io][npy]") {
  const auto ref = fixture("npy");
  const auto out = scratch("npy_bad");
  CHECK_THAT(message_of<FormatError>([&] { (void)moe::io::read_npy(ref / "f64_2x3.npy"); }),
             Contains("dtype is '<f8', only '<f4' (little-endian float32) is supported"));
  CHECK_THAT(message_of<FormatError>([&] { (void)moe::io::read_npy(ref / "f32_fortran.npy"); }),
             Contains("Fortran-order arrays are not supported"));
  write_text(out / "junk.npy", "hello");
  CHECK_THAT(message_of<FormatError>([&] { (void)moe::io::read_npy(out / "junk.npy"); }),
             Contains("[npy] '") && Contains("not a .npy file (bad magic)"));
  std::vector<std::byte> cut = read_file(ref / "f32_2x3.npy");
  cut.resize(cut.size() - 4);
  write_file(out / "cut.npy", cut);
  CHECK_THAT(message_of<FormatError>([&] { (void)moe::io::read_npy(out / "cut.npy"); }),
             Contains("file holds fewer than the 6 floats of shape [2, 3]"));
  std::vector<std::byte> longer = read_file(ref / "f32_2x3.npy");
  longer.push_back(std::byte{0});
  write_file(out / "long.npy", longer);
  CHECK_THAT(message_of<FormatError>([&] { (void)moe::io::read_npy(out / "long.npy"); }),
             Contains("file holds more than the 6 floats"));
  CHECK_THROWS_AS(moe::io::read_npy(out / "missing.npy"), moe::IoError);
  CHECK_THROWS_AS(moe::io::write_npy(out / "no_dir" / "x.npy", nullptr, {0}), moe::IoError);
}
