#!/usr/bin/python3
"""Float64 reference of Hugging Face MoE decoders, read from checkpoints in the HF layout.

    /usr/bin/python3 tools/hf_reference.py CKPT_DIR [--tokens 1,5,9] [--max-new-tokens N]
        [--logits OUT.npy] [--logits64 OUT.npy] [--json]
    /usr/bin/python3 tools/hf_reference.py --self-test FIXTURES_DIR
    /usr/bin/python3 tools/hf_reference.py --write-references FIXTURES_DIR

A numpy transliteration, in float64, of the forward pass of MixtralForCausalLM,
Qwen2MoeForCausalLM and OlmoeForCausalLM as the public modeling code of huggingface/transformers
writes it (models/mixtral, models/qwen2_moe, models/olmoe, and masking_utils for the causal and
sliding-window masks); Debian ships no transformers or torch, so this is the reference the C++
decoder is compared with. It reads config.json (with the configuration classes' defaults),
model.safetensors or the shards of model.safetensors.index.json (its own small safetensors
reader, independent of the C++ one), runs one causal pass over the prompt, prints the greedy
continuation and writes the logits of every prompt position ([T, vocab]; --logits as float32
.npy, which moe::io::read_npy reads; --logits64 as float64).

The model, step by step (names as in the modeling files):
  embed_tokens -> for each layer: h += self_attn(input_layernorm(h));
                                  h += mlp(post_attention_layernorm(h))
               -> norm -> lm_head (embed_tokens when tie_word_embeddings)
  RMSNorm        weight * x / sqrt(mean(x^2) + eps)
  self_attn      q, k, v = x W^T (+ bias: Qwen2-MoE qkv_bias); OLMoE: q = q_norm(q), k = k_norm(k)
                 over the whole projection; RoPE as apply_rotary_pos_emb: x cos + rotate_half(x)
                 sin with inv_freq = theta^(-2i/dh), cos/sin of cat(freqs, freqs); repeat_kv
                 (query head h uses kv head h // (Hq/Hkv)); softmax(q k^T / sqrt(dh) + mask) v;
                 mask: key j visible to query i iff j <= i and (no window or j > i - window);
                 o_proj.
  sparse block   router logits x W_gate^T, softmax over experts, top-k (Mixtral: renormalised;
                 Qwen2-MoE, OLMoE: renormalised iff norm_topk_prob); expert e:
                 down(silu(gate(x)) * up(x)), weighted by its routing weight, summed per token;
                 Qwen2-MoE adds sigmoid(x W_shared_gate^T) * shared_expert(x).
  dense layer    Qwen2-MoE layers in mlp_only_layers or off the decoder_sparse_step grid:
                 down(silu(gate(x)) * up(x)) of width intermediate_size.

--self-test DIR runs on the fixtures of tools/make_hf_checkpoint.py --fixtures DIR and checks
the reference against independent formulations: the safetensors bytes against the generator's
CRC-32s; RoPE as rotate_half against complex rotation of the pairs (j, j + dh/2); the routed
block (one loop per expert, as the modeling code) against a dense gate matrix built by plain
Python routing; the vectorised
masked attention against a loop over explicit key ranges; causality (the logits of a prefix
equal the first rows of the full pass); the sliding window (positions below the window equal a
run without it, later positions differ); greedy decoding against argmax of the full pass.

--write-references DIR writes, into each fixture checkpoint of DIR, reference_logits.npy (float32
[9, vocab], the logits of default_tokens(c, 9)) and reference.json (the tokens, the greedy
continuation of 6 tokens and each step's margin between the two largest logits, relative to the
largest |logit|, so that a test can skip near-ties), for tests/io/test_hf_model.cpp.
"""
import argparse
import json
import math
import os
import struct
import sys
import zlib

import numpy as np

# ---- safetensors ---------------------------------------------------------------------------------

NP_DTYPE = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I8": "i1"}


