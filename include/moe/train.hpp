// moe/train.hpp: umbrella of training: ParameterStore, AdamW and its schedule, resumable training
// checkpoints (<filesystem>), TrainableDecoder, and the corpus pipeline (tokenize_corpus,
// BatchSampler; the tokenizer itself is <moe/text/tokenizer.hpp>, target moe::tokenizer).
// Includes <moe/layers.hpp>. The layers' own backward passes are in their headers.
#pragma once

#include <moe/layers.hpp>
#include <moe/text/corpus.hpp>
#include <moe/train/checkpoint.hpp>
#include <moe/train/optimizer.hpp>
#include <moe/train/parameters.hpp>
#include <moe/train/trainable.hpp>
