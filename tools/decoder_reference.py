#!/usr/bin/python3
"""Float64 reference of a Grok-1-style MoE decoder, and the fixtures of tests/model/.

Written from the published model code and papers (xai-org/grok-1 model.py; Mistral's
mistral-inference; Du et al. 2022, "GLaM", arXiv:2112.06905; Lepikhin et al. 2020, "GShard",
arXiv:2006.16668), independently of the C++ code. For each fixture it draws random weights with a seeded numpy generator (stored in the
weight formats the C++ side reads: int8 + bf16 scales, bf16, f32), runs the whole forward pass
over a token sequence in float64 without a KV cache (one causal pass), and writes

    tests/data/model/<name>.bin       every tensor, 64-byte aligned, little-endian
    tests/data/model/<name>.txt       manifest: config values, then one line per tensor
                                      "tensor <name> <dtype> <offset> <dim0> <dim1> ..."

dtypes: f32, f64, i32, i8, bf16 (raw uint16 bits). Outputs: `tokens` [T] i32, `hidden.<l>`
[T, D] f64 (the residual stream after decoder layer l), `logits` [T, V] f64, and for fixtures
with a capacity `dropped` [L] i32 (the (token, expert) pairs each layer dropped; 0 for dense).

Fixtures:
  grok1_tiny     Grok-1 exactly (grok1::Config::tiny() shapes): sandwich norms, GQA 4/2,
                 half-split RoPE base 10000, logits * multiplier then 30 tanh(x / 30) (one layer
                 has large q/k weights so that the cap is engaged), softmax router over 8
                 experts, top-2 NOT renormalised, GELU-tanh experts, embedding and output
                 multipliers, tied head. Weights int8 [in, out] with bf16 scales (wo and the
                 expert down projection with 8 scale blocks), router/norms/embedding f32.
  mixtral_tiny   The same components configured Mixtral-style: pre-norm only, no soft-cap, no
                 multipliers, logits / sqrt(head_dim), interleaved RoPE base 1e6, SiLU experts,
                 top-2 renormalised, untied head. Weights bf16 in the PyTorch [out, in] layout,
                 router f32 [E, D] ([out, in]).
  mixtral_dense_first
                 mixtral_tiny with a dense first block (a SiLU FFN of width 56, bf16 [out, in])
                 and MoE blocks 1 and 2, as DeepSeek-MoE and Qwen-MoE configure their first
                 layers; tests/model/test_separate_experts.cpp stores its experts separately.
  glam_tiny      GLaM-shaped (Du et al. 2022): an MoE layer in every other block (blocks 0 and
                 2 of 4; blocks 1 and 3 have a dense gated-GELU FFN), 64 experts with GLaM's
                 GShard-style top-2 (softmax, the two gates renormalised before dropping,
                 capacity factor 2 without k: ceil(2 T / E) per expert, all first choices before
                 second choices, Lepikhin et al. 2020), pre-norm, MHA, half-split RoPE, no
                 soft-cap, untied head.
                 Weights f32 [in, out] (experts bf16 [in, out]); the whole sequence is one call,
                 since capacity depends on the tokens per call.

Run:  /usr/bin/python3 tools/decoder_reference.py [names]    (rewrites the fixtures)
      /usr/bin/python3 tools/decoder_reference.py --check    (recomputes, compares, no writes;
                                                              outputs to 1e-12: BLAS rounding
                                                              differs between CPUs)
"""
import argparse
import math
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "data", "model")

# ---- numeric helpers --------------------------------------------------------------------------


