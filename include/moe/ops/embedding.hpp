// moe/ops/embedding.hpp: token embedding tables read in place, their lookup, and the tied LM head.
//
// EmbeddingTable views a [V, D] table (row v = token v) in the dtype of the file it comes from,
// without widening or copying it:
//
//   f32   any byte alignment (a checkpoint's payload can start at an odd offset): rows are read
//         with memcpy; the tied head is F32Weight{table, in = D, out = V, Layout::kOutIn}
//   bf16  widened exactly into the activation row; the tied head is the BF16Weight view
//   int8  Grok-1's QuantizedWeight8bit format applied to the table: int8 [V, D] with bf16 scales
//         [blocks, D], row v using scale row v / (V / blocks); a row is dequantized exactly
//         (float(int8) * float(scale) fits in f32). matmul has no [out, in] int8 layout, so the
//         tied head over an int8 table is tied_logits() below (the same exact dequantization).
//
// Operations (pool-parallel, deterministic for any thread count):
//
//   embed_rows(pool, table, tokens, multiplier, h)          h[t] = table[tokens[t]] * multiplier
//   embed_backward(pool, tokens, dh, multiplier, grad)      grad[tokens[t]] += multiplier * dh[t]
//   tied_logits(pool, h, table, logits)                     logits = h . table^T
//   tied_logits_backward_input(pool, dlogits, table, dh)    dh += dlogits . table
//   tied_logits_backward_weight(pool, h, dlogits, grad)     grad[V, D] += dlogits^T . h
//
// The f32 and bf16 tied-head products go through moe::matmul / matmul_backward_* on the table's
// weight view; int8 runs its own loops (one widened row per vocabulary entry).
//
// A table larger than the RAM one wants to spend on it (Grok-1's f32 embedding is 3.2 GB, read in
// place from the checkpoint's mapping) can be read by the tied head in vocabulary chunks
// (EmbeddingTable::head_chunk_rows), after each of which the head calls after_head_chunk (e.g.
// grok1::unmap_rows, which unmaps the chunk's file pages from the process): the head then never
// holds more than one chunk of the table. The logits are the same bits as in one product (every
// logit is one row of the table dotted with h, whatever the chunk).
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include <moe/config.hpp>
#include <moe/core/bf16.hpp>
#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/ops/matmul.hpp>
#include <moe/ops/matmul_grad.hpp>
#include <moe/ops/softmax.hpp>
#include <moe/ops/vector.hpp>
#include <moe/ops/weights.hpp>

namespace moe {

/// Element type of an EmbeddingTable.
enum class EmbeddingDtype : std::uint8_t {
  kF32,   ///< f32, any byte alignment
  kBF16,  ///< bf16
  kInt8,  ///< int8 with bf16 scales [blocks, D] (Grok-1's QuantizedWeight8bit layout)
};
inline constexpr std::string_view embedding_dtype_name(EmbeddingDtype d) noexcept {
  return d == EmbeddingDtype::kF32 ? "f32" : d == EmbeddingDtype::kBF16 ? "bf16" : "int8";
}

/// A token embedding table [V, D] (row = token), viewed in place. See the file comment.
struct EmbeddingTable {
  const unsigned char* data = nullptr;  ///< row v starts at data + v * D * element bytes
  const bf16* scales = nullptr;         ///< int8 only: [blocks, D]
  std::size_t rows = 0;                 ///< V
  std::size_t cols = 0;                 ///< D
  std::size_t blocks = 1;               ///< int8: rows of `scales` (divides V)
  EmbeddingDtype dtype = EmbeddingDtype::kF32;
  bool contiguous = true;  ///< false when built from a strided MatrixView (rejected by validate)
  /// The tied head reads this many vocabulary rows at a time (0: all in one product).
  std::size_t head_chunk_rows = 0;
  /// Called by the tied head after it has read rows [first, first + count) (nullptr: nothing),
  /// e.g. grok1::unmap_rows for a table in a file mapping larger than the RAM budget.
  void (*after_head_chunk)(const EmbeddingTable& table, std::size_t first,
                           std::size_t count) = nullptr;

