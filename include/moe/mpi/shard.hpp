// moe/mpi/shard.hpp: one rank's shard of a tensor-parallel Grok-1 model, as views into the
// original checkpoint files (no copy, no conversion step). Needs no MPI: the arithmetic and the
// views are plain C++ (moe/mpi/tensor_parallel.hpp adds the communication).
//
// Rank r of N holds (Megatron-LM-style tensor parallelism, Shoeybi et al. 2019, arXiv 1909.08053):
//
//   attention   query heads [r Hq/N, (r+1) Hq/N) and the KV heads they read (KV heads are
//               duplicated on several ranks when N > Hkv): the columns of Wq, Wk, Wv of those
//               heads, and the same rows of Wo -> a partial [T, D] output (sum over ranks)
//   experts     every expert's hidden units [r F/N, (r+1) F/N): columns of w1 (gate) and v (up),
//               rows of w2 (down) -> a partial [T, D] output; every rank computes its slice of
//               each selected expert, so no rank idles whatever the routing
//   replicated  embedding lookup, the norms, the router and top-k (identical inputs give
//               identical choices on every rank)
//   head        the vocabulary slice [v0, v1) of the tied embedding (near-equal slices, any N)
//
// An [in, out] int8 column slab is a strided Int8Weight (row stride = the full width; its scale
// rows are sliced the same way); a row slab is a pointer offset whose scale rows are the blocks it
// covers. Dimensions that do not split throw ConfigError naming the dimension: heads and d_ff
// must divide by N (Grok-1: N = 1, 2, 4, 8, 16); the vocabulary splits unevenly.
//
//   ShardPlan plan = plan_shard(config, n_ranks, rank);
//   ShardWeights w = bind_shard(checkpoint, plan);     // views into the mapped files
//   grok1::Model model = make_shard_model(w);          // a Decoder with head_vocab = |slice|
//   model.forward(pool, tokens, state, local_logits, {.reduce = all_reduce_sum});
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <moe/core/error.hpp>
#include <moe/layers/decoder.hpp>
#include <moe/models/grok1.hpp>
#include <moe/models/grok1_checkpoint.hpp>
#include <moe/ops/embedding.hpp>
#include <moe/ops/weights.hpp>

