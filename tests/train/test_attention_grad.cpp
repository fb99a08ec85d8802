// Attention backward: the core (attend_causal / attend_causal_backward: scores, soft-cap,
// softmax, value sum) and the whole RotaryAttention layer (projections, RoPE, GQA/MQA, logit
// multiplier, soft-cap, causal mask over B sequences) against central differences of a float64
// formulation, with a non-conserved objective L = sum r * y.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <vector>

#include <moe/core/arena.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/layers/attention.hpp>
#include <moe/ops/attention.hpp>

#include "common/gradcheck.hpp"
#include "common/test_util.hpp"
#include "train/decoder_ref.hpp"

namespace {

struct CoreCase {
  const char* name;
  std::size_t hq, hkv, dh;
  double scale, cap;
};

}  // namespace

TEST_CASE("attention core backward matches float64 central differences", "[train][attention]") {
  const std::size_t L = moe::simd::kLanes;
  const CoreCase cases[] = {
      {"GQA 4/2, dh 4 (scalar twins), no cap", 4, 2, 4, 0.5, 0.0},
      {"GQA 4/2, dh 4, soft-cap 1.5 engaged", 4, 2, 4, 0.9, 1.5},
      {"MQA 3/1, tiled dh, cap 3", 3, 1, 2 * L, 0.4, 3.0},
      {"MHA 2/2, tiled dh, no cap", 2, 2, L, 0.3, 0.0},
      {"GQA 8/2 (dot products on transposed key tiles), tiled dh, cap 2", 8, 2, L, 0.4, 2.0},
  };
  for (const CoreCase& k : cases) {
    SECTION(k.name) {
      const std::size_t B = 2, T = 19, n = B * T;  // > 16 keys: full groups and a remainder
      const moe::AttentionCore core{k.hq, k.hkv, k.dh, static_cast<float>(k.scale),
                                    static_cast<float>(k.cap)};
      const std::size_t qd = k.hq * k.dh, kvd = k.hkv * k.dh;
      const auto q = moe_test::randn(n * qd, 1), kk = moe_test::randn(n * kvd, 2),
                 v = moe_test::randn(n * kvd, 3), r = moe_test::randn(n * qd, 4);
      // forward and backward, one task per (sequence, KV head)
      std::vector<float> o(n * qd), lse(n * k.hq), dq(n * qd, 0.0f), dk(n * kvd, 0.0f),
          dv(n * kvd, 0.0f);
      // The backward in blocks of 5 query rows (4 blocks, the last one short).
      constexpr std::size_t kBlockRows = 5;
      moe::Arena scratch(moe::attend_scratch_bytes(core, T, T) +
                         moe::attend_backward_scratch_bytes(core, T, kBlockRows));
      float* s = scratch.alloc<float>(moe::attend_scratch_bytes(core, T, T) / sizeof(float));
      double max_z = 0;
      for (std::size_t b = 0; b < B; ++b) {
        const std::size_t r0 = b * T;
        for (std::size_t g = 0; g < k.hkv; ++g) {
          const moe::KvRows<float> kv{kk.data() + r0 * kvd + g * k.dh,
                                      v.data() + r0 * kvd + g * k.dh, kvd};
          moe::attend_causal(core, {q.data() + r0 * qd, T, qd}, {o.data() + r0 * qd, T, qd}, kv, g,
                             0, T, 0, s, lse.data() + r0 * k.hq, k.hq);
        }
      }
      for (std::size_t b = 0; b < B; ++b) {
        const std::size_t r0 = b * T;
        for (std::size_t g = 0; g < k.hkv; ++g) {
          const moe::KvRows<float> kv{kk.data() + r0 * kvd + g * k.dh,
                                      v.data() + r0 * kvd + g * k.dh, kvd};
          const moe::KvGradRows dkv{dk.data() + r0 * kvd + g * k.dh,
                                    dv.data() + r0 * kvd + g * k.dh, kvd};
          moe::attend_causal_backward(core, {q.data() + r0 * qd, T, qd},
                                      {o.data() + r0 * qd, T, qd}, {r.data() + r0 * qd, T, qd},
                                      lse.data() + r0 * k.hq, k.hq, kv,
                                      {dq.data() + r0 * qd, T, qd}, dkv, g, s, kBlockRows);
        }
      }
      // float64 reference of the core over theta = [q | k | v]
      moe::AttentionConfig c;
      c.n_q_heads = k.hq;
      c.n_kv_heads = k.hkv;
      c.head_dim = k.dh;
      c.logit_multiplier = k.scale;
      c.softcap = k.cap;
      std::vector<double> theta(q.begin(), q.end());
      theta.insert(theta.end(), kk.begin(), kk.end());
      theta.insert(theta.end(), v.begin(), v.end());
      const auto slice = [&](std::size_t off, std::size_t len) {
        return moe_test::ref::Vec(theta.begin() + static_cast<std::ptrdiff_t>(off),
                                  theta.begin() + static_cast<std::ptrdiff_t>(off + len));
      };
      const auto loss = [&]() {
        return moe_test::projected(
            r, moe_test::ref::attention_core(c, slice(0, n * qd), slice(n * qd, n * kvd),
                                             slice(n * qd + n * kvd, n * kvd), n, T));
      };
      {  // the forward agrees, and the cap is engaged where asked
        const auto out = moe_test::ref::attention_core(c, slice(0, n * qd), slice(n * qd, n * kvd),
                                                       slice(n * qd + n * kvd, n * kvd), n, T);
        CHECK(moe_test::diff(o.data(), out.data(), out.size()).max_abs < 1e-5);
        for (std::size_t t = 0; t < n; ++t) {
          for (std::size_t j = t / T * T; j <= t; ++j) {
            double z = 0;
            for (std::size_t i = 0; i < k.dh; ++i) z += q[t * qd + i] * kk[j * kvd + i];
            max_z = std::max(max_z, std::abs(z * k.scale));
          }
        }
        if (k.cap > 0) CHECK(max_z > 1.5 * k.cap);
      }
      const auto num = moe_test::numeric_gradient(loss, theta);
      const struct {
        const char* name;
        const std::vector<float>* g;
        std::size_t off;
      } parts[] = {{"q", &dq, 0}, {"k", &dk, n * qd}, {"v", &dv, n * qd + n * kvd}};
      for (const auto& p : parts) {
        const auto cmp = moe_test::compare_gradient(p.g->data(), num.data() + p.off, p.g->size());
        INFO(cmp.str(p.name));
        REQUIRE(cmp.scale > 0);
        CHECK(cmp.max_err < 1e-4);
      }
    }
  }
}

