// Hugging Face checkpoints bound to moe's decoder (moe/models/hf_tensors.hpp, hf_model.hpp,
// hf_residency.hpp), on the tiny checkpoints of tools/make_hf_checkpoint.py: the logits of every
// prompt position against tools/hf_reference.py (a float64 transliteration of the transformers
// modeling code, its logits written by the `moe_hf_fixtures` step) within 1e-5 of the largest
// logit, for Mixtral (bf16 sharded, f32, a sliding window), Qwen2-MoE (biases, a dense layer, the
// gated shared expert) and OLMoE (q/k norms, tied head); decoding token by token agrees with the
// prefill; greedy continuations agree with the reference; the views point into the mapped shards
// (nothing of the matrices copied); wrong types, dtypes and views are clear errors; the residency
// plan covers every tensor byte once.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include <moe/core/thread_pool.hpp>
#include <moe/io/json.hpp>
#include <moe/io/npy.hpp>
#include <moe/io/safetensors.hpp>
#include <moe/models/hf_config.hpp>
#include <moe/models/hf_model.hpp>
#include <moe/models/hf_residency.hpp>
#include <moe/models/hf_tensors.hpp>
#include <moe/text/generate.hpp>

#include "io_test_util.hpp"

using namespace io_test;
using moe::BF16Weight;
using moe::F32Weight;
using moe::NoSharedExperts;
namespace st = moe::io::safetensors;
namespace hf = moe::hf;

namespace {

fs::path hf_fixture(const std::string& name) {
  return fixture("hf/" + name);
}

/// The reference of a fixture: its prompt, prompt logits and greedy continuation with margins.
struct Reference {
  std::vector<std::int32_t> tokens, greedy;
  std::vector<double> margins;
  moe::io::NpyArray logits;
};

Reference reference(const fs::path& dir) {
  Reference r;
  const moe::io::JsonValue j = moe::io::read_json_file(dir / "reference.json");
  for (const auto& v : j.at("tokens").as_array()) r.tokens.push_back(int(v.as_int64()));
  for (const auto& v : j.at("greedy").as_array()) r.greedy.push_back(int(v.as_int64()));
  for (const auto& v : j.at("margins").as_array()) r.margins.push_back(v.as_number());
  r.logits = moe::io::read_npy(dir / "reference_logits.npy");
  return r;
}

/// What the model produced for a fixture.
struct Run {
  std::vector<float> prefill;   ///< [T, V] logits of one forward over the prompt
  std::vector<float> stepwise;  ///< [T, V] logits of T one-token steps
  std::vector<std::int32_t> greedy;
  std::uint64_t copied = 0;
};

template <class W, class Shared>
Run run_model(const fs::path& dir, const Reference& ref) {
  const hf::Config c = hf::read_config(dir);
  const st::Checkpoint ckpt(dir);
  const hf::WeightsT<W> w = hf::bind_weights<W>(c, ckpt);
  const auto model = hf::make_model<W, Shared>(c, w);
  moe::ThreadPool pool(2);
  const std::size_t t_count = ref.tokens.size(), v = c.vocab_size;
  Run r;
  r.copied = w.copied_bytes;
  r.prefill.resize(t_count * v);
  auto state = model.make_state(64, t_count);
  model.forward(pool, ref.tokens, state, {r.prefill.data(), t_count, v});
  r.stepwise.resize(t_count * v);
  state.reset();
  for (std::size_t t = 0; t < t_count; ++t) {
    model.step(pool, ref.tokens[t], state, {r.stepwise.data() + t * v, v});
  }
  state.reset();
  moe::GenerateOptions gen;
  gen.max_new_tokens = ref.greedy.size();
  gen.sampler.temperature = 0;
  r.greedy = moe::generate(pool, model, state, ref.tokens, gen).tokens;
  return r;
}

Run run_fixture(const fs::path& dir, const Reference& ref) {
  const hf::Config c = hf::read_config(dir);
  const bool bf16 = hf::matrix_dtype(st::Checkpoint(dir)) == st::DType::kBF16;
  if (c.d_ff_shared > 0) {
    return bf16 ? run_model<BF16Weight, hf::SharedExpertOf<BF16Weight>>(dir, ref)
                : run_model<F32Weight, hf::SharedExpertOf<F32Weight>>(dir, ref);
  }
  return bf16 ? run_model<BF16Weight, NoSharedExperts>(dir, ref)
              : run_model<F32Weight, NoSharedExperts>(dir, ref);
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, double(std::abs(x)));
  return m;
}

