// moe/moe.hpp: umbrella header. Every public header is also includable on its own.
#pragma once

#include <moe/version.hpp>
#include <moe/config.hpp>
#include <moe/core/arena.hpp>
#include <moe/core/bf16.hpp>
#include <moe/core/buffer.hpp>
#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/models/grok1_config.hpp>
#include <moe/ops/activation.hpp>
#include <moe/ops/matmul.hpp>
#include <moe/ops/norm.hpp>
#include <moe/ops/rope.hpp>
#include <moe/ops/softmax.hpp>
#include <moe/ops/topk.hpp>
#include <moe/ops/vector.hpp>
#include <moe/ops/weights.hpp>
