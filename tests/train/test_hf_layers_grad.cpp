// The pieces the Hugging Face families add to the layers, forward and backward against central
// differences of float64 formulations written here from the modeling code's math:
//   * the attention core with a sliding window (Mixtral's sliding_window: key j visible to the
//     query at position p iff p - w < j <= p), and its forward over contexts of several key
//     tiles with f32 and bf16 keys, in blocks and decode steps;
//   * RotaryAttention with q/k/v biases (Qwen2-MoE) and RMSNorms over the whole q and k
//     projections before RoPE (OLMoE), with and without a window; its training forward equals
//     the KV-cache inference path;
//   * SigmoidGatedFfn, sigmoid(x . w) * FFN(x) (Qwen2-MoE's gated shared expert), alone and as
//     an MoELayer's shared expert (the layer's output and gradients are the routed part's plus
//     the shared expert's).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include <moe/core/arena.hpp>
#include <moe/core/bf16.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/layers/attention.hpp>
#include <moe/layers/expert.hpp>
#include <moe/layers/moe_layer.hpp>
#include <moe/layers/router.hpp>
#include <moe/ops/attention.hpp>

#include "common/gradcheck.hpp"
#include "common/test_util.hpp"
#include "train/decoder_ref.hpp"

namespace {

using moe_test::ref::Vec;

/// The attention core over B sequences of T tokens with a sliding window (0 = none): q [n,
/// Hq*dh], k, v [n, Hkv*dh] -> o [n, Hq*dh], by explicit key ranges.
Vec windowed_core(const moe::AttentionConfig& c, const Vec& q, const Vec& k, const Vec& v,
                  std::size_t n, std::size_t seq_len, std::size_t window) {
  const std::size_t dh = c.head_dim, hq = c.n_q_heads, hkv = c.n_kv_heads, g = hq / hkv;
  Vec o(n * hq * dh, 0.0), s(seq_len);
  for (std::size_t r = 0; r < n; ++r) {
    const std::size_t b0 = r / seq_len * seq_len, t = r % seq_len;
    const std::size_t lo = window != 0 && t + 1 > window ? t + 1 - window : 0;
    for (std::size_t h = 0; h < hq; ++h) {
      double m = -1e300, sum = 0;
      for (std::size_t j = lo; j <= t; ++j) {
        double z = 0;
        for (std::size_t i = 0; i < dh; ++i) {
          z += q[(r * hq + h) * dh + i] * k[((b0 + j) * hkv + h / g) * dh + i];
        }
        s[j] = z * c.multiplier();
        m = std::max(m, s[j]);
      }
      for (std::size_t j = lo; j <= t; ++j) sum += (s[j] = std::exp(s[j] - m));
      for (std::size_t j = lo; j <= t; ++j) {
        for (std::size_t i = 0; i < dh; ++i) {
          o[(r * hq + h) * dh + i] += s[j] / sum * v[((b0 + j) * hkv + h / g) * dh + i];
        }
      }
    }
  }
  return o;
}

void check_grad(const char* name, const std::vector<float>& analytic, const double* numeric) {
  const auto cmp = moe_test::compare_gradient(analytic.data(), numeric, analytic.size());
  INFO(cmp.str(name));
  REQUIRE(cmp.scale > 0);
  CHECK(cmp.max_err < 1e-4);
}

}  // namespace