double max_diff(const float* a, const float* b, std::size_t n) {
  double m = 0;
  for (std::size_t i = 0; i < n; ++i) m = std::max(m, std::abs(double(a[i]) - double(b[i])));
  return m;
}

}  // namespace

TEST_CASE("hf model: logits of every family match the float64 reference", "[hf][model]") {
  const char* fixtures[] = {"mixtral_bf16_sharded", "mixtral_f32", "mixtral_window",
                            "qwen2_moe_bf16", "olmoe_f32"};
  for (const char* name : fixtures) {
    SECTION(name) {
      const fs::path dir = hf_fixture(name);
      const Reference ref = reference(dir);
      const Run r = run_fixture(dir, ref);
      const std::size_t n = ref.logits.numel();
      REQUIRE(r.prefill.size() == n);
      const double scale = max_abs(ref.logits.data);
      const double err = max_diff(r.prefill.data(), ref.logits.data.data(), n);
      INFO(name << ": max |moe - reference| = " << err << ", max |logit| = " << scale);
      // f32 activations over bf16/f32 weights vs float64: ~2e-7 relative measured.
      CHECK(err <= 1e-5 * scale);
      // The KV-cache path (one token per call) computes the same logits.
      CHECK(max_diff(r.stepwise.data(), r.prefill.data(), n) <= 1e-5 * scale);
      // Greedy: equal up to the first near-tie of the reference (margin < 1e-4 of the largest
      // logit), where float rounding may legitimately choose the other token.
      for (std::size_t i = 0; i < ref.greedy.size() && ref.margins[i] >= 1e-4; ++i) {
        INFO("greedy step " << i);
        CHECK(r.greedy.at(i) == ref.greedy[i]);
      }
    }
  }
}

TEST_CASE("hf model: the views point into the mapped shards; only norms are widened",
          "[hf][model]") {
  SECTION("bf16, sharded") {
    const fs::path dir = hf_fixture("mixtral_bf16_sharded");
    const hf::Config c = hf::read_config(dir);
    const st::Checkpoint ckpt(dir);
    const auto w = hf::bind_weights<BF16Weight>(c, ckpt);
    auto in_place = [&](const void* p, const std::string& name) {
      const st::Tensor t = ckpt.tensor(name);
      INFO(name);
      CHECK(p == static_cast<const void*>(t.data));
    };
    for (std::size_t l = 0; l < c.n_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      in_place(w.layers[l].wq.data, p + "self_attn.q_proj.weight");
      in_place(w.layers[l].router.data, p + "block_sparse_moe.gate.weight");
      for (std::size_t e = 0; e < c.n_experts; ++e) {
        const std::string x = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
        in_place(w.layers[l].expert_gate[e].data, x + "w1.weight");
        in_place(w.layers[l].expert_down[e].data, x + "w2.weight");
        in_place(w.layers[l].expert_up[e].data, x + "w3.weight");
      }
    }
    in_place(w.embedding.data, "model.embed_tokens.weight");
    in_place(w.lm_head.data, "lm_head.weight");
    CHECK(w.embedding.dtype == moe::EmbeddingDtype::kBF16);
    // Copied: the f32 copies of the 2L + 1 norm scales, D floats each.
    CHECK(w.copied_bytes == (2 * c.n_layers + 1) * c.d_model * sizeof(float));
  }
  SECTION("f32: nothing copied") {
    const fs::path dir = hf_fixture("mixtral_f32");
    const hf::Config c = hf::read_config(dir);
    const st::Checkpoint ckpt(dir);
    const auto w = hf::bind_weights<F32Weight>(c, ckpt);
    CHECK(w.copied_bytes == 0);
    CHECK(static_cast<const void*>(w.layers[1].attn_norm.data()) ==
          static_cast<const void*>(ckpt.tensor("model.layers.1.input_layernorm.weight").data));
  }
}