def bf16_bits(x):
    """float -> bf16 bits, round to nearest even (finite inputs)."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def bf16_value(bits):
    """bf16 bits -> float64 (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def rms_norm(x, scale, eps):
    """scale * x / sqrt(mean(x^2) + eps) over the last axis (plain scale, no 1 + s)."""
    return scale * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def silu(x):
    return x / (1.0 + np.exp(-x))


def softmax(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def rope(x, positions, base, layout):
    """x [T, H, dh] rotated by position; pairs (j, j + dh/2) or (2j, 2j + 1)."""
    t_count, _, dh = x.shape
    half = dh // 2
    inv_freq = base ** (-2.0 * np.arange(half) / dh)  # [half]
    theta = positions[:, None].astype(np.float64) * inv_freq[None, :]  # [T, half]
    c = np.cos(theta)[:, None, :]
    s = np.sin(theta)[:, None, :]
    if layout == "half_split":
        a, b = x[..., :half], x[..., half:]
        return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    y = np.empty_like(x)
    y[..., 0::2] = a * c - b * s
    y[..., 1::2] = b * c + a * s
    return y


# ---- weight formats ---------------------------------------------------------------------------


class Tensor:
    """A tensor as stored in the fixture (`data`, numpy) and its float64 value (`value`)."""

    def __init__(self, dtype, data, value):
        self.dtype, self.data, self.value = dtype, data, value


def make_int8(rng, in_dim, out_dim, blocks, std):
    """Grok-1 QuantizedWeight8bit [in, out]: int8 weights, bf16 scales [blocks, out].
    Returns (weight tensor, scales tensor, dequantized float64 [in, out])."""
    q = rng.integers(-127, 128, size=(in_dim, out_dim), dtype=np.int8)
    # int8 uniform in [-127, 127] has std ~73.6; scales ~ std / 73.6, varying per column/block.
    raw = rng.uniform(0.5, 1.5, size=(blocks, out_dim)) * std / 73.6
    sbits = bf16_bits(raw)
    svals = bf16_value(sbits)
    rows = in_dim // blocks
    w = q.astype(np.float64) * np.repeat(svals, rows, axis=0)
    return Tensor("i8", q, None), Tensor("bf16", sbits, svals), w


def make_int8_stack(rng, experts, in_dim, out_dim, blocks, std):
    qs, ss, ws = [], [], []
    for _ in range(experts):
        q, s, w = make_int8(rng, in_dim, out_dim, blocks, std)
        qs.append(q.data)
        ss.append(s.data)
        ws.append(w)
    return (Tensor("i8", np.stack(qs), None), Tensor("bf16", np.stack(ss), None), np.stack(ws))


def make_bf16_out_in(rng, in_dim, out_dim, std, lead=()):
    """bf16 weight stored [*, out, in] (PyTorch). Returns (tensor, float64 value [*, in, out])."""
    bits = bf16_bits(rng.normal(0.0, std, size=lead + (out_dim, in_dim)))
    return Tensor("bf16", bits, None), np.swapaxes(bf16_value(bits), -1, -2)


def make_f32(rng, shape, std=None, lo=None, hi=None):
    if std is not None:
        v = rng.normal(0.0, std, size=shape).astype(np.float32)
    else:
        v = rng.uniform(lo, hi, size=shape).astype(np.float32)
    return Tensor("f32", v, v.astype(np.float64))


# ---- the model ---------------------------------------------------------------------------------


def attention(a, lw, cfg):
    """Full causal self-attention over a [T, D] (no cache), float64."""
    t_count = a.shape[0]
    hq, hkv, dh = cfg["n_q_heads"], cfg["n_kv_heads"], cfg["head_dim"]
    q = (a @ lw["wq"]).reshape(t_count, hq, dh)
    k = (a @ lw["wk"]).reshape(t_count, hkv, dh)
    v = (a @ lw["wv"]).reshape(t_count, hkv, dh)
    pos = np.arange(t_count)
    k = rope(k, pos, cfg["rope_base"], cfg["rope_layout"])
    q = rope(q, pos, cfg["rope_base"], cfg["rope_layout"])
    group = hq // hkv
    out = np.zeros((t_count, hq, dh))
    max_logit = 0.0
    for h in range(hq):
        g = h // group  # KV head of query head h
        s = q[:, h, :] @ k[:, g, :].T * cfg["attn_logit_multiplier"]  # [T, T]
        max_logit = max(max_logit, float(np.max(np.abs(s))))
        if cfg["attn_softcap"] > 0:
            c = cfg["attn_softcap"]
            s = c * np.tanh(s / c)
        mask = np.tril(np.ones((t_count, t_count), dtype=bool))
        s = np.where(mask, s, -1e30)
        out[:, h, :] = softmax(s, axis=-1) @ v[:, g, :]
    return out.reshape(t_count, hq * dh) @ lw["wo"], max_logit


def capacity(cfg, t_count):
    """Per-expert capacity of a call with t_count tokens (None: dropless)."""
    cap = cfg.get("capacity")
    if cap is None:
        return None
    v = (cfg["top_k"] if cap["multiply_by_k"] else 1) * t_count * cap["cf"] / cfg["n_experts"]
    c = max(0, math.ceil(v - 1e-9 * max(v, 1.0)))
    return min(max(c, cap["min_capacity"]), t_count)


def moe(m, lw, cfg):
    """Router softmax over all experts, top-k (ties -> lower index), gates renormalised over the
    chosen ones if configured (before any dropping), then the capacity: pairs in position order
    (every first choice in token order, then every second choice, ...) and each expert keeps its
    first C; a dropped pair contributes nothing. Returns y, the smallest top-k gap, the drops."""
    logits = m @ lw["router"]  # [T, E]
    probs = softmax(logits, axis=-1)
    k, t_count = cfg["top_k"], m.shape[0]
    act = gelu_tanh if cfg["activation"] == "gelu_tanh" else silu
    chosen, gates, min_gap = [], [], np.inf
    for t in range(t_count):
        order = sorted(range(probs.shape[1]), key=lambda e: (-probs[t, e], e))
        chosen.append(order[:k])
        min_gap = min(min_gap, probs[t, order[k - 1]] - probs[t, order[k]])
        g = probs[t, order[:k]]
        gates.append(g / np.sum(g) if cfg["renormalize"] else g)
    keep = np.ones((t_count, k), dtype=bool)
    cap = capacity(cfg, t_count)
    if cap is not None:
        used = np.zeros(cfg["n_experts"], dtype=int)
        for j in range(k):
            for t in range(t_count):
                e = chosen[t][j]
                keep[t, j] = used[e] < cap
                used[e] += 1
    y = np.zeros_like(m)
    for t in range(t_count):
        for j in range(k):
            if keep[t, j]:
                e = chosen[t][j]
                hidden = act(m[t] @ lw["gate"][e]) * (m[t] @ lw["up"][e])
                y[t] += gates[t][j] * (hidden @ lw["down"][e])
    return y, min_gap, int(np.sum(~keep))


def dense_ffn(m, lw, cfg):
    act = gelu_tanh if cfg["dense_activation"] == "gelu_tanh" else silu
    return (act(m @ lw["dense_gate"]) * (m @ lw["dense_up"])) @ lw["dense_down"]


def forward(tokens, weights, cfg):
    eps = cfg["rms_eps"]
    h = weights["embedding"][tokens] * cfg["embedding_multiplier"]
    hidden, max_logit, min_gap, dropped = [], 0.0, np.inf, []
    moe_layers = cfg.get("moe_layers", list(range(cfg["n_layers"])))
    for layer, lw in enumerate(weights["layers"]):
        o, ml = attention(rms_norm(h, lw["norm0"], eps), lw, cfg)
        max_logit = max(max_logit, ml)
        h = h + (rms_norm(o, lw["norm1"], eps) if cfg["sandwich"] else o)
        m = rms_norm(h, lw["norm2"], eps)
        if layer in moe_layers:
            y, gap, drops = moe(m, lw, cfg)
            min_gap = min(min_gap, gap)
        else:
            y, drops = dense_ffn(m, lw, cfg), 0
        dropped.append(drops)
        h = h + (rms_norm(y, lw["norm3"], eps) if cfg["sandwich"] else y)
        hidden.append(h.copy())
    hn = rms_norm(h, weights["final_norm"], eps)
    head = weights["embedding"].T if cfg["tied"] else weights["head"]  # [D, V]
    logits = hn @ head * cfg["output_multiplier"]
    return hidden, logits, max_logit, min_gap, dropped


# ---- fixtures ---------------------------------------------------------------------------------

GROK1_TINY = dict(  # must equal moe::grok1::Config::tiny()
    vocab_size=64, d_model=32, n_layers=2, n_q_heads=4, n_kv_heads=2, head_dim=8, n_experts=8,
    top_k=2, d_ff=48, rope_base=10000.0, rope_layout="half_split", rms_eps=1e-5,
    embedding_multiplier=5.656854249492381, output_multiplier=0.5773502691896257,
    attn_logit_multiplier=0.35355339059327373, attn_softcap=30.0, sandwich=True,
    activation="gelu_tanh", renormalize=False, tied=True)

MIXTRAL_TINY = dict(
    vocab_size=80, d_model=48, n_layers=2, n_q_heads=6, n_kv_heads=2, head_dim=8, n_experts=4,
    top_k=2, d_ff=40, rope_base=1e6, rope_layout="interleaved", rms_eps=1e-5,
    embedding_multiplier=1.0, output_multiplier=1.0, attn_logit_multiplier=1 / math.sqrt(8),
    attn_softcap=0.0, sandwich=False, activation="silu", renormalize=True, tied=False)

# Mixtral-style with a dense first block (as DeepSeek-MoE and Qwen-MoE configure their first
# layers): block 0 has a dense SiLU FFN, blocks 1 and 2 the MoE layer.
MIXTRAL_DENSE_FIRST = dict(MIXTRAL_TINY, n_layers=3, dense_d_ff=56, dense_activation="silu",
                           moe_layers=[1, 2])

GLAM_TINY = dict(
    vocab_size=72, d_model=24, n_layers=4, n_q_heads=3, n_kv_heads=3, head_dim=8, n_experts=64,
    top_k=2, d_ff=16, dense_d_ff=48, rope_base=10000.0, rope_layout="half_split", rms_eps=1e-6,
    embedding_multiplier=1.0, output_multiplier=1.0, attn_logit_multiplier=1 / math.sqrt(8),
    attn_softcap=0.0, sandwich=False, activation="gelu_tanh", dense_activation="gelu_tanh",
    renormalize=True, tied=False, moe_layers=[0, 2],
    capacity=dict(cf=2.0, multiply_by_k=False, min_capacity=0))


def build_glam(rng, cfg):
    d, f, e, v = cfg["d_model"], cfg["d_ff"], cfg["n_experts"], cfg["vocab_size"]
    fd = cfg["dense_d_ff"]
    qd, kvd = cfg["n_q_heads"] * cfg["head_dim"], cfg["n_kv_heads"] * cfg["head_dim"]
    tensors, weights = {}, {"layers": []}
    emb = make_f32(rng, (v, d), std=1.0)
    fnorm = make_f32(rng, (d,), lo=0.6, hi=1.4)
    head = make_f32(rng, (d, v), std=1.0 / math.sqrt(d))  # [in, out]
    tensors.update(embedding=emb, final_norm=fnorm, head=head)
    weights.update(embedding=emb.value, final_norm=fnorm.value, head=head.value)
    for layer in range(cfg["n_layers"]):
        lw, p = {}, "layer%d." % layer
        for name, (i, o) in {"wq": (d, qd), "wk": (d, kvd), "wv": (d, kvd), "wo": (qd, d)}.items():
            t = make_f32(rng, (i, o), std=1.0 / math.sqrt(i))
            tensors[p + name], lw[name] = t, t.value
        for n in (0, 2):
            t = make_f32(rng, (d,), lo=0.6, hi=1.4)
            tensors[p + "norm%d" % n], lw["norm%d" % n] = t, t.value
        if layer in cfg["moe_layers"]:
            r = make_f32(rng, (d, e), std=2.0 / math.sqrt(d))  # [in, out]
            tensors[p + "router"], lw["router"] = r, r.value
            for name, (i, o) in {"gate": (d, f), "up": (d, f), "down": (f, d)}.items():
                bits = bf16_bits(rng.normal(0.0, 1.0 / math.sqrt(i), size=(e, i, o)))
                tensors[p + name], lw[name] = Tensor("bf16", bits, None), bf16_value(bits)
        else:
            for name, (i, o) in {"dense_gate": (d, fd), "dense_up": (d, fd),
                                 "dense_down": (fd, d)}.items():
                t = make_f32(rng, (i, o), std=1.0 / math.sqrt(i))
                tensors[p + name], lw[name] = t, t.value
        weights["layers"].append(lw)
    return tensors, weights


def build_grok(rng, cfg):
    d, f, e = cfg["d_model"], cfg["d_ff"], cfg["n_experts"]
    qd, kvd = cfg["n_q_heads"] * cfg["head_dim"], cfg["n_kv_heads"] * cfg["head_dim"]
    tensors, weights = {}, {"layers": []}
    emb = make_f32(rng, (cfg["vocab_size"], d), std=0.25)
    fnorm = make_f32(rng, (d,), lo=0.6, hi=1.4)
    tensors["embedding"], tensors["final_norm"] = emb, fnorm
    weights["embedding"], weights["final_norm"] = emb.value, fnorm.value
    for layer in range(cfg["n_layers"]):
        lw, p = {}, "layer%d." % layer
        # Layer 1 gets large query/key weights: its attention logits exceed the soft-cap.
        qk_std = 1.0 / math.sqrt(d) * (6.0 if layer == 1 else 1.0)
        for name, (i, o, blocks, std) in {
                "wq": (d, qd, 1, qk_std), "wk": (d, kvd, 1, qk_std),
                "wv": (d, kvd, 1, 1.0 / math.sqrt(d)), "wo": (qd, d, 8, 1.0 / math.sqrt(qd))}.items():
            qw, sc, w = make_int8(rng, i, o, blocks, std)
            tensors[p + name], tensors[p + name + ".scales"], lw[name] = qw, sc, w
        for n in range(4):
            t = make_f32(rng, (d,), lo=0.6, hi=1.4)
            tensors[p + "norm%d" % n], lw["norm%d" % n] = t, t.value
        r = make_f32(rng, (d, e), std=1.0 / math.sqrt(d))
        tensors[p + "router"], lw["router"] = r, r.value
        for name, (i, o, blocks) in {"gate": (d, f, 1), "up": (d, f, 1), "down": (f, d, 8)}.items():
            qw, sc, w = make_int8_stack(rng, e, i, o, blocks, 1.0 / math.sqrt(i))
            tensors[p + name], tensors[p + name + ".scales"], lw[name] = qw, sc, w
        weights["layers"].append(lw)
    return tensors, weights


def build_mixtral(rng, cfg):
    d, f, e, v = cfg["d_model"], cfg["d_ff"], cfg["n_experts"], cfg["vocab_size"]
    qd, kvd = cfg["n_q_heads"] * cfg["head_dim"], cfg["n_kv_heads"] * cfg["head_dim"]
    tensors, weights = {}, {"layers": []}
    emb = make_f32(rng, (v, d), std=1.0)
    fnorm = make_f32(rng, (d,), lo=0.6, hi=1.4)
    head, head_v = make_bf16_out_in(rng, d, v, 1.0 / math.sqrt(d))  # lm_head.weight [V, D]
    tensors.update(embedding=emb, final_norm=fnorm, head=head)
    weights.update(embedding=emb.value, final_norm=fnorm.value, head=head_v)
    for layer in range(cfg["n_layers"]):
        lw, p = {}, "layer%d." % layer
        for name, (i, o) in {"wq": (d, qd), "wk": (d, kvd), "wv": (d, kvd), "wo": (qd, d)}.items():
            t, w = make_bf16_out_in(rng, i, o, 1.0 / math.sqrt(i))
            tensors[p + name], lw[name] = t, w
        for n in (0, 2):
            t = make_f32(rng, (d,), lo=0.6, hi=1.4)
            tensors[p + "norm%d" % n], lw["norm%d" % n] = t, t.value
        if layer not in cfg.get("moe_layers", range(cfg["n_layers"])):
            fd = cfg["dense_d_ff"]  # a dense SiLU FFN, [out, in] like the experts
            for name, (i, o) in {"dense_gate": (d, fd), "dense_up": (d, fd),
                                 "dense_down": (fd, d)}.items():
                t, w = make_bf16_out_in(rng, i, o, 1.0 / math.sqrt(i))
                tensors[p + name], lw[name] = t, w
            weights["layers"].append(lw)
            continue
        r = make_f32(rng, (e, d), std=1.0 / math.sqrt(d))  # gate.weight [E, D]
        tensors[p + "router"], lw["router"] = r, r.value.T
        for name, (i, o) in {"gate": (d, f), "up": (d, f), "down": (f, d)}.items():
            t, w = make_bf16_out_in(rng, i, o, 1.0 / math.sqrt(i), lead=(e,))
            tensors[p + name], lw[name] = t, w
        weights["layers"].append(lw)
    return tensors, weights


FIXTURES = {
    "grok1_tiny": (GROK1_TINY, build_grok, 20240317, 12),
    "mixtral_tiny": (MIXTRAL_TINY, build_mixtral, 8, 10),
    "glam_tiny": (GLAM_TINY, build_glam, 5, 16),
    "mixtral_dense_first": (MIXTRAL_DENSE_FIRST, build_mixtral, 12, 11),
}

DTYPES = {"f32": "<f4", "f64": "<f8", "i32": "<i4", "i8": "i1", "bf16": "<u2"}


def serialise(name, cfg, tensors):
    blob, lines = bytearray(), ["# written by tools/decoder_reference.py; do not edit"]
    for key in sorted(cfg):
        value = cfg[key]
        if isinstance(value, float):
            value = repr(value)
        elif isinstance(value, list):
            value = ",".join(str(x) for x in value)
        elif isinstance(value, dict):
            value = ",".join("%s=%s" % kv for kv in sorted(value.items()))
        else:
            value = str(value).lower()
        lines.append("config %s %s" % (key, value))
    for tname, t in tensors.items():
        blob.extend(b"\0" * (-len(blob) % 64))
        arr = np.ascontiguousarray(t.data.astype(DTYPES[t.dtype]))
        lines.append("tensor %s %s %d %s" % (tname, t.dtype, len(blob),
                                             " ".join(str(s) for s in arr.shape)))
        blob.extend(arr.tobytes())
    return bytes(blob), "\n".join(lines) + "\n"


def make_fixture(name):
    cfg, build, seed, t_count = FIXTURES[name]
    rng = np.random.default_rng(seed)
    tensors, weights = build(rng, cfg)
    # Token ids avoid 0 (Grok-1's padding id, which its reference masks as a key).
    tokens = rng.integers(1, cfg["vocab_size"], size=t_count).astype(np.int32)
    hidden, logits, max_logit, min_gap, dropped = forward(tokens, weights, cfg)
    out = {"tokens": Tensor("i32", tokens, None)}
    for layer, h in enumerate(hidden):
        out["hidden.%d" % layer] = Tensor("f64", h, None)
    out["logits"] = Tensor("f64", logits, None)
    if cfg.get("capacity") is not None:
        out["dropped"] = Tensor("i32", np.array(dropped, dtype=np.int32), None)
    out.update(tensors)
    stats = dict(max_abs_attn_logit=max_logit, min_top_k_gap=min_gap,
                 logit_rms=float(np.sqrt(np.mean(logits ** 2))))
    if cfg.get("capacity") is not None:
        stats["dropped_pairs"] = sum(dropped)
    return cfg, out, stats


def same_fixture(path, blob, manifest):
    """The committed fixture equals (blob, manifest): inputs and the manifest exactly, the float64
    outputs to 1e-12 of each tensor's largest magnitude (numpy's BLAS rounds differently on
    different CPUs)."""
    if open(path + ".txt").read() != manifest:
        return False
    old = open(path + ".bin", "rb").read()
    if len(old) != len(blob):
        return False
    for line in manifest.splitlines():
        if not line.startswith("tensor "):
            continue
        _, name, dtype, offset, *shape = line.split()
        n = int(np.prod([int(x) for x in shape])) * np.dtype(DTYPES[dtype]).itemsize
        a, b = old[int(offset):int(offset) + n], blob[int(offset):int(offset) + n]
        if dtype != "f64":
            if a != b:
                return False
            continue
        x, y = np.frombuffer(a, "<f8"), np.frombuffer(b, "<f8")
        if np.max(np.abs(x - y)) > 1e-12 * max(np.max(np.abs(y)), 1e-300):
            return False
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed fixtures")
    ap.add_argument("names", nargs="*", help="fixtures to write or check (default: all)")
    args = ap.parse_args()
    ok = True
    for name in args.names or FIXTURES:
        cfg, out, stats = make_fixture(name)
        if name == "grok1_tiny" and stats["max_abs_attn_logit"] < 45.0:
            sys.exit("grok1_tiny: attention logits too small to engage the soft-cap")
        if name == "glam_tiny" and stats["dropped_pairs"] == 0:
            sys.exit("glam_tiny: no pair was dropped; the capacity is not exercised")
        if stats["min_top_k_gap"] < 1e-3:
            sys.exit("%s: a top-k choice is within %g of a tie; change the seed"
                     % (name, stats["min_top_k_gap"]))
        blob, manifest = serialise(name, cfg, out)
        base = os.path.join(OUT_DIR, name)
        manifest += "# stats %s\n" % " ".join("%s=%.6g" % kv for kv in sorted(stats.items()))
        if args.check:
            same = same_fixture(base, blob, manifest)
            print("%s: %s" % (name, "identical" if same else "DIFFERENT"))
            ok &= same
        else:
            os.makedirs(OUT_DIR, exist_ok=True)
            with open(base + ".bin", "wb") as fh:
                fh.write(blob)
            with open(base + ".txt", "w") as fh:
                fh.write(manifest)
            print("%s: %d bytes, %s" % (name, len(blob), stats))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
