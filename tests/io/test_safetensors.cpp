// The safetensors reader (moe/io/safetensors.hpp) on checkpoints written by
// tools/make_hf_checkpoint.py (the `moe_hf_fixtures` ctest fixture): every tensor against the
// generator's manifest, values of each dtype against their formula, sharded and single-file
// layouts; then malformed files and indexes built byte by byte here, each a clear error.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <moe/io/json.hpp>
#include <moe/io/safetensors.hpp>

#include "io_test_util.hpp"

using namespace io_test;
using Catch::Matchers::EndsWith;
using moe::FormatError;
using moe::IoError;
using moe::ShapeError;
namespace st = moe::io::safetensors;

namespace {

fs::path hf_fixture(const std::string& name) {
  return fixture("hf/" + name);
}

/// 8-byte little-endian length + header + data.
std::vector<std::byte> st_file(const std::string& header, std::size_t data_bytes,
                               std::uint64_t declared = UINT64_MAX) {
  const std::uint64_t n = declared == UINT64_MAX ? header.size() : declared;
  std::vector<std::byte> b(8);
  for (int i = 0; i < 8; ++i) b[i] = static_cast<std::byte>((n >> (8 * i)) & 0xff);
  for (char c : header) b.push_back(static_cast<std::byte>(c));
  const std::vector<std::byte> data = iota_bytes(data_bytes);
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

/// Writes the file into a scratch directory and returns the message of the FormatError opening
/// it throws (failing when it opens).
std::string open_error(const std::string& test, const std::vector<std::byte>& bytes,
                       const st::Limits& limits = {}) {
  const fs::path p = scratch(test) / "model.safetensors";
  write_file(p, bytes);
  const std::string msg = message_of<FormatError>([&] { st::File f(p, limits); });
  CHECK_THAT(msg, StartsWith("[safetensors] '" + p.string() + "': "));
  return msg;
}

std::string open_error(const std::string& test, const std::string& header, std::size_t data) {
  return open_error(test, st_file(header, data));
}

std::string tensor(const std::string& name, const std::string& dtype, const std::string& shape,
                   std::size_t begin, std::size_t end) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(end) + "]}";
}

/// A copy of a fixture checkpoint in a scratch directory, to damage.
fs::path copy_of(const std::string& name, const std::string& test) {
  const fs::path dst = scratch(test) / name;
  fs::copy(hf_fixture(name), dst, fs::copy_options::recursive);
  return dst;
}

/// Rewrites DIR/model.safetensors.index.json with this weight map.
void write_index(const fs::path& dir, const std::map<std::string, std::string>& weight_map) {
  std::string text = "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {";
  bool first = true;
  for (const auto& [tensor_name, shard] : weight_map) {
    text += (first ? "\"" : ", \"") + tensor_name + "\": \"" + shard + "\"";
    first = false;
  }
  write_text(dir / "model.safetensors.index.json", text + "}}\n");
}

std::map<std::string, std::string> weight_map_of(const fs::path& dir) {
  const moe::io::JsonValue index = moe::io::read_json_file(dir / "model.safetensors.index.json");
  std::map<std::string, std::string> m;
  for (const auto& [k, v] : index.at("weight_map").as_object()) m[k] = v.as_string();
  return m;
}

}  // namespace

