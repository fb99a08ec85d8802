#!/usr/bin/python3
"""Independent reference for moe's MoE layer: writes tests/data/moe/*.txt fixtures.

Transliterates, in torch float64, the routing / capacity / loss / combine formulas of the public
reference implementations (read from their published code; restated here, not copied):

  hf_switch_top1     HF SwitchTransformersTop1Router + SparseMLP: softmax, argmax, position
                     priority by cumsum over tokens, fixed expert capacity, output = max prob *
                     expert(x) (0 for dropped tokens); load_balancing_loss_func (top-1 mask,
                     mean(f*P)*E^2) and router_z_loss_func (mean lse^2).
  hf_mixtral_top2    HF MixtralSparseMoeBlock: softmax (fp32), top-2, divide by the sum, per-expert
                     loop with index_add_; SiLU experts stored [out, in]; load_balancing_loss_func
                     (all k slots, E * sum(f*P), value k at balance) with and without an
                     attention mask.
  deepspeed_top2     DeepSpeed top2gating (no 2nd-expert sampling, no RTS): capacity
                     ceil(T/E*cf*2), locations by cumsum with 2nd choices offset by all 1st
                     choices, renormalise after dropping; l_aux = mean(me*ce)*E^2 on the top-1 mask.
  meshtf_top2        mesh-tf _top_2_gating order: g1, g2 renormalised BEFORE dropping, the same
                     position capacity; dropped pairs contribute 0.
  deepspeed_topk     DeepSpeed topkgating(drop_policy="probs"): capacity ceil(T/E*cf*k), keep per
                     expert the C highest gates (torch.topk over tokens), renormalise after
                     dropping; l_aux = mean(me*ce)*E^2/k (value 1 at balance).
  flaxformer_top2    flaxformer TokensChooseMaskedRouter + MoeLayer (ST-MoE): top-2 raw
                     probabilities (no renormalisation), capacity round(cf*T/E) (no k), top-k axis
                     first then cumsum; _load_balancing_loss (value k at balance), _router_z_loss.

Deviations, on purpose: experts are the library's gated FFN (HF Switch uses a ReLU DenseActDense);
f in the balance loss counts the router's choices BEFORE capacity (HF Switch counts a dropped
token as expert 0 because it takes argmax of the post-capacity mask; flaxformer and DeepSpeed use
the pre-capacity choice).

Usage: /usr/bin/python3 tools/moe_reference.py [--out tests/data/moe]
"""
import argparse
import math
import os

import numpy as np
import torch

torch.set_default_dtype(torch.float64)


# ---- inputs -----------------------------------------------------------------------------------

def f32(a):
    """Round to float32 (the values written to the fixture are exactly these)."""
    return torch.as_tensor(np.asarray(a, dtype=np.float32), dtype=torch.float64)


def make_inputs(seed, T, D, F, E, out_in=False):
    g = np.random.default_rng(seed)
    x = f32(g.normal(0.0, 1.0, (T, D)))
    wr = f32(g.normal(0.0, 1.0 / math.sqrt(D), (D, E)) * 2.0)  # [D, E] (router, in x out)
    if out_in:  # HF nn.Linear layout: w1, w3 [E, F, D], w2 [E, D, F]
        w1 = f32(g.normal(0.0, 1.0 / math.sqrt(D), (E, F, D)))
        w3 = f32(g.normal(0.0, 1.0 / math.sqrt(D), (E, F, D)))
        w2 = f32(g.normal(0.0, 1.0 / math.sqrt(F), (E, D, F)))
    else:  # JAX layout: gate, up [E, D, F], down [E, F, D]
        w1 = f32(g.normal(0.0, 1.0 / math.sqrt(D), (E, D, F)))
        w3 = f32(g.normal(0.0, 1.0 / math.sqrt(D), (E, D, F)))
        w2 = f32(g.normal(0.0, 1.0 / math.sqrt(F), (E, F, D)))
    return x, wr, w1, w3, w2


