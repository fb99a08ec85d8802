// libFuzzer target: the safetensors header parser on arbitrary bytes (a whole file's contents).
//
// Accepted inputs must satisfy the reader's guarantees; rejected inputs must throw moe::Error
// (any other exception, a crash or a sanitizer report is a bug).
#include <cstddef>
#include <cstdint>
#include <span>

#include <moe/io/safetensors.hpp>

namespace st = moe::io::safetensors;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);
  try {
    const st::Header h = st::parse_header(in, "fuzz-input");
    if (h.data_begin < 8 || h.data_begin > in.size()) __builtin_trap();
    // The tensors tile [data_begin, size) in order: no overlap, no gap, nothing left over.
    std::size_t at = h.data_begin;
    for (const st::Entry& e : h.entries) {
      if (e.begin != at || e.end < e.begin || e.end > in.size()) __builtin_trap();
      if (e.name.empty() || e.shape.size() > st::Limits{}.max_ndim) __builtin_trap();
      std::size_t n = 1;
      for (std::size_t d : e.shape) {
        if (__builtin_mul_overflow(n, d, &n)) __builtin_trap();
      }
      std::size_t bytes = 0;
      if (__builtin_mul_overflow(n, st::dtype_size(e.dtype), &bytes)) __builtin_trap();
      if (bytes != e.nbytes() || n != e.numel()) __builtin_trap();
      // Touch both ends of the payload: ASan reports any byte outside the input buffer.
      if (e.nbytes() > 0) {
        volatile std::byte first = in[e.begin];
        volatile std::byte last = in[e.end - 1];
        (void)first;
        (void)last;
      }
      at = e.end;
    }
    if (at != in.size()) __builtin_trap();
  } catch (const moe::Error&) {
    // rejected: fine
  }
  return 0;
}