TEST_CASE("attention core with a sliding window: forward and backward vs float64",
          "[train][attention][window]") {
  const std::size_t lanes = moe::simd::kLanes;
  struct Case {
    std::size_t dh, window, hq, hkv, B, T;
  };
  std::vector<Case> cases;
  for (const std::size_t dh : {std::size_t{4}, 2 * lanes}) {
    for (const std::size_t window : {std::size_t{1}, std::size_t{3}, std::size_t{17}}) {
      cases.push_back({dh, window, 4, 2, 2, 19});
    }
  }
  // 4 query heads per KV head and a window of a tile or more: the backward's dot products on
  // transposed key tiles, keys leaving the window from query 65 on.
  cases.push_back({lanes, 65, 4, 1, 1, 70});
  for (const Case& k : cases) {
    DYNAMIC_SECTION("dh " << k.dh << ", window " << k.window << ", heads " << k.hq << " / "
                          << k.hkv) {
      const std::size_t dh = k.dh, window = k.window, hq = k.hq, hkv = k.hkv, B = k.B, T = k.T,
                        n = B * T, qd = hq * dh, kvd = hkv * dh;
      moe::AttentionCore core{hq, hkv, dh, 0.7f, 0.0f, window};
      const auto q = moe_test::randn(n * qd, 1), kk = moe_test::randn(n * kvd, 2),
                 v = moe_test::randn(n * kvd, 3), r = moe_test::randn(n * qd, 4);
      std::vector<float> o(n * qd), lse(n * hq), dq(n * qd, 0.0f), dk(n * kvd, 0.0f),
          dv(n * kvd, 0.0f);
      moe::Arena scratch(moe::attend_scratch_bytes(core, T, T) +
                         moe::attend_backward_scratch_bytes(core, T, 4));
      float* s = scratch.alloc<float>(moe::attend_scratch_bytes(core, T, T) / sizeof(float));
      for (std::size_t b = 0; b < B; ++b) {
        const std::size_t r0 = b * T;
        for (std::size_t g = 0; g < hkv; ++g) {
          const moe::KvRows<float> kv{kk.data() + r0 * kvd + g * dh, v.data() + r0 * kvd + g * dh,
                                      kvd};
          // Two blocks of query rows (as the layer's tasks), the second at a later position.
          moe::attend_causal(core, {q.data() + r0 * qd, T, qd}, {o.data() + r0 * qd, T, qd}, kv, g,
                             0, 7, 0, s, lse.data() + r0 * hq, hq);
          moe::attend_causal(core, {q.data() + r0 * qd, T, qd}, {o.data() + r0 * qd, T, qd}, kv, g,
                             7, T, 0, s, lse.data() + r0 * hq, hq);
          const moe::KvGradRows dkv{dk.data() + r0 * kvd + g * dh, dv.data() + r0 * kvd + g * dh,
                                    kvd};
          moe::attend_causal_backward(core, {q.data() + r0 * qd, T, qd},
                                      {o.data() + r0 * qd, T, qd}, {r.data() + r0 * qd, T, qd},
                                      lse.data() + r0 * hq, hq, kv, {dq.data() + r0 * qd, T, qd},
                                      dkv, g, s, 4);  // blocks of 4 query rows
        }
      }
      moe::AttentionConfig c;
      c.n_q_heads = hq;
      c.n_kv_heads = hkv;
      c.head_dim = dh;
      c.logit_multiplier = 0.7;
      Vec theta(q.begin(), q.end());
      theta.insert(theta.end(), kk.begin(), kk.end());
      theta.insert(theta.end(), v.begin(), v.end());
      const auto part = [&](std::size_t off, std::size_t len) {
        return Vec(theta.begin() + static_cast<std::ptrdiff_t>(off),
                   theta.begin() + static_cast<std::ptrdiff_t>(off + len));
      };
      const auto out = [&]() {
        return windowed_core(c, part(0, n * qd), part(n * qd, n * kvd),
                             part(n * qd + n * kvd, n * kvd), n, T, window);
      };
      CHECK(moe_test::diff(o.data(), out().data(), n * qd).max_abs < 1e-5);
      const auto loss = [&]() { return moe_test::projected(r, out()); };
      const auto num = moe_test::numeric_gradient(loss, theta);
      if (window == 1) {
        // Each query sees only its own key: o = v, and the scores have no gradient.
        const std::vector<double> zq(n * qd, 0.0), zk(n * kvd, 0.0);
        CHECK(moe_test::diff(dq.data(), zq.data(), n * qd).max_abs < 1e-6);
        CHECK(moe_test::diff(dk.data(), zk.data(), n * kvd).max_abs < 1e-6);
      } else {
        check_grad("q", dq, num.data());
        check_grad("k", dk, num.data() + n * qd);
      }
      check_grad("v", dv, num.data() + n * qd + n * kvd);
    }
  }
}

