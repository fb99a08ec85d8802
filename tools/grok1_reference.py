#!/usr/bin/python3
"""Independent float64 reference forward pass of Grok-1, read straight from a checkpoint.

Reads DIR/ckpt-0/tensorNNNNN_000 (the original release format) with Python's own pickle
machinery (a restricted Unpickler whose stand-ins capture numpy's reconstruct arguments; it
shares no code with moe's C++ reader), dequantizes every weight exactly in float64, runs the
forward pass of xai-org/grok-1 model.py over the prompt (no KV cache: one causal pass) in
float64, and writes the logits of every prompt position as float32 .npy [T, vocab].

    /usr/bin/python3 tools/grok1_reference.py --checkpoint DIR --tokens 5,6,7 --out ref.npy

Math (xai-org/grok-1 model.py): embeddings * embedding_multiplier; per layer the sandwich
h += N1(Attn(N0(h))), h += N3(MoE(N2(h))); RMSNorm eps 1e-5 with a plain scale; GQA; half-split
RoPE base 10000 on all head dims; attention logits * attn_logit_multiplier, then
softcap*tanh(x/softcap), causal mask, softmax; router softmax over all experts, top-k with ties
to the lower index, gates NOT renormalised; expert (x@V * gelu_tanh(x@W)) @ O; final norm;
logits = h @ E^T * output_multiplier (tied embedding).
"""
import argparse
import io
import json
import os
import pickle
import sys

import numpy as np

# ---- checkpoint reading ------------------------------------------------------------------

LAYER_SLOTS = [
    "moe/linear", "moe/linear_1", "moe/linear_v", "multi_head_attention/key",
    "multi_head_attention/linear", "multi_head_attention/query", "multi_head_attention/value",
    "rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3", "router",
]


class _Dtype:
    """Stand-in for numpy.dtype: remembers the descriptor ('i1', 'f4' or the bf16 marker)."""

    def __init__(self, descr, *args):
        self.descr = descr

    def __setstate__(self, state):
        self.state = state


class _BF16:
    pass


class _Array:
    """Stand-in for numpy.core.multiarray._reconstruct(...) + BUILD."""

    def __init__(self, *args):
        pass

    def __setstate__(self, state):
        _version, shape, dtype, fortran, raw = state
        if fortran:
            raise ValueError("Fortran-order array")
        descr = dtype.descr
        if descr is _BF16:
            u16 = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = u16.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(descr).newbyteorder("<"))
        self.value = arr.reshape(shape).astype(np.float64)
        self.descr = "bf16" if descr is _BF16 else descr


def _reconstruct(cls, shape, typecode):
    return _Array()


class _QW8:
    def __setstate__(self, state):
        self.weight = state["weight"].value
        self.scales = state["scales"].value


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if name == "_reconstruct" and module.startswith("numpy"):
            return _reconstruct
        if module == "numpy" and name == "ndarray":
            return _Array
        if module == "numpy" and name == "dtype":
            return _Dtype
        if module == "ml_dtypes" and name == "bfloat16":
            return _BF16
        if name == "QuantizedWeight8bit":
            return _QW8
        raise pickle.UnpicklingError(f"refusing global {module}.{name}")


def load_tensor(path):
    with open(path, "rb") as f:
        obj = _Unpickler(f).load()
    if isinstance(obj, _QW8):
        w, s = obj.weight, obj.scales
        blocks = s.shape[-2]
        rows = w.shape[-2] // blocks
        return w * np.repeat(s, rows, axis=-2)  # exact: int8 * bf16 in float64
    return obj.value


def layer_order(n_layers):
    return sorted(range(n_layers), key=lambda n: f"decoder_layer_{n}/")


def load_checkpoint(ckpt_dir):
    files = sorted(f for f in os.listdir(ckpt_dir) if f.startswith("tensor"))
    n_layers = (len(files) - 2) // 12
    if len(files) != 2 + 12 * n_layers:
        raise ValueError(f"{len(files)} tensor files is not 2 + 12 * layers")
    get = lambda i: load_tensor(os.path.join(ckpt_dir, f"tensor{i:05d}_000"))
    params = {"embed": get(0), "final_norm": get(1), "layers": [None] * n_layers}
    for rank, layer in enumerate(layer_order(n_layers)):
        params["layers"][layer] = {
            slot: get(2 + 12 * rank + j) for j, slot in enumerate(LAYER_SLOTS)
        }
    return params


# ---- forward pass --------------------------------------------------------------------------

