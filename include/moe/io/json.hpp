// moe/io/json.hpp: a small, strict JSON (RFC 8259) reader for config files and test sidecars.
//
//   moe::io::JsonValue cfg = moe::io::read_json_file("DIR/config.json");
//   if (const moe::io::JsonValue* v = cfg.find("head_dim")) ... v->as_number() ...
//
// Strict means: exactly one value, no comments, no trailing commas, no NaN/Infinity, no leading
// zeros, no unescaped control characters, valid escapes and surrogate pairs, valid UTF-8, no
// duplicate object keys, nesting at most 64 deep. Errors throw FormatError
// "[json] 'name' line L, column C: what". Typed accessors throw FormatError naming the expected
// and the actual type; callers add the key name (see json_number / json_integer below).
#pragma once

#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_set>
#include <utility>
#include <vector>

#include <moe/core/error.hpp>

namespace moe::io {

class JsonValue {
 public:
  enum class Type : std::uint8_t { kNull, kBool, kNumber, kString, kArray, kObject };
  using Object = std::vector<std::pair<std::string, JsonValue>>;  ///< in file order
  using Array = std::vector<JsonValue>;

  JsonValue() = default;

  [[nodiscard]] Type type() const noexcept { return type_; }
  [[nodiscard]] bool is_null() const noexcept { return type_ == Type::kNull; }
  [[nodiscard]] bool is_bool() const noexcept { return type_ == Type::kBool; }
  [[nodiscard]] bool is_number() const noexcept { return type_ == Type::kNumber; }
  [[nodiscard]] bool is_string() const noexcept { return type_ == Type::kString; }
  [[nodiscard]] bool is_array() const noexcept { return type_ == Type::kArray; }
  [[nodiscard]] bool is_object() const noexcept { return type_ == Type::kObject; }
  /// True for a number written without fraction or exponent that fits in int64.
  [[nodiscard]] bool is_integer() const noexcept { return type_ == Type::kNumber && integral_; }

  [[nodiscard]] bool as_bool() const {
    expect(Type::kBool);
    return bool_;
  }
  [[nodiscard]] double as_number() const {
    expect(Type::kNumber);
    return number_;
  }
  /// The exact integer (throws unless is_integer()).
  [[nodiscard]] std::int64_t as_int64() const {
    expect(Type::kNumber);
    if (!integral_) throw FormatError("[json] expected an integer, got " + describe());
    return int_;
  }
  [[nodiscard]] const std::string& as_string() const {
    expect(Type::kString);
    return string_;
  }
  [[nodiscard]] const Array& as_array() const {
    expect(Type::kArray);
    return array_;
  }
  [[nodiscard]] const Object& as_object() const {
    expect(Type::kObject);
    return object_;
  }
  /// Member `key` of an object, or nullptr (throws if this is not an object).
  [[nodiscard]] const JsonValue* find(std::string_view key) const {
    expect(Type::kObject);
    for (const auto& kv : object_) {
      if (kv.first == key) return &kv.second;
    }
    return nullptr;
  }
  /// Member `key`; throws FormatError "[json] missing key 'key'" if absent.
  [[nodiscard]] const JsonValue& at(std::string_view key) const {
    const JsonValue* v = find(key);
    if (v == nullptr) throw FormatError("[json] missing key '" + std::string(key) + "'");
    return *v;
  }
  [[nodiscard]] const JsonValue& at(std::size_t i) const {
    expect(Type::kArray);
    if (i >= array_.size()) {
      throw FormatError("[json] index " + std::to_string(i) + " out of range (array of " +
                        std::to_string(array_.size()) + ")");
    }
    return array_[i];
  }
  [[nodiscard]] std::size_t size() const noexcept {
    return type_ == Type::kArray ? array_.size() : type_ == Type::kObject ? object_.size() : 0;
  }

  static std::string_view type_name(Type t) noexcept {
    switch (t) {
      case Type::kNull:
        return "null";
      case Type::kBool:
        return "a boolean";
      case Type::kNumber:
        return "a number";
      case Type::kString:
        return "a string";
      case Type::kArray:
        return "an array";
      case Type::kObject:
        return "an object";
    }
    return "?";
  }
  /// e.g. `a string ("abc")`, `a number (12.5)`, `an array`.
  [[nodiscard]] std::string describe() const {
    switch (type_) {
      case Type::kBool:
        return bool_ ? "true" : "false";
      case Type::kNumber:
        return "a number (" + number_text_ + ")";
      case Type::kString: {
        std::string s = string_.size() > 40 ? string_.substr(0, 40) + "..." : string_;
        return "a string (\"" + s + "\")";
      }
      default:
        return std::string(type_name(type_));
    }
  }

