// moe/layers/expert.hpp: gated feed-forward networks, dense (GatedFfn) and stacked (Expert).
//
//   FFN(x) = down( act(x . W_gate) * (x . W_up) ),   act in {GELU-tanh, GELU-erf, SiLU}
//
// Grok-1 names: W_gate = `linear` [D, F], W_up = `linear_v` [D, F], W_down = `linear_1` [F, D],
// GELU-tanh. Mixtral/HF: w1 = gate, w3 = up, w2 = down (stored [out, in]: Layout::kOutIn), SiLU.
// Weights are views of any weight type (F32Weight / BF16Weight in either layout, Int8Weight);
// they are never copied. The activation is a template parameter.
//
// GatedFfn<W, A> is one FFN with the FFN-layer interface of moe_types.hpp (dim, workspace_bytes,
// forward), so a TransformerBlock can hold it in place of an MoE layer; it is also the type of a
// shared expert. SigmoidGatedFfn<W, A> is a GatedFfn whose output row t is scaled by
// sigmoid(x_t . w_gate), w_gate [D, 1] (Qwen2-MoE's shared expert with its shared_expert_gate).
// Expert<W, A> is E FFNs of one shape ([E, D, F], [E, D, F], [E, F, D]), stored stacked as in
// Grok-1's files or one tensor per expert as in Hugging Face files (WeightStack); MoELayer runs
// expert e over a contiguous block of gathered rows.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

#include <moe/config.hpp>
#include <moe/core/arena.hpp>
#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/layers/moe_types.hpp>
#include <moe/layers/policies.hpp>
#include <moe/ops/activation.hpp>
#include <moe/ops/matmul.hpp>
#include <moe/ops/matmul_grad.hpp>
#include <moe/ops/softmax.hpp>
#include <moe/ops/vector.hpp>
#include <moe/ops/weights.hpp>

namespace moe {

/// Rows an FFN processes per pass: its scratch holds two [rows, F] f32 blocks. Larger batches
/// are processed in blocks of this many rows (at 256 rows the expert GEMMs are compute-bound,
/// so re-reading the weights per block costs little).
inline constexpr std::size_t kFfnBlockRows = 256;

/// Inverted dropout on the hidden activation h = act(x W_gate) * (x W_up) of a block of expert
/// rows (ExpertDropout, training only): h[i, f] is kept with probability 1 - rate, as a pure
/// function of (seed, step, keys[i], f), and scaled by 1 / (1 - rate). Inactive by default.
struct HiddenDropout {
  float rate = 0.0f;
  std::uint64_t seed = 0;
  std::uint64_t step = 0;
  const std::uint32_t* keys = nullptr;  ///< [rows] one key per row (MoELayer: the pair t * k + j)

  [[nodiscard]] bool active() const noexcept { return rate > 0.0f && keys != nullptr; }
  /// h[i, :] *= mask_i / (1 - rate) for the rows [0, rows) of an [rows, f] block.
  void apply(float* h, std::size_t rows, std::size_t f) const noexcept {
    const float scale = 1.0f / (1.0f - rate);
    for (std::size_t i = 0; i < rows; ++i) {
      float* row = h + i * f;
      for (std::size_t c = 0; c < f; ++c) {
        row[c] = rng::uniform(seed, step, keys[i], c) < rate ? 0.0f : row[c] * scale;
      }
    }
  }
  /// The same rows of `keys` starting at row r0.
  [[nodiscard]] HiddenDropout rows_from(std::size_t r0) const noexcept {
    HiddenDropout d = *this;
    if (d.keys != nullptr) d.keys += r0;
    return d;
  }
};

/// How MoELayer's combine weights enter an expert block's backward: the block's dy rows are the
/// layer's (unweighted) output gradient, row i carries weight w[i]; gbar[i] receives
/// dL/dw_i = <dy_i, expert(x_i)>. Empty = a plain FFN (weight 1, no gbar).
struct RowWeights {
  const float* w = nullptr;  ///< [rows] combine weights, or nullptr for 1
  float* gbar = nullptr;     ///< [rows] output: dL/dw per row, or nullptr
};

}  // namespace moe

