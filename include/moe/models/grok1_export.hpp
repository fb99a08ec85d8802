// moe/models/grok1_export.hpp: writes f32 Grok-1 weights in the format of xAI's original release.
//
//   moe::grok1::export_checkpoint("out/grok1", config, weights);          // WeightsT<F32Weight>
//   moe::grok1::export_checkpoint("out/grok1", config, weights,
//                                 {.extra_files = {{"tokenizer.model", "data/austen.model"}}});
//   moe::grok1::check_export_dir("out/grok1", options);   // the same checks, before a long run
//   std::string json = moe::grok1::config_to_json(config); // what DIR/config.json holds
//
// The result is what moe::grok1::Checkpoint::open() and the `grok1` example read
// (docs/checkpoint-format.md): DIR/ckpt-0/tensor00000_000 .. tensor{2+12L-1}_000 in the release's
// file order (the parameters in sorted path order: embeddings, final norm, then the layers in
// lexicographic order 0, 1, 10, 11, 2, ..., 12 slots each), plus DIR/config.json holding every
// constant of `config` (the shapes, head_dim, top_k, max_seq_len, RoPE base, RMSNorm eps, the
// embedding/output/attention-logit multipliers, the soft-cap, the special ids), so that a reader
// infers nothing. Steps:
//
// 1. Quantise (quantize_int8). The projections and experts become int8 with bf16 scales, block-
//    wise as xAI's files are: per output column o and row block k, scale = max |w| over the rows
//    of the block / 127 (f32, rounded to the nearest bf16), q = round(w / scale) to the nearest
//    integer (ties to even) clamped to [-127, 127]; a block of zeros gets scale 0 and q = 0. The
//    row-parallel tensors multi_head_attention/linear and moe/linear_1 use 8 row blocks (when
//    their input width is a multiple of 8), every other tensor 1 block (export_blocks). The
//    embedding, the norms and the routers stay f32.
// 2. Pickle (detail::ReleasePickler). Every file is a protocol-4 pickle of a numpy array (f32) or
//    of a __main__.QuantizedWeight8bit (int8 weight + ml_dtypes.bfloat16 scales), emitted opcode
//    by opcode exactly as tools/make_grok1_checkpoint.py's StreamWriter (and hence Python's own
//    pickle.Pickler) writes them: same frames, memo entries and payload placement, so the files
//    are byte-identical to the Python tool's for the same values (tests/io/test_export.cpp).
// 3. Publish. Everything is written into a temporary sibling directory DIR.tmp-<pid>, flushed to
//    disk, then swapped with DIR in one rename (renameat2 RENAME_EXCHANGE; two renames where the
//    file system lacks it). On any failure the temporary directory is removed and DIR is left as
//    it was. An existing DIR is only replaced when it looks like an export (nothing in it but
//    ckpt-0/, config.json and the names of `extra_files`): a user's other files are never lost.
//
// Errors: ShapeError (weights that do not match `config`, naming the checkpoint tensor),
// FormatError (a non-finite weight, naming the tensor and the element), ConfigError (DIR is not
// replaceable), IoError (the OS said no, with the path).
#pragma once

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <unistd.h>
#include <utility>
#include <vector>

#include <moe/core/bf16.hpp>
#include <moe/core/buffer.hpp>
#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/models/grok1.hpp>
#include <moe/models/grok1_checkpoint.hpp>
#include <moe/models/grok1_config.hpp>
#include <moe/ops/weights.hpp>