  EmbeddingTable() = default;
  /// An f32 table from a matrix view (must be contiguous; checked by validate()).
  EmbeddingTable(MatrixView<const float> m) noexcept  // NOLINT(google-explicit-constructor)
      : data(reinterpret_cast<const unsigned char*>(m.data)),
        rows(m.rows),
        cols(m.cols),
        contiguous(m.stride == m.cols) {}

  /// An f32 table [v, d] at p (contiguous).
  EmbeddingTable(const float* p, std::size_t v, std::size_t d) noexcept
      : data(reinterpret_cast<const unsigned char*>(p)), rows(v), cols(d) {}

  /// An f32 table starting at any byte address (e.g. inside a memory-mapped file).
  [[nodiscard]] static EmbeddingTable f32(const void* bytes, std::size_t v,
                                          std::size_t d) noexcept {
    EmbeddingTable t;
    t.data = static_cast<const unsigned char*>(bytes);
    t.rows = v;
    t.cols = d;
    return t;
  }
  [[nodiscard]] static EmbeddingTable bf16_table(const bf16* p, std::size_t v,
                                                 std::size_t d) noexcept {
    EmbeddingTable t = f32(p, v, d);
    t.dtype = EmbeddingDtype::kBF16;
    return t;
  }
  /// int8 [V, D] with bf16 scales [blocks, D]; row v uses scale row v / (V / blocks).
  [[nodiscard]] static EmbeddingTable int8(const std::int8_t* p, const bf16* s, std::size_t v,
                                           std::size_t d, std::size_t blocks = 1) noexcept {
    EmbeddingTable t = f32(p, v, d);
    t.dtype = EmbeddingDtype::kInt8;
    t.scales = s;
    t.blocks = blocks;
    return t;
  }

  [[nodiscard]] std::size_t element_bytes() const noexcept {
    return dtype == EmbeddingDtype::kF32 ? 4 : dtype == EmbeddingDtype::kBF16 ? 2 : 1;
  }
  [[nodiscard]] std::size_t block_rows() const noexcept { return rows / blocks; }
  /// Bytes of the table (and its scales).
  [[nodiscard]] std::size_t bytes() const noexcept {
    return rows * cols * element_bytes() +
           (dtype == EmbeddingDtype::kInt8 ? blocks * cols * sizeof(bf16) : 0);
  }
  /// The table as the weight of the tied head (in = D, out = V, [out, in]); f32 and bf16 only.
  [[nodiscard]] F32Weight f32_head() const noexcept {
    return {reinterpret_cast<const float*>(data), cols, rows, Layout::kOutIn};
  }
  [[nodiscard]] BF16Weight bf16_head() const noexcept {
    return {reinterpret_cast<const bf16*>(data), cols, rows, Layout::kOutIn};
  }

  /// dst[0..count) = columns [first, first + count) of row `token` as f32, exactly (count = 0:
  /// the whole row).
  void lookup(std::size_t token, float* dst, std::size_t first = 0,
              std::size_t count = 0) const noexcept {
    const std::size_t n = count ? count : cols - first;
    const unsigned char* r = data + (token * cols + first) * element_bytes();
    switch (dtype) {
      case EmbeddingDtype::kF32:
        std::memcpy(dst, r, n * sizeof(float));
        break;
      case EmbeddingDtype::kBF16:
        for (std::size_t i = 0; i < n; ++i) {
          std::uint16_t b = 0;
          std::memcpy(&b, r + 2 * i, 2);
          dst[i] = std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
        }
        break;
      case EmbeddingDtype::kInt8: {
        const bf16* s = scales + (token / block_rows()) * cols + first;
        const auto* q = reinterpret_cast<const std::int8_t*>(r);
        for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(q[i]) * load_bf16(s + i);
        break;
      }
    }
  }