TEST_CASE(
    "attention core with a sliding window over long contexts (tiles before the window "
    "skipped), f32 and bf16 keys, later positions",
    "[train][attention][window]") {
  // T spans several 64-key tiles: the score and value loops start at the window's tile and a
  // row's visible keys start inside a tile. Query rows run in blocks, the last as decode steps
  // (pos0 > 0, one row each), as the inference path calls the core.
  const std::size_t lanes = moe::simd::kLanes, T = 3 * moe::kAttentionTile + 11;
  for (const std::size_t dh : {std::size_t{4}, 2 * lanes}) {
    for (const std::size_t window : {std::size_t{1}, std::size_t{37}, moe::kAttentionTile,
                                     moe::kAttentionTile + 1, 2 * moe::kAttentionTile + 5, T}) {
      for (const bool bf16_kv : {false, true}) {
        DYNAMIC_SECTION("dh " << dh << ", window " << window << (bf16_kv ? ", bf16" : ", f32")) {
          const std::size_t hq = 4, hkv = 2, qd = hq * dh, kvd = hkv * dh;
          const moe::AttentionCore core{hq, hkv, dh, 0.3f, 0.0f, window};
          const auto q = moe_test::randn(T * qd, 1);
          auto kk = moe_test::randn(T * kvd, 2), v = moe_test::randn(T * kvd, 3);
          std::vector<moe::bf16> kb(kk.size()), vb(v.size());
          for (std::size_t i = 0; i < kk.size(); ++i) {
            kb[i] = moe::bf16(kk[i]);
            vb[i] = moe::bf16(v[i]);
            if (bf16_kv) {  // the reference sees the rounded values
              kk[i] = kb[i].to_float();
              v[i] = vb[i].to_float();
            }
          }
          std::vector<float> o(T * qd, -1.0f);
          moe::Arena arena(moe::attend_scratch_bytes(core, T, T));
          float* s = arena.alloc<float>(moe::attend_scratch_bytes(core, T, T) / sizeof(float));
          const std::size_t prefill = T - 5;
          for (std::size_t g = 0; g < hkv; ++g) {
            const auto run = [&](const auto& kv) {
              const moe::MatrixView<const float> qv(q.data(), T, qd);
              const moe::MatrixView<float> ov(o.data(), T, qd);
              moe::attend_causal(core, qv, ov, kv, g, 0, 70, 0, s, nullptr, 0);
              moe::attend_causal(core, qv, ov, kv, g, 70, prefill, 0, s, nullptr, 0);
              for (std::size_t p = prefill; p < T; ++p) {  // decode: row 0 at position p
                moe::attend_causal(core, {q.data() + p * qd, 1, qd}, {o.data() + p * qd, 1, qd}, kv,
                                   g, 0, 1, p, s, nullptr, 0);
              }
            };
            if (bf16_kv) {
              run(moe::KvRows<moe::bf16>{kb.data() + g * dh, vb.data() + g * dh, kvd});
            } else {
              run(moe::KvRows<float>{kk.data() + g * dh, v.data() + g * dh, kvd});
            }
          }
          moe::AttentionConfig c;
          c.n_q_heads = hq;
          c.n_kv_heads = hkv;
          c.head_dim = dh;
          c.logit_multiplier = 0.3;
          const Vec want = windowed_core(c, Vec(q.begin(), q.end()), Vec(kk.begin(), kk.end()),
                                         Vec(v.begin(), v.end()), T, T, window);
          CHECK(moe_test::diff(o.data(), want.data(), T * qd).max_abs < 1e-5);
        }
      }
    }
  }
}

