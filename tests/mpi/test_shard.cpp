// moe/mpi/shard.hpp without MPI: the shard arithmetic, the slab views, and N shards of a random
// Grok-1 model run in N threads (a barrier-based all-reduce stands in for MPI_Allreduce) whose
// assembled logits must match the unsharded model (grok1::make_model) to rounding. The same
// shards under mpirun are tested by test_grok1_mpi.py.
#include <catch2/catch.hpp>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <memory>
#include <new>
#include <thread>
#include <utility>
#include <vector>

#include <moe/mpi/shard.hpp>

#include "support/grok1_random_weights.hpp"

namespace {

using moe::MatrixView;
using moe::mpi::Range;

moe::grok1::Config small_config() {
  moe::grok1::Config c = moe::grok1::Config::tiny();
  c.vocab_size = 203;  // splits unevenly over 2 and 4 ranks
  c.d_model = 64;
  c.n_layers = 3;
  c.n_q_heads = 8;
  c.n_kv_heads = 2;  // 4 ranks: 2 query heads each, every KV head on 2 ranks
  c.head_dim = 8;
  c.d_ff = 128;
  c.max_seq_len = 32;
  c.attn_logit_multiplier = 1.0 / std::sqrt(8.0);
  c.embedding_multiplier = 8.0;
  return c;
}

/// Sums N ranks' partial outputs in rank order (each rank passes its own u).
class ThreadAllReduce {
 public:
  explicit ThreadAllReduce(std::size_t n) : bar_(static_cast<std::ptrdiff_t>(n)), slots_(n) {}
  void operator()(std::size_t rank, MatrixView<float> u) {
    slots_[rank] = u;
    bar_.arrive_and_wait();
    std::vector<float> sum(u.rows * u.cols, 0.0f);
    for (const MatrixView<float>& s : slots_) {
      for (std::size_t t = 0; t < u.rows; ++t) {
        for (std::size_t i = 0; i < u.cols; ++i) sum[t * u.cols + i] += s.row(t)[i];
      }
    }
    bar_.arrive_and_wait();  // everyone has read every slot
    for (std::size_t t = 0; t < u.rows; ++t) std::copy_n(&sum[t * u.cols], u.cols, u.row(t));
  }

 private:
  std::barrier<> bar_;
  std::vector<MatrixView<float>> slots_;
};

/// max |a - b| over a row, relative to the row's largest |b|.
double worst_row_error(const std::vector<float>& a, const std::vector<float>& b, std::size_t rows,
                       std::size_t cols) {
  double worst = 0;
  for (std::size_t t = 0; t < rows; ++t) {
    double big = 0, diff = 0;
    for (std::size_t v = 0; v < cols; ++v) {
      big = std::max(big, std::abs(double(b[t * cols + v])));
      diff = std::max(diff, std::abs(double(a[t * cols + v]) - double(b[t * cols + v])));
    }
    worst = std::max(worst, diff / big);
  }
  return worst;
}

}  // namespace

TEST_CASE("split_range: near-equal parts covering the range in order", "[mpi][shard]") {
  for (std::size_t total : {1u, 7u, 203u, 131072u}) {
    for (std::size_t n : {1u, 2u, 3u, 4u, 7u}) {
      if (n > total) continue;
      std::size_t next = 0;
      for (std::size_t r = 0; r < n; ++r) {
        const Range p = moe::mpi::split_range(total, n, r);
        CHECK(p.begin == next);
        CHECK((p.size() == total / n || p.size() == total / n + 1));
        next = p.end;
      }
      CHECK(next == total);
    }
  }
}