namespace moe::grok1 {

/// Options of export_checkpoint().
struct ExportOptions {
  /// Files copied into DIR next to ckpt-0/: {name in DIR, source path} (e.g. the tokenizer).
  std::vector<std::pair<std::string, std::filesystem::path>> extra_files;
  /// Called after each tensor file is written.
  std::function<void(std::size_t done, std::size_t total)> progress;
};

/// Scale row blocks of a slot's int8 tensor with `in` input rows: 8 for the row-parallel
/// multi_head_attention/linear and moe/linear_1 (when 8 divides `in`), 1 otherwise.
inline std::size_t export_blocks(Slot slot, std::size_t in) noexcept {
  const bool row_parallel = slot == Slot::kAttnOut || slot == Slot::kExpertDown;
  return row_parallel && in % 8 == 0 ? 8 : 1;
}

/// Quantises the [in, out] map of `w` (either layout) into q [in, out] (row-major) and scales
/// [blocks, out] as described in the header comment. `blocks` must divide w.in. Throws
/// FormatError naming `name` and the element for a non-finite weight.
inline void quantize_int8(const F32Weight& w, std::size_t blocks, std::int8_t* q, bf16* scales,
                          std::string_view name = "weight") {
  validate_weight(w, "grok1_export", name);
  if (blocks == 0 || w.in % blocks != 0) {
    throw ShapeError("[grok1_export] tensor '" + std::string(name) +
                     "': " + std::to_string(blocks) +
                     " row blocks do not divide in = " + std::to_string(w.in));
  }
  const std::size_t rows = w.in / blocks;
  std::vector<float> amax(w.out);
  for (std::size_t k = 0; k < blocks; ++k) {
    std::fill(amax.begin(), amax.end(), 0.0f);
    for (std::size_t i = k * rows; i < (k + 1) * rows; ++i) {
      for (std::size_t o = 0; o < w.out; ++o) {
        const float v = w.at(i, o);
        if (!std::isfinite(v)) {
          throw FormatError("[grok1_export] tensor '" + std::string(name) +
                            "' has the non-finite " + "value " + std::to_string(v) + " at [" +
                            std::to_string(i) + ", " + std::to_string(o) +
                            "] (did training diverge?)");
        }
        amax[o] = std::max(amax[o], std::fabs(v));
      }
    }
    for (std::size_t o = 0; o < w.out; ++o) scales[k * w.out + o] = bf16(amax[o] / 127.0f);
    for (std::size_t i = k * rows; i < (k + 1) * rows; ++i) {
      for (std::size_t o = 0; o < w.out; ++o) {
        const float s = scales[k * w.out + o].to_float();
        const float r = s > 0.0f ? std::nearbyint(w.at(i, o) / s) : 0.0f;
        q[i * w.out + o] = static_cast<std::int8_t>(std::clamp(r, -127.0f, 127.0f));
      }
    }
  }
}

namespace detail {

/// Writes the opcode stream of one release file to a FILE*: the port of
/// tools/make_grok1_checkpoint.py's StreamWriter (protocol 4; frames of at least 64 KiB are
/// committed before the next object; payloads of 64 KiB or more go outside any frame; a MEMOIZE
/// after every memoized object, a BINGET for the strings, globals and b'b' seen before).
class ReleasePickler {
 public:
  ReleasePickler(std::FILE* f, std::string where) : f_(f), where_(std::move(where)) {}

  /// A float32 ndarray of `shape`.
  void dump_f32(std::span<const std::size_t> shape, const float* data) {
    out("\x80\x04", 2);  // PROTO 4
    save_array(shape, kF4, as_bytes(data), count(shape) * 4);
    finish();
  }
  /// A QuantizedWeight8bit(weight = int8 `shape`, scales = bf16 `scales_shape`).
  void dump_quantized(std::span<const std::size_t> shape, const std::int8_t* q,
                      std::span<const std::size_t> scales_shape, const bf16* scales) {
    out("\x80\x04", 2);
    boundary();
    save_global("__main__", "QuantizedWeight8bit");
    save_tuple({});
    w("\x81");  // NEWOBJ
    memoize();
    boundary();
    w("}");  // EMPTY_DICT
    memoize();
    w("(");  // MARK
    save_str("weight");
    save_array(shape, kI1, as_bytes(q), count(shape));
    save_str("scales");
    save_array(scales_shape, kBF16, as_bytes(scales), count(scales_shape) * 2);
    w("u");  // SETITEMS
    w("b");  // BUILD
    finish();
  }

 private:
  static constexpr std::size_t kFrameTarget = std::size_t{64} * 1024;
  static constexpr std::size_t kFrameMin = 4;
  enum DType { kF4, kI1, kBF16 };
  using Saver = std::function<void()>;

