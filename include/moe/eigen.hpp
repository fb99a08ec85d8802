// moe/eigen.hpp: Eigen interop (optional: link the moe::eigen target, which brings Eigen 3.4).
//
// moe's layers take non-owning views (MatrixView for activations, DenseWeight for weights).
// This header turns Eigen matrices into those views without copying, and runs a layer on Eigen
// matrices:
//
//   Eigen::MatrixXf w1 = ...;                        // [D, F] like any math text: y = x . W
//   moe::F32Weight gate = moe::eigen::weight(w1);    // column-major [in, out] -> Layout::kOutIn
//   moe::eigen::RowMatrix x = ..., y(T, D);          // activations: one row per token
//   layer.forward(pool, moe::eigen::view(x), moe::eigen::view(y), arena);
//   moe::eigen::RowMatrix z = moe::eigen::forward(layer, pool, x, arena);   // allocating form
//
// Weights: a float matrix W of logical shape [in, out] (rows = in) in Eigen's default
// column-major storage has the memory of PyTorch's [out, in] nn.Linear weight, so it becomes an
// F32Weight with Layout::kOutIn; a row-major one is [in, out] (Layout::kInOut). Any Eigen
// expression with direct access and unit inner stride works (Matrix, Map, Ref, Block of rows);
// anything else (an expression, a strided view) is rejected at compile time or, for a runtime
// stride, with a ShapeError: the view must point at the matrix's own storage, never at a
// temporary copy.
//
// Activations must be row-major (moe's rows are tokens): view() of a column-major matrix with
// more than one column is a compile-time error. Map a result back with eigen::map(view).
#pragma once

#include <cstddef>
#include <type_traits>

// GCC 12 raises bogus -Wmaybe-uninitialized inside Eigen's AVX-512 kernels (GCC bug 105593, as
// for xsimd in moe/config.hpp).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <Eigen/Core>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#include <moe/config.hpp>
#include <moe/core/arena.hpp>
#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/ops/weights.hpp>

namespace moe::eigen {

/// Row-major float matrix: the natural owner of moe activations ([tokens, features]).
using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
/// A mutable / read-only map of a moe view (outer stride = the view's row stride).
using RowMap = Eigen::Map<RowMatrix, Eigen::Unaligned, Eigen::OuterStride<>>;
using ConstRowMap = Eigen::Map<const RowMatrix, Eigen::Unaligned, Eigen::OuterStride<>>;

namespace detail {
template <class Derived>
constexpr void check_float_direct() {
  static_assert(std::is_same_v<typename Derived::Scalar, float>, "moe::eigen: float matrices only");
  static_assert((Derived::Flags & Eigen::DirectAccessBit) != 0,
                "moe::eigen: the matrix must have direct access (a Matrix, Map, Ref or Block), "
                "not an expression: evaluate it into a matrix first");
}
template <class Derived>
void check_unit_inner_stride(const Eigen::DenseBase<Derived>& m, const char* what) {
  if (m.innerStride() != 1) {
    throw ShapeError(std::string("[eigen] ") + what + " has inner stride " +
                     std::to_string(m.innerStride()) + ", expected 1 (contiguous rows)");
  }
}
}  // namespace detail

/// Read-only activation view of a row-major matrix (rows = tokens).
template <class Derived>
MatrixView<const float> view(const Eigen::DenseBase<Derived>& m) {
  detail::check_float_direct<Derived>();
  static_assert(Derived::IsRowMajor || Derived::ColsAtCompileTime == 1,
                "moe::eigen::view: activations must be row-major (one row per token)");
  detail::check_unit_inner_stride(m, "activation");
  const auto rows = static_cast<std::size_t>(m.rows()), cols = static_cast<std::size_t>(m.cols());
  const auto stride = Derived::IsRowMajor ? static_cast<std::size_t>(m.outerStride()) : cols;
  return {m.derived().data(), rows, cols, stride};
}

/// Mutable activation view of a row-major matrix (Matrix, Map, Ref or a block of rows).
template <class Derived>
MatrixView<float> view(Eigen::DenseBase<Derived>& m) {
  detail::check_float_direct<Derived>();
  static_assert(Derived::IsRowMajor || Derived::ColsAtCompileTime == 1,
                "moe::eigen::view: activations must be row-major (one row per token)");
  static_assert((Derived::Flags & Eigen::LvalueBit) != 0, "moe::eigen::view: read-only matrix");
  detail::check_unit_inner_stride(m, "activation");
  const auto rows = static_cast<std::size_t>(m.rows()), cols = static_cast<std::size_t>(m.cols());
  const auto stride = Derived::IsRowMajor ? static_cast<std::size_t>(m.outerStride()) : cols;
  return {m.derived().data(), rows, cols, stride};
}

/// The weight of y = x . W for an Eigen matrix W [in, out]: column-major -> Layout::kOutIn,
/// row-major -> Layout::kInOut. The storage must be contiguous (outer stride = inner size).
template <class Derived>
F32Weight weight(const Eigen::DenseBase<Derived>& w) {
  detail::check_float_direct<Derived>();
  detail::check_unit_inner_stride(w, "weight");
  const auto in = static_cast<std::size_t>(w.rows()), out = static_cast<std::size_t>(w.cols());
  const auto inner = static_cast<std::size_t>(Derived::IsRowMajor ? out : in);
  if (static_cast<std::size_t>(w.outerStride()) != inner && in > 1 && out > 1) {
    throw ShapeError("[eigen] weight [" + std::to_string(in) + ", " + std::to_string(out) +
                     "] has outer stride " + std::to_string(w.outerStride()) +
                     ", expected a contiguous matrix (" + std::to_string(inner) + ")");
  }
  return F32Weight{w.derived().data(), in, out,
                   Derived::IsRowMajor ? Layout::kInOut : Layout::kOutIn};
}

/// The gradient view (WeightGrad) of a mutable Eigen matrix, in the same layout as weight().
template <class Derived>
WeightGrad weight_grad(Eigen::DenseBase<Derived>& g) {
  const F32Weight w = weight(g);
  return WeightGrad{g.derived().data(), w.in, w.out, w.layout};
}

/// An Eigen map of a moe view (no copy).
inline RowMap map(MatrixView<float> v) {
  return RowMap(v.data, static_cast<Eigen::Index>(v.rows), static_cast<Eigen::Index>(v.cols),
                Eigen::OuterStride<>(static_cast<Eigen::Index>(v.stride)));
}
inline ConstRowMap map(MatrixView<const float> v) {
  return ConstRowMap(v.data, static_cast<Eigen::Index>(v.rows), static_cast<Eigen::Index>(v.cols),
                     Eigen::OuterStride<>(static_cast<Eigen::Index>(v.stride)));
}

/// y = layer(x) into a new row-major matrix [T, layer.dim()] (allocates the result; use the
/// view() form in loops).
template <class Layer, class Derived>
RowMatrix forward(const Layer& layer, ThreadPool& pool, const Eigen::DenseBase<Derived>& x,
                  Arena& arena) {
  RowMatrix y(x.rows(), static_cast<Eigen::Index>(layer.dim()));
  layer.forward(pool, view(x), view(y), arena);
  return y;
}

}  // namespace moe::eigen