def rms_norm(x, scale, eps):
    return scale * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def rope(x, positions, base):
    # x: [T, heads, d]; half-split layout: pairs (j, j + d/2)
    d = x.shape[-1]
    inv = base ** (-2.0 * np.arange(d // 2) / d)
    theta = positions[:, None] * inv[None, :]  # [T, d/2]
    c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    x0, x1 = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([x0 * c - x1 * s, x1 * c + x0 * s], axis=-1)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def forward(params, tokens, cfg):
    E = params["embed"]
    T = len(tokens)
    h = E[tokens] * cfg["embedding_multiplier"]
    hd, eps = cfg["head_dim"], cfg["rms_eps"]
    pos = np.arange(T, dtype=np.float64)
    causal = np.tril(np.ones((T, T), dtype=bool))
    for lp in params["layers"]:
        a = rms_norm(h, lp["rms_norm"], eps)
        q = (a @ lp["multi_head_attention/query"]).reshape(T, -1, hd)
        k = (a @ lp["multi_head_attention/key"]).reshape(T, -1, hd)
        v = (a @ lp["multi_head_attention/value"]).reshape(T, -1, hd)
        k, q = rope(k, pos, cfg["rope_base"]), rope(q, pos, cfg["rope_base"])
        hq, hkv = q.shape[1], k.shape[1]
        out = np.empty_like(q)
        for head in range(hq):
            g = head // (hq // hkv)
            s = (q[:, head, :] @ k[:, g, :].T) * cfg["attn_logit_multiplier"]
            if cfg["attn_softcap"] > 0:
                s = cfg["attn_softcap"] * np.tanh(s / cfg["attn_softcap"])
            s = np.where(causal, s, -np.inf)
            w = np.exp(s - s.max(axis=-1, keepdims=True))
            w /= w.sum(axis=-1, keepdims=True)
            out[:, head, :] = w @ v[:, g, :]
        o = out.reshape(T, -1) @ lp["multi_head_attention/linear"]
        h = h + rms_norm(o, lp["rms_norm_1"], eps)
        m = rms_norm(h, lp["rms_norm_2"], eps)
        logits = m @ lp["router"]
        p = np.exp(logits - logits.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        y = np.zeros_like(m)
        for t in range(T):
            order = sorted(range(p.shape[1]), key=lambda e: (-p[t, e], e))[: cfg["top_k"]]
            for e in order:
                u = m[t] @ lp["moe/linear_v"][e]
                g = gelu_tanh(m[t] @ lp["moe/linear"][e])
                y[t] += p[t, e] * ((u * g) @ lp["moe/linear_1"][e])
        h = h + rms_norm(y, lp["rms_norm_3"], eps)
    h = rms_norm(h, params["final_norm"], eps)
    return (h @ E.T) * cfg["output_multiplier"]


DEFAULTS = {
    "head_dim": 128, "rope_base": 10000.0, "rms_eps": 1e-5,
    "output_multiplier": 0.5773502691896257, "attn_softcap": 30.0, "top_k": 2,
}


def model_config(checkpoint_dir, params):
    """DEFAULTS, then config.json; the multipliers the files cannot tell default to the release's
    rule: embedding_multiplier = sqrt(D) (78.38... for D = 6144) and attn_logit_multiplier =
    1 / sqrt(head_dim) (0.0883... for 128)."""
    cfg = dict(DEFAULTS)
    path = os.path.join(checkpoint_dir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            cfg.update(json.load(f))
    d_model = params["embed"].shape[1]
    cfg.setdefault("embedding_multiplier", float(np.sqrt(d_model)))
    cfg.setdefault("attn_logit_multiplier", float(1.0 / np.sqrt(cfg["head_dim"])))
    return cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="directory holding ckpt-0/ (or ckpt/)")
    ap.add_argument("--tokens", required=True, help="comma-separated prompt token ids")
    ap.add_argument("--out", required=True, help="output .npy (float32 [T, vocab])")
    args = ap.parse_args()
    ckpt = os.path.join(args.checkpoint, "ckpt-0")
    if not os.path.isdir(ckpt):
        ckpt = os.path.join(args.checkpoint, "ckpt")
    params = load_checkpoint(ckpt)
    cfg = model_config(args.checkpoint, params)
    tokens = [int(t) for t in args.tokens.split(",")]
    logits = forward(params, tokens, cfg)
    np.save(args.out, logits.astype(np.float32))
    print(f"reference logits {logits.shape} -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