TEST_CASE("RotaryAttention with q/k/v biases, q/k norms and a window: backward vs float64",
          "[train][attention][hf]") {
  struct Case {
    const char* name;
    bool bias, qk_norm;
    std::size_t window;
  };
  const Case cases[] = {{"biases (Qwen2-MoE)", true, false, 0},
                        {"q/k norms (OLMoE)", false, true, 0},
                        {"window 3 (Mixtral)", false, false, 3},
                        {"all three", true, true, 2}};
  for (const Case& k : cases) {
    SECTION(k.name) {
      moe::AttentionConfig c;
      c.d_model = 10;
      c.n_q_heads = 4;
      c.n_kv_heads = 2;
      c.head_dim = 4;
      c.rope_base = 50.0;
      c.sliding_window = k.window;
      c.qk_norm_eps = 1e-5;
      const std::size_t B = 2, T = 7, n = B * T, d = c.d_model, qd = c.q_dim(), kvd = c.kv_dim();
      const moe::Layout layout = moe::Layout::kOutIn;  // the HF layout
      moe_test::ref::Params p;
      p.add("x", moe_test::randn(n * d, 1));
      p.add("wq", moe_test::randn(d * qd, 2, 1.5f / std::sqrt(float(d))));
      p.add("wk", moe_test::randn(d * kvd, 3, 1.5f / std::sqrt(float(d))));
      p.add("wv", moe_test::randn(d * kvd, 4, 1.0f / std::sqrt(float(d))));
      p.add("wo", moe_test::randn(qd * d, 5, 1.0f / std::sqrt(float(qd))));
      if (k.bias) {
        p.add("bq", moe_test::randn(qd, 6, 0.3f));
        p.add("bk", moe_test::randn(kvd, 7, 0.3f));
        p.add("bv", moe_test::randn(kvd, 8, 0.3f));
      }
      if (k.qk_norm) {
        auto qn = moe_test::randn(qd, 9, 0.2f), kn = moe_test::randn(kvd, 10, 0.2f);
        for (float& s : qn) s += 1.0f;
        for (float& s : kn) s += 1.0f;
        p.add("q_norm", qn);
        p.add("k_norm", kn);
      }
      const auto r = moe_test::randn(n * d, 11);
      auto x = p.f32("x"), wq = p.f32("wq"), wk = p.f32("wk"), wv = p.f32("wv"), wo = p.f32("wo");
      std::vector<float> bq, bk, bv, qn, kn;
      moe::AttentionWeights<moe::F32Weight> w{{wq.data(), d, qd, layout},
                                              {wk.data(), d, kvd, layout},
                                              {wv.data(), d, kvd, layout},
                                              {wo.data(), qd, d, layout}};
      if (k.bias) {
        bq = p.f32("bq"), bk = p.f32("bk"), bv = p.f32("bv");
        w.bq = bq;
        w.bk = bk;
        w.bv = bv;
      }
      if (k.qk_norm) {
        qn = p.f32("q_norm"), kn = p.f32("k_norm");
        w.q_norm = qn;
        w.k_norm = kn;
      }
      moe::RotaryAttention<moe::F32Weight> attn(c, w);
      moe::ThreadPool pool(2);
      moe::Arena scratch(attn.training_workspace_bytes(n)), tape(attn.tape_bytes(n));
      std::vector<float> y(n * d), dx(n * d, 0.0f), gq(wq.size(), 0.0f), gk(wk.size(), 0.0f),
          gv(wv.size(), 0.0f), go(wo.size(), 0.0f), gbq(qd, 0.0f), gbk(kvd, 0.0f), gbv(kvd, 0.0f),
          gqn(qd, 0.0f), gkn(kvd, 0.0f);
      decltype(attn)::Saved saved;
      attn.forward_train(pool, {x.data(), n, d}, {y.data(), n, d}, T, scratch, tape, saved);
      CHECK(tape.used() <= attn.tape_bytes(n));
      decltype(attn)::Grads grads{
          moe::WeightGrad::like(gq.data(), w.wq), moe::WeightGrad::like(gk.data(), w.wk),
          moe::WeightGrad::like(gv.data(), w.wv), moe::WeightGrad::like(go.data(), w.wo)};
      if (k.bias) {
        grads.bq = gbq;
        grads.bk = gbk;
        grads.bv = gbv;
      }
      if (k.qk_norm) {
        grads.q_norm = gqn;
        grads.k_norm = gkn;
      }
      attn.backward(pool, {x.data(), n, d}, saved, {r.data(), n, d}, {dx.data(), n, d}, grads,
                    scratch);
      CHECK(scratch.high_water() <= scratch.capacity());
      // Each sequence's training forward equals the inference path, prefill then decode steps.
      for (std::size_t b = 0; b < B; ++b) {
        moe::KvCache cache(1, c.n_kv_heads, c.head_dim, T);
        moe::Arena ws(attn.workspace_bytes(T));
        std::vector<float> yi(T * d);
        attn.forward(pool, {x.data() + b * T * d, 3, d}, {yi.data(), 3, d}, cache, 0, ws);
        for (std::size_t t = 3; t < T; ++t) {
          attn.forward(pool, {x.data() + (b * T + t) * d, 1, d}, {yi.data() + t * d, 1, d}, cache,
                       0, ws);
        }
        CHECK(moe_test::diff(yi.data(), y.data() + b * T * d, T * d).max_abs < 1e-5);
      }
      // float64: projections + biases, norms over the whole projection, RoPE, windowed core.
      const auto forward64 = [&]() {
        const Vec xv(p["x"], p["x"] + n * d);
        Vec q = moe_test::ref::matmul(xv, n, p["wq"], d, qd, layout),
            kk = moe_test::ref::matmul(xv, n, p["wk"], d, kvd, layout),
            v = moe_test::ref::matmul(xv, n, p["wv"], d, kvd, layout);
        for (std::size_t t = 0; t < n && k.bias; ++t) {
          for (std::size_t i = 0; i < qd; ++i) q[t * qd + i] += p["bq"][i];
          for (std::size_t i = 0; i < kvd; ++i) kk[t * kvd + i] += p["bk"][i];
          for (std::size_t i = 0; i < kvd; ++i) v[t * kvd + i] += p["bv"][i];
        }
        if (k.qk_norm) {
          q = moe_test::ref::rms_norm(q, qd, p["q_norm"], c.qk_norm_eps);
          kk = moe_test::ref::rms_norm(kk, kvd, p["k_norm"], c.qk_norm_eps);
        }
        for (std::size_t t = 0; t < n; ++t) {
          for (std::size_t h = 0; h < c.n_q_heads; ++h) {
            moe_test::ref::rope(&q[(t * c.n_q_heads + h) * 4], 4, t % T, c.rope_base,
                                c.rope_layout);
          }
          for (std::size_t h = 0; h < c.n_kv_heads; ++h) {
            moe_test::ref::rope(&kk[(t * c.n_kv_heads + h) * 4], 4, t % T, c.rope_base,
                                c.rope_layout);
          }
        }
        const Vec o = windowed_core(c, q, kk, v, n, T, k.window);
        return moe_test::ref::matmul(o, n, p["wo"], qd, d, layout);
      };
      CHECK(moe_test::diff(y.data(), forward64().data(), n * d).max_abs < 1e-5);
      const auto loss = [&]() { return moe_test::projected(r, forward64()); };
      const auto num = moe_test::numeric_gradient(loss, p.theta);
      const struct {
        const char* name;
        const std::vector<float>* g;
      } parts[] = {{"x", &dx},   {"wq", &gq},  {"wk", &gk},  {"wv", &gv},      {"wo", &go},
                   {"bq", &gbq}, {"bk", &gbk}, {"bv", &gbv}, {"q_norm", &gqn}, {"k_norm", &gkn}};
      for (const auto& part : parts) {
        if (!p.has(part.name)) continue;
        check_grad(part.name, *part.g, num.data() + p.slice(part.name).offset);
      }
    }
  }
}

