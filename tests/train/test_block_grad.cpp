// TransformerBlock backward, pre-norm and sandwich, with a dense gated FFN: every parameter (the
// input, the four norm scales, the attention and FFN weights) against central differences of the
// float64 block (tests/train/decoder_ref.hpp), L = sum r * y; forward_train equals forward.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <vector>

#include <moe/core/arena.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/layers/expert.hpp>
#include <moe/layers/transformer_block.hpp>

#include "common/gradcheck.hpp"
#include "common/test_util.hpp"
#include "train/decoder_ref.hpp"
#include "train/dense_model.hpp"

TEST_CASE("TransformerBlock backward matches float64 central differences", "[train][block]") {
  for (bool sandwich : {false, true}) {
    SECTION(sandwich ? "sandwich (Grok-1)" : "pre-norm (Llama, Mixtral)") {
      moe_test::ref::DecoderSpec s;
      s.attention.d_model = 10;
      s.attention.n_q_heads = 4;
      s.attention.n_kv_heads = 2;
      s.attention.head_dim = 3;  // rotary over odd head dims is not allowed: use 2 of 3
      s.attention.rotary_dims = 2;
      s.attention.logit_multiplier = 0.7;
      s.attention.softcap = sandwich ? 1.5 : 0.0;
      s.d_ff = 9;
      s.n_layers = 1;
      s.vocab = 3;
      s.activation = moe::Activation::kGeluErf;
      s.sandwich = sandwich;
      const std::size_t B = 2, T = 6, n = B * T, d = s.attention.d_model;
      moe_test::ref::Params p = moe_test::ref::random_params(s, 11, 1.0f, 2.0f);
      p.add("x", moe_test::randn(n * d, 12, 2.0f));
      const auto r = moe_test::randn(n * d, 13);
      moe_test::DenseModel<moe::Activation::kGeluErf> m(s, p);
      const auto& block = m.model->blocks()[0];
      moe::ThreadPool pool(2);
      moe::Arena scratch(block.training_workspace_bytes(n)), tape(block.tape_bytes(n));
      auto x = p.f32("x");
      std::vector<float> y(n * d), dx(n * d, 0.0f);
      typename std::decay_t<decltype(block)>::Saved saved;
      block.forward_train(pool, {x.data(), n, d}, {y.data(), n, d}, T, scratch, tape, saved);
      CHECK(tape.used() <= block.tape_bytes(n));
      block.backward(pool, {x.data(), n, d}, saved, {r.data(), n, d}, {dx.data(), n, d},
                     m.grads.blocks[0], scratch);
      // forward_train agrees with the inference forward on each sequence
      for (std::size_t b = 0; b < B; ++b) {
        moe::KvCache cache(1, 2, 3, T);
        moe::Arena ws(block.workspace_bytes(T));
        std::vector<float> h(x.begin() + static_cast<std::ptrdiff_t>(b * T * d),
                             x.begin() + static_cast<std::ptrdiff_t>((b + 1) * T * d));
        block.forward(pool, {h.data(), T, d}, cache, 0, ws);
        CHECK(moe_test::diff(h.data(), y.data() + b * T * d, T * d).max_abs < 1e-5);
      }
      const auto loss = [&]() {
        return moe_test::projected(
            r, moe_test::ref::block(s, p, 0, moe_test::ref::Vec(p["x"], p["x"] + n * d), n, T));
      };
      const auto num = moe_test::numeric_gradient(loss, p.theta);
      for (const auto& name : p.order) {
        if (name == "embedding" || name == "final_norm") continue;
        const auto& sl = p.slice(name);
        const float* g = name == "x" ? dx.data() : m.g.at(name).data();
        const auto c = moe_test::compare_gradient(g, num.data() + sl.offset, sl.size);
        INFO(c.str(name));
        REQUIRE(c.scale > 0);
        CHECK(c.max_err < 1e-4);
      }
    }
  }
}