TEST_CASE("safetensors: every fixture tensor matches the generator's manifest", "[safetensors]") {
  for (const char* name : {"mixtral_bf16_sharded", "mixtral_f32", "mixtral_window",
                           "qwen2_moe_bf16", "olmoe_f32", "dtypes"}) {
    INFO("fixture " << name);
    const fs::path dir = hf_fixture(name);
    const st::Checkpoint ckpt(dir);
    const moe::io::JsonValue manifest = moe::io::read_json_file(dir / "manifest.json");
    const auto& tensors = manifest.at("tensors").as_object();
    REQUIRE(ckpt.size() == tensors.size());
    for (const auto& [tname, info] : tensors) {
      INFO("tensor " << tname);
      const st::Entry* e = ckpt.find(tname);
      REQUIRE(e != nullptr);
      CHECK(st::dtype_name(e->dtype) == info.at("dtype").as_string());
      std::vector<std::size_t> shape;
      for (const auto& d : info.at("shape").as_array()) {
        shape.push_back(static_cast<std::size_t>(d.as_int64()));
      }
      CHECK(e->shape == shape);
      const st::File& file = ckpt.file_of(tname);
      CHECK(fs::path(file.path()).filename() == info.at("file").as_string());
      const std::span<const std::byte> bytes = file.mapped().bytes(e->begin, e->nbytes());
      CHECK(static_cast<std::int64_t>(crc32(bytes.data(), bytes.size())) ==
            info.at("crc32").as_int64());
      if (st::supported(e->dtype)) {
        const st::Tensor t = ckpt.tensor(tname);
        CHECK(t.data == bytes.data());  // zero-copy: a pointer into the mapping
        CHECK(t.nbytes == bytes.size());
        CHECK(t.aligned());
        CHECK(*t.file == file.path());
      }
    }
    const bool sharded = fs::exists(dir / "model.safetensors.index.json");
    CHECK(ckpt.index_path().empty() == !sharded);
    CHECK((ckpt.files().size() > 1) == sharded);
    if (sharded) CHECK(ckpt.index_total_size() == ckpt.data_bytes());
  }
}

TEST_CASE("safetensors: values of every dtype", "[safetensors]") {
  const st::Checkpoint ckpt(hf_fixture("dtypes"));
  const std::span<const float> f32 = ckpt.tensor("f32").values<float>();
  REQUIRE(f32.size() == 15);
  for (std::size_t i = 0; i < f32.size(); ++i)
    CHECK(f32[i] == static_cast<float>(i) * 0.25f - 1.5f);
  const st::Tensor bf = ckpt.tensor("bf16");
  CHECK(bf.describe() == "BF16 [2, 3, 4]");
  const std::span<const moe::bf16> b = bf.values<moe::bf16>();
  for (std::size_t i = 0; i < b.size(); ++i) {
    CHECK(b[i].to_float() == (static_cast<float>(i) - 12.0f) * 0.5f);
  }
  const float f16_values[] = {0.0f,     1.0f,     -2.0f, 65504.0f,
                              0x1p-14f, 0x1p-24f, -0.5f, std::numeric_limits<float>::infinity(),
                              3.140625f};
  const std::span<const st::f16> h = ckpt.tensor("f16").values<st::f16>();
  REQUIRE(h.size() == 9);
  for (std::size_t i = 0; i < h.size(); ++i) CHECK(h[i].to_float() == f16_values[i]);
  CHECK(st::f16{0x7E00}.to_float() != st::f16{0x7E00}.to_float());  // NaN stays NaN
  CHECK(st::f16{0x8001}.to_float() == -0x1p-24f);
  const std::span<const std::int8_t> i8 = ckpt.tensor("i8").values<std::int8_t>();
  for (std::size_t i = 0; i < i8.size(); ++i) {
    CHECK(static_cast<int>(i8[i]) == static_cast<int>(i * 17 % 256) - 128);
  }
  const st::Tensor scalar = ckpt.tensor("scalar");
  CHECK(scalar.ndim() == 0);
  CHECK(scalar.values<float>()[0] == 42.0f);
  const st::Tensor empty = ckpt.tensor("empty");
  CHECK(empty.numel() == 0);
  CHECK(empty.values<float>().empty());

  const std::string path = ckpt.files().front().path();
  CHECK(message_of<FormatError>([&] { (void)ckpt.tensor("f64"); }) ==
        "[safetensors] '" + path +
            "': tensor 'f64' has dtype F64, which moe does not read (F32, "
            "F16, BF16, I8)");
  CHECK(ckpt.find("f64")->describe() == "F64 [2]");
  CHECK(message_of<ShapeError>([&] { (void)ckpt.tensor("bf16").values<float>(); }) ==
        "[safetensors] tensor 'bf16' in '" + path + "' has dtype BF16, read as F32");
  CHECK(message_of<FormatError>([&] { (void)ckpt.tensor("nope"); }) ==
        "[safetensors] '" + path + "': no tensor 'nope'");
  const auto& meta = ckpt.files().front().metadata();
  REQUIRE(meta.size() == 2);
  CHECK(meta[1].first == "note");
  CHECK(meta[1].second == "moe dtypes fixture");
}

