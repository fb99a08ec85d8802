// moe/models/grok1_checkpoint.hpp: xAI's original Grok-1 release, opened in place (zero-copy).
//
//   moe::grok1::Checkpoint ck = moe::grok1::Checkpoint::open("grok-1", {.progress = print});
//   const moe::grok1::Config& c = ck.config();           // inferred from the tensor shapes
//   moe::Int8Weight wq = ck.attention(0, Slot::kQuery);   // views into the mapped files
//   moe::WeightStack<moe::Int8Weight> up = ck.experts(0, Slot::kExpertUp);
//
// Layout (docs/checkpoint-format.md): DIR/ckpt-0/ (or DIR/ckpt/) holds tensor00000_000 ..
// tensorNNNNN_000, one pickle per parameter, 2 + 12 * n_layers files. File i is leaf i of the
// flattened JAX parameter tree, i.e. the parameters in sorted path order: t0 embeddings, t1 the
// final norm, then the layers in LEXICOGRAPHIC order (0, 1, 10, 11, ..., 19, 2, 20, ...), 12
// slots each (Slot below). An optional DIR/config.json sets what the shapes cannot tell.
//
// open() maps every file (MappedFile), parses every pickle (io::parse_pickle), infers the
// hyperparameters, and validates every tensor's kind, dtype and shape; any problem throws a
// moe::Error naming the file and what was wrong. It reads only the pickle headers and tails:
// a few KB per file, so the 318 GB release validates in seconds. The payloads are read later, by
// the kernels, through the page cache (RSS stays far below the checkpoint size).
//
// Typed views and alignment. int8 weights are always zero-copy. f32 tensors and bf16 scales are
// zero-copy when their payload happens to be aligned in the file; in the release most are NOT
// (numpy's pickle header puts the payload at an arbitrary offset, e.g. byte 151 for the
// embeddings and an odd offset for every scales array), and a misaligned float* / bf16* must not
// be dereferenced. For those, the first call to the accessor copies the payload into an owned,
// 64-byte-aligned buffer (thread-safe; copied_bytes() reports the total: for the 314B release
// ~3.2 GB of embeddings, ~19 MB of norms/routers, ~125 MB of scales). raw(i) gives the
// unconverted io::Array (bytes, any alignment) for consumers that handle unaligned data.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <variant>
#include <vector>

#include <moe/core/bf16.hpp>
#include <moe/core/buffer.hpp>
#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/io/json.hpp>
#include <moe/io/mapped_file.hpp>
#include <moe/io/pickle.hpp>
#include <moe/models/grok1_config.hpp>
#include <moe/ops/weights.hpp>

namespace moe::grok1 {

// ---- the index table ----------------------------------------------------------------------------

/// The 12 parameters of a decoder layer, in file order (sorted Haiku paths).
enum class Slot : std::uint8_t {
  kExpertGate = 0,    ///< moe/linear/w                 [E, D, F]  GELU branch ("w1")
  kExpertDown = 1,    ///< moe/linear_1/w               [E, F, D]  down projection ("w2")
  kExpertUp = 2,      ///< moe/linear_v/w               [E, D, F]  linear branch ("w3")
  kKey = 3,           ///< multi_head_attention/key/w    [D, Hkv*dh]
  kAttnOut = 4,       ///< multi_head_attention/linear/w [Hq*dh, D]
  kQuery = 5,         ///< multi_head_attention/query/w  [D, Hq*dh]
  kValue = 6,         ///< multi_head_attention/value/w  [D, Hkv*dh]
  kNormPreAttn = 7,   ///< rms_norm/scale   [D]
  kNormPostAttn = 8,  ///< rms_norm_1/scale [D]
  kNormPreMoe = 9,    ///< rms_norm_2/scale [D]
  kNormPostMoe = 10,  ///< rms_norm_3/scale [D]
  kRouter = 11,       ///< router/w [D, E], f32
};

inline constexpr std::size_t kSlotsPerLayer = 12;
inline constexpr std::size_t kGlobalTensors = 2;  ///< embeddings, final norm
inline constexpr std::size_t kEmbeddingIndex = 0;
inline constexpr std::size_t kFinalNormIndex = 1;

/// Path of a slot below transformer/decoder_layer_N/, e.g. "moe/linear_1/w".
inline constexpr std::string_view slot_path(Slot s) noexcept {
  constexpr std::string_view kPaths[kSlotsPerLayer] = {
      "moe/linear/w",
      "moe/linear_1/w",
      "moe/linear_v/w",
      "multi_head_attention/key/w",
      "multi_head_attention/linear/w",
      "multi_head_attention/query/w",
      "multi_head_attention/value/w",
      "rms_norm/scale",
      "rms_norm_1/scale",
      "rms_norm_2/scale",
      "rms_norm_3/scale",
      "router/w",
  };
  return kPaths[static_cast<std::size_t>(s)];
}

/// True for the slots stored as QuantizedWeight8bit (int8 + bf16 scales).
inline constexpr bool slot_is_quantized(Slot s) noexcept {
  return static_cast<std::size_t>(s) <= static_cast<std::size_t>(Slot::kValue);
}
inline constexpr bool slot_is_expert(Slot s) noexcept {
  return static_cast<std::size_t>(s) <= static_cast<std::size_t>(Slot::kExpertUp);
}
inline constexpr bool slot_is_norm(Slot s) noexcept {
  return s >= Slot::kNormPreAttn && s <= Slot::kNormPostMoe;
}

/// Number of checkpoint files for n_layers layers: 2 + 12 * n_layers.
inline constexpr std::size_t n_files(std::size_t n_layers) noexcept {
  return kGlobalTensors + kSlotsPerLayer * n_layers;
}

/// "tensor00519_000"
inline std::string file_name(std::size_t index) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "tensor%05zu_000", index);
  return buf;
}

