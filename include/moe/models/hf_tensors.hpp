// moe/models/hf_tensors.hpp: the tensors of Hugging Face MoE checkpoints, one table per family,
// and their binding to weight views.
//
//   moe::hf::Config cfg = moe::hf::read_config("DIR");
//   moe::io::safetensors::Checkpoint ckpt("DIR");
//   moe::hf::check_tensors(cfg, ckpt);                               // names, shapes, dtypes
//   auto w = moe::hf::bind_weights<moe::BF16Weight>(cfg, ckpt);       // views into the shards
//   for (const moe::hf::TensorSpec& t : moe::hf::tensor_table(cfg)) ... t.name, t.shape, t.slot
//
// hf::WeightsT<W> is a plain struct of views, as grok1::WeightsT (grok1_tensors.hpp): matrices are
// W = BF16Weight or F32Weight over PyTorch's [out, in] layout (Layout::kOutIn), every expert
// projection its own view (WeightStack::of binds them), the embedding an EmbeddingTable in the
// file's dtype. The constexpr tables below list, per group of tensors that a config has or lacks
// together, each tensor's path ("{layer}", "{expert}" placeholders), its role (Slot), its stored
// shape over hf::Config and the member it binds to; layer_groups() says which groups a layer has
// (Mixtral and Qwen2-MoE / OLMoE name their sparse blocks differently; Qwen2-MoE adds q/k/v
// biases, dense layers and a gated shared expert; OLMoE adds q/k norms). Everything else is a loop
// over them: tensor_table() (names in state-dict order), check_tensors(), bind_weights(),
// WeightsT::validate() and the residency plan (hf_residency.hpp).
//
// What is copied: nothing of a bf16 checkpoint's matrices, experts, embedding or head (views into
// the mapped shards), nor of an f32 checkpoint's. RMSNorm scales, q/k norm scales and q/k/v
// biases are widened to f32 (the layers read them as f32; D values each, ~1 MB for Mixtral 8x7B).
// An f16 checkpoint's matrices are widened to f32 at load (exact, but a copy: WeightsT::
// copied_bytes counts it). A matrix whose dtype is wider than the model's W (an F32 tensor in a
// BF16 model) is a ShapeError: moe does not round weights.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <moe/core/bf16.hpp>
#include <moe/core/buffer.hpp>
#include <moe/core/error.hpp>
#include <moe/io/safetensors.hpp>
#include <moe/models/hf_config.hpp>
#include <moe/models/tensor_table.hpp>
#include <moe/ops/embedding.hpp>
#include <moe/ops/weights.hpp>