namespace {

/// dq, dk and dv of attend_causal_backward over one sequence of T tokens, every KV head, with
/// the query rows in blocks of block_rows.
std::vector<float> core_grads(const moe::AttentionCore& core, std::size_t T,
                              std::size_t block_rows) {
  const std::size_t qd = core.n_q_heads * core.head_dim, kvd = core.n_kv_heads * core.head_dim;
  const std::size_t dh = core.head_dim, hq = core.n_q_heads;
  const auto q = moe_test::randn(T * qd, 1), kk = moe_test::randn(T * kvd, 2),
             v = moe_test::randn(T * kvd, 3), r = moe_test::randn(T * qd, 4);
  std::vector<float> o(T * qd), lse(T * hq), g(T * (qd + 2 * kvd), 0.0f);
  float *dq = g.data(), *dk = dq + T * qd, *dv = dk + T * kvd;
  moe::Arena scratch(std::max(moe::attend_scratch_bytes(core, T, T),
                              moe::attend_backward_scratch_bytes(core, T, block_rows)));
  float* s = scratch.alloc<float>(scratch.capacity() / sizeof(float));
  for (std::size_t h = 0; h < core.n_kv_heads; ++h) {
    const moe::KvRows<float> kv{kk.data() + h * dh, v.data() + h * dh, kvd};
    moe::attend_causal(core, {q.data(), T, qd}, {o.data(), T, qd}, kv, h, 0, T, 0, s, lse.data(),
                       hq);
  }
  for (std::size_t h = 0; h < core.n_kv_heads; ++h) {
    const moe::KvRows<float> kv{kk.data() + h * dh, v.data() + h * dh, kvd};
    moe::attend_causal_backward(core, {q.data(), T, qd}, {o.data(), T, qd}, {r.data(), T, qd},
                                lse.data(), hq, kv, {dq, T, qd},
                                moe::KvGradRows{dk + h * dh, dv + h * dh, kvd}, h, s, block_rows);
  }
  return g;
}

}  // namespace