TEST_CASE("safetensors: a checkpoint opens from its directory, index or file", "[safetensors]") {
  const fs::path sharded = hf_fixture("mixtral_bf16_sharded");
  const st::Checkpoint a(sharded);
  const st::Checkpoint b(sharded / "model.safetensors.index.json");
  CHECK(a.files().size() == 3);
  CHECK(b.files().size() == 3);
  CHECK(a.names() == b.names());
  const st::Checkpoint c(hf_fixture("mixtral_f32") / "model.safetensors");
  CHECK(c.files().size() == 1);
  CHECK(c.names() == st::Checkpoint(hf_fixture("mixtral_f32")).names());
  CHECK(c.dir() == hf_fixture("mixtral_f32"));
  // The same tensors, one file or three: names agree across the bf16 and f32 fixtures.
  CHECK(a.names() == c.names());
  // A tensor missing from the index names the tensor and the index.
  CHECK(message_of<FormatError>([&] { (void)a.tensor("model.layers.7.input_layernorm.weight"); }) ==
        "[safetensors] tensor 'model.layers.7.input_layernorm.weight' is not in the index '" +
            (sharded / "model.safetensors.index.json").string() + "'");
}

TEST_CASE("safetensors: malformed files are FormatErrors naming the file and tensor",
          "[safetensors]") {
  SECTION("truncated before the header length") {
    CHECK_THAT(open_error("st_short", std::vector<std::byte>(5)),
               EndsWith("file of 5 bytes is too short for the 8-byte header length"));
    CHECK_THAT(open_error("st_empty", std::vector<std::byte>()),
               EndsWith("file of 0 bytes is too short for the 8-byte header length"));
  }
  SECTION("header length past the end of the file") {
    CHECK_THAT(open_error("st_hlen", st_file("{}", 0, 1000)),
               EndsWith("header length 1000 is past the end of the file (10 bytes)"));
    CHECK_THAT(open_error("st_hlen_huge", st_file("{}", 0, UINT64_MAX - 1)),
               Contains("exceeds the limit of 100000000 bytes"));
  }
  SECTION("header longer than the limit") {
    const std::string h = "{" + tensor("a", "F32", "[2]", 0, 8) + "}";
    CHECK_THAT(
        open_error("st_limit", st_file(h, 8), st::Limits{.max_header_bytes = 16}),
        EndsWith("header length " + std::to_string(h.size()) + " exceeds the limit of 16 bytes"));
  }
  SECTION("header not a JSON object") {
    CHECK_THAT(open_error("st_array", "[1, 2]", 0), EndsWith("the header does not start with '{'"));
    CHECK_THAT(open_error("st_nojson", "{\"a\": ", 0),
               Contains("the header is not valid JSON: [json] 'header' line 1"));
    CHECK_THAT(
        open_error(
            "st_dup",
            "{" + tensor("a", "F32", "[1]", 0, 4) + "," + tensor("a", "F32", "[1]", 4, 8) + "}", 8),
        Contains("duplicate key 'a'"));
  }
  SECTION("offsets past the end of the file (truncated data)") {
    CHECK_THAT(open_error("st_past", "{" + tensor("w", "F32", "[4]", 0, 16) + "}", 12),
               EndsWith("tensor 'w': data_offsets [0, 16] end past the data section (12 bytes; "
                        "the file is truncated or the header wrong)"));
    // A real shard cut short by 100 bytes.
    const fs::path dir = copy_of("mixtral_f32", "st_truncated");
    const fs::path file = dir / "model.safetensors";
    fs::resize_file(file, fs::file_size(file) - 100);
    const std::string msg = message_of<FormatError>([&] { st::Checkpoint c(dir); });
    CHECK_THAT(msg, StartsWith("[safetensors] '" + file.string() + "': tensor '"));
    CHECK_THAT(msg, Contains("end past the data section"));
  }
  SECTION("begin > end") {
    CHECK_THAT(open_error("st_order", "{" + tensor("w", "F32", "[0]", 8, 4) + "}", 8),
               EndsWith("tensor 'w': data_offsets [8, 4] has begin > end"));
  }
  SECTION("overlapping tensors") {
    const std::string h =
        "{" + tensor("a", "F32", "[2]", 0, 8) + "," + tensor("b", "F32", "[2]", 4, 12) + "}";
    CHECK_THAT(open_error("st_overlap", h, 12),
               EndsWith("tensor 'b' (data_offsets [4, 12]) overlaps tensor 'a'"));
    const std::string same =
        "{" + tensor("a", "F32", "[2]", 0, 8) + "," + tensor("b", "I8", "[8]", 0, 8) + "}";
    CHECK_THAT(open_error("st_alias", same, 8), Contains("overlaps tensor '"));
  }
  SECTION("gaps and bytes that belong to no tensor") {
    const std::string h =
        "{" + tensor("a", "F32", "[1]", 0, 4) + "," + tensor("b", "F32", "[1]", 8, 12) + "}";
    CHECK_THAT(open_error("st_gap", h, 12),
               EndsWith("a gap of 4 bytes lies between tensor 'a' and tensor 'b'"));
    CHECK_THAT(open_error("st_gap0", "{" + tensor("a", "F32", "[1]", 4, 8) + "}", 8),
               EndsWith("a gap of 4 bytes lies between the start of the data section and tensor "
                        "'a'"));
    CHECK_THAT(open_error("st_tail", "{" + tensor("a", "F32", "[1]", 0, 4) + "}", 8),
               EndsWith("4 bytes after tensor 'a' belong to no tensor"));
    CHECK_THAT(open_error("st_notensor", "{}", 3),
               EndsWith("3 bytes after the header belong to no tensor"));
  }
  SECTION("dtype, shape and length disagree") {
    CHECK_THAT(open_error("st_len", "{" + tensor("w", "F32", "[3]", 0, 8) + "}", 8),
               EndsWith("tensor 'w': F32 [3] needs 12 bytes, data_offsets [0, 8] hold 8"));
    CHECK_THAT(open_error("st_len16", "{" + tensor("w", "BF16", "[2, 2]", 0, 4) + "}", 4),
               EndsWith("tensor 'w': BF16 [2, 2] needs 8 bytes, data_offsets [0, 4] hold 4"));
    CHECK_THAT(open_error("st_dtype", "{" + tensor("w", "F7", "[1]", 0, 1) + "}", 1),
               EndsWith("tensor 'w': unknown dtype 'F7'"));
    CHECK_THAT(
        open_error("st_dtype_num", "{\"w\":{\"dtype\":4,\"shape\":[],\"data_offsets\":[0,4]}}", 4),
        EndsWith("tensor 'w': dtype must be a string, got a number (4)"));
    CHECK_THAT(open_error("st_negative", "{" + tensor("w", "F32", "[-1]", 0, 4) + "}", 4),
               EndsWith("tensor 'w': a shape entry must be a non-negative integer, got a number "
                        "(-1)"));
    CHECK_THAT(open_error("st_float", "{" + tensor("w", "F32", "[1.0]", 0, 4) + "}", 4),
               Contains("a shape entry must be a non-negative integer, got a number (1.0)"));
    CHECK_THAT(open_error("st_overflow",
                          "{" + tensor("w", "F32", "[4611686018427387904, 8]", 0, 4) + "}", 4),
               EndsWith("tensor 'w': shape overflows"));
    CHECK_THAT(open_error("st_overflow_bytes",
                          "{" + tensor("w", "F64", "[4611686018427387904]", 0, 4) + "}", 4),
               EndsWith("tensor 'w': shape overflows"));
    std::vector<std::byte> rank_file =
        st_file("{" + tensor("w", "F32", "[1,1,1,1]", 0, 4) + "}", 4);
    CHECK_THAT(open_error("st_rank", rank_file, st::Limits{.max_ndim = 3}),
               EndsWith("tensor 'w': rank 4 exceeds the limit of 3"));
  }
  SECTION("headers that would make the JSON parser work too hard") {
    std::string h = "{";
    for (int i = 0; i < 4; ++i)
      h += (i ? "," : "") + tensor("t" + std::to_string(i), "F32", "[]", 4 * i, 4 * i + 4);
    CHECK_THAT(open_error("st_members", st_file(h + "}", 16), st::Limits{.max_tensors = 2}),
               EndsWith("the header has an object of more than 3 members (Limits::max_tensors)"));
    const fs::path ok = scratch("st_members_ok") / "model.safetensors";
    write_file(ok, st_file(h + "}", 16));
    CHECK(st::File(ok).entries().size() == 4);  // the default limit
    std::string wide = "[0";
    for (int i = 1; i < 100; ++i) wide += ",0";
    CHECK_THAT(
        open_error("st_wide",
                   "{\"w\":{\"dtype\":\"F32\",\"shape\":" + wide + "],\"data_offsets\":[0,0]}}", 0),
        EndsWith("the header has an array of more than 64 elements"));
    CHECK_THAT(
        open_error("st_deep", "{\"w\":" + std::string(70, '[') + std::string(70, ']') + "}", 0),
        EndsWith("the header nests deeper than 64"));
    CHECK_THAT(open_error("st_strings", "{\"a,,,,\\\",,,\":{}}", 0),
               EndsWith("tensor 'a,,,,\",,,': missing key 'dtype'"));
  }
  SECTION("duplicate names in a large header (io/json.hpp's hashed check)") {
    // Objects beyond JsonParser::kLinearKeys members check keys by hash: a duplicate of the first
    // member, of one just before the switch, of one after it, and as the last member.
    const std::size_t n = 100, lin = moe::io::JsonParser::kLinearKeys;
    auto header = [&](std::size_t dup_at, std::size_t dup_of) {
      std::string h = "{";
      for (std::size_t i = 0; i < n; ++i) {
        const std::size_t id = i == dup_at ? dup_of : i;
        h += (i ? "," : "") + tensor("t" + std::to_string(id), "F32", "[]", 4 * i, 4 * i + 4);
      }
      return h + "}";
    };
    for (const auto& [at, of] : std::vector<std::pair<std::size_t, std::size_t>>{
             {lin - 1, 0}, {lin, 0}, {lin, lin - 1}, {lin + 1, lin}, {n - 1, 50}, {n - 1, 0}}) {
      INFO("member " << at << " repeats member " << of);
      CHECK_THAT(open_error("st_dup_many", header(at, of), 4 * n),
                 Contains("duplicate key 't" + std::to_string(of) + "'"));
    }
    const fs::path ok = scratch("st_many_ok") / "model.safetensors";
    write_file(ok, st_file(header(n, n), 4 * n));
    CHECK(st::File(ok).entries().size() == n);
  }
  SECTION("entries with missing, extra or ill-typed keys") {
    CHECK_THAT(open_error("st_missing", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4),
               EndsWith("tensor 'w': missing key 'data_offsets'"));
    CHECK_THAT(
        open_error("st_extra",
                   "{\"w\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4],\"x\":1}}", 4),
        EndsWith("tensor 'w': unexpected key 'x' (expected dtype, shape, data_offsets)"));
    CHECK_THAT(open_error("st_offsets3",
                          "{\"w\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4,8]}}", 4),
               EndsWith("tensor 'w': data_offsets must be [begin, end], got an array"));
    CHECK_THAT(open_error("st_notobj", "{\"w\": 3}", 0),
               EndsWith("tensor 'w': expected an object, got a number (3)"));
    CHECK_THAT(open_error("st_noname", "{" + tensor("", "F32", "[]", 0, 4) + "}", 4),
               EndsWith("a tensor has an empty name"));
    CHECK_THAT(open_error("st_meta", "{\"__metadata__\":{\"format\":1}}", 0),
               EndsWith("__metadata__ 'format' must be a string, got a number (1)"));
    CHECK_THAT(open_error("st_meta2", "{\"__metadata__\":[]}", 0),
               EndsWith("__metadata__ must be an object of strings"));
  }
}