namespace moe::hf {

/// The role of a checkpoint tensor.
enum class Slot : std::uint8_t {
  kEmbedding,         ///< model.embed_tokens.weight [V, D]
  kFinalNorm,         ///< model.norm.weight [D]
  kLmHead,            ///< lm_head.weight [V, D] (absent when tied)
  kAttnNorm,          ///< input_layernorm.weight [D]
  kMlpNorm,           ///< post_attention_layernorm.weight [D]
  kWq,                ///< self_attn.q_proj.weight [Hq*dh, D]
  kWk,                ///< self_attn.k_proj.weight [Hkv*dh, D]
  kWv,                ///< self_attn.v_proj.weight [Hkv*dh, D]
  kWo,                ///< self_attn.o_proj.weight [D, Hq*dh]
  kBq,                ///< self_attn.q_proj.bias [Hq*dh]
  kBk,                ///< self_attn.k_proj.bias [Hkv*dh]
  kBv,                ///< self_attn.v_proj.bias [Hkv*dh]
  kQNorm,             ///< self_attn.q_norm.weight [Hq*dh]
  kKNorm,             ///< self_attn.k_norm.weight [Hkv*dh]
  kRouter,            ///< the router, [E, D]
  kExpertGate,        ///< expert e's gate projection (SiLU branch; Mixtral w1) [F, D]
  kExpertUp,          ///< expert e's up projection (Mixtral w3) [F, D]
  kExpertDown,        ///< expert e's down projection (Mixtral w2) [D, F]
  kSharedGate,        ///< shared_expert.gate_proj.weight [Fs, D]
  kSharedUp,          ///< shared_expert.up_proj.weight [Fs, D]
  kSharedDown,        ///< shared_expert.down_proj.weight [D, Fs]
  kSharedExpertGate,  ///< shared_expert_gate.weight [1, D] (sigmoid)
  kDenseGate,         ///< mlp.gate_proj.weight of a dense layer [Fd, D]
  kDenseUp,           ///< mlp.up_proj.weight [Fd, D]
  kDenseDown,         ///< mlp.down_proj.weight [D, Fd]
};

inline constexpr bool slot_is_expert(Slot s) noexcept {
  return s == Slot::kExpertGate || s == Slot::kExpertUp || s == Slot::kExpertDown;
}

// ---- the weights --------------------------------------------------------------------------------

/// One decoder layer's weights (views). Which members are set depends on the family and the
/// layer (layer_groups()); the others stay empty.
template <class W>
struct LayerWeightsT {
  static_assert(std::is_same_v<W, BF16Weight> || std::is_same_v<W, F32Weight>,
                "hf::LayerWeightsT<W>: W is BF16Weight or F32Weight");
  std::span<const float> attn_norm, mlp_norm;  ///< input_layernorm, post_attention_layernorm
  W wq{}, wk{}, wv{}, wo{};                    ///< attention projections ([out, in] views)
  std::span<const float> bq, bk, bv;           ///< q/k/v biases (Qwen2-MoE)
  std::span<const float> q_norm, k_norm;       ///< RMSNorm over the whole q and k (OLMoE)
  W router{};                                  ///< [E, D]: logical [in = D, out = E]
  std::vector<W> expert_gate, expert_up, expert_down;  ///< one view per expert
  W shared_gate{}, shared_up{}, shared_down{};         ///< the shared expert (Qwen2-MoE)
  W shared_expert_gate{};                              ///< [1, D]: logical [in = D, out = 1]
  W dense_gate{}, dense_up{}, dense_down{};            ///< a dense layer's MLP (Qwen2-MoE)
};

/// All weights of a checkpoint (views), plus the f32 copies of what the layers read as f32.
template <class W>
struct WeightsT {
  using weight_type = W;
  using layer_type = LayerWeightsT<W>;

  EmbeddingTable embedding;           ///< [V, D] in the file's dtype (bf16 or f32)
  std::span<const float> final_norm;  ///< [D]
  W lm_head{};                        ///< [V, D]: logical [in = D, out = V]; empty when tied
  std::vector<LayerWeightsT<W>> layers;
  /// Bytes copied out of the mapped files (the widened norms and biases, an f16 checkpoint's
  /// matrices, and data not aligned for its element type).
  std::uint64_t copied_bytes = 0;
  /// The storage of those copies (the views above point into it; moving WeightsT keeps them).
  std::vector<Buffer<unsigned char>> owned;

