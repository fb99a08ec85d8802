// moe/ops/weights.hpp: non-owning views of weight matrices, in the layouts real checkpoints use.
//
// Every weight view describes a linear map from `in` features to `out` features, y = x . W.
// The bytes are never copied or repacked: the views point straight into a memory-mapped file or
// into a Buffer owned by the caller.
//
//   DenseWeight<float> / DenseWeight<bf16>
//       Layout::kInOut : data is [in, out] row-major  (JAX / Haiku, Grok-1's files): W[i, o]
//       Layout::kOutIn : data is [out, in] row-major  (PyTorch / HF nn.Linear)    : W[o, i]
//   Int8Weight (Grok-1 "QuantizedWeight8bit")
//       weight int8 [in, out] row-major, scales bf16 [blocks, out], blocks = 1 or 8 (any divisor
//       of `in` is accepted). Row i uses scale row i / (in / blocks). Dequantization is exact:
//       w = float(int8) * float(scale) in f32 (8-bit x 8-bit significands fit in 24 bits).
//       `scales` may be at ANY byte address (Grok-1's files put them at odd offsets and they are
//       read in place): every reader loads them with load_bf16 or unaligned SIMD loads.
//       `ld` (0 = out) is the row stride of both weight and scales, in elements: a column slab
//       [:, c0, c0 + out) of a wider [in, ld] matrix is a view too (data + c0, scales + c0), so a
//       tensor-parallel shard reads its columns in place (moe/mpi/shard.hpp). The forward
//       products (matmul, matvec, Int8ActWeight) honour it; the backward products
//       (matmul_grad.hpp) need a contiguous weight (ld 0 or out).
//   Int8ActWeight (opt-in, approximate)
//       the same memory as an Int8Weight, computed with int8 ACTIVATIONS: matmul quantises each
//       token's activations per scale block to int8 and accumulates exact int32 dot products
//       (AVX-512 VNNI). A distinct type, so every component templated over W gets it by type and
//       exactness stays the default; see moe/ops/matmul.hpp.
//
// Stacks of experts are WeightStack<W>: either one [E, in, out] tensor (expert e is a pointer
// offset from expert 0: Grok-1's files) or one view per separately stored expert (Hugging Face
// files).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include <moe/core/bf16.hpp>
#include <moe/core/error.hpp>

namespace moe {

/// Memory layout of a dense weight matrix.
enum class Layout : std::uint8_t {
  kInOut,  ///< [in, out] row-major: JAX/Haiku (Grok-1 checkpoint files)
  kOutIn,  ///< [out, in] row-major: PyTorch nn.Linear
};

inline constexpr std::string_view layout_name(Layout l) noexcept {
  return l == Layout::kInOut ? "[in, out]" : "[out, in]";
}

/// Dense f32 or bf16 weight view.
template <class T>
struct DenseWeight {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "DenseWeight holds float or bf16");
  using element_type = T;

  const T* data = nullptr;
  std::size_t in = 0;
  std::size_t out = 0;
  Layout layout = Layout::kInOut;

  /// Element W[i, o] of the logical [in, out] matrix, as float (for reference code and tests).
  [[nodiscard]] float at(std::size_t i, std::size_t o) const noexcept {
    const T v = layout == Layout::kInOut ? data[i * out + o] : data[o * in + i];
    if constexpr (std::is_same_v<T, float>) {
      return v;
    } else {
      return v.to_float();
    }
  }
  /// Bytes of weight data read by one full pass.
  [[nodiscard]] std::size_t bytes() const noexcept { return in * out * sizeof(T); }
};

using F32Weight = DenseWeight<float>;
using BF16Weight = DenseWeight<bf16>;

/// Grok-1 int8 weight: int8 [in, out] with bf16 scales [blocks, out].
struct Int8Weight {
  const std::int8_t* data = nullptr;
  const bf16* scales = nullptr;  ///< any byte address: read only through load_bf16 / simd::widen
  std::size_t in = 0;
  std::size_t out = 0;
  std::size_t blocks = 1;  ///< rows of `scales`; row i uses scale row i / block_rows()
  std::size_t ld = 0;      ///< row stride of data and scales in elements (0 = out: contiguous)

  [[nodiscard]] std::size_t block_rows() const noexcept { return in / blocks; }
  /// Distance between rows i and i + 1 (of data, and of scales), in elements.
  [[nodiscard]] std::size_t row_stride() const noexcept { return ld == 0 ? out : ld; }
  /// Exact dequantized W[i, o].
  [[nodiscard]] float at(std::size_t i, std::size_t o) const noexcept {
    const std::size_t s = row_stride();
    return static_cast<float>(data[i * s + o]) * load_bf16(scales + (i / block_rows()) * s + o);
  }
  [[nodiscard]] std::size_t bytes() const noexcept {
    return in * out + blocks * out * sizeof(bf16);
  }
};

