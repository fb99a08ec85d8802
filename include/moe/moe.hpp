// moe/moe.hpp: the umbrella for using MoE layers and decoders: <moe/layers.hpp> (core, kernels,
// layers) plus sampling and generation. It reads no files: no io/, mmap, pickle or <filesystem>
// (tests/umbrella/layers_without_io.cpp checks it).
//
// The other umbrellas: <moe/io.hpp> (file formats), <moe/models.hpp> (Grok-1 and Hugging Face
// checkpoints; includes this one's layers and io), <moe/train.hpp> (training). Not included by
// any umbrella: <moe/text/tokenizer.hpp> (SentencePiece, link moe::tokenizer) and
// <moe/eigen.hpp> (Eigen, link moe::eigen). Every public header is also includable on its own.
#pragma once

#include <moe/layers.hpp>

// text: sampling and generation
#include <moe/text/generate.hpp>
#include <moe/text/sampler.hpp>
