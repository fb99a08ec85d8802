// moe/models/tensor_table.hpp: the vocabulary of a model family's tensor table.
//
// A family describes its checkpoint tensors in ONE constexpr table (grok1_tensors.hpp is the
// first). Each entry (TensorSpec) gives, for one tensor slot:
//
//   path     the name in the checkpoint; "{layer}" stands for the layer number
//   storage  how the file stores it (Storage)
//   shape    its stored shape, a function of the family's Config
//   field    the member of the family's weight struct it binds to (Member)
//
// Everything else is a loop over the table: validating a checkpoint's tensors, naming them,
// ordering the files, binding views to the weight struct and validating a weight struct that was
// filled by hand. This header holds the model-independent parts of those loops: the shape type,
// the field pointer, path expansion, binding a stored tensor to a view, and checking a view
// against its table shape. docs/checkpoint-format.md, "Adding a model", walks through it.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <moe/core/bf16.hpp>
#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/ops/embedding.hpp>
#include <moe/ops/weights.hpp>

namespace moe::models {

/// How a checkpoint stores a tensor.
enum class Storage : std::uint8_t {
  kF32,         ///< a plain float32 array
  kInt8Scaled,  ///< int8 weight [..., in, out] + bf16 scales [..., blocks, out] (Grok-1's
                ///< QuantizedWeight8bit; `blocks` divides `in`)
};

inline constexpr std::string_view storage_name(Storage s) noexcept {
  return s == Storage::kF32 ? "float32" : "int8 + bf16 scales";
}

/// A stored tensor shape (rank <= 4), usable in constexpr tables.
struct Shape {
  std::array<std::size_t, 4> dims{};
  std::size_t rank = 0;

  constexpr Shape() = default;
  constexpr Shape(std::initializer_list<std::size_t> d) : rank(d.size()) {
    std::size_t k = 0;
    for (std::size_t v : d) dims[k++] = v;
  }
  [[nodiscard]] std::span<const std::size_t> span() const noexcept { return {dims.data(), rank}; }
  [[nodiscard]] std::vector<std::size_t> vector() const {
    return {dims.data(), dims.data() + rank};
  }
};

/// A pointer to the member of struct S that a tensor binds to; its type is one of Ts (the view
/// types of the family's weight struct). visit() calls f(s.*member) with the member's own type.
template <class S, class... Ts>
class Member {
 public:
  template <class T>
  constexpr Member(T S::*member) : m_(std::in_place_index<index_of<T>()>, member) {}  // NOLINT

  template <class F>
  decltype(auto) visit(S& s, F&& f) const {
    return std::visit([&](auto m) -> decltype(auto) { return f(s.*m); }, m_);
  }
  template <class F>
  decltype(auto) visit(const S& s, F&& f) const {
    return std::visit([&](auto m) -> decltype(auto) { return f(s.*m); }, m_);
  }

