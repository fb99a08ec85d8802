// moe/models/grok1_checkpoint.hpp: xAI's original Grok-1 release, opened in place (zero-copy).
//
//   moe::grok1::Checkpoint ck = moe::grok1::Checkpoint::open("grok-1", {.progress = print});
//   const moe::grok1::Config& c = ck.config();           // inferred from the tensor shapes
//   moe::Int8Weight wq = ck.attention(0, Slot::kQuery);   // views into the mapped files
//   moe::WeightStack<moe::Int8Weight> up = ck.experts(0, Slot::kExpertUp);
//
// Layout (docs/checkpoint-format.md): DIR/ckpt-0/ (or DIR/ckpt/) holds tensor00000_000 ..
// tensorNNNNN_000, one pickle per parameter, in the order of grok1::FileIndex; what each file must
// hold comes from the table in grok1_tensors.hpp; an optional DIR/config.json sets what the shapes
// cannot tell (grok1_config_json.hpp).
//
// open() runs these steps, each a function below: locate the tensor directory, count the files
// (none missing or extra), map and parse every file (MappedFile, io::parse_pickle with the one
// class the release pickles, QuantizedWeight8bit), translate the config, validate every tensor's
// storage and shape against the table. Any problem throws a moe::Error naming the file and what
// was wrong. It reads only the pickle headers and tails: a few KB per file, so the 318 GB
// release validates in seconds. The payloads are read later, by the kernels, through the page
// cache (RSS stays far below the checkpoint size).
//
// Typed views and alignment. int8 weights and their bf16 scales are always zero-copy: in the
// release the scales start at an odd offset of every file (numpy's pickle header puts a payload
// at an arbitrary offset), and every reader of Int8Weight::scales (the int8 kernels, at(), the
// embedding's int8 rows) loads them at any byte address (load_bf16, unaligned SIMD loads). f32
// tensors are zero-copy when their payload happens to be aligned in the file (e.g. byte 151 for
// the embeddings is not), and a misaligned float* must not be dereferenced: the first call to a
// typed accessor copies such a payload into an owned, 64-byte-aligned buffer (thread-safe;
// copied_bytes() reports the total). stored_in_place(i) gives the payload where it is, at any
// byte alignment, for views that read unaligned data: bind_weights binds the embedding (an
// EmbeddingTable) that way, so for the 314B release only the ~6 MB of misaligned norms are
// copied, not the 3.2 GB embedding. raw(i) gives the unconverted io::Array (bytes, any
// alignment).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
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
#include <moe/io/mapped_file.hpp>
#include <moe/io/pickle.hpp>
#include <moe/models/grok1_config.hpp>
#include <moe/models/grok1_config_json.hpp>
#include <moe/models/grok1_tensors.hpp>
#include <moe/models/tensor_table.hpp>
#include <moe/ops/weights.hpp>

namespace moe::grok1 {

/// The one class the release pickles: xai-org/grok-1 checkpoint.py's QuantizedWeight8bit, a
/// dataclass {weight: int8 ndarray, scales: bf16 ndarray}. checkpoint.py installs it into
/// __main__ before unpickling, so any module name is accepted.
inline constexpr std::string_view kQuantizedWeightAttributes[] = {"weight", "scales"};
inline constexpr io::PickleClass kPickleClasses[] = {
    {"", "QuantizedWeight8bit", kQuantizedWeightAttributes}};

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
  /// "a plain float32 [6144] array" / "a QuantizedWeight8bit with weight ... and scales ...".
  [[nodiscard]] std::string describe() const {
    if (quantized) {
      return "a QuantizedWeight8bit with weight " + weight.describe() + " and scales " +
             scales.describe();
    }
    return "a plain " + weight.describe() + " array";
  }
};

