// moe/layers/transformer_block.hpp: TransformerBlock<Attention, Ffn>, one decoder layer.
//
// The residual stream h [T, D] is updated in place. Norm placement is configuration:
//
//   NormPlacement::kPre       h += Attn(N0(h));          h += Ffn(N2(h))          (Llama, Mixtral)
//   NormPlacement::kSandwich  h += N1(Attn(N0(h)));      h += N3(Ffn(N2(h)))      (Grok-1)
//
// Every norm is RMSNorm y = s * x / sqrt(mean(x^2) + eps) with the scale applied as stored (no
// "1 + s"). N0/N2 are the pre-norms, N1/N3 the post-norms (read only for kSandwich).
//
// Attention is any type with RotaryAttention's forward(pool, x, y, cache, layer, arena); Ffn any
// type with the FFN interface of moe/layers/moe_types.hpp (MoELayer, a dense gated FFN, ...).
// The block's forward returns what the Ffn's forward returns (MoEResult for an MoE layer).
//
// Tensor parallel (moe/mpi/): each rank's block holds a slice of the heads and of every expert's
// hidden width, so its attention and FFN outputs are partial sums; forward()'s optional
// PartialSum is called on each sub-block output u [T, D] before the post-norm and residual add
// (e.g. an MPI all-reduce), which makes every rank's residual stream the full model's.
//
// Decoders that mix dense and MoE layers (GLaM: an MoE layer in every other block; DeepSeek and
// Qwen-MoE: the first blocks dense) use DenseOrMoE<MoE, Dense> as their Ffn: each block holds
// either its MoE layer or its dense FFN, chosen at construction, and returns
// std::optional<MoEResult> (empty for a dense block).
#pragma once

#include <algorithm>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include <moe/config.hpp>
#include <moe/core/arena.hpp>
#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/layers/kv_cache.hpp>
#include <moe/layers/moe_types.hpp>
#include <moe/ops/norm.hpp>
#include <moe/ops/vector.hpp>

namespace moe {

/// Where a block normalises (see the file comment).
enum class NormPlacement : std::uint8_t {
  kPre,       ///< pre-norm only: h += f(N(h))
  kSandwich,  ///< Grok-1: h += N_post(f(N_pre(h))), for attention and FFN
};
inline constexpr std::string_view norm_placement_name(NormPlacement p) noexcept {
  return p == NormPlacement::kPre ? "pre" : "sandwich";
}

/// The RMSNorm scales of one block (views, [D] each). post_* are only read for kSandwich.
struct BlockNorms {
  std::span<const float> pre_attn;   ///< N0 (Grok-1: rms_norm)
  std::span<const float> post_attn;  ///< N1 (Grok-1: rms_norm_1)
  std::span<const float> pre_ffn;    ///< N2 (Grok-1: rms_norm_2)
  std::span<const float> post_ffn;   ///< N3 (Grok-1: rms_norm_3)
};

struct BlockConfig {
  NormPlacement norm = NormPlacement::kPre;
  double rms_eps = 1e-5;
};

/// Wall time per component accumulated over forward calls (seconds). Opt-in: a Decoder fills it
/// when DecoderOptions::profile points at one. "ffn" is the whole MoE layer (router + experts).
struct DecoderProfile {
  double embedding = 0;
  double norms = 0;      ///< every RMSNorm and residual add of the blocks, plus the final norm
  double attention = 0;  ///< projections, RoPE, cache append, attention core, output projection
  double ffn = 0;        ///< the FFN / MoE layer (router and experts)
  double head = 0;       ///< LM head (and output multiplier)
  double reduce = 0;     ///< the PartialSum of tensor-parallel blocks (e.g. MPI all-reduces)
  std::size_t calls = 0;
  std::size_t tokens = 0;