/// An Int8Weight computed with int8-quantised activations (see the header comment).
struct Int8ActWeight : Int8Weight {
  Int8ActWeight() = default;
  explicit Int8ActWeight(const Int8Weight& w) noexcept : Int8Weight(w) {}
};

/// True for the int8 weight types (Int8Weight, Int8ActWeight).
template <class W>
inline constexpr bool is_int8_weight_v =
    std::is_same_v<W, Int8Weight> || std::is_same_v<W, Int8ActWeight>;

/// Gradient of a weight, for training: mutable f32 with the logical [in, out] map and the memory
/// layout of the F32Weight it belongs to, so that an optimizer walks weight and gradient with one
/// index. Backward passes ADD into it (llm.c style: zero the gradients once per step). data ==
/// nullptr marks a frozen weight: backward still passes the gradient to the layer's input but
/// computes nothing for the weight (bf16 and int8 weights are always frozen).
struct WeightGrad {
  float* data = nullptr;
  std::size_t in = 0;
  std::size_t out = 0;
  Layout layout = Layout::kInOut;

  [[nodiscard]] bool frozen() const noexcept { return data == nullptr; }
  /// Element dL/dW[i, o] of the logical [in, out] matrix.
  [[nodiscard]] float& at(std::size_t i, std::size_t o) const noexcept {
    return layout == Layout::kInOut ? data[i * out + o] : data[o * in + i];
  }
  /// The gradient view of a weight stored at `d` with w's shape and layout.
  [[nodiscard]] static WeightGrad like(float* d, const DenseWeight<float>& w) noexcept {
    return WeightGrad{d, w.in, w.out, w.layout};
  }
};

template <class W>
struct is_weight : std::false_type {};
template <class T>
struct is_weight<DenseWeight<T>> : std::true_type {};
template <>
struct is_weight<Int8Weight> : std::true_type {};
template <>
struct is_weight<Int8ActWeight> : std::true_type {};
template <class W>
inline constexpr bool is_weight_v = is_weight<W>::value;

/// Human-readable weight type, e.g. "f32 [in, out]", "int8 [in, out] x bf16 scales [8, out]".
template <class W>
std::string weight_type_name(const W& w) {
  if constexpr (is_int8_weight_v<W>) {
    return "int8 [in, out] x bf16 scales [" + std::to_string(w.blocks) + ", out]" +
           (std::is_same_v<W, Int8ActWeight> ? " (int8 activations)" : "");
  } else if constexpr (std::is_same_v<typename W::element_type, float>) {
    return "f32 " + std::string(layout_name(w.layout));
  } else {
    return "bf16 " + std::string(layout_name(w.layout));
  }
}

/// Throws ShapeError unless `w` is a well-formed [in, out] view (non-null, non-empty, blocks
/// dividing `in`). `component` and `name` go into the message.
template <class W>
void validate_weight(const W& w, std::string_view component, std::string_view name) {
  const std::string where = "[" + std::string(component) + "] weight '" + std::string(name) + "'";
  if (w.data == nullptr) throw ShapeError(where + " has no data");
  if (w.in == 0 || w.out == 0) {
    throw ShapeError(where + " has empty shape " + shape_str({w.in, w.out}));
  }
  if constexpr (is_int8_weight_v<W>) {
    if (w.scales == nullptr) throw ShapeError(where + " has no scales");
    if (w.blocks == 0 || w.in % w.blocks != 0) {
      throw ShapeError(where + " has scales " + shape_str({w.blocks, w.out}) +
                       " whose row count does not divide in = " + std::to_string(w.in));
    }
    if (w.row_stride() < w.out) {
      throw ShapeError(where + " has row stride " + std::to_string(w.ld) +
                       " < out = " + std::to_string(w.out));
    }
  }
}

/// Throws ShapeError unless w is [in, out].
template <class W>
void check_weight_shape(const W& w, std::string_view component, std::string_view name,
                        std::size_t in, std::size_t out) {
  validate_weight(w, component, name);
  check_shape(component, name, {w.in, w.out}, {in, out});
}

/// Throws unless `g` can receive the gradient of `w`: a frozen `g` always can; otherwise `w` must
/// be f32 (ConfigError: bf16 and int8 weights are frozen) and `g` must have its shape and layout
/// (ShapeError). `component` and `name` go into the message.
template <class W>
void check_weight_grad(const W& w, const WeightGrad& g, std::string_view component,
                       std::string_view name) {
  if (g.frozen()) return;
  const std::string where = "[" + std::string(component) + "] ";
  if constexpr (!std::is_same_v<W, DenseWeight<float>>) {
    throw ConfigError(where + "weight '" + std::string(name) + "' is " + weight_type_name(w) +
                      ": only f32 weights are trainable (pass a frozen WeightGrad)");
  } else {
    if (g.in != w.in || g.out != w.out || g.layout != w.layout) {
      throw ShapeError(where + "gradient of '" + std::string(name) + "' has shape " +
                       shape_str({g.in, g.out}) + " " + std::string(layout_name(g.layout)) +
                       ", expected " + shape_str({w.in, w.out}) + " " +
                       std::string(layout_name(w.layout)));
    }
  }
}

