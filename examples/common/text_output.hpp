// The runners' terminal output (grok1, moe-run): progress and summary lines on stderr (Log), and
// the prompt and the generated text streamed to stdout as it is decoded (TextOutput), with the
// text kept for --json. Without SentencePiece the runners print token ids instead of text.
#pragma once

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>

#if defined(MOE_HAVE_SENTENCEPIECE)
#include <moe/text/tokenizer.hpp>
#endif

namespace examples {

/// Progress and summary lines on stderr; silent with --json.
struct Log {
  bool quiet = false;
  bool tty = false;
  template <class... Xs>
  void operator()(const char* fmt, Xs... xs) const {
    if (!quiet) std::fprintf(stderr, fmt, xs...);
  }
};

/// The runner's tokenizer, if it has one (an empty type in a build without SentencePiece).
#if defined(MOE_HAVE_SENTENCEPIECE)
using Tokenizer = std::optional<moe::Tokenizer>;
#else
struct Tokenizer {};
#endif

/// Streams the prompt and the generated text (or ids, without a tokenizer) to stdout and keeps
/// the text for --json.
class TextOutput {
 public:
  TextOutput([[maybe_unused]] const Tokenizer& tok, bool quiet) : quiet_(quiet) {
#if defined(MOE_HAVE_SENTENCEPIECE)
    if (tok) stream_.emplace(tok->decode_stream());
#endif
  }
  /// The prompt as given (the continuation follows right after it); nothing for token ids.
  void prompt(const std::optional<std::string>& text) {
    if (!quiet_ && text) write(*text);
  }
  void token(std::int32_t id) {
#if defined(MOE_HAVE_SENTENCEPIECE)
    if (stream_) {
      const std::string piece = stream_->push(id);
      text_ += piece;
      if (!quiet_) write(piece);
      return;
    }
#endif
    if (!quiet_) write(std::to_string(id) + " ");
  }
  void finish() {
#if defined(MOE_HAVE_SENTENCEPIECE)
    if (stream_) {
      const std::string rest = stream_->finish();
      text_ += rest;
      if (!quiet_) write(rest);
    }
#endif
    if (!quiet_) write("\n");
  }
  [[nodiscard]] bool has_text() const noexcept {
#if defined(MOE_HAVE_SENTENCEPIECE)
    return stream_.has_value();
#else
    return false;
#endif
  }
  [[nodiscard]] const std::string& text() const noexcept {
    return text_;
  }

 private:
  static void write(const std::string& s) {
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fflush(stdout);
  }
  bool quiet_;
  std::string text_;
#if defined(MOE_HAVE_SENTENCEPIECE)
  std::optional<moe::DecodeStream> stream_;
#endif
};

}  // namespace examples