  /// Throws ShapeError unless the table is present, contiguous, [v, d], and (int8) has scales
  /// whose row count divides v. `component` and `name` go into the message.
  void validate(std::string_view component, std::string_view name, std::size_t v,
                std::size_t d) const {
    const std::string where = "[" + std::string(component) + "] tensor '" + std::string(name) + "'";
    if (data == nullptr) throw ShapeError(where + " is missing");
    if (!contiguous) throw ShapeError(where + " must be contiguous");
    check_shape(component, name, {rows, cols}, {v, d});
    if (dtype == EmbeddingDtype::kInt8) {
      if (scales == nullptr) throw ShapeError(where + " (int8) has no scales");
      if (blocks == 0 || rows % blocks != 0) {
        throw ShapeError(where + " has scales " + shape_str({blocks, cols}) +
                         " whose row count does not divide " + std::to_string(rows));
      }
    }
  }
};

}  // namespace moe

MOE_SIMD_DETAIL_BEGIN
/// Columns of a gradient slab one backward task owns (dh or the table gradient).
inline constexpr std::size_t kEmbedSlab = 256;
/// Vocabulary rows per task of the int8 tied head.
inline constexpr std::size_t kHeadRows = 64;
MOE_SIMD_DETAIL_END

MOE_SIMD_NAMESPACE_BEGIN

/// h[t] = table[tokens[t]] * multiplier (rows split over the pool). Token ids must be in range
/// (the caller checks them). multiplier 1 copies the rows exactly.
inline void embed_rows(ThreadPool& pool, const EmbeddingTable& table,
                       std::span<const std::int32_t> tokens, float multiplier,
                       MatrixView<float> h) {
  MOE_ASSERT(h.rows == tokens.size() && h.cols == table.cols);
  constexpr std::size_t kRows = 16;
  const std::size_t n = tokens.size();
  const auto run = [&](std::size_t task, std::size_t) {
    const std::size_t t1 = std::min(n, (task + 1) * kRows);
    for (std::size_t t = task * kRows; t < t1; ++t) {
      table.lookup(static_cast<std::size_t>(tokens[t]), h.row(t));
      if (multiplier != 1.0f) scale(h.row(t), h.cols, multiplier);
    }
  };
  const std::size_t tasks = (n + kRows - 1) / kRows;
  if (tasks <= 1) {
    if (tasks == 1) run(0, 0);
    return;
  }
  pool.parallel_for(tasks, run);
}

/// grad[tokens[t], :] += multiplier * dh[t, :] for every t, in token order per column slab
/// (deterministic; repeated tokens accumulate). grad is the table's f32 gradient [V, D].
inline void embed_backward(ThreadPool& pool, std::span<const std::int32_t> tokens,
                           MatrixView<const float> dh, float multiplier, MatrixView<float> grad) {
  MOE_ASSERT(dh.rows == tokens.size() && dh.cols == grad.cols);
  const std::size_t d = dh.cols, slabs = (d + detail::kEmbedSlab - 1) / detail::kEmbedSlab;
  pool.parallel_for(slabs, [&](std::size_t s, std::size_t) {
    const std::size_t c0 = s * detail::kEmbedSlab, n = std::min(detail::kEmbedSlab, d - c0);
    for (std::size_t t = 0; t < tokens.size(); ++t) {
      axpy(multiplier, dh.row(t) + c0, grad.row(static_cast<std::size_t>(tokens[t])) + c0, n);
    }
  });
}

MOE_SIMD_NAMESPACE_END

MOE_SIMD_DETAIL_BEGIN

