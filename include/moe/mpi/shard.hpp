// moe/mpi/shard.hpp: one rank's shard of a tensor-parallel Grok-1 model, from the original
// checkpoint files (no conversion step). Needs no MPI: the arithmetic, the views and the copies
// are plain C++ (moe/mpi/tensor_parallel.hpp adds the communication).
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
// A row slab (Wo, w2) is a pointer offset into the mapped file whose scale rows are the blocks it
// covers: contiguous bytes, read in place. A column slab (Wq, Wk, Wv, w1, v) is 1/N of every row
// of its matrix; read in place (a strided Int8Weight, row stride = the full width) it shares pages
// with the other ranks' columns: the payloads are not page-aligned, so each row's slab has edge
// pages, a slab narrower than a page shares every page, and the kernel maps whole page-cache
// folios around a fault. So bind_shard copies the column slabs once, while loading, into the
// rank's own memory (rows contiguous; SlabStorage::kCopy, the default) and unmaps the matrices'
// file pages again: a rank's RAM is then its bytes (docs/distributed.md, "Memory per rank").
// Page-aligned slab boundaries instead would cut w2's scale blocks (4096 rows in Grok-1, i.e.
// boundaries must be multiples of 4096 for N <= 8, while w1's page boundaries fall at 4096 k -
// 201). Dimensions that do not split throw ConfigError naming the dimension: heads and d_ff must
// divide by N (Grok-1: N = 1, 2, 4, 8, 16); the vocabulary splits unevenly.
//
//   ShardPlan plan = plan_shard(config, n_ranks, rank);
//   ShardWeights w = bind_shard(checkpoint, plan);     // views into the files + column copies
//   grok1::Model model = make_shard_model(w);          // a Decoder with head_vocab = |slice|
//   model.forward(pool, tokens, state, local_logits, {.reduce = all_reduce_sum});
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <moe/core/buffer.hpp>
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

