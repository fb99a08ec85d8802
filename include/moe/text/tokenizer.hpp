// moe/text/tokenizer.hpp: a thin wrapper over the SentencePiece library (optional target).
//
// Link `moe::tokenizer` to use this header: it needs libsentencepiece (Debian
// `libsentencepiece-dev`, pkg-config `sentencepiece`). The library core never includes it.
//
//   moe::Tokenizer tok("tokenizer.model");          // IoError / FormatError naming the path
//   std::vector<std::int32_t> ids = tok.encode("The answer to life");  // no BOS, no EOS
//   std::string text = tok.decode(ids);             // TokenError on an id outside the vocab
//
//   moe::DecodeStream out = tok.decode_stream();    // streaming generated tokens to stdout
//   for (std::int32_t id : generated) std::cout << out.push(id) << std::flush;
//   std::cout << out.finish();                      // the pieces concatenate to decode(generated)
//
// No BOS is added by encode(): Grok-1's reference runner (run.py) encodes the prompt with
// `tokenizer.encode(prompt)` and feeds exactly those ids. Add bos_id() yourself if a model wants
// it.
//
// Why a stream decoder: decoding generated tokens one at a time and concatenating the results is
// wrong for SentencePiece. (1) The first word piece of a text carries the dummy-prefix "▁", which
// decode() removes, so per-token decoding drops every space ("▁The" "▁answer" -> "Theanswer").
// (2) With byte fallback a character outside the vocabulary is spelled as byte pieces
// (<0xF0><0x9F><0x98><0x80> is one emoji); decoding them one by one prints four U+FFFD
// replacement characters. DecodeStream decodes a short window of recent tokens with the library
// itself and prints only the text that can no longer change; trailing byte pieces that may still
// complete a UTF-8 character are held back. Its output concatenates exactly to decode(all ids).
//
// Thread safety: a Tokenizer is immutable after construction. Its const member functions may be
// called from any number of threads at once (SentencePiece's Encode/Decode are const and keep no
// mutable state; google/sentencepiece#207, #657). Copies share the loaded model. A DecodeStream
// is a per-stream state machine: use each one from one thread at a time.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <sys/stat.h>
#include <type_traits>
#include <utility>
#include <vector>

#include <sentencepiece_processor.h>

#include <moe/config.hpp>
#include <moe/core/error.hpp>

namespace moe {

static_assert(std::is_same_v<int, std::int32_t>,
              "SentencePiece uses int token ids; moe assumes int is int32_t");

class DecodeStream;

/// A loaded SentencePiece model (BPE or unigram; Grok-1's tokenizer.model, the demo tokenizer).
/// Cheap to copy (copies share the immutable model); const member functions are thread-safe.
class Tokenizer {
 public:
  /// Loads a SentencePiece `.model` file. Throws IoError ("[tokenizer] cannot read '<path>': ...")
  /// when the file cannot be opened or read, FormatError ("[tokenizer] '<path>' is not a valid
  /// SentencePiece model: ...") when its content is not a model.
  explicit Tokenizer(const std::string& model_path) {
    load(read_file(model_path), "'" + model_path + "'");
    impl_->path = model_path;
  }

  /// Loads a model from its serialized bytes (the content of a .model file). `name` is used in
  /// error messages. Throws FormatError as the constructor does.
  static Tokenizer from_serialized(std::string_view bytes, std::string_view name = "<memory>") {
    Tokenizer t;
    t.load(bytes, std::string(name));
    t.impl_->path = std::string(name);
    return t;
  }

  /// Token ids of `text` (UTF-8; invalid bytes become U+FFFD as SentencePiece does). No BOS and
  /// no EOS are added. The empty string gives no ids.
  [[nodiscard]] std::vector<std::int32_t> encode(std::string_view text) const {
    std::vector<std::int32_t> ids;
    check_status(impl_->sp.Encode(text, &ids), "encode");
    return ids;
  }

  /// The pieces of `text` as strings (e.g. "▁The", "<0xF0>"): encode() without the id lookup.
  [[nodiscard]] std::vector<std::string> encode_pieces(std::string_view text) const {
    std::vector<std::string> pieces;
    check_status(impl_->sp.Encode(text, &pieces), "encode");
    return pieces;
  }