  [[nodiscard]] double total() const noexcept {
    return embedding + norms + attention + ffn + head + reduce;
  }
  void reset() noexcept { *this = DecoderProfile{}; }
};

/// Sums a sub-block's partial output u [T, D] in place across the shards of a tensor-parallel
/// model (see the file comment); every shard calls it in the same order.
using PartialSum = std::function<void(MatrixView<float> u)>;

/// The FFN interface a TransformerBlock calls (see moe/layers/moe_types.hpp).
template <class F>
concept FeedForwardLayer = requires(const F& f, ThreadPool& pool, MatrixView<const float> x,
                                    MatrixView<float> y, Arena& arena) {
  { f.dim() } -> std::convertible_to<std::size_t>;
  { f.workspace_bytes(std::size_t{}) } -> std::convertible_to<std::size_t>;
  f.forward(pool, x, y, arena, ForwardOptions{});
};

}  // namespace moe

MOE_SIMD_DETAIL_BEGIN
/// Seconds since `t0`, and resets t0 to now (for the opt-in profile).
inline double lap(std::chrono::steady_clock::time_point& t0) noexcept {
  const auto t1 = std::chrono::steady_clock::now();
  const double s = std::chrono::duration<double>(t1 - t0).count();
  t0 = t1;
  return s;
}

/// h += (post ? RMSNorm(u, post) : u), row by row.
inline void residual_add(MatrixView<float> h, MatrixView<float> u, const float* post, float eps) {
  for (std::size_t r = 0; r < h.rows; ++r) {
    if (post) rms_norm(u.row(r), post, u.row(r), u.cols, eps);
    add(h.row(r), u.row(r), h.row(r), h.cols);
  }
}

/// y = a + b, row by row (y may alias a or b).
inline void add_rows(MatrixView<const float> a, MatrixView<const float> b, MatrixView<float> y) {
  for (std::size_t r = 0; r < y.rows; ++r) add(a.row(r), b.row(r), y.row(r), y.cols);
}
MOE_SIMD_DETAIL_END

MOE_SIMD_NAMESPACE_BEGIN

/// An FFN that is, per instance, either an MoE layer or a dense FFN (see the file comment): a
/// decoder whose blocks all have type TransformerBlock<A, DenseOrMoE<M, D>> can choose MoE or
/// dense layer by layer. Offers the FFN interface and the training contract of moe_types.hpp by
/// forwarding to the layer it holds.
template <class MoeT, class DenseT>
requires FeedForwardLayer<MoeT> && FeedForwardLayer<DenseT>
class DenseOrMoE {
 public:
  using moe_type = MoeT;
  using dense_type = DenseT;
  /// The MoE layer's result (losses, routing statistics), or std::nullopt for a dense layer.
  using Result = std::optional<typename MoeT::Result>;

  DenseOrMoE(MoeT moe) : layer_(std::in_place_index<1>, std::move(moe)) {}        // NOLINT
  DenseOrMoE(DenseT dense) : layer_(std::in_place_index<0>, std::move(dense)) {}  // NOLINT

  [[nodiscard]] bool is_moe() const noexcept { return layer_.index() == 1; }
  /// The MoE layer (nullptr for a dense one) and the dense FFN (nullptr for an MoE one).
  [[nodiscard]] const MoeT* moe() const noexcept { return std::get_if<1>(&layer_); }
  [[nodiscard]] const DenseT* dense() const noexcept { return std::get_if<0>(&layer_); }

  [[nodiscard]] std::size_t dim() const noexcept {
    return std::visit([](const auto& l) -> std::size_t { return l.dim(); }, layer_);
  }
  [[nodiscard]] std::size_t workspace_bytes(std::size_t max_tokens) const {
    return std::visit([&](const auto& l) -> std::size_t { return l.workspace_bytes(max_tokens); },
                      layer_);
  }
  Result forward(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> y, Arena& arena,
                 const ForwardOptions& opts = {}) const {
    if (const MoeT* m = moe()) return m->forward(pool, x, y, arena, opts);
    dense()->forward(pool, x, y, arena, opts);
    return std::nullopt;
  }