TEST_CASE("safetensors: well-formed edge cases open", "[safetensors]") {
  const fs::path dir = scratch("st_edges");
  // No tensors at all, padding spaces after the JSON, zero-size tensors anywhere.
  write_file(dir / "none.safetensors", st_file("{}      ", 0));
  CHECK(st::File(dir / "none.safetensors").entries().empty());
  write_file(dir / "zeros.safetensors",
             st_file("{" + tensor("z1", "F32", "[0]", 0, 0) + "," + tensor("a", "I8", "[3]", 0, 3) +
                         "," + tensor("z2", "BF16", "[4, 0]", 3, 3) + "}  ",
                     3));
  const st::File z(dir / "zeros.safetensors");
  REQUIRE(z.entries().size() == 3);
  CHECK(z.tensor("z2").numel() == 0);
  CHECK(z.tensor("a").values<std::int8_t>()[2] == 2);
  // Misaligned data (a header that is not padded): views work, typed access says why not.
  write_file(dir / "odd.safetensors", st_file("{" + tensor("w", "F32", "[1]", 0, 4) + "}", 4));
  const st::File odd(dir / "odd.safetensors");
  const st::Tensor w = odd.tensor("w");
  CHECK_FALSE(w.aligned());
  CHECK(message_of<FormatError>([&] { (void)w.values<float>(); }) ==
        "[safetensors] '" + odd.path() +
            "': tensor 'w' starts at file offset 62, not aligned for "
            "4-byte elements");
  // OS failures are IoErrors.
  CHECK_THAT(message_of<IoError>([&] { st::File f(dir / "missing.safetensors"); }),
             StartsWith("[io] cannot open"));
  CHECK_THAT(message_of<IoError>([&] { st::Checkpoint c(dir); }),
             Contains("holds neither model.safetensors.index.json nor model.safetensors"));
}