  /// The text of a whole id sequence, exactly as SentencePiece decodes it: control ids (PAD,
  /// BOS, EOS) are invisible, runs of byte pieces are joined into UTF-8 (invalid bytes give
  /// U+FFFD), the leading "▁" of the first piece is dropped. Throws TokenError, naming the id,
  /// its position and the vocabulary size, for an id outside [0, vocab_size()).
  [[nodiscard]] std::string decode(std::span<const std::int32_t> ids) const {
    check_ids(ids);
    return decode_unchecked(ids);
  }

  /// A stream decoder for generated tokens (see DecodeStream). It shares this model.
  [[nodiscard]] DecodeStream decode_stream() const;

  /// Throws TokenError unless every id is in [0, vocab_size()).
  void check_ids(std::span<const std::int32_t> ids) const {
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] >= impl_->vocab_size) throw_bad_id(ids[i], i);
    }
  }

  /// Number of pieces; valid ids are [0, vocab_size()). 131072 for Grok-1.
  [[nodiscard]] std::int32_t vocab_size() const noexcept { return impl_->vocab_size; }
  /// Special ids as the model defines them, -1 when it has none. Grok-1: bos 1, eos 2, pad 0,
  /// unk 3 (the demo tokenizer uses the same ids).
  [[nodiscard]] std::int32_t bos_id() const noexcept { return impl_->bos; }
  [[nodiscard]] std::int32_t eos_id() const noexcept { return impl_->eos; }
  [[nodiscard]] std::int32_t pad_id() const noexcept { return impl_->pad; }
  [[nodiscard]] std::int32_t unk_id() const noexcept { return impl_->unk; }

  /// The raw piece of an id ("▁The", "<0x0A>", "[EOS]"); "▁" is SentencePiece's space symbol.
  /// Throws TokenError for an id outside the vocabulary.
  [[nodiscard]] const std::string& id_to_piece(std::int32_t id) const {
    check_id(id);
    return impl_->sp.IdToPiece(id);
  }

  /// The id of a piece, or unk_id() when the vocabulary has no such piece.
  [[nodiscard]] std::int32_t piece_to_id(std::string_view piece) const {
    return impl_->sp.PieceToId(piece);
  }

  /// Piece types. Each throws TokenError for an id outside the vocabulary.
  [[nodiscard]] bool is_control(std::int32_t id) const {
    check_id(id);
    return impl_->sp.IsControl(id);
  }
  [[nodiscard]] bool is_byte(std::int32_t id) const {
    check_id(id);
    return impl_->sp.IsByte(id);
  }
  [[nodiscard]] bool is_unknown(std::int32_t id) const {
    check_id(id);
    return impl_->sp.IsUnknown(id);
  }

  /// The path (or name) the model was loaded from.
  [[nodiscard]] const std::string& path() const noexcept { return impl_->path; }

  /// The underlying SentencePiece processor, for anything this wrapper does not cover.
  [[nodiscard]] const sentencepiece::SentencePieceProcessor& processor() const noexcept {
    return impl_->sp;
  }

 private:
  friend class DecodeStream;

  struct Impl {
    sentencepiece::SentencePieceProcessor sp;
    std::string path;
    std::int32_t vocab_size = 0;
    std::int32_t bos = -1, eos = -1, pad = -1, unk = -1;
    std::int32_t sentinel = -1;  // DecodeStream's window start: a piece with non-empty text
    std::string sentinel_text;   // decode({sentinel})

    // The byte of a byte piece ("<0xAB>" -> 0xAB), -1 for any other piece. `id` is in range.
    [[nodiscard]] int byte_value(std::int32_t id) const {
      if (!sp.IsByte(id)) return -1;
      const std::string& p = sp.IdToPiece(id);
      if (p.size() != 6 || p.compare(0, 3, "<0x") != 0 || p[5] != '>') return -1;
      const int hi = hex_digit(p[3]), lo = hex_digit(p[4]);
      return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
    }

    static int hex_digit(char c) noexcept {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return -1;
    }
  };

  Tokenizer() = default;

  static std::string read_file(const std::string& path) {
    // Opened with the C++ stream but checked with stat() first: an ifstream opens a directory
    // without error on Linux and only fails on the first read, with no errno to report.
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      throw IoError("[tokenizer] cannot read '" + path + "': " + std::strerror(errno));
    }
    if (!S_ISREG(st.st_mode)) {
      throw IoError("[tokenizer] cannot read '" + path + "': not a regular file");
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) throw IoError("[tokenizer] cannot read '" + path + "': " + std::strerror(errno));
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) throw IoError("[tokenizer] cannot read '" + path + "': read failed");
    return bytes;
  }

  void load(std::string_view bytes, const std::string& what) {
    auto impl = std::make_shared<Impl>();
    const auto fail = [&](const std::string& reason) {
      return FormatError("[tokenizer] " + what + " is not a valid SentencePiece model (" +
                         std::to_string(bytes.size()) + " bytes): " + reason);
    };
    if (bytes.empty()) throw fail("it is empty");
    const auto status = impl->sp.LoadFromSerializedProto(bytes);
    if (!status.ok()) {
      std::string reason = status.error_message();
      if (reason.find("ParseFromArray") != std::string::npos) {
        reason = "its bytes do not parse as a SentencePiece ModelProto (protobuf)";
      }
      throw fail(reason);
    }
    impl->vocab_size = impl->sp.GetPieceSize();
    if (impl->vocab_size <= 0) throw fail("it has no pieces");
    impl->bos = impl->sp.bos_id();
    impl->eos = impl->sp.eos_id();
    impl->pad = impl->sp.pad_id();
    impl->unk = impl->sp.unk_id();
    // The stream decoder's sentinel: the first ordinary piece whose text is non-empty on its own
    // (Grok-1: id 4, "\n"). Found in the first few ids of any real model.
    for (std::int32_t id = 0; id < impl->vocab_size; ++id) {
      if (impl->sp.IsControl(id) || impl->sp.IsByte(id) || impl->sp.IsUnknown(id) ||
          impl->sp.IsUnused(id)) {
        continue;
      }
      std::string text;
      if (!impl->sp.Decode(std::vector<int>{id}, &text).ok() || text.empty()) continue;
      impl->sentinel = id;
      impl->sentinel_text = std::move(text);
      break;
    }
    impl_ = std::move(impl);
  }

  void check_status(const sentencepiece::util::Status& status, const char* op) const {
    if (!status.ok()) {
      throw Error("[tokenizer] " + std::string(op) + " failed with model '" + impl_->path +
                  "': " + status.ToString());
    }
  }

  void check_id(std::int32_t id) const {
    if (id < 0 || id >= impl_->vocab_size) throw_bad_id(id, std::size_t(-1));
  }

  [[noreturn]] void throw_bad_id(std::int32_t id, std::size_t position) const {
    std::string msg = "[tokenizer] token id " + std::to_string(id);
    if (position != std::size_t(-1)) msg += " at position " + std::to_string(position);
    msg += " is outside the vocabulary [0, " + std::to_string(impl_->vocab_size) + ") of '" +
           impl_->path + "'";
    throw TokenError(msg);
  }

  // Ids already checked. SentencePiece itself does not range-check ids (it indexes its piece
  // table directly), so every public entry point checks first.
  std::string decode_unchecked(std::span<const std::int32_t> ids) const {
    std::string text;
    check_status(impl_->sp.Decode(std::vector<int>(ids.begin(), ids.end()), &text), "decode");
    return text;
  }

  std::shared_ptr<Impl> impl_;
};

