// moe/layers.hpp: umbrella of the compute side: core, the SIMD vocabulary, the ops (kernels) and
// the layers (router, experts, MoELayer and its presets, attention, blocks, Decoder).
//
// Nothing here reads or writes files: no io/ header, no mmap, no <filesystem>, no pickle
// (tests/umbrella/layers_without_io.cpp checks it). Files: <moe/io.hpp>; model families and
// their checkpoints: <moe/models.hpp>; training: <moe/train.hpp>. Every header is also
// includable on its own.
#pragma once

#include <moe/config.hpp>
#include <moe/version.hpp>

// core: errors, bf16, owners and views, scratch, threads
#include <moe/core/arena.hpp>
#include <moe/core/bf16.hpp>
#include <moe/core/buffer.hpp>
#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/core/thread_pool.hpp>

// simd + ops: the kernels (forward and backward)
#include <moe/ops/activation.hpp>
#include <moe/ops/attention.hpp>
#include <moe/ops/embedding.hpp>
#include <moe/ops/loss.hpp>
#include <moe/ops/matmul.hpp>
#include <moe/ops/matmul_grad.hpp>
#include <moe/ops/norm.hpp>
#include <moe/ops/rope.hpp>
#include <moe/ops/softmax.hpp>
#include <moe/ops/topk.hpp>
#include <moe/ops/vector.hpp>
#include <moe/ops/weights.hpp>
#include <moe/simd/simd.hpp>

// layers: MoE and the decoder
#include <moe/layers/attention.hpp>
#include <moe/layers/decoder.hpp>
#include <moe/layers/expert.hpp>
#include <moe/layers/kv_cache.hpp>
#include <moe/layers/moe_layer.hpp>
#include <moe/layers/moe_types.hpp>
#include <moe/layers/policies.hpp>
#include <moe/layers/presets.hpp>
#include <moe/layers/router.hpp>
#include <moe/layers/transformer_block.hpp>