  // ---- training: the layer's own Grads / Saved (only the one of the held layer is used) ----
  struct Grads {
    typename DenseT::Grads dense{};
    typename MoeT::Grads moe{};
  };
  struct Saved {
    typename DenseT::Saved dense{};
    typename MoeT::Saved moe{};
  };
  [[nodiscard]] std::size_t tape_bytes(std::size_t max_tokens) const {
    return std::visit([&](const auto& l) -> std::size_t { return l.tape_bytes(max_tokens); },
                      layer_);
  }
  [[nodiscard]] std::size_t training_workspace_bytes(std::size_t max_tokens) const {
    return std::visit(
        [&](const auto& l) -> std::size_t { return l.training_workspace_bytes(max_tokens); },
        layer_);
  }
  Result forward_train(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> y,
                       Arena& scratch, Arena& tape, Saved& saved,
                       const ForwardOptions& opts = {}) const {
    if (const MoeT* m = moe()) return m->forward_train(pool, x, y, scratch, tape, saved.moe, opts);
    dense()->forward_train(pool, x, y, scratch, tape, saved.dense, opts);
    return std::nullopt;
  }
  void backward(ThreadPool& pool, MatrixView<const float> x, const Saved& saved,
                MatrixView<const float> dy, MatrixView<float> dx, Grads& grads, Arena& scratch,
                const BackwardOptions& opts = {}) const {
    if (const MoeT* m = moe()) {
      m->backward(pool, x, saved.moe, dy, dx, grads.moe, scratch, opts);
    } else {
      dense()->backward(pool, x, saved.dense, dy, dx, grads.dense, scratch, opts);
    }
  }

 private:
  std::variant<DenseT, MoeT> layer_;
};

template <class Attention, class Ffn>
requires FeedForwardLayer<Ffn>
class TransformerBlock {
 public:
  using attention_type = Attention;
  using ffn_type = Ffn;
  using ffn_result_type = decltype(std::declval<const Ffn&>().forward(
      std::declval<ThreadPool&>(), std::declval<MatrixView<const float>>(),
      std::declval<MatrixView<float>>(), std::declval<Arena&>(), ForwardOptions{}));

  TransformerBlock(Attention attention, Ffn ffn, const BlockNorms& norms,
                   const BlockConfig& config = {})
      : attn_(std::move(attention)), ffn_(std::move(ffn)), norms_(norms), cfg_(config) {
    const std::size_t d = attn_.dim();
    check_config(
        ffn_.dim() == d, "block",
        "attention width " + std::to_string(d) + " != FFN width " + std::to_string(ffn_.dim()));
    check_config(cfg_.rms_eps > 0, "block", "rms_eps must be > 0");
    check_norm(norms_.pre_attn, "pre_attn", d);
    check_norm(norms_.pre_ffn, "pre_ffn", d);
    if (cfg_.norm == NormPlacement::kSandwich) {
      check_norm(norms_.post_attn, "post_attn", d);
      check_norm(norms_.post_ffn, "post_ffn", d);
    }
    eps_ = static_cast<float>(cfg_.rms_eps);
  }

  [[nodiscard]] std::size_t dim() const noexcept { return attn_.dim(); }
  [[nodiscard]] const Attention& attention() const noexcept { return attn_; }
  [[nodiscard]] const Ffn& ffn() const noexcept { return ffn_; }
  [[nodiscard]] const BlockNorms& norms() const noexcept { return norms_; }
  [[nodiscard]] const BlockConfig& config() const noexcept { return cfg_; }

  /// Arena bytes forward() needs for up to max_tokens rows.
  [[nodiscard]] std::size_t workspace_bytes(std::size_t max_tokens) const {
    return 2 * Arena::bytes_for<float>(max_tokens * dim()) +
           std::max<std::size_t>(attn_.workspace_bytes(max_tokens),
                                 ffn_.workspace_bytes(max_tokens));
  }

  // ---- training (the contract of moe/layers/moe_types.hpp, with the sequence length) ----