/// Turns a sequence of generated token ids, pushed one at a time, into text that can be written
/// out immediately. The concatenation of every push() and the final finish() equals
/// Tokenizer::decode() of all pushed ids (tests check this on random id sequences with byte,
/// control, unknown and space pieces, for both the Grok-1 and the demo tokenizer).
///
/// How: SentencePiece's decode is a concatenation of per-piece texts with two exceptions, and
/// the stream handles both by decoding a small window with the library itself:
/// - The first non-control piece of a text loses its leading "▁". Until the text printed so far
///   is non-empty, the window holds every id since the start (control ids that arrive with
///   nothing pending are left out: they decode to nothing and never count as the first piece).
///   After that, the window starts with a fixed "sentinel" piece whose own text is non-empty
///   (for Grok-1 the piece "\n"), so later pieces are never stripped, and the sentinel's text
///   is subtracted.
/// - Runs of byte pieces are joined into UTF-8 characters. Trailing byte pieces that may still
///   complete a character (a lead byte 0xC0-0xF7 followed by too few continuation bytes) are
///   held back until it completes or another piece arrives; the window keeps only those.
/// So each push() decodes at most about five ids: streaming costs O(1) per token.
///
/// Keeps its tokenizer's model alive (shared). Not thread-safe: one stream per thread/sequence.
class DecodeStream {
 public:
  explicit DecodeStream(Tokenizer tokenizer) : tok_(std::move(tokenizer)) {}

