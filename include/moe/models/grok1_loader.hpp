// moe/models/grok1_loader.hpp: binds an opened Grok-1 checkpoint to the model's weight views.
//
//   auto ckpt = moe::grok1::Checkpoint::open(dir);          // maps + validates 770 files
//   moe::grok1::Weights w = moe::grok1::bind_weights(ckpt);  // views into the mappings
//   auto model = moe::grok1::make_model(ckpt.config(), w);   // no weight bytes are read
//
// This is where the file format (io/, models/grok1_checkpoint.hpp) meets the layers
// (models/grok1.hpp): neither of those headers includes the other. The binding is a loop over
// the tensor table (grok1_tensors.hpp): each field gets the view of its file. The embedding is
// read in place whatever its alignment (an EmbeddingTable: no copy of the release's 3.2 GB
// table); with BindOptions::release_head (a RAM budget that cannot hold it) the tied head
// reads it in chunks and unmaps each chunk after use, so it never holds the whole table.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <sys/mman.h>
#include <type_traits>

#include <moe/models/grok1.hpp>
#include <moe/models/grok1_checkpoint.hpp>
#include <moe/models/grok1_tensors.hpp>
#include <moe/models/tensor_table.hpp>

namespace moe::grok1 {

/// Unmaps the whole pages of rows [first, first + count) of a table in a read-only file mapping
/// from the process (MADV_DONTNEED; pages the rows share with neighbouring bytes stay): they are
/// read again from the page cache or the file on the next use. An EmbeddingTable's
/// after_head_chunk for a checkpoint's table; never for a table in anonymous memory (which
/// MADV_DONTNEED would zero).
inline void unmap_rows(const EmbeddingTable& table, std::size_t first, std::size_t count) {
  const std::size_t row_bytes = table.cols * table.element_bytes();
  const auto page = static_cast<std::uintptr_t>(io::detail::page_size());
  auto* p =
      const_cast<std::byte*>(reinterpret_cast<const std::byte*>(table.data)) + first * row_bytes;
  const auto b = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t begin = (b + page - 1) / page * page;  // whole pages inside the rows
  const std::uintptr_t end = (b + count * row_bytes) / page * page;
  if (end > begin) ::madvise(p + (begin - b), end - begin, MADV_DONTNEED);  // a hint
}

struct BindOptions {
  /// The tied head reads the embedding in chunks of about head_chunk_bytes and unmaps each chunk
  /// from the process after use (unmap_rows). For a RAM budget that
  /// cannot hold the table (WeightResidency::stats().head_released); the logits are the same bits.
  bool release_head = false;
  std::size_t head_chunk_bytes = std::size_t{64} << 20;
};

/// Views of every tensor of `ckpt`, in the model's weight struct. The Checkpoint must outlive
/// the returned views (they point into its mappings). Validates the result against the
/// checkpoint's config (throws ShapeError naming the tensor).
inline Weights bind_weights(const Checkpoint& ckpt, const BindOptions& options = {}) {
  const Config& c = ckpt.config();
  const FileIndex& index = ckpt.index();
  Weights w;
  for (std::size_t g = 0; g < kGlobalTensors; ++g) {
    global_tensors<>[g].field.visit(w, [&](auto& view) {
      if constexpr (std::is_same_v<std::remove_cvref_t<decltype(view)>, EmbeddingTable>) {
        models::bind(view, ckpt.stored_in_place(index.of_global(g)));
      } else {
        models::bind(view, ckpt.stored(index.of_global(g)));
      }
    });
  }
  if (options.release_head) {
    const std::size_t row_bytes = w.embedding.cols * w.embedding.element_bytes();
    w.embedding.head_chunk_rows = std::max<std::size_t>(1, options.head_chunk_bytes / row_bytes);
    w.embedding.after_head_chunk = &unmap_rows;
  }
  w.layers.resize(c.n_layers);
  for (std::size_t l = 0; l < c.n_layers; ++l) {
    for (std::size_t s = 0; s < kSlotsPerLayer; ++s) {
      layer_tensors<>[s].field.visit(w.layers[l], [&](auto& view) {
        models::bind(view, ckpt.stored(index.of(l, static_cast<Slot>(s))));
      });
    }
  }
  w.validate(c);
  return w;
}

}  // namespace moe::grok1