  static const char* as_bytes(const void* p) { return static_cast<const char*>(p); }
  static std::size_t count(std::span<const std::size_t> shape) {
    std::size_t n = 1;
    for (std::size_t d : shape) n *= d;
    return n;
  }

  void out(const char* p, std::size_t n) {
    if (n > 0 && std::fwrite(p, 1, n, f_) != n) {
      throw IoError("[grok1_export] writing '" + where_ + "' failed: " + std::strerror(errno));
    }
  }
  void w(std::string_view s) {
    frame_open_ = true;
    frame_.append(s);
  }
  void w(const void* p, std::size_t n) {
    frame_open_ = true;
    frame_.append(static_cast<const char*>(p), n);
  }
  void commit() {
    if (!frame_open_) return;
    if (frame_.size() >= kFrameMin) {
      char header[9] = {'\x95'};
      const std::uint64_t n = frame_.size();
      std::memcpy(header + 1, &n, 8);  // little-endian hosts only (as the reader)
      out(header, 9);
    }
    out(frame_.data(), frame_.size());
    frame_.clear();
    frame_open_ = false;
  }
  void boundary() {
    if (frame_open_ && frame_.size() >= kFrameTarget) commit();
  }
  void finish() {
    w(".");  // STOP
    commit();
  }
  void memoize(const std::string& key = {}) {
    if (!key.empty()) memo_[key] = memo_len_;
    ++memo_len_;
    w("\x94");  // MEMOIZE
  }
  /// BINGET / LONG_BINGET of a memoized key; false when the key is new.
  bool get(const std::string& key) {
    const auto it = memo_.find(key);
    if (it == memo_.end()) return false;
    if (it->second < 256) {
      const char op[2] = {'h', static_cast<char>(it->second)};
      w(op, 2);
    } else {
      char op[5] = {'j'};
      const auto i = static_cast<std::uint32_t>(it->second);
      std::memcpy(op + 1, &i, 4);
      w(op, 5);
    }
    return true;
  }
  void short_unicode(std::string_view s) {
    const char op[2] = {'\x8c', static_cast<char>(s.size())};  // SHORT_BINUNICODE
    w(op, 2);
    w(s);
  }
  void save_str(std::string_view s) {  // an interned string: memoized, reused
    boundary();
    const std::string key = "s:" + std::string(s);
    if (get(key)) return;
    short_unicode(s);
    memoize(key);
  }
  void save_str_new(std::string_view s) {  // a fresh string object: memoized, never reused
    boundary();
    short_unicode(s);
    memoize();
  }
  void save_global(std::string_view module, std::string_view name) {
    boundary();
    const std::string key = "g:" + std::string(module) + "\n" + std::string(name);
    if (get(key)) return;
    save_str(module);
    save_str(name);
    w("\x93");  // STACK_GLOBAL
    memoize(key);
  }
  void save_int(std::int64_t v) {
    boundary();
    if (v >= 0 && v < 256) {
      const char op[2] = {'K', static_cast<char>(v)};
      w(op, 2);
    } else if (v >= 0 && v < 65536) {
      const auto u = static_cast<std::uint16_t>(v);
      w("M");
      w(&u, 2);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      const auto i = static_cast<std::int32_t>(v);
      w("J");
      w(&i, 4);
    } else {  // LONG1, little-endian two's complement of the minimal length
      std::size_t n = 1;
      while (n < 8 &&
             !(v >= -(std::int64_t{1} << (8 * n - 1)) && v < (std::int64_t{1} << (8 * n - 1)))) {
        ++n;
      }
      const char op[2] = {'\x8a', static_cast<char>(n)};
      w(op, 2);
      w(&v, n);
    }
  }
  enum class Const { kNone, kTrue, kFalse };
  void save_const(Const c) {
    boundary();
    w(c == Const::kNone ? "N" : c == Const::kTrue ? "\x88" : "\x89");
  }
  void save_tuple(const std::vector<Saver>& items) {
    boundary();
    if (items.empty()) {
      w(")");  // EMPTY_TUPLE
      return;
    }
    if (items.size() > 3) w("(");
    for (const Saver& s : items) s();
    static constexpr std::string_view kEnd[4] = {"", "\x85", "\x86", "\x87"};
    w(items.size() <= 3 ? kEnd[items.size()] : std::string_view("t"));
    memoize();
  }
  void save_bytes_b() {  // numpy's dummy b'b'
    boundary();
    if (get("b:b")) return;
    w("C\x01"
      "b",
      3);
    memoize("b:b");
  }
  void save_payload(const char* data, std::size_t n) {
    boundary();
    char header[9];
    std::size_t h = 0;
    if (n < 256) {
      header[0] = 'C';  // SHORT_BINBYTES
      header[1] = static_cast<char>(n);
      h = 2;
    } else if (n <= 0xFFFFFFFFull) {
      header[0] = 'B';  // BINBYTES
      const auto u = static_cast<std::uint32_t>(n);
      std::memcpy(header + 1, &u, 4);
      h = 5;
    } else {
      header[0] = '\x8e';  // BINBYTES8
      const auto u = static_cast<std::uint64_t>(n);
      std::memcpy(header + 1, &u, 8);
      h = 9;
    }
    if (n >= kFrameTarget) {  // large payloads bypass the frame
      commit();
      out(header, h);
      out(data, n);
    } else {
      w(header, h);
      w(data, n);
    }
    memoize();
  }
  void save_dtype(DType t) {
    boundary();
    save_global("numpy", "dtype");
    if (t == kBF16) {
      save_tuple({[&] { save_global("ml_dtypes", "bfloat16"); }, [&] { save_const(Const::kFalse); },
                  [&] { save_const(Const::kTrue); }});
    } else {
      save_tuple({[&] { save_str_new(t == kF4 ? "f4" : "i1"); }, [&] { save_const(Const::kFalse); },
                  [&] { save_const(Const::kTrue); }});
    }
    w("R");  // REDUCE
    memoize();
    // numpy's arraydescr state: (3, endian, None, None, None, elsize, alignment, flags), with
    // elsize = alignment = -1 for builtin types; ml_dtypes' bfloat16 is (2, 2, 0x50).
    const bool bf = t == kBF16;
    const std::string_view endian = t == kI1 ? "|" : "<";
    save_tuple({[&] { save_int(3); }, [&] { save_str(endian); }, [&] { save_const(Const::kNone); },
                [&] { save_const(Const::kNone); }, [&] { save_const(Const::kNone); },
                [&] { save_int(bf ? 2 : -1); }, [&] { save_int(bf ? 2 : -1); },
                [&] { save_int(bf ? 0x50 : 0); }});
    w("b");  // BUILD
  }
  void save_array(std::span<const std::size_t> shape, DType t, const char* data,
                  std::size_t nbytes) {
    boundary();
    save_global("numpy.core.multiarray", "_reconstruct");
    save_tuple({[&] { save_global("numpy", "ndarray"); },
                [&] { save_tuple({[&] { save_int(0); }}); }, [&] { save_bytes_b(); }});
    w("R");
    memoize();
    std::vector<Saver> dims;
    for (std::size_t d : shape) {
      dims.emplace_back([this, d] { save_int(static_cast<std::int64_t>(d)); });
    }
    save_tuple({[&] { save_int(1); }, [&] { save_tuple(dims); }, [&] { save_dtype(t); },
                [&] { save_const(Const::kFalse); }, [&] { save_payload(data, nbytes); }});
    w("b");
  }