/// The layers in file order: sorted by their decimal names ("decoder_layer_1/" < "..._10/").
inline std::vector<std::size_t> layer_file_order(std::size_t n_layers) {
  std::vector<std::size_t> v(n_layers);
  for (std::size_t i = 0; i < n_layers; ++i) v[i] = i;
  std::sort(v.begin(), v.end(),
            [](std::size_t a, std::size_t b) { return std::to_string(a) < std::to_string(b); });
  return v;
}

/// Position of `layer` in layer_file_order(n_layers).
inline std::size_t layer_rank(std::size_t layer, std::size_t n_layers) {
  const std::string name = std::to_string(layer);
  std::size_t rank = 0;
  for (std::size_t m = 0; m < n_layers; ++m) rank += std::to_string(m) < name ? 1 : 0;
  return rank;
}

/// File index of a layer's slot: 2 + 12 * rank(layer) + slot.
inline std::size_t file_index(std::size_t layer, Slot slot, std::size_t n_layers) {
  return kGlobalTensors + kSlotsPerLayer * layer_rank(layer, n_layers) +
         static_cast<std::size_t>(slot);
}

/// What a file index holds.
struct TensorRef {
  bool in_layer = false;  ///< false: embeddings (index 0) or final norm (index 1)
  std::size_t layer = 0;
  Slot slot = Slot::kExpertGate;
};

/// Inverse of file_index. Throws ConfigError if index >= n_files(n_layers).
inline TensorRef tensor_at(std::size_t index, std::size_t n_layers) {
  if (index >= n_files(n_layers)) {
    throw ConfigError("[grok1] file index " + std::to_string(index) + " is out of range for " +
                      std::to_string(n_layers) + " layers (" + std::to_string(n_files(n_layers)) +
                      " files)");
  }
  TensorRef r;
  if (index < kGlobalTensors) return r;
  const std::size_t k = index - kGlobalTensors;
  r.in_layer = true;
  r.layer = layer_file_order(n_layers)[k / kSlotsPerLayer];
  r.slot = static_cast<Slot>(k % kSlotsPerLayer);
  return r;
}

/// Parameter path of file `index`, e.g. "transformer/decoder_layer_48/moe/linear_1/w".
inline std::string tensor_name(std::size_t index, std::size_t n_layers) {
  if (index == kEmbeddingIndex) return "language_model/in_out_embed/embeddings";
  if (index == kFinalNormIndex) return "language_model/rms_norm/scale";
  const TensorRef r = tensor_at(index, n_layers);
  return "transformer/decoder_layer_" + std::to_string(r.layer) + "/" +
         std::string(slot_path(r.slot));
}

// ---- the checkpoint
// ------------------------------------------------------------------------------

/// Progress of open(): called after each file is mapped and parsed.
using ProgressFn =
    std::function<void(std::size_t done, std::size_t total, const std::filesystem::path& file)>;

struct OpenOptions {
  ProgressFn progress;  ///< optional
  /// Read DIR/config.json (if present) for what the shapes cannot tell. Ignored when `config`
  /// is set.
  bool read_config_json = true;
  /// Use this config instead of inferring one (the tensors are validated against it).
  std::optional<Config> config;
  /// madvise hint applied to every file once open() is done (parsing itself uses kRandom so
  /// that touching a header does not trigger megabytes of read-ahead).
  io::Advice advice_after_open = io::Advice::kNormal;
};

/// One checkpoint file: its mapping and what its pickle holds.
struct TensorFile {
  std::size_t index = 0;
  std::string name;            ///< parameter path
  std::filesystem::path path;  ///< the file
  io::MappedFile map;
  bool quantized = false;  ///< QuantizedWeight8bit (weight + scales) or a plain array
  io::Array weight;        ///< the array, or the int8 weight of a QuantizedWeight8bit
  io::Array scales;        ///< the bf16 scales (quantized only)

  /// "'<path>' (<name>)", used in every message about this file.
  [[nodiscard]] std::string where() const { return "'" + path.string() + "' (" + name + ")"; }
};