TEST_CASE("safetensors: the index and the shards must agree", "[safetensors]") {
  const std::string shard1 = "model-00001-of-00003.safetensors";
  SECTION("a tensor listed for a shard that lacks it") {
    const fs::path dir = copy_of("mixtral_bf16_sharded", "st_idx_extra");
    auto map = weight_map_of(dir);
    map["model.layers.5.input_layernorm.weight"] = shard1;
    write_index(dir, map);
    CHECK(message_of<FormatError>([&] { st::Checkpoint c(dir); }) ==
          "[safetensors] index '" + (dir / "model.safetensors.index.json").string() +
              "': tensor 'model.layers.5.input_layernorm.weight' is listed for shard '" +
              (dir / shard1).string() + "', which does not contain it");
  }
  SECTION("a tensor in a shard that the index does not list") {
    const fs::path dir = copy_of("mixtral_bf16_sharded", "st_idx_missing");
    auto map = weight_map_of(dir);
    REQUIRE(map.erase("model.embed_tokens.weight") == 1);
    write_index(dir, map);
    CHECK(message_of<FormatError>([&] { st::Checkpoint c(dir); }) ==
          "[safetensors] index '" + (dir / "model.safetensors.index.json").string() +
              "': tensor 'model.embed_tokens.weight' in shard '" + (dir / shard1).string() +
              "' is not in the index");
  }
  SECTION("a tensor listed for the wrong shard") {
    const fs::path dir = copy_of("mixtral_bf16_sharded", "st_idx_wrong");
    auto map = weight_map_of(dir);
    const std::string shard3 = "model-00003-of-00003.safetensors";
    REQUIRE(map.at("lm_head.weight") == shard3);
    map["lm_head.weight"] = shard1;
    write_index(dir, map);
    CHECK_THAT(message_of<FormatError>([&] { st::Checkpoint c(dir); }),
               Contains("tensor 'lm_head.weight' is listed for shard '" + (dir / shard1).string() +
                        "', which does not contain it"));
  }
  SECTION("a missing shard file") {
    const fs::path dir = copy_of("mixtral_bf16_sharded", "st_idx_noshard");
    fs::remove(dir / "model-00002-of-00003.safetensors");
    CHECK_THAT(message_of<IoError>([&] { st::Checkpoint c(dir); }),
               StartsWith("[safetensors] shard 'model-00002-of-00003.safetensors' listed in the "
                          "index '" +
                          (dir / "model.safetensors.index.json").string() +
                          "' cannot be opened: [io] cannot open"));
  }
  SECTION("shard names outside the directory") {
    const fs::path dir = copy_of("mixtral_bf16_sharded", "st_idx_path");
    for (const std::string bad : {"../model-00001-of-00003.safetensors", "/etc/passwd", "..", ""}) {
      auto map = weight_map_of(dir);
      map["lm_head.weight"] = bad;
      write_index(dir, map);
      CHECK_THAT(message_of<FormatError>([&] { st::Checkpoint c(dir); }),
                 EndsWith("tensor 'lm_head.weight': shard '" + bad +
                          "' is not a plain file name in the checkpoint directory"));
    }
  }
  SECTION("a malformed index") {
    const fs::path dir = copy_of("mixtral_bf16_sharded", "st_idx_bad");
    const std::string index = (dir / "model.safetensors.index.json").string();
    write_text(dir / "model.safetensors.index.json", "{\"metadata\": {}}");
    CHECK(message_of<FormatError>([&] { st::Checkpoint c(dir); }) ==
          "[safetensors] index '" + index + "': missing the object 'weight_map'");
    write_text(dir / "model.safetensors.index.json", "{\"weight_map\": {}}");
    CHECK(message_of<FormatError>([&] { st::Checkpoint c(dir); }) ==
          "[safetensors] index '" + index + "': 'weight_map' lists no tensor");
    write_text(dir / "model.safetensors.index.json", "{\"weight_map\": {\"a\": 3}}");
    CHECK(message_of<FormatError>([&] { st::Checkpoint c(dir); }) ==
          "[safetensors] index '" + index +
              "': tensor 'a': the shard must be a file name, got a number (3)");
    write_text(dir / "model.safetensors.index.json", "{\"weight_map\": {\"a\": \"x\",}}");
    CHECK_THAT(message_of<FormatError>([&] { st::Checkpoint c(dir); }),
               StartsWith("[json] '" + index + "'"));
  }
  SECTION("a damaged shard names the shard") {
    const fs::path dir = copy_of("mixtral_bf16_sharded", "st_idx_damaged");
    const fs::path shard = dir / "model-00002-of-00003.safetensors";
    fs::resize_file(shard, 7);
    CHECK(message_of<FormatError>([&] { st::Checkpoint c(dir); }) ==
          "[safetensors] '" + shard.string() +
              "': file of 7 bytes is too short for the 8-byte header length");
  }
}
