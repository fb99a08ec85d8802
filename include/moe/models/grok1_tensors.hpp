// moe/models/grok1_tensors.hpp: Grok-1's weights and the ONE table that names them.
//
// grok1::WeightsT<W> is a plain struct of non-owning views in the checkpoint's own layout
// (nothing is copied or repacked); W is the projection/expert weight type (Int8Weight for the
// checkpoint, F32Weight or BF16Weight in tests). global_tensors<W> and layer_tensors<W> list, for
// every tensor, its checkpoint path, how the release stores it, its shape over grok1::Config and
// the field it binds to. Every other place derives from them:
//
//   WeightsT::validate      checks each field against its table shape (ShapeError naming the path)
//   FileIndex / file_index  the release's file order: the paths sorted as JAX flattens the tree
//   tensor_name, slot_path  the names
//   Checkpoint::validate, bind_weights (grok1_checkpoint.hpp, grok1_loader.hpp)
//
// Slot is the index of a layer tensor in layer_tensors (the sorted order of their paths, which is
// also their order in the files of a layer).
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/models/grok1_config.hpp>
#include <moe/models/tensor_table.hpp>
#include <moe/ops/embedding.hpp>
#include <moe/ops/weights.hpp>

namespace moe::grok1 {

/// The weights of one decoder layer (views). The table below says which tensor each one is.
template <class W>
struct LayerWeightsT {
  static_assert(is_weight_v<W>, "LayerWeightsT<W>: W must be F32Weight, BF16Weight or Int8Weight");
  using weight_type = W;

  W wq{}, wk{}, wv{}, wo{};              ///< attention projections, [in, out]
  std::span<const float> norm_pre_attn;  ///< the four RMSNorm scales [D] (sandwich norms)
  std::span<const float> norm_post_attn;
  std::span<const float> norm_pre_moe;
  std::span<const float> norm_post_moe;
  F32Weight router{};            ///< [D, E], f32, [in, out]
  WeightStack<W> expert_gate{};  ///< GELU branch ("w1")  [E, D, F]
  WeightStack<W> expert_up{};    ///< linear branch ("w3") [E, D, F]
  WeightStack<W> expert_down{};  ///< down projection ("w2") [E, F, D]
};

/// All weights of the model (views). `layers[N]` is transformer/decoder_layer_N.
template <class W>
struct WeightsT {
  using weight_type = W;
  using layer_type = LayerWeightsT<W>;

  /// [V, D] f32 (row = token), read in place at any byte alignment; also the tied output head.
  /// A MatrixView<const float> converts to it.
  EmbeddingTable embedding;
  std::span<const float> final_norm;  ///< [D]
  std::vector<LayerWeightsT<W>> layers;