def act(name, v):
    if name == "silu":
        return v * torch.sigmoid(v)
    if name == "gelu_tanh":
        return 0.5 * v * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))
    return 0.5 * v * (1.0 + torch.erf(v / math.sqrt(2.0)))


def expert(e, xs, w1, w3, w2, out_in, a):
    """Gated FFN of expert e on rows xs."""
    if out_in:
        return (act(a, xs @ w1[e].T) * (xs @ w3[e].T)) @ w2[e].T
    return (act(a, xs @ w1[e]) * (xs @ w3[e])) @ w2[e]


def z_loss(logits, mask=None):
    lz = torch.logsumexp(logits, dim=-1) ** 2
    if mask is None:
        return lz.mean()
    return (lz * mask).sum() / mask.sum()


def margin_ok(p, k, eps=1e-4):
    """The k-th and (k+1)-th largest values of every row differ by more than eps (no near-ties)."""
    s = torch.sort(p, dim=-1, descending=True).values
    for j in range(k):
        if j + 1 < p.shape[-1] and (s[:, j] - s[:, j + 1]).min() < eps:
            return False
    return True


# ---- the references ------------------------------------------------------------------------------

def hf_switch(x, wr, w1, w3, w2, capacity, a):
    logits = x @ wr
    probs = torch.softmax(logits, dim=-1)
    E = probs.shape[-1]
    expert_index = torch.argmax(probs, dim=-1)
    expert_mask = torch.nn.functional.one_hot(expert_index, E)
    token_priority = torch.cumsum(expert_mask, dim=-2)  # over the tokens of the group
    router_mask = expert_mask * (token_priority <= capacity)
    router_probs = torch.max(probs, dim=-1).values.unsqueeze(-1)
    out = torch.zeros_like(x)
    for idx in range(E):
        tok = router_mask[:, idx].bool()
        if tok.any():
            out[tok] = expert(idx, x[tok], w1, w3, w2, False, a)
    y = router_probs * out
    # load_balancing_loss_func(router_probs, expert_indices) with the pre-capacity choice
    tokens_per_expert = expert_mask.double().mean(dim=-2)
    prob_per_expert = probs.mean(dim=-2)
    aux = torch.mean(tokens_per_expert * prob_per_expert) * E * E
    weights = (router_probs * router_mask.sum(-1, keepdim=True)).double()
    return dict(y=y, experts=expert_index.unsqueeze(-1), weights=weights, aux=aux, z=z_loss(logits),
                kept=router_mask.sum(0), logits=logits)


def hf_mixtral(x, wr, w1, w3, w2, k, mask, a):
    logits = x @ wr  # router_logits (fp32 in HF)
    routing_weights = torch.softmax(logits, dim=1)
    routing_weights, selected = torch.topk(routing_weights, k, dim=-1)
    routing_weights = routing_weights / routing_weights.sum(dim=-1, keepdim=True)
    E = wr.shape[1]
    out = torch.zeros_like(x)
    expert_mask = torch.nn.functional.one_hot(selected, num_classes=E).permute(2, 1, 0)  # [E, k, T]
    for e in range(E):
        idx, top_x = torch.where(expert_mask[e])
        if top_x.numel() == 0:
            continue
        cur = expert(e, x[top_x], w1, w3, w2, True, a) * routing_weights[top_x, idx, None]
        out.index_add_(0, top_x, cur)
    # load_balancing_loss_func(gate_logits, num_experts, top_k, attention_mask)
    rw = torch.softmax(logits, dim=-1)
    _, sel = torch.topk(rw, k, dim=-1)
    em = torch.nn.functional.one_hot(sel, E).double()  # [T, k, E]
    if mask is None:
        tokens_per_expert = em.mean(dim=0)
        router_prob_per_expert = rw.mean(dim=0)
    else:
        m = mask.double()
        tokens_per_expert = (em * m[:, None, None]).sum(dim=0) / m.sum()
        router_prob_per_expert = (rw * m[:, None]).sum(dim=0) / m.sum()
    aux = torch.sum(tokens_per_expert * router_prob_per_expert.unsqueeze(0)) * E
    kept = torch.zeros(E, dtype=torch.int64)
    for t in range(x.shape[0]):
        if mask is None or mask[t]:
            for j in range(k):
                kept[selected[t, j]] += 1
    return dict(y=out, experts=selected, weights=routing_weights, aux=aux,
                z=z_loss(logits, None if mask is None else mask.double()), kept=kept, logits=logits)


