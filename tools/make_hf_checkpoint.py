#!/usr/bin/python3
"""Writes tiny random checkpoints in the Hugging Face layout, with numpy only.

    /usr/bin/python3 tools/make_hf_checkpoint.py OUT_DIR [--family mixtral|qwen2_moe|olmoe]
        [--dtype bf16|f16|f32] [--shards N] [--seed S] [--set key=value ...]
        [--preset tiny|full] [--sparse]
    /usr/bin/python3 tools/make_hf_checkpoint.py --fixtures DIR    (the test fixtures of ctest)

OUT_DIR receives what transformers' save_pretrained writes for MixtralForCausalLM,
Qwen2MoeForCausalLM or OlmoeForCausalLM: config.json, and either model.safetensors (one shard)
or model-0000N-of-0000M.safetensors plus model.safetensors.index.json ({"metadata":
{"total_size": ...}, "weight_map": {tensor: shard}}). Tensor names and [out, in] shapes follow
the families' public modeling code (huggingface/transformers models/mixtral, qwen2_moe, olmoe),
as stored on disk (one tensor per expert projection). --set overrides a config.json field with a
JSON value (--set sliding_window=4 --set 'mlp_only_layers=[0]').

The safetensors format (huggingface/safetensors README) is written by hand: an 8-byte
little-endian header length N, a JSON header padded with spaces so that 8 + N is a multiple of
8, then the tensors back to back, ordered by element size (largest first) and name, so that every
tensor is aligned for its element type. bf16 values are float32 rounded to nearest even.

--preset full --sparse writes the published model's layout at full size without using disk
space: the headers are real, the data sections are holes (e.g. Mixtral 8x7B in 19 shards:
93.4 GB apparent, a few hundred kB on disk).

Weights are random (seeded): linear weights N(0, 1/in), norms 1 + N(0, 0.1^2), biases N(0, 0.1^2),
the embedding N(0, 1). Every checkpoint also gets manifest.json (moe's addition, ignored by other
readers): per tensor its shard, dtype, shape and the CRC-32 of its bytes, for the reader tests.

--fixtures DIR writes the checkpoints tests/io/test_safetensors.cpp reads (see FIXTURES below),
DIR/mixtral_8x7b_sparse (the real Mixtral 8x7B layout, sparse), and
DIR/dtypes/model.safetensors: one tensor of each dtype with values given by a formula.
"""
import argparse
import json
import os
import struct
import sys
import zlib

import numpy as np

# ---- config.json --------------------------------------------------------------------------------

ARCH = {"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
        "olmoe": "OlmoeForCausalLM"}
TORCH_DTYPE = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}


def tiny_config(family, dtype):
    """A small config.json of the family with every field the real checkpoints carry."""
    c = {"architectures": [ARCH[family]], "model_type": family, "vocab_size": 96,
         "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "hidden_act": "silu", "max_position_embeddings": 128,
         "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
         "num_experts_per_tok": 2, "torch_dtype": TORCH_DTYPE[dtype], "bos_token_id": 1,
         "eos_token_id": 2, "use_cache": True, "initializer_range": 0.02,
         "attention_dropout": 0.0, "output_router_logits": False, "router_aux_loss_coef": 0.02}
    if family == "mixtral":
        c.update({"num_local_experts": 4, "intermediate_size": 48, "rope_theta": 1e6,
                  "sliding_window": None})
    elif family == "qwen2_moe":
        c.update({"num_hidden_layers": 3, "num_experts": 6, "moe_intermediate_size": 24,
                  "intermediate_size": 56, "shared_expert_intermediate_size": 40,
                  "norm_topk_prob": False, "decoder_sparse_step": 1, "mlp_only_layers": [],
                  "qkv_bias": True, "use_sliding_window": False, "sliding_window": 64,
                  "max_window_layers": 3, "rms_norm_eps": 1e-6})
    else:
        c.update({"num_key_value_heads": 4, "num_experts": 8, "num_experts_per_tok": 3,
                  "intermediate_size": 24, "norm_topk_prob": False, "clip_qkv": None,
                  "attention_bias": False, "pad_token_id": 1, "eos_token_id": 50})
    return c