TEST_CASE("RotaryAttention: bias and norm shapes, one norm alone, gradients without weights",
          "[train][attention][hf]") {
  moe::AttentionConfig c;
  c.d_model = 8;
  c.n_q_heads = 2;
  c.n_kv_heads = 1;
  c.head_dim = 4;
  std::vector<float> wbuf(64, 0.1f), b3(3), b8(8), b4(4);
  const moe::F32Weight q{wbuf.data(), 8, 8}, kv{wbuf.data(), 8, 4}, o{wbuf.data(), 8, 8};
  moe::AttentionWeights<moe::F32Weight> w{q, kv, kv, o};
  w.bk = b3;
  CHECK_THROWS_WITH((moe::RotaryAttention<moe::F32Weight>(c, w)),
                    "[attention] tensor 'bk' has shape [3], expected [4]");
  w.bk = {};
  w.q_norm = b8;
  CHECK_THROWS_WITH((moe::RotaryAttention<moe::F32Weight>(c, w)),
                    "[attention] q_norm and k_norm come together: got only q_norm");
  w.q_norm = {};
  const moe::RotaryAttention<moe::F32Weight> attn(c, w);
  moe::ThreadPool pool(1);
  moe::Arena scratch(attn.training_workspace_bytes(4)), tape(attn.tape_bytes(4));
  const auto x = moe_test::randn(4 * 8, 1);
  std::vector<float> y(32), dx(32, 0.0f);
  decltype(attn)::Saved saved;
  attn.forward_train(pool, {x.data(), 4, 8}, {y.data(), 4, 8}, 4, scratch, tape, saved);
  decltype(attn)::Grads grads;
  grads.bq = b8;
  CHECK_THROWS_WITH(attn.backward(pool, {x.data(), 4, 8}, saved, {y.data(), 4, 8},
                                  {dx.data(), 4, 8}, grads, scratch),
                    "[attention] gradient of 'bq' given, but the layer has no bq");
}