  /// Appends one id; returns the text that became final (often one word, possibly empty).
  /// Throws TokenError for an id outside the vocabulary (the stream is then unchanged).
  std::string push(std::int32_t id) {
    tok_.check_id(id);
    const auto& impl = *tok_.impl_;
    if (!started_ && printed_ == window_.size() && impl.sp.IsControl(id)) return {};
    window_.push_back(id);
    const std::size_t ready = window_.size() - incomplete_utf8_tail();
    if (ready <= printed_) return {};
    std::string text = tok_.decode_unchecked(std::span(window_.data(), ready));
    std::string out = take_new_text(text);
    printed_ = ready;
    printed_text_ = std::move(text);
    if (!started_ && !printed_text_.empty() && impl.sentinel >= 0) started_ = true;
    if (started_) {
      // Everything before window_[printed_] is final, and window_[printed_] (if any) is the lead
      // byte of an incomplete character, where a byte run can restart: replace the printed part
      // by the sentinel.
      window_.erase(window_.begin(), window_.begin() + static_cast<std::ptrdiff_t>(printed_));
      window_.insert(window_.begin(), impl.sentinel);
      printed_ = 1;
      printed_text_ = impl.sentinel_text;
    }
    return out;
  }

  /// Ends the text: returns what push() held back (an incomplete UTF-8 character decodes as
  /// U+FFFD, exactly as decode() would) and resets the stream for a new text.
  std::string finish() {
    std::string out;
    if (window_.size() > printed_) out = take_new_text(tok_.decode_unchecked(window_));
    reset();
    return out;
  }

  /// Forgets everything pushed so far: the next id starts a new text.
  void reset() noexcept {
    window_.clear();
    printed_ = 0;
    printed_text_.clear();
    started_ = false;
  }

  /// Number of pushed ids whose text has not been returned yet (held-back byte pieces).
  [[nodiscard]] std::size_t pending() const noexcept { return window_.size() - printed_; }

 private:
  // The part of `text` (the decode of the window up to a later id) past what was printed.
  // SentencePiece's decode is prefix-stable once incomplete byte runs are held back; if a
  // future version broke that, print from the first difference rather than repeat text.
  std::string take_new_text(const std::string& text) const {
    std::size_t common = 0;
    const std::size_t n = std::min(text.size(), printed_text_.size());
    while (common < n && text[common] == printed_text_[common]) ++common;
    MOE_ASSERT(common == printed_text_.size());
    return text.substr(common);
  }

  // How many trailing ids are byte pieces that may still become one UTF-8 character: a lead
  // byte 0xC0-0xF7 followed by fewer continuation bytes (0x80-0xBF) than it announces. Read
  // leniently (e.g. 0xC0 and 0xE0 0x80 can never complete): holding back too much only delays
  // text, since SentencePiece itself decides what the bytes become once they are decoded.
  std::size_t incomplete_utf8_tail() const {
    std::size_t run = 0;
    while (run < 3 && window_.size() - run > printed_) {
      const int b = tok_.impl_->byte_value(window_[window_.size() - 1 - run]);
      if (b < 0) return 0;  // not a byte piece
      ++run;
      if ((b & 0xC0) == 0x80) continue;  // continuation byte: look for its lead
      const std::size_t need = b >= 0xF8 ? 0 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1;
      return run < need ? run : 0;
    }
    return 0;
  }

  Tokenizer tok_;                     // shares the model
  std::vector<std::int32_t> window_;  // ids since the start, or the sentinel + held bytes + new
  std::size_t printed_ = 0;           // window_[0, printed_) has been printed
  std::string printed_text_;          // decode(window_[0, printed_))
  bool started_ = false;              // printed text is non-empty: the window uses the sentinel
};

inline DecodeStream Tokenizer::decode_stream() const {
  return DecodeStream(*this);
}

}  // namespace moe
