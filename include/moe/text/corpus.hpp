// moe/text/corpus.hpp: a text corpus as one stream of token ids, and the batches a language model
// trains and validates on.
//
//   moe::TokenStream train = moe::tokenize_corpus(pool, tokenizer, {"data/austen.train.txt"});
//   moe::BatchSampler sampler(train.ids(), {.batch = 8, .seq = 256, .seed = 1});
//   sampler.fill(step, batch);                     // batch `step`: a pure function of (seed, step)
//   moe::Batch val = moe::validation_windows(val_stream.ids(), 256, 64);   // fixed windows
//
// Steps of the pipeline:
//
// 1. Tokenise (tokenize_corpus). Every file is read whole; each line is encoded on its own and
//    followed by the tokenizer's newline piece ("\n", else the byte piece <0x0A>); a last line
//    without a newline gets none. For a tokenizer trained without a dummy prefix and with "\n"
//    as a piece (scripts/get_corpus), decode(ids) is the file's text again. Lines are encoded in
//    parallel, in fixed chunks, and concatenated in file order (the ids do not depend on the
//    thread count). The files' streams are concatenated in the order given.
// 2. Cache. The ids of FILE are kept in FILE.tokens, with the file's size and FNV-1a hash and the
//    tokenizer's fingerprint (the hash of its serialized model). The next run reads them instead
//    of re-encoding when all three still match; a stale, truncated or corrupt cache is simply
//    rebuilt, and a cache that cannot be written (read-only directory) is skipped. Writes go to
//    FILE.tokens.tmp-<pid>, renamed into place.
// 3. Training batches (BatchSampler). The stream is cut into W windows of T+1 tokens that
//    overlap by one token (input t, target t+1). Each epoch visits every window once, in an order
//    shuffled by (seed, epoch), at a start offset shifted by (seed, epoch) so that window
//    boundaries move between epochs. Batch `step` holds the windows step*B .. step*B+B-1 of
//    that sequence. The data position is therefore the step: resuming a run at step s sees
//    exactly the batches an uninterrupted run would have seen, with nothing else to save.
// 4. Validation (validation_windows): non-overlapping windows from the start of the stream,
//    evenly spaced when there are more than asked for. Fixed for a given stream.
//
// Errors: a missing or unreadable file is an IoError, an empty file (or one that encodes to no
// tokens) a FormatError, a stream too short for one window a ConfigError; each names the file or
// the sizes.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <span>
#include <string>
#include <string_view>
#include <sys/stat.h>
#include <system_error>
#include <unistd.h>
#include <utility>
#include <vector>

#include <moe/core/error.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/train/checkpoint.hpp>  // detail::fnv1a