  /// Throws ShapeError naming the tensor and both shapes when a view that the config needs is
  /// missing or has the wrong shape; ConfigError when the config itself is invalid.
  void validate(const Config& c) const;
};

// ---- the tables ---------------------------------------------------------------------------------

template <class W>
using GlobalField = models::Member<WeightsT<W>, EmbeddingTable, std::span<const float>, W>;
template <class W>
using LayerField = models::Member<LayerWeightsT<W>, W, std::span<const float>, std::vector<W>>;

/// One tensor of a family's table: its path ("{layer}" and "{expert}" stand for the numbers),
/// role, stored shape (PyTorch's [out, in] for matrices) and the member it binds to.
template <class Field>
struct Row {
  std::string_view path;
  Slot slot;
  models::Shape (*shape)(const Config&);
  Field field;
};
template <class W>
using GlobalRow = Row<GlobalField<W>>;
template <class W>
using LayerRow = Row<LayerField<W>>;

namespace detail {
inline models::Shape width(const Config& c) {
  return {c.d_model};
}
inline models::Shape q_width(const Config& c) {
  return {c.q_dim()};
}
inline models::Shape kv_width(const Config& c) {
  return {c.kv_dim()};
}
}  // namespace detail

template <class W>
inline constexpr GlobalRow<W> kEmbeddingRows[] = {
    {"model.embed_tokens.weight", Slot::kEmbedding,
     [](const Config& c) {
       return models::Shape{c.vocab_size, c.d_model};
     },
     &WeightsT<W>::embedding},
};
template <class W>
inline constexpr GlobalRow<W> kFinalNormRows[] = {
    {"model.norm.weight", Slot::kFinalNorm, detail::width, &WeightsT<W>::final_norm},
};
/// Absent when tie_word_embeddings (the head is the embedding).
template <class W>
inline constexpr GlobalRow<W> kHeadRows[] = {
    {"lm_head.weight", Slot::kLmHead,
     [](const Config& c) {
       return models::Shape{c.vocab_size, c.d_model};
     },
     &WeightsT<W>::lm_head},
};

/// Every family: the pre-attention norm and the attention projections.
template <class W>
inline constexpr LayerRow<W> kAttentionRows[] = {
    {"model.layers.{layer}.input_layernorm.weight", Slot::kAttnNorm, detail::width,
     &LayerWeightsT<W>::attn_norm},
    {"model.layers.{layer}.self_attn.q_proj.weight", Slot::kWq,
     [](const Config& c) {
       return models::Shape{c.q_dim(), c.d_model};
     },
     &LayerWeightsT<W>::wq},
    {"model.layers.{layer}.self_attn.k_proj.weight", Slot::kWk,
     [](const Config& c) {
       return models::Shape{c.kv_dim(), c.d_model};
     },
     &LayerWeightsT<W>::wk},
    {"model.layers.{layer}.self_attn.v_proj.weight", Slot::kWv,
     [](const Config& c) {
       return models::Shape{c.kv_dim(), c.d_model};
     },
     &LayerWeightsT<W>::wv},
    {"model.layers.{layer}.self_attn.o_proj.weight", Slot::kWo,
     [](const Config& c) {
       return models::Shape{c.d_model, c.q_dim()};
     },
     &LayerWeightsT<W>::wo},
};
/// Qwen2-MoE with qkv_bias.
template <class W>
inline constexpr LayerRow<W> kQkvBiasRows[] = {
    {"model.layers.{layer}.self_attn.q_proj.bias", Slot::kBq, detail::q_width,
     &LayerWeightsT<W>::bq},
    {"model.layers.{layer}.self_attn.k_proj.bias", Slot::kBk, detail::kv_width,
     &LayerWeightsT<W>::bk},
    {"model.layers.{layer}.self_attn.v_proj.bias", Slot::kBv, detail::kv_width,
     &LayerWeightsT<W>::bv},
};
/// OLMoE.
template <class W>
inline constexpr LayerRow<W> kQkNormRows[] = {
    {"model.layers.{layer}.self_attn.q_norm.weight", Slot::kQNorm, detail::q_width,
     &LayerWeightsT<W>::q_norm},
    {"model.layers.{layer}.self_attn.k_norm.weight", Slot::kKNorm, detail::kv_width,
     &LayerWeightsT<W>::k_norm},
};
/// Every family: the pre-MLP norm.
template <class W>
inline constexpr LayerRow<W> kMlpNormRows[] = {
    {"model.layers.{layer}.post_attention_layernorm.weight", Slot::kMlpNorm, detail::width,
     &LayerWeightsT<W>::mlp_norm},
};
/// A dense layer (Qwen2-MoE: mlp_only_layers, or off the decoder_sparse_step grid).
template <class W>
inline constexpr LayerRow<W> kDenseRows[] = {
    {"model.layers.{layer}.mlp.gate_proj.weight", Slot::kDenseGate,
     [](const Config& c) {
       return models::Shape{c.d_ff_dense, c.d_model};
     },
     &LayerWeightsT<W>::dense_gate},
    {"model.layers.{layer}.mlp.up_proj.weight", Slot::kDenseUp,
     [](const Config& c) {
       return models::Shape{c.d_ff_dense, c.d_model};
     },
     &LayerWeightsT<W>::dense_up},
    {"model.layers.{layer}.mlp.down_proj.weight", Slot::kDenseDown,
     [](const Config& c) {
       return models::Shape{c.d_model, c.d_ff_dense};
     },
     &LayerWeightsT<W>::dense_down},
};

namespace detail {
inline models::Shape router_shape(const Config& c) {
  return {c.n_experts, c.d_model};
}
inline models::Shape expert_in(const Config& c) {
  return {c.d_ff_expert, c.d_model};
}
inline models::Shape expert_out(const Config& c) {
  return {c.d_model, c.d_ff_expert};
}
}  // namespace detail

/// Mixtral's sparse block: the router, then each expert ("{expert}": one group per expert).
template <class W>
inline constexpr LayerRow<W> kMixtralRouterRows[] = {
    {"model.layers.{layer}.block_sparse_moe.gate.weight", Slot::kRouter, detail::router_shape,
     &LayerWeightsT<W>::router},
};
template <class W>
inline constexpr LayerRow<W> kMixtralExpertRows[] = {
    {"model.layers.{layer}.block_sparse_moe.experts.{expert}.w1.weight", Slot::kExpertGate,
     detail::expert_in, &LayerWeightsT<W>::expert_gate},
    {"model.layers.{layer}.block_sparse_moe.experts.{expert}.w2.weight", Slot::kExpertDown,
     detail::expert_out, &LayerWeightsT<W>::expert_down},
    {"model.layers.{layer}.block_sparse_moe.experts.{expert}.w3.weight", Slot::kExpertUp,
     detail::expert_in, &LayerWeightsT<W>::expert_up},
};
/// Qwen2-MoE's and OLMoE's sparse block.
template <class W>
inline constexpr LayerRow<W> kRouterRows[] = {
    {"model.layers.{layer}.mlp.gate.weight", Slot::kRouter, detail::router_shape,
     &LayerWeightsT<W>::router},
};
template <class W>
inline constexpr LayerRow<W> kExpertRows[] = {
    {"model.layers.{layer}.mlp.experts.{expert}.gate_proj.weight", Slot::kExpertGate,
     detail::expert_in, &LayerWeightsT<W>::expert_gate},
    {"model.layers.{layer}.mlp.experts.{expert}.down_proj.weight", Slot::kExpertDown,
     detail::expert_out, &LayerWeightsT<W>::expert_down},
    {"model.layers.{layer}.mlp.experts.{expert}.up_proj.weight", Slot::kExpertUp, detail::expert_in,
     &LayerWeightsT<W>::expert_up},
};
/// Qwen2-MoE's shared expert (shared_expert_intermediate_size > 0) and its sigmoid gate.
template <class W>
inline constexpr LayerRow<W> kSharedExpertRows[] = {
    {"model.layers.{layer}.mlp.shared_expert.gate_proj.weight", Slot::kSharedGate,
     [](const Config& c) {
       return models::Shape{c.d_ff_shared, c.d_model};
     },
     &LayerWeightsT<W>::shared_gate},
    {"model.layers.{layer}.mlp.shared_expert.up_proj.weight", Slot::kSharedUp,
     [](const Config& c) {
       return models::Shape{c.d_ff_shared, c.d_model};
     },
     &LayerWeightsT<W>::shared_up},
    {"model.layers.{layer}.mlp.shared_expert.down_proj.weight", Slot::kSharedDown,
     [](const Config& c) {
       return models::Shape{c.d_model, c.d_ff_shared};
     },
     &LayerWeightsT<W>::shared_down},
    {"model.layers.{layer}.mlp.shared_expert_gate.weight", Slot::kSharedExpertGate,
     [](const Config& c) {
       return models::Shape{1, c.d_model};
     },
     &LayerWeightsT<W>::shared_expert_gate},
};

/// A group of a layer's tensors; `per_expert` groups repeat for every expert.
template <class W>
struct LayerGroup {
  std::span<const LayerRow<W>> rows;
  bool per_expert = false;
};

/// The groups of layer `l` of `c`, in state-dict order.
template <class W>
std::vector<LayerGroup<W>> layer_groups(const Config& c, std::size_t l) {
  std::vector<LayerGroup<W>> g{{kAttentionRows<W>}};
  if (c.qkv_bias) g.push_back({kQkvBiasRows<W>});
  if (c.qk_norm) g.push_back({kQkNormRows<W>});
  g.push_back({kMlpNormRows<W>});
  if (!c.sparse(l)) {
    g.push_back({kDenseRows<W>});
    return g;
  }
  const bool mixtral = c.family == Family::kMixtral;
  g.push_back({mixtral ? std::span<const LayerRow<W>>(kMixtralRouterRows<W>)
                       : std::span<const LayerRow<W>>(kRouterRows<W>)});
  g.push_back({mixtral ? std::span<const LayerRow<W>>(kMixtralExpertRows<W>)
                       : std::span<const LayerRow<W>>(kExpertRows<W>),
               true});
  if (c.d_ff_shared > 0) g.push_back({kSharedExpertRows<W>});
  return g;
}

/// `pattern` with "{layer}" and "{expert}" replaced, e.g.
/// "model.layers.3.block_sparse_moe.experts.7.w2.weight".
inline std::string tensor_name(std::string_view pattern, std::size_t layer,
                               std::size_t expert = 0) {
  std::string s = models::tensor_path(pattern, layer);
  constexpr std::string_view kExpert = "{expert}";
  if (const std::size_t at = s.find(kExpert); at != std::string::npos) {
    s.replace(at, kExpert.size(), std::to_string(expert));
  }
  return s;
}

/// Calls f(row, name, layer, expert) for every tensor of `c` in state-dict order (layer and
/// expert are -1 where they do not apply): the one loop the functions below share.
template <class W, class GlobalF, class LayerF>
void for_each_tensor(const Config& c, GlobalF&& global, LayerF&& layer) {
  for (const GlobalRow<W>& r : kEmbeddingRows<W>) global(r, std::string(r.path));
  for (std::size_t l = 0; l < c.n_layers; ++l) {
    for (const LayerGroup<W>& g : layer_groups<W>(c, l)) {
      const std::size_t n = g.per_expert ? c.n_experts : 1;
      for (std::size_t e = 0; e < n; ++e) {
        for (const LayerRow<W>& r : g.rows) {
          layer(r, tensor_name(r.path, l, e), static_cast<int>(l),
                g.per_expert ? static_cast<int>(e) : -1);
        }
      }
    }
  }
  for (const GlobalRow<W>& r : kFinalNormRows<W>) global(r, std::string(r.path));
  if (!c.tie_word_embeddings) {
    for (const GlobalRow<W>& r : kHeadRows<W>) global(r, std::string(r.path));
  }
}

// ---- the expanded table and the checkpoint check ------------------------------------------------

/// One tensor a checkpoint must hold. Linear weights are PyTorch's [out, in].
struct TensorSpec {
  std::string name;
  std::vector<std::size_t> shape;
  std::optional<io::safetensors::DType> dtype;  ///< config.json's torch_dtype, when it names one
  Slot slot = Slot::kEmbedding;
  int layer = -1;   ///< -1 for the embedding, the final norm and the head
  int expert = -1;  ///< -1 unless a routed expert's projection
};

/// Every tensor of the family's checkpoint for `c` (name, shape, dtype, role), in the order of
/// the model's state dict.
inline std::vector<TensorSpec> tensor_table(const Config& c) {
  using W = BF16Weight;  // the rows' paths, roles and shapes do not depend on W
  std::vector<TensorSpec> t;
  for_each_tensor<W>(
      c,
      [&](const GlobalRow<W>& r, std::string name) {
        t.push_back({std::move(name), r.shape(c).vector(), c.dtype, r.slot, -1, -1});
      },
      [&](const LayerRow<W>& r, std::string name, int layer, int expert) {
        t.push_back({std::move(name), r.shape(c).vector(), c.dtype, r.slot, layer, expert});
      });
  return t;
}

/// Checks that `ckpt` holds every tensor of tensor_table(c) with its shape and a floating dtype
/// (config.json's torch_dtype when it names one). Other tensors in the checkpoint are ignored.
/// Throws FormatError (a tensor is missing: names it and the index or file) or ShapeError (wrong
/// shape or dtype: names the tensor, its file and both shapes or dtypes).
inline void check_tensors(const Config& c, const io::safetensors::Checkpoint& ckpt) {
  using io::safetensors::DType;
  for (const TensorSpec& spec : tensor_table(c)) {
    const io::safetensors::Tensor t = ckpt.tensor(spec.name);  // FormatError when missing
    const std::string where = "[hf] tensor '" + spec.name + "' in '" + *t.file + "'";
    if (t.dtype != DType::kF32 && t.dtype != DType::kBF16 && t.dtype != DType::kF16) {
      throw ShapeError(where + " has dtype " + std::string(dtype_name(t.dtype)) +
                       ", expected a floating dtype (F32, BF16, F16)");
    }
    if (spec.dtype && t.dtype != *spec.dtype) {
      throw ShapeError(where + " has dtype " + std::string(dtype_name(t.dtype)) + ", expected " +
                       std::string(dtype_name(*spec.dtype)) + " (config.json torch_dtype)");
    }
    if (!std::equal(t.shape.begin(), t.shape.end(), spec.shape.begin(), spec.shape.end())) {
      throw ShapeError(where + " has shape " +
                       shape_str(std::vector<std::size_t>(t.shape.begin(), t.shape.end())) +
                       ", expected " + shape_str(spec.shape));
    }
  }
}

/// The dtype of the checkpoint's matrices (that of layer 0's q_proj): BF16 binds BF16Weight
/// views, F32 and F16 bind F32Weight (F16 widened at load). Throws FormatError when absent.
inline io::safetensors::DType matrix_dtype(const io::safetensors::Checkpoint& ckpt) {
  return ckpt.tensor("model.layers.0.self_attn.q_proj.weight").dtype;
}

// ---- binding ------------------------------------------------------------------------------------

namespace detail {

/// Binds checkpoint tensors to the views of a WeightsT<W>, copying only what the file comment
/// says (into w.owned).
template <class W>
class Binder {
 public:
  using T = typename W::element_type;
  using DType = io::safetensors::DType;