namespace moe::mpi {

/// Half-open index range [begin, end).
struct Range {
  std::size_t begin = 0;
  std::size_t end = 0;
  [[nodiscard]] std::size_t size() const noexcept { return end - begin; }
  friend bool operator==(const Range&, const Range&) = default;
};

/// Part `rank` of `total` split into `n_parts` near-equal parts (the first total % n_parts parts
/// are one longer).
[[nodiscard]] inline Range split_range(std::size_t total, std::size_t n_parts, std::size_t rank) {
  const std::size_t q = total / n_parts, extra = total % n_parts;
  const std::size_t begin = rank * q + (rank < extra ? rank : extra);
  return {begin, begin + q + (rank < extra ? 1 : 0)};
}

/// What rank `rank` of `n_ranks` holds (see the file comment).
struct ShardPlan {
  std::size_t rank = 0;
  std::size_t n_ranks = 1;
  Range q_heads;   ///< query heads
  Range kv_heads;  ///< KV heads read by those query heads
  Range ff;        ///< hidden units of every expert
  Range vocab;     ///< logits computed by this rank
};

/// The shard of rank `rank`; ConfigError naming the dimension when N does not split it.
[[nodiscard]] inline ShardPlan plan_shard(const grok1::Config& c, std::size_t n_ranks,
                                          std::size_t rank) {
  check_config(n_ranks > 0 && rank < n_ranks, "mpi",
               "rank " + std::to_string(rank) + " of " + std::to_string(n_ranks));
  const std::string n = std::to_string(n_ranks);
  check_config(c.n_q_heads % n_ranks == 0, "mpi",
               "n_q_heads = " + std::to_string(c.n_q_heads) + " does not divide by " + n +
                   " ranks (attention is split by heads)");
  const std::size_t nq = c.n_q_heads / n_ranks, group = c.kv_group();
  check_config(nq % group == 0 || group % nq == 0, "mpi",
               std::to_string(nq) + " query heads per rank straddle KV-head groups of " +
                   std::to_string(group) + " (n_q_heads " + std::to_string(c.n_q_heads) +
                   ", n_kv_heads " + std::to_string(c.n_kv_heads) + ", " + n + " ranks)");
  check_config(c.d_ff % n_ranks == 0, "mpi",
               "d_ff = " + std::to_string(c.d_ff) + " does not divide by " + n +
                   " ranks (every expert is split along its hidden width)");
  check_config(c.vocab_size >= n_ranks, "mpi",
               "vocab_size = " + std::to_string(c.vocab_size) + " is smaller than " + n + " ranks");
  ShardPlan p;
  p.rank = rank;
  p.n_ranks = n_ranks;
  p.q_heads = {rank * nq, (rank + 1) * nq};
  p.kv_heads = {p.q_heads.begin / group, (p.q_heads.end - 1) / group + 1};
  p.ff = {rank * (c.d_ff / n_ranks), (rank + 1) * (c.d_ff / n_ranks)};
  p.vocab = split_range(c.vocab_size, n_ranks, rank);
  return p;
}

/// Columns `cols` of `w` (a view: same rows, row stride kept, scales sliced alike).
[[nodiscard]] inline Int8Weight column_slab(const Int8Weight& w, Range cols) {
  MOE_ASSERT(cols.end <= w.out && cols.size() > 0);
  Int8Weight s = w;
  s.data += cols.begin;
  s.scales += cols.begin;
  s.out = cols.size();
  s.ld = w.row_stride();
  return s;
}

/// Rows `rows` of `w` (a view). Its scale rows are the blocks the rows cover: the range must
/// start and end on block boundaries, or lie inside one block; ShapeError naming `name` if not.
[[nodiscard]] inline Int8Weight row_slab(const Int8Weight& w, Range rows, std::string_view name) {
  MOE_ASSERT(rows.end <= w.in && rows.size() > 0);
  const std::size_t br = w.block_rows(), ld = w.row_stride();
  Int8Weight s = w;
  s.data += rows.begin * ld;
  s.in = rows.size();
  s.scales += (rows.begin / br) * ld;
  if (rows.begin % br == 0 && rows.size() % br == 0) {
    s.blocks = rows.size() / br;
  } else if (rows.begin / br == (rows.end - 1) / br) {
    s.blocks = 1;
  } else {
    throw ShapeError("[mpi] rows [" + std::to_string(rows.begin) + ", " + std::to_string(rows.end) +
                     ") of '" + std::string(name) + "' " + shape_str({w.in, w.out}) +
                     " cut its scale blocks of " + std::to_string(br) + " rows");
  }
  return s;
}

/// Bytes of the `page`-byte pages that `rows` rows of `row_bytes` bytes, `stride` bytes apart
/// from `base`, lie on (rows in increasing address order; a page shared by two rows counts once).
[[nodiscard]] inline std::size_t page_bytes_of_rows(const void* base, std::size_t rows,
                                                    std::size_t row_bytes, std::size_t stride,
                                                    std::size_t page) {
  const auto a0 = reinterpret_cast<std::uintptr_t>(base);
  std::uintptr_t covered = 0;  // pages [.., covered) are counted
  std::size_t pages = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    const std::uintptr_t a = a0 + r * stride;
    const std::uintptr_t first = std::max<std::uintptr_t>(a / page, covered);
    const std::uintptr_t end = (a + row_bytes + page - 1) / page;
    if (end > first) pages += end - first;
    covered = std::max(covered, end);
  }
  return pages * page;
}

/// page_bytes_of_rows for an int8 view's weight rows and scale rows.
[[nodiscard]] inline std::size_t page_bytes(const Int8Weight& w, std::size_t page) {
  const std::size_t ld = w.row_stride();
  return page_bytes_of_rows(w.data, w.in, w.out, ld, page) +
         page_bytes_of_rows(w.scales, w.blocks, w.out * sizeof(bf16), ld * sizeof(bf16), page);
}

/// One rank's weights: views into the checkpoint (see the file comment). Move-only: the layers'
/// expert stacks point into `expert_views` (a moved vector keeps its buffer, a copy would not).
struct ShardWeights {
  ShardWeights() = default;
  ShardWeights(const ShardWeights&) = delete;
  ShardWeights& operator=(const ShardWeights&) = delete;
  ShardWeights(ShardWeights&&) noexcept = default;
  ShardWeights& operator=(ShardWeights&&) noexcept = default;
  ~ShardWeights() = default;

