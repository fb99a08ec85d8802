// moe/io/safetensors.hpp: a zero-copy reader of safetensors files and sharded checkpoints.
//
//   moe::io::safetensors::Checkpoint ckpt("DIR");  // DIR/model.safetensors.index.json + shards,
//                                                  // DIR/model.safetensors, or one .safetensors
//                                                  file
//   moe::io::safetensors::Tensor t = ckpt.tensor("model.norm.weight");
//   t.dtype, t.shape, t.data, t.nbytes, t.file          // a view into the mapped file
//   std::span<const moe::bf16> v = t.values<moe::bf16>();  // typed (checks dtype and alignment)
//
// The format (huggingface/safetensors, README "Format"): an unsigned little-endian 64-bit header
// length N, N bytes of UTF-8 JSON, then the data section. The header is an object mapping each
// tensor name to {"dtype": "BF16", "shape": [4096, 14336], "data_offsets": [begin, end]}, with
// offsets relative to the data section; an optional "__metadata__" member maps strings to
// strings. Tensors are C-order and little-endian. A sharded checkpoint (Hugging Face
// transformers' save_pretrained) adds model.safetensors.index.json: {"metadata": {...},
// "weight_map": {"tensor name": "model-00001-of-00019.safetensors", ...}}.
//
// Guarantees, all checked when a file is opened (nothing of the data section is read):
//   * 8 + N <= file size, N <= Limits::max_header_bytes, the header is one strict JSON object
//     (io/json.hpp) starting with '{' (trailing spaces, the writers' padding, are fine), with at
//     most Limits::max_tensors members (a linear pre-scan bounds the JSON parser's work);
//   * every member but __metadata__ has exactly the keys dtype, shape and data_offsets; dtype is
//     a safetensors dtype name; shape is at most Limits::max_ndim non-negative integers;
//     data_offsets is [begin, end] with begin <= end;
//   * prod(shape) * dtype size == end - begin, computed without overflow;
//   * the tensors tile the data section exactly, as the reference implementation requires:
//     sorted by offset, no overlap, no gap, the last one ends at the end of the file;
//   * __metadata__, when present, is an object of strings.
// Each violation throws FormatError "[safetensors] 'path': ..." naming the tensor; OS failures
// throw IoError. moe reads the dtypes F32, F16, BF16 and I8; a tensor of another dtype is listed
// (entries()) but tensor() throws FormatError naming it. For a sharded checkpoint, the index and
// the shards must agree exactly: a tensor listed for a shard that lacks it, a tensor in a shard
// that the index does not list for that shard, and a shard name that is not a plain file name
// are FormatErrors naming the tensor, the shard and the index.
//
// Views stay valid while the File / Checkpoint lives. Pages are read on first touch; see
// io::MappedFile for read-ahead hints (File::mapped().advise(...)).
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <moe/core/bf16.hpp>
#include <moe/core/error.hpp>
#include <moe/io/json.hpp>
#include <moe/io/mapped_file.hpp>

namespace moe::io::safetensors {

static_assert(std::endian::native == std::endian::little,
              "moe's zero-copy readers expose little-endian file data directly");

/// The element types of the safetensors format that have a whole number of bytes.
enum class DType : std::uint8_t {
  kBool,
  kU8,
  kI8,
  kF8E5M2,
  kF8E4M3,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kI64,
  kU64,
  kF64,
};

/// The name safetensors writes ("BF16", "F32", ...).
inline constexpr std::string_view dtype_name(DType t) noexcept {
  constexpr std::string_view kNames[] = {"BOOL", "U8",  "I8",  "F8_E5M2", "F8_E4M3",
                                         "I16",  "U16", "F16", "BF16",    "I32",
                                         "U32",  "F32", "I64", "U64",     "F64"};
  return kNames[static_cast<std::size_t>(t)];
}

/// Bytes per element.
inline constexpr std::size_t dtype_size(DType t) noexcept {
  switch (t) {
    case DType::kBool:
    case DType::kU8:
    case DType::kI8:
    case DType::kF8E5M2:
    case DType::kF8E4M3:
      return 1;
    case DType::kI16:
    case DType::kU16:
    case DType::kF16:
    case DType::kBF16:
      return 2;
    case DType::kI32:
    case DType::kU32:
    case DType::kF32:
      return 4;
    case DType::kI64:
    case DType::kU64:
    case DType::kF64:
      return 8;
  }
  return 0;
}

/// True for the dtypes moe computes with: F32, F16, BF16, I8.
inline constexpr bool supported(DType t) noexcept {
  return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16 || t == DType::kI8;
}

/// IEEE-754 binary16 storage (safetensors "F16"); widening to float is exact.
struct f16 {
  std::uint16_t bits;

