#!/usr/bin/python3
"""PyTorch float64 autograd reference for one training step of tiny MoE decoders, and the
fixtures of tests/train/test_decoder_torch.cpp.

Each fixture draws float32 weights with a seeded numpy generator, runs the whole decoder in
float64 with torch autograd (written from the models' public code, independently of the C++:
xai-org/grok-1 model.py, mistral-inference / Hugging Face MixtralSparseMoeBlock), computes

    loss = mean cross-entropy over the targets != -1  +  the MoE layers' weighted aux losses

and writes every input and every parameter's gradient to tests/data/train/<name>.txt in the text
fixture format of tests/common/fixture.hpp. Tensors are written in the C++ storage order (a
weight stored [out, in] is written [out, in]), so gradients compare element by element.

Fixtures:
  grok_train     Grok-1-shaped: sandwich RMSNorms, GQA 4/2, half-split RoPE, logit multiplier and
                 soft-cap (engaged), softmax router over 4 experts, top-2 with the raw
                 probabilities (not renormalised), GELU-tanh experts, dropless, no aux loss,
                 embedding multiplier sqrt(D), output multiplier 1/sqrt(3), tied head. Weights
                 [in, out] (JAX layout).
  mixtral_train  Mixtral-shaped: pre-norm, GQA 6/2 (q_dim 24 != D 16), interleaved RoPE, 1/sqrt(dh),
                 no cap, top-2 renormalised (softmax of the top-2 logits), SiLU experts, dropless,
                 HF's load-balancing loss 1e-3 counting every choice (f_i = count_i / T, through
                 the mean probabilities only), separate head. Weights [out, in] (PyTorch layout).

Both: 2 sequences of 8 tokens, the last target of each sequence ignored (-1).

Run:  /usr/bin/python3 tools/decoder_grad_reference.py            (rewrites the fixtures)
      /usr/bin/python3 tools/decoder_grad_reference.py --check    (recomputes, compares)
"""
import argparse
import math
import os
import sys

import numpy as np
import torch

torch.set_default_dtype(torch.float64)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "data", "train")

GROK = dict(vocab=24, d=16, layers=2, hq=4, hkv=2, dh=4, experts=4, top_k=2, d_ff=12,
            rope_base=10000.0, rope_layout="half_split", eps=1e-5, emb_mult=4.0,
            out_mult=1 / math.sqrt(3), logit_mult=0.5, softcap=4.0, sandwich=True,
            activation="gelu_tanh", renormalize=False, tied=True, layout="in_out",
            balance_coef=0.0, batch=2, seq_len=8, seed=5)
MIXTRAL = dict(vocab=20, d=16, layers=2, hq=6, hkv=2, dh=4, experts=4, top_k=2, d_ff=12,
               rope_base=100.0, rope_layout="interleaved", eps=1e-5, emb_mult=1.0, out_mult=1.0,
               logit_mult=0.5, softcap=0.0, sandwich=False, activation="silu", renormalize=True,
               tied=False, layout="out_in", balance_coef=1e-3, batch=2, seq_len=8, seed=10)
FIXTURES = {"grok_train": GROK, "mixtral_train": MIXTRAL}


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def silu(x):
    return x * torch.sigmoid(x)


def rms_norm(x, s, eps):
    return s * x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + eps)


def rope(x, seq_len, base, layout):
    """x [n, H, dh], row r at position r % seq_len."""
    n, _, dh = x.shape
    half = dh // 2
    pos = torch.tensor([r % seq_len for r in range(n)], dtype=torch.float64)
    inv = base ** (-2.0 * torch.arange(half, dtype=torch.float64) / dh)
    th = pos[:, None] * inv[None, :]
    c, s = torch.cos(th)[:, None, :], torch.sin(th)[:, None, :]
    if layout == "half_split":
        a, b = x[..., :half], x[..., half:]
        return torch.cat([a * c - b * s, b * c + a * s], dim=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * c - b * s, b * c + a * s], dim=-1).reshape(x.shape)


def linear(x, w, cfg):
    """x . W for W stored [in, out] or [out, in]."""
    return x @ w if cfg["layout"] == "in_out" else x @ w.T