namespace {

/// theta = [x | Wg | Wu | Wd | w] for SigmoidGatedFfn, L = sum r * y.
struct SharedProblem {
  std::size_t t_count = 23, d = 9, f = 14;
  moe::Layout layout = moe::Layout::kOutIn;
  std::vector<float> x, wg, wu, wd, wgate, r;
  SharedProblem()
      : x(moe_test::randn(23 * 9, 1)),
        wg(moe_test::randn(9 * 14, 2, 0.4f)),
        wu(moe_test::randn(9 * 14, 3, 0.4f)),
        wd(moe_test::randn(14 * 9, 4, 0.3f)),
        wgate(moe_test::randn(9, 5, 0.5f)),
        r(moe_test::randn(23 * 9, 6)) {}
  [[nodiscard]] moe::SigmoidGatedFfn<moe::F32Weight> layer() const {
    return {moe::GatedFfn<moe::F32Weight>({wg.data(), d, f, layout}, {wu.data(), d, f, layout},
                                          {wd.data(), f, d, layout}),
            {wgate.data(), d, 1, layout}};
  }
};

}  // namespace

TEST_CASE("SigmoidGatedFfn (Qwen2-MoE's gated shared expert): backward vs float64",
          "[train][ffn][hf]") {
  const SharedProblem pr;
  const auto layer = pr.layer();
  const std::size_t t_count = pr.t_count, d = pr.d, f = pr.f, nx = t_count * d, nw = d * f;
  moe::ThreadPool pool(2);
  moe::Arena scratch(layer.training_workspace_bytes(t_count)), tape(layer.tape_bytes(t_count));
  std::vector<float> y(nx), y_inf(nx), dx(nx, 0.0f), gg(nw, 0.0f), gu(nw, 0.0f), gd(nw, 0.0f),
      gw(d, 0.0f);
  decltype(layer)::Saved saved;
  layer.forward_train(pool, {pr.x.data(), t_count, d}, {y.data(), t_count, d}, scratch, tape,
                      saved);
  {
    moe::Arena ws(layer.workspace_bytes(t_count));
    layer.forward(pool, {pr.x.data(), t_count, d}, {y_inf.data(), t_count, d}, ws);
    CHECK(moe_test::diff(y.data(), y_inf.data(), nx).max_abs < 1e-6);
  }
  decltype(layer)::Grads grads;
  grads.ffn = {moe::WeightGrad{gg.data(), d, f, pr.layout},
               moe::WeightGrad{gu.data(), d, f, pr.layout},
               moe::WeightGrad{gd.data(), f, d, pr.layout}};
  grads.gate = moe::WeightGrad{gw.data(), d, 1, pr.layout};
  layer.backward(pool, {pr.x.data(), t_count, d}, saved, {pr.r.data(), t_count, d},
                 {dx.data(), t_count, d}, grads, scratch);

  std::vector<double> theta;
  for (const auto* v : {&pr.x, &pr.wg, &pr.wu, &pr.wd, &pr.wgate}) {
    theta.insert(theta.end(), v->begin(), v->end());
  }
  const auto forward64 = [&]() {  // [out, in] storage: W[i, o] at o * in + i
    std::vector<double> out(nx);
    std::vector<double> hid(f);
    for (std::size_t t = 0; t < t_count; ++t) {
      const double* xt = &theta[t * d];
      for (std::size_t o = 0; o < f; ++o) {
        double g = 0, u = 0;
        for (std::size_t i = 0; i < d; ++i) {
          g += xt[i] * theta[nx + o * d + i];
          u += xt[i] * theta[nx + nw + o * d + i];
        }
        hid[o] = g / (1.0 + std::exp(-g)) * u;
      }
      double z = 0;
      for (std::size_t i = 0; i < d; ++i) z += xt[i] * theta[nx + 3 * nw + i];
      const double s = 1.0 / (1.0 + std::exp(-z));
      for (std::size_t o = 0; o < d; ++o) {
        double yv = 0;
        for (std::size_t i = 0; i < f; ++i) yv += hid[i] * theta[nx + 2 * nw + o * f + i];
        out[t * d + o] = s * yv;
      }
    }
    return out;
  };
  CHECK(moe_test::diff(y.data(), forward64().data(), nx).max_abs < 1e-5);
  const auto loss = [&]() {
    const auto out = forward64();
    double l = 0;
    for (std::size_t i = 0; i < nx; ++i) l += pr.r[i] * out[i];
    return l;
  };
  const auto num = moe_test::numeric_gradient(loss, theta);
  check_grad("x", dx, num.data());
  check_grad("gate", gg, num.data() + nx);
  check_grad("up", gu, num.data() + nx + nw);
  check_grad("down", gd, num.data() + nx + 2 * nw);
  check_grad("shared_expert_gate", gw, num.data() + nx + 3 * nw);
}