namespace detail {

/// Keys config.json may set: overrides for what shapes cannot tell, and cross-checks.
struct JsonConfig {
  std::optional<std::size_t> head_dim, top_k, max_seq_len;
  std::optional<double> rope_base, rms_eps, embedding_multiplier, output_multiplier,
      attn_logit_multiplier, attn_softcap;
  std::optional<std::int32_t> pad_id, bos_id, eos_id;
  // must agree with the shapes when present
  std::optional<std::size_t> vocab_size, d_model, n_layers, n_q_heads, n_kv_heads, n_experts, d_ff;
};

inline JsonConfig read_json_config(const std::filesystem::path& path) {
  const io::JsonValue root = io::read_json_file(path);
  const std::string where = "[grok1] '" + path.string() + "': ";
  if (!root.is_object()) {
    throw ConfigError(where + "expected a JSON object, got " + root.describe());
  }
  JsonConfig c;
  auto positive_int = [&](const std::string& key, const io::JsonValue& v) -> std::size_t {
    if (!v.is_integer() || v.as_int64() <= 0 || v.as_int64() > (std::int64_t{1} << 40)) {
      throw ConfigError(where + "key '" + key + "' must be a positive integer, got " +
                        v.describe());
    }
    return static_cast<std::size_t>(v.as_int64());
  };
  auto token_id = [&](const std::string& key, const io::JsonValue& v) -> std::int32_t {
    if (!v.is_integer() || v.as_int64() < 0 || v.as_int64() > INT32_MAX) {
      throw ConfigError(where + "key '" + key + "' must be a token id (integer >= 0), got " +
                        v.describe());
    }
    return static_cast<std::int32_t>(v.as_int64());
  };
  auto finite = [&](const std::string& key, const io::JsonValue& v, bool positive) -> double {
    if (!v.is_number() || !std::isfinite(v.as_number()) ||
        (positive ? v.as_number() <= 0 : v.as_number() < 0)) {
      throw ConfigError(where + "key '" + key + "' must be a " +
                        (positive ? "positive" : "non-negative") + " number, got " + v.describe());
    }
    return v.as_number();
  };
  struct IntKey {
    const char* name;
    std::optional<std::size_t> JsonConfig::*field;
  };
  struct NumberKey {
    const char* name;
    std::optional<double> JsonConfig::*field;
    bool positive;
  };
  struct IdKey {
    const char* name;
    std::optional<std::int32_t> JsonConfig::*field;
  };
  static constexpr IntKey kInts[] = {
      {"head_dim", &JsonConfig::head_dim},       {"top_k", &JsonConfig::top_k},
      {"max_seq_len", &JsonConfig::max_seq_len}, {"vocab_size", &JsonConfig::vocab_size},
      {"d_model", &JsonConfig::d_model},         {"n_layers", &JsonConfig::n_layers},
      {"n_q_heads", &JsonConfig::n_q_heads},     {"n_kv_heads", &JsonConfig::n_kv_heads},
      {"n_experts", &JsonConfig::n_experts},     {"d_ff", &JsonConfig::d_ff},
  };
  static constexpr NumberKey kNumbers[] = {
      {"rope_base", &JsonConfig::rope_base, true},
      {"rms_eps", &JsonConfig::rms_eps, true},
      {"embedding_multiplier", &JsonConfig::embedding_multiplier, true},
      {"output_multiplier", &JsonConfig::output_multiplier, true},
      {"attn_logit_multiplier", &JsonConfig::attn_logit_multiplier, true},
      {"attn_softcap", &JsonConfig::attn_softcap, false},
  };
  static constexpr IdKey kIds[] = {{"pad_id", &JsonConfig::pad_id},
                                   {"bos_id", &JsonConfig::bos_id},
                                   {"eos_id", &JsonConfig::eos_id}};

  for (const auto& [key, v] : root.as_object()) {
    bool known = false;
    for (const IntKey& k : kInts) {
      if (key == k.name) {
        c.*k.field = positive_int(key, v);
        known = true;
      }
    }
    for (const NumberKey& k : kNumbers) {
      if (key == k.name) {
        c.*k.field = finite(key, v, k.positive);
        known = true;
      }
    }
    for (const IdKey& k : kIds) {
      if (key == k.name) {
        c.*k.field = token_id(key, v);
        known = true;
      }
    }
    if (!known) {
      throw ConfigError(where + "unknown key '" + key +
                        "' (known: head_dim, top_k, max_seq_len, rope_base, rms_eps, "
                        "embedding_multiplier, output_multiplier, attn_logit_multiplier, "
                        "attn_softcap, pad_id, bos_id, eos_id, and the shape-derived vocab_size, "
                        "d_model, n_layers, n_q_heads, n_kv_heads, n_experts, d_ff)");
    }
  }
  return c;
}

struct CheckpointState {
  std::filesystem::path root;         ///< the directory given to open()
  std::filesystem::path tensor_dir;   ///< root/ckpt-0 or root/ckpt
  std::filesystem::path config_json;  ///< empty when none was read
  Config config;
  std::vector<TensorFile> files;
  // Aligned copies of misaligned payloads, made on first access (see the header comment).
  mutable std::mutex mutex;
  mutable std::vector<Buffer<float>> f32_copies;
  mutable std::vector<Buffer<bf16>> scale_copies;
  mutable std::size_t copied = 0;
};

inline std::string dtype_of(const io::Array& a) {
  return std::string(io::dtype_name(a.dtype));
}

}  // namespace detail

class Checkpoint {
 public:
  Checkpoint() = default;

