// RotaryAttention against an independent float64 formulation, plus its structural properties:
// GQA head mapping, RoPE relative positions, soft-cap, causality, caching, thread independence.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include <moe/core/arena.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/layers/attention.hpp>
#include <moe/layers/kv_cache.hpp>
#include <moe/ops/attention.hpp>

#include "common/test_util.hpp"
#include "model/model_util.hpp"

namespace {

moe::AttentionConfig tiny_config() {  // grok1::Config::tiny()'s attention: GQA 4 / 2, dh 8
  moe::AttentionConfig c;
  c.d_model = 32;
  c.n_q_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.rope_base = 10000.0;
  c.logit_multiplier = 0.35355339059327373;
  c.softcap = 30.0;
  return c;
}

/// Runs x [T, D] through `attn` in chunks of the given sizes (one cache), returns y [T, D].
std::vector<float> run_chunks(moe::ThreadPool& pool,
                              const moe::RotaryAttention<moe::F32Weight>& attn,
                              const std::vector<float>& x, std::size_t T,
                              const std::vector<std::size_t>& chunks,
                              moe::KvDtype dtype = moe::KvDtype::kF32) {
  const auto& c = attn.config();
  moe::KvCache cache(1, c.n_kv_heads, c.head_dim, 80, dtype);
  moe::Arena arena(attn.workspace_bytes(T));
  std::vector<float> y(T * c.d_model, 0.0f);
  std::size_t t0 = 0;
  for (std::size_t n : chunks) {
    attn.forward(pool, {x.data() + t0 * c.d_model, n, c.d_model},
                 {y.data() + t0 * c.d_model, n, c.d_model}, cache, 0, arena);
    t0 += n;
  }
  REQUIRE(t0 == T);
  REQUIRE(cache.size() == T);
  return y;
}

double rel_err(const std::vector<float>& y, const std::vector<double>& ref) {
  const double scale = moe_test::max_abs(ref.data(), ref.size());
  return moe_test::diff(y.data(), ref.data(), y.size()).max_abs / scale;
}

}  // namespace

TEST_CASE("attention: matches the float64 reference for several head layouts",
          "[model][attention]") {
  moe::ThreadPool pool(2);
  struct Case {
    const char* name;
    std::size_t hq, hkv, dh, rotary;
    moe::RopeLayout layout;
    double cap, mult;
  };
  const Case cases[] = {
      {"grok tiny: GQA 4/2, half-split, cap 30", 4, 2, 8, 0, moe::RopeLayout::kHalfSplit, 30.0,
       0.35355339059327373},
      {"MHA 4/4, interleaved, no cap, 1/sqrt(dh)", 4, 4, 8, 0, moe::RopeLayout::kInterleaved, 0.0,
       0.0},
      {"MQA 6/1, half-split, partial rotary 6 of 10", 6, 1, 10, 6, moe::RopeLayout::kHalfSplit, 0.0,
       0.2},
      {"GQA 8/2, head 16, cap 5", 8, 2, 16, 0, moe::RopeLayout::kHalfSplit, 5.0, 0.25},
      // head dims that are multiples of the SIMD width take the tiled kernels
      {"GQA 6/2, head 128 (Grok-1's), cap 30", 6, 2, 128, 0, moe::RopeLayout::kHalfSplit, 30.0,
       0.0},
      {"GQA 4/1, head 32, interleaved", 4, 1, 32, 0, moe::RopeLayout::kInterleaved, 0.0, 0.0},
      {"MHA 2/2, head 144 (9 batches)", 2, 2, 144, 0, moe::RopeLayout::kHalfSplit, 0.0, 0.0},
  };
  for (const Case& k : cases) {
    SECTION(k.name) {
      moe::AttentionConfig c;
      c.d_model = 24;
      c.n_q_heads = k.hq;
      c.n_kv_heads = k.hkv;
      c.head_dim = k.dh;
      c.rotary_dims = k.rotary;
      c.rope_layout = k.layout;
      c.rope_base = 500.0;  // small base: high positions rotate a lot
      c.softcap = k.cap;
      c.logit_multiplier = k.mult;
      moe_test::AttentionOwner w(c, 11, 2.0f);
      moe::RotaryAttention<moe::F32Weight> attn(c, w.views);
      const std::size_t T = 41;  // 2 full groups of 16 keys and a remainder
      auto x = moe_test::randn(T * c.d_model, 3);
      auto ref = moe_test::attention_ref(c, w.views, x.data(), T);
      auto y = run_chunks(pool, attn, x, T, {T});
      INFO("prefill error " << rel_err(y, ref));
      CHECK(rel_err(y, ref) < 2e-6);
      // Same values when the sequence arrives in pieces (prefill 5, decode 1, prefill 35).
      auto yc = run_chunks(pool, attn, x, T, {5, 1, 35});
      CHECK(rel_err(yc, ref) < 2e-6);
    }
  }
}