  [[nodiscard]] float to_float() const noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
    const std::uint32_t exp = (bits >> 10) & 0x1Fu;
    const std::uint32_t man = bits & 0x3FFu;
    if (exp == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (man << 13));  // inf, NaN
    if (exp != 0) return std::bit_cast<float>(sign | ((exp + 112) << 23) | (man << 13));
    const float sub = static_cast<float>(man) * 0x1p-24f;  // zero or subnormal: exact
    return sign != 0 ? -sub : sub;
  }
};
static_assert(sizeof(f16) == 2);

/// The C++ element type of a supported dtype.
template <class T>
inline constexpr bool is_element_v = std::is_same_v<T, float> || std::is_same_v<T, moe::bf16> ||
                                     std::is_same_v<T, f16> || std::is_same_v<T, std::int8_t>;

template <class T>
inline constexpr DType dtype_of() noexcept {
  static_assert(is_element_v<T>, "safetensors elements are float, moe::bf16, f16 or int8_t");
  if constexpr (std::is_same_v<T, float>) return DType::kF32;
  if constexpr (std::is_same_v<T, moe::bf16>) return DType::kBF16;
  if constexpr (std::is_same_v<T, f16>) return DType::kF16;
  return DType::kI8;
}

/// Parser guards against hostile headers.
struct Limits {
  std::size_t max_header_bytes = 100'000'000;  ///< the reference implementation's limit
  std::size_t max_ndim = 32;                   ///< tensor rank
  std::size_t max_tensors = 1 << 17;           ///< members of any JSON object in the header
};

/// One header entry, as validated. Offsets are absolute (from the start of the file).
struct Entry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<std::size_t> shape;
  std::size_t begin = 0;  ///< first byte in the file (8 + N + data_offsets[0])
  std::size_t end = 0;    ///< one past the last byte

  [[nodiscard]] std::size_t nbytes() const noexcept { return end - begin; }
  [[nodiscard]] std::size_t numel() const noexcept {
    std::size_t n = 1;
    for (std::size_t d : shape) n *= d;  // cannot overflow: checked by the parser
    return n;
  }
  /// "BF16 [4096, 14336]"
  [[nodiscard]] std::string describe() const {
    return std::string(dtype_name(dtype)) + " " + shape_str(shape);
  }
};

/// A validated header: entries sorted by offset, the metadata in file order.
struct Header {
  std::vector<Entry> entries;
  std::vector<std::pair<std::string, std::string>> metadata;
  std::size_t data_begin = 0;  ///< 8 + N
};

/// A zero-copy view of one tensor of a supported dtype.
struct Tensor {
  const Entry* entry = nullptr;
  const std::string* file = nullptr;  ///< path of the file holding it
  const std::byte* data = nullptr;    ///< first byte, inside the mapping
  DType dtype = DType::kF32;
  std::span<const std::size_t> shape;
  std::size_t nbytes = 0;

  [[nodiscard]] const std::string& name() const noexcept { return entry->name; }
  [[nodiscard]] std::size_t ndim() const noexcept { return shape.size(); }
  [[nodiscard]] std::size_t numel() const noexcept { return entry->numel(); }
  /// True when `data` is aligned for the element type (always so for files written with the
  /// reference writer, which pads the header to 8 bytes and orders tensors by dtype size).
  [[nodiscard]] bool aligned() const noexcept {
    return reinterpret_cast<std::uintptr_t>(data) % dtype_size(dtype) == 0;
  }
  [[nodiscard]] std::string describe() const { return entry->describe(); }

