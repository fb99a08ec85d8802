// Sampler (greedy, temperature, run.py's nucleus filter, seeding) and generate().
#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include <moe/models/grok1.hpp>
#include <moe/text/generate.hpp>
#include <moe/text/sampler.hpp>

#include "support/grok1_random_weights.hpp"

namespace {

std::vector<float> log_probs(std::initializer_list<double> p) {
  std::vector<float> l;
  for (double v : p) l.push_back(static_cast<float>(std::log(v)));
  return l;
}

std::vector<std::int32_t> ids(std::initializer_list<std::int32_t> v) {
  return v;
}

}  // namespace

TEST_CASE("sampler: greedy takes the largest logit, the lowest id on ties", "[model][sampler]") {
  moe::Sampler s({}, 5);
  CHECK(s.sample(std::vector<float>{1, 3, 3, 2, 3}) == 1);
  CHECK(s.sample(std::vector<float>{0, 0, 0, 0, 0}) == 0);
  CHECK(s.sample(std::vector<float>{-5, -1, -2, -1, -9}) == 1);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  CHECK(s.sample(std::vector<float>{nan, -1, 4, nan, 4}) == 2);
  CHECK(moe::argmax(std::vector<float>{2, 7, 7}) == 1);
  CHECK(s.kept(std::vector<float>{1, 3, 3, 2, 3}) == ids({1}));
}

TEST_CASE("sampler: top-p follows run.py's top_p_filter", "[model][sampler]") {
  // p = [0.5, 0.3, 0.15, 0.05]; ascending cumulative sums 0.05, 0.2, 0.5, 1.0.
  const auto l = log_probs({0.3, 0.05, 0.5, 0.15});
  auto kept = [&](double p, double temperature = 1.0) {
    moe::Sampler s({.temperature = temperature, .top_p = p, .seed = 1}, l.size());
    return s.kept(l);
  };
  CHECK(kept(1.0) == ids({0, 1, 2, 3}));  // p = 1 keeps everything
  CHECK(kept(0.9) == ids({0, 2, 3}));     // first cumsum >= 0.1 is 0.2 (p = 0.15)
  CHECK(kept(0.75) == ids({0, 2}));       // first cumsum >= 0.25 is 0.5 (p = 0.3)
  CHECK(kept(0.4) == ids({2}));           // first cumsum >= 0.6 is 1.0 (p = 0.5)
  CHECK(kept(1e-9) == ids({2}));          // tiny p keeps the argmax
  CHECK(kept(1e-30) == ids({2}));         // even when 1 - p rounds to 1
  // Temperature applies before the filter: at T = 0.25, p = [~0.87, ~0.11, ...].
  CHECK(kept(0.8, 0.25) == ids({2}));
  CHECK(kept(0.9, 0.25) == ids({0, 2}));
  // Ties with the threshold logit are kept.
  const std::vector<float> tie = {1.0f, 5.0f, 5.0f, 0.0f};
  moe::Sampler st({.temperature = 1.0, .top_p = 1e-6}, 4);
  CHECK(st.kept(tie) == ids({1, 2}));
  // p = 1 keeps even -inf-like logits.
  const std::vector<float> far = {0.0f, -1e30f, 3.0f};
  moe::Sampler sf({.temperature = 1.0, .top_p = 1.0}, 3);
  CHECK(sf.kept(far) == ids({0, 1, 2}));
}

TEST_CASE("sampler: tiny top-p always samples the argmax", "[model][sampler]") {
  const auto l = log_probs({0.2, 0.2, 0.25, 0.35});
  moe::Sampler s({.temperature = 1.0, .top_p = 1e-9, .seed = 99}, l.size());
  for (int i = 0; i < 200; ++i) REQUIRE(s.sample(l) == 3);
}

TEST_CASE("sampler: draws follow softmax(logits / T) and never leave the nucleus",
          "[model][sampler]") {
  const std::vector<float> l = {0.0f, 1.0f, -0.5f, 2.0f, 0.3f};
  for (double temp : {1.0, 0.5}) {
    moe::Sampler s({.temperature = temp, .top_p = 1.0, .seed = 5}, l.size());
    std::vector<double> p(l.size());
    double z = 0;
    for (std::size_t i = 0; i < l.size(); ++i) z += (p[i] = std::exp(l[i] / temp));
    std::vector<int> count(l.size(), 0);
    const int n = 40000;
    for (int i = 0; i < n; ++i) ++count[static_cast<std::size_t>(s.sample(l))];
    for (std::size_t i = 0; i < l.size(); ++i) {
      const double pi = p[i] / z, sigma = std::sqrt(pi * (1 - pi) / n);
      INFO("T " << temp << " token " << i << " freq " << count[i] / double(n) << " p " << pi);
      CHECK(std::abs(count[i] / double(n) - pi) < 5 * sigma + 1e-12);
    }
  }
  // p = 0.75 keeps {3, 1} only (probabilities 0.58, 0.21 of the full softmax).
  moe::Sampler s({.temperature = 1.0, .top_p = 0.75, .seed = 6}, l.size());
  REQUIRE(s.kept(l) == ids({1, 3}));
  int ones = 0;
  for (int i = 0; i < 5000; ++i) {
    const auto t = s.sample(l);
    REQUIRE((t == 1 || t == 3));
    ones += t == 1;
  }
  // Renormalised over the nucleus: P(1) = e / (e + e^2) = 0.269.
  CHECK(ones / 5000.0 == Approx(1.0 / (1.0 + std::exp(1.0))).margin(0.03));
}