TEST_CASE("attention: incremental decoding equals one prefill", "[model][attention]") {
  moe::ThreadPool pool(2);
  const auto c = tiny_config();
  moe_test::AttentionOwner w(c, 5);
  moe::RotaryAttention<moe::F32Weight> attn(c, w.views);
  const std::size_t T = 24;
  auto x = moe_test::randn(T * c.d_model, 9);
  auto full = run_chunks(pool, attn, x, T, {T});
  std::vector<std::size_t> ones(T, 1);
  auto step = run_chunks(pool, attn, x, T, ones);
  const auto d = moe_test::diff(step.data(), full.data(), full.size());
  INFO(d.str());
  CHECK(d.max_abs <= 1e-6 * moe_test::max_abs(full.data(), full.size()));
}

TEST_CASE("attention: a chunk starting off a token-block boundary crosses a key tile cleanly",
          "[model][attention]") {
  // A 60-token chunk at position 5: its last block of query rows (positions 61 .. 64) spans the
  // key-tile boundary at 64, so the earlier rows of that block have no keys in the last tile.
  moe::ThreadPool pool(2);
  auto c = tiny_config();
  const std::size_t dh = GENERATE(8, 32);
  c.head_dim = dh;
  moe_test::AttentionOwner w(c, 12);
  moe::RotaryAttention<moe::F32Weight> attn(c, w.views);
  const std::size_t T = 65;
  auto x = moe_test::randn(T * c.d_model, 14);
  auto ref = moe_test::attention_ref(c, w.views, x.data(), T);
  for (auto dtype : {moe::KvDtype::kF32, moe::KvDtype::kBF16}) {
    auto y = run_chunks(pool, attn, x, T, {5, 60}, dtype);
    INFO("head_dim " << dh << " " << moe::kv_dtype_name(dtype) << ": " << rel_err(y, ref));
    CHECK(rel_err(y, ref) < (dtype == moe::KvDtype::kF32 ? 2e-6 : 1e-2));
  }
}

TEST_CASE("attention: a bf16 cache stays close to f32 and differs from it", "[model][attention]") {
  moe::ThreadPool pool(2);
  auto c = tiny_config();
  // head_dim 8: keys widened into scratch; head_dim 32 (a multiple of the SIMD width): the tiled
  // kernels widen bf16 in registers.
  const std::size_t dh = GENERATE(8, 32);
  c.head_dim = dh;
  moe_test::AttentionOwner w(c, 21);
  moe::RotaryAttention<moe::F32Weight> attn(c, w.views);
  const std::size_t T = 40;
  auto x = moe_test::randn(T * c.d_model, 4);
  auto ref = moe_test::attention_ref(c, w.views, x.data(), T);
  auto y16 = run_chunks(pool, attn, x, T, {33, 7}, moe::KvDtype::kBF16);
  const double e = rel_err(y16, ref);
  INFO("head_dim " << dh << ": bf16 cache error " << e);
  CHECK(e < 1e-2);  // bf16 keeps 8 significant bits
  CHECK(e > 1e-5);  // ...so it is not the f32 result
}