  /// Gradients of the block: its attention, its FFN and its four norm scales (an empty span is
  /// frozen; post_* are only used by kSandwich).
  struct Grads {
    typename Attention::Grads attention{};
    typename Ffn::Grads ffn{};
    std::span<float> pre_attn, post_attn, pre_ffn, post_ffn;
  };
  /// What forward_train keeps for backward (views into the tape): the normed sub-block inputs a
  /// and m, the stream between the sub-blocks h1, the sub-block outputs u and f (kSandwich only:
  /// their post-norms need them), and the attention's and FFN's own records.
  struct Saved {
    typename Attention::Saved attention{};
    typename Ffn::Saved ffn{};
    MatrixView<const float> a, h1, m, u, f;
  };

  /// Tape bytes forward_train() keeps for max_tokens rows (B * T).
  [[nodiscard]] std::size_t tape_bytes(std::size_t max_tokens) const {
    const std::size_t rows = cfg_.norm == NormPlacement::kSandwich ? 5 : 3;
    return rows * Arena::bytes_for<float>(max_tokens * dim()) + attn_.tape_bytes(max_tokens) +
           ffn_.tape_bytes(max_tokens);
  }
  /// Scratch bytes of forward_train() and backward() for max_tokens rows.
  [[nodiscard]] std::size_t training_workspace_bytes(std::size_t max_tokens) const {
    const std::size_t rows = Arena::bytes_for<float>(max_tokens * dim());
    return 3 * rows + Arena::bytes_for<float>(max_tokens) +
           std::max<std::size_t>(attn_.training_workspace_bytes(max_tokens),
                                 ffn_.training_workspace_bytes(max_tokens));
  }

  /// y [B*T, D] = block(x) over B sequences of seq_len tokens (attention causal within each, no
  /// KV cache); keeps what backward() needs in `tape`. x must stay alive and unchanged until
  /// backward(); x and y must not alias. Returns the FFN's result (its forward_train's).
  ffn_result_type forward_train(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> y,
                                std::size_t seq_len, Arena& scratch, Arena& tape, Saved& saved,
                                const ForwardOptions& ffn_options = {}) const {
    check_rows(x, y);
    const std::size_t n = x.rows, d = dim();
    const bool sandwich = cfg_.norm == NormPlacement::kSandwich;
    MatrixView<float> a(tape.alloc<float>(n * d), n, d);
    MatrixView<float> h1(tape.alloc<float>(n * d), n, d);
    MatrixView<float> m(tape.alloc<float>(n * d), n, d);
    Arena::Scope scope(scratch);
    MatrixView<float> u(sandwich ? tape.alloc<float>(n * d) : scratch.alloc<float>(n * d), n, d);
    MatrixView<float> f(sandwich ? tape.alloc<float>(n * d) : scratch.alloc<float>(n * d), n, d);
    saved.a = a;
    saved.h1 = h1;
    saved.m = m;
    saved.u = sandwich ? MatrixView<const float>(u) : MatrixView<const float>();
    saved.f = sandwich ? MatrixView<const float>(f) : MatrixView<const float>();

    // h1 = x + [N1](Attn(N0(x)))
    detail::rms_norm_rows_parallel(pool, x, norms_.pre_attn.data(), a, eps_);
    attn_.forward_train(pool, a, u, seq_len, scratch, tape, saved.attention);
    post_norm_add(pool, x, u, sandwich ? norms_.post_attn.data() : nullptr, h1, scratch);
    // y = h1 + [N3](Ffn(N2(h1)))
    detail::rms_norm_rows_parallel(pool, h1, norms_.pre_ffn.data(), m, eps_);
    ForwardOptions fo = ffn_options;
    fo.training = true;
    if constexpr (std::is_void_v<ffn_result_type>) {
      ffn_.forward_train(pool, m, f, scratch, tape, saved.ffn, fo);
      post_norm_add(pool, h1, f, sandwich ? norms_.post_ffn.data() : nullptr, y, scratch);
    } else {
      ffn_result_type r = ffn_.forward_train(pool, m, f, scratch, tape, saved.ffn, fo);
      post_norm_add(pool, h1, f, sandwich ? norms_.post_ffn.data() : nullptr, y, scratch);
      return r;
    }
  }

