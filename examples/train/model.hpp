// The interface between the `train` example's trainer (main.cpp) and its model (grok_moe.hpp).
//
// The trainer needs four things from a model: its parameters (a ParameterStore, which the
// optimizer updates and the training checkpoint saves), a training step (forward + backward on
// a batch, adding the gradients to the store and reporting the loss and the routing statistics
// of every MoE layer), a validation loss, and views of its weights in Grok-1's layout for the
// export.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <moe/core/thread_pool.hpp>
#include <moe/models/grok1.hpp>
#include <moe/text/corpus.hpp>
#include <moe/train/parameters.hpp>

namespace train_example {

/// One MoE layer in one training step.
struct LayerStep {
  /// Fraction of the (token, expert) pairs the router sent to each expert, before capacity.
  std::vector<double> load;
  double dropped = 0;       ///< fraction of those pairs dropped by the capacity factor
  double entropy = 0;       ///< mean router entropy (nats)
  double mean_lse = 0;      ///< mean log-sum-exp of the router logits
  double balance_loss = 0;  ///< the raw Switch balance loss (1 at perfect balance)
};

/// What one training step reports.
struct StepStats {
  double loss = 0;                ///< mean cross-entropy (nats) over the batch's B*T targets
  double aux = 0;                 ///< the weighted auxiliary losses added to it (balance, z-loss)
  std::vector<LayerStep> layers;  ///< one per MoE layer (empty for a dense model)
};

class Model {
 public:
  virtual ~Model() = default;
  /// Short name, stored in the training checkpoint (a resume must use the same model).
  [[nodiscard]] virtual std::string name() const = 0;
  /// Every trainable tensor. The trainer zeroes the gradients, calls train_step, clips, steps.
  virtual moe::ParameterStore& parameters() = 0;
  /// Forward and backward on `batch` at optimizer step `step` (the seed of any training noise):
  /// ADDS dL/dtheta to parameters().grads(). Deterministic for every thread count.
  virtual StepStats train_step(moe::ThreadPool& pool, const moe::Batch& batch,
                               std::uint64_t step) = 0;
  /// The mean cross-entropy over `batch` in evaluation mode (no gradients).
  virtual double loss(moe::ThreadPool& pool, const moe::Batch& batch) = 0;
  /// The weights as Grok-1 views, for the export (valid while the model lives).
  [[nodiscard]] virtual moe::grok1::WeightsT<moe::F32Weight> grok1_weights() const = 0;
};

}  // namespace train_example
