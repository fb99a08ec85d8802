// ParameterStore, AdamW, clipping and the schedule against torch.optim.AdamW /
// clip_grad_norm_ (tools/optim_reference.py, float64), and the training checkpoint.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <moe/core/thread_pool.hpp>
#include <moe/train/checkpoint.hpp>
#include <moe/train/optimizer.hpp>
#include <moe/train/parameters.hpp>

#include "common/fixture.hpp"
#include "common/test_util.hpp"

namespace {

moe_test::TextFixture adamw_fixture() {
  return moe_test::load_text_fixture(std::string(MOE_TEST_DATA_DIR) + "/train/adamw.txt");
}

struct Model {
  moe::ParameterStore store;
  moe::ParameterStore::Id w0, w1, w2;
  Model() {
    w0 = store.add("w0", {3, 5});
    w1 = store.add("w1", {7}, /*decay=*/false);
    w2 = store.add("w2", {4, 4});
    store.allocate();
  }
};

std::filesystem::path temp_path(const std::string& name) {
  return std::filesystem::temp_directory_path() /
         ("moe_test_" + std::to_string(::getpid()) + "_" + name);
}

}  // namespace

TEST_CASE("ParameterStore lays tensors out aligned and hands out matching views",
          "[train][parameters]") {
  Model m;
  CHECK(m.store.n_tensors() == 3);
  CHECK(m.store.n_parameters() == 15 + 7 + 16);
  for (const auto& i : m.store.infos()) CHECK(i.offset % moe::ParameterStore::kAlign == 0);
  const moe::F32Weight w = m.store.weight(m.w0, moe::Layout::kOutIn);
  CHECK(w.in == 5);
  CHECK(w.out == 3);
  const moe::WeightGrad g = m.store.weight_grad(m.w0, moe::Layout::kOutIn);
  CHECK(g.data == m.store.grad(m.w0).data());
  CHECK(m.store.at("w2") == m.w2);
  CHECK_THROWS_WITH(m.store.at("nope"), Catch::Contains("no tensor named 'nope'"));
  CHECK_THROWS_WITH(m.store.weight(m.w1), Catch::Contains("'w1' has shape [7], expected a matrix"));
  CHECK_THROWS_WITH(m.store.add("late", {2}), Catch::Contains("after allocate()"));
  moe::ParameterStore s2;
  s2.add("a", {2});
  CHECK_THROWS_WITH(s2.add("a", {3}), Catch::Contains("declared twice"));
  CHECK_THROWS_WITH(s2.add("b", {0, 3}), Catch::Contains("empty shape [0, 3]"));
}

TEST_CASE("AdamW, clipping and the schedule match torch.optim.AdamW", "[train][adamw]") {
  const auto fx = adamw_fixture();
  const moe::LrSchedule sched{.lr = 3e-2f, .min_lr = 3e-3f, .warmup_steps = 2, .total_steps = 6};
  for (std::size_t threads : {1, 2, 3}) {
    Model m;
    for (auto [id, name] : {std::pair{m.w0, "w0"}, {m.w1, "w1"}, {m.w2, "w2"}}) {
      const auto v = fx.f(std::string("init_") + name);
      std::copy(v.begin(), v.end(), m.store.param(id).begin());
    }
    moe::AdamW opt(m.store.n_elements(),
                   {.beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f});
    moe::ThreadPool pool(threads);
    for (std::size_t step = 1; step <= fx.cfg("steps"); ++step) {
      m.store.zero_grads();
      for (auto [id, name] : {std::pair{m.w0, "w0"}, {m.w1, "w1"}, {m.w2, "w2"}}) {
        const auto& all = fx.t(std::string("grads_") + name);
        const std::size_t n = m.store.info(id).size;
        for (std::size_t i = 0; i < n; ++i) m.store.grad(id)[i] = float(all[(step - 1) * n + i]);
      }
      const float lr = sched(step);
      CHECK(lr == Approx(fx.s("lr_" + std::to_string(step))).epsilon(1e-6));
      const double norm = moe::clip_grad_norm(pool, m.store, 1.0);
      CHECK(norm == Approx(fx.s("norm_" + std::to_string(step))).epsilon(1e-6));
      opt.step(pool, m.store, lr);
      for (auto [id, name] : {std::pair{m.w0, "w0"}, {m.w1, "w1"}, {m.w2, "w2"}}) {
        const auto& want = fx.t("after_" + std::to_string(step) + "_" + name);
        const auto got = m.store.param(id);
        double worst = 0;
        for (std::size_t i = 0; i < got.size(); ++i)
          worst = std::max(worst, std::abs(got[i] - want[i]));
        INFO("step " << step << " tensor " << name << " threads " << threads);
        CHECK(worst < 1e-6);
      }
    }
    CHECK(opt.steps() == fx.cfg("steps"));
  }
}