  explicit Binder(WeightsT<W>& w) : w_(w) {}

  void bind(W& v, const io::safetensors::Tensor& t) {
    v = W{elements(t), t.shape[1], t.shape[0], Layout::kOutIn};
  }
  void bind(std::vector<W>& v, const io::safetensors::Tensor& t, std::size_t expert,
            std::size_t n_experts) {
    v.resize(n_experts);
    bind(v[expert], t);
  }
  void bind(std::span<const float>& v, const io::safetensors::Tensor& t) {
    v = {as_f32(t), t.numel()};
  }
  void bind(EmbeddingTable& v, const io::safetensors::Tensor& t) {
    const std::size_t rows = t.shape[0], cols = t.shape[1];
    if (t.dtype == DType::kBF16 && t.aligned()) {
      v = EmbeddingTable::bf16_table(reinterpret_cast<const bf16*>(t.data), rows, cols);
    } else if (t.dtype == DType::kF32) {
      v = EmbeddingTable::f32(t.data, rows, cols);  // any byte alignment
    } else {
      v = EmbeddingTable(as_f32(t), rows, cols);
    }
  }

 private:
  /// The tensor as elements of W: in place when the dtypes agree and the data is aligned.
  const T* elements(const io::safetensors::Tensor& t) {
    if constexpr (std::is_same_v<T, bf16>) {
      if (t.dtype != DType::kBF16) {
        throw ShapeError("[hf] tensor '" + t.name() + "' in '" + *t.file + "' has dtype " +
                         std::string(dtype_name(t.dtype)) +
                         ", but the model's matrices are BF16: moe does not round weights "
                         "(bind the checkpoint with F32Weight)");
      }
      if (t.aligned()) return reinterpret_cast<const bf16*>(t.data);
      auto* p = reinterpret_cast<bf16*>(own(t.nbytes));
      std::memcpy(p, t.data, t.nbytes);
      return p;
    } else {
      return as_f32(t);
    }
  }