  /// The elements as T. Throws ShapeError when T is not the tensor's dtype and FormatError when
  /// the data is not aligned for T (then read the bytes: data, nbytes).
  template <class T>
  [[nodiscard]] std::span<const T> values() const {
    if (dtype_of<T>() != dtype) {
      throw ShapeError("[safetensors] tensor '" + name() + "' in '" + *file + "' has dtype " +
                       std::string(dtype_name(dtype)) + ", read as " +
                       std::string(dtype_name(dtype_of<T>())));
    }
    if (!aligned()) {
      throw FormatError("[safetensors] '" + *file + "': tensor '" + name() +
                        "' starts at file offset " + std::to_string(entry->begin) +
                        ", not aligned for " + std::to_string(dtype_size(dtype)) +
                        "-byte elements");
    }
    return {reinterpret_cast<const T*>(data), numel()};
  }
};

namespace detail {

[[noreturn]] inline void bad(std::string_view file, const std::string& msg) {
  throw FormatError("[safetensors] '" + std::string(file) + "': " + msg);
}

inline bool parse_dtype(std::string_view s, DType& out) noexcept {
  for (std::uint8_t i = 0; i <= static_cast<std::uint8_t>(DType::kF64); ++i) {
    if (dtype_name(static_cast<DType>(i)) == s) {
      out = static_cast<DType>(i);
      return true;
    }
  }
  return false;
}

inline std::uint64_t read_u64_le(const std::byte* p) noexcept {
  std::uint64_t v = 0;
  std::memcpy(&v, p, 8);
  return v;
}

/// A non-negative JSON integer that fits in size_t, or an error naming `what`.
inline std::size_t json_size(const JsonValue& v, std::string_view file, const std::string& what) {
  if (!v.is_integer() || v.as_int64() < 0) {
    bad(file, what + " must be a non-negative integer, got " + v.describe());
  }
  const auto u = static_cast<std::uint64_t>(v.as_int64());
  if (u > static_cast<std::uint64_t>(SIZE_MAX)) bad(file, what + " is too large");
  return static_cast<std::size_t>(u);
}

/// Bounds the JSON parser's work and memory before it runs, in one pass over the text
/// (io/json.hpp builds a node per value, so a 100 MB header of tiny values would take gigabytes).
/// Allowed: at most max_tensors + 1 members in any object, max(max_ndim, 64) elements in any
/// array, 16 values per allowed tensor in all.
inline void check_header_shape(std::string_view text, std::string_view file, const Limits& limits) {
  struct Open {
    bool object;
    std::size_t items;
  };
  std::vector<Open> stack;
  const std::size_t max_members = limits.max_tensors + 1;
  const std::size_t max_elements = std::max<std::size_t>(limits.max_ndim, 64);
  const std::size_t max_values = 16 * max_members;
  std::size_t values = 1;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char ch = text[i];
    if (ch == '"') {  // skip the string, escapes included
      for (++i; i < text.size() && text[i] != '"'; ++i) i += text[i] == '\\' ? 1 : 0;
      continue;
    }
    if (ch == '{' || ch == '[') {
      if (stack.size() >= static_cast<std::size_t>(JsonParser::kMaxDepth)) {
        bad(file, "the header nests deeper than " + std::to_string(JsonParser::kMaxDepth));
      }
      stack.push_back({ch == '{', 1});
    } else if ((ch == '}' || ch == ']') && !stack.empty()) {
      stack.pop_back();
    } else if (ch == ',' && !stack.empty()) {
      Open& top = stack.back();
      if (++top.items > (top.object ? max_members : max_elements)) {
        bad(file, top.object ? "the header has an object of more than " +
                                   std::to_string(max_members) + " members (Limits::max_tensors)"
                             : "the header has an array of more than " +
                                   std::to_string(max_elements) + " elements");
      }
      if (++values > max_values) {
        bad(file, "the header has more than " + std::to_string(max_values) + " JSON values");
      }
    }
  }
}

