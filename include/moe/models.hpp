// moe/models.hpp: umbrella of the model families: where a file format meets the layers. Grok-1
// (config, tensor table, make_model, the release-format reader, loader, exporter and the
// RAM-budget residency policy) and Hugging Face MoE checkpoints (config.json, tensor tables, the
// binding to the decoder and its residency plan).
// Includes <moe/layers.hpp> and <moe/io.hpp>.
#pragma once

#include <moe/io.hpp>
#include <moe/layers.hpp>
#include <moe/models/grok1.hpp>
#include <moe/models/grok1_checkpoint.hpp>
#include <moe/models/grok1_config.hpp>
#include <moe/models/grok1_config_json.hpp>
#include <moe/models/grok1_export.hpp>
#include <moe/models/grok1_loader.hpp>
#include <moe/models/grok1_residency.hpp>
#include <moe/models/grok1_tensors.hpp>
#include <moe/models/hf_config.hpp>
#include <moe/models/hf_model.hpp>
#include <moe/models/hf_residency.hpp>
#include <moe/models/hf_tensors.hpp>
#include <moe/models/tensor_table.hpp>
#include <moe/models/weight_residency.hpp>