  /// Opens DIR (holding ckpt-0/ or ckpt/; a directory of tensor files is accepted too), maps
  /// and parses every file, infers the config and validates every tensor. Throws IoError,
  /// FormatError, ConfigError or ShapeError naming the file and the problem.
  static Checkpoint open(const std::filesystem::path& dir, const OpenOptions& options = {}) {
    Checkpoint ck;
    ck.s_ = std::make_unique<detail::CheckpointState>();
    detail::CheckpointState& s = *ck.s_;
    s.root = dir;
    locate(s, dir);

    std::optional<detail::JsonConfig> json;
    if (!options.config && options.read_config_json) {
      std::filesystem::path p = s.root / "config.json";
      std::error_code ec;
      if (std::filesystem::is_regular_file(p, ec)) {
        json = detail::read_json_config(p);
        s.config_json = p;
      }
    }
    std::optional<std::size_t> want_layers;
    if (options.config) want_layers = options.config->n_layers;
    if (json && json->n_layers) want_layers = json->n_layers;
    const std::size_t n_files = count_files(s, want_layers);

    s.files.resize(n_files);
    const std::size_t n_layers = (n_files - kGlobalTensors) / kSlotsPerLayer;
    for (std::size_t i = 0; i < n_files; ++i) {
      TensorFile& f = s.files[i];
      f.index = i;
      f.name = tensor_name(i, n_layers);
      f.path = s.tensor_dir / file_name(i);
      f.map = io::MappedFile(f.path);
      f.map.advise(io::Advice::kRandom);  // touch only the pages the parser needs
      io::PickledObject obj = io::parse_pickle(f.map.bytes(), f.path.string());
      if (auto* q = std::get_if<io::QuantizedWeight8bit>(&obj)) {
        f.quantized = true;
        f.weight = std::move(q->weight);
        f.scales = std::move(q->scales);
      } else {
        f.weight = std::move(std::get<io::Array>(obj));
      }
      f.map.advise(options.advice_after_open);
      if (options.progress) options.progress(i + 1, n_files, f.path);
    }

    s.config = options.config ? *options.config : infer(s, json);
    s.config.validate();
    ck.validate(s.config);
    s.f32_copies.resize(n_files);
    s.scale_copies.resize(n_files);
    return ck;
  }

  /// The model config (inferred, or the one given in OpenOptions).
  [[nodiscard]] const Config& config() const { return state().config; }
  /// The directory given to open().
  [[nodiscard]] const std::filesystem::path& root() const { return state().root; }
  /// The directory of the tensor files (ckpt-0/ or ckpt/).
  [[nodiscard]] const std::filesystem::path& tensor_dir() const { return state().tensor_dir; }
  /// The config.json that was read, or an empty path.
  [[nodiscard]] const std::filesystem::path& config_json() const { return state().config_json; }
  [[nodiscard]] std::size_t n_tensors() const { return state().files.size(); }
  [[nodiscard]] const TensorFile& file(std::size_t index) const {
    check_index(index);
    return state().files[index];
  }
  [[nodiscard]] std::span<const TensorFile> files() const { return state().files; }
  /// File index of a layer's slot.
  [[nodiscard]] std::size_t index_of(std::size_t layer, Slot slot) const {
    check_layer(layer);
    return file_index(layer, slot, config().n_layers);
  }
  /// Total size of the tensor files in bytes.
  [[nodiscard]] std::uint64_t file_bytes() const {
    std::uint64_t n = 0;
    for (const TensorFile& f : state().files) n += f.map.size();
    return n;
  }
  /// Bytes copied so far into aligned buffers (misaligned f32 tensors and bf16 scales).
  [[nodiscard]] std::size_t copied_bytes() const {
    std::lock_guard<std::mutex> lock(state().mutex);
    return state().copied;
  }
  /// Bytes of the mapped files currently resident in RAM (mincore; diagnostics).
  [[nodiscard]] std::uint64_t resident_bytes() const {
    std::uint64_t n = 0;
    for (const TensorFile& f : state().files) n += f.map.resident_bytes();
    return n;
  }

  /// The unconverted array of file `index` (its int8 weight for a quantized file); data may be
  /// misaligned.
  [[nodiscard]] const io::Array& raw(std::size_t index) const { return file(index).weight; }

  // ---- typed views (aligned; zero-copy where the file allows) ----