  grok1::Config config;  ///< the full model's
  ShardPlan plan;
  EmbeddingTable embedding;  ///< the full table (lookup of any token)
  F32Weight head;            ///< rows plan.vocab of the table as a [D, |vocab|] [out, in] weight
  std::span<const float> final_norm;
  std::vector<grok1::LayerWeights> layers;  ///< sliced projections; expert stacks are separate
  std::vector<Int8Weight> expert_views;     ///< [layer][gate, up, down][expert]

  /// Bytes of weights this rank reads per token at most (its attention, all its expert slices,
  /// its head rows; not the embedding rows).
  [[nodiscard]] std::size_t shard_bytes() const {
    std::size_t n = head.bytes();
    for (const auto& l : layers) {
      n += l.wq.bytes() + l.wk.bytes() + l.wv.bytes() + l.wo.bytes();
    }
    for (const auto& v : expert_views) n += v.bytes();
    return n;
  }
  /// Bytes of the pages those weights lie on: what reading all of them brings into this rank's
  /// RAM. More than shard_bytes() where a slab's rows start or end inside a page that the
  /// neighbouring rank's slab shares (the files' payloads are not page-aligned, and a column
  /// slab narrower than a page shares every page it touches).
  [[nodiscard]] std::size_t page_bytes(std::size_t page = 4096) const {
    std::size_t n = page_bytes_of_rows(head.data, 1, head.bytes(), 0, page);
    for (const auto& l : layers) {
      for (const Int8Weight* w : {&l.wq, &l.wk, &l.wv, &l.wo}) n += mpi::page_bytes(*w, page);
    }
    for (const auto& v : expert_views) n += mpi::page_bytes(v, page);
    return n;
  }
};

/// The shard `plan` of full-model views: `full.layers` (int8), `table` (f32, the embedding and
/// tied head) and `final_norm`. full.embedding is not read.
[[nodiscard]] inline ShardWeights shard_weights(const grok1::Config& c, const grok1::Weights& full,
                                                const EmbeddingTable& table,
                                                std::span<const float> final_norm,
                                                const ShardPlan& plan) {
  check_config(table.dtype == EmbeddingDtype::kF32, "mpi",
               "the tied head of a tensor-parallel model needs an f32 embedding table");
  check_shape("mpi", "embedding", {table.rows, table.cols}, {c.vocab_size, c.d_model});
  check_config(full.layers.size() == c.n_layers, "mpi",
               std::to_string(full.layers.size()) + " layers bound, config has " +
                   std::to_string(c.n_layers));
  ShardWeights s;
  s.config = c;
  s.plan = plan;
  s.embedding = table;
  s.head = F32Weight{reinterpret_cast<const float*>(table.data + plan.vocab.begin * c.d_model * 4),
                     c.d_model, plan.vocab.size(), Layout::kOutIn};
  s.final_norm = final_norm;
  const std::size_t hd = c.head_dim, E = c.n_experts;
  const Range q{plan.q_heads.begin * hd, plan.q_heads.end * hd};
  const Range kv{plan.kv_heads.begin * hd, plan.kv_heads.end * hd};
  s.expert_views.reserve(full.layers.size() * 3 * E);
  for (std::size_t l = 0; l < full.layers.size(); ++l) {
    const grok1::LayerWeights& f = full.layers[l];
    const std::string where = "layer " + std::to_string(l) + " ";
    check_weight_stack(f.expert_gate, "mpi", where + "expert gate", E, c.d_model, c.d_ff);
    check_weight_stack(f.expert_up, "mpi", where + "expert up", E, c.d_model, c.d_ff);
    check_weight_stack(f.expert_down, "mpi", where + "expert down", E, c.d_ff, c.d_model);
    check_weight_shape(f.wq, "mpi", where + "wq", c.d_model, c.q_dim());
    check_weight_shape(f.wk, "mpi", where + "wk", c.d_model, c.kv_dim());
    check_weight_shape(f.wv, "mpi", where + "wv", c.d_model, c.kv_dim());
    check_weight_shape(f.wo, "mpi", where + "wo", c.q_dim(), c.d_model);
    grok1::LayerWeights L = f;
    L.wq = column_slab(f.wq, q);
    L.wk = column_slab(f.wk, kv);
    L.wv = column_slab(f.wv, kv);
    L.wo = row_slab(f.wo, q, where + "wo");
    const std::size_t base = s.expert_views.size();
    for (std::size_t e = 0; e < E; ++e)
      s.expert_views.push_back(column_slab(f.expert_gate[e], plan.ff));
    for (std::size_t e = 0; e < E; ++e)
      s.expert_views.push_back(column_slab(f.expert_up[e], plan.ff));
    for (std::size_t e = 0; e < E; ++e) {
      s.expert_views.push_back(row_slab(f.expert_down[e], plan.ff, where + "expert down"));
    }
    const Int8Weight* v = s.expert_views.data() + base;
    L.expert_gate = WeightStack<Int8Weight>::of(std::span<const Int8Weight>(v, E));
    L.expert_up = WeightStack<Int8Weight>::of(std::span<const Int8Weight>(v + E, E));
    L.expert_down = WeightStack<Int8Weight>::of(std::span<const Int8Weight>(v + 2 * E, E));
    s.layers.push_back(L);
  }
  return s;
}