def deepspeed_top2(x, wr, w1, w3, w2, cf, min_capacity, renorm_after, a):
    logits = x @ wr
    gates = torch.softmax(logits, dim=1)
    T, E = gates.shape
    capacity = max(math.ceil(T / E * cf * 2), min_capacity)
    indices1 = torch.argmax(gates, dim=1)
    mask1 = torch.nn.functional.one_hot(indices1, E)
    logits_except1 = logits.masked_fill(mask1.bool(), float("-inf"))
    indices2 = torch.argmax(logits_except1, dim=1)
    mask2 = torch.nn.functional.one_hot(indices2, E)
    locations1 = torch.cumsum(mask1, dim=0) - 1
    locations2 = torch.cumsum(mask2, dim=0) - 1
    locations2 += torch.sum(mask1, dim=0, keepdim=True)
    me = torch.mean(gates, dim=0)
    ce = torch.mean(mask1.double(), dim=0)
    l_aux = torch.mean(me * ce) * E * E
    g1 = torch.einsum("se,se->s", gates, mask1.double())
    g2 = torch.einsum("se,se->s", gates, mask2.double())
    if not renorm_after:  # mesh-tf: renormalise g1, g2 first, then drop
        denom = g1 + g2 + 1e-9  # mesh-tf's epsilon (moe divides exactly: a 1e-9 relative difference)
        g1, g2 = g1 / denom, g2 / denom
    mask1 = mask1 * torch.lt(locations1, capacity)
    mask2 = mask2 * torch.lt(locations2, capacity)
    g1 = g1 * mask1.sum(1)
    g2 = g2 * mask2.sum(1)
    if renorm_after:
        denom = torch.clamp(g1 + g2, min=torch.finfo(torch.float32).eps)
        g1, g2 = g1 / denom, g2 / denom
    out = torch.zeros_like(x)
    for e in range(E):
        for m, g in ((mask1, g1), (mask2, g2)):
            tok = m[:, e].bool()
            if tok.any():
                out[tok] += g[tok, None] * expert(e, x[tok], w1, w3, w2, False, a)
    kept = mask1.sum(0) + mask2.sum(0)
    return dict(y=out, experts=torch.stack([indices1, indices2], 1), weights=torch.stack([g1, g2], 1),
                aux=l_aux, z=z_loss(logits), kept=kept, capacity=capacity, logits=logits)


def deepspeed_topk(x, wr, w1, w3, w2, k, cf, min_capacity, a):
    logits = x @ wr
    gates = torch.softmax(logits, dim=1)
    T, E = gates.shape
    capacity = max(math.ceil(T / E * cf * k), min_capacity)
    indices_s = torch.topk(gates, k, dim=1).indices
    mask = torch.zeros_like(gates, dtype=torch.int64).scatter_(1, indices_s, 1)
    me = torch.mean(gates, dim=0)
    ce = torch.mean(mask.double(), dim=0)
    l_aux = torch.mean(me * ce) * E * E / k
    topk_masked_gates = gates * mask
    capacity_indices = torch.topk(topk_masked_gates, k=capacity, dim=0, sorted=False).indices
    new_mask = torch.zeros_like(mask).scatter_(0, capacity_indices, 1)
    mask = mask * new_mask
    gates_masked = gates * mask
    denom = torch.clamp(gates_masked.sum(dim=-1, keepdim=True), min=torch.finfo(torch.float32).eps)
    gates_masked = gates_masked / denom
    out = torch.zeros_like(x)
    for e in range(E):
        tok = mask[:, e].bool()
        if tok.any():
            out[tok] += gates_masked[tok, e, None] * expert(e, x[tok], w1, w3, w2, False, a)
    weights = torch.gather(gates_masked, 1, indices_s)
    return dict(y=out, experts=indices_s, weights=weights, aux=l_aux, z=z_loss(logits), kept=mask.sum(0),
                capacity=capacity, logits=logits)


