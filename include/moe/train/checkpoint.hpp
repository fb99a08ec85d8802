// moe/train/checkpoint.hpp: a resumable training checkpoint, one file.
//
//   save_training_state(path, store, opt, metadata);   // metadata: any text (e.g. JSON: the
//   load_training_state(path, store, opt) -> metadata  // data position, the model config)
//
// The file holds everything a run needs to continue bit for bit: every parameter tensor (name,
// shape, values), AdamW's moments and step count, the optimizer's hyper-parameters (checked on
// load) and the caller's metadata. Layout (little-endian):
//
//   "MOETRAIN" u32 version  u64 n_tensors
//   per tensor: u32 name length, name bytes, u32 rank, u64 dims[rank]
//   f32 beta1 beta2 eps weight_decay   u64 step   u64 n_elements
//   f32 params[n_elements]  f32 m[n_elements]  f32 v[n_elements]
//   u64 metadata length, metadata bytes
//   u64 FNV-1a hash of every byte before it
//
// Saving never destroys an existing checkpoint: the file is written to `<path>.tmp`, flushed to
// disk, then renamed over `path`. Loading validates everything before it changes anything: a
// truncated or corrupted file, another model's tensors or another optimizer configuration is a
// FormatError / ShapeError / ConfigError naming the file, and the store and optimizer are left as
// they were.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>
#include <vector>

#include <moe/config.hpp>
#include <moe/core/error.hpp>
#include <moe/train/optimizer.hpp>
#include <moe/train/parameters.hpp>

namespace moe::detail {

inline constexpr char kTrainMagic[8] = {'M', 'O', 'E', 'T', 'R', 'A', 'I', 'N'};
inline constexpr std::uint32_t kTrainVersion = 1;

/// FNV-1a, 64 bit, continued from h.
inline std::uint64_t fnv1a(const void* data, std::size_t n,
                           std::uint64_t h = 0xcbf29ce484222325ull) noexcept {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

/// Appends bytes and keeps the running hash.
class HashedWriter {
 public:
  explicit HashedWriter(std::ofstream& out) : out_(out) {}
  void bytes(const void* p, std::size_t n) {
    out_.write(static_cast<const char*>(p), static_cast<std::streamsize>(n));
    hash_ = fnv1a(p, n, hash_);
  }
  template <class T>
  void value(const T& v) {
    bytes(&v, sizeof(T));
  }
  [[nodiscard]] std::uint64_t hash() const noexcept { return hash_; }

 private:
  std::ofstream& out_;
  std::uint64_t hash_ = 0xcbf29ce484222325ull;
};

/// Reads from an in-memory file image with bounds checks; errors name the file.
class CheckedReader {
 public:
  CheckedReader(const std::vector<char>& data, std::string path)
      : data_(data), path_(std::move(path)) {}
  void bytes(void* p, std::size_t n, const char* what) {
    if (n > data_.size() - pos_) {
      throw FormatError("[checkpoint] '" + path_ + "' is truncated (reading " + what + " at byte " +
                        std::to_string(pos_) + " of " + std::to_string(data_.size()) + ")");
    }
    std::memcpy(p, data_.data() + pos_, n);
    pos_ += n;
  }
  template <class T>
  T value(const char* what) {
    T v{};
    bytes(&v, sizeof(T), what);
    return v;
  }
  [[nodiscard]] std::size_t pos() const noexcept { return pos_; }
  [[nodiscard]] const std::string& path() const noexcept { return path_; }

 private:
  const std::vector<char>& data_;
  std::string path_;
  std::size_t pos_ = 0;
};

}  // namespace moe::detail

MOE_SIMD_NAMESPACE_BEGIN

/// Writes store + optimizer state + metadata to `path` (atomically: <path>.tmp, then rename).
inline void save_training_state(const std::filesystem::path& path, const ParameterStore& store,
                                const AdamW& opt, const std::string& metadata = {}) {
  if (store.n_elements() != opt.first_moment().size()) {
    throw ShapeError("[checkpoint] optimizer state has " +
                     std::to_string(opt.first_moment().size()) + " elements, the store " +
                     std::to_string(store.n_elements()));
  }
  const std::filesystem::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw IoError("[checkpoint] cannot create '" + tmp.string() + "'");
    detail::HashedWriter w(out);
    w.bytes(detail::kTrainMagic, sizeof detail::kTrainMagic);
    w.value(detail::kTrainVersion);
    w.value(static_cast<std::uint64_t>(store.n_tensors()));
    for (const ParameterInfo& i : store.infos()) {
      w.value(static_cast<std::uint32_t>(i.name.size()));
      w.bytes(i.name.data(), i.name.size());
      w.value(static_cast<std::uint32_t>(i.shape.size()));
      for (std::size_t d : i.shape) w.value(static_cast<std::uint64_t>(d));
    }
    const AdamWConfig& c = opt.config();
    for (float f : {c.beta1, c.beta2, c.eps, c.weight_decay}) w.value(f);
    w.value(static_cast<std::uint64_t>(opt.steps()));
    w.value(static_cast<std::uint64_t>(store.n_elements()));
    w.bytes(store.params().data(), store.n_elements() * sizeof(float));
    w.bytes(opt.first_moment().data(), store.n_elements() * sizeof(float));
    w.bytes(opt.second_moment().data(), store.n_elements() * sizeof(float));
    w.value(static_cast<std::uint64_t>(metadata.size()));
    w.bytes(metadata.data(), metadata.size());
    const std::uint64_t h = w.hash();
    out.write(reinterpret_cast<const char*>(&h), sizeof h);
    out.flush();
    if (!out) throw IoError("[checkpoint] writing '" + tmp.string() + "' failed (disk full?)");
  }
  // Flush the data to disk before the rename makes it the checkpoint.
  const int fd = ::open(tmp.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    throw IoError("[checkpoint] cannot rename '" + tmp.string() + "' to '" + path.string() +
                  "': " + ec.message());
  }
}