TEST_CASE("MoELayer with a SigmoidGatedFfn shared expert = routed part + gated shared expert",
          "[train][moe][hf]") {
  const SharedProblem pr;
  const std::size_t t_count = pr.t_count, d = pr.d, f = pr.f, e_count = 4;
  const auto wr = moe_test::randn(d * e_count, 7, 0.5f),
             wge = moe_test::randn(e_count * d * f, 8, 0.4f),
             wue = moe_test::randn(e_count * d * f, 9, 0.4f),
             wde = moe_test::randn(e_count * f * d, 10, 0.3f);
  using Shared = moe::SigmoidGatedFfn<moe::F32Weight>;
  using WithShared = moe::MoELayer<moe::Router<moe::F32Weight>, moe::Expert<moe::F32Weight>,
                                   moe::Dropless, moe::NoBalanceLoss, moe::NoZLoss, Shared>;
  using Routed = moe::MoELayer<moe::Router<moe::F32Weight>, moe::Expert<moe::F32Weight>>;
  const moe::F32Weight router{wr.data(), d, e_count};
  const moe::WeightStack<moe::F32Weight> gate{{wge.data(), d, f}, e_count},
      up{{wue.data(), d, f}, e_count}, down{{wde.data(), f, d}, e_count};
  typename Routed::Policies pol;
  pol.routing.top_k = 2;
  pol.routing.renormalize = false;
  typename WithShared::Policies pol_s;
  pol_s.routing = pol.routing;
  const WithShared with(
      {.router = router, .gate = gate, .up = up, .down = down, .shared = pr.layer()}, pol_s);
  const Routed routed({.router = router, .gate = gate, .up = up, .down = down}, pol);
  const Shared shared = pr.layer();

  moe::ThreadPool pool(2);
  const moe::MatrixView<const float> x(pr.x.data(), t_count, d), dy(pr.r.data(), t_count, d);
  // forward_train + backward (input gradient only: all weights frozen) of each layer.
  const auto run = [&](const auto& layer, std::vector<float>& y, std::vector<float>& dx) {
    using L = std::decay_t<decltype(layer)>;
    moe::Arena scratch(layer.training_workspace_bytes(t_count)), tape(layer.tape_bytes(t_count));
    typename L::Saved saved;
    y.assign(t_count * d, 0.0f);
    dx.assign(t_count * d, 0.0f);
    layer.forward_train(pool, x, {y.data(), t_count, d}, scratch, tape, saved);
    layer.backward(pool, x, saved, dy, {dx.data(), t_count, d}, typename L::Grads{}, scratch);
  };
  std::vector<float> y1, dx1, y2, dx2, y3, dx3;
  run(with, y1, dx1);
  run(routed, y2, dx2);
  run(shared, y3, dx3);
  for (std::size_t i = 0; i < t_count * d; ++i) {
    y2[i] += y3[i];
    dx2[i] += dx3[i];
  }
  CHECK(moe_test::diff(y1.data(), y2.data(), y1.size()).max_abs < 1e-5);
  CHECK(moe_test::diff(dx1.data(), dx2.data(), dx1.size()).max_abs < 1e-5);
  // inference forward too
  moe::Arena ws(with.workspace_bytes(t_count));
  std::vector<float> yi(t_count * d);
  with.forward(pool, x, {yi.data(), t_count, d}, ws);
  CHECK(moe_test::diff(yi.data(), y1.data(), yi.size()).max_abs < 1e-5);
}