  /// Throws ShapeError naming the checkpoint tensor and both shapes when any view disagrees with
  /// `config` (or is missing); ConfigError when `config` itself is invalid.
  void validate(const Config& config) const;
};

/// The same model with its projections and expert stacks turned into another weight type:
/// `matrix(const W&) -> V` for wq, wk, wv, wo and `stack(const WeightStack<W>&) -> WeightStack<V>`
/// for the three expert stacks; the embedding, the norms and the router (f32 in every checkpoint)
/// are carried over as they are. The result holds whatever views the two functions return (the
/// int8-activation views of grok1::int8_activations, dequantised copies in the tests).
template <class V, class W, class MatrixFn, class StackFn>
WeightsT<V> map_weights(const WeightsT<W>& weights, MatrixFn&& matrix, StackFn&& stack) {
  WeightsT<V> out;
  out.embedding = weights.embedding;
  out.final_norm = weights.final_norm;
  out.layers.reserve(weights.layers.size());
  for (const LayerWeightsT<W>& l : weights.layers) {
    LayerWeightsT<V>& m = out.layers.emplace_back();
    m.wq = matrix(l.wq);
    m.wk = matrix(l.wk);
    m.wv = matrix(l.wv);
    m.wo = matrix(l.wo);
    m.norm_pre_attn = l.norm_pre_attn;
    m.norm_post_attn = l.norm_post_attn;
    m.norm_pre_moe = l.norm_pre_moe;
    m.norm_post_moe = l.norm_post_moe;
    m.router = l.router;
    m.expert_gate = stack(l.expert_gate);
    m.expert_up = stack(l.expert_up);
    m.expert_down = stack(l.expert_down);
  }
  return out;
}

/// The checkpoint's types: int8 projections and experts with bf16 scales.
using LayerWeights = LayerWeightsT<Int8Weight>;
using Weights = WeightsT<Int8Weight>;

// ---- the table ----------------------------------------------------------------------------------

template <class W>
using GlobalField = models::Member<WeightsT<W>, EmbeddingTable, std::span<const float>>;
template <class W>
using LayerField =
    models::Member<LayerWeightsT<W>, W, WeightStack<W>, std::span<const float>, F32Weight>;
template <class W>
using GlobalSpec = models::TensorSpec<Config, GlobalField<W>>;
template <class W>
using LayerSpec = models::TensorSpec<Config, LayerField<W>>;

/// The tensors outside the layers (t0 and t1 of the release).
template <class W = Int8Weight>
inline constexpr GlobalSpec<W> global_tensors[] = {
    {"language_model/in_out_embed/embeddings", models::Storage::kF32,
     [](const Config& c) {
       return models::Shape{c.vocab_size, c.d_model};
     },
     &WeightsT<W>::embedding},
    {"language_model/rms_norm/scale", models::Storage::kF32,
     [](const Config& c) { return models::Shape{c.d_model}; }, &WeightsT<W>::final_norm},
};

/// The tensors of decoder layer {layer}, sorted by path (= Slot order = their file order).
template <class W = Int8Weight>
inline constexpr LayerSpec<W> layer_tensors[] = {
    {"transformer/decoder_layer_{layer}/moe/linear/w", models::Storage::kInt8Scaled,
     [](const Config& c) {
       return models::Shape{c.n_experts, c.d_model, c.d_ff};
     },
     &LayerWeightsT<W>::expert_gate},
    {"transformer/decoder_layer_{layer}/moe/linear_1/w", models::Storage::kInt8Scaled,
     [](const Config& c) {
       return models::Shape{c.n_experts, c.d_ff, c.d_model};
     },
     &LayerWeightsT<W>::expert_down},
    {"transformer/decoder_layer_{layer}/moe/linear_v/w", models::Storage::kInt8Scaled,
     [](const Config& c) {
       return models::Shape{c.n_experts, c.d_model, c.d_ff};
     },
     &LayerWeightsT<W>::expert_up},
    {"transformer/decoder_layer_{layer}/multi_head_attention/key/w", models::Storage::kInt8Scaled,
     [](const Config& c) {
       return models::Shape{c.d_model, c.kv_dim()};
     },
     &LayerWeightsT<W>::wk},
    {"transformer/decoder_layer_{layer}/multi_head_attention/linear/w",
     models::Storage::kInt8Scaled,
     [](const Config& c) {
       return models::Shape{c.q_dim(), c.d_model};
     },
     &LayerWeightsT<W>::wo},
    {"transformer/decoder_layer_{layer}/multi_head_attention/query/w", models::Storage::kInt8Scaled,
     [](const Config& c) {
       return models::Shape{c.d_model, c.q_dim()};
     },
     &LayerWeightsT<W>::wq},
    {"transformer/decoder_layer_{layer}/multi_head_attention/value/w", models::Storage::kInt8Scaled,
     [](const Config& c) {
       return models::Shape{c.d_model, c.kv_dim()};
     },
     &LayerWeightsT<W>::wv},
    {"transformer/decoder_layer_{layer}/rms_norm/scale", models::Storage::kF32,
     [](const Config& c) { return models::Shape{c.d_model}; }, &LayerWeightsT<W>::norm_pre_attn},
    {"transformer/decoder_layer_{layer}/rms_norm_1/scale", models::Storage::kF32,
     [](const Config& c) { return models::Shape{c.d_model}; }, &LayerWeightsT<W>::norm_post_attn},
    {"transformer/decoder_layer_{layer}/rms_norm_2/scale", models::Storage::kF32,
     [](const Config& c) { return models::Shape{c.d_model}; }, &LayerWeightsT<W>::norm_pre_moe},
    {"transformer/decoder_layer_{layer}/rms_norm_3/scale", models::Storage::kF32,
     [](const Config& c) { return models::Shape{c.d_model}; }, &LayerWeightsT<W>::norm_post_moe},
    {"transformer/decoder_layer_{layer}/router/w", models::Storage::kF32,
     [](const Config& c) {
       return models::Shape{c.d_model, c.n_experts};
     },
     &LayerWeightsT<W>::router},
};

inline constexpr std::size_t kSlotsPerLayer = std::size(layer_tensors<>);
inline constexpr std::size_t kGlobalTensors = std::size(global_tensors<>);

/// A layer tensor, by its index in layer_tensors.
enum class Slot : std::uint8_t {
  kExpertGate,   ///< GELU branch of the experts ("w1")
  kExpertDown,   ///< down projection of the experts ("w2")
  kExpertUp,     ///< linear branch of the experts ("w3")
  kKey,          ///< Wk
  kAttnOut,      ///< Wo
  kQuery,        ///< Wq
  kValue,        ///< Wv
  kNormPreAttn,  ///< the four RMSNorm scales
  kNormPostAttn,
  kNormPreMoe,
  kNormPostMoe,
  kRouter,
};

namespace detail {

constexpr bool paths_sorted() {
  for (std::size_t i = 1; i < kSlotsPerLayer; ++i) {
    if (!(layer_tensors<>[i - 1].path < layer_tensors<>[i].path)) return false;
  }
  return global_tensors<>[0].path < global_tensors<>[1].path;
}
static_assert(paths_sorted(), "the Grok-1 table must list each group in sorted path order");
static_assert(static_cast<std::size_t>(Slot::kRouter) + 1 == kSlotsPerLayer);

}  // namespace detail

/// The table entry of a layer slot.
template <class W = Int8Weight>
constexpr const LayerSpec<W>& layer_spec(Slot s) noexcept {
  return layer_tensors<W>[static_cast<std::size_t>(s)];
}

/// Path of a slot below transformer/decoder_layer_N/, e.g. "moe/linear_1/w".
inline constexpr std::string_view slot_path(Slot s) noexcept {
  const std::string_view p = layer_spec(s).path;
  return p.substr(p.find("}/") + 2);
}

/// Checkpoint name of a layer tensor, e.g. "transformer/decoder_layer_48/moe/linear_1/w".
inline std::string layer_tensor_name(std::size_t layer, Slot s) {
  return models::tensor_path(layer_spec(s).path, layer);
}

inline constexpr bool slot_is_expert(Slot s) noexcept {
  return s == Slot::kExpertGate || s == Slot::kExpertUp || s == Slot::kExpertDown;
}

// ---- the file order -----------------------------------------------------------------------------

/// What a file index holds.
struct TensorRef {
  bool in_layer = false;   ///< false: a global tensor
  std::size_t global = 0;  ///< !in_layer: index into global_tensors
  std::size_t layer = 0;   ///< in_layer
  Slot slot = Slot::kExpertGate;

