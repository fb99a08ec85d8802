// moe/models/grok1_loader.hpp: binds an opened Grok-1 checkpoint to the model's weight views.
//
//   auto ckpt = moe::grok1::Checkpoint::open(dir);          // maps + validates 770 files
//   moe::grok1::Weights w = moe::grok1::bind_weights(ckpt);  // views into the mappings
//   auto model = moe::grok1::make_model(ckpt.config(), w);   // no weight bytes are read
//
// This is where the file format (io/, models/grok1_checkpoint.hpp) meets the layers
// (models/grok1.hpp): neither of those headers includes the other.
#pragma once

#include <cstddef>

#include <moe/models/grok1.hpp>
#include <moe/models/grok1_checkpoint.hpp>

namespace moe::grok1 {

/// Views of every tensor of `ckpt`, in the model's weight struct. The Checkpoint must outlive
/// the returned views (they point into its mappings). Validates the result against the
/// checkpoint's config (throws ShapeError naming the tensor).
inline Weights bind_weights(const Checkpoint& ckpt) {
  const Config& c = ckpt.config();
  Weights w;
  w.embedding = ckpt.embedding();
  w.final_norm = ckpt.final_norm();
  w.layers.resize(c.n_layers);
  for (std::size_t l = 0; l < c.n_layers; ++l) {
    LayerWeights& L = w.layers[l];
    L.wq = ckpt.attention(l, Slot::kQuery);
    L.wk = ckpt.attention(l, Slot::kKey);
    L.wv = ckpt.attention(l, Slot::kValue);
    L.wo = ckpt.attention(l, Slot::kAttnOut);
    L.norm_pre_attn = ckpt.norm(l, Slot::kNormPreAttn);
    L.norm_post_attn = ckpt.norm(l, Slot::kNormPostAttn);
    L.norm_pre_moe = ckpt.norm(l, Slot::kNormPreMoe);
    L.norm_post_moe = ckpt.norm(l, Slot::kNormPostMoe);
    L.router = ckpt.router(l);
    L.expert_gate = ckpt.experts(l, Slot::kExpertGate);
    L.expert_up = ckpt.experts(l, Slot::kExpertUp);
    L.expert_down = ckpt.experts(l, Slot::kExpertDown);
  }
  w.validate(c);
  return w;
}

}  // namespace moe::grok1