  std::FILE* f_;
  std::string where_;
  std::string frame_;
  bool frame_open_ = false;
  std::map<std::string, std::size_t> memo_;
  std::size_t memo_len_ = 0;
};

/// An open file that is flushed to disk and closed by close(), or removed on destruction.
class ExportFile {
 public:
  explicit ExportFile(std::filesystem::path path) : path_(std::move(path)) {
    f_ = std::fopen(path_.c_str(), "wb");
    if (f_ == nullptr) {
      throw IoError("[grok1_export] cannot create '" + path_.string() +
                    "': " + std::strerror(errno));
    }
  }
  ExportFile(const ExportFile&) = delete;
  ExportFile& operator=(const ExportFile&) = delete;
  ~ExportFile() {
    if (f_ != nullptr) std::fclose(f_);
  }
  [[nodiscard]] std::FILE* get() const noexcept { return f_; }
  [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }
  void close() {
    const bool ok = std::fflush(f_) == 0 && ::fsync(fileno(f_)) == 0;
    const int err = errno;
    const bool closed = std::fclose(f_) == 0;
    f_ = nullptr;
    if (!ok || !closed) {
      throw IoError("[grok1_export] writing '" + path_.string() +
                    "' failed: " + std::strerror(ok ? errno : err));
    }
  }