  /// The tensor as f32: in place for aligned F32, else widened exactly into owned memory.
  const float* as_f32(const io::safetensors::Tensor& t) {
    if (t.dtype == DType::kF32 && t.aligned()) return reinterpret_cast<const float*>(t.data);
    const std::size_t n = t.numel();
    auto* p = reinterpret_cast<float*>(own(n * sizeof(float)));
    for (std::size_t i = 0; i < n; ++i) {
      std::uint16_t h = 0;
      switch (t.dtype) {
        case DType::kF32:
          std::memcpy(p + i, t.data + 4 * i, 4);
          break;
        case DType::kBF16:
          std::memcpy(&h, t.data + 2 * i, 2);
          p[i] = bf16::from_bits(h).to_float();
          break;
        case DType::kF16:
          std::memcpy(&h, t.data + 2 * i, 2);
          p[i] = io::safetensors::f16{h}.to_float();
          break;
        default:
          throw ShapeError("[hf] tensor '" + t.name() + "' in '" + *t.file + "' has dtype " +
                           std::string(dtype_name(t.dtype)) + ", expected F32, BF16 or F16");
      }
    }
    return p;
  }

  unsigned char* own(std::size_t bytes) {
    w_.owned.emplace_back(bytes);
    w_.copied_bytes += bytes;
    return w_.owned.back().data();
  }