TEST_CASE("plan_shard: Grok-1's dimensions split over 1, 2, 4, 8, 16 ranks", "[mpi][shard]") {
  const moe::grok1::Config c = moe::grok1::Config::full();
  for (std::size_t n : {1u, 2u, 4u, 8u, 16u}) {
    std::size_t q = 0;
    for (std::size_t r = 0; r < n; ++r) {
      const moe::mpi::ShardPlan p = moe::mpi::plan_shard(c, n, r);
      CHECK(p.q_heads.begin == q);
      q = p.q_heads.end;
      CHECK(p.q_heads.size() == 48 / n);
      CHECK(p.kv_heads.size() == std::max<std::size_t>(1, 8 / n));
      // Every query head's KV head is in the rank's KV range.
      for (std::size_t h = p.q_heads.begin; h < p.q_heads.end; ++h) {
        CHECK(h / 6 >= p.kv_heads.begin);
        CHECK(h / 6 < p.kv_heads.end);
      }
      CHECK(p.ff.size() == 32768 / n);
    }
    CHECK(q == 48);
  }
  // 16 ranks: 3 query heads each, each KV head on 2 ranks.
  CHECK(moe::mpi::plan_shard(c, 16, 5).kv_heads == Range{2, 3});
  // Copies of the column slabs (Wq, Wk, Wv, w1, v): none at N = 1 (whole matrices, views);
  // at N = 4, 1/4 of 64 layers x (37.7 + 2 x 6.3 + 2 x 8 x 201.3) MB.
  CHECK(moe::mpi::column_copy_bytes(c, moe::mpi::plan_shard(c, 1, 0)) == 0);
  CHECK(moe::mpi::column_copy_bytes(c, moe::mpi::plan_shard(c, 4, 1)) ==
        std::size_t{64} * (1536 + 2 * 256 + 2 * 8 * 8192) * (6144 + 2));
}

TEST_CASE("plan_shard: a dimension N does not split is a ConfigError naming it", "[mpi][shard]") {
  const moe::grok1::Config c = moe::grok1::Config::full();
  CHECK_THROWS_WITH(moe::mpi::plan_shard(c, 5, 0), Catch::Contains("n_q_heads = 48"));
  // 48 / 3 = 16 query heads per rank straddle KV groups of 6.
  CHECK_THROWS_WITH(moe::mpi::plan_shard(c, 3, 0), Catch::Contains("straddle"));
  moe::grok1::Config odd = small_config();
  odd.d_ff = 130;
  CHECK_THROWS_WITH(moe::mpi::plan_shard(odd, 4, 0), Catch::Contains("d_ff = 130"));
  CHECK_THROWS_AS(moe::mpi::plan_shard(c, 4, 4), moe::ConfigError);
}

TEST_CASE("row_slab: scale rows follow the rows; cutting a block is a ShapeError", "[mpi][shard]") {
  std::vector<std::int8_t> q(64 * 3);
  std::vector<moe::bf16> s(8 * 3);
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = static_cast<std::int8_t>(i % 251 - 125);
  for (std::size_t i = 0; i < s.size(); ++i) s[i] = moe::bf16(0.5f + float(i));
  const moe::Int8Weight w{q.data(), s.data(), 64, 3, 8};  // blocks of 8 rows
  for (const Range rows : {Range{16, 32}, Range{40, 44}, Range{0, 64}, Range{8, 16}}) {
    const moe::Int8Weight v = moe::mpi::row_slab(w, rows, "w");
    for (std::size_t i = 0; i < rows.size(); ++i) {
      for (std::size_t o = 0; o < 3; ++o) REQUIRE(v.at(i, o) == w.at(rows.begin + i, o));
    }
  }
  CHECK_THROWS_AS(moe::mpi::row_slab(w, Range{4, 12}, "w"), moe::ShapeError);
  const moe::Int8Weight c = moe::mpi::column_slab(w, Range{1, 3});
  for (std::size_t i = 0; i < 64; ++i) {
    for (std::size_t o = 0; o < 2; ++o) REQUIRE(c.at(i, o) == w.at(i, o + 1));
  }
  // A copied column slab: the same elements, rows contiguous.
  std::vector<std::int8_t> cd(64 * 2);
  std::vector<moe::bf16> cs(8 * 2);
  const moe::Int8Weight k = moe::mpi::copy_column_slab(w, Range{1, 3}, cd.data(), cs.data());
  CHECK(k.row_stride() == 2);
  CHECK(k.blocks == 8);
  for (std::size_t i = 0; i < 64; ++i) {
    for (std::size_t o = 0; o < 2; ++o) REQUIRE(k.at(i, o) == w.at(i, o + 1));
  }
}