 private:
  std::filesystem::path path_;
  std::FILE* f_ = nullptr;
};

/// The logical [in, out] map of a weight, row-major (a copy; [out, in] weights are transposed).
inline std::vector<float> in_out_copy(const F32Weight& w) {
  std::vector<float> v(w.in * w.out);
  for (std::size_t i = 0; i < w.in; ++i) {
    for (std::size_t o = 0; o < w.out; ++o) v[i * w.out + o] = w.at(i, o);
  }
  return v;
}

inline void check_finite(std::span<const float> v, const std::string& name) {
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (!std::isfinite(v[i])) {
      throw FormatError("[grok1_export] tensor '" + name + "' has the non-finite value " +
                        std::to_string(v[i]) + " at element " + std::to_string(i) +
                        " (did training diverge?)");
    }
  }
}

/// Writes tensor file `index` of the export into `path`.
inline void write_tensor_file(const std::filesystem::path& path, std::size_t index, const Config& c,
                              const WeightsT<F32Weight>& wts) {
  const std::string name = tensor_name(index, c.n_layers);
  ExportFile file(path);
  ReleasePickler p(file.get(), path.string());
  auto f32 = [&](std::span<const float> v, std::initializer_list<std::size_t> shape) {
    check_finite(v, name);
    const std::vector<std::size_t> s(shape);
    p.dump_f32(s, v.data());
  };
  auto quantized = [&](Slot slot, std::span<const F32Weight> experts, bool stacked) {
    const F32Weight& w0 = experts[0];
    const std::size_t blocks = export_blocks(slot, w0.in), per = w0.in * w0.out;
    std::vector<std::int8_t> q(experts.size() * per);
    std::vector<bf16> s(experts.size() * blocks * w0.out);
    for (std::size_t e = 0; e < experts.size(); ++e) {
      quantize_int8(experts[e], blocks, q.data() + e * per, s.data() + e * blocks * w0.out, name);
    }
    std::vector<std::size_t> shape{w0.in, w0.out}, scales{blocks, w0.out};
    if (stacked) {
      shape.insert(shape.begin(), experts.size());
      scales.insert(scales.begin(), experts.size());
    }
    p.dump_quantized(shape, q.data(), scales, s.data());
  };
  const TensorRef ref = tensor_at(index, c.n_layers);
  if (!ref.in_layer) {  // the two tensors outside the layers
    if (name == "language_model/in_out_embed/embeddings") {
      const EmbeddingTable& e = wts.embedding;
      if (e.dtype != EmbeddingDtype::kF32 || reinterpret_cast<std::uintptr_t>(e.data) % 4 != 0) {
        throw ConfigError("[grok1_export] tensor '" + name + "' must be an aligned f32 table in " +
                          "memory, not " + std::string(embedding_dtype_name(e.dtype)));
      }
      f32({reinterpret_cast<const float*>(e.data), c.vocab_size * c.d_model},
          {c.vocab_size, c.d_model});
    } else if (name == "language_model/rms_norm/scale") {
      f32(wts.final_norm, {c.d_model});
    } else {
      throw ConfigError("[grok1_export] no writer for tensor '" + name + "'");
    }
  } else {
    const LayerWeightsT<F32Weight>& l = wts.layers[ref.layer];
    switch (ref.slot) {
      case Slot::kExpertGate:
      case Slot::kExpertDown:
      case Slot::kExpertUp: {
        const WeightStack<F32Weight>& st = ref.slot == Slot::kExpertGate ? l.expert_gate
                                           : ref.slot == Slot::kExpertUp ? l.expert_up
                                                                         : l.expert_down;
        std::vector<F32Weight> experts(st.count);
        for (std::size_t e = 0; e < st.count; ++e) experts[e] = st[e];
        quantized(ref.slot, experts, true);
        break;
      }
      case Slot::kKey:
        quantized(ref.slot, {&l.wk, 1}, false);
        break;
      case Slot::kAttnOut:
        quantized(ref.slot, {&l.wo, 1}, false);
        break;
      case Slot::kQuery:
        quantized(ref.slot, {&l.wq, 1}, false);
        break;
      case Slot::kValue:
        quantized(ref.slot, {&l.wv, 1}, false);
        break;
      case Slot::kNormPreAttn:
        f32(l.norm_pre_attn, {c.d_model});
        break;
      case Slot::kNormPostAttn:
        f32(l.norm_post_attn, {c.d_model});
        break;
      case Slot::kNormPreMoe:
        f32(l.norm_pre_moe, {c.d_model});
        break;
      case Slot::kNormPostMoe:
        f32(l.norm_post_moe, {c.d_model});
        break;
      case Slot::kRouter: {
        const std::vector<float> r = in_out_copy(l.router);
        f32(r, {c.d_model, c.n_experts});
        break;
      }
    }
  }
  file.close();
}

/// Shortest decimal that reads back as the same double (std::to_chars).
inline std::string json_number(double v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

/// Makes `tmp` the new `dir` in one step when the file system allows (the old export, if any,
/// ends up at `tmp` and is removed).
inline void publish(const std::filesystem::path& tmp, const std::filesystem::path& dir) {
  std::error_code ec;
  if (!std::filesystem::exists(std::filesystem::symlink_status(dir, ec))) {
    std::filesystem::rename(tmp, dir, ec);
    if (ec) {
      throw IoError("[grok1_export] cannot rename '" + tmp.string() + "' to '" + dir.string() +
                    "': " + ec.message());
    }
    return;
  }
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, dir.c_str(), RENAME_EXCHANGE) == 0) {
    std::filesystem::remove_all(tmp, ec);
    return;
  }
  // No RENAME_EXCHANGE (some file systems): move the old export aside, then the new one in.
  const std::filesystem::path old = dir.string() + ".old-" + std::to_string(::getpid());
  std::filesystem::rename(dir, old, ec);
  if (ec) {
    throw IoError("[grok1_export] cannot move the previous export '" + dir.string() +
                  "' aside: " + ec.message());
  }
  std::filesystem::rename(tmp, dir, ec);
  if (ec) {
    std::error_code ignore;
    std::filesystem::rename(old, dir, ignore);
    throw IoError("[grok1_export] cannot rename '" + tmp.string() + "' to '" + dir.string() +
                  "': " + ec.message());
  }
  std::filesystem::remove_all(old, ec);
}

}  // namespace detail