/// Reads a checkpoint written by save_training_state into `store` and `opt` (which must describe
/// the same tensors and optimizer configuration) and returns its metadata. Nothing is modified
/// unless the whole file is valid.
inline std::string load_training_state(const std::filesystem::path& path, ParameterStore& store,
                                       AdamW& opt) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("[checkpoint] cannot open '" + path.string() + "'");
  std::vector<char> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string where = path.string();
  if (data.size() < sizeof(std::uint64_t)) {
    throw FormatError("[checkpoint] '" + where + "' is truncated (" + std::to_string(data.size()) +
                      " bytes)");
  }
  std::uint64_t stored_hash = 0;
  std::memcpy(&stored_hash, data.data() + data.size() - sizeof stored_hash, sizeof stored_hash);
  const std::size_t body = data.size() - sizeof stored_hash;
  detail::CheckedReader r(data, where);
  char magic[8];
  r.bytes(magic, sizeof magic, "the magic");
  if (std::memcmp(magic, detail::kTrainMagic, sizeof magic) != 0) {
    throw FormatError("[checkpoint] '" + where + "' is not a moe training checkpoint");
  }
  const auto version = r.value<std::uint32_t>("the version");
  if (version != detail::kTrainVersion) {
    throw FormatError("[checkpoint] '" + where + "' has version " + std::to_string(version) +
                      ", this build reads " + std::to_string(detail::kTrainVersion));
  }
  if (detail::fnv1a(data.data(), body) != stored_hash) {
    throw FormatError("[checkpoint] '" + where + "' is corrupted (checksum mismatch)");
  }
  const auto n_tensors = r.value<std::uint64_t>("the tensor count");
  if (n_tensors != store.n_tensors()) {
    throw ShapeError("[checkpoint] '" + where + "' holds " + std::to_string(n_tensors) +
                     " tensors, the model has " + std::to_string(store.n_tensors()));
  }
  for (const ParameterInfo& i : store.infos()) {
    const auto len = r.value<std::uint32_t>("a tensor name");
    if (len > 4096) throw FormatError("[checkpoint] '" + where + "' has a bad tensor name length");
    std::string name(len, '\0');
    r.bytes(name.data(), len, "a tensor name");
    const auto rank = r.value<std::uint32_t>("a tensor rank");
    if (rank > 8)
      throw FormatError("[checkpoint] '" + where + "' has a bad rank for '" + name + "'");
    std::vector<std::size_t> shape(rank);
    for (auto& d : shape) d = static_cast<std::size_t>(r.value<std::uint64_t>("a tensor shape"));
    if (name != i.name || shape != i.shape) {
      throw ShapeError("[checkpoint] '" + where + "' holds tensor '" + name + "' " +
                       shape_str(shape) + " where the model has '" + i.name + "' " +
                       shape_str(i.shape));
    }
  }
  float cfg[4];
  for (float& f : cfg) f = r.value<float>("the optimizer configuration");
  const AdamWConfig& c = opt.config();
  if (cfg[0] != c.beta1 || cfg[1] != c.beta2 || cfg[2] != c.eps || cfg[3] != c.weight_decay) {
    throw ConfigError("[checkpoint] '" + where + "' was trained with AdamW(beta1 " +
                      std::to_string(cfg[0]) + ", beta2 " + std::to_string(cfg[1]) + ", eps " +
                      std::to_string(cfg[2]) + ", weight_decay " + std::to_string(cfg[3]) +
                      "), this run is configured differently");
  }
  const auto steps = r.value<std::uint64_t>("the step count");
  const auto n = r.value<std::uint64_t>("the element count");
  if (n != store.n_elements() || n != opt.first_moment().size()) {
    throw ShapeError("[checkpoint] '" + where + "' holds " + std::to_string(n) +
                     " elements, the model " + std::to_string(store.n_elements()));
  }
  const std::size_t need = 3 * n * sizeof(float);
  if (need > body - r.pos()) {
    throw FormatError("[checkpoint] '" + where + "' is truncated (parameter data)");
  }
  // The metadata comes after the three buffers and ends where the hash begins.
  const std::size_t values_at = r.pos();
  std::size_t meta_at = values_at + need;
  if (meta_at + sizeof(std::uint64_t) > body) {
    throw FormatError("[checkpoint] '" + where + "' is truncated (metadata)");
  }
  std::uint64_t meta_len = 0;
  std::memcpy(&meta_len, data.data() + meta_at, sizeof meta_len);
  meta_at += sizeof meta_len;
  if (meta_len != body - meta_at) {
    throw FormatError("[checkpoint] '" + where + "' has trailing or missing bytes");
  }
  // Everything checked: copy.
  const char* v = data.data() + values_at;
  const std::size_t bytes = n * sizeof(float);
  std::memcpy(store.params().data(), v, bytes);
  std::memcpy(opt.first_moment().data(), v + bytes, bytes);
  std::memcpy(opt.second_moment().data(), v + 2 * bytes, bytes);
  opt.set_steps(steps);
  return std::string(data.data() + meta_at, meta_len);
}

MOE_SIMD_NAMESPACE_END