  /// f32 tensor of file `index` (embeddings, norms, routers): numel() floats, C order.
  [[nodiscard]] std::span<const float> f32(std::size_t index) const {
    const TensorFile& f = file(index);
    if (f.quantized || f.weight.dtype != io::DType::kF32) {
      throw ConfigError("[grok1] " + f.where() + " is not a float32 tensor");
    }
    return {aligned_f32(f), f.weight.numel()};
  }
  /// language_model/in_out_embed/embeddings [vocab, D] (row = token).
  [[nodiscard]] MatrixView<const float> embedding() const {
    const std::span<const float> e = f32(kEmbeddingIndex);
    return {e.data(), config().vocab_size, config().d_model};
  }
  /// language_model/rms_norm/scale [D].
  [[nodiscard]] std::span<const float> final_norm() const { return f32(kFinalNormIndex); }
  /// One of the four RMSNorm scales of a layer [D].
  [[nodiscard]] std::span<const float> norm(std::size_t layer, Slot slot) const {
    if (!slot_is_norm(slot)) throw bad_slot("norm", slot);
    return f32(index_of(layer, slot));
  }
  /// router/w [D, E] f32, [in, out].
  [[nodiscard]] F32Weight router(std::size_t layer) const {
    const std::span<const float> w = f32(index_of(layer, Slot::kRouter));
    F32Weight r;
    r.data = w.data();
    r.in = config().d_model;
    r.out = config().n_experts;
    r.layout = Layout::kInOut;
    return r;
  }
  /// An attention projection (kQuery, kKey, kValue, kAttnOut): int8 [in, out] + scales.
  [[nodiscard]] Int8Weight attention(std::size_t layer, Slot slot) const {
    if (!slot_is_quantized(slot) || slot_is_expert(slot)) throw bad_slot("attention", slot);
    return int8(index_of(layer, slot));
  }
  /// An expert stack (kExpertGate, kExpertUp, kExpertDown): E x int8 [in, out] + scales.
  [[nodiscard]] WeightStack<Int8Weight> experts(std::size_t layer, Slot slot) const {
    if (!slot_is_expert(slot)) throw bad_slot("experts", slot);
    return int8_stack(index_of(layer, slot));
  }
  /// A 2-D quantized tensor of file `index` as Int8Weight.
  [[nodiscard]] Int8Weight int8(std::size_t index) const {
    const TensorFile& f = file(index);
    if (!f.quantized || f.weight.ndim() != 2) {
      throw ConfigError("[grok1] " + f.where() + " is not a 2-D quantized tensor");
    }
    Int8Weight w;
    w.data = reinterpret_cast<const std::int8_t*>(f.weight.data);
    w.scales = aligned_scales(f);
    w.in = f.weight.shape[0];
    w.out = f.weight.shape[1];
    w.blocks = f.scales.shape[0];
    return w;
  }
  /// A 3-D quantized tensor of file `index` ([E, in, out]) as WeightStack<Int8Weight>.
  [[nodiscard]] WeightStack<Int8Weight> int8_stack(std::size_t index) const {
    const TensorFile& f = file(index);
    if (!f.quantized || f.weight.ndim() != 3) {
      throw ConfigError("[grok1] " + f.where() + " is not a 3-D quantized tensor");
    }
    WeightStack<Int8Weight> s;
    s.first.data = reinterpret_cast<const std::int8_t*>(f.weight.data);
    s.first.scales = aligned_scales(f);
    s.first.in = f.weight.shape[1];
    s.first.out = f.weight.shape[2];
    s.first.blocks = f.scales.shape[1];
    s.count = f.weight.shape[0];
    return s;
  }

  // ---- memory hints ----

  /// madvise on one file (e.g. kWillNeed to prefetch, kDontNeed to drop it from this process).
  void advise(std::size_t index, io::Advice a) const { file(index).map.advise(a); }
  /// madvise on the 12 files of a layer.
  void advise_layer(std::size_t layer, io::Advice a) const {
    for (std::size_t k = 0; k < kSlotsPerLayer; ++k)
      advise(index_of(layer, static_cast<Slot>(k)), a);
  }

  /// Checks every tensor's kind, dtype and shape against `c`; throws ShapeError naming the file.
  void validate(const Config& c) const {
    const detail::CheckpointState& s = state();
    if (s.files.size() != n_files(c.n_layers)) {
      throw ShapeError("[grok1] '" + s.tensor_dir.string() + "' has " +
                       std::to_string(s.files.size()) + " tensor files, a config with " +
                       std::to_string(c.n_layers) + " layers needs " +
                       std::to_string(n_files(c.n_layers)));
    }
    const std::size_t D = c.d_model, V = c.vocab_size, E = c.n_experts, F = c.d_ff;
    const std::size_t Q = c.q_dim(), K = c.kv_dim();
    for (const TensorFile& f : s.files) {
      if (f.index == kEmbeddingIndex) {
        expect_f32(f, {V, D});
        continue;
      }
      if (f.index == kFinalNormIndex) {
        expect_f32(f, {D});
        continue;
      }
      const TensorRef r = tensor_at(f.index, c.n_layers);
      switch (r.slot) {
        case Slot::kExpertGate:
        case Slot::kExpertUp:
          expect_quantized(f, {E, D, F});
          break;
        case Slot::kExpertDown:
          expect_quantized(f, {E, F, D});
          break;
        case Slot::kKey:
        case Slot::kValue:
          expect_quantized(f, {D, K});
          break;
        case Slot::kAttnOut:
          expect_quantized(f, {Q, D});
          break;
        case Slot::kQuery:
          expect_quantized(f, {D, Q});
          break;
        case Slot::kRouter:
          expect_f32(f, {D, E});
          break;
        default:
          expect_f32(f, {D});
          break;  // the four norms
      }
    }
  }

  /// One line: "<dir>: 770 files, 318.24 GB; vocab 131072, D 6144, 64 layers, 48/8 heads x 128,
  /// 8 experts (top 2), d_ff 32768".
  [[nodiscard]] std::string summary() const {
    const Config& c = config();
    char gb[32];
    std::snprintf(gb, sizeof gb, "%.2f GB", static_cast<double>(file_bytes()) / 1e9);
    return "'" + tensor_dir().string() + "': " + std::to_string(n_tensors()) + " files, " + gb +
           "; vocab " + std::to_string(c.vocab_size) + ", d_model " + std::to_string(c.d_model) +
           ", " + std::to_string(c.n_layers) + " layers, " + std::to_string(c.n_q_heads) + "/" +
           std::to_string(c.n_kv_heads) + " heads x " + std::to_string(c.head_dim) + ", " +
           std::to_string(c.n_experts) + " experts (top " + std::to_string(c.top_k) + "), d_ff " +
           std::to_string(c.d_ff);
  }

