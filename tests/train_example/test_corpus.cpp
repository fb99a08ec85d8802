// moe/text/corpus.hpp: tokenising corpora (line by line, in parallel, exactly reversible with the
// get_corpus tokenizer), the FILE.tokens cache and its invalidation, training batches as a pure
// function of (seed, step), and the fixed validation windows.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include <moe/core/thread_pool.hpp>
#include <moe/text/corpus.hpp>
#include <moe/text/tokenizer.hpp>

namespace fs = std::filesystem;

namespace {

fs::path fixture(const std::string& name) {
  const fs::path p = fs::path(MOE_TRAIN_FIXTURES) / name;
  if (!fs::exists(p)) {
    FAIL("fixture '" << p.string() << "' is missing: run the tests through ctest");
  }
  return p;
}

fs::path scratch(const std::string& name) {
  const fs::path p = fs::path(MOE_TRAIN_FIXTURES) / "scratch" / name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void write(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f << s;
}

/// A tokenizer with one piece per byte value plus a newline piece: for the pure-logic tests.
struct ByteTokenizer {
  bool with_newline = true;
  std::vector<std::int32_t> encode(std::string_view s) const {
    std::vector<std::int32_t> ids;
    for (unsigned char c : s) ids.push_back(1 + c);
    return ids;
  }
  std::int32_t vocab_size() const { return 258; }
  std::int32_t unk_id() const { return 0; }
  std::int32_t piece_to_id(std::string_view p) const { return with_newline && p == "\n" ? 257 : 0; }
  std::uint64_t fingerprint() const { return with_newline ? 7 : 8; }
};

std::vector<std::int32_t> iota_ids(std::size_t n) {
  std::vector<std::int32_t> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::int32_t>(i % 1000003);
  return v;
}

}  // namespace

TEST_CASE("corpus: lines are encoded one by one, each followed by the newline piece", "[corpus]") {
  const moe::Tokenizer tok(fixture("tokenizer.model").string());
  const std::int32_t nl = moe::newline_id(tok);
  CHECK(tok.id_to_piece(nl) == "\n");
  const fs::path dir = scratch("lines");
  // A blank line, leading spaces, non-ASCII, and a last line without a newline.
  const std::string text = "Emma walked to Hartfield.\n\n  Miss Bates was silent.\nthe café 1815";
  write(dir / "a.txt", text);
  moe::ThreadPool pool(2);
  const moe::TokenStream s = moe::tokenize_corpus(pool, tok, {dir / "a.txt"});
  std::vector<std::int32_t> want;
  for (const char* line : {"Emma walked to Hartfield.", "", "  Miss Bates was silent."}) {
    const auto ids = tok.encode(line);
    want.insert(want.end(), ids.begin(), ids.end());
    want.push_back(nl);
  }
  const auto last = tok.encode("the café 1815");
  want.insert(want.end(), last.begin(), last.end());
  CHECK(std::vector<std::int32_t>(s.ids().begin(), s.ids().end()) == want);
  // With no dummy prefix and "\n" as a piece, the ids decode to the text exactly.
  CHECK(tok.decode(s.ids()) == text);
  REQUIRE(s.files().size() == 1);
  CHECK(s.files()[0].lines == 4);
  CHECK(s.files()[0].bytes == text.size());
  CHECK(s.files()[0].n_tokens == want.size());
}

TEST_CASE("corpus: the whole training text round-trips, for any thread count", "[corpus]") {
  const moe::Tokenizer tok(fixture("tokenizer.model").string());
  const fs::path dir = scratch("roundtrip");
  fs::copy_file(fixture("train.txt"), dir / "train.txt");
  fs::copy_file(fixture("val.txt"), dir / "val.txt");
  const std::string text = slurp(dir / "train.txt");
  REQUIRE(text.size() > (std::size_t{1} << 16));  // several parallel chunks
  moe::CorpusOptions no_cache;
  no_cache.use_cache = false;
  moe::ThreadPool one(1), three(3);
  const moe::TokenStream a = moe::tokenize_corpus(one, tok, {dir / "train.txt"}, no_cache);
  const moe::TokenStream b = moe::tokenize_corpus(three, tok, {dir / "train.txt"}, no_cache);
  CHECK(std::equal(a.ids().begin(), a.ids().end(), b.ids().begin(), b.ids().end()));
  CHECK(tok.decode(a.ids()) == text);
  CHECK(!fs::exists(dir / "train.txt.tokens"));  // use_cache = false writes nothing

  // Two files: the streams are concatenated in the order given; the checksum follows the texts.
  const moe::TokenStream both =
      moe::tokenize_corpus(three, tok, {dir / "train.txt", dir / "val.txt"}, no_cache);
  const moe::TokenStream val = moe::tokenize_corpus(three, tok, {dir / "val.txt"}, no_cache);
  CHECK(both.size() == a.size() + val.size());
  CHECK(std::equal(val.ids().begin(), val.ids().end(), both.ids().begin() + a.size()));
  CHECK(tok.decode(both.ids()) == text + slurp(dir / "val.txt"));
  CHECK(both.text_hash() != a.text_hash());
  CHECK(a.tokenizer_hash() == moe::tokenizer_fingerprint(tok));
}

TEST_CASE("corpus: FILE.tokens is reused, and rebuilt when the text or tokenizer changes",
          "[corpus]") {
  const moe::Tokenizer tok(fixture("tokenizer.model").string());
  const moe::Tokenizer other(std::string(MOE_SOURCE_DIR) + "/examples/data/demo_tokenizer.model");
  const fs::path dir = scratch("cache");
  const fs::path file = dir / "c.txt", cache = dir / "c.txt.tokens";
  write(file, "Emma walked to Hartfield.\nJane wrote to a letter.\n");
  moe::ThreadPool pool(2);

  const moe::TokenStream first = moe::tokenize_corpus(pool, tok, {file});
  CHECK(first.files()[0].cache_written);
  CHECK(!first.files()[0].from_cache);
  REQUIRE(fs::exists(cache));
  std::size_t entries = 0;
  for (const auto& e : fs::directory_iterator(dir)) entries += e.is_regular_file() ? 1 : 0;
  CHECK(entries == 2);  // c.txt and c.txt.tokens: no temporary file left

  const moe::TokenStream again = moe::tokenize_corpus(pool, tok, {file});
  CHECK(again.files()[0].from_cache);
  CHECK(!again.files()[0].cache_written);
  CHECK(std::equal(first.ids().begin(), first.ids().end(), again.ids().begin(), again.ids().end()));

  SECTION("the text changes (same size)") {
    write(file, "Jane walked to Hartfield.\nEmma wrote to a letter.\n");
    const moe::TokenStream s = moe::tokenize_corpus(pool, tok, {file});
    CHECK(!s.files()[0].from_cache);
    CHECK(s.files()[0].cache_written);
    CHECK(tok.decode(s.ids()) == slurp(file));
    CHECK(s.text_hash() != first.text_hash());
  }
  SECTION("another tokenizer") {
    const moe::TokenStream s = moe::tokenize_corpus(pool, other, {file});
    CHECK(!s.files()[0].from_cache);
    CHECK(s.tokenizer_hash() != first.tokenizer_hash());
    const moe::TokenStream back = moe::tokenize_corpus(pool, tok, {file});
    CHECK(!back.files()[0].from_cache);  // the cache now belongs to the other tokenizer
    CHECK(std::equal(back.ids().begin(), back.ids().end(), first.ids().begin(), first.ids().end()));
  }
  SECTION("a corrupt or truncated cache is rebuilt, not trusted") {
    std::string bytes = slurp(cache);
    bytes[bytes.size() / 2] ^= 0x01;
    write(cache, bytes);
    const moe::TokenStream s = moe::tokenize_corpus(pool, tok, {file});
    CHECK(!s.files()[0].from_cache);
    CHECK(std::equal(s.ids().begin(), s.ids().end(), first.ids().begin(), first.ids().end()));
    write(cache, bytes.substr(0, 20));
    CHECK(!moe::tokenize_corpus(pool, tok, {file}).files()[0].from_cache);
    CHECK(moe::tokenize_corpus(pool, tok, {file}).files()[0].from_cache);  // rewritten
  }
}

TEST_CASE("corpus: bad input is a clear error naming the file", "[corpus]") {
  const moe::Tokenizer tok(fixture("tokenizer.model").string());
  const fs::path dir = scratch("errors");
  moe::ThreadPool pool(1);
  CHECK_THROWS_MATCHES(moe::tokenize_corpus(pool, tok, {dir / "missing.txt"}), moe::IoError,
                       Catch::Message("[corpus] cannot read '" + (dir / "missing.txt").string() +
                                      "': No such file or directory"));
  CHECK_THROWS_WITH(moe::tokenize_corpus(pool, tok, {dir}), Catch::Contains("not a regular file"));
  write(dir / "empty.txt", "");
  CHECK_THROWS_MATCHES(moe::tokenize_corpus(pool, tok, {dir / "empty.txt"}), moe::FormatError,
                       Catch::Message("[corpus] '" + (dir / "empty.txt").string() +
                                      "' is empty (0 bytes): nothing to train on"));
  write(dir / "blank.txt", "\n\n\n");
  CHECK_THROWS_WITH(moe::tokenize_corpus(pool, tok, {dir / "blank.txt"}),
                    Catch::Contains("blank.txt") && Catch::Contains("only line breaks"));
  CHECK_THROWS_AS(moe::tokenize_corpus(pool, tok, std::span<const fs::path>{}), moe::ConfigError);
  ByteTokenizer no_newline;
  no_newline.with_newline = false;
  write(dir / "ok.txt", "abc\n");
  CHECK_THROWS_WITH(moe::tokenize_corpus(pool, no_newline, {dir / "ok.txt"}),
                    Catch::Contains("no piece for a line break"));
  // The generic interface: a test tokenizer with fingerprint().
  const moe::TokenStream s = moe::tokenize_corpus(pool, ByteTokenizer{}, {dir / "ok.txt"});
  CHECK(std::vector<std::int32_t>(s.ids().begin(), s.ids().end()) ==
        std::vector<std::int32_t>{1 + 'a', 1 + 'b', 1 + 'c', 257});
}

TEST_CASE("corpus: batch `step` is a pure function of (seed, step)", "[corpus]") {
  const std::vector<std::int32_t> ids = iota_ids(10'058);  // 156 windows of 64
  const moe::BatchConfig cfg{4, 64, 11};
  moe::BatchSampler a(ids, cfg), b(ids, cfg);
  // The same batch whatever was asked before (a resumed run starts in the middle).
  const moe::Batch a5 = a.batch(5), a300 = a.batch(300), a2 = a.batch(2);
  CHECK(b.batch(300).tokens == a300.tokens);
  CHECK(b.batch(2).tokens == a2.tokens);
  CHECK(b.batch(5).tokens == a5.tokens);
  moe::BatchSampler other(ids, {4, 64, 12});
  CHECK(other.batch(5).tokens != a5.tokens);

  // Every window is T+1 consecutive tokens of the stream; inputs and targets are shifted by one.
  REQUIRE(a5.batch == 4);
  REQUIRE(a5.seq == 64);
  for (std::size_t w = 0; w < a5.batch; ++w) {
    const auto win = a5.window(w);
    const std::size_t start = static_cast<std::size_t>(win[0]);
    for (std::size_t t = 0; t <= 64; ++t) CHECK(win[t] == ids[start + t]);
    CHECK(a5.targets(w)[0] == a5.inputs(w)[1]);
    CHECK(a5.inputs(w).size() == 64);
  }

  // One epoch visits every window exactly once; the next epoch moves the window boundaries.
  const std::size_t W = a.n_windows();
  CHECK(W == (10'058 - 1) / 64 - 1);
  REQUIRE(W % 4 == 0);  // whole batches per epoch
  std::set<std::size_t> starts0, starts1;
  for (std::uint64_t step = 0; step < W / 4; ++step) {
    const moe::Batch bt = a.batch(step);
    for (std::size_t w = 0; w < 4; ++w) starts0.insert(static_cast<std::size_t>(bt.window(w)[0]));
  }
  for (std::uint64_t step = W / 4; step < 2 * W / 4; ++step) {
    const moe::Batch bt = a.batch(step);
    for (std::size_t w = 0; w < 4; ++w) starts1.insert(static_cast<std::size_t>(bt.window(w)[0]));
  }
  CHECK(starts0.size() == W);
  CHECK(starts1.size() == W);
  const std::size_t shift0 = *starts0.begin(), shift1 = *starts1.begin();
  for (std::size_t s : starts0) CHECK((s - shift0) % 64 == 0);
  CHECK(shift0 != shift1);  // (a 1-in-65 chance of equality for a given seed: not this one)
  CHECK(*starts0.rbegin() + 65 <= ids.size());
  CHECK(a.epochs(W / 4) == Approx(1.0));
}

TEST_CASE("corpus: tiny streams, a batch larger than an epoch, and too-short streams", "[corpus]") {
  // fit = (n - 1) / T = 1: one window, which may shift by the slack.
  const std::vector<std::int32_t> ids = iota_ids(100);
  moe::BatchSampler one(ids, {3, 64, 1});
  CHECK(one.n_windows() == 1);
  const moe::Batch b = one.batch(0);  // three epochs in one batch
  for (std::size_t w = 0; w < 3; ++w) {
    const std::size_t start = static_cast<std::size_t>(b.window(w)[0]);
    CHECK(start + 65 <= ids.size());
  }
  CHECK_THROWS_WITH(moe::BatchSampler(iota_ids(64), {1, 64, 1}),
                    Catch::Contains("64 tokens") && Catch::Contains("seq + 1 = 65"));
  CHECK_THROWS_AS(moe::BatchSampler(ids, {0, 8, 1}), moe::ConfigError);
}

TEST_CASE("corpus: validation windows are fixed, non-overlapping and evenly spaced", "[corpus]") {
  const std::vector<std::int32_t> ids = iota_ids(1000);
  const moe::Batch all = moe::validation_windows(ids, 32, 100);  // (1000 - 1) / 32 = 31 fit
  CHECK(all.batch == 31);
  for (std::size_t w = 0; w < all.batch; ++w) CHECK(all.window(w)[0] == std::int32_t(w * 32));
  const moe::Batch some = moe::validation_windows(ids, 32, 4);
  CHECK(some.batch == 4);
  const std::int32_t want[4] = {0, 7 * 32, 15 * 32, 23 * 32};  // i * 31 / 4
  for (std::size_t w = 0; w < 4; ++w) CHECK(some.window(w)[0] == want[w]);
  CHECK(moe::validation_windows(ids, 32, 4).tokens == some.tokens);
  CHECK_THROWS_WITH(moe::validation_windows(iota_ids(10), 32, 4),
                    Catch::Contains("validation stream has 10 tokens"));
}