TEST_CASE("sampler: a seed reproduces the same tokens", "[model][sampler]") {
  std::vector<float> l(50);
  for (std::size_t i = 0; i < l.size(); ++i) l[i] = static_cast<float>(std::sin(i * 1.7));
  auto draw = [&](std::uint64_t seed) {
    moe::Sampler s({.temperature = 1.5, .top_p = 0.9, .seed = seed}, l.size());
    std::vector<std::int32_t> out;
    for (int i = 0; i < 64; ++i) out.push_back(s.sample(l));
    return out;
  };
  CHECK(draw(42) == draw(42));
  CHECK(draw(42) != draw(43));
  moe::Sampler s({.temperature = 1.0, .seed = 7}, l.size());
  const auto a = s.sample(l);
  s.reseed(7);
  CHECK(s.sample(l) == a);
}

TEST_CASE("sampler: configuration errors", "[model][sampler]") {
  CHECK_THROWS_AS(moe::Sampler({.temperature = 1.0, .top_p = 0.0}, 4), moe::ConfigError);
  CHECK_THROWS_AS(moe::Sampler({.temperature = 1.0, .top_p = 1.5}, 4), moe::ConfigError);
  CHECK_THROWS_AS(moe::Sampler({}, 0), moe::ConfigError);
  moe::Sampler s({}, 4);
  CHECK_THROWS_AS(s.sample(std::vector<float>(5)), moe::ShapeError);
}

namespace {

struct TinyModel {
  moe::grok1::Config cfg = moe::grok1::Config::tiny();
  moe::grok1::RandomWeights rw{cfg, 3};
  moe::grok1::Model model = moe::grok1::make_model(cfg, rw.weights());
};

}  // namespace

TEST_CASE("generate: greedy generation equals a manual prefill + step loop", "[model][generate]") {
  TinyModel m;
  moe::ThreadPool pool(2);
  const std::vector<std::int32_t> prompt = {5, 9, 11, 3, 60, 7};
  std::vector<std::int32_t> streamed;
  auto state = m.model.make_state(64, 16);
  const auto res = moe::generate(pool, m.model, state, prompt, {.max_new_tokens = 10},
                                 [&](std::int32_t t) { streamed.push_back(t); });
  REQUIRE(res.tokens.size() == 10);
  CHECK(streamed == res.tokens);
  CHECK(res.prompt_tokens == prompt.size());
  CHECK(state.position() == prompt.size() + 9);

  auto st = m.model.make_state(64, 16);
  std::vector<float> logits(m.cfg.vocab_size);
  m.model.forward(pool, prompt, st, moe::MatrixView<float>(logits.data(), 1, m.cfg.vocab_size));
  std::vector<std::int32_t> manual = {moe::argmax(logits)};
  while (manual.size() < 10) {
    m.model.step(pool, manual.back(), st, logits);
    manual.push_back(moe::argmax(logits));
  }
  CHECK(manual == res.tokens);

  // A prompt longer than max_tokens is prefilled in chunks, with the same result.
  auto small = m.model.make_state(64, 4);
  CHECK(moe::generate(pool, m.model, small, prompt, {.max_new_tokens = 10}).tokens == res.tokens);
}

TEST_CASE("generate: EOS, callback stop, seeds and capacity", "[model][generate]") {
  TinyModel m;
  moe::ThreadPool pool(2);
  const std::vector<std::int32_t> prompt = {1, 2, 3};
  auto fresh = [&] { return m.model.make_state(32, 8); };
  auto s0 = fresh();
  const auto greedy = moe::generate(pool, m.model, s0, prompt, {.max_new_tokens = 12}).tokens;
  SECTION("stop at EOS (reported and returned)") {
    const std::int32_t eos = greedy[4];
    std::size_t first = 0;
    while (greedy[first] != eos) ++first;
    auto s = fresh();
    const auto r = moe::generate(pool, m.model, s, prompt, {.max_new_tokens = 12, .eos_id = eos});
    CHECK(r.stopped_at_eos);
    CHECK(r.tokens.size() == first + 1);
    CHECK(r.tokens.back() == eos);
  }
  SECTION("the callback stops generation") {
    auto s = fresh();
    int calls = 0;
    const auto r = moe::generate(pool, m.model, s, prompt, {.max_new_tokens = 12},
                                 [&](std::int32_t) { return ++calls < 3; });
    CHECK(calls == 3);
    CHECK(r.tokens.size() == 3);
    CHECK(r.stopped_by_callback);
  }
  SECTION("sampling is reproducible with a seed") {
    const moe::GenerateOptions o{.max_new_tokens = 12,
                                 .sampler = {.temperature = 1.0, .top_p = 0.95, .seed = 11}};
    auto a = fresh(), b = fresh(), c = fresh();
    const auto ta = moe::generate(pool, m.model, a, prompt, o).tokens;
    CHECK(moe::generate(pool, m.model, b, prompt, o).tokens == ta);
    auto o2 = o;
    o2.sampler.seed = 12;
    CHECK(moe::generate(pool, m.model, c, prompt, o2).tokens != ta);
  }
  SECTION("a request that does not fit the cache throws before any work") {
    auto s = fresh();  // 32 positions
    CHECK_THROWS_AS(moe::generate(pool, m.model, s, prompt, {.max_new_tokens = 31}),
                    moe::CapacityError);
    CHECK(s.position() == 0);
    CHECK_NOTHROW(moe::generate(pool, m.model, s, prompt, {.max_new_tokens = 30}));
    CHECK(s.position() == 32);
    auto s2 = fresh();
    CHECK_THROWS_AS(moe::generate(pool, m.model, s2, ids({1, 99}), {}), moe::TokenError);
    CHECK_THROWS_AS(moe::generate(pool, m.model, s2, std::vector<std::int32_t>{}, {}),
                    moe::ShapeError);
    CHECK(s2.position() == 0);
  }
}
