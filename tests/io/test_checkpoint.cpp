// The Grok-1 checkpoint reader on checkpoints written by tools/make_grok1_checkpoint.py (the
// `moe_io_fixtures` ctest fixture): index table, values read through the views against the
// generator's sidecar, config inference and config.json, the 314B-shaped sparse checkpoint, and
// missing / extra / damaged files.
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <moe/io/json.hpp>
#include <moe/models/grok1_checkpoint.hpp>

#include "io_test_util.hpp"

using namespace io_test;
using moe::ConfigError;
using moe::FormatError;
using moe::IoError;
using moe::ShapeError;
using moe::grok1::Checkpoint;
using moe::grok1::Config;
using moe::grok1::OpenOptions;
using moe::grok1::Slot;

namespace {

void check_same_config(const Config& got, const Config& want) {
  CHECK(got.vocab_size == want.vocab_size);
  CHECK(got.d_model == want.d_model);
  CHECK(got.n_layers == want.n_layers);
  CHECK(got.n_q_heads == want.n_q_heads);
  CHECK(got.n_kv_heads == want.n_kv_heads);
  CHECK(got.head_dim == want.head_dim);
  CHECK(got.n_experts == want.n_experts);
  CHECK(got.top_k == want.top_k);
  CHECK(got.d_ff == want.d_ff);
  CHECK(got.max_seq_len == want.max_seq_len);
  CHECK(got.rope_base == want.rope_base);
  CHECK(got.rms_eps == want.rms_eps);
  CHECK(got.embedding_multiplier == want.embedding_multiplier);
  CHECK(got.output_multiplier == want.output_multiplier);
  CHECK(got.attn_logit_multiplier == want.attn_logit_multiplier);
  CHECK(got.attn_softcap == want.attn_softcap);
  CHECK(got.pad_id == want.pad_id);
  CHECK(got.bos_id == want.bos_id);
  CHECK(got.eos_id == want.eos_id);
}

Config tiny11() {
  Config c = Config::tiny();
  c.n_layers = 11;
  return c;
}

/// A scratch copy of a fixture checkpoint, to damage.
fs::path copy_of(const std::string& fixture_name, const std::string& test) {
  const fs::path dst = scratch(test) / fixture_name;
  fs::copy(fixture(fixture_name), dst, fs::copy_options::recursive);
  return dst;
}

std::vector<std::byte> f32_pickle(std::initializer_list<std::int64_t> shape,
                                  const char* descr = "f4") {
  std::size_t n = 1;
  for (auto d : shape) n *= static_cast<std::size_t>(d);
  const std::size_t item = descr[1] == '8' ? 8 : 4;
  PickleBuilder b;
  b.proto(4).array(shape, descr, std::vector<std::byte>(n * item)).stop();
  return b.bytes;
}

std::vector<std::byte> qw8_pickle(std::vector<std::int64_t> w, std::vector<std::int64_t> s,
                                  const char* wdescr = "i1", const char* sdescr = "bf16") {
  auto numel = [](const std::vector<std::int64_t>& v) {
    std::size_t n = 1;
    for (auto d : v) n *= static_cast<std::size_t>(d);
    return n;
  };
  PickleBuilder b;
  b.proto(4).qw8_begin();
  b.str("weight").array_v(w, wdescr, std::vector<std::byte>(numel(w)), "|");
  const std::size_t sitem = std::string(sdescr) == "f4" ? 4 : 2;
  b.str("scales").array_v(s, sdescr, std::vector<std::byte>(numel(s) * sitem));
  b.qw8_end().stop();
  return b.bytes;
}

template <class E>
std::string open_error(const fs::path& dir, const OpenOptions& o = {}) {
  return message_of<E>([&] { (void)Checkpoint::open(dir, o); });
}

/// Compares every tensor with the generator's expected.json: names (the file order), shapes,
/// CRC-32 of the payload bytes, sums and dequantized samples through the typed views.
void check_against_sidecar(const Checkpoint& ck, const fs::path& dir) {
  const moe::io::JsonValue side = moe::io::read_json_file(dir / "expected.json");
  const auto& tensors = side.at("tensors").as_array();
  REQUIRE(tensors.size() == ck.n_tensors());
  for (const moe::io::JsonValue& t : tensors) {
    const std::size_t i = static_cast<std::size_t>(t.at("index").as_int64());
    const moe::grok1::TensorFile& f = ck.file(i);
    INFO(f.where());
    CHECK(f.name == t.at("name").as_string());
    std::vector<std::size_t> shape;
    for (const auto& d : t.at("shape").as_array())
      shape.push_back(static_cast<std::size_t>(d.as_int64()));
    CHECK(f.weight.shape == shape);
    const bool q = t.at("kind").as_string() == "qw8";
    REQUIRE(f.quantized == q);
    CHECK(crc32(f.weight.data, f.weight.nbytes) ==
          static_cast<std::uint32_t>(t.at("crc32").as_int64()));
    if (q) {
      CHECK(crc32(f.scales.data, f.scales.nbytes) ==
            static_cast<std::uint32_t>(t.at("scales_crc32").as_int64()));
      std::int64_t sum = 0;
      const auto* w = reinterpret_cast<const std::int8_t*>(f.weight.data);
      for (std::size_t k = 0; k < f.weight.numel(); ++k) sum += w[k];
      CHECK(static_cast<double>(sum) == t.at("sum").as_number());
      for (const auto& s : t.at("samples").as_array()) {
        const auto& idx = s.at(0).as_array();
        const float want = static_cast<float>(s.at(1).as_number());
        if (idx.size() == 2) {
          const moe::Int8Weight v = ck.int8(i);
          CHECK(v.at(static_cast<std::size_t>(idx[0].as_int64()),
                     static_cast<std::size_t>(idx[1].as_int64())) == want);
        } else {
          const moe::WeightStack<moe::Int8Weight> v = ck.int8_stack(i);
          CHECK(v[static_cast<std::size_t>(idx[0].as_int64())].at(
                    static_cast<std::size_t>(idx[1].as_int64()),
                    static_cast<std::size_t>(idx[2].as_int64())) == want);
        }
      }
    } else {
      const std::span<const float> v = ck.f32(i);
      double sum = 0;
      for (float x : v) sum += x;
      CHECK(sum == Approx(t.at("sum").as_number()).epsilon(1e-9).margin(1e-9));
      for (const auto& s : t.at("samples").as_array()) {
        const auto& idx = s.at(0).as_array();
        std::size_t flat = 0;
        for (std::size_t k = 0; k < idx.size(); ++k) {
          flat = flat * shape[k] + static_cast<std::size_t>(idx[k].as_int64());
        }
        CHECK(v[flat] == static_cast<float>(s.at(1).as_number()));
      }
    }
  }
}

}  // namespace

