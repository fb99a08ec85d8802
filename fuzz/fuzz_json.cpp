// libFuzzer target: the strict JSON reader on arbitrary text.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include <moe/io/json.hpp>

namespace {

std::size_t walk(const moe::io::JsonValue& v, int depth) {
  if (depth > 64) __builtin_trap();  // the parser limits nesting to 64 containers
  std::size_t n = 1;
  if (v.is_array()) {
    for (const auto& e : v.as_array()) n += walk(e, depth + 1);
  } else if (v.is_object()) {
    for (const auto& kv : v.as_object()) n += walk(kv.second, depth + 1);
  } else if (v.is_integer()) {
    (void)v.as_int64();
  }
  return n;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const moe::io::JsonValue v =
        moe::io::parse_json(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
    (void)walk(v, 0);
  } catch (const moe::Error&) {
  }
  return 0;
}