MOE_SIMD_DETAIL_BEGIN

/// g[i] = act(g[i]) * u[i] over n contiguous elements, split into fixed blocks on the pool.
template <Activation A>
void gated_activation_parallel(ThreadPool& pool, float* g, const float* u, std::size_t n) {
  constexpr std::size_t kBlock = 16384;
  const std::size_t blocks = (n + kBlock - 1) / kBlock;
  pool.parallel_for(blocks, [&](std::size_t b, std::size_t) {
    const std::size_t i0 = b * kBlock, len = std::min(kBlock, n - i0);
    gated_activation(A, g + i0, u + i0, g + i0, len);
  });
}

/// y[n, D] = down(act(x . gate) * (x . up)) for n <= kFfnBlockRows rows, scratch g, u [n, F].
/// y may alias x (x is read by the first two products only).
template <Activation A, class W>
void gated_ffn_rows(ThreadPool& pool, const W& gate, const W& up, const W& down,
                    MatrixView<const float> x, MatrixView<float> y, float* g, float* u,
                    const HiddenDropout& drop = {}) {
  const std::size_t n = x.rows, f = gate.out;
  MOE_ASSERT(n <= kFfnBlockRows && y.rows == n);
  matmul(pool, x, gate, MatrixView<float>(g, n, f));
  matmul(pool, x, up, MatrixView<float>(u, n, f));
  gated_activation_parallel<A>(pool, g, u, n * f);
  if (drop.active()) drop.apply(g, n, f);
  matmul(pool, MatrixView<const float>(g, n, f), down, y);
}

/// forward_train of n <= kFfnBlockRows rows: g, u [n, F] (tape) receive the gate and up
/// projections before the activation; h [n, F] is scratch for act(g) * u. y may alias x.
template <Activation A, class W>
void gated_ffn_rows_train(ThreadPool& pool, const W& gate, const W& up, const W& down,
                          MatrixView<const float> x, MatrixView<float> y, float* g, float* u,
                          float* h, const HiddenDropout& drop = {}) {
  const std::size_t n = x.rows, f = gate.out;
  MOE_ASSERT(n <= kFfnBlockRows && y.rows == n);
  matmul(pool, x, gate, MatrixView<float>(g, n, f));
  matmul(pool, x, up, MatrixView<float>(u, n, f));
  gated_activation(A, g, u, h, n * f);
  if (drop.active()) drop.apply(h, n, f);
  matmul(pool, MatrixView<const float>(h, n, f), down, y);
}

/// rows[i, :] *= s[i].
inline void scale_rows(float* rows, std::size_t n, std::size_t cols, const float* s) noexcept {
  for (std::size_t i = 0; i < n; ++i) {
    float* r = rows + i * cols;
    const float v = s[i];
    for (std::size_t c = 0; c < cols; ++c) r[c] *= v;
  }
}

/// The three weight gradients of a gated FFN (WeightGrad: frozen when data is null).
struct GatedFfnGrads {
  WeightGrad gate, up, down;
};

/// Throws unless every gradient fits its weight (ConfigError for a trainable non-f32 weight).
template <class W>
void check_ffn_grads(const W& gate, const W& up, const W& down, const GatedFfnGrads& gr,
                     std::string_view component) {
  check_weight_grad(gate, gr.gate, component, "gate");
  check_weight_grad(up, gr.up, component, "up");
  check_weight_grad(down, gr.down, component, "down");
}