 private:
  friend class JsonParser;

  void expect(Type t) const {
    if (type_ != t) {
      throw FormatError("[json] expected " + std::string(type_name(t)) + ", got " + describe());
    }
  }

  Type type_ = Type::kNull;
  bool bool_ = false;
  bool integral_ = false;
  double number_ = 0;
  std::int64_t int_ = 0;
  std::string number_text_;
  std::string string_;
  Array array_;
  Object object_;
};

class JsonParser {
 public:
  static constexpr int kMaxDepth = 64;
  /// Objects up to this many members check duplicate keys by a linear scan; larger ones by hash.
  static constexpr std::size_t kLinearKeys = 16;

  JsonParser(std::string_view text, std::string_view name) : s_(text), name_(name) {}

  JsonValue parse() {
    skip_ws();
    JsonValue v = value(0);
    skip_ws();
    if (p_ != s_.size()) fail("unexpected text after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& msg) const {
    std::size_t line = 1, col = 1;
    for (std::size_t k = 0; k < p_ && k < s_.size(); ++k) {
      if (s_[k] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    throw FormatError("[json] '" + name_ + "' line " + std::to_string(line) + ", column " +
                      std::to_string(col) + ": " + msg);
  }

  bool eof() const noexcept { return p_ >= s_.size(); }
  char peek() const noexcept { return eof() ? '\0' : s_[p_]; }

  void skip_ws() noexcept {
    while (!eof() && (s_[p_] == ' ' || s_[p_] == '\t' || s_[p_] == '\n' || s_[p_] == '\r')) ++p_;
  }

  void literal(std::string_view word) {
    if (s_.substr(p_, word.size()) != word) fail("invalid literal");
    p_ += word.size();
  }

  JsonValue value(int depth) {  // NOLINT(misc-no-recursion): depth <= kMaxDepth
    if (eof()) fail("unexpected end of input, expected a value");
    JsonValue v;
    const char c = peek();
    if ((c == '{' || c == '[') && depth >= kMaxDepth) {
      fail("nesting deeper than " + std::to_string(kMaxDepth));
    }
    if (c == '{') {
      v.type_ = JsonValue::Type::kObject;
      ++p_;
      skip_ws();
      if (peek() == '}') {
        ++p_;
        return v;
      }
      // Duplicate keys: a linear scan while the object is small, a hash set of its keys beyond
      // (so that a hostile object of n members costs O(n), not O(n^2)).
      std::unordered_set<std::string> keys;
      for (;;) {
        skip_ws();
        if (peek() != '"') fail("expected a string key");
        std::string key = string();
        if (v.object_.size() < kLinearKeys) {
          for (const auto& kv : v.object_) {
            if (kv.first == key) fail("duplicate key '" + key + "'");
          }
        } else {
          if (keys.empty()) {
            for (const auto& kv : v.object_) keys.insert(kv.first);
          }
          if (!keys.insert(key).second) fail("duplicate key '" + key + "'");
        }
        skip_ws();
        if (peek() != ':') fail("expected ':' after key '" + key + "'");
        ++p_;
        skip_ws();
        JsonValue member = value(depth + 1);
        v.object_.emplace_back(std::move(key), std::move(member));
        skip_ws();
        if (peek() == ',') {
          ++p_;
          continue;
        }
        if (peek() == '}') {
          ++p_;
          return v;
        }
        fail("expected ',' or '}' in an object");
      }
    }
    if (c == '[') {
      v.type_ = JsonValue::Type::kArray;
      ++p_;
      skip_ws();
      if (peek() == ']') {
        ++p_;
        return v;
      }
      for (;;) {
        skip_ws();
        v.array_.push_back(value(depth + 1));
        skip_ws();
        if (peek() == ',') {
          ++p_;
          continue;
        }
        if (peek() == ']') {
          ++p_;
          return v;
        }
        fail("expected ',' or ']' in an array");
      }
    }
    if (c == '"') {
      v.type_ = JsonValue::Type::kString;
      v.string_ = string();
      return v;
    }
    if (c == 't') {
      literal("true");
      v.type_ = JsonValue::Type::kBool;
      v.bool_ = true;
      return v;
    }
    if (c == 'f') {
      literal("false");
      v.type_ = JsonValue::Type::kBool;
      return v;
    }
    if (c == 'n') {
      literal("null");
      return v;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return number();
    fail(std::string("unexpected character '") + c + "'");
  }

  static bool digit(char c) noexcept { return c >= '0' && c <= '9'; }

  JsonValue number() {
    const std::size_t start = p_;
    bool integral = true;
    if (peek() == '-') ++p_;
    if (peek() == '0') {
      ++p_;
      if (digit(peek())) fail("leading zeros are not allowed in numbers");
    } else if (digit(peek())) {
      while (digit(peek())) ++p_;
    } else {
      fail("invalid number");
    }
    if (peek() == '.') {
      integral = false;
      ++p_;
      if (!digit(peek())) fail("expected digits after the decimal point");
      while (digit(peek())) ++p_;
    }
    if (peek() == 'e' || peek() == 'E') {
      integral = false;
      ++p_;
      if (peek() == '+' || peek() == '-') ++p_;
      if (!digit(peek())) fail("expected digits in the exponent");
      while (digit(peek())) ++p_;
    }
    JsonValue v;
    v.type_ = JsonValue::Type::kNumber;
    v.number_text_ = std::string(s_.substr(start, p_ - start));
    const char* b = s_.data() + start;
    const char* e = s_.data() + p_;
    const auto r = std::from_chars(b, e, v.number_);
    if (r.ec == std::errc::result_out_of_range) {
      fail("number " + v.number_text_ + " is out of range");
    }
    if (r.ec != std::errc() || r.ptr != e) fail("invalid number " + v.number_text_);
    if (integral) {
      const auto ri = std::from_chars(b, e, v.int_);
      v.integral_ = ri.ec == std::errc() && ri.ptr == e;
    }
    return v;
  }

  unsigned hex4() {
    if (s_.size() - p_ < 4) fail("truncated \\u escape");
    unsigned u = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = s_[p_++];
      u <<= 4;
      if (c >= '0' && c <= '9') {
        u |= static_cast<unsigned>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        u |= static_cast<unsigned>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        u |= static_cast<unsigned>(c - 'A' + 10);
      } else {
        fail("invalid \\u escape");
      }
    }
    return u;
  }

  static void put_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  /// Validates one UTF-8 sequence starting at p_ and appends it.
  void utf8_char(std::string& out) {
    const auto b0 = static_cast<unsigned char>(s_[p_]);
    std::size_t n = 0;
    unsigned cp = 0, min = 0;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      n = 2, cp = b0 & 0x1Fu, min = 0x80;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      n = 3, cp = b0 & 0x0Fu, min = 0x800;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      n = 4, cp = b0 & 0x07u, min = 0x10000;
    } else {
      fail("invalid UTF-8 in a string");
    }
    if (s_.size() - p_ < n) fail("invalid UTF-8 in a string");
    for (std::size_t k = 1; k < n; ++k) {
      const auto b = static_cast<unsigned char>(s_[p_ + k]);
      if ((b & 0xC0u) != 0x80u) fail("invalid UTF-8 in a string");
      cp = (cp << 6) | (b & 0x3Fu);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      fail("invalid UTF-8 in a string");
    }
    out.append(s_.substr(p_, n));
    p_ += n;
  }

  std::string string() {
    ++p_;  // opening quote
    std::string out;
    for (;;) {
      if (eof()) fail("unterminated string");
      const char c = s_[p_];
      if (c == '"') {
        ++p_;
        return out;
      }
      if (static_cast<unsigned char>(c) < 0x20) fail("unescaped control character in a string");
      if (static_cast<unsigned char>(c) >= 0x80) {
        utf8_char(out);
        continue;
      }
      if (c != '\\') {
        out += c;
        ++p_;
        continue;
      }
      ++p_;
      if (eof()) fail("unterminated string");
      const char e = s_[p_++];
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (s_.substr(p_, 2) != "\\u") fail("unpaired surrogate in a \\u escape");
            p_ += 2;
            const unsigned lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail("unpaired surrogate in a \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            fail("unpaired surrogate in a \\u escape");
          }
          put_utf8(out, cp);
          break;
        }
        default:
          fail(std::string("invalid escape '\\") + e + "'");
      }
    }
  }

  std::string_view s_;
  std::string name_;
  std::size_t p_ = 0;
};

/// Parses JSON text; `name` (a file name) goes into error messages.
inline JsonValue parse_json(std::string_view text, std::string_view name = "<string>") {
  return JsonParser(text, name).parse();
}

/// Reads and parses a JSON file. Throws IoError if it cannot be read (naming the path and the
/// reason), FormatError if malformed.
inline JsonValue read_json_file(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw IoError("[json] cannot read '" + path.string() + "': " + std::strerror(errno));
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw IoError("[json] error reading '" + path.string() + "'");
  const std::string text = ss.str();
  return parse_json(text, path.string());
}

}  // namespace moe::io