def flaxformer_top2(x, wr, w1, w3, w2, cf, min_capacity, a):
    logits = x @ wr
    probs = torch.softmax(logits, dim=-1)
    T, E = probs.shape
    k = 2
    capacity = max(int(round(cf * T / E)), min_capacity)
    # TokensChooseMaskedRouter: top-k, raw probabilities, k axis first then cumsum.
    combine_weights, expert_index = torch.topk(probs, k, dim=-1)  # [T, k]
    em = torch.nn.functional.one_hot(expert_index, E)  # [T, k, E]
    em_kfirst = em.permute(1, 0, 2).reshape(k * T, E)  # all first choices, then second choices
    token_priority = (torch.cumsum(em_kfirst, dim=0) * em_kfirst - 1).reshape(k, T, E).permute(1, 0, 2)
    token_priority = token_priority.max(dim=1).values  # [T, E]
    keep = (token_priority >= 0) & (token_priority < capacity)
    out = torch.zeros_like(x)
    weights = torch.zeros(T, k)
    for t in range(T):
        for j in range(k):
            e = int(expert_index[t, j])
            if keep[t, e]:
                weights[t, j] = combine_weights[t, j]
                out[t] += combine_weights[t, j] * expert(e, x[t:t + 1], w1, w3, w2, False, a)[0]
    # _load_balancing_loss: token routed to e in any slot
    expert_mask = em.max(dim=-2).values.double()
    aux = torch.mean(expert_mask.mean(dim=0) * probs.mean(dim=0)) * E * E
    return dict(y=out, experts=expert_index, weights=weights, aux=aux, z=z_loss(logits), kept=keep.sum(0),
                capacity=capacity, logits=logits)


# ---- fixture writer ---------------------------------------------------------------------------------

def fmt(v):
    return "%.9g" % float(v)


def write_case(path, name, config, tensors):
    with open(path, "w") as fh:
        fh.write("# generated by tools/moe_reference.py; do not edit\n")
        fh.write("config case %s\n" % name)
        for k, v in config.items():
            fh.write("config %s %s\n" % (k, v))
        for k, t in tensors.items():
            t = torch.as_tensor(t)
            if t.dim() == 0:
                fh.write("scalar %s %s\n" % (k, fmt(t.item())))
                continue
            fh.write("tensor %s %s\n" % (k, " ".join(str(s) for s in t.shape)))
            rows = t.reshape(-1, t.shape[-1]) if t.dim() > 1 else t.reshape(1, -1)
            for r in rows:
                fh.write(" ".join(fmt(v) for v in r.tolist()) + "\n")