TEST_CASE("attention core backward: the same bits for every block of query rows",
          "[train][attention]") {
  // Blocks change which key rows stay in registers, never a summation order: dq, dk and dv equal
  // the one-row-at-a-time backward bit for bit, with and without a window (keys entering and
  // leaving it inside a block), GQA and MHA, head dims of 1, 2 and 5 SIMD vectors (the key rows
  // in column groups of 4 vectors) and one that is not a multiple of the SIMD width, the dot
  // products on transposed key tiles (4 heads per KV head, a window of a tile or more, or none)
  // and on key rows.
  const std::size_t L = moe::simd::kLanes;
  struct Case {
    std::size_t hq, hkv, dh, window;
    float cap;
  };
  const Case cases[] = {{8, 2, 2 * L, 0, 30.0f}, {4, 2, L, 1, 0.0f},     {4, 1, 5 * L, 3, 0.0f},
                        {6, 3, 2 * L, 17, 5.0f}, {4, 4, L + 2, 0, 0.0f}, {4, 2, L + 2, 5, 0.0f},
                        {8, 2, L, 70, 0.0f}};
  for (const Case& k : cases) {
    for (const std::size_t T : {std::size_t{1}, std::size_t{37}, std::size_t{150}}) {
      const moe::AttentionCore core{k.hq, k.hkv, k.dh, 0.3f, k.cap, k.window};
      const auto one = core_grads(core, T, 1);
      for (const std::size_t rows : {std::size_t{2}, std::size_t{3}, std::size_t{16}}) {
        INFO("hq " << k.hq << " hkv " << k.hkv << " dh " << k.dh << " window " << k.window << " T "
                   << T << " block rows " << rows);
        const auto blocked = core_grads(core, T, rows);
        CHECK(std::memcmp(one.data(), blocked.data(), one.size() * sizeof(float)) == 0);
      }
    }
  }
  CHECK(moe::attend_backward_block_rows(moe::AttentionCore{8, 2, 32}, 256, 0) == 1);
  CHECK(moe::attend_backward_block_rows(moe::AttentionCore{8, 2, 32}, 256, 4 << 20) ==
        moe::kAttentionBackwardRows);
}

namespace {

struct LayerCase {
  const char* name;
  std::size_t hq, hkv, dh, rotary;
  moe::RopeLayout rope;
  double mult, cap;
  moe::Layout layout;
};

}  // namespace