TEST_CASE("AdamW and the gradient norm over large, odd-sized tensors (SIMD body, tail, chunks)",
          "[train][adamw]") {
  // Tensors longer than a SIMD batch and than an optimizer chunk (65536), with odd sizes, against
  // the update written out in float64; bit-identical for 1, 2 and 3 threads.
  const std::vector<std::size_t> sizes = {1, 17, 1000, 70001};
  std::vector<float> first;
  for (std::size_t threads : {1, 2, 3}) {
    moe::ParameterStore store;
    for (std::size_t i = 0; i < sizes.size(); ++i)
      store.add("t" + std::to_string(i), {sizes[i]}, /*decay=*/i % 2 == 0);
    store.allocate();
    const auto p0 = moe_test::randn(store.n_elements(), 3);
    std::copy(p0.begin(), p0.end(), store.params().begin());
    const moe::AdamWConfig cfg{.beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
    moe::AdamW opt(store.n_elements(), cfg);
    moe::ThreadPool pool(threads);
    std::vector<double> p(p0.begin(), p0.end()), m(p.size(), 0.0), v(p.size(), 0.0);
    for (std::size_t step = 1; step <= 3; ++step) {
      const auto g = moe_test::randn(store.n_elements(), 10 + step, 0.5f);
      std::copy(g.begin(), g.end(), store.grads().begin());
      double want_norm = 0;
      for (float x : g) want_norm += double(x) * double(x);
      CHECK(moe::grad_norm(pool, store) == Approx(std::sqrt(want_norm)).epsilon(1e-12));
      const float lr = 1e-2f;
      opt.step(pool, store, lr);
      const double bc1 = 1 - std::pow(0.9, double(step)), bc2 = 1 - std::pow(0.95, double(step));
      for (const auto& info : store.infos()) {
        const double keep = info.decay ? 1 - double(lr) * 0.1 : 1.0;
        for (std::size_t i = info.offset; i < info.offset + info.size; ++i) {
          p[i] *= keep;
          m[i] = 0.9 * m[i] + 0.1 * g[i];
          v[i] = 0.95 * v[i] + 0.05 * double(g[i]) * g[i];
          p[i] -= double(lr) / bc1 * m[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + 1e-8);
        }
      }
      double worst = 0;
      for (std::size_t i = 0; i < p.size(); ++i)
        worst = std::max(worst, std::abs(double(store.params()[i]) - p[i]));
      INFO("step " << step << " threads " << threads);
      CHECK(worst < 1e-6);
    }
    const auto got = store.params();
    if (first.empty()) first.assign(got.begin(), got.end());
    CHECK(std::equal(first.begin(), first.end(), got.begin()));
  }
}

TEST_CASE("LrSchedule warms up linearly and decays by a cosine", "[train][adamw]") {
  const moe::LrSchedule s{.lr = 1.0f, .min_lr = 0.1f, .warmup_steps = 10, .total_steps = 110};
  CHECK(s(1) == Approx(0.1f));
  CHECK(s(10) == Approx(1.0f));
  CHECK(s(60) == Approx(0.55f));
  CHECK(s(110) == Approx(0.1f));
  CHECK(s(500) == Approx(0.1f));
  CHECK(moe::LrSchedule{.lr = 0.5f, .warmup_steps = 0}(7) == 0.5f);
  CHECK_THROWS_AS((moe::LrSchedule{.lr = 1.0f, .min_lr = 2.0f}.validate()), moe::ConfigError);
}

TEST_CASE("a training checkpoint round-trips and refuses bad files without touching the model",
          "[train][checkpoint]") {
  moe::ThreadPool pool(2);
  Model m;
  for (auto& v : m.store.params()) v = 0.25f;
  for (auto& v : m.store.grads()) v = 0.5f;
  moe::AdamW opt(m.store.n_elements(), {.weight_decay = 0.01f});
  opt.step(pool, m.store, 1e-2f);
  opt.step(pool, m.store, 1e-2f);
  const auto path = temp_path("ckpt.bin");
  moe::save_training_state(path, m.store, opt, "{\"step\": 2}");
  CHECK_FALSE(std::filesystem::exists(path.string() + ".tmp"));

  Model r;
  moe::AdamW ropt(r.store.n_elements(), {.weight_decay = 0.01f});
  CHECK(moe::load_training_state(path, r.store, ropt) == "{\"step\": 2}");
  CHECK(ropt.steps() == 2);
  CHECK(std::equal(r.store.params().begin(), r.store.params().end(), m.store.params().begin()));
  CHECK(std::equal(ropt.second_moment().begin(), ropt.second_moment().end(),
                   opt.second_moment().begin()));

  // Bad files: the model stays as it was.
  Model fresh;
  moe::AdamW fopt(fresh.store.n_elements(), {.weight_decay = 0.01f});
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto bad = temp_path("bad.bin");
  const auto write = [&](const std::string& b) {
    std::ofstream(bad, std::ios::binary | std::ios::trunc) << b;
  };
  write(bytes.substr(0, bytes.size() / 2));
  CHECK_THROWS_WITH(moe::load_training_state(bad, fresh.store, fopt),
                    Catch::Contains("corrupted") || Catch::Contains("truncated"));
  std::string flipped = bytes;
  flipped[bytes.size() / 2] ^= 1;
  write(flipped);
  CHECK_THROWS_WITH(moe::load_training_state(bad, fresh.store, fopt), Catch::Contains("corrupted"));
  write("hello");
  CHECK_THROWS_WITH(
      moe::load_training_state(bad, fresh.store, fopt),
      Catch::Contains("not a moe training checkpoint") || Catch::Contains("truncated"));
  CHECK_THROWS_AS(moe::load_training_state(temp_path("missing.bin"), fresh.store, fopt),
                  moe::IoError);
  moe::AdamW other(fresh.store.n_elements(), {.weight_decay = 0.5f});
  CHECK_THROWS_WITH(moe::load_training_state(path, fresh.store, other),
                    Catch::Contains("configured differently"));
  moe::ParameterStore s2;
  s2.add("w0", {3, 5});
  s2.allocate();
  moe::AdamW o2(s2.n_elements(), {.weight_decay = 0.01f});
  CHECK_THROWS_WITH(moe::load_training_state(path, s2, o2), Catch::Contains("holds 3 tensors"));
  for (float v : fresh.store.params()) REQUIRE(v == 0.0f);
  CHECK(fopt.steps() == 0);
  std::filesystem::remove(path);
  std::filesystem::remove(bad);
}