def find_seed(start, T, D, F, E, k, out_in=False):
    """First seed whose router probabilities have no near-ties among the top k+1."""
    for seed in range(start, start + 1000):
        x, wr, *_ = make_inputs(seed, T, D, F, E, out_in)
        if margin_ok(torch.softmax(x @ wr, dim=-1), k + 1 if k + 1 <= E else k):
            return seed
    raise RuntimeError("no seed without near-ties")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "moe"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    D, F = 8, 12

    def emit(fname, config, seed, T, E, out_in, results, extra=None):
        """results: {suffix: result}; output tensors are named y<suffix>, weights<suffix>, ..."""
        x, wr, w1, w3, w2 = make_inputs(seed, T, D, F, E, out_in)
        tensors = dict(x=x, router=wr, gate=w1, up=w3, down=w2)
        if extra:
            tensors.update(extra)
        for suf, r in results.items():
            tensors.update({"y" + suf: r["y"], "experts" + suf: r["experts"], "weights" + suf: r["weights"],
                            "kept" + suf: r["kept"], "aux" + suf: r["aux"], "z" + suf: r["z"]})
            print("%s%s: aux=%.6f z=%.6f kept=%s" % (fname, suf, float(r["aux"]), float(r["z"]),
                                                    r["kept"].tolist()))
        cfg = dict(T=T, D=D, F=F, E=E, layout="out_in" if out_in else "in_out")
        cfg.update(config)
        write_case(os.path.join(args.out, fname), fname[:-4], cfg, tensors)

    # 1. HF Switch top-1, capacity 3 (cf 0.75 with k: ceil(1*16*0.75/4) = 3), GELU-erf experts.
    T, E = 16, 4
    s = find_seed(100, T, D, F, E, 1)
    x, wr, w1, w3, w2 = make_inputs(s, T, D, F, E)
    r = hf_switch(x, wr, w1, w3, w2, capacity=3, a="gelu_erf")
    emit("hf_switch_top1.txt", dict(k=1, act="gelu_erf", cf=0.75, min_capacity=0, capacity=3), s, T, E,
         False, {"": r})

    # 2. HF Mixtral top-2 dropless, [out, in] weights, SiLU; without and with a padding mask.
    T, E = 12, 8
    s = find_seed(200, T, D, F, E, 2, out_in=True)
    x, wr, w1, w3, w2 = make_inputs(s, T, D, F, E, True)
    mask = torch.tensor([1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0], dtype=torch.int64)
    emit("hf_mixtral_top2.txt", dict(k=2, act="silu"), s, T, E, True,
         {"": hf_mixtral(x, wr, w1, w3, w2, 2, None, "silu"),
          "_masked": hf_mixtral(x, wr, w1, w3, w2, 2, mask, "silu")}, extra=dict(mask=mask))

    # 3. DeepSpeed top2gating (renormalise after drop) and the mesh-tf order (before drop).
    T, E = 24, 4
    s = find_seed(300, T, D, F, E, 2)
    x, wr, w1, w3, w2 = make_inputs(s, T, D, F, E)
    ra = deepspeed_top2(x, wr, w1, w3, w2, cf=0.5, min_capacity=0, renorm_after=True, a="gelu_tanh")
    rb = deepspeed_top2(x, wr, w1, w3, w2, cf=0.5, min_capacity=0, renorm_after=False, a="gelu_tanh")
    emit("top2_capacity.txt", dict(k=2, act="gelu_tanh", cf=0.5, min_capacity=0, capacity=ra["capacity"]),
         s, T, E, False, {"_after": ra, "_before": rb})

    # 4. DeepSpeed topkgating, k = 3 of 6, drop by probability.
    T, E, k = 20, 6, 3
    s = find_seed(400, T, D, F, E, k)
    x, wr, w1, w3, w2 = make_inputs(s, T, D, F, E)
    r = deepspeed_topk(x, wr, w1, w3, w2, k=k, cf=0.55, min_capacity=0, a="silu")
    emit("deepspeed_topk_probs.txt", dict(k=k, act="silu", cf=0.55, min_capacity=0, capacity=r["capacity"]),
         s, T, E, False, {"": r})

    # 5. flaxformer / ST-MoE top-2, raw probabilities, capacity without k.
    T, E = 20, 5
    s = find_seed(500, T, D, F, E, 2)
    x, wr, w1, w3, w2 = make_inputs(s, T, D, F, E)
    r = flaxformer_top2(x, wr, w1, w3, w2, cf=1.25, min_capacity=2, a="gelu_tanh")
    emit("flaxformer_top2.txt", dict(k=2, act="gelu_tanh", cf=1.25, min_capacity=2, capacity=r["capacity"]),
         s, T, E, False, {"": r})


if __name__ == "__main__":
    main()