def read_safetensors(path):
    """{name: (dtype, float64 or int array, raw bytes)} of one file."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base, out = 8 + n, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[base + begin:base + end]
        shape = tuple(info["shape"])
        if info["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            values = bits.view(np.float32).astype(np.float64).reshape(shape)
        else:
            values = np.frombuffer(raw, dtype=NP_DTYPE[info["dtype"]]).reshape(shape)
            values = values.astype(np.float64) if info["dtype"][0] == "F" else values
        out[name] = (info["dtype"], values, raw)
    return out


def read_checkpoint(ckpt):
    """{name: (dtype, values, raw)} of model.safetensors or of every shard of the index."""
    index = os.path.join(ckpt, "model.safetensors.index.json")
    if not os.path.exists(index):
        return read_safetensors(os.path.join(ckpt, "model.safetensors"))
    with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        for name, t in read_safetensors(os.path.join(ckpt, shard)).items():
            assert weight_map.get(name) == shard, (name, shard)
            tensors[name] = t
    assert set(tensors) == set(weight_map), "the index and the shards disagree"
    return tensors


# ---- config.json ---------------------------------------------------------------------------------

FAMILY = {"MixtralForCausalLM": "mixtral", "Qwen2MoeForCausalLM": "qwen2_moe",
          "OlmoeForCausalLM": "olmoe"}


def read_config(ckpt):
    """The fields the forward pass uses, with MixtralConfig / Qwen2MoeConfig / OlmoeConfig
    defaults for absent ones."""
    with open(os.path.join(ckpt, "config.json")) as f:
        raw = json.load(f)
    arch = (raw.get("architectures") or [None])[0]
    fam = FAMILY.get(arch) or raw.get("model_type")
    if fam not in FAMILY.values():
        raise SystemExit("hf_reference: unsupported architecture %r" % arch)

    def get(key, default):
        v = raw.get(key)
        return default if v is None else v

    mixtral, qwen = fam == "mixtral", fam == "qwen2_moe"
    c = {"family": fam}
    c["vocab"] = get("vocab_size", 32000 if mixtral else 151936 if qwen else 50304)
    c["d"] = get("hidden_size", 4096 if mixtral else 2048)
    c["layers"] = get("num_hidden_layers", 32 if mixtral else 24 if qwen else 16)
    c["hq"] = get("num_attention_heads", 32 if mixtral else 16)
    c["hkv"] = get("num_key_value_heads", 8 if mixtral else c["hq"])
    c["dh"] = get("head_dim", c["d"] // c["hq"])
    c["eps"] = get("rms_norm_eps", 1e-6 if qwen else 1e-5)
    theta = (raw.get("rope_parameters") or {}).get("rope_theta")
    c["theta"] = get("rope_theta", theta if theta is not None else 1e6 if mixtral else 10000.0)
    assert (raw.get("rope_scaling") or {}).get("rope_type", "default") == "default"
    assert get("hidden_act", "silu") == "silu"
    c["tie"] = get("tie_word_embeddings", False)
    c["window"] = get("sliding_window", 0) if mixtral else 0
    assert not (qwen and get("use_sliding_window", False)), "use_sliding_window"
    assert get("clip_qkv", None) is None, "clip_qkv"
    if mixtral:
        c["experts"] = get("num_local_experts", get("num_experts", 8))
        c["top_k"] = get("num_experts_per_tok", 2)
        c["norm_topk"] = True
    else:
        c["experts"] = get("num_experts", get("num_local_experts", 60 if qwen else 64))
        c["top_k"] = get("num_experts_per_tok", 4 if qwen else 8)
        c["norm_topk"] = get("norm_topk_prob", False)
    step, dense = get("decoder_sparse_step", 1), set(get("mlp_only_layers", []))
    c["sparse"] = [not (qwen and (l in dense or (l + 1) % step != 0)) for l in range(c["layers"])]
    return c


# ---- the model -----------------------------------------------------------------------------------


def rms_norm(x, weight, eps):
    return weight * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def silu(x):
    return x / (1.0 + np.exp(-x))


def softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def rotary_cos_sin(positions, dh, theta):
    """LlamaRotaryEmbedding (rope_type 'default'): cos, sin of cat(freqs, freqs), [T, dh]."""
    inv_freq = 1.0 / theta ** (np.arange(0, dh, 2, dtype=np.float64) / dh)
    freqs = positions[:, None].astype(np.float64) * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb), np.sin(emb)


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x, cos, sin):
    """x [H, T, dh]."""
    return x * cos[None] + rotate_half(x) * sin[None]


def visible(t_count, window):
    """masking_utils: causal (kv <= q) and, with a window, sliding_window_overlay (kv > q - w)."""
    q = np.arange(t_count)[:, None]
    kv = np.arange(t_count)[None, :]
    ok = kv <= q
    return ok & (kv > q - window) if window else ok


def attention(c, W, p, x, positions):
    t_count, dh = x.shape[0], c["dh"]
    q = x @ W[p + "self_attn.q_proj.weight"].T
    k = x @ W[p + "self_attn.k_proj.weight"].T
    v = x @ W[p + "self_attn.v_proj.weight"].T
    if p + "self_attn.q_proj.bias" in W:  # Qwen2-MoE qkv_bias
        q = q + W[p + "self_attn.q_proj.bias"]
        k = k + W[p + "self_attn.k_proj.bias"]
        v = v + W[p + "self_attn.v_proj.bias"]
    if c["family"] == "olmoe":  # q_norm / k_norm over the whole projection, before RoPE
        q = rms_norm(q, W[p + "self_attn.q_norm.weight"], c["eps"])
        k = rms_norm(k, W[p + "self_attn.k_norm.weight"], c["eps"])
    q = q.reshape(t_count, -1, dh).transpose(1, 0, 2)
    k = k.reshape(t_count, -1, dh).transpose(1, 0, 2)
    v = v.reshape(t_count, -1, dh).transpose(1, 0, 2)
    cos, sin = rotary_cos_sin(positions, dh, c["theta"])
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    n_rep = c["hq"] // c["hkv"]
    k, v = np.repeat(k, n_rep, axis=0), np.repeat(v, n_rep, axis=0)  # repeat_kv
    scores = q @ k.transpose(0, 2, 1) * dh ** -0.5
    scores = np.where(visible(t_count, c["window"])[None], scores, -np.inf)
    out = softmax(scores) @ v  # [Hq, T, dh]
    out = out.transpose(1, 0, 2).reshape(t_count, -1)
    return out @ W[p + "self_attn.o_proj.weight"].T, (q, k, v)


def gated_mlp(x, gate, up, down):
    return (silu(x @ gate.T) * (x @ up.T)) @ down.T


def expert_names(c, p, e):
    if c["family"] == "mixtral":
        x = p + "block_sparse_moe.experts.%d." % e
        return x + "w1.weight", x + "w3.weight", x + "w2.weight"
    x = p + "mlp.experts.%d." % e
    return x + "gate_proj.weight", x + "up_proj.weight", x + "down_proj.weight"


def route(c, W, p, x):
    """(top-k expert ids [T, k], their weights [T, k]) as the sparse blocks compute them."""
    gate = p + ("block_sparse_moe." if c["family"] == "mixtral" else "mlp.") + "gate.weight"
    probs = softmax(x @ W[gate].T)
    top = np.argsort(-probs, axis=-1, kind="stable")[:, :c["top_k"]]  # torch.topk, ties low id
    weights = np.take_along_axis(probs, top, axis=-1)
    if c["norm_topk"]:
        weights = weights / weights.sum(axis=-1, keepdims=True)
    return top, weights


def sparse_block(c, W, p, x):
    """The modeling code's loop: each hit expert over the tokens routed to it (index_add_)."""
    top, weights = route(c, W, p, x)
    out = np.zeros_like(x)
    for e in range(c["experts"]):
        tok, slot = np.nonzero(top == e)
        if tok.size == 0:
            continue
        g, u, d = (W[n] for n in expert_names(c, p, e))
        np.add.at(out, tok, gated_mlp(x[tok], g, u, d) * weights[tok, slot][:, None])
    if c["family"] == "qwen2_moe":
        s = p + "mlp.shared_expert."
        shared = gated_mlp(x, W[s + "gate_proj.weight"], W[s + "up_proj.weight"],
                           W[s + "down_proj.weight"])
        gate = 1.0 / (1.0 + np.exp(-(x @ W[p + "mlp.shared_expert_gate.weight"].T)))
        out = out + gate * shared
    return out