/// The shard `plan` of an opened checkpoint: views into its mappings, the embedding read in
/// place at whatever byte offset the file has (never copied: only the looked-up rows and this
/// rank's head rows are touched). Small misaligned tensors (norms, routers, scales) are copied
/// by the Checkpoint as usual.
[[nodiscard]] inline ShardWeights bind_shard(const grok1::Checkpoint& ck, const ShardPlan& plan) {
  const grok1::Config& c = ck.config();
  grok1::Weights full;
  full.layers.resize(c.n_layers);
  using grok1::Slot;
  for (std::size_t l = 0; l < c.n_layers; ++l) {
    grok1::LayerWeights& L = full.layers[l];
    L.wq = ck.attention(l, Slot::kQuery);
    L.wk = ck.attention(l, Slot::kKey);
    L.wv = ck.attention(l, Slot::kValue);
    L.wo = ck.attention(l, Slot::kAttnOut);
    L.norm_pre_attn = ck.norm(l, Slot::kNormPreAttn);
    L.norm_post_attn = ck.norm(l, Slot::kNormPostAttn);
    L.norm_pre_moe = ck.norm(l, Slot::kNormPreMoe);
    L.norm_post_moe = ck.norm(l, Slot::kNormPostMoe);
    L.router = ck.router(l);
    L.expert_gate = ck.experts(l, Slot::kExpertGate);
    L.expert_up = ck.experts(l, Slot::kExpertUp);
    L.expert_down = ck.experts(l, Slot::kExpertDown);
  }
  const io::Array& emb = ck.raw(ck.index().of_global(0));
  const EmbeddingTable table = EmbeddingTable::f32(emb.data, c.vocab_size, c.d_model);
  return shard_weights(c, full, table, ck.final_norm(), plan);
}

/// The rank's model: Grok-1's Decoder over the shard's heads and expert slices, whose logits
/// are its vocabulary slice (DecoderConfig::head_vocab). Views only: `w` must outlive it. (A
/// template so that its mangled name carries the per-ISA return type, as grok1::make_model.)
template <class Model = grok1::Model>
[[nodiscard]] Model make_shard_model(const ShardWeights& w) {
  const grok1::Config& c = w.config;
  using Moe = grok1::MoEOf<Int8Weight>;
  using RouterT = typename Moe::router_type;
  using ExpertT = typename Moe::expert_type;
  AttentionConfig a = grok1::attention_config(c);
  a.n_q_heads = w.plan.q_heads.size();
  a.n_kv_heads = w.plan.kv_heads.size();
  std::vector<grok1::BlockOf<Int8Weight>> blocks;
  blocks.reserve(w.layers.size());
  for (const grok1::LayerWeights& l : w.layers) {
    RotaryAttention<Int8Weight> attention(a, AttentionWeights<Int8Weight>{l.wq, l.wk, l.wv, l.wo});
    Moe moe(RouterT(l.router, grok1::routing(c)),
            ExpertT(l.expert_gate, l.expert_up, l.expert_down));
    blocks.emplace_back(
        std::move(attention), moe,
        BlockNorms{l.norm_pre_attn, l.norm_post_attn, l.norm_pre_moe, l.norm_post_moe},
        grok1::block_config(c));
  }
  DecoderConfig d = grok1::decoder_config(c);
  d.head_vocab = w.plan.vocab.size();
  return Model(d, w.embedding, std::move(blocks), w.final_norm, w.head);
}

}  // namespace moe::mpi