/// Backward of n <= kFfnBlockRows rows, given x, the saved g, u [n, F] and dy [n, D]: dx += dL/dx,
/// grads += dL/dW. s0, s1 are [n, F] scratch each. With row weights (MoELayer's combine weights)
/// the block's output is w_i * FFN(x_i): dy is the unweighted output gradient and rw.gbar
/// receives dL/dw_i = <dy_i, FFN(x_i)>. `drop` is the forward's hidden dropout.
template <Activation A, class W>
void gated_ffn_rows_backward(ThreadPool& pool, const W& gate, const W& up, const W& down,
                             MatrixView<const float> x, const float* g, const float* u,
                             MatrixView<const float> dy, MatrixView<float> dx,
                             const GatedFfnGrads& grads, float* s0, float* s1,
                             const RowWeights& rw = {}, const HiddenDropout& drop = {}) {
  const std::size_t n = x.rows, f = gate.out;
  MOE_ASSERT(n <= kFfnBlockRows && dy.rows == n && dx.rows == n);
  MatrixView<float> h(s0, n, f), dh(s1, n, f);
  // 1. down projection: dh = dy . Wdown^T; dWdown += h^T (w dy), h = act(g) * u (dropped out)
  //    recomputed; dL/dw_i = <dy_i, h_i Wdown> = <dh_i, h_i>.
  gated_activation(A, g, u, h.data, n * f);
  if (drop.active()) drop.apply(h.data, n, f);
  fill(dh.data, n * f, 0.0f);
  matmul_backward_input(pool, dy, down, dh);
  if (rw.gbar != nullptr) {
    for (std::size_t i = 0; i < n; ++i) rw.gbar[i] = dot(dh.row(i), h.row(i), f);
  }
  if (rw.w != nullptr) {
    scale_rows(h.data, n, f, rw.w);   // (w h)^T dy = h^T (w dy)
    scale_rows(dh.data, n, f, rw.w);  // the gradient of this row's hidden activation
  }
  matmul_backward_weight(pool, h, dy, grads.down);
  if (drop.active()) drop.apply(dh.data, n, f);  // the same mask and scale
  // 2. through the gated activation: dg into dh, du into h (no longer needed).
  gated_activation_backward(A, g, u, dh.data, dh.data, h.data, n * f);
  // 3. gate and up projections.
  matmul_backward_weight(pool, x, dh, grads.gate);
  matmul_backward_weight(pool, x, h, grads.up);
  matmul_backward_input(pool, dh, gate, dx);
  matmul_backward_input(pool, h, up, dx);
}

MOE_SIMD_DETAIL_END

MOE_SIMD_NAMESPACE_BEGIN

/// One gated FFN: gate [D, F], up [D, F], down [F, D] (logical [in, out] shapes).
template <class W, Activation A = Activation::kSilu>
class GatedFfn {
 public:
  using weight_type = W;
  using Result = FfnResult;
  static constexpr Activation activation = A;

  GatedFfn(const W& gate, const W& up, const W& down) : gate_(gate), up_(up), down_(down) {
    static_assert(is_weight_v<W>, "GatedFfn: W must be a weight view type (ops/weights.hpp)");
    validate_weight(gate_, "ffn", "gate");
    check_weight_shape(up_, "ffn", "up", gate_.in, gate_.out);
    check_weight_shape(down_, "ffn", "down", gate_.out, gate_.in);
  }

  [[nodiscard]] std::size_t dim() const noexcept { return gate_.in; }
  [[nodiscard]] std::size_t hidden() const noexcept { return gate_.out; }
  [[nodiscard]] const W& gate() const noexcept { return gate_; }
  [[nodiscard]] const W& up() const noexcept { return up_; }
  [[nodiscard]] const W& down() const noexcept { return down_; }
  /// Weight bytes one forward pass reads.
  [[nodiscard]] std::size_t weight_bytes() const noexcept {
    return gate_.bytes() + up_.bytes() + down_.bytes();
  }

  [[nodiscard]] std::size_t workspace_bytes(std::size_t max_tokens) const noexcept {
    const std::size_t rows = std::min(max_tokens, kFfnBlockRows);
    return 2 * Arena::bytes_for<float>(rows * hidden());
  }

