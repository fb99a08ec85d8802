// moe::grok1::export_checkpoint: the block-wise int8 quantisation, the release-format files
// (byte-identical to tools/make_grok1_checkpoint.py's writers, loadable by Python's pickle and by
// moe's Checkpoint reader, checked by tests/io/test_export_pickle.py), the exported model's logits
// against its f32 twin, and the atomic, never-clobbering publication of the directory.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

#include <moe/core/thread_pool.hpp>
#include <moe/io/npy.hpp>
#include <moe/models/grok1_export.hpp>
#include <moe/models/grok1_loader.hpp>

namespace fs = std::filesystem;
using moe::F32Weight;
using moe::Layout;
using moe::WeightStack;
using moe::grok1::Config;
using moe::grok1::Slot;

namespace {

fs::path scratch(const std::string& name) {
  const fs::path p = fs::path(MOE_BINARY_DIR) / "test_export" / name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

/// Random f32 Grok-1 weights that own their memory. Some tensors are stored [out, in] (PyTorch
/// layout) so that the writer's layout handling is exercised.
struct F32Grok {
  Config c;
  std::vector<std::vector<float>> bufs;
  moe::grok1::WeightsT<F32Weight> w;

  explicit F32Grok(const Config& cfg, std::uint64_t seed) : c(cfg) {
    std::mt19937_64 rng(seed);  // (moving an inner vector keeps its data: views stay valid)
    auto fill = [&](std::size_t n, double stddev) -> float* {
      std::normal_distribution<float> d(0.0f, static_cast<float>(stddev));
      bufs.emplace_back(n);
      for (float& x : bufs.back()) x = d(rng);
      return bufs.back().data();
    };
    auto norm = [&](std::size_t n) -> std::span<const float> {
      std::uniform_real_distribution<float> d(0.8f, 1.2f);
      bufs.emplace_back(n);
      for (float& x : bufs.back()) x = d(rng);
      return bufs.back();
    };
    const std::size_t D = c.d_model, F = c.d_ff, E = c.n_experts;
    auto mat = [&](std::size_t in, std::size_t out, Layout layout) {
      return F32Weight{fill(in * out, 1.0 / std::sqrt(double(in))), in, out, layout};
    };
    w.embedding = moe::MatrixView<const float>(fill(c.vocab_size * D, 1.0 / std::sqrt(double(D))),
                                               c.vocab_size, D);
    w.final_norm = norm(D);
    w.layers.resize(c.n_layers);
    for (auto& l : w.layers) {
      l.wq = mat(D, c.q_dim(), Layout::kOutIn);
      l.wk = mat(D, c.kv_dim(), Layout::kInOut);
      l.wv = mat(D, c.kv_dim(), Layout::kInOut);
      l.wo = mat(c.q_dim(), D, Layout::kInOut);
      l.norm_pre_attn = norm(D);
      l.norm_post_attn = norm(D);
      l.norm_pre_moe = norm(D);
      l.norm_post_moe = norm(D);
      l.router = mat(D, E, Layout::kOutIn);
      l.expert_gate = {F32Weight{fill(E * D * F, 1.0 / std::sqrt(double(D))), D, F, Layout::kInOut},
                       E};
      l.expert_up = {F32Weight{fill(E * D * F, 1.0 / std::sqrt(double(D))), D, F, Layout::kOutIn},
                     E};
      l.expert_down = {F32Weight{fill(E * F * D, 1.0 / std::sqrt(double(F))), F, D, Layout::kInOut},
                       E};
    }
  }
};

/// The logical values of export file `index` ([in, out], [E, in, out] or a vector) as .npy.
void write_source(const fs::path& dir, std::size_t index, const F32Grok& g) {
  using moe::grok1::tensor_at;
  const Config& c = g.c;
  const fs::path p = dir / ("t" + std::string(5 - std::to_string(index).size(), '0') +
                            std::to_string(index) + ".npy");
  auto logical = [](const F32Weight& w, std::vector<float>& out) {
    for (std::size_t i = 0; i < w.in; ++i) {
      for (std::size_t o = 0; o < w.out; ++o) out.push_back(w.at(i, o));
    }
  };
  std::vector<float> v;
  std::vector<std::size_t> shape;
  const std::string name = moe::grok1::tensor_name(index, c.n_layers);
  if (name == "language_model/in_out_embed/embeddings") {
    const auto* e = reinterpret_cast<const float*>(g.w.embedding.data);
    v.assign(e, e + c.vocab_size * c.d_model);
    shape = {c.vocab_size, c.d_model};
  } else if (name == "language_model/rms_norm/scale") {
    v.assign(g.w.final_norm.begin(), g.w.final_norm.end());
    shape = {c.d_model};
  } else {
    const auto ref = tensor_at(index, c.n_layers);
    const auto& l = g.w.layers[ref.layer];
    auto one = [&](const F32Weight& w) {
      logical(w, v);
      shape = {w.in, w.out};
    };
    auto stack = [&](const WeightStack<F32Weight>& s) {
      for (std::size_t e = 0; e < s.count; ++e) logical(s[e], v);
      shape = {s.count, s.in(), s.out()};
    };
    auto vec = [&](std::span<const float> s) {
      v.assign(s.begin(), s.end());
      shape = {s.size()};
    };
    switch (ref.slot) {
      case Slot::kExpertGate:
        stack(l.expert_gate);
        break;
      case Slot::kExpertDown:
        stack(l.expert_down);
        break;
      case Slot::kExpertUp:
        stack(l.expert_up);
        break;
      case Slot::kKey:
        one(l.wk);
        break;
      case Slot::kAttnOut:
        one(l.wo);
        break;
      case Slot::kQuery:
        one(l.wq);
        break;
      case Slot::kValue:
        one(l.wv);
        break;
      case Slot::kNormPreAttn:
        vec(l.norm_pre_attn);
        break;
      case Slot::kNormPostAttn:
        vec(l.norm_post_attn);
        break;
      case Slot::kNormPreMoe:
        vec(l.norm_pre_moe);
        break;
      case Slot::kNormPostMoe:
        vec(l.norm_post_moe);
        break;
      case Slot::kRouter:
        one(l.router);
        break;
    }
  }
  moe::io::write_npy(p, v.data(), std::span<const std::size_t>(shape));
}

std::vector<float> dequantize(const moe::Int8Weight& w) {
  std::vector<float> v(w.in * w.out);
  for (std::size_t i = 0; i < w.in; ++i) {
    for (std::size_t o = 0; o < w.out; ++o) v[i * w.out + o] = w.at(i, o);
  }
  return v;
}

/// Runs tests/io/test_export_pickle.py on an export of `g` (sources written as .npy first).
void check_with_python(const fs::path& dir, const fs::path& out, const F32Grok& g) {
  const fs::path sources = dir / "sources";
  fs::create_directories(sources);
  for (std::size_t i = 0; i < moe::grok1::n_files(g.c.n_layers); ++i) write_source(sources, i, g);
  const std::string cmd = std::string("/usr/bin/python3 ") + MOE_SOURCE_DIR +
                          "/tests/io/test_export_pickle.py --export '" + out.string() +
                          "' --sources '" + sources.string() + "' --source-tree '" +
                          MOE_SOURCE_DIR + "'";
  REQUIRE(std::system(cmd.c_str()) == 0);
}

Config tiny11() {
  Config c = Config::tiny();
  c.n_layers = 11;       // file order 0, 1, 10, 2, ...: a wrong order cannot go unnoticed
  c.rope_base = 5000.0;  // constants a reader would not infer: config.json must carry them
  c.rms_eps = 1e-6;
  c.attn_softcap = 20.0;
  c.output_multiplier = 0.25;
  c.max_seq_len = 48;
  return c;
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

}  // namespace

TEST_CASE("export: quantize_int8 is block-wise absmax / 127 with bf16 scales", "[export]") {
  // in = 4 rows in 2 blocks, out = 3 columns; column 2 of block 1 is all zero.
  const std::vector<float> w = {
      1.0f,    -0.5f, 0.25f,  //
      -2.0f,   0.1f,  -0.3f,  //
      0.003f,  10.0f, 0.0f,   //
      -0.001f, -5.0f, 0.0f,   //
  };
  std::vector<std::int8_t> q(12);
  std::vector<moe::bf16> s(6);
  moe::grok1::quantize_int8(F32Weight{w.data(), 4, 3, Layout::kInOut}, 2, q.data(), s.data());
  const float amax[6] = {2.0f, 0.5f, 0.3f, 0.003f, 10.0f, 0.0f};
  for (std::size_t k = 0; k < 6; ++k) {
    CHECK(s[k].bits == moe::bf16(amax[k] / 127.0f).bits);
  }
  for (std::size_t i = 0; i < 4; ++i) {
    for (std::size_t o = 0; o < 3; ++o) {
      const float sc = s[(i / 2) * 3 + o].to_float();
      const float want =
          sc > 0 ? std::clamp(std::nearbyint(w[i * 3 + o] / sc), -127.0f, 127.0f) : 0.0f;
      CHECK(q[i * 3 + o] == static_cast<std::int8_t>(want));
    }
  }
  CHECK(q[3] == -127);  // the column maximum maps to +-127 (bf16 rounding may push it to 127.5)
  CHECK(q[7] == 127);
  CHECK(q[8] == 0);
  CHECK(q[11] == 0);
  // Dequantised values are within half a step of the originals.
  for (std::size_t i = 0; i < 12; ++i) {
    const float sc = s[(i / 6) * 3 + i % 3].to_float();
    CHECK(std::fabs(q[i] * sc - w[i]) <= 0.5f * sc * 1.01f + 1e-12f);
  }

  // Exact ties round to even (as numpy's rint): scale 1/128, values 2.5 and -3.5 steps.
  {
    const std::vector<float> tie = {127.0f / 128, 2.5f / 128, -3.5f / 128, 0.5f / 128};
    std::vector<std::int8_t> qt(4);
    moe::bf16 st;
    moe::grok1::quantize_int8(F32Weight{tie.data(), 4, 1, Layout::kInOut}, 1, qt.data(), &st);
    CHECK(st.to_float() == 1.0f / 128);
    CHECK(qt == std::vector<std::int8_t>{127, 2, -4, 0});
  }

  // The [out, in] layout gives the same result for the same logical matrix.
  std::vector<float> t(12);
  for (std::size_t i = 0; i < 4; ++i) {
    for (std::size_t o = 0; o < 3; ++o) t[o * 4 + i] = w[i * 3 + o];
  }
  std::vector<std::int8_t> q2(12);
  std::vector<moe::bf16> s2(6);
  moe::grok1::quantize_int8(F32Weight{t.data(), 4, 3, Layout::kOutIn}, 2, q2.data(), s2.data());
  CHECK(q2 == q);
  for (std::size_t k = 0; k < 6; ++k) CHECK(s2[k].bits == s[k].bits);

  // Bad input: blocks not dividing `in`, and a non-finite value naming the tensor and element.
  CHECK_THROWS_AS(
      moe::grok1::quantize_int8(F32Weight{w.data(), 4, 3, Layout::kInOut}, 3, q.data(), s.data()),
      moe::ShapeError);
  std::vector<float> bad = w;
  bad[7] = NAN;
  CHECK_THROWS_WITH(moe::grok1::quantize_int8(F32Weight{bad.data(), 4, 3, Layout::kInOut}, 1,
                                              q.data(), s.data(), "layer/wq"),
                    Catch::Contains("'layer/wq'") && Catch::Contains("[2, 1]"));
}

TEST_CASE("export: 11 layers, Python-identical files, moe's reader, logits of the f32 twin",
          "[export]") {
  const Config c = tiny11();
  const F32Grok g(c, 11);
  const fs::path dir = scratch("tiny11");
  const fs::path out = dir / "export";
  std::size_t progress = 0;
  moe::grok1::ExportOptions opt;
  opt.progress = [&](std::size_t done, std::size_t total) {
    CHECK(done == progress + 1);
    CHECK(total == moe::grok1::n_files(c.n_layers));
    progress = done;
  };
  moe::grok1::export_checkpoint(out, c, g.w, opt);
  CHECK(progress == 134);
  CHECK(!fs::exists(out.string() + ".tmp-" + std::to_string(::getpid())));

  // config.json holds every constant; the reader infers nothing.
  const Config got = moe::grok1::Checkpoint::open(out).config();
  CHECK(got.vocab_size == c.vocab_size);
  CHECK(got.d_model == c.d_model);
  CHECK(got.n_layers == c.n_layers);
  CHECK(got.n_q_heads == c.n_q_heads);
  CHECK(got.n_kv_heads == c.n_kv_heads);
  CHECK(got.head_dim == c.head_dim);
  CHECK(got.n_experts == c.n_experts);
  CHECK(got.top_k == c.top_k);
  CHECK(got.d_ff == c.d_ff);
  CHECK(got.max_seq_len == c.max_seq_len);
  CHECK(got.rope_base == c.rope_base);
  CHECK(got.rms_eps == c.rms_eps);
  CHECK(got.embedding_multiplier == c.embedding_multiplier);
  CHECK(got.output_multiplier == c.output_multiplier);
  CHECK(got.attn_logit_multiplier == c.attn_logit_multiplier);
  CHECK(got.attn_softcap == c.attn_softcap);
  CHECK(got.pad_id == c.pad_id);
  CHECK(got.bos_id == c.bos_id);
  CHECK(got.eos_id == c.eos_id);

  SECTION("Python: pickle loads every file, numpy quantises alike, StreamWriter writes the bytes") {
    check_with_python(dir, out, g);
  }

  SECTION("moe's reader: the views hold the quantised values; logits equal the f32 twin's") {
    const auto ck = moe::grok1::Checkpoint::open(out);
    const moe::grok1::Weights wi = moe::grok1::bind_weights(ck);
    // Spot check of the block rule: 8 row blocks for linear and linear_1, 1 elsewhere.
    CHECK(wi.layers[3].wo.blocks == 8);
    CHECK(wi.layers[3].expert_down.first.blocks == 8);
    CHECK(wi.layers[3].wq.blocks == 1);
    CHECK(wi.layers[3].expert_up.first.blocks == 1);
    // The f32 twin: the same (dequantised) values as f32 [in, out] weights.
    std::vector<std::vector<float>> keep;
    keep.reserve(c.n_layers * 8);
    auto deq = [&](const moe::Int8Weight& w) {
      keep.push_back(dequantize(w));
      return F32Weight{keep.back().data(), w.in, w.out, Layout::kInOut};
    };
    auto deq_stack = [&](const WeightStack<moe::Int8Weight>& s) {
      std::vector<float> all;
      for (std::size_t e = 0; e < s.count; ++e) {
        const std::vector<float> one = dequantize(s[e]);
        all.insert(all.end(), one.begin(), one.end());
      }
      keep.push_back(std::move(all));
      return WeightStack<F32Weight>{F32Weight{keep.back().data(), s.in(), s.out(), Layout::kInOut},
                                    s.count};
    };
    const auto wf = moe::grok1::map_weights<F32Weight>(wi, deq, deq_stack);
    REQUIRE(keep.size() == c.n_layers * 7);  // no reallocation moved a view's storage
    for (std::size_t l = 0; l < c.n_layers; ++l) {
      const auto& a = wi.layers[l];
      const auto& b = wf.layers[l];
      // The quantised values are within half a scale step of the trained f32 weights.
      const F32Weight& src = g.w.layers[l].wq;
      for (std::size_t i = 0; i < src.in; i += 5) {
        for (std::size_t o = 0; o < src.out; o += 3) {
          const float step = a.wq.scales[o].to_float();
          CHECK(std::fabs(b.wq.at(i, o) - src.at(i, o)) <= 0.5f * step * 1.01f);
        }
      }
    }
    // Embedding, norms and router are the trained f32 values, bit for bit.
    // (the checkpoint's table is read in place, at any byte alignment: compare rows by value)
    std::vector<float> row(c.d_model);
    for (std::size_t v = 0; v < c.vocab_size; ++v) {
      wi.embedding.lookup(v, row.data());
      for (std::size_t i = 0; i < c.d_model; ++i) {
        REQUIRE(row[i] == reinterpret_cast<const float*>(g.w.embedding.data)[v * c.d_model + i]);
      }
    }
    for (std::size_t i = 0; i < c.d_model; ++i) {
      REQUIRE(wi.layers[7].norm_post_moe[i] == g.w.layers[7].norm_post_moe[i]);
    }
    for (std::size_t i = 0; i < c.d_model; ++i) {
      for (std::size_t e = 0; e < c.n_experts; ++e) {
        REQUIRE(wi.layers[5].router.at(i, e) == g.w.layers[5].router.at(i, e));
      }
    }

    const auto m8 = moe::grok1::make_model(ck.config(), wi);
    const auto m32 = moe::grok1::make_model(ck.config(), wf);
    const std::vector<std::int32_t> tokens = {5, 17, 42, 3, 9, 33, 1, 60, 2, 11, 63, 0};
    moe::ThreadPool pool(2);
    auto s8 = m8.make_state(16, tokens.size());
    auto s32 = m32.make_state(16, tokens.size());
    std::vector<float> l8(tokens.size() * c.vocab_size), l32(l8.size());
    m8.forward(pool, tokens, s8, moe::MatrixView<float>(l8.data(), tokens.size(), c.vocab_size));
    m32.forward(pool, tokens, s32, moe::MatrixView<float>(l32.data(), tokens.size(), c.vocab_size));
    double max_abs = 0, max_err = 0;
    for (std::size_t i = 0; i < l8.size(); ++i) {
      max_abs = std::max(max_abs, std::fabs(double(l32[i])));
      max_err = std::max(max_err, std::fabs(double(l8[i]) - double(l32[i])));
    }
    INFO("max |int8 - f32 twin| = " << max_err << ", max |logit| = " << max_abs);
    // matmul.hpp: int8 weights are dequantised exactly and summed in the f32 path's order, so
    // the two models agree bit for bit (measured: 0).
    CHECK(max_err == 0.0);
    CHECK(max_abs > 0.1);
  }
}

TEST_CASE("export: pickle frames and payloads at the 64 KiB thresholds match Python's",
          "[export]") {
  // The embedding's payload (512 x 32 f32 = 64 KiB) goes outside any frame; each expert
  // tensor's int8 payload (8 x 32 x 255 = 65,280 bytes) fills its frame past 64 KiB, so the frame
  // is committed before the scales (the two framing rules of pickle protocol 4).
  Config c = Config::tiny();
  c.vocab_size = 512;
  c.d_ff = 255;
  const F32Grok g(c, 5);
  const fs::path dir = scratch("frames");
  moe::grok1::export_checkpoint(dir / "export", c, g.w);
  check_with_python(dir, dir / "export", g);
}

TEST_CASE("export: replaces an export atomically, never a user's directory, no trace on failure",
          "[export]") {
  Config c = Config::tiny();
  const F32Grok a(c, 1), b(c, 2);
  const fs::path dir = scratch("publish");
  const fs::path out = dir / "model";

  moe::grok1::export_checkpoint(out, c, a.w);
  const std::string first = slurp(out / "ckpt-0" / "tensor00000_000");
  // A second export replaces the first (extra files included).
  std::ofstream(dir / "tok.model") << "tokenizer bytes";
  moe::grok1::ExportOptions opt;
  opt.extra_files = {{"tokenizer.model", dir / "tok.model"}};
  moe::grok1::export_checkpoint(out, c, b.w, opt);
  const std::string second = slurp(out / "ckpt-0" / "tensor00000_000");
  CHECK(first != second);
  CHECK(slurp(out / "tokenizer.model") == "tokenizer bytes");

  // A failure (a NaN in the last layer's router, written late) leaves the previous export intact
  // and no temporary directory behind.
  F32Grok broken(c, 3);
  const_cast<float*>(broken.w.layers[1].router.data)[5] = INFINITY;
  CHECK_THROWS_WITH(
      moe::grok1::export_checkpoint(out, c, broken.w, opt),
      Catch::Contains("transformer/decoder_layer_1/router/w") && Catch::Contains("non-finite"));
  CHECK(slurp(out / "ckpt-0" / "tensor00000_000") == second);
  CHECK(slurp(out / "tokenizer.model") == "tokenizer bytes");
  std::size_t entries = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    (void)e;
    ++entries;
  }
  CHECK(entries == 2);  // model/ and tok.model

  // A directory holding anything else is never replaced.
  const fs::path user = dir / "user";
  fs::create_directories(user);
  std::ofstream(user / "notes.txt") << "my notes";
  CHECK_THROWS_WITH(moe::grok1::export_checkpoint(user, c, a.w),
                    Catch::Contains("notes.txt") && Catch::Contains("refusing"));
  CHECK(slurp(user / "notes.txt") == "my notes");
  CHECK(!fs::exists(user / "ckpt-0"));
  // Nor a file.
  CHECK_THROWS_AS(moe::grok1::export_checkpoint(user / "notes.txt", c, a.w), moe::ConfigError);
  CHECK(slurp(user / "notes.txt") == "my notes");

  // Weights that do not match the config: ShapeError naming the tensor.
  Config wrong = c;
  wrong.d_ff = c.d_ff + 8;
  CHECK_THROWS_WITH(moe::grok1::export_checkpoint(dir / "wrong", wrong, a.w),
                    Catch::Contains("moe/linear/w"));
  CHECK(!fs::exists(dir / "wrong"));
}