 private:
  const detail::CheckpointState& state() const {
    if (!s_) throw ConfigError("[grok1] the checkpoint is not open");
    return *s_;
  }
  void check_index(std::size_t index) const {
    if (index >= state().files.size()) {
      throw ConfigError("[grok1] file index " + std::to_string(index) + " is out of range (" +
                        std::to_string(state().files.size()) + " files)");
    }
  }
  void check_layer(std::size_t layer) const {
    if (layer >= config().n_layers) {
      throw ConfigError("[grok1] layer " + std::to_string(layer) + " is out of range (" +
                        std::to_string(config().n_layers) + " layers)");
    }
  }
  static ConfigError bad_slot(const char* what, Slot slot) {
    return ConfigError("[grok1] " + std::string(what) + "(): slot '" +
                       std::string(slot_path(slot)) + "' is not of that kind");
  }

  const float* aligned_f32(const TensorFile& f) const {
    return aligned_view<float>(f, f.weight, state().f32_copies[f.index]);
  }
  const bf16* aligned_scales(const TensorFile& f) const {
    return aligned_view<bf16>(f, f.scales, state().scale_copies[f.index]);
  }
  // The array's data as T*: in place when the file offset is aligned for T, else a one-time copy
  // into `copy` (made on first use). The copied file pages are then unmapped from this process
  // (they stay in the page cache until the kernel needs the memory), so a 3.2 GB embedding is
  // not resident twice.
  template <class T>
  const T* aligned_view(const TensorFile& f, const io::Array& a, Buffer<T>& copy) const {
    if (a.aligned()) return reinterpret_cast<const T*>(a.data);
    const detail::CheckpointState& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (copy.empty() && a.numel() > 0) {
      copy = Buffer<T>(a.numel());
      std::memcpy(copy.data(), a.data, a.nbytes);
      s.copied += a.nbytes;
      f.map.advise(io::Advice::kDontNeed, static_cast<std::size_t>(a.data - f.map.data()),
                   a.nbytes);
    }
    return copy.data();
  }

  // ---- open() steps ----

  static void locate(detail::CheckpointState& s, const std::filesystem::path& dir) {
    std::error_code ec;
    if (!std::filesystem::exists(dir, ec)) {
      throw IoError("[grok1] checkpoint directory '" + dir.string() + "' does not exist");
    }
    if (!std::filesystem::is_directory(dir, ec)) {
      throw IoError("[grok1] checkpoint path '" + dir.string() + "' is not a directory");
    }
    for (const char* sub : {"ckpt-0", "ckpt"}) {
      if (std::filesystem::is_directory(dir / sub, ec)) {
        s.tensor_dir = dir / sub;
        return;
      }
    }
    if (std::filesystem::exists(dir / file_name(0), ec)) {  // DIR is the tensor directory
      s.tensor_dir = dir;
      std::filesystem::path p = dir;
      if (!p.has_filename()) p = p.parent_path();  // "x/ckpt-0/" -> "x/ckpt-0"
      s.root = p.has_parent_path() ? p.parent_path() : std::filesystem::path(".");
      return;
    }
    throw FormatError("[grok1] '" + dir.string() +
                      "' is not a Grok-1 checkpoint: it holds neither ckpt-0/ nor ckpt/ nor "
                      "tensor00000_000");
  }