namespace detail {

struct CheckpointState {
  std::filesystem::path root;         ///< the directory given to open()
  std::filesystem::path tensor_dir;   ///< root/ckpt-0 or root/ckpt
  std::filesystem::path config_json;  ///< empty when none was read
  Config config;
  std::optional<FileIndex> index;
  std::vector<TensorFile> files;
  // Aligned copies of misaligned payloads, made on first access (see the header comment).
  mutable std::mutex mutex;
  mutable std::vector<Buffer<float>> f32_copies;
  mutable std::size_t copied = 0;
};

/// Maps and parses one file of the release.
inline void load_tensor_file(TensorFile& f, io::Advice after) {
  f.map = io::MappedFile(f.path);
  f.map.advise(io::Advice::kRandom);  // touch only the pages the parser needs
  io::PickledObject obj = io::parse_pickle(f.map.bytes(), f.path.string(), kPickleClasses);
  if (auto* q = std::get_if<io::PickledInstance>(&obj)) {
    f.quantized = true;
    f.weight = std::move(q->attributes[0]);
    f.scales = std::move(q->attributes[1]);
  } else {
    f.weight = std::move(std::get<io::Array>(obj));
  }
  f.map.advise(after);
}

/// Throws ShapeError unless file `f` stores a tensor as `storage` with shape `want`.
inline void expect_stored(const TensorFile& f, models::Storage storage,
                          const models::Shape& want_shape) {
  const std::vector<std::size_t> want = want_shape.vector();
  const std::string where = "[grok1] " + f.where();
  if (storage == models::Storage::kF32) {
    if (f.quantized) {
      throw ShapeError(where + " is " + f.describe() + ", expected a plain float32 " +
                       shape_str(want) + " array");
    }
    if (f.weight.dtype != io::DType::kF32) {
      throw ShapeError(where + " has dtype " + std::string(io::dtype_name(f.weight.dtype)) +
                       ", expected float32");
    }
    if (f.weight.shape != want) {
      throw ShapeError(where + " has shape " + shape_str(f.weight.shape) + ", expected " +
                       shape_str(want));
    }
    return;
  }
  if (!f.quantized) {
    throw ShapeError(where + " is " + f.describe() +
                     ", expected a QuantizedWeight8bit (int8 weight " + shape_str(want) +
                     " + bf16 scales)");
  }
  if (f.weight.dtype != io::DType::kI8) {
    throw ShapeError(where + ": weight has dtype " + std::string(io::dtype_name(f.weight.dtype)) +
                     ", expected int8");
  }
  if (f.scales.dtype != io::DType::kBF16) {
    throw ShapeError(where + ": scales have dtype " + std::string(io::dtype_name(f.scales.dtype)) +
                     ", expected bfloat16");
  }
  if (f.weight.shape != want) {
    throw ShapeError(where + ": weight has shape " + shape_str(f.weight.shape) + ", expected " +
                     shape_str(want));
  }
  // scales [..., blocks, out] with blocks dividing `in` (1 or 8 in the release)
  const std::size_t r = want.size();
  const std::vector<std::size_t>& ss = f.scales.shape;
  bool ok =
      ss.size() == r && ss[r - 1] == want[r - 1] && ss[r - 2] >= 1 && want[r - 2] % ss[r - 2] == 0;
  for (std::size_t k = 0; ok && k + 2 < r; ++k) ok = ss[k] == want[k];
  if (!ok) {
    std::vector<std::size_t> like = want;
    like[r - 2] = 1;
    throw ShapeError(where + ": scales have shape " + shape_str(ss) + ", expected " +
                     shape_str(like) + " with the 1 replaced by a divisor of " +
                     std::to_string(want[r - 2]) + " (the number of row blocks, 1 or 8)");
  }
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
    const std::optional<JsonConfig> json = read_config(s, options);
    std::optional<std::size_t> want_layers;
    if (options.config) want_layers = options.config->n_layers;
    if (json && json->n_layers) want_layers = json->n_layers;
    load_files(s, count_files(s, want_layers), options);
    s.config = options.config ? *options.config : infer(s, json);
    s.config.validate();
    ck.validate(s.config);
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
  /// The file order of this checkpoint.
  [[nodiscard]] const FileIndex& index() const { return *state().index; }
  /// File index of a layer's slot.
  [[nodiscard]] std::size_t index_of(std::size_t layer, Slot slot) const {
    check_layer(layer);
    return index().of(layer, slot);
  }
  /// Total size of the tensor files in bytes.
  [[nodiscard]] std::uint64_t file_bytes() const {
    std::uint64_t n = 0;
    for (const TensorFile& f : state().files) n += f.map.size();
    return n;
  }
  /// Bytes copied so far into aligned buffers (misaligned f32 tensors).
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

  /// File `index` as a tensor with aligned data (copying a misaligned f32 payload on first use;
  /// bf16 scales stay in place at any byte address), ready for models::bind.
  [[nodiscard]] models::StoredTensor stored(std::size_t index) const {
    const TensorFile& f = file(index);
    models::StoredTensor t;
    t.where = f.where();
    t.shape = f.weight.shape;
    if (f.quantized) {
      t.storage = models::Storage::kInt8Scaled;
      t.data = f.weight.data;
      t.scales = reinterpret_cast<const bf16*>(f.scales.data);  // any byte address: see above
      t.blocks = f.scales.shape.size() >= 2 ? f.scales.shape[f.scales.shape.size() - 2] : 1;
    } else {
      if (f.weight.dtype != io::DType::kF32) {
        throw ShapeError("[grok1] " + f.where() + " has dtype " +
                         std::string(io::dtype_name(f.weight.dtype)) + ", expected float32");
      }
      t.storage = models::Storage::kF32;
      t.data = aligned_f32(f);
    }
    return t;
  }
  /// File `index` as a tensor read in place, its data at any byte alignment (`aligned` says
  /// which): for an EmbeddingTable, which reads unaligned rows. No copy is made.
  [[nodiscard]] models::StoredTensor stored_in_place(std::size_t index) const {
    const TensorFile& f = file(index);
    if (f.quantized || f.weight.dtype != io::DType::kF32) return stored(index);
    models::StoredTensor t;
    t.where = f.where();
    t.shape = f.weight.shape;
    t.storage = models::Storage::kF32;
    t.data = f.weight.data;
    t.aligned = f.weight.aligned();
    return t;
  }
  /// File `index` bound to a view type (MatrixView<const float>, std::span<const float>,
  /// F32Weight, Int8Weight, WeightStack<Int8Weight>); ShapeError if the file holds another kind.
  template <class View>
  [[nodiscard]] View view(std::size_t index) const {
    View v{};
    models::bind(v, stored(index));
    return v;
  }

  /// f32 tensor of file `index` (embeddings, norms, routers): numel() floats, C order.
  [[nodiscard]] std::span<const float> f32(std::size_t index) const {
    return view<std::span<const float>>(index);
  }
  /// A 2-D quantized tensor of file `index` as Int8Weight.
  [[nodiscard]] Int8Weight int8(std::size_t index) const { return view<Int8Weight>(index); }
  /// A 3-D quantized tensor of file `index` ([E, in, out]) as WeightStack<Int8Weight>.
  [[nodiscard]] WeightStack<Int8Weight> int8_stack(std::size_t index) const {
    return view<WeightStack<Int8Weight>>(index);
  }
  /// language_model/in_out_embed/embeddings [vocab, D] (row = token).
  [[nodiscard]] MatrixView<const float> embedding() const {
    return view<MatrixView<const float>>(index().of_global(0));
  }
  /// language_model/rms_norm/scale [D].
  [[nodiscard]] std::span<const float> final_norm() const { return f32(index().of_global(1)); }
  /// One of the four RMSNorm scales of a layer [D].
  [[nodiscard]] std::span<const float> norm(std::size_t layer, Slot slot) const {
    expect_slot("norm", slot, models::Storage::kF32, 1);
    return f32(index_of(layer, slot));
  }
  /// router/w [D, E] f32, [in, out].
  [[nodiscard]] F32Weight router(std::size_t layer) const {
    return view<F32Weight>(index_of(layer, Slot::kRouter));
  }
  /// An attention projection (kQuery, kKey, kValue, kAttnOut): int8 [in, out] + scales.
  [[nodiscard]] Int8Weight attention(std::size_t layer, Slot slot) const {
    expect_slot("attention", slot, models::Storage::kInt8Scaled, 2);
    return int8(index_of(layer, slot));
  }
  /// An expert stack (kExpertGate, kExpertUp, kExpertDown): E x int8 [in, out] + scales.
  [[nodiscard]] WeightStack<Int8Weight> experts(std::size_t layer, Slot slot) const {
    expect_slot("experts", slot, models::Storage::kInt8Scaled, 3);
    return int8_stack(index_of(layer, slot));
  }

  // ---- memory hints ----

  /// madvise on one file (e.g. kWillNeed to prefetch, kDontNeed to drop it from this process).
  void advise(std::size_t index, io::Advice a) const { file(index).map.advise(a); }
  /// madvise on the 12 files of a layer.
  void advise_layer(std::size_t layer, io::Advice a) const {
    for (std::size_t k = 0; k < kSlotsPerLayer; ++k) {
      advise(index_of(layer, static_cast<Slot>(k)), a);
    }
  }

  /// Checks every tensor's storage, dtype and shape against the table for `c`; throws
  /// ShapeError naming the file.
  void validate(const Config& c) const {
    const detail::CheckpointState& s = state();
    if (s.files.size() != n_files(c.n_layers)) {
      throw ShapeError("[grok1] '" + s.tensor_dir.string() + "' has " +
                       std::to_string(s.files.size()) + " tensor files, a config with " +
                       std::to_string(c.n_layers) + " layers needs " +
                       std::to_string(n_files(c.n_layers)));
    }
    for (const TensorFile& f : s.files) {
      const TensorRef& r = index().at(f.index);
      detail::expect_stored(f, r.storage(), r.shape(c));
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
  /// Accessor misuse (a slot of another kind) is a ConfigError naming the accessor and the slot.
  static void expect_slot(const char* accessor, Slot slot, models::Storage storage,
                          std::size_t rank) {
    const LayerSpec<Int8Weight>& spec = layer_spec(slot);
    if (spec.storage != storage || spec.shape(Config{}).rank != rank) {
      throw ConfigError("[grok1] " + std::string(accessor) + "(): slot '" +
                        std::string(slot_path(slot)) + "' is not of that kind");
    }
  }

  const float* aligned_f32(const TensorFile& f) const {
    return aligned_view<float>(f, f.weight, state().f32_copies[f.index]);
  }
  // The array's data as T*: in place when the file offset is aligned for T, else a one-time copy
  // into `copy` (made on first use). The copy goes in 64 MiB chunks, each chunk's file pages
  // unmapped from this process right after (they stay in the page cache until the kernel needs
  // the memory), so a 3.2 GB embedding is never resident twice, not even while it is copied.
  template <class T>
  const T* aligned_view(const TensorFile& f, const io::Array& a, Buffer<T>& copy) const {
    if (a.aligned()) return reinterpret_cast<const T*>(a.data);
    const detail::CheckpointState& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (copy.empty() && a.numel() > 0) {
      copy = Buffer<T>(a.numel());
      constexpr std::size_t kChunk = std::size_t{64} << 20;
      auto* dst = reinterpret_cast<std::byte*>(copy.data());
      for (std::size_t done = 0; done < a.nbytes; done += kChunk) {
        const std::size_t n = std::min(kChunk, a.nbytes - done);
        std::memcpy(dst + done, a.data + done, n);
        f.map.advise(io::Advice::kDontNeed, a.offset + done, n);
      }
      s.copied += a.nbytes;
    }
    return copy.data();
  }

  // ---- open() steps ----

  static std::optional<JsonConfig> read_config(detail::CheckpointState& s,
                                               const OpenOptions& options) {
    if (options.config || !options.read_config_json) return std::nullopt;
    const std::filesystem::path p = s.root / "config.json";
    std::error_code ec;
    if (!std::filesystem::is_regular_file(p, ec)) return std::nullopt;
    JsonConfig json = read_json_config(p);
    s.config_json = p;
    return json;
  }

  static void load_files(detail::CheckpointState& s, std::size_t n, const OpenOptions& options) {
    s.index.emplace((n - kGlobalTensors) / kSlotsPerLayer);
    s.files.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      TensorFile& f = s.files[i];
      f.index = i;
      f.name = s.index->at(i).name();
      f.path = s.tensor_dir / file_name(i);
      detail::load_tensor_file(f, options.advice_after_open);
      if (options.progress) options.progress(i + 1, n, f.path);
    }
    s.f32_copies.resize(n);
  }

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

  /// The hyperparameters: the shapes of the embedding and of layer 0's expert gate, query and
  /// key, translated with config.json (grok1_config_json.hpp).
  static Config infer(const detail::CheckpointState& s, const std::optional<JsonConfig>& json) {
    const TensorFile& emb = s.files[s.index->of_global(0)];
    if (emb.quantized || emb.weight.dtype != io::DType::kF32 || emb.weight.ndim() != 2) {
      throw ShapeError("[grok1] " + emb.where() + " is " + emb.describe() +
                       ", expected a float32 [vocab, d_model] array");
    }
    auto layer0 = [&](Slot slot) -> const io::Array& {
      const TensorFile& f = s.files[s.index->of(0, slot)];
      const std::size_t ndim = layer_spec(slot).shape(Config{}).rank;
      if (!f.quantized || f.weight.ndim() != ndim) {
        throw ShapeError("[grok1] " + f.where() + " is " + f.describe() + ", expected a " +
                         std::to_string(ndim) + "-D QuantizedWeight8bit");
      }
      return f.weight;
    };
    const io::Array& gate = layer0(Slot::kExpertGate);
    ShapeFacts facts;
    facts.vocab_size = emb.weight.shape[0];
    facts.d_model = emb.weight.shape[1];
    facts.n_layers = s.index->n_layers();
    facts.n_experts = gate.shape[0];
    facts.d_ff = gate.shape[2];
    facts.q_width = layer0(Slot::kQuery).shape[1];
    facts.kv_width = layer0(Slot::kKey).shape[1];
    const std::string json_name = json ? "'" + s.config_json.string() + "'" : "config.json";
    return translate_config(facts, json, json_name, "'" + s.tensor_dir.string() + "'");
  }

  std::unique_ptr<detail::CheckpointState> s_;
};

}  // namespace moe::grok1