TEST_CASE("attention: GQA maps query head h to KV head h / (Hq / Hkv)", "[model][attention]") {
  moe::ThreadPool pool(1);
  auto c = tiny_config();  // 4 query heads over 2 KV heads, q_dim == d_model == 32
  moe_test::AttentionOwner w(c, 8);
  // KV head 1 gets zero values; Wo is the identity so y holds the per-head outputs.
  for (std::size_t i = 0; i < c.d_model; ++i) {
    for (std::size_t o = c.head_dim; o < 2 * c.head_dim; ++o) w.wv[i * c.kv_dim() + o] = 0.0f;
  }
  std::fill(w.wo.begin(), w.wo.end(), 0.0f);
  for (std::size_t i = 0; i < c.q_dim(); ++i) w.wo[i * c.d_model + i] = 1.0f;
  moe::RotaryAttention<moe::F32Weight> attn(c, w.views);
  const std::size_t T = 6;
  auto x = moe_test::randn(T * c.d_model, 2);
  auto y = run_chunks(pool, attn, x, T, {T});
  for (std::size_t t = 0; t < T; ++t) {
    for (std::size_t h = 0; h < 4; ++h) {
      const double m = moe_test::max_abs(y.data() + t * 32 + h * 8, 8);
      if (h / 2 == 1) {
        CHECK(m == 0.0);  // heads 2, 3 read KV head 1
      } else {
        CHECK(m > 1e-3);  // heads 0, 1 read KV head 0
      }
    }
  }
}

TEST_CASE("attention: RoPE makes cached key products depend on relative position only",
          "[model][attention]") {
  moe::ThreadPool pool(1);
  auto c = tiny_config();
  c.rope_base = 100.0;
  moe_test::AttentionOwner w(c, 6);
  moe::RotaryAttention<moe::F32Weight> attn(c, w.views);
  const std::size_t T = 16;
  // The same input at every position: the cached key at position p is R(p) k.
  auto one = moe_test::randn(c.d_model, 1);
  std::vector<float> x;
  for (std::size_t t = 0; t < T; ++t) x.insert(x.end(), one.begin(), one.end());
  moe::KvCache cache(1, c.n_kv_heads, c.head_dim, T);
  moe::Arena arena(attn.workspace_bytes(T));
  std::vector<float> y(T * c.d_model);
  attn.forward(pool, {x.data(), T, c.d_model}, {y.data(), T, c.d_model}, cache, 0, arena);
  auto kdot = [&](std::size_t h, std::size_t p1, std::size_t p2) {
    double s = 0;
    for (std::size_t i = 0; i < c.head_dim; ++i)
      s += cache.key_at(0, h, p1, i) * cache.key_at(0, h, p2, i);
    return s;
  };
  for (std::size_t h = 0; h < c.n_kv_heads; ++h) {
    const double norm0 = kdot(h, 0, 0);
    double lo = 1e300, hi = -1e300;
    for (std::size_t s = 0; s < 8; ++s) {
      const double base = kdot(h, 0, s);
      lo = std::min(lo, base);
      hi = std::max(hi, base);
      for (std::size_t p = 1; p + s < T; ++p) {
        CHECK(kdot(h, p, p + s) == Approx(base).margin(1e-5 * norm0));
      }
    }
    CHECK(hi - lo > 0.1 * norm0);  // the product does change with the distance
  }
}

TEST_CASE("attention: the soft-cap is engaged for large logits", "[model][attention]") {
  moe::ThreadPool pool(2);
  auto c = tiny_config();
  moe_test::AttentionOwner w(c, 13, 4.0f);  // 16x larger logits: far beyond the cap of 30
  const std::size_t T = 12;
  auto x = moe_test::randn(T * c.d_model, 5);
  auto ref = moe_test::attention_ref(c, w.views, x.data(), T);
  auto nocap = c;
  nocap.softcap = 0.0;
  auto ref_nocap = moe_test::attention_ref(nocap, w.views, x.data(), T);
  moe::RotaryAttention<moe::F32Weight> attn(c, w.views);
  auto y = run_chunks(pool, attn, x, T, {T});
  CHECK(rel_err(y, ref) < 1e-5);
  CHECK(rel_err(y, ref_nocap) > 1e-2);  // without the cap the result is clearly different
  // With a tiny cap every logit is squashed to +-0.5: the softmax is nearly uniform.
  auto tiny = c;
  tiny.softcap = 0.5;
  moe::RotaryAttention<moe::F32Weight> flat(tiny, w.views);
  CHECK(rel_err(run_chunks(pool, flat, x, T, {T}),
                moe_test::attention_ref(tiny, w.views, x.data(), T)) < 1e-5);
}