inline Entry parse_entry(const std::string& name, const JsonValue& v, std::size_t data_begin,
                         std::size_t data_size, std::string_view file, const Limits& limits) {
  const std::string who = "tensor '" + name + "'";
  if (name.empty()) bad(file, "a tensor has an empty name");
  if (!v.is_object()) bad(file, who + ": expected an object, got " + v.describe());
  const JsonValue* dtype = nullptr;
  const JsonValue* shape = nullptr;
  const JsonValue* offsets = nullptr;
  for (const auto& [key, value] : v.as_object()) {
    if (key == "dtype") {
      dtype = &value;
    } else if (key == "shape") {
      shape = &value;
    } else if (key == "data_offsets") {
      offsets = &value;
    } else {
      bad(file, who + ": unexpected key '" + key + "' (expected dtype, shape, data_offsets)");
    }
  }
  if (dtype == nullptr || shape == nullptr || offsets == nullptr) {
    bad(file, who + ": missing key '" +
                  std::string(dtype == nullptr   ? "dtype"
                              : shape == nullptr ? "shape"
                                                 : "data_offsets") +
                  "'");
  }
  Entry e;
  e.name = name;
  if (!dtype->is_string()) bad(file, who + ": dtype must be a string, got " + dtype->describe());
  if (!parse_dtype(dtype->as_string(), e.dtype)) {
    bad(file, who + ": unknown dtype '" + dtype->as_string() + "'");
  }
  if (!shape->is_array()) bad(file, who + ": shape must be an array, got " + shape->describe());
  if (shape->size() > limits.max_ndim) {
    bad(file, who + ": rank " + std::to_string(shape->size()) + " exceeds the limit of " +
                  std::to_string(limits.max_ndim));
  }
  std::size_t numel = 1;
  for (const JsonValue& d : shape->as_array()) {
    const std::size_t n = json_size(d, file, who + ": a shape entry");
    if (__builtin_mul_overflow(numel, n, &numel)) bad(file, who + ": shape overflows");
    e.shape.push_back(n);
  }
  std::size_t nbytes = 0;
  if (__builtin_mul_overflow(numel, dtype_size(e.dtype), &nbytes)) {
    bad(file, who + ": shape overflows");
  }
  if (!offsets->is_array() || offsets->size() != 2) {
    bad(file, who + ": data_offsets must be [begin, end], got " + offsets->describe());
  }
  const std::size_t begin = json_size(offsets->at(0), file, who + ": data_offsets[0]");
  const std::size_t end = json_size(offsets->at(1), file, who + ": data_offsets[1]");
  const std::string range = "[" + std::to_string(begin) + ", " + std::to_string(end) + "]";
  if (begin > end) bad(file, who + ": data_offsets " + range + " has begin > end");
  if (end > data_size) {
    bad(file, who + ": data_offsets " + range + " end past the data section (" +
                  std::to_string(data_size) + " bytes; the file is truncated or the header wrong)");
  }
  if (end - begin != nbytes) {
    bad(file, who + ": " + std::string(dtype_name(e.dtype)) + " " + shape_str(e.shape) + " needs " +
                  std::to_string(nbytes) + " bytes, data_offsets " + range + " hold " +
                  std::to_string(end - begin));
  }
  e.begin = data_begin + begin;
  e.end = data_begin + end;
  return e;
}

/// Sorted by offset, the tensors must cover the data section exactly.
inline void check_tiling(std::vector<Entry>& entries, std::size_t data_begin, std::size_t file_size,
                         std::string_view file) {
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::size_t at = data_begin;
  const Entry* prev = nullptr;
  for (const Entry& e : entries) {
    const std::string after =
        prev == nullptr ? "the start of the data section" : "tensor '" + prev->name + "'";
    if (e.begin < at) {
      bad(file, "tensor '" + e.name + "' (data_offsets [" + std::to_string(e.begin - data_begin) +
                    ", " + std::to_string(e.end - data_begin) + "]) overlaps " + after);
    }
    if (e.begin > at) {
      bad(file, "a gap of " + std::to_string(e.begin - at) + " bytes lies between " + after +
                    " and tensor '" + e.name + "'");
    }
    at = e.end;
    prev = &e;
  }
  if (at != file_size) {
    bad(file, std::to_string(file_size - at) + " bytes after " +
                  (prev == nullptr ? std::string("the header") : "tensor '" + prev->name + "'") +
                  " belong to no tensor");
  }
}

}  // namespace detail