def layer_is_sparse(c, layer):
    """Qwen2MoeDecoderLayer's rule; every layer of Mixtral and OLMoE is sparse."""
    if c["model_type"] != "qwen2_moe":
        return True
    step = c.get("decoder_sparse_step", 1)
    return layer not in (c.get("mlp_only_layers") or []) and (layer + 1) % step == 0


def tensor_list(c):
    """[(name, shape)] in the order of the model's state dict; linear weights are [out, in]."""
    fam = c["model_type"]
    d, v = c["hidden_size"], c["vocab_size"]
    hq, hkv = c["num_attention_heads"], c.get("num_key_value_heads") or c["num_attention_heads"]
    dh = c.get("head_dim") or d // hq
    out = [("model.embed_tokens.weight", (v, d))]
    for l in range(c["num_hidden_layers"]):
        p = "model.layers.%d." % l
        out += [(p + "input_layernorm.weight", (d,)),
                (p + "self_attn.q_proj.weight", (hq * dh, d)),
                (p + "self_attn.k_proj.weight", (hkv * dh, d)),
                (p + "self_attn.v_proj.weight", (hkv * dh, d)),
                (p + "self_attn.o_proj.weight", (d, hq * dh))]
        if fam == "qwen2_moe" and c.get("qkv_bias", True):
            out += [(p + "self_attn.q_proj.bias", (hq * dh,)),
                    (p + "self_attn.k_proj.bias", (hkv * dh,)),
                    (p + "self_attn.v_proj.bias", (hkv * dh,))]
        if fam == "olmoe":
            out += [(p + "self_attn.q_norm.weight", (hq * dh,)),
                    (p + "self_attn.k_norm.weight", (hkv * dh,))]
        out.append((p + "post_attention_layernorm.weight", (d,)))
        if not layer_is_sparse(c, l):
            f = c["intermediate_size"]
            out += [(p + "mlp.gate_proj.weight", (f, d)), (p + "mlp.up_proj.weight", (f, d)),
                    (p + "mlp.down_proj.weight", (d, f))]
            continue
        if fam == "mixtral":
            e_count, f = c["num_local_experts"], c["intermediate_size"]
            m = p + "block_sparse_moe."
            names = ("w1", "w2", "w3")
        else:
            e_count = c["num_experts"]
            f = c["moe_intermediate_size"] if fam == "qwen2_moe" else c["intermediate_size"]
            m = p + "mlp."
            names = ("gate_proj", "down_proj", "up_proj")
        out.append((m + "gate.weight", (e_count, d)))
        for e in range(e_count):
            x = m + "experts.%d." % e
            out += [(x + names[0] + ".weight", (f, d)), (x + names[1] + ".weight", (d, f)),
                    (x + names[2] + ".weight", (f, d))]
        if fam == "qwen2_moe":
            s = c["shared_expert_intermediate_size"]
            out += [(m + "shared_expert.gate_proj.weight", (s, d)),
                    (m + "shared_expert.up_proj.weight", (s, d)),
                    (m + "shared_expert.down_proj.weight", (d, s)),
                    (m + "shared_expert_gate.weight", (1, d))]
    out.append(("model.norm.weight", (d,)))
    if not c.get("tie_word_embeddings", False):
        out.append(("lm_head.weight", (v, d)))
    return out


def published_config(family):
    """The shapes of Mixtral-8x7B-v0.1, Qwen1.5-MoE-A2.7B and OLMoE-1B-7B-0924 (their
    config.json values), in bf16, for --preset full."""
    c = tiny_config(family, "bf16")
    if family == "mixtral":
        c.update({"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
                  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                  "num_local_experts": 8, "num_experts_per_tok": 2, "rope_theta": 1e6,
                  "max_position_embeddings": 32768})
    elif family == "qwen2_moe":
        c.update({"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 5632,
                  "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
                  "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16,
                  "num_experts": 60, "num_experts_per_tok": 4, "rope_theta": 1e6,
                  "max_position_embeddings": 8192, "max_window_layers": 21,
                  "sliding_window": 32768, "bos_token_id": 151643, "eos_token_id": 151643})
    else:
        c.update({"vocab_size": 50304, "hidden_size": 2048, "intermediate_size": 1024,
                  "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 16,
                  "num_experts": 64, "num_experts_per_tok": 8, "max_position_embeddings": 4096,
                  "eos_token_id": 50279})
    return c