TEST_CASE("checkpoint: index table of the release (lexicographic layer order)",
          "[io][checkpoint]") {
  using namespace moe::grok1;
  CHECK(n_files(64) == 770);
  CHECK(file_name(519) == "tensor00519_000");
  CHECK(file_name(0) == "tensor00000_000");
  const TensorRef a = tensor_at(519, 64);
  CHECK((a.in_layer && a.layer == 48 && a.slot == Slot::kExpertDown));
  const TensorRef b = tensor_at(713, 64);
  CHECK((b.in_layer && b.layer == 62 && b.slot == Slot::kKey));
  const TensorRef c = tensor_at(758, 64);
  CHECK((c.in_layer && c.layer == 9 && c.slot == Slot::kExpertGate));
  CHECK(tensor_name(519, 64) == "transformer/decoder_layer_48/moe/linear_1/w");
  CHECK(tensor_name(713, 64) == "transformer/decoder_layer_62/multi_head_attention/key/w");
  CHECK(tensor_name(758, 64) == "transformer/decoder_layer_9/moe/linear/w");
  CHECK(tensor_name(0, 64) == "language_model/in_out_embed/embeddings");
  CHECK(tensor_name(1, 64) == "language_model/rms_norm/scale");
  CHECK(tensor_name(13, 64) == "transformer/decoder_layer_0/router/w");
  CHECK(tensor_name(769, 64) == "transformer/decoder_layer_9/router/w");
  CHECK(file_index(0, Slot::kExpertGate, 64) == 2);
  CHECK(file_index(1, Slot::kExpertGate, 64) == 14);
  CHECK(file_index(10, Slot::kExpertGate, 64) == 26);
  CHECK(file_index(2, Slot::kExpertGate, 64) == 146);
  CHECK(file_index(9, Slot::kExpertGate, 64) == 758);
  CHECK(file_index(9, Slot::kRouter, 64) == 769);
  CHECK(file_index(48, Slot::kExpertDown, 64) == 519);
  CHECK(layer_file_order(12) == std::vector<std::size_t>{0, 1, 10, 11, 2, 3, 4, 5, 6, 7, 8, 9});
  CHECK(layer_file_order(3) == std::vector<std::size_t>{0, 1, 2});
  CHECK(layer_rank(100, 101) == 3);  // 0, 1, 10, 100, 11, ...: "100" sorts after "10"
  for (std::size_t n : {1u, 2u, 9u, 10u, 11u, 12u, 64u, 101u}) {
    std::vector<int> seen(n_files(n), 0);
    for (std::size_t l = 0; l < n; ++l) {
      for (std::size_t s = 0; s < kSlotsPerLayer; ++s) {
        const std::size_t i = file_index(l, static_cast<Slot>(s), n);
        REQUIRE(i < n_files(n));
        ++seen[i];
        const TensorRef r = tensor_at(i, n);
        CHECK((r.in_layer && r.layer == l && r.slot == static_cast<Slot>(s)));
      }
    }
    CHECK(seen[0] == 0);
    CHECK(seen[1] == 0);
    for (std::size_t i = 2; i < seen.size(); ++i) CHECK(seen[i] == 1);
  }
  CHECK(slot_path(Slot::kAttnOut) == "multi_head_attention/linear/w");
  CHECK_THAT(message_of<ConfigError>([] { (void)tensor_at(770, 64); }),
             Contains("file index 770 is out of range for 64 layers (770 files)"));
}

