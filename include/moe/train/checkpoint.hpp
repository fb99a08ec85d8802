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

MOE_SIMD_NAMESPACE_END

MOE_SIMD_DETAIL_BEGIN

/// A checkpoint file read and checked against a store: everything but the optimizer
/// configuration (which only a resume needs to match).
struct TrainingFile {
  std::vector<char> data;
  std::size_t values_at = 0;  ///< params, then m, then v: n floats each
  std::size_t n = 0;
  std::uint64_t steps = 0;
  float adamw[4] = {};  ///< beta1, beta2, eps, weight_decay
  std::size_t meta_at = 0, meta_len = 0;
  std::uint64_t hash = 0;  ///< the file's stored FNV-1a hash (an identity of its contents)
};

inline TrainingFile read_training_file(const std::filesystem::path& path,
                                       const ParameterStore& store) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("[checkpoint] cannot open '" + path.string() + "'");
  TrainingFile f;
  f.data.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  const std::vector<char>& data = f.data;
  const std::string where = path.string();
  CheckedReader r(data, where);
  char magic[8];
  r.bytes(magic, sizeof magic, "the magic");
  if (std::memcmp(magic, kTrainMagic, sizeof magic) != 0) {
    throw FormatError("[checkpoint] '" + where + "' is not a moe training checkpoint");
  }
  const auto version = r.value<std::uint32_t>("the version");
  if (version != kTrainVersion) {
    throw FormatError("[checkpoint] '" + where + "' has version " + std::to_string(version) +
                      ", this build reads " + std::to_string(kTrainVersion));
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
    if (rank > 8) {
      throw FormatError("[checkpoint] '" + where + "' has a bad rank for '" + name + "'");
    }
    std::vector<std::size_t> shape(rank);
    for (auto& d : shape) d = static_cast<std::size_t>(r.value<std::uint64_t>("a tensor shape"));
    if (name != i.name || shape != i.shape) {
      throw ShapeError("[checkpoint] '" + where + "' holds tensor '" + name + "' " +
                       shape_str(shape) + " where the model has '" + i.name + "' " +
                       shape_str(i.shape));
    }
  }
  for (float& x : f.adamw) x = r.value<float>("the optimizer configuration");
  f.steps = r.value<std::uint64_t>("the step count");
  f.n = static_cast<std::size_t>(r.value<std::uint64_t>("the element count"));
  if (f.n != store.n_elements()) {
    throw ShapeError("[checkpoint] '" + where + "' holds " + std::to_string(f.n) +
                     " elements, the model " + std::to_string(store.n_elements()));
  }
  // The three buffers, the metadata length and the hash must all be there.
  f.values_at = r.pos();
  const std::size_t need = 3 * f.n * sizeof(float) + 2 * sizeof(std::uint64_t);
  if (data.size() < f.values_at || need > data.size() - f.values_at) {
    throw FormatError("[checkpoint] '" + where + "' is truncated (" + std::to_string(data.size()) +
                      " bytes; its tensors alone need " + std::to_string(f.values_at + need) + ")");
  }
  const std::size_t body = data.size() - sizeof f.hash;
  std::memcpy(&f.hash, data.data() + body, sizeof f.hash);
  if (fnv1a(data.data(), body) != f.hash) {
    throw FormatError("[checkpoint] '" + where + "' is corrupted (checksum mismatch)");
  }
  f.meta_at = f.values_at + 3 * f.n * sizeof(float);
  std::uint64_t meta_len = 0;
  std::memcpy(&meta_len, data.data() + f.meta_at, sizeof meta_len);
  f.meta_at += sizeof meta_len;
  if (meta_len != body - f.meta_at) {
    throw FormatError("[checkpoint] '" + where + "' has trailing or missing bytes");
  }
  f.meta_len = static_cast<std::size_t>(meta_len);
  return f;
}

MOE_SIMD_DETAIL_END

MOE_SIMD_NAMESPACE_BEGIN

/// Reads a checkpoint written by save_training_state into `store` and `opt` (which must describe
/// the same tensors and optimizer configuration) and returns its metadata. Nothing is modified
/// unless the whole file is valid.
inline std::string load_training_state(const std::filesystem::path& path, ParameterStore& store,
                                       AdamW& opt) {
  const detail::TrainingFile f = detail::read_training_file(path, store);
  const AdamWConfig& c = opt.config();
  if (f.adamw[0] != c.beta1 || f.adamw[1] != c.beta2 || f.adamw[2] != c.eps ||
      f.adamw[3] != c.weight_decay) {
    throw ConfigError("[checkpoint] '" + path.string() + "' was trained with AdamW(beta1 " +
                      std::to_string(f.adamw[0]) + ", beta2 " + std::to_string(f.adamw[1]) +
                      ", eps " + std::to_string(f.adamw[2]) + ", weight_decay " +
                      std::to_string(f.adamw[3]) + "), this run is configured differently");
  }
  if (opt.first_moment().size() != f.n) {
    throw ShapeError("[checkpoint] the optimizer state has " +
                     std::to_string(opt.first_moment().size()) + " elements, '" + path.string() +
                     "' " + std::to_string(f.n));
  }
  const char* v = f.data.data() + f.values_at;
  const std::size_t bytes = f.n * sizeof(float);
  std::memcpy(store.params().data(), v, bytes);
  std::memcpy(opt.first_moment().data(), v + bytes, bytes);
  std::memcpy(opt.second_moment().data(), v + 2 * bytes, bytes);
  opt.set_steps(f.steps);
  return std::string(f.data.data() + f.meta_at, f.meta_len);
}

/// Reads only the parameters of a checkpoint into `store` (the start of a fine-tuning run: a
/// fresh optimizer) and returns the file's hash. Nothing is modified unless the file is valid.
inline std::uint64_t load_parameters(const std::filesystem::path& path, ParameterStore& store) {
  const detail::TrainingFile f = detail::read_training_file(path, store);
  std::memcpy(store.params().data(), f.data.data() + f.values_at, f.n * sizeof(float));
  return f.hash;
}

MOE_SIMD_NAMESPACE_END
