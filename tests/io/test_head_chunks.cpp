// The Grok-1 embedding read in place (no aligned copy) and the tied head in vocabulary chunks
// (EmbeddingTable::head_chunk_rows), each chunk's pages unmapped after use (grok1::unmap_rows):
// the logits are the same bits as the previous path (an aligned copy of the misaligned table, one
// product), for decode (1 row) and prompt (9 rows) logits and awkward chunk sizes; the released
// chunks are no longer mapped; the residency counts one chunk of the table, not all of it.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <vector>

#include <moe/core/thread_pool.hpp>
#include <moe/models/grok1_loader.hpp>
#include <moe/models/grok1_residency.hpp>
#include <moe/models/weight_residency.hpp>

#include "io_test_util.hpp"

using namespace io_test;

namespace {

/// Logits of `tokens` fed as one prompt (all rows), then of 3 single-token decode steps.
std::vector<float> run(const moe::grok1::Config& c, const moe::grok1::Weights& w) {
  const moe::grok1::Model model = moe::grok1::make_model(c, w);
  moe::ThreadPool pool(2);
  const std::vector<std::int32_t> prompt = {3, 17, 250, 0, 99, 5, 5, 128, 64};
  auto state = model.make_state(prompt.size() + 3, prompt.size());
  std::vector<float> all(prompt.size() * c.vocab_size);
  model.forward(pool, prompt, state, {all.data(), prompt.size(), c.vocab_size});
  std::vector<float> logits(c.vocab_size);
  for (std::int32_t t : {7, 200, 1}) {
    const std::int32_t in[1] = {t};
    model.forward(pool, in, state, {logits.data(), 1, c.vocab_size});
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return all;
}

/// Bytes of [offset, offset + length) of `f` mapped in this process (/proc/self/pagemap).
std::uint64_t mapped_bytes(const moe::io::MappedFile& f, std::size_t offset, std::size_t length) {
  moe::detail::PagemapReader pm;
  const std::size_t page = moe::io::detail::page_size();
  std::uint64_t n = 0;
  for (std::size_t off = offset / page * page; off < offset + length; off += page) {
    n += pm.present(f.data() + off) == 1 ? page : 0;
  }
  return n;
}

}  // namespace

TEST_CASE("head chunks: the in-place embedding and the chunked head give the same logits",
          "[io][residency]") {
  const auto ck = moe::grok1::Checkpoint::open(fixture("residency"));
  const moe::grok1::Config& c = ck.config();
  const moe::grok1::TensorFile& emb = ck.file(ck.index().of_global(0));
  REQUIRE_FALSE(emb.weight.aligned());  // the release's layout: the case that used to be copied
  REQUIRE(c.vocab_size >= 250);

  // The previous path: an aligned copy of the table, one product.
  moe::grok1::Weights copied = moe::grok1::bind_weights(ck);
  copied.embedding = ck.embedding();
  REQUIRE(ck.copied_bytes() >= emb.weight.nbytes);
  const std::vector<float> want = run(c, copied);

  // In place, in one product: nothing of the table is copied.
  const moe::grok1::Weights in_place = moe::grok1::bind_weights(ck);
  CHECK(static_cast<const void*>(in_place.embedding.data) == emb.weight.data);
  CHECK(in_place.embedding.head_chunk_rows == 0);
  CHECK(run(c, in_place) == want);

  const std::size_t row_bytes = c.d_model * sizeof(float);
  for (std::size_t rows : {1, 7, 16, 64, 100, 255, 256, 1000}) {
    INFO("chunk of " << rows << " rows");
    moe::grok1::BindOptions o;
    o.release_head = true;
    o.head_chunk_bytes = rows * row_bytes;
    const moe::grok1::Weights w = moe::grok1::bind_weights(ck, o);
    CHECK(w.embedding.head_chunk_rows == rows);
    CHECK(w.embedding.after_head_chunk == &moe::grok1::unmap_rows);
    CHECK(run(c, w) == want);  // bit for bit
  }
}

TEST_CASE("head chunks: each chunk is unmapped after the head has read it", "[io][residency]") {
  // A 32 MiB f32 table at byte offset 151 of a file (as the release stores its embedding): large
  // against the page cache's folios (up to 2 MiB, mapped whole by a fault) and the fault-around
  // window, which a fault may map beyond the chunk being read.
  constexpr std::size_t kV = 4096, kD = 2048, kOffset = 151, kChunkRows = 1024;  // 8 MiB chunks
  const fs::path file = scratch("head_chunks") / "table.bin";
  std::vector<std::byte> bytes(kOffset + kV * kD * sizeof(float));
  for (std::size_t i = 0; i < kV * kD; ++i) {
    const float x = static_cast<float>(i % 1013) / 1013.0f - 0.5f;
    std::memcpy(bytes.data() + kOffset + i * sizeof(float), &x, sizeof x);
  }
  write_file(file, bytes);
  const moe::io::MappedFile map(file);
  const std::size_t n = kV * kD * sizeof(float);
  moe::ThreadPool pool(2);
  std::vector<float> h(kD, 0.25f), want(kV), got(kV);
  moe::EmbeddingTable table = moe::EmbeddingTable::f32(map.data() + kOffset, kV, kD);
  moe::tied_logits(pool, {h.data(), 1, kD}, table, {want.data(), 1, kV});
  CHECK(mapped_bytes(map, kOffset, n) >= n);  // without release, the whole table stays mapped
  for (bool release : {false, true}) {
    INFO("release " << release);
    table.head_chunk_rows = kChunkRows;
    table.after_head_chunk = release ? &moe::grok1::unmap_rows : nullptr;
    map.advise(moe::io::Advice::kDontNeed);
    REQUIRE(mapped_bytes(map, kOffset, n) == 0);
    moe::tied_logits(pool, {h.data(), 1, kD}, table, {got.data(), 1, kV});
    CHECK(got == want);
    const std::uint64_t mapped = mapped_bytes(map, kOffset, n);
    if (release) {
      CHECK(mapped <= (std::uint64_t{4} << 20));  // what faults mapped around the last chunk
    } else {
      CHECK(mapped >= n);
    }
  }
  fs::remove(file);
}

TEST_CASE("head chunks: the residency counts one chunk of the table, not a copy of it",
          "[io][residency]") {
  const auto ck = moe::grok1::Checkpoint::open(fixture("residency"));
  const moe::ResidencyPlan plan = moe::grok1::residency_plan(ck);
  const moe::grok1::TensorFile& emb = ck.file(ck.index().of_global(0));
  REQUIRE(plan.chunked.size() == 1);
  CHECK(plan.chunked[0].length == emb.weight.nbytes);
  CHECK(plan.chunk_bytes == moe::grok1::BindOptions{}.head_chunk_bytes);
  // Only what bind_weights copies: misaligned norms and routers, never the table or the scales.
  const moe::grok1::Weights w = moe::grok1::bind_weights(ck);
  CHECK(plan.copied_bytes == ck.copied_bytes());
  CHECK(ck.copied_bytes() < emb.weight.nbytes);
}