/// Parses and validates the header of a whole safetensors file held in `bytes` (`file` names it
/// in messages). Reads only the first 8 + N bytes. Throws FormatError.
inline Header parse_header(std::span<const std::byte> bytes, std::string_view file,
                           const Limits& limits = {}) {
  if (bytes.size() < 8) {
    detail::bad(file, "file of " + std::to_string(bytes.size()) +
                          " bytes is too short for the 8-byte header length");
  }
  const std::uint64_t n = detail::read_u64_le(bytes.data());
  if (n > limits.max_header_bytes) {
    detail::bad(file, "header length " + std::to_string(n) + " exceeds the limit of " +
                          std::to_string(limits.max_header_bytes) + " bytes");
  }
  if (n > bytes.size() - 8) {
    detail::bad(file, "header length " + std::to_string(n) + " is past the end of the file (" +
                          std::to_string(bytes.size()) + " bytes)");
  }
  const std::string_view text(reinterpret_cast<const char*>(bytes.data() + 8),
                              static_cast<std::size_t>(n));
  if (text.empty() || text.front() != '{') {
    detail::bad(file, "the header does not start with '{'");
  }
  detail::check_header_shape(text, file, limits);
  JsonValue json;
  try {
    json = parse_json(text, "header");
  } catch (const FormatError& e) {
    detail::bad(file, "the header is not valid JSON: " + std::string(e.what()));
  }
  Header h;
  h.data_begin = 8 + static_cast<std::size_t>(n);
  const std::size_t data_size = bytes.size() - h.data_begin;
  for (const auto& [key, value] : json.as_object()) {
    if (key == "__metadata__") {
      if (!value.is_object()) detail::bad(file, "__metadata__ must be an object of strings");
      for (const auto& [k, v] : value.as_object()) {
        if (!v.is_string()) {
          detail::bad(file, "__metadata__ '" + k + "' must be a string, got " + v.describe());
        }
        h.metadata.emplace_back(k, v.as_string());
      }
      continue;
    }
    h.entries.push_back(detail::parse_entry(key, value, h.data_begin, data_size, file, limits));
  }
  detail::check_tiling(h.entries, h.data_begin, bytes.size(), file);
  return h;
}

/// One mapped, validated safetensors file.
class File {
 public:
  explicit File(const std::filesystem::path& path, const Limits& limits = {})
      : map_(path), header_(parse_header(map_.bytes(), map_.path(), limits)) {
    by_name_.reserve(header_.entries.size());
    for (std::size_t i = 0; i < header_.entries.size(); ++i) by_name_.push_back(i);
    std::sort(by_name_.begin(), by_name_.end(), [this](std::size_t a, std::size_t b) {
      return header_.entries[a].name < header_.entries[b].name;
    });
  }

  File(File&&) noexcept = default;
  File& operator=(File&&) noexcept = default;
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  [[nodiscard]] const std::string& path() const noexcept { return map_.path(); }
  [[nodiscard]] std::size_t size() const noexcept { return map_.size(); }
  [[nodiscard]] const MappedFile& mapped() const noexcept { return map_; }
  /// Every tensor, sorted by offset in the file.
  [[nodiscard]] std::span<const Entry> entries() const noexcept { return header_.entries; }
  [[nodiscard]] const std::vector<std::pair<std::string, std::string>>& metadata() const noexcept {
    return header_.metadata;
  }
  [[nodiscard]] std::size_t data_begin() const noexcept { return header_.data_begin; }

  /// The entry named `name`, or nullptr.
  [[nodiscard]] const Entry* find(std::string_view name) const noexcept {
    const auto it = std::lower_bound(
        by_name_.begin(), by_name_.end(), name,
        [this](std::size_t i, std::string_view n) { return header_.entries[i].name < n; });
    if (it == by_name_.end() || header_.entries[*it].name != name) return nullptr;
    return &header_.entries[*it];
  }
  [[nodiscard]] bool contains(std::string_view name) const noexcept {
    return find(name) != nullptr;
  }

