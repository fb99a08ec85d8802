// Backward of the activations and of GatedFfn against central differences of a float64 forward.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <vector>

#include <moe/core/arena.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/layers/expert.hpp>
#include <moe/ops/activation.hpp>

#include "common/gradcheck.hpp"
#include "common/test_util.hpp"
#include "reference/ops_ref.hpp"

namespace {

constexpr moe::Activation kActs[] = {moe::Activation::kGeluTanh, moe::Activation::kGeluErf,
                                     moe::Activation::kSilu};

}  // namespace

TEST_CASE("activation derivatives match float64 central differences", "[train][activation]") {
  std::vector<float> x = moe_test::randn(301, 11, 3.0f);
  x.insert(x.end(), {0.0f, -0.0f, 29.0f, -29.0f, 31.0f, -31.0f, 1e4f, -1e4f, 1e-8f});
  const std::size_t n = x.size();
  for (moe::Activation a : kActs) {
    std::vector<float> dy = moe_test::randn(n, 12), dx(n);
    moe::activation_backward(a, x.data(), dy.data(), dx.data(), n);
    std::vector<float> gate = x, up = moe_test::randn(n, 13), dgate(n), dup(n);
    moe::gated_activation_backward(a, gate.data(), up.data(), dy.data(), dgate.data(), dup.data(),
                                   n);
    for (std::size_t i = 0; i < n; ++i) {
      const double xi = x[i], h = 1e-5 * std::max(1.0, std::abs(xi));
      const double d = (moe_ref::activation(a, xi + h) - moe_ref::activation(a, xi - h)) / (2 * h);
      INFO(moe::activation_name(a) << " x = " << xi);
      CHECK(dx[i] == Approx(dy[i] * d).margin(1e-6).epsilon(1e-5));
      CHECK(dgate[i] == Approx(dy[i] * up[i] * d).margin(1e-6).epsilon(1e-5));
      CHECK(dup[i] == Approx(dy[i] * moe_ref::activation(a, xi)).margin(1e-6).epsilon(1e-5));
    }
  }
}