  WeightsT<W>& w_;
};

}  // namespace detail

/// Views of every tensor of `ckpt` in the model's weight struct, after check_tensors(). The
/// checkpoint must outlive the views. W is BF16Weight for a BF16 checkpoint, F32Weight for F32
/// or F16 (see matrix_dtype()); throws ShapeError naming the tensor when a matrix cannot be read
/// as W without rounding, FormatError / ShapeError from check_tensors().
template <class W>
WeightsT<W> bind_weights(const Config& c, const io::safetensors::Checkpoint& ckpt) {
  check_tensors(c, ckpt);
  WeightsT<W> w;
  w.layers.resize(c.n_layers);
  detail::Binder<W> b(w);
  for_each_tensor<W>(
      c,
      [&](const GlobalRow<W>& r, const std::string& name) {
        r.field.visit(w, [&](auto& view) { b.bind(view, ckpt.tensor(name)); });
      },
      [&](const LayerRow<W>& r, const std::string& name, int layer, int expert) {
        r.field.visit(w.layers[static_cast<std::size_t>(layer)], [&](auto& view) {
          if constexpr (std::is_same_v<std::decay_t<decltype(view)>, std::vector<W>>) {
            b.bind(view, ckpt.tensor(name), static_cast<std::size_t>(expert), c.n_experts);
          } else {
            b.bind(view, ckpt.tensor(name));
          }
        });
      });
  w.validate(c);
  return w;
}

// ---- validation ---------------------------------------------------------------------------------

namespace detail {

inline void check_view(const EmbeddingTable& v, const std::string& name, const models::Shape& s) {
  v.validate("hf", name, s.dims[0], s.dims[1]);
}
inline void check_view(std::span<const float> v, const std::string& name, const models::Shape& s) {
  if (v.data() == nullptr) throw ShapeError("[hf] tensor '" + name + "' is missing");
  const std::size_t got[] = {v.size()};
  check_shape("hf", name, got, s.span());
}
template <class W>
void check_view(const W& w, const std::string& name, const models::Shape& s) {
  validate_weight(w, "hf", name);
  if (w.layout != Layout::kOutIn) {
    throw ShapeError("[hf] tensor '" + name + "' must be an [out, in] view (Layout::kOutIn)");
  }
  const std::size_t got[] = {w.out, w.in};  // stored [out, in]
  check_shape("hf", name, got, s.span());
}

}  // namespace detail

template <class W>
void WeightsT<W>::validate(const Config& c) const {
  c.validate();
  if (layers.size() != c.n_layers) {
    throw ShapeError("[hf] weights have " + std::to_string(layers.size()) +
                     " decoder layers, config expects " + std::to_string(c.n_layers));
  }
  for_each_tensor<W>(
      c,
      [&](const GlobalRow<W>& r, const std::string& name) {
        r.field.visit(*this, [&](const auto& view) { detail::check_view(view, name, r.shape(c)); });
      },
      [&](const LayerRow<W>& r, const std::string& name, int layer, int expert) {
        r.field.visit(layers[static_cast<std::size_t>(layer)], [&](const auto& view) {
          if constexpr (std::is_same_v<std::decay_t<decltype(view)>, std::vector<W>>) {
            if (view.size() != c.n_experts) {
              throw ShapeError("[hf] tensor '" + name + "': layer " + std::to_string(layer) +
                               " has " + std::to_string(view.size()) + " expert views, expected " +
                               std::to_string(c.n_experts));
            }
            detail::check_view(view[static_cast<std::size_t>(expert)], name, r.shape(c));
          } else {
            detail::check_view(view, name, r.shape(c));
          }
        });
      });
}

}  // namespace moe::hf