  /// The view of tensor `name`. Throws FormatError when it is absent or of an unsupported dtype.
  [[nodiscard]] Tensor tensor(std::string_view name) const {
    const Entry* e = find(name);
    if (e == nullptr) detail::bad(path(), "no tensor '" + std::string(name) + "'");
    return view(*e);
  }

  /// The view of one of this file's entries (see tensor()).
  [[nodiscard]] Tensor view(const Entry& e) const {
    if (!supported(e.dtype)) {
      detail::bad(path(), "tensor '" + e.name + "' has dtype " + std::string(dtype_name(e.dtype)) +
                              ", which moe does not read (F32, F16, BF16, I8)");
    }
    Tensor t;
    t.entry = &e;
    t.file = &map_.path();
    t.data = map_.data() + e.begin;
    t.dtype = e.dtype;
    t.shape = e.shape;
    t.nbytes = e.nbytes();
    return t;
  }

 private:
  MappedFile map_;
  Header header_;
  std::vector<std::size_t> by_name_;  ///< entry indices sorted by name
};

/// File names Hugging Face uses.
inline constexpr std::string_view kIndexFileName = "model.safetensors.index.json";
inline constexpr std::string_view kSingleFileName = "model.safetensors";

/// A checkpoint: one safetensors file, or shards listed by model.safetensors.index.json.
class Checkpoint {
 public:
  /// `path` is a directory holding model.safetensors.index.json (sharded) or model.safetensors,
  /// or a .safetensors file. Opens and validates every file (headers only).
  explicit Checkpoint(const std::filesystem::path& path, const Limits& limits = {}) {
    namespace fs = std::filesystem;
    if (fs::is_directory(path)) {
      dir_ = path;
      if (fs::exists(path / kIndexFileName)) {
        open_sharded(path / kIndexFileName, limits);
        return;
      }
      if (!fs::exists(path / kSingleFileName)) {
        throw IoError("[safetensors] '" + path.string() + "' holds neither " +
                      std::string(kIndexFileName) + " nor " + std::string(kSingleFileName));
      }
      open_single(path / kSingleFileName, limits);
    } else if (path.filename() == kIndexFileName) {
      dir_ = path.parent_path();
      open_sharded(path, limits);
    } else {
      dir_ = path.parent_path();
      open_single(path, limits);
    }
  }

  /// The directory the files are in.
  [[nodiscard]] const std::filesystem::path& dir() const noexcept { return dir_; }
  /// The index file, or empty for a single-file checkpoint.
  [[nodiscard]] const std::string& index_path() const noexcept { return index_; }
  [[nodiscard]] std::span<const File> files() const noexcept { return files_; }
  /// The index's metadata.total_size, or 0 when absent (informational: not checked).
  [[nodiscard]] std::uint64_t index_total_size() const noexcept { return total_size_; }
  [[nodiscard]] std::size_t size() const noexcept { return where_.size(); }
  /// Bytes of all tensors' data.
  [[nodiscard]] std::size_t data_bytes() const noexcept {
    std::size_t n = 0;
    for (const File& f : files_) n += f.size() - f.data_begin();
    return n;
  }
  [[nodiscard]] bool contains(std::string_view name) const {
    return where_.find(name) != where_.end();
  }
  /// Every tensor name, sorted.
  [[nodiscard]] std::vector<std::string_view> names() const {
    std::vector<std::string_view> v;
    v.reserve(where_.size());
    for (const auto& kv : where_) v.push_back(kv.first);
    return v;
  }
  /// The entry of tensor `name` (any dtype), or nullptr.
  [[nodiscard]] const Entry* find(std::string_view name) const {
    const auto it = where_.find(name);
    return it == where_.end() ? nullptr : it->second.second;
  }
  /// The file holding tensor `name`. Throws FormatError when it is absent.
  [[nodiscard]] const File& file_of(std::string_view name) const {
    return files_[locate(name).first];
  }
  /// The view of tensor `name`. Throws FormatError naming the tensor and the index (or file)
  /// when it is absent, or naming the tensor and its file when its dtype is not supported.
  [[nodiscard]] Tensor tensor(std::string_view name) const {
    const auto& [file, entry] = locate(name);
    return files_[file].view(*entry);
  }