TEST_CASE("RotaryAttention backward matches float64 central differences", "[train][attention]") {
  const LayerCase cases[] = {
      {"Grok-like: GQA 4/2, half-split, cap engaged, [in, out]", 4, 2, 4, 0,
       moe::RopeLayout::kHalfSplit, 0.8, 1.0, moe::Layout::kInOut},
      {"MQA 3/1, interleaved, partial rotary, [out, in]", 3, 1, 6, 4, moe::RopeLayout::kInterleaved,
       0.0, 0.0, moe::Layout::kOutIn},
      {"MHA 2/2, tiled head dim", 2, 2, moe::simd::kLanes, 0, moe::RopeLayout::kHalfSplit, 0.0, 0.0,
       moe::Layout::kInOut},
  };
  for (const LayerCase& k : cases) {
    SECTION(k.name) {
      moe::AttentionConfig c;
      c.d_model = 10;
      c.n_q_heads = k.hq;
      c.n_kv_heads = k.hkv;
      c.head_dim = k.dh;
      c.rotary_dims = k.rotary;
      c.rope_layout = k.rope;
      c.rope_base = 50.0;
      c.logit_multiplier = k.mult;
      c.softcap = k.cap;
      const std::size_t B = 2, T = 7, n = B * T, d = c.d_model, qd = c.q_dim(), kvd = c.kv_dim();
      moe_test::ref::Params p;
      p.add("x", moe_test::randn(n * d, 1));
      p.add("wq", moe_test::randn(d * qd, 2, 2.0f / std::sqrt(float(d))));
      p.add("wk", moe_test::randn(d * kvd, 3, 2.0f / std::sqrt(float(d))));
      p.add("wv", moe_test::randn(d * kvd, 4, 1.0f / std::sqrt(float(d))));
      p.add("wo", moe_test::randn(qd * d, 5, 1.0f / std::sqrt(float(qd))));
      const auto r = moe_test::randn(n * d, 6);
      auto x = p.f32("x"), wq = p.f32("wq"), wk = p.f32("wk"), wv = p.f32("wv"), wo = p.f32("wo");
      const moe::AttentionWeights<moe::F32Weight> w{{wq.data(), d, qd, k.layout},
                                                    {wk.data(), d, kvd, k.layout},
                                                    {wv.data(), d, kvd, k.layout},
                                                    {wo.data(), qd, d, k.layout}};
      moe::RotaryAttention<moe::F32Weight> attn(c, w);
      moe::ThreadPool pool(2);
      moe::Arena scratch(attn.training_workspace_bytes(n)), tape(attn.tape_bytes(n));
      std::vector<float> y(n * d), dx(n * d, 0.0f), gq(wq.size(), 0.0f), gk(wk.size(), 0.0f),
          gv(wv.size(), 0.0f), go(wo.size(), 0.0f);
      decltype(attn)::Saved saved;
      attn.forward_train(pool, {x.data(), n, d}, {y.data(), n, d}, T, scratch, tape, saved);
      const decltype(attn)::Grads grads{
          moe::WeightGrad::like(gq.data(), w.wq), moe::WeightGrad::like(gk.data(), w.wk),
          moe::WeightGrad::like(gv.data(), w.wv), moe::WeightGrad::like(go.data(), w.wo)};
      attn.backward(pool, {x.data(), n, d}, saved, {r.data(), n, d}, {dx.data(), n, d}, grads,
                    scratch);
      // Each sequence's forward equals the inference path (KV cache) on that sequence.
      for (std::size_t b = 0; b < B; ++b) {
        moe::KvCache cache(1, k.hkv, k.dh, T);
        moe::Arena ws(attn.workspace_bytes(T));
        std::vector<float> yi(T * d);
        attn.forward(pool, {x.data() + b * T * d, T, d}, {yi.data(), T, d}, cache, 0, ws);
        CHECK(moe_test::diff(yi.data(), y.data() + b * T * d, T * d).max_abs < 1e-6);
      }
      const auto loss = [&]() {
        return moe_test::projected(
            r, moe_test::ref::attention(c, moe_test::ref::Vec(p["x"], p["x"] + n * d), n, T,
                                        p["wq"], p["wk"], p["wv"], p["wo"], k.layout));
      };
      const auto num = moe_test::numeric_gradient(loss, p.theta);
      const struct {
        const char* name;
        const std::vector<float>* g;
      } parts[] = {{"x", &dx}, {"wq", &gq}, {"wk", &gk}, {"wv", &gv}, {"wo", &go}};
      for (const auto& part : parts) {
        const auto& s = p.slice(part.name);
        const auto cmp = moe_test::compare_gradient(part.g->data(), num.data() + s.offset, s.size);
        INFO(cmp.str(part.name));
        REQUIRE(cmp.scale > 0);
        CHECK(cmp.max_err < 1e-4);
      }
    }
  }
}