def mlp(c, W, p, layer, x):
    if c["sparse"][layer]:
        return sparse_block(c, W, p, x)
    return gated_mlp(x, W[p + "mlp.gate_proj.weight"], W[p + "mlp.up_proj.weight"],
                     W[p + "mlp.down_proj.weight"])


def forward(c, W, tokens, trace=None):
    """Logits [T, vocab] of one causal pass over `tokens` (positions 0..T-1)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    positions = np.arange(len(tokens))
    h = W["model.embed_tokens.weight"][tokens]
    for layer in range(c["layers"]):
        p = "model.layers.%d." % layer
        x = rms_norm(h, W[p + "input_layernorm.weight"], c["eps"])
        a, qkv = attention(c, W, p, x, positions)
        h = h + a
        x = rms_norm(h, W[p + "post_attention_layernorm.weight"], c["eps"])
        if trace is not None:
            trace.append((p, layer, qkv, x))
        h = h + mlp(c, W, p, layer, x)
    h = rms_norm(h, W["model.norm.weight"], c["eps"])
    head = W["model.embed_tokens.weight"] if c["tie"] else W["lm_head.weight"]
    return h @ head.T


def greedy(c, W, tokens, n):
    """n greedy tokens after `tokens` (a full pass per step; the first maximum wins ties)."""
    seq = list(tokens)
    for _ in range(n):
        seq.append(int(np.argmax(forward(c, W, seq)[-1])))
    return seq[len(tokens):]


def load(ckpt):
    c = read_config(ckpt)
    W = {name: values for name, (_, values, _) in read_checkpoint(ckpt).items()}
    return c, W


def default_tokens(c, n=8):
    return [(7 * i + 3) % c["vocab"] for i in range(n)]


# ---- self-test -----------------------------------------------------------------------------------

CHECKPOINTS = ["mixtral_bf16_sharded", "mixtral_f32", "mixtral_window", "qwen2_moe_bf16",
               "olmoe_f32"]


def close(a, b, what, tol=1e-12):
    err = np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b)))
    if not err <= tol:
        raise AssertionError("%s: relative error %.3g > %.3g" % (what, err, tol))


def check_reader(ckpt):
    with open(os.path.join(ckpt, "manifest.json")) as f:
        manifest = json.load(f)["tensors"]
    tensors = read_checkpoint(ckpt)
    assert set(tensors) == set(manifest), "tensor names differ from the manifest"
    for name, (dtype, values, raw) in tensors.items():
        m = manifest[name]
        assert (dtype, list(values.shape)) == (m["dtype"], m["shape"]), name
        assert zlib.crc32(raw) == m["crc32"], name


def check_rope(c):
    """rotate_half form == complex rotation of the pairs (j, j + dh/2) by pos * theta^(-2j/dh)."""
    rng = np.random.default_rng(1)
    dh, half, t_count = c["dh"], c["dh"] // 2, 9
    x = rng.standard_normal((2, t_count, dh))
    cos, sin = rotary_cos_sin(np.arange(t_count), dh, c["theta"])
    z = x[..., :half] + 1j * x[..., half:]
    angle = np.arange(t_count)[:, None] * c["theta"] ** (-2.0 * np.arange(half) / dh)[None, :]
    z = z * np.exp(1j * angle)[None]
    close(apply_rotary(x, cos, sin), np.concatenate([z.real, z.imag], axis=-1), "rope")


def check_layers(c, W, tokens):
    """Attention by explicit key ranges and the routed block by a dense gate matrix."""
    trace = []
    forward(c, W, tokens, trace)
    for p, layer, (q, k, v), x in trace:
        t_count, dh = q.shape[1], q.shape[2]
        out = np.zeros_like(q)
        for i in range(t_count):
            first = max(0, i - c["window"] + 1) if c["window"] else 0
            s = np.einsum("hd,hjd->hj", q[:, i], k[:, first:i + 1]) / np.sqrt(dh)
            out[:, i] = np.einsum("hj,hjd->hd", softmax(s), v[:, first:i + 1])
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(dh)
        masked = np.where(visible(t_count, c["window"])[None], scores, -np.inf)
        close(softmax(masked) @ v, out, p + "attention")
        if not c["sparse"][layer]:
            continue
        # Routing token by token in plain Python: softmax, the k largest, renormalised or not.
        gate = W[p + ("block_sparse_moe." if c["family"] == "mixtral" else "mlp.") + "gate.weight"]
        dense_gates = np.zeros((x.shape[0], c["experts"]))
        for t, row in enumerate((x @ gate.T).tolist()):
            m = max(row)
            probs = [math.exp(r - m) / sum(math.exp(u - m) for u in row) for r in row]
            chosen = sorted(range(len(row)), key=lambda e: (-probs[e], e))[:c["top_k"]]
            total = sum(probs[e] for e in chosen) if c["norm_topk"] else 1.0
            for e in chosen:
                dense_gates[t, e] = probs[e] / total
        want = sum(dense_gates[:, e:e + 1] * gated_mlp(x, *(W[n] for n in expert_names(c, p, e)))
                   for e in range(c["experts"]))
        got = sparse_block(c, W, p, x)
        if c["family"] == "qwen2_moe":
            s = p + "mlp.shared_expert."
            got = got - gated_mlp(x, W[s + "gate_proj.weight"], W[s + "up_proj.weight"],
                                  W[s + "down_proj.weight"]) / (
                1.0 + np.exp(-(x @ W[p + "mlp.shared_expert_gate.weight"].T)))
        close(got, want, p + "routed experts")
        assert np.all(np.count_nonzero(dense_gates, axis=-1) == c["top_k"])


def self_test(root):
    for name in CHECKPOINTS:
        ckpt = os.path.join(root, name)
        check_reader(ckpt)
        c, W = load(ckpt)
        check_rope(c)
        tokens = default_tokens(c, 9)
        logits = forward(c, W, tokens)
        assert logits.shape == (len(tokens), c["vocab"]) and np.all(np.isfinite(logits))
        for t in (1, 4, len(tokens) - 1):  # causality: a prefix gives the same rows
            close(forward(c, W, tokens[:t]), logits[:t], "%s prefix %d" % (name, t))
        check_layers(c, W, tokens)
        cont = greedy(c, W, tokens, 3)
        full = forward(c, W, tokens + cont)
        assert cont == [int(np.argmax(full[len(tokens) - 1 + i])) for i in range(3)], name
        if c["window"]:
            no_window = forward(dict(c, window=0), W, tokens)
            w = c["window"]
            close(logits[:w], no_window[:w], "window below its size")
            assert np.max(np.abs(logits[w:] - no_window[w:])) > 1e-6, "the window had no effect"
        print("hf_reference: %-22s ok (%d tensors, logits [%d, %d], greedy %s)" %
              (name, len(W), logits.shape[0], logits.shape[1], cont))
    print("hf_reference: self-test passed")


def greedy_with_margins(c, W, tokens, n):
    """greedy() plus, per step, (top1 - top2) / max |logit| of the step's logits."""
    seq, margins = list(tokens), []
    for _ in range(n):
        last = forward(c, W, seq)[-1]
        order = np.argsort(-last, kind="stable")
        margins.append(float((last[order[0]] - last[order[1]]) / np.max(np.abs(last))))
        seq.append(int(order[0]))
    return seq[len(tokens):], margins