namespace {

template <moe::Activation a>
void check_ffn_backward() {
  const std::size_t t_count = 37, d = 12, f = 20;
  {
    for (moe::Layout layout : {moe::Layout::kInOut, moe::Layout::kOutIn}) {
      // theta = [x | Wg | Wu | Wd], each weight as its logical [in, out] matrix in `layout`.
      const std::size_t nx = t_count * d, nw = d * f;
      std::vector<float> xf = moe_test::randn(nx, 1), wg = moe_test::randn(nw, 2, 0.4f),
                         wu = moe_test::randn(nw, 3, 0.4f), wd = moe_test::randn(nw, 4, 0.3f);
      const std::vector<float> r = moe_test::randn(nx, 5);  // L = sum r * y
      const moe::F32Weight gate{wg.data(), d, f, layout}, up{wu.data(), d, f, layout},
          down{wd.data(), f, d, layout};
      using Ffn = moe::GatedFfn<moe::F32Weight, a>;
      const Ffn ffn(gate, up, down);

      // Analytic: forward_train + backward with dy = r.
      moe::ThreadPool pool(2);
      moe::Arena scratch(ffn.training_workspace_bytes(t_count)), tape(ffn.tape_bytes(t_count));
      std::vector<float> y(nx), dx(nx, 0.0f), gg(nw, 0.0f), gu(nw, 0.0f), gd(nw, 0.0f);
      typename Ffn::Saved saved;
      ffn.forward_train(pool, {xf.data(), t_count, d}, {y.data(), t_count, d}, scratch, tape,
                        saved);
      const typename Ffn::Grads grads{moe::WeightGrad::like(gg.data(), gate),
                                      moe::WeightGrad::like(gu.data(), up),
                                      moe::WeightGrad::like(gd.data(), down)};
      ffn.backward(pool, {xf.data(), t_count, d}, saved, {r.data(), t_count, d},
                   {dx.data(), t_count, d}, grads, scratch);

      // Reference: float64 forward over theta, same storage order as the f32 tensors.
      std::vector<double> theta;
      for (const auto* v : {&xf, &wg, &wu, &wd}) theta.insert(theta.end(), v->begin(), v->end());
      const auto at = [&](std::size_t base, std::size_t in, std::size_t out, std::size_t i,
                          std::size_t o) {
        return theta[base + (layout == moe::Layout::kInOut ? i * out + o : o * in + i)];
      };
      const auto loss = [&]() {
        double l = 0;
        std::vector<double> hid(f);
        for (std::size_t t = 0; t < t_count; ++t) {
          for (std::size_t o = 0; o < f; ++o) {
            double g = 0, u = 0;
            for (std::size_t i = 0; i < d; ++i) {
              g += theta[t * d + i] * at(nx, d, f, i, o);
              u += theta[t * d + i] * at(nx + nw, d, f, i, o);
            }
            hid[o] = moe_ref::activation(a, g) * u;
          }
          for (std::size_t o = 0; o < d; ++o) {
            double yv = 0;
            for (std::size_t i = 0; i < f; ++i) yv += hid[i] * at(nx + 2 * nw, f, d, i, o);
            l += r[t * d + o] * yv;
          }
        }
        return l;
      };
      const std::vector<double> num = moe_test::numeric_gradient(loss, theta);
      const struct {
        const char* name;
        const std::vector<float>* analytic;
        std::size_t offset;
      } slices[] = {
          {"x", &dx, 0}, {"gate", &gg, nx}, {"up", &gu, nx + nw}, {"down", &gd, nx + 2 * nw}};
      for (const auto& s : slices) {
        const moe_test::GradCheck c = moe_test::compare_gradient(
            s.analytic->data(), num.data() + s.offset, s.analytic->size());
        INFO(moe::activation_name(a) << " " << moe::layout_name(layout) << " " << c.str(s.name));
        REQUIRE(c.scale > 0);
        CHECK(c.max_err < 1e-4);
      }
    }
  }
}

}  // namespace

TEST_CASE("GatedFfn backward matches central differences of a float64 forward", "[train][ffn]") {
  check_ffn_backward<moe::Activation::kGeluTanh>();
  check_ffn_backward<moe::Activation::kGeluErf>();
  check_ffn_backward<moe::Activation::kSilu>();
}

TEST_CASE("GatedFfn backward refuses to train a bf16 weight", "[train][ffn]") {
  std::vector<moe::bf16> w(6 * 4, moe::bf16(0.1f));
  const moe::BF16Weight g{w.data(), 6, 4}, u{w.data(), 6, 4}, dn{w.data(), 4, 6};
  const moe::GatedFfn<moe::BF16Weight> ffn(g, u, dn);
  moe::ThreadPool pool(1);
  moe::Arena scratch(ffn.training_workspace_bytes(2)), tape(ffn.tape_bytes(2));
  std::vector<float> x(12, 1.0f), y(12), dx(12, 0.0f), gbuf(24, 0.0f);
  decltype(ffn)::Saved saved;
  ffn.forward_train(pool, {x.data(), 2, 6}, {y.data(), 2, 6}, scratch, tape, saved);
  decltype(ffn)::Grads grads;
  grads.up = moe::WeightGrad{gbuf.data(), 6, 4};
  CHECK_THROWS_WITH(ffn.backward(pool, {x.data(), 2, 6}, saved, {y.data(), 2, 6}, {dx.data(), 2, 6},
                                 grads, scratch),
                    Catch::Contains("[ffn] weight 'up' is bf16") &&
                        Catch::Contains("only f32 weights are trainable"));
  grads.up = {};
  CHECK_NOTHROW(ffn.backward(pool, {x.data(), 2, 6}, saved, {y.data(), 2, 6}, {dx.data(), 2, 6},
                             grads, scratch));
}