  // ---- training (the contract of moe_types.hpp) ----
  using Grads = detail::GatedFfnGrads;
  /// The gate and up projections [T, F] before the activation (views into the tape).
  struct Saved {
    MatrixView<const float> gate, up;
  };

  [[nodiscard]] std::size_t tape_bytes(std::size_t max_tokens) const noexcept {
    return 2 * Arena::bytes_for<float>(max_tokens * hidden());
  }
  /// Throws unless `g` fits this FFN (ConfigError for a trainable non-f32 weight).
  void check_grads(const Grads& g) const { detail::check_ffn_grads(gate_, up_, down_, g, "ffn"); }
  [[nodiscard]] std::size_t training_workspace_bytes(std::size_t max_tokens) const noexcept {
    return workspace_bytes(max_tokens);
  }

  /// y = FFN(x) as forward(), keeping the gate and up projections in `tape` for backward().
  FfnResult forward_train(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> y,
                          Arena& scratch, Arena& tape, Saved& saved,
                          const ForwardOptions& /*opts*/ = {}) const {
    check_io(x, y);
    const std::size_t t_count = x.rows, f = hidden();
    float* g = tape.alloc<float>(t_count * f);
    float* u = tape.alloc<float>(t_count * f);
    saved = Saved{{g, t_count, f}, {u, t_count, f}};
    Arena::Scope scope(scratch);
    float* h = scratch.alloc<float>(std::min(t_count, kFfnBlockRows) * f);
    for (std::size_t r0 = 0; r0 < t_count; r0 += kFfnBlockRows) {
      const std::size_t n = std::min(kFfnBlockRows, t_count - r0);
      detail::gated_ffn_rows_train<A>(pool, gate_, up_, down_, x.rows_slice(r0, n),
                                      y.rows_slice(r0, n), g + r0 * f, u + r0 * f, h);
    }
    return {};
  }

  /// dx += dL/dx and grads += dL/dW, given the x of forward_train, its Saved record and dy.
  void backward(ThreadPool& pool, MatrixView<const float> x, const Saved& saved,
                MatrixView<const float> dy, MatrixView<float> dx, const Grads& grads,
                Arena& scratch, const BackwardOptions& /*opts*/ = {}) const {
    check_io(x, dx);
    check_io(dy, dx);
    check_grads(grads);
    const std::size_t t_count = x.rows, f = hidden();
    if (saved.gate.rows != t_count || saved.up.rows != t_count) {
      throw ShapeError("[ffn] backward() got " + std::to_string(t_count) +
                       " rows, forward_train() saved " + std::to_string(saved.gate.rows));
    }
    Arena::Scope scope(scratch);
    const std::size_t rows = std::min(t_count, kFfnBlockRows);
    float* s0 = scratch.alloc<float>(rows * f);
    float* s1 = scratch.alloc<float>(rows * f);
    for (std::size_t r0 = 0; r0 < t_count; r0 += kFfnBlockRows) {
      const std::size_t n = std::min(kFfnBlockRows, t_count - r0);
      detail::gated_ffn_rows_backward<A>(pool, gate_, up_, down_, x.rows_slice(r0, n),
                                         saved.gate.row(r0), saved.up.row(r0), dy.rows_slice(r0, n),
                                         dx.rows_slice(r0, n), grads, s0, s1);
    }
  }

  /// y[T, D] = FFN(x[T, D]). x and y must not alias. token_mask is ignored (every row computed).
  FfnResult forward(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> y, Arena& arena,
                    const ForwardOptions& /*opts*/ = {}) const {
    check_io(x, y);
    const std::size_t t_count = x.rows;
    if (t_count == 0) return {};
    Arena::Scope scope(arena);
    const std::size_t rows = std::min(t_count, kFfnBlockRows);
    float* g = arena.alloc<float>(rows * hidden());
    float* u = arena.alloc<float>(rows * hidden());
    for (std::size_t r0 = 0; r0 < t_count; r0 += kFfnBlockRows) {
      const std::size_t n = std::min(kFfnBlockRows, t_count - r0);
      detail::gated_ffn_rows<A>(pool, gate_, up_, down_, x.rows_slice(r0, n), y.rows_slice(r0, n),
                                g, u);
    }
    return {};
  }

