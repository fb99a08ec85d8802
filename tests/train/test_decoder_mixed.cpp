// DenseOrMoE in training: a block holding an MoE layer (or a dense FFN) through DenseOrMoE gives
// the same bits as a block holding that layer directly, forward_train and backward; a decoder that
// mixes dense and MoE blocks trains, and reports MoE statistics and losses for its MoE blocks only.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include <moe/core/arena.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/layers/decoder.hpp>
#include <moe/layers/expert.hpp>
#include <moe/layers/presets.hpp>

#include "common/test_util.hpp"

namespace {

template <class M>
concept TrainableMoE = requires {
  typename M::Saved;
  typename M::Grads;
};

constexpr std::size_t D = 16, F = 12, E = 4, V = 19, B = 2, T = 9, N = B * T;

struct Weights {
  moe::AttentionConfig ac;
  std::vector<float> wq = moe_test::randn(D * D, 1, 0.3f), wk = moe_test::randn(D * 8, 2, 0.3f),
                     wv = moe_test::randn(D * 8, 3, 0.3f), wo = moe_test::randn(D * D, 4, 0.3f),
                     router = moe_test::randn(D * E, 5, 0.5f),
                     gate = moe_test::randn(E * D * F, 6, 0.3f),
                     up = moe_test::randn(E * D * F, 7, 0.3f),
                     down = moe_test::randn(E * F * D, 8, 0.3f),
                     norm = moe_test::randu(D, 9, 0.7f, 1.3f);
  Weights() {
    ac.d_model = D;
    ac.n_q_heads = 4;
    ac.n_kv_heads = 2;
    ac.head_dim = 4;
  }
  moe::RotaryAttention<moe::F32Weight> attention() const {
    return {ac, {{wq.data(), D, D}, {wk.data(), D, 8}, {wv.data(), D, 8}, {wo.data(), D, D}}};
  }
  template <class M>
  M moe_layer() const {
    return M(typename M::router_type(moe::F32Weight{router.data(), D, E}),
             typename M::expert_type({{gate.data(), D, F}, E}, {{up.data(), D, F}, E},
                                     {{down.data(), F, D}, E}));
  }
  moe::GatedFfn<moe::F32Weight> dense() const {
    return {{gate.data(), D, F}, {up.data(), D, F}, {down.data(), F, D}};
  }
};

/// Gradient buffers for one block (attention, norms, the FFN's three / router + experts).
struct BlockGradBuffers {
  std::vector<float> wq = std::vector<float>(D * D), wk = std::vector<float>(D * 8),
                     wv = std::vector<float>(D * 8), wo = std::vector<float>(D * D),
                     router = std::vector<float>(D * E), gate = std::vector<float>(E * D * F),
                     up = std::vector<float>(E * D * F), down = std::vector<float>(E * F * D),
                     n0 = std::vector<float>(D), n2 = std::vector<float>(D);
  bool operator==(const BlockGradBuffers&) const = default;
};

template <class BlockT>
void fill_attention_and_norms(typename BlockT::Grads& g, BlockGradBuffers& b) {
  g.attention = {
      {b.wq.data(), D, D}, {b.wk.data(), D, 8}, {b.wv.data(), D, 8}, {b.wo.data(), D, D}};
  g.pre_attn = b.n0;
  g.pre_ffn = b.n2;
}
template <class G>
void fill_moe(G& g, BlockGradBuffers& b) {
  g.router.gate = {b.router.data(), D, E};
  g.experts.gate = {{b.gate.data(), D, F}, E};
  g.experts.up = {{b.up.data(), D, F}, E};
  g.experts.down = {{b.down.data(), F, D}, E};
}
template <class G>
void fill_dense(G& g, BlockGradBuffers& b) {
  g = {{b.gate.data(), D, F}, {b.up.data(), D, F}, {b.down.data(), F, D}};
}

/// forward_train + backward of one block; returns the output and fills `b`.
template <class BlockT, class FillFfn>
std::vector<float> block_step(const BlockT& block, BlockGradBuffers& b, FillFfn fill_ffn) {
  moe::ThreadPool pool(2);
  moe::Arena scratch(block.training_workspace_bytes(N)), tape(block.tape_bytes(N));
  const auto x = moe_test::randn(N * D, 11), dy = moe_test::randn(N * D, 12);
  std::vector<float> y(N * D), dx(N * D, 0.0f);
  typename BlockT::Saved saved;
  block.forward_train(pool, {x.data(), N, D}, {y.data(), N, D}, T, scratch, tape, saved);
  typename BlockT::Grads g;
  fill_attention_and_norms<BlockT>(g, b);
  fill_ffn(g.ffn, b);
  block.backward(pool, {x.data(), N, D}, saved, {dy.data(), N, D}, {dx.data(), N, D}, g, scratch);
  y.insert(y.end(), dx.begin(), dx.end());
  return y;
}

template <class M>
void check_mixed() {
  const Weights w;
  using Dense = moe::GatedFfn<moe::F32Weight>;
  using Attn = moe::RotaryAttention<moe::F32Weight>;
  using Mixed = moe::TransformerBlock<Attn, moe::DenseOrMoE<M, Dense>>;
  const moe::BlockNorms norms{w.norm, {}, w.norm, {}};
  {  // MoE through DenseOrMoE == MoE held directly
    BlockGradBuffers a, b;
    const auto ya = block_step(Mixed(w.attention(), w.moe_layer<M>(), norms), a,
                               [](auto& g, BlockGradBuffers& buf) { fill_moe(g.moe, buf); });
    const auto yb =
        block_step(moe::TransformerBlock<Attn, M>(w.attention(), w.moe_layer<M>(), norms), b,
                   [](auto& g, BlockGradBuffers& buf) { fill_moe(g, buf); });
    CHECK(ya == yb);
    CHECK(a == b);
  }
  {  // dense through DenseOrMoE == dense held directly
    BlockGradBuffers a, b;
    const auto ya = block_step(Mixed(w.attention(), w.dense(), norms), a,
                               [](auto& g, BlockGradBuffers& buf) { fill_dense(g.dense, buf); });
    const auto yb = block_step(moe::TransformerBlock<Attn, Dense>(w.attention(), w.dense(), norms),
                               b, [](auto& g, BlockGradBuffers& buf) { fill_dense(g, buf); });
    CHECK(ya == yb);
    CHECK(a == b);
  }
  {  // a decoder with an MoE block, then a dense block
    std::vector<Mixed> blocks;
    blocks.emplace_back(w.attention(), w.moe_layer<M>(), norms);
    blocks.emplace_back(w.attention(), w.dense(), norms);
    const auto emb = moe_test::randn(V * D, 13);
    const moe::Decoder<Mixed> model({V, D}, {emb.data(), V, D}, std::move(blocks), w.norm);
    BlockGradBuffers g0, g1;
    std::vector<float> ge(V * D), gf(D);
    typename moe::Decoder<Mixed>::Grads grads;
    grads.embedding = ge;
    grads.final_norm = gf;
    grads.blocks.resize(2);
    fill_attention_and_norms<Mixed>(grads.blocks[0], g0);
    fill_moe(grads.blocks[0].ffn.moe, g0);
    fill_attention_and_norms<Mixed>(grads.blocks[1], g1);
    fill_dense(grads.blocks[1].ffn.dense, g1);
    moe::ThreadPool pool(2);
    auto st = model.make_training_state(B, T);
    std::vector<std::int32_t> tok(N), tgt(N);
    for (std::size_t i = 0; i < N; ++i) {
      tok[i] = static_cast<std::int32_t>((i * 7) % V);
      tgt[i] = static_cast<std::int32_t>((i * 5 + 3) % V);
    }
    const moe::TrainingLoss l = model.forward_train(pool, tok, tgt, st);
    model.backward(pool, st, grads);
    const auto results = st.ffn_results();
    REQUIRE(results.size() == 2);
    REQUIRE(results[0].has_value());
    CHECK_FALSE(results[1].has_value());
    CHECK(results[0]->stats.tokens == N);
    CHECK(l.aux == results[0]->losses.total());
    CHECK(l.loss == l.ce + l.aux);
    float m0 = 0, m1 = 0;
    for (float v : g0.router) m0 = std::max(m0, std::abs(v));
    for (float v : g1.gate) m1 = std::max(m1, std::abs(v));
    CHECK(m0 > 0);  // the MoE block's router and the dense block's FFN both learn
    CHECK(m1 > 0);
  }
}

}  // namespace

TEST_CASE("DenseOrMoE trains like the layer it holds; a mixed decoder trains",
          "[train][decoder][mixed]") {
  check_mixed<moe::presets::Mixtral<moe::F32Weight>>();
}