  [[nodiscard]] std::string name() const {
    return in_layer ? layer_tensor_name(layer, slot) : std::string(global_tensors<>[global].path);
  }
  [[nodiscard]] models::Storage storage() const {
    return in_layer ? layer_spec(slot).storage : global_tensors<>[global].storage;
  }
  [[nodiscard]] models::Shape shape(const Config& c) const {
    return in_layer ? layer_spec(slot).shape(c) : global_tensors<>[global].shape(c);
  }
};

/// The release's file order for n_layers layers. checkpoint.py restores leaf i of
/// jax.tree_util.tree_flatten(params) from file i, and JAX flattens dicts in sorted key order:
/// file i holds the i-th of all tensor paths in sorted order. So t0 is the embedding table, t1
/// the final norm, and the layers follow in LEXICOGRAPHIC order of their numbers (0, 1, 10, 11,
/// ..., 19, 2, 20, ...: "decoder_layer_1/" < "decoder_layer_10/" as '/' < '0').
class FileIndex {
 public:
  explicit FileIndex(std::size_t n_layers) : n_layers_(n_layers) {
    std::vector<std::pair<std::string, TensorRef>> all;
    all.reserve(kGlobalTensors + kSlotsPerLayer * n_layers);
    for (std::size_t g = 0; g < kGlobalTensors; ++g) {
      all.emplace_back(std::string(global_tensors<>[g].path), TensorRef{false, g, 0, Slot{}});
    }
    for (std::size_t l = 0; l < n_layers; ++l) {
      for (std::size_t s = 0; s < kSlotsPerLayer; ++s) {
        const TensorRef r{true, 0, l, static_cast<Slot>(s)};
        all.emplace_back(r.name(), r);
      }
    }
    std::sort(all.begin(), all.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    refs_.reserve(all.size());
    of_layer_.assign(n_layers * kSlotsPerLayer, 0);
    for (std::size_t i = 0; i < all.size(); ++i) {
      const TensorRef& r = all[i].second;
      refs_.push_back(r);
      if (r.in_layer) of_layer_[r.layer * kSlotsPerLayer + static_cast<std::size_t>(r.slot)] = i;
      if (!r.in_layer) of_global_[r.global] = i;
    }
  }

  [[nodiscard]] std::size_t n_layers() const noexcept { return n_layers_; }
  [[nodiscard]] std::size_t size() const noexcept { return refs_.size(); }
  /// What file `index` holds. Throws ConfigError if index >= size().
  [[nodiscard]] const TensorRef& at(std::size_t index) const {
    if (index >= refs_.size()) {
      throw ConfigError("[grok1] file index " + std::to_string(index) + " is out of range for " +
                        std::to_string(n_layers_) + " layers (" + std::to_string(refs_.size()) +
                        " files)");
    }
    return refs_[index];
  }
  /// File index of a layer's slot (layer < n_layers()).
  [[nodiscard]] std::size_t of(std::size_t layer, Slot slot) const {
    return of_layer_.at(layer * kSlotsPerLayer + static_cast<std::size_t>(slot));
  }
  /// File index of global tensor g.
  [[nodiscard]] std::size_t of_global(std::size_t g) const { return of_global_.at(g); }

 private:
  std::size_t n_layers_ = 0;
  std::vector<TensorRef> refs_;
  std::vector<std::size_t> of_layer_;
  std::array<std::size_t, kGlobalTensors> of_global_{};
};

/// Number of checkpoint files for n_layers layers: 2 + 12 * n_layers.
inline constexpr std::size_t n_files(std::size_t n_layers) noexcept {
  return kGlobalTensors + kSlotsPerLayer * n_layers;
}

/// "tensor00519_000": file i of host shard 0 (the release was written by one host).
inline std::string file_name(std::size_t index) {
  std::string digits = std::to_string(index);
  if (digits.size() < 5) digits.insert(0, 5 - digits.size(), '0');
  return "tensor" + digits + "_000";
}

namespace detail {

/// The FileIndex for n_layers (the last one this thread asked for is kept).
inline const FileIndex& file_index_for(std::size_t n_layers) {
  thread_local std::optional<FileIndex> last;
  if (!last || last->n_layers() != n_layers) last.emplace(n_layers);
  return *last;
}

}  // namespace detail

/// File index of a layer's slot, e.g. file_index(48, Slot::kExpertDown, 64) == 519.
inline std::size_t file_index(std::size_t layer, Slot slot, std::size_t n_layers) {
  return detail::file_index_for(n_layers).of(layer, slot);
}
/// What file `index` holds. Throws ConfigError if index >= n_files(n_layers).
inline TensorRef tensor_at(std::size_t index, std::size_t n_layers) {
  return detail::file_index_for(n_layers).at(index);
}
/// Parameter path of file `index`, e.g. "transformer/decoder_layer_48/moe/linear_1/w".
inline std::string tensor_name(std::size_t index, std::size_t n_layers) {
  return tensor_at(index, n_layers).name();
}
/// The layers in file order (0, 1, 10, 11, 2, ... for 12 layers).
inline std::vector<std::size_t> layer_file_order(std::size_t n_layers) {
  const FileIndex& ix = detail::file_index_for(n_layers);
  std::vector<std::size_t> order;
  for (std::size_t i = kGlobalTensors; i < ix.size(); i += kSlotsPerLayer) {
    order.push_back(ix.at(i).layer);
  }
  return order;
}
/// Position of `layer` in layer_file_order(n_layers).
inline std::size_t layer_rank(std::size_t layer, std::size_t n_layers) {
  return (file_index(layer, Slot{}, n_layers) - kGlobalTensors) / kSlotsPerLayer;
}

// ---- validation ---------------------------------------------------------------------------------

template <class W>
void WeightsT<W>::validate(const Config& c) const {
  c.validate();
  for (const GlobalSpec<W>& g : global_tensors<W>) {
    g.field.visit(*this, [&](const auto& view) {
      models::check_view(view, "grok1", std::string(g.path), g.shape(c));
    });
  }
  if (layers.size() != c.n_layers) {
    throw ShapeError("[grok1] weights have " + std::to_string(layers.size()) +
                     " decoder layers, config expects " + std::to_string(c.n_layers));
  }
  for (std::size_t l = 0; l < layers.size(); ++l) {
    for (const LayerSpec<W>& s : layer_tensors<W>) {
      s.field.visit(layers[l], [&](const auto& view) {
        models::check_view(view, "grok1", models::tensor_path(s.path, l), s.shape(c));
      });
    }
  }
}

}  // namespace moe::grok1