def attention(a, p, cfg):
    n = a.shape[0]
    t_len, hq, hkv, dh = cfg["seq_len"], cfg["hq"], cfg["hkv"], cfg["dh"]
    q = rope(linear(a, p["wq"], cfg).reshape(n, hq, dh), t_len, cfg["rope_base"],
             cfg["rope_layout"])
    k = rope(linear(a, p["wk"], cfg).reshape(n, hkv, dh), t_len, cfg["rope_base"],
             cfg["rope_layout"])
    v = linear(a, p["wv"], cfg).reshape(n, hkv, dh)
    mask = torch.tril(torch.ones(t_len, t_len, dtype=torch.bool))
    outs, max_z = [], 0.0
    for b in range(n // t_len):
        rows = slice(b * t_len, (b + 1) * t_len)
        heads = []
        for h in range(hq):
            g = h // (hq // hkv)
            z = (q[rows, h, :] @ k[rows, g, :].T) * cfg["logit_mult"]
            max_z = max(max_z, float(torch.max(torch.abs(z))))
            if cfg["softcap"] > 0:
                z = cfg["softcap"] * torch.tanh(z / cfg["softcap"])
            z = torch.where(mask, z, torch.tensor(-math.inf))
            heads.append(torch.softmax(z, dim=-1) @ v[rows, g, :])
        outs.append(torch.cat(heads, dim=-1))
    o = torch.cat(outs, dim=0)
    return linear(o, p["wo"], cfg), max_z


def moe(m, p, cfg):
    """Softmax router, top-k (ties -> lower index), raw or renormalised gates, dropless; the
    balance loss E * sum_i f_i P_i with f_i = (choices of i) / T (a constant) times its coef."""
    n, e_count, k = m.shape[0], cfg["experts"], cfg["top_k"]
    logits = linear(m, p["router"], cfg)
    probs = torch.softmax(logits, dim=-1)
    pd = probs.detach().numpy()
    act = gelu_tanh if cfg["activation"] == "gelu_tanh" else silu
    y = torch.zeros_like(m)
    counts = np.zeros(e_count)
    min_gap = np.inf
    for t in range(n):
        order = np.argsort(-pd[t], kind="stable")
        chosen = [int(e) for e in order[:k]]
        min_gap = min(min_gap, pd[t, order[k - 1]] - pd[t, order[k]])
        gates = probs[t, chosen]
        if cfg["renormalize"]:
            gates = gates / torch.sum(gates)
        for j, e in enumerate(chosen):
            counts[e] += 1
            w = {name: p[name][e] for name in ("gate", "up", "down")}
            hidden = act(linear(m[t], w["gate"], cfg)) * linear(m[t], w["up"], cfg)
            y[t] = y[t] + gates[j] * linear(hidden, w["down"], cfg)
    aux = torch.tensor(0.0)
    if cfg["balance_coef"] > 0:
        f = torch.tensor(counts / n)
        aux = cfg["balance_coef"] * e_count * torch.sum(f * torch.mean(probs, dim=0))
    return y, aux, min_gap


def forward(params, tokens, targets, cfg):
    eps = cfg["eps"]
    h = params["embedding"][tokens] * cfg["emb_mult"]
    aux_total, max_z, min_gap = torch.tensor(0.0), 0.0, np.inf
    for l in range(cfg["layers"]):
        p = {k[len("layer%d." % l):]: v for k, v in params.items() if k.startswith("layer%d." % l)}
        o, mz = attention(rms_norm(h, p["norm0"], eps), p, cfg)
        max_z = max(max_z, mz)
        h = h + (rms_norm(o, p["norm1"], eps) if cfg["sandwich"] else o)
        y, aux, gap = moe(rms_norm(h, p["norm2"], eps), p, cfg)
        aux_total = aux_total + aux
        min_gap = min(min_gap, gap)
        h = h + (rms_norm(y, p["norm3"], eps) if cfg["sandwich"] else y)
    hn = rms_norm(h, params["final_norm"], eps)
    head = params["embedding"].T if cfg["tied"] else params["head"].T  # [D, V]
    logits = hn @ head * cfg["out_mult"]
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor(targets), ignore_index=-1)
    return ce + aux_total, ce, aux_total, max_z, min_gap


