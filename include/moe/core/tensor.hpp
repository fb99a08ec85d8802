// moe/core/tensor.hpp: non-owning row-major matrix views for activations.
//
// MatrixView<T> is {data, rows, cols, stride}: element (r, c) is data[r * stride + c]. T may be
// const-qualified. Views never own memory; the caller keeps the storage alive.
#pragma once

#include <cstddef>
#include <type_traits>

#include <moe/core/buffer.hpp>

namespace moe {

template <class T>
struct MatrixView {
  T* data = nullptr;
  std::size_t rows = 0;
  std::size_t cols = 0;
  std::size_t stride = 0;  ///< elements between consecutive rows (>= cols)

  MatrixView() = default;
  MatrixView(T* d, std::size_t r, std::size_t c) noexcept : data(d), rows(r), cols(c), stride(c) {}
  MatrixView(T* d, std::size_t r, std::size_t c, std::size_t s) noexcept
      : data(d), rows(r), cols(c), stride(s) {}
  /// A mutable view converts to a const one.
  template <class U, class = std::enable_if_t<std::is_same_v<const U, T>>>
  MatrixView(const MatrixView<U>& o) noexcept  // NOLINT(google-explicit-constructor)
      : data(o.data), rows(o.rows), cols(o.cols), stride(o.stride) {}

  T* row(std::size_t r) const noexcept { return data + r * stride; }
  T& operator()(std::size_t r, std::size_t c) const noexcept { return data[r * stride + c]; }
  /// Rows [first, first + count).
  MatrixView rows_slice(std::size_t first, std::size_t count) const noexcept {
    return {data + first * stride, count, cols, stride};
  }
  /// Columns [first, first + count) of every row.
  MatrixView cols_slice(std::size_t first, std::size_t count) const noexcept {
    return {data + first, rows, count, stride};
  }
  bool contiguous() const noexcept { return stride == cols; }
};

/// A [rows, cols] view over a Buffer (which must hold at least rows * cols elements).
template <class T>
MatrixView<T> as_matrix(Buffer<T>& b, std::size_t rows, std::size_t cols) noexcept {
  return {b.data(), rows, cols};
}
template <class T>
MatrixView<const T> as_matrix(const Buffer<T>& b, std::size_t rows, std::size_t cols) noexcept {
  return {b.data(), rows, cols};
}

}  // namespace moe