  /// dx += dL/dx and grads += dL/dparameters, given the x of forward_train(), its Saved record
  /// and dy = dL/dy. `options` go to the FFN's backward (the factor on its auxiliary losses).
  void backward(ThreadPool& pool, MatrixView<const float> x, const Saved& saved,
                MatrixView<const float> dy, MatrixView<float> dx, Grads& grads, Arena& scratch,
                const BackwardOptions& options = {}) const {
    check_rows(x, dy);
    check_rows(x, dx);
    const std::size_t n = x.rows, d = dim();
    if (saved.h1.rows != n) {
      throw ShapeError("[block] backward() got " + std::to_string(n) +
                       " rows, forward_train() saved " + std::to_string(saved.h1.rows));
    }
    check_norm_grad(grads.pre_attn, "pre_attn");
    check_norm_grad(grads.pre_ffn, "pre_ffn");
    const bool sandwich = cfg_.norm == NormPlacement::kSandwich;
    if (sandwich) {
      check_norm_grad(grads.post_attn, "post_attn");
      check_norm_grad(grads.post_ffn, "post_ffn");
    }
    Arena::Scope scope(scratch);
    MatrixView<float> dh1(scratch.alloc<float>(n * d), n, d);  // dL/dh1
    MatrixView<float> g(scratch.alloc<float>(n * d), n, d);    // dL/d(sub-block output)
    MatrixView<float> dn(scratch.alloc<float>(n * d), n, d);   // dL/d(normed sub-block input)
    float* r = scratch.alloc<float>(n);

    // FFN branch: y = h1 + [N3](f), f = Ffn(m), m = N2(h1).
    for (std::size_t t = 0; t < n; ++t) copy(dy.row(t), dh1.row(t), d);
    MatrixView<const float> df = dy;
    if (sandwich) {
      fill(g.data, n * d, 0.0f);
      detail::rms_norm_backward_rows(pool, saved.f, norms_.post_ffn.data(), dy, g,
                                     span_data(grads.post_ffn), eps_, r);
      df = g;
    }
    fill(dn.data, n * d, 0.0f);
    ffn_.backward(pool, saved.m, saved.ffn, df, dn, grads.ffn, scratch, options);
    detail::rms_norm_backward_rows(pool, saved.h1, norms_.pre_ffn.data(), dn, dh1,
                                   span_data(grads.pre_ffn), eps_, r);

    // Attention branch: h1 = x + [N1](u), u = Attn(a), a = N0(x).
    MatrixView<const float> du = dh1;
    if (sandwich) {
      fill(g.data, n * d, 0.0f);
      detail::rms_norm_backward_rows(pool, saved.u, norms_.post_attn.data(), dh1, g,
                                     span_data(grads.post_attn), eps_, r);
      du = g;
    }
    fill(dn.data, n * d, 0.0f);
    attn_.backward(pool, saved.a, saved.attention, du, dn, grads.attention, scratch);
    for (std::size_t t = 0; t < n; ++t) add(dx.row(t), dh1.row(t), dx.row(t), d);
    detail::rms_norm_backward_rows(pool, x, norms_.pre_attn.data(), dn, dx,
                                   span_data(grads.pre_attn), eps_, r);
  }