/// logits[:, v0 .. v0 + logits.cols) = h . table[v0 .. v0 + logits.cols)^T.
inline void tied_logits_rows(ThreadPool& pool, MatrixView<const float> h,
                             const EmbeddingTable& table, std::size_t v0,
                             MatrixView<float> logits) {
  const std::size_t n = logits.cols, d = table.cols;
  const unsigned char* rows = table.data + v0 * d * table.element_bytes();
  switch (table.dtype) {
    case EmbeddingDtype::kF32:
      matmul(pool, h, F32Weight{reinterpret_cast<const float*>(rows), d, n, Layout::kOutIn},
             logits);
      return;
    case EmbeddingDtype::kBF16:
      matmul(pool, h, BF16Weight{reinterpret_cast<const bf16*>(rows), d, n, Layout::kOutIn},
             logits);
      return;
    case EmbeddingDtype::kInt8:
      break;
  }
  // int8: one exactly dequantized row per vocabulary entry (in the pool's scratch), dotted with
  // every row of h.
  MOE_ASSERT(pool.scratch_bytes() >= d * sizeof(float));
  pool.parallel_for((n + kHeadRows - 1) / kHeadRows, [&](std::size_t task, std::size_t thread) {
    auto* row = reinterpret_cast<float*>(pool.scratch(thread));
    const std::size_t j1 = std::min(n, (task + 1) * kHeadRows);
    for (std::size_t j = task * kHeadRows; j < j1; ++j) {
      table.lookup(v0 + j, row);
      for (std::size_t t = 0; t < h.rows; ++t) logits(t, j) = dot(h.row(t), row, d);
    }
  });
}

MOE_SIMD_DETAIL_END

MOE_SIMD_NAMESPACE_BEGIN

/// logits [T, V] = h [T, D] . table^T (the tied LM head); in chunks of table.head_chunk_rows
/// vocabulary rows when set, table.after_head_chunk called after each (same bits).
inline void tied_logits(ThreadPool& pool, MatrixView<const float> h, const EmbeddingTable& table,
                        MatrixView<float> logits) {
  MOE_ASSERT(h.cols == table.cols && logits.cols == table.rows && logits.rows == h.rows);
  const std::size_t v = table.rows;
  const std::size_t chunk = table.head_chunk_rows ? std::min(table.head_chunk_rows, v) : v;
  for (std::size_t v0 = 0; v0 < v; v0 += chunk) {
    const std::size_t n = std::min(chunk, v - v0);
    detail::tied_logits_rows(pool, h, table, v0, logits.cols_slice(v0, n));
    if (table.after_head_chunk != nullptr) table.after_head_chunk(table, v0, n);
  }
}

/// dh [T, D] += dlogits [T, V] . table (the tied head's input gradient; any table dtype).
inline void tied_logits_backward_input(ThreadPool& pool, MatrixView<const float> dlogits,
                                       const EmbeddingTable& table, MatrixView<float> dh) {
  MOE_ASSERT(dh.cols == table.cols && dlogits.cols == table.rows && dlogits.rows == dh.rows);
  switch (table.dtype) {
    case EmbeddingDtype::kF32:
      matmul_backward_input(pool, dlogits, table.f32_head(), dh);
      return;
    case EmbeddingDtype::kBF16:
      matmul_backward_input(pool, dlogits, table.bf16_head(), dh);
      return;
    case EmbeddingDtype::kInt8:
      break;
  }
  // int8: each task owns a column slab of dh and walks the vocabulary in order.
  const std::size_t d = table.cols, slabs = (d + detail::kEmbedSlab - 1) / detail::kEmbedSlab;
  MOE_ASSERT(pool.scratch_bytes() >= d * sizeof(float));
  pool.parallel_for(slabs, [&](std::size_t s, std::size_t thread) {
    auto* row = reinterpret_cast<float*>(pool.scratch(thread));
    const std::size_t c0 = s * detail::kEmbedSlab, n = std::min(detail::kEmbedSlab, d - c0);
    for (std::size_t v = 0; v < table.rows; ++v) {
      table.lookup(v, row, c0, n);
      for (std::size_t t = 0; t < dh.rows; ++t) axpy(dlogits(t, v), row, dh.row(t) + c0, n);
    }
  });
}

/// grad [V, D] += dlogits^T . h (the tied head's contribution to the f32 table's gradient).
inline void tied_logits_backward_weight(ThreadPool& pool, MatrixView<const float> h,
                                        MatrixView<const float> dlogits, MatrixView<float> grad) {
  MOE_ASSERT(grad.contiguous());
  matmul_backward_weight(pool, h, dlogits,
                         WeightGrad{grad.data, grad.cols, grad.rows, Layout::kOutIn});
}

MOE_SIMD_NAMESPACE_END