TEST_CASE("checkpoint: an 11-layer checkpoint reads back what the generator wrote",
          "[io][checkpoint]") {
  const fs::path dir = fixture("tiny11");
  std::vector<std::size_t> done;
  OpenOptions o;
  o.progress = [&](std::size_t d, std::size_t total, const fs::path& file) {
    done.push_back(d);
    CHECK(total == 134);
    CHECK(file.filename() == moe::grok1::file_name(d - 1));
  };
  const Checkpoint ck = Checkpoint::open(dir, o);
  REQUIRE(done.size() == 134);
  CHECK(done.back() == 134);
  check_same_config(ck.config(), tiny11());
  CHECK(ck.tensor_dir() == dir / "ckpt-0");
  CHECK(ck.config_json() == dir / "config.json");
  CHECK(ck.n_tensors() == 134);
  CHECK(ck.copied_bytes() == 0);  // open() copies nothing
  check_against_sidecar(ck, dir);

  // typed views
  const moe::MatrixView<const float> e = ck.embedding();
  CHECK((e.rows == 64 && e.cols == 32 && e.stride == 32));
  CHECK(ck.final_norm().size() == 32);
  CHECK(ck.norm(10, Slot::kNormPostMoe).size() == 32);
  const moe::F32Weight r = ck.router(7);
  CHECK((r.in == 32 && r.out == 8 && r.layout == moe::Layout::kInOut));
  const moe::Int8Weight q = ck.attention(3, Slot::kQuery);
  CHECK((q.in == 32 && q.out == 32 && q.blocks == 1));
  const moe::Int8Weight k = ck.attention(3, Slot::kKey);
  CHECK((k.in == 32 && k.out == 16 && k.blocks == 1));
  const moe::Int8Weight wo = ck.attention(3, Slot::kAttnOut);
  CHECK((wo.in == 32 && wo.out == 32 && wo.blocks == 8 && wo.block_rows() == 4));
  const auto gate = ck.experts(10, Slot::kExpertGate);
  CHECK((gate.count == 8 && gate.in() == 32 && gate.out() == 48 && gate.first.blocks == 1));
  const auto down = ck.experts(10, Slot::kExpertDown);
  CHECK((down.count == 8 && down.in() == 48 && down.out() == 32 && down.first.blocks == 8));
  CHECK_NOTHROW(moe::validate_weight(down.first, "test", "down"));

  // layer 10 is the 3rd layer in the files (0, 1, 10, ...): its views come from files 26..37
  CHECK(ck.index_of(10, Slot::kExpertGate) == 26);
  CHECK(reinterpret_cast<const std::byte*>(gate.first.data) == ck.raw(26).data);
}