TEST_CASE("RotaryAttention asks for the scratch of one backward query row", "[train][attention]") {
  // The least pool scratch does not grow with the backward's blocks: the layer asks for one
  // query row's score gradients and takes the largest block its pool's scratch holds (the
  // gradients are the same for every block: the test above).
  moe::AttentionConfig c;
  c.d_model = 16;
  c.n_q_heads = 8;
  c.n_kv_heads = 2;
  c.head_dim = 32;
  const std::vector<float> wb(16 * 256, 0.1f);
  const moe::AttentionWeights<moe::F32Weight> w{
      {wb.data(), 16, 256}, {wb.data(), 16, 64}, {wb.data(), 16, 64}, {wb.data(), 256, 16}};
  const moe::RotaryAttention<moe::F32Weight> attn(c, w);
  const moe::AttentionCore core{8, 2, 32};
  for (const std::size_t T : {std::size_t{1}, std::size_t{256}, std::size_t{16384}}) {
    INFO("T " << T);
    const std::size_t least = attn.training_scratch_bytes(T);
    CHECK(least == std::max(moe::attend_scratch_bytes(core, 1, T),
                            moe::attend_backward_scratch_bytes(core, T, 1)));
    CHECK(moe::attend_backward_block_rows(core, T, least) >= 1);
  }
  CHECK(moe::attend_backward_block_rows(core, 256, moe::ThreadPool::kDefaultScratchBytes) ==
        moe::kAttentionBackwardRows);
  // 16384 tokens: 16 rows would need 8.4 MB; the default 4 MiB holds 7.
  CHECK(moe::attend_backward_block_rows(core, 16384, moe::ThreadPool::kDefaultScratchBytes) == 7);
}

TEST_CASE("RotaryAttention backward: frozen and non-f32 weights", "[train][attention]") {
  moe::AttentionConfig c;
  c.d_model = 8;
  c.n_q_heads = 2;
  c.n_kv_heads = 1;
  c.head_dim = 4;
  std::vector<moe::bf16> wb(8 * 8, moe::bf16(0.1f));
  const moe::BF16Weight q{wb.data(), 8, 8}, kv{wb.data(), 8, 4}, o{wb.data(), 8, 8};
  moe::RotaryAttention<moe::BF16Weight> attn(c, {q, kv, kv, o});
  moe::ThreadPool pool(1);
  moe::Arena scratch(attn.training_workspace_bytes(6)), tape(attn.tape_bytes(6));
  const auto x = moe_test::randn(6 * 8, 1);
  std::vector<float> y(6 * 8), dx(6 * 8, 0.0f), g(64, 0.0f);
  decltype(attn)::Saved saved;
  attn.forward_train(pool, {x.data(), 6, 8}, {y.data(), 6, 8}, 3, scratch, tape, saved);
  decltype(attn)::Grads grads;  // all frozen: the input gradient only
  attn.backward(pool, {x.data(), 6, 8}, saved, {y.data(), 6, 8}, {dx.data(), 6, 8}, grads, scratch);
  float m = 0;
  for (float v : dx) m = std::max(m, std::abs(v));
  CHECK(m > 0);
  grads.wo = moe::WeightGrad{g.data(), 8, 8};
  CHECK_THROWS_WITH(attn.backward(pool, {x.data(), 6, 8}, saved, {y.data(), 6, 8},
                                  {dx.data(), 6, 8}, grads, scratch),
                    Catch::Contains("[attention] weight 'wo' is bf16") &&
                        Catch::Contains("only f32 weights are trainable"));
  CHECK_THROWS_WITH(
      attn.forward_train(pool, {x.data(), 6, 8}, {y.data(), 6, 8}, 4, scratch, tape, saved),
      Catch::Contains("not whole sequences of seq_len = 4"));
}
