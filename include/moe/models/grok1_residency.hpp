// moe/models/grok1_residency.hpp: the ResidencyPlan of an opened Grok-1 checkpoint.
//
//   auto ckpt = moe::grok1::Checkpoint::open(dir);
//   moe::WeightResidency res(moe::grok1::residency_plan(ckpt), {.ram_budget = budget});
//   moe::grok1::Weights w = moe::grok1::bind_weights(ckpt, {.release_head =
//   res.stats().streaming}); gen.on_layer = res.hook();
//
// The plan is a loop over the tensor table (grok1_tensors.hpp): the expert stacks ([E, in, out]
// int8 + [E, blocks, out] scales) are split into one byte range per expert, everything else of a
// layer is its dense part, and each expert's probe page lies inside its slice of the gate
// tensor (slices under 4 MiB have none: their use is not observed). The embedding (read in place,
// also the tied head) is read in chunks released after use when the budget cannot hold it
// (ResidencyStats::head_released, BindOptions::release_head). The
// copies counted are those bind_weights makes (misaligned f32 norms and routers; the bf16 scales
// are read in place at any alignment), so the plan may be built before or after binding.
#pragma once

#include <cstddef>
#include <cstdint>

#include <moe/io/mapped_file.hpp>
#include <moe/models/grok1_checkpoint.hpp>
#include <moe/models/grok1_loader.hpp>
#include <moe/models/grok1_tensors.hpp>
#include <moe/models/weight_residency.hpp>

namespace moe::grok1 {

namespace detail {

/// A read fault maps at most the page-cache folio it hits (up to 2 MiB, naturally aligned in
/// the file: the x86-64 PMD size, the largest page-cache folio) plus its fault-around window
/// (mm/memory.c fault_around_bytes: 64 KiB by default, at most 1 MiB assumed here). So the page
/// at the centre of a 2 MiB-aligned block of the file is mapped only by reads inside the block.
inline constexpr std::size_t kProbeBlock = std::size_t{2} << 20;

/// The centre page of a kProbeBlock-aligned block inside `r` (so that only reads of `r` map
/// it), or an empty range when `r` holds no such block.
inline MappedRange probe_page(const MappedRange& r) {
  const std::size_t block = (r.offset + kProbeBlock - 1) / kProbeBlock * kProbeBlock;
  if (block + kProbeBlock > r.offset + r.length) return {};
  return {r.file, block + kProbeBlock / 2, io::detail::page_size()};
}

}  // namespace detail

/// Where the checkpoint's weights live, per layer and expert (see the file comment).
inline ResidencyPlan residency_plan(const Checkpoint& ck) {
  const Config& c = ck.config();
  ResidencyPlan plan;
  plan.top_k = c.top_k;
  plan.rms_eps = c.rms_eps;
  const std::size_t embedding = ck.index().of_global(0);
  for (const TensorFile& f : ck.files()) {
    plan.files.push_back(&f.map);
    // What bind_weights copies: misaligned f32 tensors except the embedding.
    if (!f.quantized && !f.weight.aligned() && f.index != embedding) {
      plan.copied_bytes += f.weight.nbytes;
    }
  }
  auto whole = [](const TensorFile& f, const io::Array& a) {
    return MappedRange{&f.map, a.offset, a.nbytes};
  };
  for (std::size_t g = 0; g < kGlobalTensors; ++g) {
    const std::size_t i = ck.index().of_global(g);
    const TensorFile& f = ck.file(i);
    if (i == embedding) {
      plan.chunked.push_back(whole(f, f.weight));
      plan.chunk_bytes = BindOptions{}.head_chunk_bytes;
    } else if (f.weight.aligned()) {
      plan.always.push_back(whole(f, f.weight));  // else copied
    }
  }
  plan.layers.resize(c.n_layers);
  for (std::size_t l = 0; l < c.n_layers; ++l) {
    LayerRanges& ranges = plan.layers[l];
    ranges.experts.resize(c.n_experts);
    ranges.probes.resize(c.n_experts);
    for (std::size_t s = 0; s < kSlotsPerLayer; ++s) {
      const Slot slot = static_cast<Slot>(s);
      const TensorFile& f = ck.file(ck.index_of(l, slot));
      if (!slot_is_expert(slot)) {
        ranges.dense.push_back(whole(f, f.weight));
        if (f.quantized) ranges.dense.push_back(whole(f, f.scales));
        continue;
      }
      const std::size_t w_bytes = f.weight.nbytes / c.n_experts;
      const std::size_t s_bytes = f.scales.nbytes / c.n_experts;
      for (std::size_t e = 0; e < c.n_experts; ++e) {
        const MappedRange w{&f.map, f.weight.offset + e * w_bytes, w_bytes};
        ranges.experts[e].push_back(w);
        ranges.experts[e].push_back({&f.map, f.scales.offset + e * s_bytes, s_bytes});
        if (slot == Slot::kExpertGate) ranges.probes[e] = detail::probe_page(w);
      }
    }
    ranges.router = ck.router(l);
    ranges.router_norm = ck.norm(l, Slot::kNormPreMoe);
  }
  return plan;
}

}  // namespace moe::grok1
