// moe/io.hpp: umbrella of the file formats: memory-mapped files, the data-only pickle reader,
// safetensors (single files and sharded checkpoints), npy and JSON. POSIX (mmap) and
// <filesystem>; nothing here knows a layer or a model family.
#pragma once

#include <moe/config.hpp>
#include <moe/io/json.hpp>
#include <moe/io/mapped_file.hpp>
#include <moe/io/npy.hpp>
#include <moe/io/pickle.hpp>
#include <moe/io/safetensors.hpp>
#include <moe/version.hpp>