def random_values(name, shape, rng):
    """float32 values for one tensor (see the module docstring)."""
    z = rng.standard_normal(shape)
    if name.endswith("norm.weight"):
        return (1.0 + 0.1 * z).astype(np.float32)
    if name.endswith(".bias"):
        return (0.1 * z).astype(np.float32)
    if name == "model.embed_tokens.weight":
        return z.astype(np.float32)
    return (z / np.sqrt(shape[-1])).astype(np.float32)


# ---- safetensors --------------------------------------------------------------------------------

ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I8": 1}


def bf16_bits(x):
    """float32 -> bf16 bits, round to nearest even (finite values)."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def encode(values, dtype):
    """Little-endian bytes of `values` stored as safetensors dtype `dtype`."""
    if dtype == "BF16":
        return bf16_bits(values).astype("<u2").tobytes()
    np_type = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I8": "i1"}[dtype]
    return np.ascontiguousarray(values).astype(np_type).tobytes()


def nbytes(dtype, shape):
    return ITEMSIZE[dtype] * int(np.prod(shape, dtype=np.int64))


def safetensors_header(tensors, metadata=None):
    """tensors: [(name, dtype, shape, ...)] -> (the 8 + N header bytes, tensors in file order,
    data bytes). Order: element size (largest first), then name."""
    order = sorted(tensors, key=lambda t: (-ITEMSIZE[t[1]], t[0]))
    header, offset = {}, 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for t in order:
        size = nbytes(t[1], t[2])
        header[t[0]] = {"dtype": t[1], "shape": list(t[2]), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    return struct.pack("<Q", len(text)) + text, order, offset


def safetensors_bytes(tensors, metadata=None):
    """tensors: [(name, dtype, shape, raw bytes)] -> the file's bytes (reference layout)."""
    head, order, _ = safetensors_header(tensors, metadata)
    for name, dtype, shape, raw in order:
        assert len(raw) == nbytes(dtype, shape), name
    return head + b"".join(t[3] for t in order)


def write_checkpoint(out, config, dtype="bf16", shards=1, seed=0, sparse=False):
    """Writes config.json, the shard(s), the index (shards > 1) and manifest.json into `out`.
    sparse: headers only, the data sections left as holes (zeros) of their full size, for
    real-size layouts; their manifest has no CRCs."""
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    st = {"bf16": "BF16", "f16": "F16", "f32": "F32"}[dtype]
    tensors = [(name, st, shape, None if sparse else encode(random_values(name, shape, rng), st))
               for name, shape in tensor_list(config)]
    total = sum(nbytes(st, t[2]) for t in tensors)
    groups, acc = [[]], 0  # consecutive tensors, cut when a shard reaches total / shards
    for t in tensors:
        if groups[-1] and acc >= total * len(groups) / shards and len(groups) < shards:
            groups.append([])
        groups[-1].append(t)
        acc += nbytes(st, t[2])
    names = (["model.safetensors"] if len(groups) == 1 else
             ["model-%05d-of-%05d.safetensors" % (i + 1, len(groups)) for i in range(len(groups))])
    weight_map, manifest = {}, {}
    for shard, group in zip(names, groups):
        with open(os.path.join(out, shard), "wb") as f:
            if sparse:
                head, _, data = safetensors_header(group, {"format": "pt"})
                f.write(head)
                f.truncate(len(head) + data)
            else:
                f.write(safetensors_bytes(group, {"format": "pt"}))
        for name, dt, shape, raw in group:
            weight_map[name] = shard
            manifest[name] = {"file": shard, "dtype": dt, "shape": list(shape),
                              "crc32": None if sparse else zlib.crc32(raw)}
    if len(groups) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
            f.write("\n")
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"tensors": manifest}, f, indent=1, sort_keys=True)
        f.write("\n")
    return len(groups)


# ---- test fixtures ------------------------------------------------------------------------------