/// Columns `cols` of `w` copied into `data` (w.in x |cols| int8) and `scales` (w.blocks x |cols|
/// bf16), rows contiguous: equal to column_slab(w, cols) element by element, but its rows share
/// no page with another rank's columns.
[[nodiscard]] inline Int8Weight copy_column_slab(const Int8Weight& w, Range cols, std::int8_t* data,
                                                 bf16* scales) {
  MOE_ASSERT(cols.end <= w.out && cols.size() > 0);
  const std::size_t ld = w.row_stride(), n = cols.size();
  for (std::size_t i = 0; i < w.in; ++i) {
    std::memcpy(data + i * n, w.data + i * ld + cols.begin, n);
  }
  for (std::size_t b = 0; b < w.blocks; ++b) {
    // bytes, not bf16 objects: the source scales may lie at any byte address (read in place)
    std::memcpy(scales + b * n, w.scales + b * ld + cols.begin, n * sizeof(bf16));
  }
  return Int8Weight{data, scales, w.in, n, w.blocks, 0};
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

/// Where a rank's column slabs (Wq, Wk, Wv and every expert's w1 and v, when narrower than the
/// full matrix) live.
enum class SlabStorage : std::uint8_t {
  /// Copied once, while loading, into the rank's own memory with contiguous rows (the default):
  /// they take their bytes of RAM, whatever the file offsets. The rows of an [in, out] column
  /// slab are 1/N of a file row each; read in place, they share their edge pages with the
  /// neighbouring ranks (the payloads are not page-aligned) and the kernel maps whole page-cache
  /// folios, so a rank's view of a w1 slab keeps up to the whole matrix resident.
  kCopy,
  /// Views into the full matrices (no copy; the pages stay the page cache's to evict).
  kInPlace,
};

/// A full matrix whose column slab was copied (SlabStorage::kCopy), and where it came from.
struct CopiedSlab {
  Int8Weight full;  ///< the whole matrix (expert e's of a stack)
  std::size_t layer = 0;
  grok1::Slot slot = grok1::Slot::kQuery;
};

struct ShardOptions {
  SlabStorage column_slabs = SlabStorage::kCopy;
  /// Called after each copy. bind_shard sets it, when empty, to unmap the full matrix's file
  /// pages from the process (MADV_DONTNEED: never for weights in anonymous memory, which it
  /// would zero; shard_weights leaves it to the caller).
  std::function<void(const CopiedSlab&)> after_copy;
};

/// Bytes that SlabStorage::kCopy allocates for the shard `plan` of a model `c` whose column-slab
/// tensors have one scale row (Grok-1's Wq, Wk, Wv, w1, v), to within the copies' line padding:
/// the column slabs narrower than their matrix (none when N = 1) and their scales.
[[nodiscard]] inline std::size_t column_copy_bytes(const grok1::Config& c, const ShardPlan& plan) {
  std::size_t cols = 0;
  const std::size_t q = plan.q_heads.size() * c.head_dim, kv = plan.kv_heads.size() * c.head_dim;
  if (q < c.q_dim()) cols += q;
  if (kv < c.kv_dim()) cols += 2 * kv;
  if (plan.ff.size() < c.d_ff) cols += 2 * c.n_experts * plan.ff.size();
  return c.n_layers * cols * (c.d_model + sizeof(bf16));  // int8 rows + one bf16 scale row
}

/// One rank's weights: views into the checkpoint and the copied column slabs (see the file
/// comment). Move-only: the layers' expert stacks point into `expert_views` and the copies (a
/// moved vector or Buffer keeps its storage, a copy would not).
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
  Buffer<std::int8_t> slab_data;            ///< the copied column slabs (SlabStorage::kCopy)
  Buffer<bf16> slab_scales;                 ///< and their scale rows

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
  /// RAM at least. More than shard_bytes() where a view's rows start or end inside a page that
  /// the neighbouring rank's slab shares (the files' payloads are not page-aligned, and a column
  /// slab narrower than a page shares every page it touches); copies lie on their own pages.
  [[nodiscard]] std::size_t page_bytes(std::size_t page = 4096) const {
    std::size_t n = page_bytes_of_rows(head.data, 1, head.bytes(), 0, page);
    for (const auto& l : layers) {
      for (const Int8Weight* w : {&l.wq, &l.wk, &l.wv, &l.wo}) n += mpi::page_bytes(*w, page);
    }
    for (const auto& v : expert_views) n += mpi::page_bytes(v, page);
    return n;
  }
};

namespace detail {

/// Bytes rounded up to whole 64-byte lines (every copied slab starts on a line).
[[nodiscard]] inline std::size_t whole_lines(std::size_t bytes) {
  return (bytes + 63) / 64 * 64;
}

/// A column slab to copy: the view to replace, where it comes from, its columns.
struct SlabToCopy {
  Int8Weight* view = nullptr;
  CopiedSlab source;
  Range cols;
};

/// Replaces the views in `todo` by copies in s.slab_data / s.slab_scales (one allocation each),
/// calling o.after_copy after each.
inline void copy_column_slabs(ShardWeights& s, const std::vector<SlabToCopy>& todo,
                              const ShardOptions& o) {
  std::size_t data = 0, scales = 0;
  for (const SlabToCopy& t : todo) {
    data += whole_lines(t.source.full.in * t.cols.size());
    scales += whole_lines(t.source.full.blocks * t.cols.size() * sizeof(bf16)) / sizeof(bf16);
  }
  s.slab_data = Buffer<std::int8_t>(data);
  s.slab_scales = Buffer<bf16>(scales);
  std::size_t d = 0, c = 0;
  for (const SlabToCopy& t : todo) {
    const Int8Weight& w = t.source.full;
    *t.view = copy_column_slab(w, t.cols, s.slab_data.data() + d, s.slab_scales.data() + c);
    d += whole_lines(w.in * t.cols.size());
    c += whole_lines(w.blocks * t.cols.size() * sizeof(bf16)) / sizeof(bf16);
    if (o.after_copy) o.after_copy(t.source);
  }
}

}  // namespace detail

