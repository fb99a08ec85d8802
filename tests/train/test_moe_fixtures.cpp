// One training step of an MoE layer under each preset against PyTorch float64 autograd
// (tools/moe_grad_reference.py, fixtures tests/data/moe/grad_*.txt): the routing decisions, the
// kept counts, the output, the auxiliary losses and every parameter's gradient, each within 1e-4
// of that tensor's largest value. The noise is moe::rng's, evaluated by the script too.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <moe/core/arena.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/layers/presets.hpp>

#include "common/fixture.hpp"
#include "common/gradcheck.hpp"

namespace {

using Fixture = moe_test::TextFixture;

moe::Layout layout_of(const std::string& s) {
  return s == "out_in" ? moe::Layout::kOutIn : moe::Layout::kInOut;
}

/// Compares a float tensor with the fixture's, relative to the fixture tensor's largest value.
void expect_close(const std::string& what, const float* got, const std::vector<double>& want,
                  double tol = 1e-4) {
  const moe_test::GradCheck c = moe_test::compare_gradient(got, want.data(), want.size());
  INFO(c.str(what));
  REQUIRE(c.scale > 0.0);
  CHECK(c.max_err < tol);
  if (std::getenv("MOE_GRAD_VERBOSE") != nullptr) std::printf("%s\n", c.str(what).c_str());
}

template <class Layer>
void check_step(const std::string& file, typename Layer::Policies p = {}) {
  INFO(file);
  if (std::getenv("MOE_GRAD_VERBOSE") != nullptr) std::printf("%s\n", file.c_str());
  const Fixture fx = moe_test::load_text_fixture(std::string(MOE_TEST_DATA_DIR) + "/moe/" + file);
  const std::size_t t_count = fx.cfg("T"), d = fx.cfg("D"), f = fx.cfg("F"), e = fx.cfg("E"),
                    k = fx.cfg("k");
  const moe::Layout lay = layout_of(fx.config.at("layout"));
  const moe::Layout rlay = layout_of(fx.config.at("router_layout"));
  if (fx.config.count("seq_len")) {
    if constexpr (Layer::kBalance) p.balance.sequence_length = fx.cfg("seq_len");
  }
  const auto x = fx.f("x"), r = fx.f("r"), router = fx.f("router"), gate = fx.f("gate"),
             up = fx.f("up"), down = fx.f("down");
  const std::vector<float> noise = fx.has("noise") ? fx.f("noise") : std::vector<float>{};
  const std::vector<float> bias = fx.has("bias") ? fx.f("bias") : std::vector<float>{};
  const auto stack = [&](const std::vector<float>& v, std::size_t in, std::size_t out) {
    return moe::WeightStack<moe::F32Weight>{{v.data(), in, out, lay}, e};
  };
  const moe::F32Weight wr{router.data(), d, e, rlay};
  moe::F32Weight wn{};
  if (!noise.empty()) wn = {noise.data(), d, e, moe::Layout::kInOut};
  std::vector<float> sg, su, sd;
  std::size_t fs = 0;
  const Layer layer = [&] {
    if constexpr (Layer::kShared) {
      sg = fx.f("shared_gate");
      su = fx.f("shared_up");
      sd = fx.f("shared_down");
      fs = fx.shape.at("shared_gate")[lay == moe::Layout::kInOut ? 1 : 0];
      return Layer(
          {.router = wr,
           .noise = wn,
           .selection_bias = bias,
           .gate = stack(gate, d, f),
           .up = stack(up, d, f),
           .down = stack(down, f, d),
           .shared = {moe::F32Weight{sg.data(), d, fs, lay}, moe::F32Weight{su.data(), d, fs, lay},
                      moe::F32Weight{sd.data(), fs, d, lay}}},
          p);
    } else {
      return Layer({.router = wr,
                    .noise = wn,
                    .selection_bias = bias,
                    .gate = stack(gate, d, f),
                    .up = stack(up, d, f),
                    .down = stack(down, f, d)},
                   p);
    }
  }();

  moe::ThreadPool pool(2);
  moe::Arena scratch(layer.training_workspace_bytes(t_count)), tape(layer.tape_bytes(t_count));
  typename Layer::Saved saved;
  moe::ForwardOptions opts;
  opts.training = true;
  opts.step = fx.cfg("step");
  std::vector<float> y(t_count * d);
  const moe::MoEResult res = layer.forward_train(
      pool, {x.data(), t_count, d}, {y.data(), t_count, d}, scratch, tape, saved, opts);
  // decisions
  const auto& ex = fx.t("experts");
  for (std::size_t t = 0; t < t_count; ++t) {
    for (std::size_t j = 0; j < k; ++j) {
      INFO("token " << t << " slot " << j);
      const double want = ex[t * k + j];
      CHECK(saved.route.experts(t, j) ==
            (want < 0 ? moe::kNoExpert : static_cast<std::uint32_t>(want)));
    }
  }
  const auto& kept = fx.t("kept");
  for (std::size_t i = 0; i < e; ++i) CHECK(res.stats.tokens_per_expert[i] == kept[i]);
  CHECK(res.stats.capacity == fx.cfg("capacity"));
  expect_close("y", y.data(), fx.t("y"), 1e-5);
  const auto loss = [&](const char* name) { return fx.has(name) ? fx.s(name) : 0.0; };
  CHECK(res.losses.load_balance == Approx(loss("loss_load_balance")).epsilon(1e-5));
  CHECK(res.losses.z_loss == Approx(loss("loss_z_loss")).epsilon(1e-5));
  CHECK(res.losses.importance == Approx(loss("loss_importance")).epsilon(1e-4).margin(1e-9));
  CHECK(res.losses.load == Approx(loss("loss_load")).epsilon(1e-4).margin(1e-9));

  // backward with dy = r and the fixture's loss scale
  std::vector<float> dx(t_count * d, 0.0f), g_router(router.size(), 0.0f),
      g_noise(noise.size(), 0.0f), g_gate(gate.size(), 0.0f), g_up(up.size(), 0.0f),
      g_down(down.size(), 0.0f), g_sg(sg.size(), 0.0f), g_su(su.size(), 0.0f),
      g_sd(sd.size(), 0.0f);
  typename Layer::Grads grads;
  grads.router.gate = moe::WeightGrad::like(g_router.data(), wr);
  if (!noise.empty()) grads.router.noise = moe::WeightGrad::like(g_noise.data(), wn);
  grads.experts.gate = moe::grad_like(g_gate.data(), layer.experts().gate());
  grads.experts.up = moe::grad_like(g_up.data(), layer.experts().up());
  grads.experts.down = moe::grad_like(g_down.data(), layer.experts().down());
  if constexpr (Layer::kShared) {
    grads.shared.gate = moe::WeightGrad::like(g_sg.data(), layer.shared().gate());
    grads.shared.up = moe::WeightGrad::like(g_su.data(), layer.shared().up());
    grads.shared.down = moe::WeightGrad::like(g_sd.data(), layer.shared().down());
  }
  moe::BackwardOptions bo;
  bo.loss_scale = static_cast<float>(fx.cfgd("loss_scale"));
  layer.backward(pool, {x.data(), t_count, d}, saved, {r.data(), t_count, d},
                 {dx.data(), t_count, d}, grads, scratch, bo);
  expect_close("dL/dx", dx.data(), fx.t("grad_x"));
  expect_close("dL/drouter", g_router.data(), fx.t("grad_router"));
  if (!noise.empty()) expect_close("dL/dnoise", g_noise.data(), fx.t("grad_noise"));
  expect_close("dL/dgate", g_gate.data(), fx.t("grad_gate"));
  expect_close("dL/dup", g_up.data(), fx.t("grad_up"));
  expect_close("dL/ddown", g_down.data(), fx.t("grad_down"));
  if constexpr (Layer::kShared) {
    expect_close("dL/dshared_gate", g_sg.data(), fx.t("grad_shared_gate"));
    expect_close("dL/dshared_up", g_su.data(), fx.t("grad_shared_up"));
    expect_close("dL/dshared_down", g_sd.data(), fx.t("grad_shared_down"));
  }
}

}  // namespace

TEST_CASE("PyTorch float64 fixtures: one training step under each preset", "[train][moe_fixture]") {
  using namespace moe::presets;
  using W = moe::F32Weight;
  SECTION("Switch") {
    check_step<Switch<W>>("grad_switch.txt");
  }
  SECTION("GShardTop2") {
    check_step<GShardTop2<W>>("grad_gshard.txt");
  }
  SECTION("STMoE") {
    check_step<STMoE<W>>("grad_stmoe.txt");
  }
  SECTION("Mixtral") {
    check_step<Mixtral<W>>("grad_mixtral.txt");
  }
  SECTION("Grok1") {
    check_step<Grok1Of<W>>("grad_grok1.txt");
  }
  SECTION("DeepSeekV3") {
    check_step<DeepSeekV3<W>>("grad_deepseekv3.txt");
  }
  SECTION("GLaM") {
    check_step<GLaM<W>>("grad_glam.txt");
  }
  SECTION("SparselyGated (noisy top-k)") {
    check_step<SparselyGated<W>>("grad_noisy_topk.txt");
  }
}