TEST_CASE("checkpoint: scales are read in place, misaligned f32 payloads are copied once",
          "[io][checkpoint]") {
  const Checkpoint ck = Checkpoint::open(fixture("tiny11"));
  std::size_t expect_copied = 0;
  std::size_t zero_copy = 0;
  std::size_t odd_scales = 0;
  for (std::size_t i = 0; i < ck.n_tensors(); ++i) {
    const moe::grok1::TensorFile& f = ck.file(i);
    if (f.quantized) {
      // bf16 scales: in place at any byte address (the int8 kernels load them unaligned)
      const moe::bf16* s = f.weight.ndim() == 2 ? ck.int8(i).scales : ck.int8_stack(i).first.scales;
      CHECK(reinterpret_cast<const std::byte*>(s) == f.scales.data);
      if (!f.scales.aligned()) ++odd_scales;
    } else {
      const float* p = ck.f32(i).data();
      CHECK(reinterpret_cast<std::uintptr_t>(p) % 4 == 0);
      CHECK(std::memcmp(p, f.weight.data, f.weight.nbytes) == 0);
      if (f.weight.aligned()) {
        CHECK(reinterpret_cast<const std::byte*>(p) == f.weight.data);
        ++zero_copy;
      } else {
        CHECK(reinterpret_cast<std::uintptr_t>(p) % 64 == 0);
        expect_copied += f.weight.nbytes;
      }
      CHECK(ck.f32(i).data() == p);  // cached
    }
  }
  CHECK(ck.copied_bytes() == expect_copied);
  CHECK(expect_copied > 0);  // e.g. the norms sit at byte 146 of their files, as in the release
  CHECK(odd_scales > 0);     // scales at odd offsets, as in the release: bound without a copy
  CHECK(zero_copy + expect_copied > 0);

  // concurrent first access to the same misaligned tensor yields one copy
  const Checkpoint ck2 = Checkpoint::open(fixture("tiny11"));
  const float* p1 = nullptr;
  const float* p2 = nullptr;
  std::thread t1([&] { p1 = ck2.final_norm().data(); });
  std::thread t2([&] { p2 = ck2.final_norm().data(); });
  t1.join();
  t2.join();
  CHECK(p1 == p2);
  CHECK(ck2.copied_bytes() == 32 * 4);
}

TEST_CASE("checkpoint: the demo config and numpy 2 pickles", "[io][checkpoint]") {
  {
    const Checkpoint ck = Checkpoint::open(fixture("demo"));
    check_same_config(ck.config(), Config::demo());
    check_against_sidecar(ck, fixture("demo"));
  }
  {
    const Checkpoint ck = Checkpoint::open(fixture("tiny_np2"));
    check_same_config(ck.config(), Config::tiny());
    check_against_sidecar(ck, fixture("tiny_np2"));
  }
}