 private:
  void check_io(MatrixView<const float> x, MatrixView<const float> y) const {
    if (x.cols != dim() || y.cols != dim() || x.rows != y.rows) {
      throw ShapeError("[ffn] input " + shape_str({x.rows, x.cols}) + " / output " +
                       shape_str({y.rows, y.cols}) + " do not match [T, " + std::to_string(dim()) +
                       "]");
    }
  }

  W gate_, up_, down_;
};

/// y_t = sigmoid(x_t . w) * FFN(x_t): a gated FFN scaled per token by a scalar gate, w [D, 1]
/// (logical [in = D, out = 1]). Qwen2-MoE's shared expert (HF Qwen2MoeSparseMoeBlock:
/// F.sigmoid(shared_expert_gate(x)) * shared_expert(x)), used as MoELayer's SharedT. Backward,
/// with f = FFN(x), s = sigmoid(z), z = x . w:  dFFN_out = s dy;  dz_t = <dy_t, f_t> s (1 - s);
/// dx += dz w^T;  dw += x^T dz.
template <class W, Activation A = Activation::kSilu>
class SigmoidGatedFfn {
 public:
  using weight_type = W;
  using Result = FfnResult;
  using ffn_type = GatedFfn<W, A>;

  SigmoidGatedFfn(const ffn_type& ffn, const W& gate) : ffn_(ffn), gate_(gate) {
    check_weight_shape(gate_, "shared_expert", "gate", ffn_.dim(), 1);
  }

  [[nodiscard]] std::size_t dim() const noexcept { return ffn_.dim(); }
  [[nodiscard]] std::size_t hidden() const noexcept { return ffn_.hidden(); }
  [[nodiscard]] const ffn_type& ffn() const noexcept { return ffn_; }
  [[nodiscard]] const W& gate() const noexcept { return gate_; }
  [[nodiscard]] std::size_t weight_bytes() const noexcept {
    return ffn_.weight_bytes() + gate_.bytes();
  }

  [[nodiscard]] std::size_t workspace_bytes(std::size_t max_tokens) const noexcept {
    return ffn_.workspace_bytes(max_tokens) + Arena::bytes_for<float>(max_tokens);
  }

  /// y[T, D] = sigmoid(x . w) * FFN(x). x and y must not alias.
  FfnResult forward(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> y, Arena& arena,
                    const ForwardOptions& opts = {}) const {
    ffn_.forward(pool, x, y, arena, opts);
    Arena::Scope scope(arena);
    float* s = arena.alloc<float>(x.rows);
    gates(pool, x, s);
    for (std::size_t t = 0; t < x.rows; ++t) scale(y.row(t), y.cols, s[t]);
    return {};
  }

  // ---- training (the contract of moe_types.hpp) ----
  struct Grads {
    detail::GatedFfnGrads ffn{};
    WeightGrad gate{};
  };
  /// The FFN's record, its output before the gate f [T, D] and the gates s [T] (tape views).
  struct Saved {
    typename ffn_type::Saved ffn{};
    MatrixView<const float> f{};
    const float* s = nullptr;
  };
  [[nodiscard]] std::size_t tape_bytes(std::size_t max_tokens) const noexcept {
    return ffn_.tape_bytes(max_tokens) + Arena::bytes_for<float>(max_tokens * dim()) +
           Arena::bytes_for<float>(max_tokens);
  }
  [[nodiscard]] std::size_t training_workspace_bytes(std::size_t max_tokens) const noexcept {
    return ffn_.training_workspace_bytes(max_tokens) + Arena::bytes_for<float>(max_tokens * dim()) +
           Arena::bytes_for<float>(max_tokens);
  }
  void check_grads(const Grads& g) const {
    ffn_.check_grads(g.ffn);
    check_weight_grad(gate_, g.gate, "shared_expert", "gate");
  }