/// The shard `plan` of full-model views: `full.layers` (int8), `table` (f32, the embedding and
/// tied head) and `final_norm`. full.embedding is not read. Column slabs narrower than their
/// matrix are copied unless o.column_slabs is kInPlace.
[[nodiscard]] inline ShardWeights shard_weights(const grok1::Config& c, const grok1::Weights& full,
                                                const EmbeddingTable& table,
                                                std::span<const float> final_norm,
                                                const ShardPlan& plan, const ShardOptions& o = {}) {
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
  s.expert_views.resize(full.layers.size() * 3 * E);
  s.layers.resize(full.layers.size());
  std::vector<detail::SlabToCopy> todo;
  using grok1::Slot;
  // A column slab: a view, to be replaced by a copy when it is narrower than the matrix.
  const auto columns = [&](Int8Weight& view, const Int8Weight& w, Range cols, std::size_t l,
                           Slot slot) {
    view = column_slab(w, cols);
    if (o.column_slabs == SlabStorage::kCopy && cols.size() < w.out) {
      todo.push_back({&view, {w, l, slot}, cols});
    }
  };
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
    grok1::LayerWeights& L = s.layers[l];
    L = f;
    columns(L.wq, f.wq, q, l, Slot::kQuery);
    columns(L.wk, f.wk, kv, l, Slot::kKey);
    columns(L.wv, f.wv, kv, l, Slot::kValue);
    L.wo = row_slab(f.wo, q, where + "wo");
    Int8Weight* v = s.expert_views.data() + l * 3 * E;
    for (std::size_t e = 0; e < E; ++e) {
      columns(v[e], f.expert_gate[e], plan.ff, l, Slot::kExpertGate);
      columns(v[E + e], f.expert_up[e], plan.ff, l, Slot::kExpertUp);
      v[2 * E + e] = row_slab(f.expert_down[e], plan.ff, where + "expert down");
    }
  }
  detail::copy_column_slabs(s, todo, o);
  for (std::size_t l = 0; l < s.layers.size(); ++l) {  // the stacks, of the final views
    const Int8Weight* v = s.expert_views.data() + l * 3 * E;
    grok1::LayerWeights& L = s.layers[l];
    L.expert_gate = WeightStack<Int8Weight>::of(std::span<const Int8Weight>(v, E));
    L.expert_up = WeightStack<Int8Weight>::of(std::span<const Int8Weight>(v + E, E));
    L.expert_down = WeightStack<Int8Weight>::of(std::span<const Int8Weight>(v + 2 * E, E));
  }
  return s;
}

/// The shard `plan` of an opened checkpoint: views into its mappings, the embedding read in
/// place at whatever byte offset the file has (never copied: only the looked-up rows and this
/// rank's head rows are touched), the column slabs copied (unless o.column_slabs is kInPlace),
/// each matrix's file pages unmapped after its copy. The int8 scales are read in place at any
/// byte address; small misaligned f32 tensors (norms) are copied by the Checkpoint as usual.
[[nodiscard]] inline ShardWeights bind_shard(const grok1::Checkpoint& ck, const ShardPlan& plan,
                                             ShardOptions o = {}) {
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
  if (o.column_slabs == SlabStorage::kCopy && !o.after_copy) {
    // The matrix's pages that copying mapped into this process (all of them, folios and
    // fault-around included) are not read again: unmap them (they stay in the page cache).
    o.after_copy = [&ck](const CopiedSlab& m) {
      const io::MappedFile& map = ck.file(ck.index_of(m.layer, m.slot)).map;
      const auto offset =
          static_cast<std::size_t>(reinterpret_cast<const std::byte*>(m.full.data) - map.data());
      map.advise(io::Advice::kDontNeed, offset, m.full.in * m.full.row_stride());
    };
  }
  return shard_weights(c, full, table, ck.final_norm(), plan, o);
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