def make_params(cfg, rng):
    d, f, e, v = cfg["d"], cfg["d_ff"], cfg["experts"], cfg["vocab"]
    qd, kvd = cfg["hq"] * cfg["dh"], cfg["hkv"] * cfg["dh"]
    io = cfg["layout"] == "in_out"

    def w(i, o, lead=(), gain=1.0):  # a weight of logical shape [i, o], in storage order
        shape = lead + ((i, o) if io else (o, i))
        return rng.normal(0.0, gain / math.sqrt(i), size=shape)

    p = {"embedding": rng.normal(0.0, 1.0, size=(v, d)),
         "final_norm": rng.uniform(0.6, 1.4, size=(d,))}
    if not cfg["tied"]:
        p["head"] = rng.normal(0.0, 1.0 / math.sqrt(d), size=(v, d))  # [out, in]
    qk_gain = 2.0 if cfg["softcap"] > 0 else 1.0
    for l in range(cfg["layers"]):
        pre = "layer%d." % l
        p[pre + "wq"] = w(d, qd, gain=qk_gain)
        p[pre + "wk"] = w(d, kvd, gain=qk_gain)
        p[pre + "wv"] = w(d, kvd)
        p[pre + "wo"] = w(qd, d)
        for n in ((0, 1, 2, 3) if cfg["sandwich"] else (0, 2)):
            p[pre + "norm%d" % n] = rng.uniform(0.6, 1.4, size=(d,))
        p[pre + "router"] = w(d, e, gain=2.0)
        p[pre + "gate"] = w(d, f, lead=(e,))
        p[pre + "up"] = w(d, f, lead=(e,))
        p[pre + "down"] = w(f, d, lead=(e,))
    # float32 values, exactly representable in float64
    return {k: a.astype(np.float32).astype(np.float64) for k, a in p.items()}


def make_fixture(name):
    cfg = FIXTURES[name]
    rng = np.random.default_rng(cfg["seed"])
    values = make_params(cfg, rng)
    n = cfg["batch"] * cfg["seq_len"]
    tokens = rng.integers(0, cfg["vocab"], size=n)
    targets = rng.integers(0, cfg["vocab"], size=n)
    targets[cfg["seq_len"] - 1::cfg["seq_len"]] = -1
    params = {k: torch.tensor(a, requires_grad=True) for k, a in values.items()}
    loss, ce, aux, max_z, min_gap = forward(params, torch.tensor(tokens), targets.tolist(), cfg)
    loss.backward()
    stats = dict(max_abs_logit=max_z, min_top_k_gap=min_gap)
    lines = ["# written by tools/decoder_grad_reference.py; do not edit",
             "# stats " + " ".join("%s=%.6g" % kv for kv in sorted(stats.items()))]
    for key in sorted(cfg):
        lines.append("config %s %s" % (key, repr(cfg[key]) if isinstance(cfg[key], float)
                                       else str(cfg[key]).lower()))

    def tensor(tname, a, fmt="%.9g"):  # %.9g round-trips float32 inputs exactly
        a = np.asarray(a)
        lines.append("tensor %s %s" % (tname, " ".join(str(s) for s in a.shape)))
        lines.append(" ".join(fmt % x for x in a.ravel()))

    tensor("tokens", tokens)
    tensor("targets", targets)
    lines.append("scalar loss %.17g" % float(loss))
    lines.append("scalar ce %.17g" % float(ce))
    lines.append("scalar aux %.17g" % float(aux))
    for k in values:
        tensor(k, values[k])
    for k in values:
        tensor("grad." + k, params[k].grad.numpy(), "%.12g")
    return "\n".join(lines) + "\n", stats


def same(path, text):
    """Equal up to float64 rounding of the outputs (BLAS differs between CPUs)."""
    old = open(path).read().split("\n")
    new = text.split("\n")
    if len(old) != len(new):
        return False
    for a, b in zip(old, new):
        if a == b:
            continue
        try:
            x = np.array([float(s) for s in a.split()[a.startswith("scalar") and 2 or 0:]])
            y = np.array([float(s) for s in b.split()[b.startswith("scalar") and 2 or 0:]])
        except ValueError:
            return False
        if x.shape != y.shape or np.max(np.abs(x - y)) > 1e-10 * max(np.max(np.abs(y)), 1e-300):
            return False
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed fixtures")
    args = ap.parse_args()
    ok = True
    for name, cfg in FIXTURES.items():
        text, stats = make_fixture(name)
        if stats["min_top_k_gap"] < 1e-3:
            sys.exit("%s: a top-k choice is within %g of a tie; change the seed"
                     % (name, stats["min_top_k_gap"]))
        if cfg["softcap"] > 0 and stats["max_abs_logit"] < 1.5 * cfg["softcap"]:
            sys.exit("%s: attention logits too small to engage the soft-cap" % name)
        path = os.path.join(OUT_DIR, name + ".txt")
        if args.check:
            s = same(path, text)
            print("%s: %s" % (name, "identical" if s else "DIFFERENT"))
            ok &= s
        else:
            os.makedirs(OUT_DIR, exist_ok=True)
            with open(path, "w") as fh:
                fh.write(text)
            print("%s: %d bytes, %s" % (name, len(text), stats))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