TEST_CASE("checkpoint: the 314B-shaped sparse checkpoint maps and validates in seconds",
          "[io][checkpoint][sparse]") {
  const fs::path dir = fixture("full_sparse");
  const auto t0 = std::chrono::steady_clock::now();
  const Checkpoint ck = Checkpoint::open(dir);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  WARN("opened and validated the 770-file 314B checkpoint in " << secs << " s");
  CHECK(secs < 20.0);
  check_same_config(ck.config(), Config::full());
  CHECK(ck.config_json().empty());  // the release has no config.json: everything is inferred
  CHECK(ck.n_tensors() == 770);
  // 314,874,789,888 B int8 + 124,780,544 B scales + 3,240,124,416 B f32 + pickle headers
  CHECK(ck.file_bytes() > 318'239'694'848ull);
  CHECK(ck.file_bytes() < 318'239'694'848ull + 770 * 1024);
  CHECK(ck.copied_bytes() == 0);

  // Nothing but headers and tails was read: payload pages are not resident. Read-ahead would
  // show up next to the pages the parser touched, so look at the first and last 4 MiB of every
  // payload (mincore over all 318 GB takes seconds), and at all of the 12 files of layer 0.
  std::size_t resident_payload = 0;
  auto resident = [](const moe::grok1::TensorFile& f, const moe::io::Array& a) {
    constexpr std::size_t kWindow = std::size_t{4} << 20;
    if (a.nbytes <= 2 * kWindow) return f.map.resident_bytes(a.offset, a.nbytes);
    return f.map.resident_bytes(a.offset, kWindow) +
           f.map.resident_bytes(a.offset + a.nbytes - kWindow, kWindow);
  };
  for (const auto& f : ck.files()) {
    resident_payload += resident(f, f.weight);
    if (f.quantized) resident_payload += resident(f, f.scales);
  }
  for (std::size_t s = 0; s < moe::grok1::kSlotsPerLayer; ++s) {
    const auto& f = ck.file(ck.index_of(0, static_cast<Slot>(s)));
    resident_payload += f.map.resident_bytes(f.weight.offset, f.weight.nbytes);
  }
  WARN("resident payload bytes after open: " << resident_payload);
  // at most the partial first and last page of each payload (shared with the pickle opcodes)
  CHECK(resident_payload <= 782 * 2 * 2 * 4096);
  const auto& emb = ck.file(0);
  CHECK(emb.weight.offset == 151);  // misaligned, as numpy 1.x's protocol-4 header places it
  CHECK(emb.map.resident_bytes(8192, emb.weight.nbytes - 16384) == 0);

  // the 314B routers [6144, 8] sit at byte 148: aligned, so the view is zero-copy
  CHECK(ck.file(13).weight.offset == 148);
  CHECK(reinterpret_cast<const std::byte*>(ck.router(0).data) == ck.raw(13).data);
  CHECK(ck.copied_bytes() == 0);
  const auto down = ck.experts(63, Slot::kExpertDown);
  CHECK((down.count == 8 && down.in() == 32768 && down.out() == 6144 && down.first.blocks == 8));
  const auto wo = ck.attention(0, Slot::kAttnOut);
  CHECK((wo.in == 6144 && wo.out == 6144 && wo.blocks == 8 && wo.block_rows() == 768));
  // their scales sit at odd offsets, as in the release, and are bound in place
  CHECK(reinterpret_cast<std::uintptr_t>(down.first.scales) % 2 == 1);
  CHECK(reinterpret_cast<std::uintptr_t>(wo.scales) % 2 == 1);
  CHECK(ck.copied_bytes() == 0);
  CHECK(ck.attention(0, Slot::kQuery).blocks == 1);
  CHECK(ck.file(519).name == "transformer/decoder_layer_48/moe/linear_1/w");
  CHECK(ck.file(713).name == "transformer/decoder_layer_62/multi_head_attention/key/w");
  CHECK(ck.file(758).name == "transformer/decoder_layer_9/moe/linear/w");
  CHECK_THAT(ck.summary(), Contains("770 files, 318.24 GB; vocab 131072, d_model 6144, 64 "
                                    "layers, 48/8 heads x 128, 8 experts (top 2), d_ff 32768"));
  // the int8 view of the biggest tensor is a pointer into the mapping (no copy, no read)
  CHECK(reinterpret_cast<const std::byte*>(down.first.data) ==
        ck.raw(ck.index_of(63, Slot::kExpertDown)).data);
  CHECK_NOTHROW(ck.advise_layer(5, moe::io::Advice::kDontNeed));
}

TEST_CASE("checkpoint: missing and extra files", "[io][checkpoint]") {
  SECTION("a missing file in the middle") {
    const fs::path d = copy_of("tiny11", "ck_missing");
    fs::remove(d / "ckpt-0" / "tensor00005_000");
    CHECK(open_error<FormatError>(d) ==
          "[grok1] '" + (d / "ckpt-0").string() +
              "' is missing tensor00005_000 (a checkpoint with 11 layers has 134 files, "
              "tensor00000_000 .. tensor00133_000)");
  }
  SECTION("the last file is missing") {
    const fs::path d = copy_of("tiny11", "ck_missing_last");
    fs::remove(d / "ckpt-0" / "tensor00133_000");
    CHECK_THAT(open_error<FormatError>(d),
               Contains("has tensor files up to tensor00132_000, but a Grok-1 checkpoint has 2 "
                        "+ 12 * n_layers files: either tensor00122_000, tensor00123_000, "
                        "tensor00124_000, tensor00125_000, tensor00126_000, ... (11 files) are "
                        "extra (10 layers, 122 files) or tensor00133_000 is missing (11 layers, "
                        "134 files)"));
  }
  SECTION("an extra file") {
    const fs::path d = copy_of("tiny11", "ck_extra");
    fs::copy_file(d / "ckpt-0" / "tensor00001_000", d / "ckpt-0" / "tensor00134_000");
    CHECK_THAT(open_error<FormatError>(d),
               Contains("either tensor00134_000 is extra (11 layers, 134 files) or "
                        "tensor00135_000, tensor00136_000, tensor00137_000, tensor00138_000, "
                        "tensor00139_000, ... (11 files) are missing (12 layers, 146 files)"));
    write_text(d / "config.json", R"({"head_dim": 8, "max_seq_len": 64, "n_layers": 11})");
    CHECK_THAT(open_error<FormatError>(d),
               Contains("has unexpected extra tensor00134_000 (a checkpoint with 11 layers has "
                        "134 files"));
  }
  SECTION("other shards and unrelated files are ignored") {
    const fs::path d = copy_of("tiny11", "ck_ignored");
    fs::copy_file(d / "ckpt-0" / "tensor00001_000", d / "ckpt-0" / "tensor00001_001");
    write_text(d / "ckpt-0" / "README", "hello");
    write_text(d / "ckpt-0" / "tensor00001_000.tmp", "x");
    CHECK_NOTHROW(Checkpoint::open(d));
  }
  SECTION("an empty tensor directory") {
    const fs::path d = scratch("ck_empty") / "ck";
    fs::create_directories(d / "ckpt-0");
    CHECK(open_error<FormatError>(d) ==
          "[grok1] '" + (d / "ckpt-0").string() + "' holds no tensor files (tensor00000_000, ...)");
  }
}

TEST_CASE("checkpoint: damaged and wrong files are reported by name", "[io][checkpoint]") {
  const fs::path d = copy_of("tiny11", "ck_damaged");
  const fs::path t = d / "ckpt-0";
  auto restore = [&](const char* name) {
    fs::copy_file(fixture("tiny11") / "ckpt-0" / name, t / name,
                  fs::copy_options::overwrite_existing);
  };
  SECTION("truncated") {
    std::vector<std::byte> b = read_file(t / "tensor00002_000");
    b.resize(b.size() / 2);
    write_file(t / "tensor00002_000", b);
    CHECK_THAT(open_error<FormatError>(d),
               StartsWith("[pickle] '" + (t / "tensor00002_000").string() + "' at byte ") &&
                   Contains("goes past the end of the file"));
    write_file(t / "tensor00002_000", {});
    CHECK_THAT(open_error<FormatError>(d), Contains("tensor00002_000' at byte 0: file ends "
                                                    "without a STOP opcode"));
    restore("tensor00002_000");
    CHECK_NOTHROW(Checkpoint::open(d));
  }
  SECTION("a hostile pickle in place of a tensor") {
    fs::copy_file(fixture("pickles") / "exploit.p4", t / "tensor00007_000",
                  fs::copy_options::overwrite_existing);
    CHECK_THAT(open_error<FormatError>(d), Contains("tensor00007_000' at byte") &&
                                               Contains("global 'posix.system' is not allowed"));
  }
  const std::string norm = "[grok1] '" + (t / "tensor00009_000").string() +
                           "' (transformer/decoder_layer_0/rms_norm/scale)";
  const std::string key = "[grok1] '" + (t / "tensor00005_000").string() +
                          "' (transformer/decoder_layer_0/multi_head_attention/key/w)";
  SECTION("wrong shape") {
    write_file(t / "tensor00009_000", f32_pickle({33}));
    CHECK(open_error<ShapeError>(d) == norm + " has shape [33], expected [32]");
  }
  SECTION("wrong dtype") {
    write_file(t / "tensor00009_000", f32_pickle({32}, "f8"));
    CHECK(open_error<ShapeError>(d) == norm + " has dtype float64, expected float32");
  }
  SECTION("quantized where a plain array belongs, and the reverse") {
    write_file(t / "tensor00009_000", qw8_pickle({32, 32}, {1, 32}));
    CHECK(open_error<ShapeError>(d) ==
          norm +
              " is a QuantizedWeight8bit with weight int8 [32, 32] and scales bfloat16 "
              "[1, 32], expected a plain float32 [32] array");
    restore("tensor00009_000");
    write_file(t / "tensor00005_000", f32_pickle({32, 16}));
    CHECK_THAT(open_error<ShapeError>(d),
               Contains("multi_head_attention/key/w) is a plain float32 [32, 16] array, expected "
                        "a 2-D QuantizedWeight8bit") ||
                   Contains(key + " is a plain float32 [32, 16] array, expected a "
                                  "QuantizedWeight8bit (int8 weight [32, 16] + bf16 scales)"));
  }
  SECTION("quantized tensors: weight shape, weight dtype, scales dtype, scales blocks") {
    write_file(t / "tensor00005_000", qw8_pickle({32, 17}, {1, 17}));
    CHECK_THAT(open_error<ConfigError>(d), Contains("query width 32 and key width 17"));
    write_file(t / "tensor00006_000", qw8_pickle({32, 33}, {8, 33}));  // layer 0 wo
    restore("tensor00005_000");
    CHECK(open_error<ShapeError>(d) ==
          "[grok1] '" + (t / "tensor00006_000").string() +
              "' (transformer/decoder_layer_0/multi_head_attention/linear/w): weight has shape "
              "[32, 33], expected [32, 32]");
    restore("tensor00006_000");
    write_file(t / "tensor00008_000", qw8_pickle({32, 16}, {1, 16}, "u1"));  // layer 0 value
    CHECK_THAT(open_error<ShapeError>(d), Contains("value/w): weight has dtype uint8, expected "
                                                   "int8"));
    write_file(t / "tensor00008_000", qw8_pickle({32, 16}, {1, 16}, "i1", "f4"));
    CHECK_THAT(open_error<ShapeError>(d), Contains("value/w): scales have dtype float32, "
                                                   "expected bfloat16"));
    write_file(t / "tensor00008_000", qw8_pickle({32, 16}, {5, 16}));
    CHECK_THAT(open_error<ShapeError>(d),
               Contains("value/w): scales have shape [5, 16], expected [1, 16] with the 1 "
                        "replaced by a divisor of 32 (the number of row blocks, 1 or 8)"));
    write_file(t / "tensor00008_000", qw8_pickle({32, 16}, {16}));
    CHECK_THAT(open_error<ShapeError>(d), Contains("scales have shape [16], expected [1, 16]"));
    write_file(t / "tensor00008_000", qw8_pickle({32, 16}, {2, 16}));  // 2 row blocks: fine
    CHECK_NOTHROW(Checkpoint::open(d));
  }
  SECTION("the embeddings decide vocab and d_model") {
    write_file(t / "tensor00000_000", f32_pickle({32}));
    CHECK(open_error<ShapeError>(d) ==
          "[grok1] '" + (t / "tensor00000_000").string() +
              "' (language_model/in_out_embed/embeddings) is a plain float32 [32] array, "
              "expected a float32 [vocab, d_model] array");
    write_file(t / "tensor00000_000", f32_pickle({64, 33}));
    CHECK_THAT(open_error<ShapeError>(d),
               Contains("language_model/rms_norm/scale) has shape [32], expected [33]"));
  }
}

TEST_CASE("checkpoint: config.json and config inference", "[io][checkpoint][config]") {
  const fs::path d = copy_of("tiny11", "ck_config");
  const fs::path cfg = d / "config.json";
  const std::string where = "[grok1] '" + cfg.string() + "': ";
  SECTION("without config.json the head count cannot be inferred for head_dim != 128") {
    fs::remove(cfg);
    CHECK_THAT(open_error<ConfigError>(d),
               Contains("cannot infer the attention heads: the query width 32 and key width 16") &&
                   Contains("are not multiples of head_dim 128; set \"head_dim\" in config.json"));
    OpenOptions o;
    o.config = tiny11();
    check_same_config(Checkpoint::open(d, o).config(), tiny11());
  }
  SECTION("n_q_heads instead of head_dim") {
    write_text(cfg, R"({"n_q_heads": 4, "max_seq_len": 64})");
    check_same_config(Checkpoint::open(d).config(), tiny11());
  }
  SECTION("every override") {
    write_text(cfg, R"({"head_dim": 8, "rope_base": 500000, "rms_eps": 1e-6,
      "embedding_multiplier": 2.5, "output_multiplier": 0.25, "attn_logit_multiplier": 0.125,
      "attn_softcap": 0, "top_k": 3, "max_seq_len": 100, "pad_id": 3, "bos_id": 4, "eos_id": 5,
      "vocab_size": 64, "d_model": 32, "n_layers": 11, "n_q_heads": 4, "n_kv_heads": 2,
      "n_experts": 8, "d_ff": 48})");
    Config want = tiny11();
    want.rope_base = 500000;
    want.rms_eps = 1e-6;
    want.embedding_multiplier = 2.5;
    want.output_multiplier = 0.25;
    want.attn_logit_multiplier = 0.125;
    want.attn_softcap = 0;
    want.top_k = 3;
    want.max_seq_len = 100;
    want.pad_id = 3;
    want.bos_id = 4;
    want.eos_id = 5;
    check_same_config(Checkpoint::open(d).config(), want);
  }
  SECTION("config.json may not contradict the shapes") {
    write_text(cfg, R"({"head_dim": 8, "d_model": 64})");
    CHECK(open_error<ConfigError>(d) ==
          "[grok1] '" + cfg.string() +
              "' says d_model = 64 but the checkpoint's tensors have d_model = 32");
    write_text(cfg, R"({"head_dim": 4, "n_kv_heads": 2})");
    CHECK_THAT(open_error<ConfigError>(d), Contains("says n_kv_heads = 2 but the checkpoint's "
                                                    "tensors have n_kv_heads = 4"));
  }
  SECTION("bad keys and values") {
    write_text(cfg, R"({"head_dim": 8, "rope_theta": 10000})");
    CHECK_THAT(open_error<ConfigError>(d), StartsWith(where + "unknown key 'rope_theta' (known:"));
    write_text(cfg, R"({"head_dim": "8"})");
    CHECK(open_error<ConfigError>(d) ==
          where + "key 'head_dim' must be a positive integer, got a string (\"8\")");
    write_text(cfg, R"({"head_dim": 8.0})");
    CHECK_THAT(open_error<ConfigError>(d), Contains("key 'head_dim' must be a positive integer, "
                                                    "got a number (8.0)"));
    write_text(cfg, R"({"head_dim": 8, "rms_eps": -1})");
    CHECK(open_error<ConfigError>(d) ==
          where + "key 'rms_eps' must be a positive number, got a number (-1)");
    write_text(cfg, R"({"head_dim": 8, "eos_id": -2})");
    CHECK_THAT(open_error<ConfigError>(d), Contains("key 'eos_id' must be a token id"));
    write_text(cfg, R"({"head_dim": 8, "top_k": 9})");
    CHECK_THAT(
        open_error<ConfigError>(d),
        StartsWith("[grok1] top_k (9) must be in [1, n_experts = 8] (config inferred from") &&
            Contains("config.json"));
    write_text(cfg, R"({"head_dim": 6})");
    CHECK_THAT(open_error<ConfigError>(d), Contains("not multiples of head_dim 6"));
    write_text(cfg, "[1]");
    CHECK(open_error<ConfigError>(d) == where + "expected a JSON object, got an array");
    write_text(cfg, "{\"head_dim\": 8,}");
    CHECK(open_error<FormatError>(d) ==
          "[json] '" + cfg.string() + "' line 1, column 16: expected a string key");
  }
  SECTION("read_config_json = false ignores the file") {
    write_text(cfg, "not json");
    OpenOptions o;
    o.read_config_json = false;
    CHECK_THAT(open_error<ConfigError>(d, o), Contains("set \"head_dim\""));
  }
  SECTION("an explicit config must match the files") {
    OpenOptions o;
    o.config = Config::tiny();  // 2 layers
    CHECK_THAT(open_error<FormatError>(d, o),
               Contains("has unexpected extra tensor00026_000, tensor00027_000") &&
                   Contains("(a checkpoint with 2 layers has 26 files"));
    Config wide = tiny11();
    wide.d_ff = 64;
    o.config = wide;
    CHECK_THAT(open_error<ShapeError>(d, o),
               Contains("moe/linear/w): weight has shape [8, 32, 48], expected [8, 32, 64]"));
  }
}

TEST_CASE("checkpoint: directory layouts and API misuse", "[io][checkpoint]") {
  SECTION("ckpt/ instead of ckpt-0/") {
    const fs::path d = copy_of("tiny11", "ck_layout");
    fs::rename(d / "ckpt-0", d / "ckpt");
    const Checkpoint ck = Checkpoint::open(d);
    CHECK(ck.tensor_dir() == d / "ckpt");
    check_same_config(ck.config(), tiny11());
  }
  SECTION("the tensor directory itself (config.json is read from its parent)") {
    const fs::path d = fixture("tiny11");
    check_same_config(Checkpoint::open(d / "ckpt-0").config(), tiny11());
    check_same_config(Checkpoint::open((d / "ckpt-0").string() + "/").config(), tiny11());
  }
  SECTION("not a checkpoint") {
    const fs::path d = scratch("ck_none");
    CHECK(open_error<FormatError>(d) ==
          "[grok1] '" + d.string() +
              "' is not a Grok-1 checkpoint: it holds neither ckpt-0/ nor ckpt/ nor "
              "tensor00000_000");
    CHECK(open_error<IoError>(d / "nope") ==
          "[grok1] checkpoint directory '" + (d / "nope").string() + "' does not exist");
    write_text(d / "file", "x");
    CHECK_THAT(open_error<IoError>(d / "file"), Contains("is not a directory"));
  }
  SECTION("accessors check their arguments") {
    const Checkpoint ck = Checkpoint::open(fixture("tiny11"));
    CHECK_THAT(message_of<ConfigError>([&] { (void)ck.norm(0, Slot::kQuery); }),
               Contains("norm(): slot 'multi_head_attention/query/w' is not of that kind"));
    CHECK_THAT(message_of<ConfigError>([&] { (void)ck.experts(0, Slot::kKey); }),
               Contains("experts(): slot"));
    CHECK_THAT(message_of<ConfigError>([&] { (void)ck.attention(0, Slot::kExpertUp); }),
               Contains("attention(): slot"));
    CHECK_THAT(message_of<ConfigError>([&] { (void)ck.router(11); }),
               Contains("layer 11 is out of range (11 layers)"));
    // a view of the wrong kind is a dtype/shape fault: ShapeError, like in validation
    CHECK_THAT(message_of<ShapeError>([&] { (void)ck.f32(2); }),
               Contains("tensor00002_000' (transformer/decoder_layer_0/moe/linear/w) holds int8 + "
                        "bf16 scales [8, 32, 48], which cannot be viewed as an f32 vector"));
    CHECK_THAT(message_of<ShapeError>([&] { (void)ck.int8(2); }),
               Contains("which cannot be viewed as an int8 weight"));
    CHECK_THAT(message_of<ShapeError>([&] { (void)ck.int8_stack(13); }),
               Contains("(transformer/decoder_layer_0/router/w) holds float32 [32, 8], which "
                        "cannot be viewed as a stack of int8 weights"));
    CHECK_THAT(message_of<ConfigError>([&] { (void)ck.file(134); }),
               Contains("file index 134 is out of range (134 files)"));
    const Checkpoint closed;
    CHECK_THAT(message_of<ConfigError>([&] { (void)closed.config(); }),
               Contains("the checkpoint is not open"));
  }
}