TEST_CASE("shards in threads: logits match the whole model (prefill and decode)", "[mpi][shard]") {
  const moe::grok1::Config c = small_config();
  const moe::grok1::RandomWeights rw(c, 11);
  const auto full = moe::grok1::make_model(c, rw.weights());
  const std::vector<std::int32_t> prompt = {3, 150, 7, 202, 64};
  const std::int32_t next = 99;
  const std::size_t T = prompt.size(), V = c.vocab_size;
  std::vector<float> want(T * V), want_step(V);
  {
    moe::ThreadPool pool(1);
    auto state = full.make_state(16, T);
    full.forward(pool, prompt, state, MatrixView<float>(want.data(), T, V));
    full.step(pool, next, state, want_step);
  }
  using moe::mpi::SlabStorage;
  for (const auto& [n, storage] : {std::pair{1u, SlabStorage::kCopy},
                                   {2u, SlabStorage::kCopy},
                                   {4u, SlabStorage::kCopy},
                                   {2u, SlabStorage::kInPlace},
                                   {4u, SlabStorage::kInPlace}}) {
    INFO(n << " ranks, column slabs " << (storage == SlabStorage::kCopy ? "copied" : "in place"));
    std::vector<float> got(T * V, 0.0f), got_step(V, 0.0f);
    ThreadAllReduce reduce(n);
    std::vector<std::thread> ranks;
    for (std::size_t r = 0; r < n; ++r) {
      ranks.emplace_back([&, r] {
        const moe::mpi::ShardPlan plan = moe::mpi::plan_shard(c, n, r);
        const moe::mpi::ShardWeights w = moe::mpi::shard_weights(
            c, rw.weights(), moe::EmbeddingTable(rw.weights().embedding), rw.weights().final_norm,
            plan, {.column_slabs = storage, .after_copy = {}});
        const auto shard = moe::mpi::make_shard_model(w);
        moe::ThreadPool pool(1);
        auto state = shard.make_state(16, T);
        moe::DecoderOptions o;
        o.reduce = [&reduce, r](MatrixView<float> u) { reduce(r, u); };
        const std::size_t vs = plan.vocab.size();
        std::vector<float> local(T * vs);
        shard.forward(pool, prompt, state, MatrixView<float>(local.data(), T, vs), o);
        for (std::size_t t = 0; t < T; ++t) {
          std::copy_n(&local[t * vs], vs, &got[t * V + plan.vocab.begin]);
        }
        std::vector<float> step(vs);
        shard.step(pool, next, state, step, o);
        std::copy(step.begin(), step.end(), got_step.begin() + plan.vocab.begin);
      });
    }
    for (auto& t : ranks) t.join();
    CHECK(worst_row_error(got, want, T, V) <= 1e-5);
    CHECK(worst_row_error(got_step, want_step, 1, V) <= 1e-5);
    if (n == 1) CHECK(got == want);  // one shard is the whole model, bit for bit
  }
}

TEST_CASE("page_bytes_of_rows: pages under strided rows, shared pages once", "[mpi][shard]") {
  using moe::mpi::page_bytes_of_rows;
  const auto* base = reinterpret_cast<const void*>(std::uintptr_t{1} << 20);  // page-aligned
  const auto at = [&](std::size_t off) {
    return reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(base) + off);
  };
  CHECK(page_bytes_of_rows(base, 1, 4096, 0, 4096) == 4096);
  CHECK(page_bytes_of_rows(at(1), 1, 4096, 0, 4096) == 8192);    // straddles two pages
  CHECK(page_bytes_of_rows(base, 4, 1024, 1024, 4096) == 4096);  // four rows, one page
  CHECK(page_bytes_of_rows(at(100), 3, 2048, 32768, 4096) == 3 * 4096);
  CHECK(page_bytes_of_rows(at(3000), 3, 2048, 32768, 4096) == 6 * 4096);
  CHECK(page_bytes_of_rows(base, 0, 10, 10, 4096) == 0);
}