 private:
  template <class T>
  static constexpr std::size_t index_of() {  // the first Ts that is T (Ts may repeat a type)
    constexpr bool kSame[] = {std::is_same_v<T, Ts>...};
    for (std::size_t i = 0; i < sizeof...(Ts); ++i) {
      if (kSame[i]) return i;
    }
    return sizeof...(Ts);  // not a view type of this table: a compile error above
  }
  std::variant<Ts S::*...> m_;
};

/// One tensor slot of a family's table.
template <class Config, class Field>
struct TensorSpec {
  std::string_view path;          ///< checkpoint name; "{layer}" = the layer number
  Storage storage;                ///< how the file stores it
  Shape (*shape)(const Config&);  ///< stored shape for a config
  Field field;                    ///< the weight-struct member it binds to
};

/// `pattern` with "{layer}" replaced by `layer`, e.g. "transformer/decoder_layer_7/router/w".
inline std::string tensor_path(std::string_view pattern, std::size_t layer) {
  constexpr std::string_view kLayer = "{layer}";
  const std::size_t at = pattern.find(kLayer);
  if (at == std::string_view::npos) return std::string(pattern);
  return std::string(pattern.substr(0, at)) + std::to_string(layer) +
         std::string(pattern.substr(at + kLayer.size()));
}

// ---- binding: a stored tensor -> a view ---------------------------------------------------------

/// A tensor as a reader found it, with its data aligned for its element type (or, with
/// `aligned` false, at any byte address: only an EmbeddingTable binds such data).
struct StoredTensor {
  std::string where;  ///< how messages name it, e.g. "'DIR/ckpt-0/tensor00002_000' (name)"
  Storage storage = Storage::kF32;
  std::vector<std::size_t> shape;  ///< of the array (of the int8 weight for kInt8Scaled)
  const void* data = nullptr;      ///< float or int8 elements
  const bf16* scales = nullptr;    ///< kInt8Scaled: bf16 [..., blocks, out], any byte address
  std::size_t blocks = 1;          ///< kInt8Scaled: scale rows per matrix
  Layout layout = Layout::kInOut;  ///< 2-D f32 weights: how the file orders the matrix
  bool aligned = true;             ///< data is aligned for its element type
};

namespace detail {

[[noreturn]] inline void bad_binding(const StoredTensor& t, const char* view) {
  throw ShapeError("[models] " + t.where + " holds " + std::string(storage_name(t.storage)) + " " +
                   shape_str(t.shape) + ", which cannot be viewed as " + view);
}

/// Views other than EmbeddingTable dereference typed pointers: their data must be aligned.
inline void require_aligned(const StoredTensor& t, const char* view) {
  if (!t.aligned) {
    throw ShapeError("[models] " + t.where + " is not aligned for its element type in the file, " +
                     "so it cannot be viewed in place as " + view);
  }
}

}  // namespace detail

/// An f32 [V, D] table read in place (any byte alignment).
inline void bind(EmbeddingTable& v, const StoredTensor& t) {
  if (t.storage != Storage::kF32 || t.shape.size() != 2) {
    detail::bad_binding(t, "an f32 embedding table");
  }
  v = EmbeddingTable::f32(t.data, t.shape[0], t.shape[1]);
}
inline void bind(MatrixView<const float>& v, const StoredTensor& t) {
  if (t.storage != Storage::kF32 || t.shape.size() != 2) detail::bad_binding(t, "an f32 matrix");
  detail::require_aligned(t, "an f32 matrix");
  v = MatrixView<const float>(static_cast<const float*>(t.data), t.shape[0], t.shape[1]);
}
inline void bind(std::span<const float>& v, const StoredTensor& t) {
  if (t.storage != Storage::kF32) detail::bad_binding(t, "an f32 vector");
  detail::require_aligned(t, "an f32 vector");
  std::size_t n = 1;
  for (std::size_t d : t.shape) n *= d;
  v = {static_cast<const float*>(t.data), n};
}
inline void bind(F32Weight& v, const StoredTensor& t) {
  if (t.storage != Storage::kF32 || t.shape.size() != 2) detail::bad_binding(t, "an f32 weight");
  detail::require_aligned(t, "an f32 weight");
  const bool in_out = t.layout == Layout::kInOut;
  v = F32Weight{static_cast<const float*>(t.data), t.shape[in_out ? 0 : 1], t.shape[in_out ? 1 : 0],
                t.layout};
}
inline void bind(Int8Weight& v, const StoredTensor& t) {
  if (t.storage != Storage::kInt8Scaled || t.shape.size() != 2) {
    detail::bad_binding(t, "an int8 weight");
  }
  detail::require_aligned(t, "an int8 weight");
  v = Int8Weight{static_cast<const std::int8_t*>(t.data), t.scales, t.shape[0], t.shape[1],
                 t.blocks};
}
inline void bind(WeightStack<Int8Weight>& v, const StoredTensor& t) {
  if (t.storage != Storage::kInt8Scaled || t.shape.size() != 3) {
    detail::bad_binding(t, "a stack of int8 weights");
  }
  detail::require_aligned(t, "a stack of int8 weights");
  v.first = Int8Weight{static_cast<const std::int8_t*>(t.data), t.scales, t.shape[1], t.shape[2],
                       t.blocks};
  v.count = t.shape[0];
}

// ---- checking a view against its table shape ---------------------------------------------------

/// Throws ShapeError "[component] tensor 'name' ..." unless the view is present, well formed and
/// has the stored shape `want`.
inline void check_view(const MatrixView<const float>& v, std::string_view component,
                       const std::string& name, const Shape& want) {
  const std::string where = "[" + std::string(component) + "] tensor '" + name + "'";
  if (v.data == nullptr) throw ShapeError(where + " is missing");
  if (v.stride != v.cols) throw ShapeError(where + " must be contiguous");
  const std::size_t got[] = {v.rows, v.cols};
  check_shape(component, name, got, want.span());
}
inline void check_view(const EmbeddingTable& v, std::string_view component, const std::string& name,
                       const Shape& want) {
  const std::span<const std::size_t> w = want.span();
  if (w.size() != 2) {
    throw ShapeError("[" + std::string(component) + "] tensor '" + name +
                     "' is an embedding table " + "but its table shape " +
                     shape_str(want.vector()) + " is not 2-D");
  }
  v.validate(component, name, w[0], w[1]);
}
inline void check_view(std::span<const float> v, std::string_view component,
                       const std::string& name, const Shape& want) {
  if (v.data() == nullptr) {
    throw ShapeError("[" + std::string(component) + "] tensor '" + name + "' is missing");
  }
  const std::size_t got[] = {v.size()};
  check_shape(component, name, got, want.span());
}
template <class W>
requires is_weight_v<W>
void check_view(const W& w, std::string_view component, const std::string& name,
                const Shape& want) {
  validate_weight(w, component, name);
  // The table's shape rules describe the logical [in, out] matrix; a view in another memory
  // layout (an in-memory [out, in] weight) is checked by its logical shape.
  const std::size_t got[] = {w.in, w.out};
  check_shape(component, name, got, want.span());
}
template <class W>
void check_view(const WeightStack<W>& s, std::string_view component, const std::string& name,
                const Shape& want) {
  validate_weight(s.first, component, name);
  const std::size_t got[] = {s.count, s.in(), s.out()};
  check_shape(component, name, got, want.span());
}

}  // namespace moe::models
