// moe/models/hf_residency.hpp: the ResidencyPlan of a Hugging Face checkpoint, from the byte
// ranges of its safetensors shards.
//
//   moe::io::safetensors::Checkpoint ckpt("DIR");
//   auto w = moe::hf::bind_weights<moe::BF16Weight>(cfg, ckpt);   // makes the f32 copies
//   moe::WeightResidency res(moe::hf::residency_plan(cfg, ckpt, w.copied_bytes),
//                            {.ram_budget = budget});
//   gen.on_layer = res.hook();
//
// A loop over the tensor table (hf_tensors.hpp): every expert projection is its own tensor, so an
// expert's ranges are its three tensors (wherever the shards put them); everything else of a layer
// (norms, attention, router, shared expert, a dense layer's MLP) is its dense part; the embedding,
// the final norm and the head are read by every token (`always`). Each expert's probe page lies
// inside its gate tensor (grok1::detail::probe_page: the centre of a 2 MiB-aligned block, so
// that no read outside the tensor maps it; tensors under 4 MiB have none and their use is not
// observed). The router is not given: speculation (ResidencyOptions::speculate) needs an f32
// router and stays off for these checkpoints.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <moe/io/safetensors.hpp>
#include <moe/models/grok1_residency.hpp>
#include <moe/models/hf_config.hpp>
#include <moe/models/hf_tensors.hpp>
#include <moe/models/weight_residency.hpp>

namespace moe::hf {

/// Where the checkpoint's weights live, per layer and expert (see the file comment).
/// `copied_bytes`: the weight bytes the binding copied into process memory
/// (WeightsT::copied_bytes), which the budget counts too.
inline ResidencyPlan residency_plan(const Config& c, const io::safetensors::Checkpoint& ckpt,
                                    std::uint64_t copied_bytes = 0) {
  ResidencyPlan plan;
  plan.top_k = c.top_k;
  plan.rms_eps = c.rms_norm_eps;
  plan.copied_bytes = copied_bytes;
  for (const io::safetensors::File& f : ckpt.files()) plan.files.push_back(&f.mapped());
  auto range = [&](const std::string& name) {
    const io::safetensors::File& f = ckpt.file_of(name);  // FormatError when absent
    const io::safetensors::Entry& e = *f.find(name);
    return MappedRange{&f.mapped(), e.begin, e.nbytes()};
  };
  plan.layers.resize(c.n_layers);
  for (std::size_t l = 0; l < c.n_layers; ++l) {
    plan.layers[l].experts.resize(c.sparse(l) ? c.n_experts : 0);
    plan.layers[l].probes.resize(plan.layers[l].experts.size());
  }
  using W = BF16Weight;  // the rows' paths and roles do not depend on W
  for_each_tensor<W>(
      c, [&](const GlobalRow<W>&, const std::string& name) { plan.always.push_back(range(name)); },
      [&](const LayerRow<W>& row, const std::string& name, int layer, int expert) {
        LayerRanges& r = plan.layers[static_cast<std::size_t>(layer)];
        const MappedRange m = range(name);
        if (expert < 0) {
          r.dense.push_back(m);
          return;
        }
        const auto e = static_cast<std::size_t>(expert);
        r.experts[e].push_back(m);
        if (row.slot == Slot::kExpertGate) r.probes[e] = grok1::detail::probe_page(m);
      });
  return plan;
}

}  // namespace moe::hf