/// DIR/config.json: every constant of `c`, in the keys Checkpoint::open() reads.
inline std::string config_to_json(const Config& c) {
  const std::pair<const char*, std::string> keys[] = {
      {"vocab_size", std::to_string(c.vocab_size)},
      {"d_model", std::to_string(c.d_model)},
      {"n_layers", std::to_string(c.n_layers)},
      {"n_q_heads", std::to_string(c.n_q_heads)},
      {"n_kv_heads", std::to_string(c.n_kv_heads)},
      {"head_dim", std::to_string(c.head_dim)},
      {"n_experts", std::to_string(c.n_experts)},
      {"top_k", std::to_string(c.top_k)},
      {"d_ff", std::to_string(c.d_ff)},
      {"max_seq_len", std::to_string(c.max_seq_len)},
      {"rope_base", detail::json_number(c.rope_base)},
      {"rms_eps", detail::json_number(c.rms_eps)},
      {"embedding_multiplier", detail::json_number(c.embedding_multiplier)},
      {"output_multiplier", detail::json_number(c.output_multiplier)},
      {"attn_logit_multiplier", detail::json_number(c.attn_logit_multiplier)},
      {"attn_softcap", detail::json_number(c.attn_softcap)},
      {"pad_id", std::to_string(c.pad_id)},
      {"bos_id", std::to_string(c.bos_id)},
      {"eos_id", std::to_string(c.eos_id)},
  };
  std::string s = "{\n";
  for (std::size_t i = 0; i < std::size(keys); ++i) {
    s += std::string("  \"") + keys[i].first + "\": " + keys[i].second +
         (i + 1 < std::size(keys) ? ",\n" : "\n");
  }
  return s + "}\n";
}