  FfnResult forward_train(ThreadPool& pool, MatrixView<const float> x, MatrixView<float> y,
                          Arena& scratch, Arena& tape, Saved& saved,
                          const ForwardOptions& opts = {}) const {
    const std::size_t t_count = x.rows, d = dim();
    MatrixView<float> f(tape.alloc<float>(t_count * d), t_count, d);
    float* s = tape.alloc<float>(t_count);
    ffn_.forward_train(pool, x, f, scratch, tape, saved.ffn, opts);
    saved.f = f;
    saved.s = s;
    gates(pool, x, s);
    for (std::size_t t = 0; t < t_count; ++t) {
      for (std::size_t i = 0; i < d; ++i) y(t, i) = s[t] * f(t, i);
    }
    return {};
  }

  void backward(ThreadPool& pool, MatrixView<const float> x, const Saved& saved,
                MatrixView<const float> dy, MatrixView<float> dx, const Grads& grads,
                Arena& scratch, const BackwardOptions& opts = {}) const {
    check_grads(grads);
    const std::size_t t_count = x.rows, d = dim();
    if (saved.f.rows != t_count || dy.rows != t_count || dx.rows != t_count) {
      throw ShapeError("[shared_expert] backward() got " + std::to_string(t_count) +
                       " rows, forward_train() saved " + std::to_string(saved.f.rows));
    }
    Arena::Scope scope(scratch);
    MatrixView<float> df(scratch.alloc<float>(t_count * d), t_count, d);
    float* dz = scratch.alloc<float>(t_count);
    for (std::size_t t = 0; t < t_count; ++t) {
      const float st = saved.s[t];
      dz[t] = dot(dy.row(t), saved.f.row(t), d) * st * (1.0f - st);
      for (std::size_t i = 0; i < d; ++i) df(t, i) = st * dy(t, i);
    }
    ffn_.backward(pool, x, saved.ffn, df, dx, grads.ffn, scratch, opts);
    const MatrixView<const float> dzv(dz, t_count, 1);
    matmul_backward_weight(pool, x, dzv, grads.gate);
    matmul_backward_input(pool, dzv, gate_, dx);
  }

 private:
  /// s[t] = sigmoid(x_t . w).
  void gates(ThreadPool& pool, MatrixView<const float> x, float* s) const {
    matmul(pool, x, gate_, MatrixView<float>(s, x.rows, 1));
    for (std::size_t t = 0; t < x.rows; ++t) s[t] = 1.0f / (1.0f + std::exp(-s[t]));
  }

  ffn_type ffn_;
  W gate_;
};

/// E gated FFNs: gate [E, D, F], up [E, D, F], down [E, F, D], stacked or separately stored.
template <class W, Activation A = Activation::kSilu>
class Expert {
 public:
  using weight_type = W;
  static constexpr Activation activation = A;

  Expert(const WeightStack<W>& gate, const WeightStack<W>& up, const WeightStack<W>& down)
      : gate_(gate), up_(up), down_(down) {
    static_assert(is_weight_v<W>, "Expert: W must be a weight view type (ops/weights.hpp)");
    if (gate_.count == 0) throw ShapeError("[expert] tensor 'gate' has no experts (count 0)");
    check_weight_stack(gate_, "expert", "gate", gate_.count, gate_.in(), gate_.out());
    check_weight_stack(up_, "expert", "up", gate_.count, gate_.in(), gate_.out());
    check_weight_stack(down_, "expert", "down", gate_.count, gate_.out(), gate_.in());
  }

