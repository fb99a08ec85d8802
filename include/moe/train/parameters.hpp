// moe/train/parameters.hpp: ParameterStore, the f32 parameters of a model being trained and
// their gradients.
//
// As in llm.c, all trainable tensors live in one flat parameter buffer and one flat gradient
// buffer of the same layout; each named tensor is a slice of both. Layers never see the store:
// they get F32Weight views of the parameter slices and WeightGrad views of the gradient slices
// (moe/ops/weights.hpp), so a model built for training is the same Decoder type that runs
// inference. The optimizer walks the two buffers element by element.
//
//   ParameterStore store;
//   const auto wq = store.add("layer_0/attention/query", {D, Hq * dh});  // declare everything,
//   ...                                                                   // then allocate once:
//   store.allocate();
//   F32Weight w = store.weight(wq);          // [in, out] view of the parameters
//   WeightGrad g = store.weight_grad(wq);    // the matching gradient view
//
// Declaration and allocation are two phases so that every pointer handed out stays valid for
// the store's lifetime (the store never reallocates after allocate()). Tensors are aligned to
// 64 bytes inside the buffers. Each tensor carries a weight-decay flag read by the optimizer
// (AdamW decays only the flagged tensors; by convention norms and biases are not flagged).
#pragma once

#include <algorithm>
#include <cstddef>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <moe/config.hpp>
#include <moe/core/buffer.hpp>
#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/ops/weights.hpp>

namespace moe {

/// One named tensor of a ParameterStore.
struct ParameterInfo {
  std::string name;
  std::vector<std::size_t> shape;
  std::size_t offset = 0;  ///< first element in the flat buffers
  std::size_t size = 0;    ///< number of elements
  bool decay = true;       ///< weight decay applies (AdamW)
  bool frozen = false;     ///< the optimizer leaves it alone (no update, no decay): set_frozen()
};

}  // namespace moe

MOE_SIMD_NAMESPACE_BEGIN

class ParameterStore {
 public:
  /// Index of a tensor in the store.
  using Id = std::size_t;
  /// Elements per alignment unit (64 bytes).
  static constexpr std::size_t kAlign = 16;

  /// Declares a tensor (before allocate()). Names must be unique and shapes non-empty.
  Id add(std::string name, std::vector<std::size_t> shape, bool decay = true) {
    if (allocated()) {
      throw ConfigError("[parameters] add('" + name + "') after allocate()");
    }
    if (find(name) != npos) throw ConfigError("[parameters] tensor '" + name + "' declared twice");
    std::size_t n = shape.empty() ? 0 : 1;
    for (std::size_t d : shape) n *= d;
    if (n == 0) {
      throw ShapeError("[parameters] tensor '" + name + "' has empty shape " + shape_str(shape));
    }
    ParameterInfo info{std::move(name), std::move(shape), total_, n, decay};
    total_ += (n + kAlign - 1) / kAlign * kAlign;
    infos_.push_back(std::move(info));
    return infos_.size() - 1;
  }

  /// Allocates the parameter and gradient buffers (both zeroed). Called once.
  void allocate() {
    if (allocated()) throw ConfigError("[parameters] allocate() called twice");
    if (infos_.empty()) throw ConfigError("[parameters] no tensors declared");
    params_ = Buffer<float>(total_, 0.0f);
    grads_ = Buffer<float>(total_, 0.0f);
  }

  [[nodiscard]] bool allocated() const noexcept { return params_.size() > 0; }
  [[nodiscard]] std::size_t n_tensors() const noexcept { return infos_.size(); }
  /// Elements of both flat buffers (tensor sizes plus alignment padding).
  [[nodiscard]] std::size_t n_elements() const noexcept { return total_; }
  /// Elements of the tensors themselves (the model's parameter count).
  [[nodiscard]] std::size_t n_parameters() const noexcept {
    std::size_t n = 0;
    for (const auto& i : infos_) n += i.size;
    return n;
  }
  [[nodiscard]] const ParameterInfo& info(Id id) const { return infos_.at(id); }
  /// Freezes (or unfreezes) a tensor: AdamW then neither updates nor decays it, and its moments
  /// stay as they are (fine-tuning part of a model). Its gradient is still whatever the
  /// backward wrote (a frozen layer's backward writes none).
  void set_frozen(Id id, bool frozen) { infos_.at(id).frozen = frozen; }
  [[nodiscard]] const std::vector<ParameterInfo>& infos() const noexcept { return infos_; }