TEST_CASE("hf model: wrong weight types, shared-expert types and views are clear errors",
          "[hf][model]") {
  const fs::path dir = hf_fixture("mixtral_f32");
  const hf::Config c = hf::read_config(dir);
  const st::Checkpoint ckpt(dir);
  CHECK(message_of<moe::ShapeError>([&] { (void)hf::bind_weights<BF16Weight>(c, ckpt); }) ==
        "[hf] tensor 'model.layers.0.self_attn.q_proj.weight' in '" +
            (dir / "model.safetensors").string() +
            "' has dtype F32, but the model's matrices are BF16: moe does not round weights (bind "
            "the checkpoint with F32Weight)");
  auto w = hf::bind_weights<F32Weight>(c, ckpt);
  CHECK_THAT(message_of<moe::ConfigError>(
                 [&] { (void)hf::make_model<F32Weight, hf::SharedExpertOf<F32Weight>>(c, w); }),
             Contains("the config has no shared expert"));
  w.layers[1].expert_up[2] = F32Weight{};
  CHECK(message_of<moe::ShapeError>([&] { (void)hf::make_model<F32Weight>(c, w); }) ==
        "[hf] weight 'model.layers.1.block_sparse_moe.experts.2.w3.weight' has no data");
  w = hf::bind_weights<F32Weight>(c, ckpt);
  w.layers[0].wk.layout = moe::Layout::kInOut;
  CHECK(message_of<moe::ShapeError>([&] { (void)hf::make_model<F32Weight>(c, w); }) ==
        "[hf] tensor 'model.layers.0.self_attn.k_proj.weight' must be an [out, in] view "
        "(Layout::kOutIn)");

  const fs::path qwen = hf_fixture("qwen2_moe_bf16");
  const hf::Config qc = hf::read_config(qwen);
  const st::Checkpoint qk(qwen);
  const auto qw = hf::bind_weights<BF16Weight>(qc, qk);
  CHECK_THAT(message_of<moe::ConfigError>([&] { (void)hf::make_model<BF16Weight>(qc, qw); }),
             Contains("the config has a shared expert"));
}

TEST_CASE("hf model: the residency plan covers every tensor byte once", "[hf][model]") {
  for (const char* name : {"qwen2_moe_bf16", "mixtral_8x7b_sparse"}) {
    SECTION(name) {
      const fs::path dir = hf_fixture(name);
      const hf::Config c = hf::read_config(dir);
      const st::Checkpoint ckpt(dir);
      const moe::ResidencyPlan plan = hf::residency_plan(c, ckpt, 123);
      CHECK(plan.copied_bytes == 123);
      CHECK(plan.files.size() == ckpt.files().size());
      REQUIRE(plan.layers.size() == c.n_layers);
      std::uint64_t bytes = moe::detail::range_bytes(plan.always);
      std::set<std::pair<const void*, std::size_t>> seen;
      auto add = [&](const moe::MappedRange& r) {
        CHECK(seen.insert({r.file, r.offset}).second);
        bytes += r.length;
      };
      for (const moe::MappedRange& r : plan.always) seen.insert({r.file, r.offset});
      for (std::size_t l = 0; l < c.n_layers; ++l) {
        const moe::LayerRanges& lr = plan.layers[l];
        for (const moe::MappedRange& r : lr.dense) add(r);
        CHECK(lr.experts.size() == (c.sparse(l) ? c.n_experts : 0));
        for (const auto& e : lr.experts) {
          CHECK(e.size() == 3);
          for (const moe::MappedRange& r : e) add(r);
        }
        // A probe page lies inside its expert's gate tensor, when the tensor holds a whole
        // 2 MiB-aligned block (Mixtral 8x7B: 117 MB per projection; the tiny fixture: none).
        for (std::size_t e = 0; e < lr.probes.size(); ++e) {
          const moe::MappedRange& p = lr.probes[e];
          const moe::MappedRange& g = lr.experts[e][0];
          if (std::string(name) == "mixtral_8x7b_sparse") {
            REQUIRE(p.file == g.file);
            CHECK((p.offset >= g.offset && p.offset + p.length <= g.offset + g.length));
          } else {
            CHECK(p.file == nullptr);
          }
        }
      }
      CHECK(bytes == ckpt.data_bytes());  // every tensor of these checkpoints is in the table
    }
  }
}