/// E experts of one shape: either stored back to back (one [E, in, out] tensor, or [E, out, in],
/// scales [E, blocks, out]: Grok-1's files) or as E separate tensors (Hugging Face checkpoints:
/// `experts.E.w1.weight`, one [out, in] tensor per expert). Both are views; nothing is copied.
///
///   WeightStack<W>{expert0, n}        stacked: expert e is expert 0 plus a pointer offset
///   WeightStack<W>::of(views)         separate: expert e is views[e] (the span must outlive
///                                     the stack; every view must have expert 0's shape/layout)
///
/// The same type holds gradients (WeightStack<WeightGrad>, see grad_like()): a frozen stack has
/// no data.
template <class W>
struct WeightStack {
  W first{};                 ///< expert 0 (its shape and layout are every expert's)
  std::size_t count = 0;     ///< number of experts E
  const W* views = nullptr;  ///< separate storage: one view per expert; nullptr = stacked

  /// A stack over separately stored experts (views[e] is expert e).
  [[nodiscard]] static WeightStack of(std::span<const W> v) noexcept {
    return {v.empty() ? W{} : v.front(), v.size(), v.empty() ? nullptr : v.data()};
  }

  /// View of expert e (pointer arithmetic, or the e-th separate view). A stacked int8 stack
  /// with a row stride is a column slab of every expert ([E, in, ld] stored).
  [[nodiscard]] W operator[](std::size_t e) const noexcept {
    if (views != nullptr) return views[e];
    W w = first;
    if constexpr (is_int8_weight_v<W>) {
      if (w.data != nullptr) w.data += e * first.in * first.row_stride();
      w.scales += e * first.blocks * first.row_stride();
    } else {
      if (w.data != nullptr) w.data += e * first.in * first.out;
    }
    return w;
  }
  [[nodiscard]] bool separate() const noexcept { return views != nullptr; }
  [[nodiscard]] std::size_t in() const noexcept { return first.in; }
  [[nodiscard]] std::size_t out() const noexcept { return first.out; }
};

/// Throws unless every expert's gradient in `g` fits that expert of `w` (check_weight_grad). A
/// stack without data or views is frozen; a separate stack may freeze single experts.
template <class W>
void check_stack_grad(const WeightStack<W>& w, const WeightStack<WeightGrad>& g,
                      std::string_view component, std::string_view name) {
  if (g.first.data == nullptr && g.views == nullptr) return;
  if (g.count != w.count) {
    throw ShapeError("[" + std::string(component) + "] gradient of '" + std::string(name) +
                     "' has " + std::to_string(g.count) + " experts, expected " +
                     std::to_string(w.count));
  }
  for (std::size_t e = 0; e < w.count; ++e) {
    check_weight_grad(w[e], g[e], component, std::string(name) + "[" + std::to_string(e) + "]");
  }
}

/// The gradient stack of an f32 weight stack, stored stacked at `d` ([E, in, out] in the
/// weights' layout). `d == nullptr` gives a frozen stack.
[[nodiscard]] inline WeightStack<WeightGrad> grad_like(float* d,
                                                       const WeightStack<DenseWeight<float>>& w) {
  return {WeightGrad{d, w.first.in, w.first.out, w.first.layout}, w.count};
}

/// Throws ShapeError unless every expert of `s` is a well-formed view of expert 0's shape, layout
/// and scale blocks, and the stack holds `count` experts of logical shape [in, out].
template <class W>
void check_weight_stack(const WeightStack<W>& s, std::string_view component, std::string_view name,
                        std::size_t count, std::size_t in, std::size_t out) {
  const std::string where = "[" + std::string(component) + "] tensor '" + std::string(name) + "'";
  if (s.count == 0) throw ShapeError(where + " has no experts (count 0)");
  validate_weight(s.first, component, name);
  if (s.count != count || s.first.in != in || s.first.out != out) {
    throw ShapeError(where + " has shape " + shape_str({s.count, s.first.in, s.first.out}) +
                     ", expected " + shape_str({count, in, out}) + " ([experts, in, out])");
  }
  if (!s.separate()) return;
  for (std::size_t e = 0; e < s.count; ++e) {
    const W& w = s.views[e];
    const std::string ew = std::string(name) + "[" + std::to_string(e) + "]";
    validate_weight(w, component, ew);
    bool same = w.in == in && w.out == out;
    if constexpr (is_int8_weight_v<W>) {
      same = same && w.blocks == s.first.blocks;
    } else {
      same = same && w.layout == s.first.layout;
    }
    if (!same) {
      throw ShapeError(where + " expert " + std::to_string(e) + " is " + weight_type_name(w) + " " +
                       shape_str({w.in, w.out}) + ", expert 0 is " + weight_type_name(s.first) +
                       " " + shape_str({in, out}) +
                       " (every expert must have the same shape and layout)");
    }
  }
}

}  // namespace moe
