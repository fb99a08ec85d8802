// EmbeddingTable: exact row lookups per dtype, tables read in place (f32 at an odd byte offset,
// bf16, int8 with scales), the tied head over each, and the validation messages.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include <moe/core/bf16.hpp>
#include <moe/models/grok1.hpp>
#include <moe/ops/embedding.hpp>

#include "common/test_util.hpp"
#include "model/model_util.hpp"
#include "support/grok1_random_weights.hpp"

namespace {

/// int8 [V, D] with bf16 scales [blocks, D] quantizing `w` per (block of rows, column).
struct Int8Table {
  std::vector<std::int8_t> q;
  std::vector<moe::bf16> s;
  std::vector<float> dequantized;  // exact float(q) * float(s)
  Int8Table(const std::vector<float>& w, std::size_t v, std::size_t d, std::size_t blocks)
      : q(v * d), s(blocks * d), dequantized(v * d) {
    const std::size_t rows = v / blocks;
    for (std::size_t b = 0; b < blocks; ++b) {
      for (std::size_t c = 0; c < d; ++c) {
        float m = 0;
        for (std::size_t r = b * rows; r < (b + 1) * rows; ++r)
          m = std::max(m, std::abs(w[r * d + c]));
        s[b * d + c] = moe::bf16(m > 0 ? m / 127.0f : 1.0f);
        const float sc = s[b * d + c].to_float();
        for (std::size_t r = b * rows; r < (b + 1) * rows; ++r) {
          const float x = std::round(w[r * d + c] / sc);
          q[r * d + c] = static_cast<std::int8_t>(std::max(-127.0f, std::min(127.0f, x)));
          dequantized[r * d + c] = static_cast<float>(q[r * d + c]) * sc;
        }
      }
    }
  }
  moe::EmbeddingTable view(std::size_t v, std::size_t d, std::size_t blocks) const {
    return moe::EmbeddingTable::int8(q.data(), s.data(), v, d, blocks);
  }
};

}  // namespace

TEST_CASE("embedding: row lookups widen exactly for every dtype", "[model][embedding]") {
  const std::size_t V = 36, D = 29;
  const auto w = moe_test::randn(V * D, 1);
  SECTION("f32 at byte offset 151, read in place") {
    std::vector<unsigned char> file(151 + V * D * sizeof(float) + 7);
    std::memcpy(file.data() + 151, w.data(), V * D * sizeof(float));
    const auto t = moe::EmbeddingTable::f32(file.data() + 151, V, D);
    CHECK(t.bytes() == V * D * 4);
    std::vector<float> row(D);
    for (std::size_t v = 0; v < V; ++v) {
      t.lookup(v, row.data());
      CHECK(std::memcmp(row.data(), w.data() + v * D, D * sizeof(float)) == 0);
    }
    t.lookup(5, row.data(), 3, 11);  // a column range
    CHECK(std::memcmp(row.data(), w.data() + 5 * D + 3, 11 * sizeof(float)) == 0);
  }
  SECTION("bf16") {
    std::vector<moe::bf16> b(V * D);
    for (std::size_t i = 0; i < b.size(); ++i) b[i] = moe::bf16(w[i]);
    const auto t = moe::EmbeddingTable::bf16_table(b.data(), V, D);
    std::vector<float> row(D);
    for (std::size_t v = 0; v < V; ++v) {
      t.lookup(v, row.data());
      for (std::size_t i = 0; i < D; ++i) CHECK(row[i] == b[v * D + i].to_float());
    }
  }
  SECTION("int8 with 1 and 4 scale blocks") {
    for (std::size_t blocks : {std::size_t{1}, std::size_t{4}}) {
      const Int8Table q(w, V, D, blocks);
      const auto t = q.view(V, D, blocks);
      CHECK(t.bytes() == V * D + blocks * D * 2);
      std::vector<float> row(D);
      for (std::size_t v = 0; v < V; ++v) {
        t.lookup(v, row.data());
        CHECK(std::memcmp(row.data(), q.dequantized.data() + v * D, D * sizeof(float)) == 0);
      }
    }
  }
}