 private:
  using Location = std::pair<std::size_t, const Entry*>;  // file index, entry

  [[nodiscard]] const Location& locate(std::string_view name) const {
    const auto it = where_.find(name);
    if (it == where_.end()) {
      if (!index_.empty()) {
        throw FormatError("[safetensors] tensor '" + std::string(name) + "' is not in the index '" +
                          index_ + "'");
      }
      detail::bad(files_.front().path(), "no tensor '" + std::string(name) + "'");
    }
    return it->second;
  }

  void open_single(const std::filesystem::path& file, const Limits& limits) {
    files_.emplace_back(file, limits);
    for (const Entry& e : files_.front().entries()) where_.emplace(e.name, Location{0, &e});
  }

  void open_sharded(const std::filesystem::path& index, const Limits& limits) {
    index_ = index.string();
    const JsonValue json = read_json_file(index);  // FormatError "[json] 'path' ..." if malformed
    auto bad_index = [&](const std::string& msg) {
      throw FormatError("[safetensors] index '" + index_ + "': " + msg);
    };
    if (!json.is_object()) bad_index("expected a JSON object, got " + json.describe());
    if (const JsonValue* meta = json.find("metadata"); meta != nullptr && meta->is_object()) {
      if (const JsonValue* ts = meta->find("total_size"); ts != nullptr && ts->is_integer()) {
        total_size_ = static_cast<std::uint64_t>(std::max<std::int64_t>(0, ts->as_int64()));
      }
    }
    const JsonValue* map = json.find("weight_map");
    if (map == nullptr || !map->is_object()) bad_index("missing the object 'weight_map'");
    std::map<std::string, std::size_t, std::less<>> shard_index;  // shard name -> files_ index
    std::vector<std::pair<std::string, std::size_t>> listed;      // tensor -> shard
    for (const auto& [tensor, shard] : map->as_object()) {
      if (!shard.is_string()) {
        bad_index("tensor '" + tensor + "': the shard must be a file name, got " +
                  shard.describe());
      }
      const std::string& s = shard.as_string();
      if (s.empty() || s == "." || s == ".." || s.find('/') != std::string::npos ||
          s.find('\\') != std::string::npos || s.find('\0') != std::string::npos) {
        bad_index("tensor '" + tensor + "': shard '" + s +
                  "' is not a plain file name in the checkpoint directory");
      }
      auto [it, added] = shard_index.emplace(s, files_.size());
      if (added) {
        const std::filesystem::path p = dir_ / s;
        try {
          files_.emplace_back(p, limits);
        } catch (const IoError& e) {
          throw IoError("[safetensors] shard '" + s + "' listed in the index '" + index_ +
                        "' cannot be opened: " + e.what());
        }
      }
      listed.emplace_back(tensor, it->second);
    }
    if (files_.empty()) bad_index("'weight_map' lists no tensor");
    for (const auto& [tensor, file] : listed) {
      const Entry* e = files_[file].find(tensor);
      if (e == nullptr) {
        bad_index("tensor '" + tensor + "' is listed for shard '" + files_[file].path() +
                  "', which does not contain it");
      }
      where_.emplace(tensor, Location{file, e});
    }
    for (std::size_t f = 0; f < files_.size(); ++f) {
      for (const Entry& e : files_[f].entries()) {
        const auto it = where_.find(e.name);
        if (it == where_.end() || it->second.first != f) {
          bad_index("tensor '" + e.name + "' in shard '" + files_[f].path() +
                    (it == where_.end() ? "' is not in the index"
                                        : "' is listed for another shard, '" +
                                              files_[it->second.first].path() + "'"));
        }
      }
    }
  }

  std::filesystem::path dir_;
  std::string index_;
  std::uint64_t total_size_ = 0;
  std::vector<File> files_;
  std::map<std::string, Location, std::less<>> where_;
};

}  // namespace moe::io::safetensors