  [[nodiscard]] std::size_t n_experts() const noexcept { return gate_.count; }
  [[nodiscard]] std::size_t dim() const noexcept { return gate_.in(); }
  [[nodiscard]] std::size_t hidden() const noexcept { return gate_.out(); }
  [[nodiscard]] const WeightStack<W>& gate() const noexcept { return gate_; }
  [[nodiscard]] const WeightStack<W>& up() const noexcept { return up_; }
  [[nodiscard]] const WeightStack<W>& down() const noexcept { return down_; }
  /// Weight bytes of one expert (gate + up + down, scales included).
  [[nodiscard]] std::size_t bytes_per_expert() const noexcept {
    return gate_.first.bytes() + up_.first.bytes() + down_.first.bytes();
  }
  /// Expert e as a standalone FFN (views only).
  [[nodiscard]] GatedFfn<W, A> operator[](std::size_t e) const {
    return GatedFfn<W, A>(gate_[e], up_[e], down_[e]);
  }

  /// Scratch floats compute() needs per call: g and u, each rows * F.
  [[nodiscard]] std::size_t scratch_floats(std::size_t rows) const noexcept {
    return rows * hidden();
  }

  /// y[n, D] = FFN_e(x[n, D]) for n <= kFfnBlockRows rows; g, u are [n, F] scratch each. y may
  /// alias x. `drop`: dropout on the hidden activation (training).
  void compute(ThreadPool& pool, std::size_t e, MatrixView<const float> x, MatrixView<float> y,
               float* g, float* u, const HiddenDropout& drop = {}) const {
    MOE_ASSERT(e < n_experts());
    detail::gated_ffn_rows<A>(pool, gate_[e], up_[e], down_[e], x, y, g, u, drop);
  }

  // ---- training (MoELayer calls these per block of gathered rows) ----
  /// Gradient stacks mirroring the weights (grad_like(); frozen stacks have no data).
  struct Grads {
    WeightStack<WeightGrad> gate, up, down;
    /// Expert e's three gradients.
    [[nodiscard]] detail::GatedFfnGrads operator[](std::size_t e) const noexcept {
      return {gate[e], up[e], down[e]};
    }
  };

  /// Throws unless `g` fits these experts (ConfigError for a trainable non-f32 weight).
  void check_grads(const Grads& g) const {
    check_stack_grad(gate_, g.gate, "expert", "gate");
    check_stack_grad(up_, g.up, "expert", "up");
    check_stack_grad(down_, g.down, "expert", "down");
  }

  /// compute() that keeps the gate and up projections in g, u [n, F] (the tape); h is [n, F]
  /// scratch.
  void compute_train(ThreadPool& pool, std::size_t e, MatrixView<const float> x,
                     MatrixView<float> y, float* g, float* u, float* h,
                     const HiddenDropout& drop = {}) const {
    MOE_ASSERT(e < n_experts());
    detail::gated_ffn_rows_train<A>(pool, gate_[e], up_[e], down_[e], x, y, g, u, h, drop);
  }

  /// Backward of compute_train for rows x [n, D] with their saved g, u and output gradient dy:
  /// dx [n, D] += dL/dx, grads[e] += dL/dW, rw as in detail::gated_ffn_rows_backward; s0, s1 are
  /// [n, F] scratch.
  void backward_rows(ThreadPool& pool, std::size_t e, MatrixView<const float> x, const float* g,
                     const float* u, MatrixView<const float> dy, MatrixView<float> dx,
                     const Grads& grads, float* s0, float* s1, const RowWeights& rw,
                     const HiddenDropout& drop = {}) const {
    MOE_ASSERT(e < n_experts());
    detail::gated_ffn_rows_backward<A>(pool, gate_[e], up_[e], down_[e], x, g, u, dy, dx, grads[e],
                                       s0, s1, rw, drop);
  }

 private:
  WeightStack<W> gate_, up_, down_;
};

MOE_SIMD_NAMESPACE_END