namespace {

/// The int8 data of an expert stack copied to byte `offset` of page-aligned memory, as in a
/// checkpoint file whose payload starts at that offset (xAI's w1 and v: 201).
class StackAtOffset {
 public:
  StackAtOffset(const moe::WeightStack<moe::Int8Weight>& s, std::size_t offset)
      : bytes_(offset + s.count * s.first.in * s.first.out),
        mem_(static_cast<std::int8_t*>(::operator new (bytes_, std::align_val_t{4096}))) {
    std::copy_n(s.first.data, bytes_ - offset, mem_.get() + offset);
    moe::Int8Weight w = s.first;
    w.data = mem_.get() + offset;
    stack = {w, s.count};
  }
  moe::WeightStack<moe::Int8Weight> stack;

 private:
  struct Free {
    void operator()(std::int8_t* p) const { ::operator delete (p, std::align_val_t{4096}); }
  };
  std::size_t bytes_;
  std::unique_ptr<std::int8_t, Free> mem_;
};

}  // namespace

TEST_CASE("column slabs are copied: a rank's pages are its bytes, whatever the file offset",
          "[mpi][shard]") {
  // w1 and v rows of 16 KiB at offset 201 (Grok-1: 32 KiB rows at 201): in place, a rank's 4 KiB
  // (N = 4) or 8 KiB (N = 2) of every row lie on 2 or 3 pages. Copied, on their own pages.
  moe::grok1::Config c = small_config();
  c.n_layers = 1;
  c.d_ff = 16384;
  const moe::grok1::RandomWeights rw(c, 5);
  moe::grok1::Weights full = rw.weights();
  const StackAtOffset gate(full.layers[0].expert_gate, 201), up(full.layers[0].expert_up, 201);
  full.layers[0].expert_gate = gate.stack;
  full.layers[0].expert_up = up.stack;
  const moe::EmbeddingTable table(full.embedding);
  using moe::mpi::SlabStorage;
  const auto ratio = [](const moe::mpi::ShardWeights& w) {
    return double(w.page_bytes()) / double(w.shard_bytes());
  };
  for (std::size_t n : {2u, 4u}) {
    for (std::size_t r = 0; r < n; ++r) {
      INFO("rank " << r << " of " << n);
      const moe::mpi::ShardPlan plan = moe::mpi::plan_shard(c, n, r);
      std::size_t copies = 0;
      moe::mpi::ShardOptions o;
      o.after_copy = [&](const moe::mpi::CopiedSlab& m) {
        ++copies;
        CHECK(m.layer == 0);
        CHECK(m.full.out ==
              (m.slot == moe::grok1::Slot::kQuery                                       ? c.q_dim()
               : m.slot == moe::grok1::Slot::kKey || m.slot == moe::grok1::Slot::kValue ? c.kv_dim()
                                                                                        : c.d_ff));
      };
      const moe::mpi::ShardWeights copied =
          moe::mpi::shard_weights(c, full, table, full.final_norm, plan, o);
      const moe::mpi::ShardWeights in_place =
          moe::mpi::shard_weights(c, full, table, full.final_norm, plan,
                                  {.column_slabs = SlabStorage::kInPlace, .after_copy = {}});
      CHECK(copies == 3 + 2 * c.n_experts);  // Wq, Wk, Wv, every expert's w1 and v
      CHECK(copied.shard_bytes() == in_place.shard_bytes());
      CHECK(ratio(copied) <= 1.05);
      CHECK(ratio(in_place) >= 1.25);  // the page factor the copies remove (1.33 / 1.67)
      CHECK(copied.slab_data.size() >= copied.shard_bytes() / 2);
      // column_copy_bytes predicts the copies to within their line padding.
      const std::size_t got =
          copied.slab_data.size() + copied.slab_scales.size() * sizeof(moe::bf16);
      const std::size_t want = moe::mpi::column_copy_bytes(c, plan);
      CHECK(got >= want);
      CHECK(got <= want + copies * 2 * 64);
    }
  }
}