# name: (family, dtype, shards, config overrides)
FIXTURES = {
    "mixtral_bf16_sharded": ("mixtral", "bf16", 3, {}),
    "mixtral_f32": ("mixtral", "f32", 1, {}),
    "mixtral_window": ("mixtral", "f32", 1, {"sliding_window": 3}),
    "qwen2_moe_bf16": ("qwen2_moe", "bf16", 2, {"mlp_only_layers": [0]}),
    "olmoe_f32": ("olmoe", "f32", 2, {"norm_topk_prob": True, "tie_word_embeddings": True}),
}

F16_VALUES = [0.0, 1.0, -2.0, 65504.0, 2.0 ** -14, 2.0 ** -24, -0.5, float("inf"), 3.140625]


def dtypes_tensors():
    """One tensor per dtype, values by formula (tests/io/test_safetensors.cpp recomputes them)."""
    f32 = np.arange(15, dtype=np.float64).reshape(3, 5) * 0.25 - 1.5
    bf16 = (np.arange(24, dtype=np.float64).reshape(2, 3, 4) - 12) * 0.5
    i8 = (np.arange(16).reshape(4, 4) * 17 % 256 - 128).astype(np.int8)
    return [("f32", "F32", (3, 5), encode(f32, "F32")),
            ("bf16", "BF16", (2, 3, 4), encode(bf16, "BF16")),
            ("f16", "F16", (len(F16_VALUES),), encode(np.array(F16_VALUES), "F16")),
            ("i8", "I8", (4, 4), encode(i8, "I8")),
            ("scalar", "F32", (), encode(np.array(42.0), "F32")),
            ("empty", "F32", (0, 3), b""),
            ("f64", "F64", (2,), encode(np.array([1.5, -2.5]), "F64"))]


def write_fixtures(root):
    for name, (family, dtype, shards, overrides) in FIXTURES.items():
        config = tiny_config(family, dtype)
        config.update(overrides)
        write_checkpoint(os.path.join(root, name), config, dtype, shards,
                         seed=zlib.crc32(name.encode()))
    write_checkpoint(os.path.join(root, "mixtral_8x7b_sparse"), published_config("mixtral"),
                     "bf16", 19, sparse=True)
    os.makedirs(os.path.join(root, "dtypes"), exist_ok=True)
    tensors = dtypes_tensors()
    with open(os.path.join(root, "dtypes", "model.safetensors"), "wb") as f:
        f.write(safetensors_bytes(tensors, {"format": "pt", "note": "moe dtypes fixture"}))
    manifest = {n: {"file": "model.safetensors", "dtype": d, "shape": list(s),
                    "crc32": zlib.crc32(raw)} for n, d, s, raw in tensors}
    with open(os.path.join(root, "dtypes", "manifest.json"), "w") as f:
        json.dump({"tensors": manifest}, f, indent=1, sort_keys=True)
    print("make_hf_checkpoint: %d fixtures in %s" % (len(FIXTURES) + 2, root))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?")
    ap.add_argument("--fixtures", metavar="DIR")
    ap.add_argument("--family", choices=sorted(ARCH), default="mixtral")
    ap.add_argument("--dtype", choices=["bf16", "f16", "f32"], default="bf16")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    ap.add_argument("--preset", choices=["tiny", "full"], default="tiny",
                    help="full: the published model's shapes (use with --sparse)")
    ap.add_argument("--sparse", action="store_true",
                    help="headers only; the data are holes of full size (no disk space used)")
    args = ap.parse_args()
    if args.fixtures:
        write_fixtures(args.fixtures)
        return
    if not args.out:
        ap.error("OUT_DIR or --fixtures DIR is required")
    config = (published_config(args.family) if args.preset == "full" else
              tiny_config(args.family, args.dtype))
    config["torch_dtype"] = TORCH_DTYPE[args.dtype]
    for kv in args.set:
        key, _, value = kv.partition("=")
        config[key] = json.loads(value)
    n = write_checkpoint(args.out, config, args.dtype, args.shards, args.seed, args.sparse)
    print("make_hf_checkpoint: %s %s, %d shard(s) in %s" % (ARCH[args.family], args.dtype, n,
                                                            args.out))


if __name__ == "__main__":
    sys.exit(main())