namespace moe {

// ---- files and fingerprints ------------------------------------------------------------------

namespace detail {

/// The whole content of a regular file; IoError "[corpus] cannot read 'path': reason".
inline std::string read_text_file(const std::filesystem::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    throw IoError("[corpus] cannot read '" + path.string() + "': " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    throw IoError("[corpus] cannot read '" + path.string() + "': not a regular file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("[corpus] cannot read '" + path.string() + "': " + std::strerror(errno));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw IoError("[corpus] cannot read '" + path.string() + "': read failed");
  return text;
}

/// SplitMix64 (Steele, Lea & Flood 2014): a well-mixed 64-bit function of a 64-bit input.
constexpr std::uint64_t splitmix64(std::uint64_t x) noexcept {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/// A pseudo-random number for (seed, a, b): pure, no state.
constexpr std::uint64_t mix(std::uint64_t seed, std::uint64_t a, std::uint64_t b = 0) noexcept {
  return splitmix64(splitmix64(splitmix64(seed) ^ a) ^ b);
}

}  // namespace detail

/// FNV-1a hash of a file's bytes (the checksum used for corpora and tokenizers).
inline std::uint64_t file_fingerprint(const std::filesystem::path& path) {
  const std::string bytes = detail::read_text_file(path);
  return detail::fnv1a(bytes.data(), bytes.size());
}

/// A tokenizer's fingerprint: the hash of its serialized model (moe::Tokenizer), or whatever
/// its fingerprint() member returns (test tokenizers).
template <class Tok>
std::uint64_t tokenizer_fingerprint(const Tok& tok) {
  if constexpr (requires { tok.fingerprint(); }) {
    return static_cast<std::uint64_t>(tok.fingerprint());
  } else {
    const std::string proto = tok.processor().serialized_model_proto();
    return detail::fnv1a(proto.data(), proto.size());
  }
}

/// The id that ends a line: the piece "\n", else the byte piece "<0x0A>". ConfigError if the
/// tokenizer has neither.
template <class Tok>
std::int32_t newline_id(const Tok& tok) {
  for (const char* piece : {"\n", "<0x0A>"}) {
    const std::int32_t id = tok.piece_to_id(piece);
    if (id >= 0 && id != tok.unk_id()) return id;
  }
  throw ConfigError(
      "[corpus] the tokenizer has no piece for a line break (neither \"\\n\" nor the byte piece "
      "<0x0A>); train it with --user_defined_symbols or --byte_fallback");
}

// ---- token streams -----------------------------------------------------------------------------

/// What tokenize_corpus did with one file.
struct CorpusFile {
  std::filesystem::path path;
  std::uint64_t bytes = 0;
  std::uint64_t hash = 0;  ///< FNV-1a of the file's bytes
  std::size_t lines = 0;
  std::size_t n_tokens = 0;
  bool from_cache = false;     ///< ids read from FILE.tokens
  bool cache_written = false;  ///< FILE.tokens (re)written
};

/// The ids of a corpus (all its files, concatenated) and where they came from.
class TokenStream {
 public:
  TokenStream() = default;
  TokenStream(std::vector<std::int32_t> ids, std::vector<CorpusFile> files,
              std::uint64_t tokenizer_hash)
      : ids_(std::move(ids)), files_(std::move(files)), tokenizer_hash_(tokenizer_hash) {}

  [[nodiscard]] std::span<const std::int32_t> ids() const noexcept { return ids_; }
  [[nodiscard]] std::size_t size() const noexcept { return ids_.size(); }
  [[nodiscard]] const std::vector<CorpusFile>& files() const noexcept { return files_; }
  [[nodiscard]] std::uint64_t tokenizer_hash() const noexcept { return tokenizer_hash_; }
  /// Checksum of the corpus text: FNV-1a over the files' hashes, in order.
  [[nodiscard]] std::uint64_t text_hash() const noexcept {
    std::uint64_t h = detail::fnv1a(nullptr, 0);
    for (const CorpusFile& f : files_) h = detail::fnv1a(&f.hash, sizeof f.hash, h);
    return h;
  }

 private:
  std::vector<std::int32_t> ids_;
  std::vector<CorpusFile> files_;
  std::uint64_t tokenizer_hash_ = 0;
};

struct CorpusOptions {
  bool use_cache = true;  ///< read and write FILE.tokens
};

namespace detail {

inline constexpr char kTokensMagic[8] = {'M', 'O', 'E', 'T', 'O', 'K', 'S', '\0'};
inline constexpr std::uint32_t kTokensVersion = 1;

/// The header of a FILE.tokens cache: what the ids were made from.
struct TokensKey {
  std::uint64_t text_bytes = 0;
  std::uint64_t text_hash = 0;
  std::uint64_t tokenizer_hash = 0;
  std::uint64_t vocab_size = 0;
};

inline std::filesystem::path tokens_cache_path(const std::filesystem::path& file) {
  return file.string() + ".tokens";
}

/// The cached ids when the cache exists, is intact and matches `key`; empty otherwise.
inline std::vector<std::int32_t> read_tokens_cache(const std::filesystem::path& cache,
                                                   const TokensKey& key) {
  std::ifstream in(cache, std::ios::binary);
  if (!in) return {};
  std::vector<char> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  constexpr std::size_t kHeader =
      sizeof kTokensMagic + sizeof(std::uint32_t) + 5 * sizeof(std::uint64_t);
  if (data.size() < kHeader + 8) return {};
  std::uint64_t stored = 0;
  std::memcpy(&stored, data.data() + data.size() - 8, 8);
  if (fnv1a(data.data(), data.size() - 8) != stored) return {};
  if (std::memcmp(data.data(), kTokensMagic, sizeof kTokensMagic) != 0) return {};
  const char* p = data.data() + sizeof kTokensMagic;
  auto take = [&p](auto& v) {
    std::memcpy(&v, p, sizeof v);
    p += sizeof v;
  };
  std::uint32_t version = 0;
  TokensKey k;
  std::uint64_t n = 0;
  take(version);
  take(k.text_bytes);
  take(k.text_hash);
  take(k.tokenizer_hash);
  take(k.vocab_size);
  take(n);
  if (version != kTokensVersion || k.text_bytes != key.text_bytes || k.text_hash != key.text_hash ||
      k.tokenizer_hash != key.tokenizer_hash || k.vocab_size != key.vocab_size ||
      n != (data.size() - kHeader - 8) / 4 || (data.size() - kHeader - 8) % 4 != 0) {
    return {};
  }
  std::vector<std::int32_t> ids(n);
  std::memcpy(ids.data(), p, n * 4);
  for (std::int32_t id : ids) {
    if (id < 0 || static_cast<std::uint64_t>(id) >= key.vocab_size) return {};
  }
  return ids;
}

/// Writes the cache (tmp + rename). Returns false when it cannot (the cache is optional).
inline bool write_tokens_cache(const std::filesystem::path& cache, const TokensKey& key,
                               std::span<const std::int32_t> ids) {
  // A per-process name: two runs reading the same corpus may both rebuild its cache.
  const std::filesystem::path tmp = cache.string() + ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return false;
    HashedWriter w(out);
    w.bytes(kTokensMagic, sizeof kTokensMagic);
    w.value(kTokensVersion);
    w.value(key.text_bytes);
    w.value(key.text_hash);
    w.value(key.tokenizer_hash);
    w.value(key.vocab_size);
    w.value(static_cast<std::uint64_t>(ids.size()));
    w.bytes(ids.data(), ids.size() * sizeof(std::int32_t));
    const std::uint64_t h = w.hash();
    out.write(reinterpret_cast<const char*>(&h), sizeof h);
    out.flush();
    if (!out) {
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      return false;
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, cache, ec);
  if (ec) std::filesystem::remove(tmp, ec);
  return !ec;
}

/// Ids of `text`: every line encoded, each '\n' as `newline`. Chunks of whole lines are encoded
/// in parallel and concatenated in order.
template <class Tok>
std::vector<std::int32_t> encode_lines(ThreadPool& pool, const Tok& tok, std::string_view text,
                                       std::int32_t newline) {
  constexpr std::size_t kChunkBytes = std::size_t{1} << 16;
  std::vector<std::size_t> cuts{0};  // chunk boundaries, just after a '\n'
  while (cuts.back() < text.size()) {
    std::size_t at = std::min(text.size(), cuts.back() + kChunkBytes);
    if (at < text.size()) {
      const std::size_t nl = text.find('\n', at);
      at = nl == std::string_view::npos ? text.size() : nl + 1;
    }
    cuts.push_back(at);
  }
  const std::size_t n_chunks = cuts.size() - 1;
  std::vector<std::vector<std::int32_t>> parts(n_chunks);
  pool.parallel_for(n_chunks, [&](std::size_t c, std::size_t) {
    std::string_view chunk = text.substr(cuts[c], cuts[c + 1] - cuts[c]);
    std::vector<std::int32_t>& out = parts[c];
    while (!chunk.empty()) {
      const std::size_t nl = chunk.find('\n');
      const std::string_view line = chunk.substr(0, nl);
      if (!line.empty()) {
        const std::vector<std::int32_t> ids = tok.encode(line);
        out.insert(out.end(), ids.begin(), ids.end());
      }
      if (nl == std::string_view::npos) break;
      out.push_back(newline);
      chunk.remove_prefix(nl + 1);
    }
  });
  std::size_t total = 0;
  for (const auto& p : parts) total += p.size();
  std::vector<std::int32_t> ids;
  ids.reserve(total);
  for (const auto& p : parts) ids.insert(ids.end(), p.begin(), p.end());
  return ids;
}

}  // namespace detail

/// Tokenises `files` (in order) with `tok`, through the FILE.tokens caches (see the header
/// comment). Tok needs encode(string_view) -> vector<int32_t>, vocab_size(), piece_to_id(),
/// unk_id() and either processor() (moe::Tokenizer) or fingerprint().
template <class Tok>
TokenStream tokenize_corpus(ThreadPool& pool, const Tok& tok,
                            std::span<const std::filesystem::path> files,
                            const CorpusOptions& options = {}) {
  if (files.empty()) throw ConfigError("[corpus] no corpus files given");
  const std::uint64_t tok_hash = tokenizer_fingerprint(tok);
  const std::int32_t newline = newline_id(tok);
  std::vector<std::int32_t> ids;
  std::vector<CorpusFile> infos;
  for (const std::filesystem::path& path : files) {
    const std::string text = detail::read_text_file(path);
    if (text.empty()) {
      throw FormatError("[corpus] '" + path.string() + "' is empty (0 bytes): nothing to train on");
    }
    CorpusFile info;
    info.path = path;
    info.bytes = text.size();
    info.hash = detail::fnv1a(text.data(), text.size());
    const detail::TokensKey key{info.bytes, info.hash, tok_hash,
                                static_cast<std::uint64_t>(tok.vocab_size())};
    const std::filesystem::path cache = detail::tokens_cache_path(path);
    std::vector<std::int32_t> file_ids;
    if (options.use_cache) file_ids = detail::read_tokens_cache(cache, key);
    info.lines = static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n')) +
                 (text.back() == '\n' ? 0 : 1);
    if (!file_ids.empty()) {
      info.from_cache = true;
    } else {
      file_ids = detail::encode_lines(pool, tok, text, newline);
      if (options.use_cache && !file_ids.empty()) {
        info.cache_written = detail::write_tokens_cache(cache, key, file_ids);
      }
    }
    const bool only_newlines = std::all_of(file_ids.begin(), file_ids.end(),
                                           [newline](std::int32_t id) { return id == newline; });
    if (only_newlines) {
      throw FormatError("[corpus] '" + path.string() + "' (" + std::to_string(info.bytes) +
                        " bytes) holds no text, only line breaks");
    }
    info.n_tokens = file_ids.size();
    ids.insert(ids.end(), file_ids.begin(), file_ids.end());
    infos.push_back(std::move(info));
  }
  return TokenStream(std::move(ids), std::move(infos), tok_hash);
}

/// Convenience overload for a braced list of paths.
template <class Tok>
TokenStream tokenize_corpus(ThreadPool& pool, const Tok& tok,
                            std::initializer_list<std::filesystem::path> files,
                            const CorpusOptions& options = {}) {
  const std::vector<std::filesystem::path> v(files);
  return tokenize_corpus(pool, tok, std::span<const std::filesystem::path>(v), options);
}

// ---- batches -----------------------------------------------------------------------------------

/// B windows of T+1 consecutive tokens, row-major [B, T+1]: window b predicts
/// targets(b)[t] = tokens[b][t+1] from inputs(b)[0 .. t].
struct Batch {
  std::size_t batch = 0;
  std::size_t seq = 0;  ///< T
  std::vector<std::int32_t> tokens;

  [[nodiscard]] std::span<const std::int32_t> window(std::size_t b) const noexcept {
    return {tokens.data() + b * (seq + 1), seq + 1};
  }
  [[nodiscard]] std::span<const std::int32_t> inputs(std::size_t b) const noexcept {
    return {tokens.data() + b * (seq + 1), seq};
  }
  [[nodiscard]] std::span<const std::int32_t> targets(std::size_t b) const noexcept {
    return {tokens.data() + b * (seq + 1) + 1, seq};
  }
  [[nodiscard]] std::size_t n_tokens() const noexcept { return batch * seq; }
};

struct BatchConfig {
  std::size_t batch = 8;   ///< B, windows per batch
  std::size_t seq = 256;   ///< T, predicted tokens per window
  std::uint64_t seed = 0;  ///< order and offsets of the windows
};

/// Training batches as a pure function of (seed, step); see the header comment. Holds a view of
/// the ids (they must outlive it). fill() caches one epoch's permutation: use one sampler per
/// thread.
class BatchSampler {
 public:
  BatchSampler(std::span<const std::int32_t> ids, const BatchConfig& config)
      : ids_(ids), cfg_(config) {
    check_config(cfg_.batch > 0 && cfg_.seq > 0, "corpus", "batch and seq must be > 0");
    const std::size_t n = ids_.size();
    if (n < cfg_.seq + 1) {
      throw ConfigError(
          "[corpus] the training stream has " + std::to_string(n) +
          " tokens, fewer than one window of seq + 1 = " + std::to_string(cfg_.seq + 1));
    }
    // One window fewer than fits when possible, so that the start can move by up to a window.
    const std::size_t fit = (n - 1) / cfg_.seq;
    n_windows_ = fit >= 2 ? fit - 1 : 1;
    slack_ = n - 1 - n_windows_ * cfg_.seq;
  }

  [[nodiscard]] const BatchConfig& config() const noexcept { return cfg_; }
  /// Windows per epoch.
  [[nodiscard]] std::size_t n_windows() const noexcept { return n_windows_; }
  /// Epochs completed after `steps` batches (fractional).
  [[nodiscard]] double epochs(std::uint64_t steps) const noexcept {
    return static_cast<double>(steps) * static_cast<double>(cfg_.batch) /
           static_cast<double>(n_windows_);
  }

  /// First token of window `w` of epoch `e` in the stream.
  [[nodiscard]] std::size_t window_start(std::uint64_t epoch, std::size_t w) const noexcept {
    const std::size_t shift = static_cast<std::size_t>(detail::mix(cfg_.seed, epoch, 1) %
                                                       (static_cast<std::uint64_t>(slack_) + 1));
    return shift + w * cfg_.seq;
  }

  /// Batch number `step` (any non-negative integer) into `out` (allocates only the first time).
  void fill(std::uint64_t step, Batch& out) {
    const std::size_t B = cfg_.batch, T = cfg_.seq;
    out.batch = B;
    out.seq = T;
    out.tokens.resize(B * (T + 1));
    for (std::size_t b = 0; b < B; ++b) {
      const std::uint64_t g = step * B + b;  // position in the sequence of windows
      const std::uint64_t epoch = g / n_windows_;
      const std::size_t w = order(epoch)[static_cast<std::size_t>(g % n_windows_)];
      const std::int32_t* src = ids_.data() + window_start(epoch, w);
      std::copy(src, src + T + 1, out.tokens.begin() + static_cast<std::ptrdiff_t>(b * (T + 1)));
    }
  }
  [[nodiscard]] Batch batch(std::uint64_t step) {
    Batch b;
    fill(step, b);
    return b;
  }

 private:
  /// The windows of `epoch` in visiting order (Fisher-Yates with mix(seed, epoch, i)).
  const std::vector<std::uint32_t>& order(std::uint64_t epoch) {
    if (perm_epoch_ == epoch && !perm_.empty()) return perm_;
    perm_.resize(n_windows_);
    for (std::size_t i = 0; i < n_windows_; ++i) perm_[i] = static_cast<std::uint32_t>(i);
    for (std::size_t i = n_windows_; i > 1; --i) {
      const std::size_t j = static_cast<std::size_t>(detail::mix(cfg_.seed, epoch, 2 + i) % i);
      std::swap(perm_[i - 1], perm_[j]);
    }
    perm_epoch_ = epoch;
    return perm_;
  }

  std::span<const std::int32_t> ids_;
  BatchConfig cfg_;
  std::size_t n_windows_ = 0;
  std::size_t slack_ = 0;
  std::vector<std::uint32_t> perm_;
  std::uint64_t perm_epoch_ = 0;
};

/// Up to `max_windows` non-overlapping windows of seq + 1 tokens from `ids`, evenly spaced over
/// the stream (all of them when fewer fit). ConfigError when not even one fits.
inline Batch validation_windows(std::span<const std::int32_t> ids, std::size_t seq,
                                std::size_t max_windows) {
  check_config(seq > 0 && max_windows > 0, "corpus", "seq and max_windows must be > 0");
  if (ids.size() < seq + 1) {
    throw ConfigError("[corpus] the validation stream has " + std::to_string(ids.size()) +
                      " tokens, fewer than one window of seq + 1 = " + std::to_string(seq + 1));
  }
  const std::size_t fit = (ids.size() - 1) / seq;
  const std::size_t n = std::min(fit, max_windows);
  Batch out;
  out.batch = n;
  out.seq = seq;
  out.tokens.resize(n * (seq + 1));
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t w = i * fit / n;
    std::copy_n(ids.data() + w * seq, seq + 1,
                out.tokens.begin() + static_cast<std::ptrdiff_t>(i * (seq + 1)));
  }
  return out;
}

}  // namespace moe