  /// Lists tensorNNNNN_000 files, checks that none is missing or extra, returns the count.
  static std::size_t count_files(detail::CheckpointState& s, std::optional<std::size_t> layers) {
    std::vector<std::size_t> found;
    std::error_code ec;
    for (auto it = std::filesystem::directory_iterator(s.tensor_dir, ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
      const std::string n = it->path().filename().string();
      // tensor%05d_%03d; other shards than _000 hold the same tensors and are ignored.
      if (n.size() != 15 || n.compare(0, 6, "tensor") != 0 || n.compare(11, 4, "_000") != 0) {
        continue;
      }
      std::size_t idx = 0;
      bool digits = true;
      for (std::size_t k = 6; k < 11; ++k) {
        digits = digits && n[k] >= '0' && n[k] <= '9';
        idx = idx * 10 + static_cast<std::size_t>(n[k] - '0');
      }
      if (digits) found.push_back(idx);
    }
    if (ec) {
      throw IoError("[grok1] cannot list '" + s.tensor_dir.string() + "': " + ec.message());
    }
    const std::string dir = "[grok1] '" + s.tensor_dir.string() + "'";
    if (found.empty()) throw FormatError(dir + " holds no tensor files (tensor00000_000, ...)");
    std::sort(found.begin(), found.end());
    const std::size_t span = found.back() + 1;  // files 0 .. max
    auto list = [](const std::vector<std::size_t>& v) {
      std::string out;
      for (std::size_t k = 0; k < v.size() && k < 5; ++k) out += (k ? ", " : "") + file_name(v[k]);
      if (v.size() > 5) out += ", ... (" + std::to_string(v.size()) + " files)";
      return out;
    };
    auto missing_below = [&](std::size_t n) {
      std::vector<std::size_t> m;
      std::size_t j = 0;
      for (std::size_t i = 0; i < n; ++i) {
        while (j < found.size() && found[j] < i) ++j;
        if (j >= found.size() || found[j] != i) m.push_back(i);
      }
      return m;
    };
    std::size_t n_layers = 0;
    if (layers) {
      n_layers = *layers;
    } else if (span < n_files(1)) {
      n_layers = 1;
    } else if ((span - kGlobalTensors) % kSlotsPerLayer != 0) {
      const std::size_t lo = (span - kGlobalTensors) / kSlotsPerLayer;
      const std::size_t hi = lo + 1;
      std::vector<std::size_t> extra, missing;
      for (std::size_t i : found) {
        if (i >= n_files(lo)) extra.push_back(i);
      }
      for (std::size_t i = span; i < n_files(hi); ++i) missing.push_back(i);
      std::string msg = dir + " has tensor files up to " + file_name(span - 1) +
                        ", but a Grok-1 checkpoint has 2 + 12 * n_layers files: either " +
                        list(extra) + (extra.size() == 1 ? " is" : " are") + " extra (" +
                        std::to_string(lo) + " layers, " + std::to_string(n_files(lo)) +
                        " files) or " + list(missing) + (missing.size() == 1 ? " is" : " are") +
                        " missing (" + std::to_string(hi) + " layers, " +
                        std::to_string(n_files(hi)) + " files)";
      throw FormatError(msg);
    } else {
      n_layers = (span - kGlobalTensors) / kSlotsPerLayer;
    }
    const std::size_t want = n_files(n_layers);
    const std::vector<std::size_t> missing = missing_below(want);
    if (!missing.empty()) {
      throw FormatError(dir + " is missing " + list(missing) + " (a checkpoint with " +
                        std::to_string(n_layers) + " layers has " + std::to_string(want) +
                        " files, " + file_name(0) + " .. " + file_name(want - 1) + ")");
    }
    std::vector<std::size_t> extra;
    for (std::size_t i : found) {
      if (i >= want) extra.push_back(i);
    }
    if (!extra.empty()) {
      throw FormatError(dir + " has unexpected extra " + list(extra) + " (a checkpoint with " +
                        std::to_string(n_layers) + " layers has " + std::to_string(want) +
                        " files, " + file_name(0) + " .. " + file_name(want - 1) + ")");
    }
    return want;
  }

  /// The hyperparameters from the tensor shapes, then config.json.
  static Config infer(const detail::CheckpointState& s,
                      const std::optional<detail::JsonConfig>& json) {
    const TensorFile& emb = s.files[kEmbeddingIndex];
    if (emb.quantized || emb.weight.dtype != io::DType::kF32 || emb.weight.ndim() != 2) {
      throw ShapeError("[grok1] " + emb.where() + " is " + describe(emb) +
                       ", expected a float32 [vocab, d_model] array");
    }
    const std::size_t n_layers = (s.files.size() - kGlobalTensors) / kSlotsPerLayer;
    auto layer0 = [&](Slot slot, std::size_t ndim) -> const io::Array& {
      const TensorFile& f = s.files[file_index(0, slot, n_layers)];
      if (!f.quantized || f.weight.ndim() != ndim) {
        throw ShapeError("[grok1] " + f.where() + " is " + describe(f) + ", expected a " +
                         std::to_string(ndim) + "-D QuantizedWeight8bit");
      }
      return f.weight;
    };
    const io::Array& gate = layer0(Slot::kExpertGate, 3);
    const io::Array& query = layer0(Slot::kQuery, 2);
    const io::Array& key = layer0(Slot::kKey, 2);

    Config c;  // non-shape defaults: the released model's (grok1_config.hpp)
    c.vocab_size = emb.weight.shape[0];
    c.d_model = emb.weight.shape[1];
    c.n_layers = n_layers;
    c.n_experts = gate.shape[0];
    c.d_ff = gate.shape[2];
    const std::size_t q_width = query.shape[1], kv_width = key.shape[1];
    const std::string src = json ? "'" + s.config_json.string() + "'" : "config.json";

    std::size_t hd = 128;  // Grok-1's key_size
    if (json && json->head_dim) {
      hd = *json->head_dim;
    } else if (json && json->n_q_heads && *json->n_q_heads != 0 &&
               q_width % *json->n_q_heads == 0) {
      hd = q_width / *json->n_q_heads;
    }
    if (q_width % hd != 0 || kv_width % hd != 0) {
      throw ConfigError("[grok1] cannot infer the attention heads: the query width " +
                        std::to_string(q_width) + " and key width " + std::to_string(kv_width) +
                        " (" + s.files[file_index(0, Slot::kQuery, n_layers)].path.string() +
                        ") are not multiples of head_dim " + std::to_string(hd) +
                        "; set \"head_dim\" in " + src);
    }
    c.head_dim = hd;
    c.n_q_heads = q_width / hd;
    c.n_kv_heads = kv_width / hd;
    // The release's constants are sqrt(6144) and 1/sqrt(128) as written in run.py.
    c.embedding_multiplier =
        c.d_model == 6144 ? 78.38367176906169 : std::sqrt(static_cast<double>(c.d_model));
    c.attn_logit_multiplier =
        hd == 128 ? 0.08838834764831845 : 1.0 / std::sqrt(static_cast<double>(hd));
    c.top_k = std::min<std::size_t>(2, c.n_experts);

    if (json) {
      const detail::JsonConfig& j = *json;
      auto agree = [&](const char* key_name, const std::optional<std::size_t>& v,
                       std::size_t have) {
        if (v && *v != have) {
          throw ConfigError("[grok1] " + src + " says " + key_name + " = " + std::to_string(*v) +
                            " but the checkpoint's tensors have " + key_name + " = " +
                            std::to_string(have));
        }
      };
      agree("vocab_size", j.vocab_size, c.vocab_size);
      agree("d_model", j.d_model, c.d_model);
      agree("n_layers", j.n_layers, c.n_layers);
      agree("n_q_heads", j.n_q_heads, c.n_q_heads);
      agree("n_kv_heads", j.n_kv_heads, c.n_kv_heads);
      agree("n_experts", j.n_experts, c.n_experts);
      agree("d_ff", j.d_ff, c.d_ff);
      if (j.top_k) c.top_k = *j.top_k;
      if (j.max_seq_len) c.max_seq_len = *j.max_seq_len;
      if (j.rope_base) c.rope_base = *j.rope_base;
      if (j.rms_eps) c.rms_eps = *j.rms_eps;
      if (j.embedding_multiplier) c.embedding_multiplier = *j.embedding_multiplier;
      if (j.output_multiplier) c.output_multiplier = *j.output_multiplier;
      if (j.attn_logit_multiplier) c.attn_logit_multiplier = *j.attn_logit_multiplier;
      if (j.attn_softcap) c.attn_softcap = *j.attn_softcap;
      if (j.pad_id) c.pad_id = *j.pad_id;
      if (j.bos_id) c.bos_id = *j.bos_id;
      if (j.eos_id) c.eos_id = *j.eos_id;
    }
    // Vocabularies smaller than the release's special ids (tiny test models): keep validate()
    // meaningful instead of failing on an id nobody set.
    if (!(json && json->eos_id) && static_cast<std::size_t>(c.eos_id) >= c.vocab_size) c.eos_id = 0;
    try {
      c.validate();
    } catch (const ConfigError& e) {
      throw ConfigError(std::string(e.what()) + " (config inferred from '" + s.tensor_dir.string() +
                        "'" + (json ? " and " + src : "") + ")");
    }
    return c;
  }

  static std::string describe(const TensorFile& f) {
    if (f.quantized) {
      return "a QuantizedWeight8bit with weight " + f.weight.describe() + " and scales " +
             f.scales.describe();
    }
    return "a plain " + f.weight.describe() + " array";
  }

  static void expect_f32(const TensorFile& f, std::initializer_list<std::size_t> shape) {
    if (f.quantized) {
      throw ShapeError("[grok1] " + f.where() + " is " + describe(f) +
                       ", expected a plain float32 " + shape_str(shape) + " array");
    }
    if (f.weight.dtype != io::DType::kF32) {
      throw ShapeError("[grok1] " + f.where() + " has dtype " + detail::dtype_of(f.weight) +
                       ", expected float32");
    }
    if (f.weight.shape != std::vector<std::size_t>(shape)) {
      throw ShapeError("[grok1] " + f.where() + " has shape " + shape_str(f.weight.shape) +
                       ", expected " + shape_str(shape));
    }
  }

  static void expect_quantized(const TensorFile& f, std::initializer_list<std::size_t> shape) {
    const std::vector<std::size_t> want(shape);
    if (!f.quantized) {
      throw ShapeError("[grok1] " + f.where() + " is " + describe(f) +
                       ", expected a QuantizedWeight8bit (int8 weight " + shape_str(want) +
                       " + bf16 scales)");
    }
    if (f.weight.dtype != io::DType::kI8) {
      throw ShapeError("[grok1] " + f.where() + ": weight has dtype " + detail::dtype_of(f.weight) +
                       ", expected int8");
    }
    if (f.scales.dtype != io::DType::kBF16) {
      throw ShapeError("[grok1] " + f.where() + ": scales have dtype " +
                       detail::dtype_of(f.scales) + ", expected bfloat16");
    }
    if (f.weight.shape != want) {
      throw ShapeError("[grok1] " + f.where() + ": weight has shape " + shape_str(f.weight.shape) +
                       ", expected " + shape_str(want));
    }
    // scales [..., blocks, out] with blocks dividing `in` (1 or 8 in the release)
    const std::size_t r = want.size();
    const std::vector<std::size_t>& ss = f.scales.shape;
    bool ok = ss.size() == r && ss[r - 1] == want[r - 1] && ss[r - 2] >= 1 &&
              want[r - 2] % ss[r - 2] == 0;
    for (std::size_t k = 0; ok && k + 2 < r; ++k) ok = ss[k] == want[k];
    if (!ok) {
      std::vector<std::size_t> like = want;
      like[r - 2] = 1;
      throw ShapeError("[grok1] " + f.where() + ": scales have shape " + shape_str(ss) +
                       ", expected " + shape_str(like) + " with the 1 replaced by a divisor of " +
                       std::to_string(want[r - 2]) + " (the number of row blocks, 1 or 8)");
    }
  }

  std::unique_ptr<detail::CheckpointState> s_;
};

}  // namespace moe::grok1
