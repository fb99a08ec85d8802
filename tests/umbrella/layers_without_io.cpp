// The compute umbrellas read no files: a translation unit that includes <moe/moe.hpp> (and with
// it <moe/layers.hpp>) gets no io/ header, no mmap, no <filesystem> and no pickle reader.
//
// MOE_UMBRELLA names the header under test (default <moe/moe.hpp>). Two probes fail to compile
// when an io header got in: include guards of <filesystem> and <sys/mman.h> (#error), and aliases
// that conflict with the names io/ declares (a redeclaration error). tests/CMakeLists.txt builds
// this file as test_umbrella_layers, and compiles it once more with MOE_UMBRELLA =
// <moe/io/mapped_file.hpp>, expecting the #error: the probe itself can fail.
#ifndef MOE_UMBRELLA
#define MOE_UMBRELLA <moe/moe.hpp>
#endif
#include MOE_UMBRELLA

#if defined(_GLIBCXX_FILESYSTEM) || defined(_LIBCPP_FILESYSTEM)
#error "moe-umbrella: <filesystem> pulled in by the compute umbrella"
#endif
#if defined(_SYS_MMAN_H) || defined(_SYS_MMAN_H_)
#error "moe-umbrella: <sys/mman.h> (io/mapped_file.hpp) pulled in by the compute umbrella"
#endif

// Each alias conflicts with the class or namespace of the same name in moe::io, if declared.
namespace moe::io {
using MappedFile = int;   // io/mapped_file.hpp
using PickleClass = int;  // io/pickle.hpp
using JsonValue = int;    // io/json.hpp
using NpyArray = int;     // io/npy.hpp
using safetensors = int;  // io/safetensors.hpp (a namespace)
}  // namespace moe::io
namespace moe::grok1 {
using Checkpoint = int;  // models/grok1_checkpoint.hpp
}  // namespace moe::grok1

#ifndef MOE_UMBRELLA_PROBE_ONLY
// The umbrella does provide the layers (the probe above is not vacuous for an empty header).
static_assert(sizeof(moe::presets::Mixtral<moe::F32Weight>) > 0);
static_assert(sizeof(moe::Decoder<moe::TransformerBlock<moe::RotaryAttention<moe::BF16Weight>,
                                                        moe::presets::Grok1>>) > 0);

int main() {
  return 0;
}
#endif