TEST_CASE("attention: changing a later token leaves earlier outputs unchanged (causal)",
          "[model][attention]") {
  moe::ThreadPool pool(2);
  const auto c = tiny_config();
  moe_test::AttentionOwner w(c, 3);
  moe::RotaryAttention<moe::F32Weight> attn(c, w.views);
  const std::size_t T = 10;
  auto x = moe_test::randn(T * c.d_model, 1);
  auto x2 = x;
  for (std::size_t i = 0; i < c.d_model; ++i) x2[7 * c.d_model + i] += 3.0f;  // token 7 changes
  auto y = run_chunks(pool, attn, x, T, {T});
  auto y2 = run_chunks(pool, attn, x2, T, {T});
  const std::size_t early = 7 * c.d_model;
  const double scale = moe_test::max_abs(y.data(), y.size());
  CHECK(moe_test::diff(y2.data(), y.data(), early).max_abs <= 1e-6 * scale);
  for (std::size_t t = 7; t < T; ++t) {
    CHECK(moe_test::diff(y2.data() + t * 32, y.data() + t * 32, 32).max_abs > 1e-3 * scale);
  }
}

TEST_CASE("attention: results are identical for 1 and 2 threads", "[model][attention]") {
  moe::ThreadPool p1(1), p2(2);
  auto c = tiny_config();
  c.n_q_heads = 8;
  c.head_dim = 16;
  moe_test::AttentionOwner w(c, 31);
  moe::RotaryAttention<moe::F32Weight> attn(c, w.views);
  // The 50-token prefill is large enough for the multi-task path (50 * 50 * 128 MACs), the
  // others run as one task: both must give the same bits on any pool.
  REQUIRE(50 * 50 * c.q_dim() >= moe::RotaryAttention<moe::F32Weight>::kSerialMacs);
  const std::size_t T = 64;
  auto x = moe_test::randn(T * c.d_model, 8);
  auto a = run_chunks(p1, attn, x, T, {50, 1, 13});
  auto b = run_chunks(p2, attn, x, T, {50, 1, 13});
  CHECK(moe_test::diff(a.data(), b.data(), a.size()).max_abs == 0.0);
  // ... and the same values as one prefill (within rounding).
  auto full = run_chunks(p2, attn, x, T, {T});
  CHECK(moe_test::diff(a.data(), full.data(), a.size()).max_abs <=
        1e-6 * moe_test::max_abs(full.data(), full.size()));
}

TEST_CASE("attention: configuration, shape and capacity errors", "[model][attention]") {
  moe::ThreadPool pool(1);
  auto c = tiny_config();
  moe_test::AttentionOwner w(c, 1);
  SECTION("heads must divide") {
    auto bad = c;
    bad.n_kv_heads = 3;
    CHECK_THROWS_WITH(moe::RotaryAttention<moe::F32Weight>(bad, w.views),
                      Catch::Contains("[attention]") && Catch::Contains("multiple of n_kv_heads"));
  }
  SECTION("odd rotary dims") {
    auto bad = c;
    bad.rotary_dims = 3;
    CHECK_THROWS_AS(moe::RotaryAttention<moe::F32Weight>(bad, w.views), moe::ConfigError);
  }
  SECTION("weight shapes are named") {
    auto views = w.views;
    views.wk.out = 8;
    CHECK_THROWS_WITH(
        moe::RotaryAttention<moe::F32Weight>(c, views),
        Catch::Contains("'wk'") && Catch::Contains("[32, 8]") && Catch::Contains("[32, 16]"));
  }
  SECTION("full cache and wrong cache shape throw before any work") {
    moe::RotaryAttention<moe::F32Weight> attn(c, w.views);
    moe::KvCache cache(1, 2, 8, 4);
    moe::Arena arena(attn.workspace_bytes(5));
    auto x = moe_test::randn(5 * 32, 1);
    std::vector<float> y(5 * 32);
    CHECK_THROWS_AS(attn.forward(pool, {x.data(), 5, 32}, {y.data(), 5, 32}, cache, 0, arena),
                    moe::CapacityError);
    CHECK(cache.size() == 0);
    moe::KvCache wrong(1, 1, 8, 8);
    CHECK_THROWS_WITH(attn.forward(pool, {x.data(), 1, 32}, {y.data(), 1, 32}, wrong, 0, arena),
                      Catch::Contains("KV cache has 1 heads"));
  }
  SECTION("the pool scratch must hold the scores") {
    moe::ThreadPool small(1, 1024);
    moe::RotaryAttention<moe::F32Weight> attn(c, w.views);
    moe::KvCache cache(1, 2, 8, 512);
    moe::Arena arena(attn.workspace_bytes(200));
    auto x = moe_test::randn(200 * 32, 1);
    std::vector<float> y(200 * 32);
    CHECK_THROWS_WITH(
        attn.forward(small, {x.data(), 200, 32}, {y.data(), 200, 32}, cache, 0, arena),
        Catch::Contains("scratch"));
  }
}