  static constexpr Id npos = static_cast<Id>(-1);
  /// The tensor named `name`, or npos.
  [[nodiscard]] Id find(std::string_view name) const noexcept {
    for (std::size_t i = 0; i < infos_.size(); ++i) {
      if (infos_[i].name == name) return i;
    }
    return npos;
  }
  /// The tensor named `name`; throws ConfigError if there is none.
  [[nodiscard]] Id at(std::string_view name) const {
    const Id id = find(name);
    if (id == npos) throw ConfigError("[parameters] no tensor named '" + std::string(name) + "'");
    return id;
  }

  [[nodiscard]] std::span<float> param(Id id) {
    const ParameterInfo& i = checked(id);
    return {params_.data() + i.offset, i.size};
  }
  [[nodiscard]] std::span<const float> param(Id id) const {
    const ParameterInfo& i = checked(id);
    return {params_.data() + i.offset, i.size};
  }
  [[nodiscard]] std::span<float> grad(Id id) {
    const ParameterInfo& i = checked(id);
    return {grads_.data() + i.offset, i.size};
  }
  [[nodiscard]] std::span<const float> grad(Id id) const {
    const ParameterInfo& i = checked(id);
    return {grads_.data() + i.offset, i.size};
  }

  /// The whole flat buffers (padding elements stay 0).
  [[nodiscard]] std::span<float> params() noexcept { return params_.span(); }
  [[nodiscard]] std::span<const float> params() const noexcept { return params_.span(); }
  [[nodiscard]] std::span<float> grads() noexcept { return grads_.span(); }
  [[nodiscard]] std::span<const float> grads() const noexcept { return grads_.span(); }

  /// A 2-D tensor as a weight view: shape [in, out] for kInOut, [out, in] for kOutIn.
  [[nodiscard]] F32Weight weight(Id id, Layout layout = Layout::kInOut) const {
    const auto [in, out] = matrix_shape(id, layout);
    return F32Weight{param(id).data(), in, out, layout};
  }
  /// The gradient view matching weight(id, layout).
  [[nodiscard]] WeightGrad weight_grad(Id id, Layout layout = Layout::kInOut) {
    const auto [in, out] = matrix_shape(id, layout);
    return WeightGrad{grad(id).data(), in, out, layout};
  }
  /// A 2-D tensor [rows, cols] as a matrix view (e.g. an embedding table).
  [[nodiscard]] MatrixView<const float> matrix(Id id) const {
    const auto [r, c] = matrix_shape(id, Layout::kInOut);
    return {param(id).data(), r, c};
  }
  [[nodiscard]] MatrixView<float> matrix_grad(Id id) {
    const auto [r, c] = matrix_shape(id, Layout::kInOut);
    return {grad(id).data(), r, c};
  }

  /// Sets every gradient to 0 (once per optimizer step; backward passes accumulate).
  void zero_grads() noexcept { std::fill(grads_.begin(), grads_.end(), 0.0f); }

 private:
  const ParameterInfo& checked(Id id) const {
    const ParameterInfo& i = infos_.at(id);
    if (!allocated()) {
      throw ConfigError("[parameters] tensor '" + i.name + "' used before allocate()");
    }
    return i;
  }
  std::pair<std::size_t, std::size_t> matrix_shape(Id id, Layout layout) const {
    const ParameterInfo& i = infos_.at(id);
    if (i.shape.size() != 2) {
      throw ShapeError("[parameters] tensor '" + i.name + "' has shape " + shape_str(i.shape) +
                       ", expected a matrix");
    }
    return layout == Layout::kInOut ? std::pair{i.shape[0], i.shape[1]}
                                    : std::pair{i.shape[1], i.shape[0]};
  }

  std::vector<ParameterInfo> infos_;
  std::size_t total_ = 0;
  Buffer<float> params_;
  Buffer<float> grads_;
};

MOE_SIMD_NAMESPACE_END