TEST_CASE("embedding: a decoder reads bf16, int8 and unaligned f32 tables in place",
          "[model][embedding]") {
  moe::ThreadPool pool(2);
  const auto cfg = moe::grok1::Config::tiny();  // tied head, embedding multiplier 5.66
  moe::grok1::RandomWeights rw(cfg, 3);
  const auto base = moe::grok1::make_model(cfg, rw.weights());
  const std::size_t V = cfg.vocab_size, D = cfg.d_model, T = 9;
  const std::vector<std::int32_t> tokens = {5, 0, 63, 17, 17, 2, 40, 33, 1};
  const auto logits_of = [&](const moe::grok1::Model& m) {
    auto state = m.make_state(T, T);
    std::vector<float> out(T * V);
    m.forward(pool, tokens, state, moe::MatrixView<float>(out.data(), T, V));
    return out;
  };
  const auto with_table = [&](const moe::EmbeddingTable& t) {
    return moe::grok1::Model(moe::grok1::decoder_config(cfg), t, base.blocks(),
                             rw.weights().final_norm);
  };
  const auto* e = reinterpret_cast<const float*>(rw.weights().embedding.data);
  const std::vector<float> ref = logits_of(base);
  const double scale = moe_test::max_abs(ref.data(), ref.size());
  REQUIRE(scale > 0.1);

  SECTION("f32 at byte offset 151: the same bits as the aligned table") {
    // The tied head reads the table in place: GEMM (9 rows), small-T (3 rows) and GEMV (a decode
    // step) paths. Run under the asan-ubsan preset too.
    std::vector<unsigned char> file(151 + V * D * sizeof(float));
    std::memcpy(file.data() + 151, e, V * D * sizeof(float));
    const auto odd = with_table(moe::EmbeddingTable::f32(file.data() + 151, V, D));
    const auto got = logits_of(odd);
    CHECK(moe_test::diff(got.data(), ref.data(), ref.size()).max_abs == 0.0);
    for (const auto* m : {&base, &odd}) {
      auto state = m->make_state(T + 1, T);
      std::vector<float> out(3 * V), step(V);
      m->forward(pool, std::span(tokens).first(3), state, moe::MatrixView<float>(out.data(), 3, V));
      m->step(pool, 9, state, step);
      static std::vector<float> first;
      if (m == &base) {
        first = out;
        first.insert(first.end(), step.begin(), step.end());
      } else {
        out.insert(out.end(), step.begin(), step.end());
        CHECK(out == first);
      }
    }
  }
  SECTION("bf16 and int8 equal an f32 model over their widened values") {
    std::vector<moe::bf16> b(V * D);
    std::vector<float> b_wide(V * D);
    for (std::size_t i = 0; i < b.size(); ++i) {
      b[i] = moe::bf16(e[i]);
      b_wide[i] = b[i].to_float();
    }
    const std::vector<float> w(e, e + V * D);
    const Int8Table q(w, V, D, 4);
    struct Case {
      const char* name;
      moe::EmbeddingTable table;
      const std::vector<float>* wide;
    } cases[] = {{"bf16", moe::EmbeddingTable::bf16_table(b.data(), V, D), &b_wide},
                 {"int8", q.view(V, D, 4), &q.dequantized}};
    for (const Case& c : cases) {
      const auto got = logits_of(with_table(c.table));
      const auto want = logits_of(with_table({c.wide->data(), V, D}));
      const auto d = moe_test::diff(got.data(), want.data(), want.size());
      INFO(c.name << ": " << d.str());
      CHECK(d.max_abs <= 1e-5 * scale);
      // ... and the table really is a different model from the f32 one.
      CHECK(moe_test::diff(got.data(), ref.data(), ref.size()).max_abs > 1e-4 * scale);
    }
  }
}

TEST_CASE("embedding: tables are validated with the tensor named", "[model][embedding]") {
  std::vector<float> w(6 * 4, 0.5f);
  std::vector<std::int8_t> q(6 * 4, 1);
  std::vector<moe::bf16> s(3 * 4, moe::bf16(1.0f));
  CHECK_THROWS_WITH(moe::EmbeddingTable(moe::MatrixView<const float>(w.data(), 6, 3, 4))
                        .validate("decoder", "embedding", 6, 3),
                    Catch::Contains("[decoder] tensor 'embedding' must be contiguous"));
  CHECK_THROWS_WITH(
      moe::EmbeddingTable(w.data(), 6, 4).validate("decoder", "embedding", 6, 5),
      Catch::Contains("embedding") && Catch::Contains("[6, 4]") && Catch::Contains("[6, 5]"));
  CHECK_THROWS_WITH(moe::EmbeddingTable::int8(q.data(), nullptr, 6, 4).validate("d", "e", 6, 4),
                    Catch::Contains("has no scales"));
  CHECK_THROWS_WITH(moe::EmbeddingTable::int8(q.data(), s.data(), 6, 4, 4).validate("d", "e", 6, 4),
                    Catch::Contains("does not divide 6"));
  CHECK_NOTHROW(moe::EmbeddingTable::int8(q.data(), s.data(), 6, 4, 3).validate("d", "e", 6, 4));
  CHECK_THROWS_AS(moe::EmbeddingTable().validate("decoder", "embedding", 6, 4), moe::ShapeError);
}