TEST_CASE("attention kernels: the tiled score and value kernels equal their scalar twins",
          "[model][attention][kernels]") {
  // dot_rows_tiled / axpy_rows_tiled (kLanes accumulators + transposing reduction; output head in
  // registers) against dot_rows_simple / axpy_rows_simple (moe::dot / moe::axpy per row), over
  // awkward key counts, head sizes of 1 .. 17 batches and row strides larger than the head;
  // bf16 rows against the same rows widened to f32.
  const std::size_t L = moe::simd::kLanes;
  for (std::size_t batches : {1, 2, 3, 8, 9, 17}) {
    const std::size_t dh = batches * L;
    for (std::size_t n :
         {std::size_t{0}, std::size_t{1}, L - 1, L, L + 1, 3 * L + 5, std::size_t{64}}) {
      for (std::size_t pad : {std::size_t{0}, std::size_t{3}, std::size_t{64}}) {
        const std::size_t stride = dh + pad;
        INFO("dh " << dh << " keys " << n << " stride " << stride);
        const auto q = moe_test::randn(dh, 1), w = moe_test::randn(std::max<std::size_t>(n, 1), 2);
        auto rows = moe_test::randn(std::max<std::size_t>(n, 1) * stride, 3);
        std::vector<moe::bf16> rows16(rows.size());
        for (std::size_t i = 0; i < rows.size(); ++i) {
          rows16[i] = moe::bf16(rows[i]);
          rows[i] = rows16[i].to_float();  // the f32 twin reads the widened values
        }
        std::vector<float> s_tiled(n + 1), s16(n + 1), s_simple(n + 1);
        moe::detail::dot_rows_tiled(q.data(), rows.data(), stride, n, dh, s_tiled.data());
        moe::detail::dot_rows_tiled(q.data(), rows16.data(), stride, n, dh, s16.data());
        moe::detail::dot_rows_simple(q.data(), rows.data(), stride, n, dh, s_simple.data());
        for (std::size_t j = 0; j < n; ++j) {
          double exact = 0, mag = 0;
          for (std::size_t i = 0; i < dh; ++i) {
            exact += static_cast<double>(q[i]) * rows[j * stride + i];
            mag += std::abs(static_cast<double>(q[i]) * rows[j * stride + i]);
          }
          CHECK(std::abs(s_tiled[j] - exact) <= 1e-6 * mag);
          CHECK(std::abs(s_simple[j] - exact) <= 1e-6 * mag);
          CHECK(s16[j] == s_tiled[j]);  // the same arithmetic on the same values
        }
        std::vector<float> o_tiled(dh, 0.5f), o16(dh, 0.5f), o_simple(dh, 0.5f);
        moe::detail::axpy_rows_tiled(w.data(), rows.data(), stride, n, dh, o_tiled.data());
        moe::detail::axpy_rows_tiled(w.data(), rows16.data(), stride, n, dh, o16.data());
        moe::detail::axpy_rows_simple(w.data(), rows.data(), stride, n, dh, o_simple.data());
        CHECK(o16 == o_tiled);
        CHECK(o_simple == o_tiled);  // both: one fma per row, in row order
      }
    }
  }
}
