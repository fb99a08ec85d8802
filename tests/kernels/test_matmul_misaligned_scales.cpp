// Int8Weight scales at an odd byte address: Grok-1's files put every bf16 scales array at an odd
// offset, and grok1::Checkpoint binds them in place (no aligned copy). Every reader of the scales
// must load them at any address (load_bf16, unaligned SIMD loads); a dereference of the
// misaligned bf16* is undefined behaviour (the sanitizer build reports it as "load of misaligned
// address"). Each product below runs twice on the same values, with the scales in an aligned
// array and copied to an odd address, and the results must be BIT-identical:
//
//   matmul / matvec (GEMV T = 1, the direct path T = 3, the packed path T = 37), Int8ActWeight,
//   matmul_backward_input (the transposed reader), Int8Weight::at, and an int8 EmbeddingTable's
//   rows and tied head. Sizes: out not a multiple of the SIMD width (masked column tails), several
//   scale blocks. Also compiled into test_kernels_portable (the SSE2 path with scalar tails).
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <vector>

#include <moe/ops/embedding.hpp>
#include <moe/ops/matmul.hpp>
#include <moe/ops/matmul_grad.hpp>

#include "common/random_int8.hpp"
#include "common/test_util.hpp"

namespace {

using moe::bf16;
using moe::MatrixView;

/// `n` bf16 values stored at byte offset `odd` (1 or 3) of a 64-byte-aligned buffer.
class OddScales {
 public:
  OddScales(const std::vector<bf16>& s, std::size_t odd) : bytes_(s.size() * 2 + 128) {
    const auto base = reinterpret_cast<std::uintptr_t>(bytes_.data());
    const std::size_t pad = (64 - base % 64) % 64 + odd;
    std::memcpy(bytes_.data() + pad, s.data(), s.size() * sizeof(bf16));
    ptr_ = reinterpret_cast<const bf16*>(bytes_.data() + pad);
  }
  [[nodiscard]] const bf16* get() const noexcept { return ptr_; }

 private:
  std::vector<unsigned char> bytes_;
  const bf16* ptr_ = nullptr;
};

void check_products(moe::ThreadPool& pool, std::size_t in, std::size_t out, std::size_t blocks,
                    std::size_t odd, std::uint64_t seed) {
  INFO("in=" << in << " out=" << out << " blocks=" << blocks << " odd=" << odd);
  const moe_test::Int8Data w = moe_test::random_int8(in, out, blocks, seed);
  const OddScales os(w.s, odd);
  REQUIRE(reinterpret_cast<std::uintptr_t>(os.get()) % 2 == 1);
  const moe::Int8Weight aligned{w.q.data(), w.s.data(), in, out, blocks};
  const moe::Int8Weight misaligned{w.q.data(), os.get(), in, out, blocks};
  for (std::size_t i = 0; i < in; i += 7) {
    for (std::size_t o = 0; o < out; ++o) REQUIRE(misaligned.at(i, o) == aligned.at(i, o));
  }
  for (std::size_t T : {1, 3, 37}) {
    INFO("T=" << T);
    const std::vector<float> x = moe_test::randn(T * in, seed + T);
    const MatrixView<const float> xv(x.data(), T, in);
    std::vector<float> ya(T * out, -7.0f), ym(T * out, -9.0f);
    moe::matmul(pool, xv, aligned, MatrixView<float>(ya.data(), T, out));
    moe::matmul(pool, xv, misaligned, MatrixView<float>(ym.data(), T, out));
    CHECK(ya == ym);
    std::vector<float> aa(T * out, -7.0f), am(T * out, -9.0f);
    moe::matmul(pool, xv, moe::Int8ActWeight(aligned), MatrixView<float>(aa.data(), T, out));
    moe::matmul(pool, xv, moe::Int8ActWeight(misaligned), MatrixView<float>(am.data(), T, out));
    CHECK(aa == am);
    // dx = dy . W^T: the transposed reader of the weight (and its scales)
    const std::vector<float> dy = moe_test::randn(T * out, seed + 50 + T);
    const MatrixView<const float> dyv(dy.data(), T, out);
    std::vector<float> da(T * in, 0.5f), dm(T * in, 0.5f);
    moe::matmul_backward_input(pool, dyv, aligned, MatrixView<float>(da.data(), T, in));
    moe::matmul_backward_input(pool, dyv, misaligned, MatrixView<float>(dm.data(), T, in));
    CHECK(da == dm);
  }
  std::vector<float> va(out, 0.0f), vm(out, 1.0f);
  const std::vector<float> x1 = moe_test::randn(in, seed + 99);
  moe::matvec(pool, x1.data(), aligned, va.data());
  moe::matvec(pool, x1.data(), misaligned, vm.data());
  CHECK(va == vm);
}

}  // namespace

TEST_CASE("matmul: int8 weights with their scales at an odd address give the same bits",
          "[matmul][int8]") {
  moe::ThreadPool pool(2);
  std::uint64_t seed = 300;
  for (std::size_t odd : {1, 3}) {
    check_products(pool, 64, 48, 1, odd, ++seed);
    check_products(pool, 96, 37, 8, odd, ++seed);    // column tail, 8 scale blocks
    check_products(pool, 130, 123, 2, odd, ++seed);  // odd widths
    check_products(pool, 256, 300, 4, odd, ++seed);  // several strips
  }
}

TEST_CASE("embedding: an int8 table with its scales at an odd address gives the same bits",
          "[embedding][int8]") {
  moe::ThreadPool pool(2);
  const std::size_t V = 40, D = 37, blocks = 4;
  const moe_test::Int8Data w = moe_test::random_int8(V, D, blocks, 77);
  const OddScales os(w.s, 1);
  const moe::EmbeddingTable aligned = moe::EmbeddingTable::int8(w.q.data(), w.s.data(), V, D, 4);
  const moe::EmbeddingTable misaligned = moe::EmbeddingTable::int8(w.q.data(), os.get(), V, D, 4);
  const std::vector<std::int32_t> tokens{0, 39, 7, 7, 21};
  std::vector<float> ha(tokens.size() * D, -1.0f), hm(tokens.size() * D, -2.0f);
  moe::embed_rows(pool, aligned, tokens, 1.5f, MatrixView<float>(ha.data(), tokens.size(), D));
  moe::embed_rows(pool, misaligned, tokens, 1.5f, MatrixView<float>(hm.data(), tokens.size(), D));
  CHECK(ha == hm);
  const std::vector<float> h = moe_test::randn(3 * D, 78);
  std::vector<float> la(3 * V, -1.0f), lm(3 * V, -2.0f);
  moe::tied_logits(pool, MatrixView<const float>(h.data(), 3, D), aligned,
                   MatrixView<float>(la.data(), 3, V));
  moe::tied_logits(pool, MatrixView<const float>(h.data(), 3, D), misaligned,
                   MatrixView<float>(lm.data(), 3, V));
  CHECK(la == lm);
}
