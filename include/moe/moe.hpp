// moe/moe.hpp: umbrella header. Every public header is also includable on its own.
//
// Not included here: <moe/text/tokenizer.hpp>, which needs SentencePiece (link moe::tokenizer).
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

// simd + ops: kernels
#include <moe/ops/activation.hpp>
#include <moe/ops/matmul.hpp>
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

// text: sampling and generation
#include <moe/text/generate.hpp>
#include <moe/text/sampler.hpp>

// io: memory-mapped files, the data-only pickle reader, npy, json
#include <moe/io/json.hpp>
#include <moe/io/mapped_file.hpp>
#include <moe/io/npy.hpp>
#include <moe/io/pickle.hpp>

// models: Grok-1
#include <moe/models/grok1.hpp>
#include <moe/models/grok1_checkpoint.hpp>
#include <moe/models/grok1_config.hpp>
#include <moe/models/grok1_loader.hpp>