/// Throws ConfigError unless `dir` is absent, empty or holds nothing but an export's entries
/// (what export_checkpoint checks first; call it before a long run to fail early).
inline void check_export_dir(const std::filesystem::path& dir, const ExportOptions& options) {
  std::error_code ec;
  if (!std::filesystem::exists(std::filesystem::symlink_status(dir, ec))) return;
  if (!std::filesystem::is_directory(dir, ec)) {
    throw ConfigError("[grok1_export] '" + dir.string() +
                      "' exists and is not a directory; refusing to replace it");
  }
  for (auto it = std::filesystem::directory_iterator(dir, ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    const std::string n = it->path().filename().string();
    bool known = n == "ckpt-0" || n == "config.json";
    for (const auto& [name, src] : options.extra_files) known = known || n == name;
    if (!known) {
      throw ConfigError("[grok1_export] '" + dir.string() + "' exists and holds '" + n +
                        "', which is not part of an export; refusing to replace it (choose "
                        "another directory or remove it)");
    }
  }
  if (ec) throw IoError("[grok1_export] cannot list '" + dir.string() + "': " + ec.message());
}

/// Writes `weights` (f32, any layouts) as a Grok-1 release-format checkpoint in `dir`; see the
/// header comment. Validates the weights against `config` first.
inline void export_checkpoint(const std::filesystem::path& dir, const Config& config,
                              const WeightsT<F32Weight>& weights,
                              const ExportOptions& options = {}) {
  weights.validate(config);
  if (dir.empty()) throw ConfigError("[grok1_export] empty output directory name");
  std::filesystem::path target = dir;
  if (!target.has_filename()) target = target.parent_path();  // "out/" -> "out"
  check_export_dir(target, options);
  for (const auto& [name, src] : options.extra_files) {
    if (name.empty() || name == "ckpt-0" || name == "config.json" ||
        name.find('/') != std::string::npos) {
      throw ConfigError("[grok1_export] bad name '" + name + "' for an extra file");
    }
    std::error_code ec;
    if (!std::filesystem::is_regular_file(src, ec)) {
      throw IoError("[grok1_export] cannot read '" + src.string() + "': not a regular file");
    }
  }
  const std::filesystem::path tmp = target.string() + ".tmp-" + std::to_string(::getpid());
  std::error_code ec;
  std::filesystem::remove_all(tmp, ec);
  try {
    std::filesystem::create_directories(tmp / "ckpt-0", ec);
    if (ec) {
      throw IoError("[grok1_export] cannot create '" + (tmp / "ckpt-0").string() +
                    "': " + ec.message());
    }
    const std::size_t n = n_files(config.n_layers);
    for (std::size_t i = 0; i < n; ++i) {
      detail::write_tensor_file(tmp / "ckpt-0" / file_name(i), i, config, weights);
      if (options.progress) options.progress(i + 1, n);
    }
    {
      detail::ExportFile f(tmp / "config.json");
      const std::string json = config_to_json(config);
      if (std::fwrite(json.data(), 1, json.size(), f.get()) != json.size()) {
        throw IoError("[grok1_export] writing '" + f.path().string() + "' failed");
      }
      f.close();
    }
    for (const auto& [name, src] : options.extra_files) {
      std::filesystem::copy_file(src, tmp / name, ec);
      if (ec) {
        throw IoError("[grok1_export] cannot copy '" + src.string() + "' to '" +
                      (tmp / name).string() + "': " + ec.message());
      }
    }
    detail::publish(tmp, target);
  } catch (...) {
    std::filesystem::remove_all(tmp, ec);
    throw;
  }
}

}  // namespace moe::grok1
