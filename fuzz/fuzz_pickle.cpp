// libFuzzer target: the data-only pickle reader on arbitrary bytes.
//
// Accepted inputs must satisfy the reader's guarantees; rejected inputs must throw moe::Error
// (any other exception, a crash or a sanitizer report is a bug).
#include <cstddef>
#include <cstdint>
#include <span>
#include <variant>

#include <moe/io/pickle.hpp>
#include <moe/models/grok1_checkpoint.hpp>  // the classes a Grok-1 file may hold

namespace {

void check(const moe::io::Array& a, std::span<const std::byte> in) {
  // the view lies inside the input, at its recorded offset
  if (a.offset > in.size() || a.nbytes > in.size() - a.offset) __builtin_trap();
  if (a.data != in.data() + a.offset) __builtin_trap();
  // byte count = prod(shape) * itemsize, without overflow; rank within the limit
  if (a.shape.size() > moe::io::PickleLimits{}.max_ndim) __builtin_trap();
  std::size_t n = 1;
  for (std::size_t d : a.shape) {
    if (__builtin_mul_overflow(n, d, &n)) __builtin_trap();
  }
  std::size_t bytes = 0;
  if (__builtin_mul_overflow(n, moe::io::dtype_size(a.dtype), &bytes)) __builtin_trap();
  if (bytes != a.nbytes || n != a.numel()) __builtin_trap();
  // touch both ends of the payload: ASan reports any byte outside the input buffer
  if (a.nbytes > 0) {
    volatile std::byte first = a.data[0];
    volatile std::byte last = a.data[a.nbytes - 1];
    (void)first;
    (void)last;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);
  try {
    const moe::io::PickledObject o =
        moe::io::parse_pickle(in, "fuzz-input", moe::grok1::kPickleClasses);
    if (const auto* a = std::get_if<moe::io::Array>(&o)) {
      check(*a, in);
    } else {
      const auto& q = std::get<moe::io::PickledInstance>(o);
      if (q.class_index != 0 || q.attributes.size() != 2) __builtin_trap();
      for (const moe::io::Array& attribute : q.attributes) check(attribute, in);
      if (q.class_name.size() < 20) __builtin_trap();  // "<module>.QuantizedWeight8bit"
    }
  } catch (const moe::Error&) {
    // rejected: fine
  }
  return 0;
}