def write_references(root):
    for name in CHECKPOINTS:
        ckpt = os.path.join(root, name)
        c, W = load(ckpt)
        tokens = default_tokens(c, 9)
        np.save(os.path.join(ckpt, "reference_logits.npy"), forward(c, W, tokens).astype("<f4"))
        cont, margins = greedy_with_margins(c, W, tokens, 6)
        with open(os.path.join(ckpt, "reference.json"), "w") as f:
            json.dump({"tokens": tokens, "greedy": cont, "margins": margins}, f)
            f.write("\n")
    print("hf_reference: references written for %d checkpoints in %s" % (len(CHECKPOINTS), root))


# ---- command line --------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?")
    ap.add_argument("--self-test", metavar="FIXTURES_DIR")
    ap.add_argument("--write-references", metavar="FIXTURES_DIR")
    ap.add_argument("--tokens", help="comma-separated prompt ids (default: 8 fixed ids)")
    ap.add_argument("--max-new-tokens", type=int, default=4)
    ap.add_argument("--logits", metavar="OUT.npy", help="prompt logits [T, vocab] as float32")
    ap.add_argument("--logits64", metavar="OUT.npy", help="the same as float64")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if args.self_test:
        self_test(args.self_test)
        return 0
    if args.write_references:
        write_references(args.write_references)
        return 0
    if not args.checkpoint:
        ap.error("CKPT_DIR or --self-test DIR is required")
    c, W = load(args.checkpoint)
    tokens = ([int(t) for t in args.tokens.split(",")] if args.tokens else default_tokens(c))
    if not all(0 <= t < c["vocab"] for t in tokens):
        raise SystemExit("hf_reference: a token id is outside [0, %d)" % c["vocab"])
    logits = forward(c, W, tokens)
    cont = greedy(c, W, tokens, args.max_new_tokens)
    if args.logits:
        np.save(args.logits, logits.astype("<f4"))
    if args.logits64:
        np.save(args.logits64, logits)
    result = {"family": c["family"], "tokens": tokens, "greedy": cont,
              "argmax": [int(i) for i in np.argmax(logits, axis=-1)],
              "max_abs_logit": float(np.max(np.abs(logits)))}
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print("%s: %s" % (k, v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