  /// Updates the residual stream h [T, D] in place; layer `layer` of `cache` gets T positions.
  /// `reduce` (tensor parallel) sums the attention and FFN outputs across shards.
  ffn_result_type forward(ThreadPool& pool, MatrixView<float> h, KvCache& cache, std::size_t layer,
                          Arena& arena, DecoderProfile* profile = nullptr,
                          const ForwardOptions& ffn_options = {},
                          const PartialSum* reduce = nullptr) const {
    const std::size_t t_count = h.rows, d = dim();
    MOE_ASSERT(h.cols == d);
    Arena::Scope scope(arena);
    MatrixView<float> a(arena.alloc<float>(t_count * d), t_count,
                        d);  // normed input of a sub-block
    MatrixView<float> u(arena.alloc<float>(t_count * d), t_count, d);  // output of a sub-block
    const bool sandwich = cfg_.norm == NormPlacement::kSandwich;
    auto t0 = std::chrono::steady_clock::now();
    auto charge = [&](double DecoderProfile::*field) {
      if (profile) profile->*field += detail::lap(t0);
    };

    detail::rms_norm_rows_parallel(pool, h, norms_.pre_attn.data(), a, eps_);
    charge(&DecoderProfile::norms);
    attn_.forward(pool, a, u, cache, layer, arena);
    charge(&DecoderProfile::attention);
    sum_partials(reduce, u, charge);
    detail::residual_add(h, u, sandwich ? norms_.post_attn.data() : nullptr, eps_);
    detail::rms_norm_rows_parallel(pool, h, norms_.pre_ffn.data(), a, eps_);
    charge(&DecoderProfile::norms);
    if constexpr (std::is_void_v<ffn_result_type>) {
      ffn_.forward(pool, a, u, arena, ffn_options);
      charge(&DecoderProfile::ffn);
      sum_partials(reduce, u, charge);
      detail::residual_add(h, u, sandwich ? norms_.post_ffn.data() : nullptr, eps_);
      charge(&DecoderProfile::norms);
    } else {
      ffn_result_type result = ffn_.forward(pool, a, u, arena, ffn_options);
      charge(&DecoderProfile::ffn);
      sum_partials(reduce, u, charge);
      detail::residual_add(h, u, sandwich ? norms_.post_ffn.data() : nullptr, eps_);
      charge(&DecoderProfile::norms);
      return result;
    }
  }

 private:
  template <class Charge>
  static void sum_partials(const PartialSum* reduce, MatrixView<float> u, Charge& charge) {
    if (reduce == nullptr || !*reduce) return;
    (*reduce)(u);
    charge(&DecoderProfile::reduce);
  }

  /// y = base + (post ? RMSNorm(u, post) : u); u is rewritten only through a scratch copy.
  void post_norm_add(ThreadPool& pool, MatrixView<const float> base, MatrixView<const float> u,
                     const float* post, MatrixView<float> y, Arena& scratch) const {
    if (post == nullptr) {
      detail::add_rows(base, u, y);
      return;
    }
    Arena::Scope scope(scratch);
    MatrixView<float> un(scratch.alloc<float>(u.rows * u.cols), u.rows, u.cols);
    detail::rms_norm_rows_parallel(pool, u, post, un, eps_);
    detail::add_rows(base, un, y);
  }

  void check_rows(MatrixView<const float> x, MatrixView<const float> y) const {
    if (x.cols != dim() || y.cols != dim() || x.rows != y.rows) {
      throw ShapeError("[block] input " + shape_str({x.rows, x.cols}) + " / output " +
                       shape_str({y.rows, y.cols}) + " do not match [B*T, " +
                       std::to_string(dim()) + "]");
    }
  }

  void check_norm_grad(std::span<float> g, const char* name) const {
    if (!g.empty()) check_shape("block", std::string("gradient of ") + name, {g.size()}, {dim()});
  }
  static float* span_data(std::span<float> g) noexcept { return g.empty() ? nullptr : g.data(); }

  static void check_norm(std::span<const float> s, const char* name, std::size_t d) {
    if (s.data() == nullptr) {
      throw ShapeError(std::string("[block] norm scale '") + name + "' is missing");
    }
    check_shape("block", name, {s.size()}, {d});
  }

  Attention attn_;
  Ffn ffn_;
  BlockNorms norms_;
  BlockConfig cfg_;
  float eps_ = 1e-5f;
};

MOE_SIMD_NAMESPACE_END
