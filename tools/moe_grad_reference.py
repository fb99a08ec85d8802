#!/usr/bin/python3
"""Independent gradient oracle for moe's MoE layer: writes tests/data/moe/grad_*.txt fixtures.

One training step of an MoE layer under each preset, written from the papers' and the public
reference code's formulas in torch float64 and differentiated by torch autograd (no hand-written
backward here):

  switch       Switch Transformer (Fedus et al. 2022): top-1 softmax, raw probability as gate,
               capacity ceil(k T cf / E) with cf 1.25 (min 4), position priority, balance loss
               on top-1 counts, router z-loss, multiplicative jitter on the router's input copy
  gshard       GShard top-2 (Lepikhin et al. 2021): renormalised before capacity, capacity 2T/E,
               second expert kept with probability min(1, g2 / 0.2)
  stmoe        ST-MoE (Zoph et al. 2022): top-2 raw probabilities, capacity ceil(T cf / E) with cf
               1.25, balance loss on all k choices, z-loss
  mixtral      Mixtral / HF MixtralSparseMoeBlock: top-2 renormalised, dropless, SiLU experts,
               [out, in] weights (router too), balance loss 1e-3 on all k choices
  grok1        Grok-1 (xai-org/grok-1): top-2 raw softmax gates, dropless, GELU-tanh, no losses
  deepseekv3   DeepSeek-V3: sigmoid scores, selection bias, 8 groups keep 4 by top-2 sum, top-8,
               renormalised x 2.5, one shared SiLU expert, sequence-wise balance loss (runs of 16)
  glam         GLaM (Du et al. 2022; praxis glam.py / gshard_utils top2): top-2 renormalised
               before capacity, capacity T cf / E with cf 2, balance loss 1e-2 on top-1 counts
  noisy_topk   Shazeer et al. 2017: H = x W_g + N(0,1) softplus(x W_noise) + 1e-2 noise, softmax
               over the top-4 of H, importance and load losses (squared coefficient of variation,
               population variance; the load through the normal CDF of the clean logit against
               the k-th / (k+1)-th noisy logit, tensor2tensor's _ProbInTopK)

The discrete decisions (top-k, capacity keep-mask, random second expert) are constants of the
step (they carry no gradient), computed here from the float64 values; inputs are chosen with a
margin so that the library's float32 decisions are the same (the test checks they are). The
noise is fed identically to both sides: this script evaluates moe's counter-based generator
(moe::rng in include/moe/layers/policies.hpp, SplitMix64 mixing + Box-Muller), so there is
nothing random to transport.

Objective: L = sum(r * y) + loss_scale * (weighted auxiliary losses), r a fixed random [T, D]
(non-conserved: renormalised gates sum to one). The fixture holds the inputs, the decisions, y,
the losses and dL/d(every parameter) in the storage layout of the weights.

Usage: /usr/bin/python3 tools/moe_grad_reference.py [--out tests/data/moe]
"""
import argparse
import math
import os

import numpy as np
import torch

torch.set_default_dtype(torch.float64)
MASK64 = (1 << 64) - 1


# ---- moe::rng (counter-based noise), bit for bit ------------------------------------------------

def _mix64(z):
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & MASK64
    return z ^ (z >> 31)


def rng_hash(seed, step, a, b):
    h = _mix64((seed + 0x9e3779b97f4a7c15) & MASK64)
    h = _mix64(h ^ ((step + 0x632be59bd9b4e019) & MASK64))
    h = _mix64(h ^ ((a + 0x85157af5 * 0x100000001) & MASK64))
    return _mix64(h ^ ((b + 0xd6e8feb86659fd93) & MASK64))


def rng_uniform(seed, step, a, b):
    return np.float32((rng_hash(seed, step, a, b) >> 40) * 2.0 ** -24)


def rng_normal(seed, step, a, b):
    h = rng_hash(seed, step, a, b)
    u1 = ((h >> 32) + 1.0) * 2.0 ** -32
    u2 = (h & 0xffffffff) * 2.0 ** -32
    return np.float32(math.sqrt(-2.0 * math.log(u1)) * math.cos(6.283185307179586 * u2))


# ---- the layer ----------------------------------------------------------------------------------

def f32(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float32), dtype=torch.float64)


def act(name, v):
    if name == "silu":
        return v * torch.sigmoid(v)
    return 0.5 * v * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))


def linear(x, w, out_in):
    """x . W for a weight stored [in, out] (JAX) or [out, in] (PyTorch)."""
    return x @ w.T if out_in else x @ w


def ffn(x, wg, wu, wd, out_in, a):
    return linear(act(a, linear(x, wg, out_in)) * linear(x, wu, out_in), wd, out_in)


def topk_desc(vals, k):
    """Indices of the k largest values, ties to the lower index (moe::top_k)."""
    return sorted(range(len(vals)), key=lambda i: (-vals[i], i))[:k]


def select(c, row):
    """Top-k selection of one token on its selection values (bias, groups), as moe's Router."""
    vals = list(row)
    E = len(vals)
    if c.get("bias") is not None:
        vals = [v + float(b) for v, b in zip(vals, c["bias"])]
    ng = c.get("n_group", 1)
    if ng > 1:
        gs = E // ng
        gscore = []
        for g in range(ng):
            s = sorted(vals[g * gs:(g + 1) * gs], reverse=True)
            gscore.append(s[0] + s[1] if c["group_score"] == "top2" else s[0])
        keep = set(topk_desc(gscore, c["topk_group"]))
        vals = [v if i // gs in keep else -math.inf for i, v in enumerate(vals)]
    return topk_desc(vals, c["k"])


def margin_ok(c, row, eps):
    """The k-th and (k+1)-th selection values (and groups) are at least eps apart."""
    vals = list(row)
    if c.get("bias") is not None:
        vals = [v + float(b) for v, b in zip(vals, c["bias"])]
    E, k = len(vals), c["k"]
    ng = c.get("n_group", 1)
    if ng > 1:
        gs = E // ng
        gscore = []
        for g in range(ng):
            s = sorted(vals[g * gs:(g + 1) * gs], reverse=True)
            gscore.append(s[0] + s[1] if c["group_score"] == "top2" else s[0])
        gsorted = sorted(gscore, reverse=True)
        if gsorted[c["topk_group"] - 1] - gsorted[c["topk_group"]] < eps:
            return False
        keep = set(topk_desc(gscore, c["topk_group"]))
        vals = [v for i, v in enumerate(vals) if i // gs in keep]
    s = sorted(vals, reverse=True)
    need = k + 1 if c.get("noisy") else k  # the load loss reads the (k+1)-th value too
    for j in range(min(need, len(s) - 1)):
        if s[j] - s[j + 1] < eps:
            return False
    return True


def capacity(c, n_real):
    if c.get("cf") is None:
        return None
    v = (c["k"] if c["cf_times_k"] else 1) * n_real * c["cf"] / c["E"]
    cap = math.ceil(v - 1e-9 * max(v, 1.0))
    return min(max(cap, c["min_capacity"]), n_real)


def cv_squared(v):
    mean = v.mean()
    var = ((v - mean) ** 2).mean()
    return var / (mean ** 2 + 1e-10)


def step(c, P, x, r, decisions=None):
    """One forward pass; returns (L, y, losses, decisions). P: dict of leaf parameters."""
    T, D = x.shape
    E, k = c["E"], c["k"]
    out_in = c["layout"] == "out_in"
    seed, stp = c.get("seed", 0), c["step"]
    # router input: jitter multiplies the router's copy of x (float32 factors, as moe computes)
    xr = x
    if c.get("jitter"):
        eps = np.float32(c["jitter"])
        lo, span = np.float32(1.0) - eps, np.float32(2.0) * eps
        u = np.array([[lo + span * rng_uniform(seed, stp, t, i) for i in range(D)] for t in range(T)],
                     dtype=np.float32)
        xr = x * torch.as_tensor(u, dtype=torch.float64)
    z = linear(xr, P["router"], c.get("router_out_in", False))
    v = z
    sigma = None
    if c.get("noisy"):
        a = x @ P["noise"]
        sigma = torch.nn.functional.softplus(a) + c["noise_epsilon"]
        n = f32([[rng_normal(seed, stp, t, i) for i in range(E)] for t in range(T)])
        v = z + n * sigma
    score = c["score"]
    if score in ("softmax", "softmax_of_selected"):
        s = torch.softmax(v, dim=-1)
        probs = torch.softmax(z, dim=-1)
    elif score == "sigmoid":
        s = torch.sigmoid(v)
        sc_clean = torch.sigmoid(z)
        probs = sc_clean / sc_clean.sum(-1, keepdim=True)
    sel_vals = v if score == "softmax_of_selected" else s
    if decisions is None:
        decisions = {"sel_vals": sel_vals.detach().numpy()}
        decisions["experts"] = [select(c, decisions["sel_vals"][t]) for t in range(T)]
    S = decisions["experts"]
    idx = torch.tensor(S)
    sc = torch.gather(s, 1, idx)
    if c["renormalize"] or score == "softmax_of_selected":
        w = sc / sc.sum(-1, keepdim=True)
    else:
        w = sc
    w = w * c.get("route_scale", 1.0)
    w_router = w
    decisions.setdefault("w_router", w.detach().numpy())
    # GShard's random second expert (training): slot j >= 1 kept iff u < w_j / threshold
    removed = np.zeros((T, k), dtype=bool)
    if c.get("random_second"):
        wn = w.detach().numpy()
        for t in range(T):
            for j in range(1, k):
                u = rng_uniform(seed, stp, t, j)
                removed[t, j] = not (u < np.float32(wn[t, j]) / np.float32(c["random_second"]))
        decisions.setdefault("removed", removed)
    removed = decisions.get("removed", removed)
    # capacity, position priority (all first choices in token order, then second choices, ...)
    kept = ~removed
    cap = capacity(c, T)
    if cap is not None:
        count = [0] * E
        for j in range(k):
            for t in range(T):
                if removed[t, j]:
                    continue
                e = S[t][j]
                if count[e] >= cap:
                    kept[t, j] = False
                count[e] += 1
    decisions["kept"] = kept
    w = w * torch.as_tensor(kept, dtype=torch.float64)
    # combine (+ the shared expert)
    y = torch.zeros(T, D)
    for e in range(E):
        rows = [(t, j) for t in range(T) for j in range(k) if S[t][j] == e and kept[t, j]]
        if not rows:
            continue
        ts = torch.tensor([t for t, _ in rows])
        js = torch.tensor([j for _, j in rows])
        out = ffn(x[ts], P["gate"][e], P["up"][e], P["down"][e], out_in, c["act"])
        y = y.index_add(0, ts, w[ts, js].unsqueeze(1) * out)
    if "shared_gate" in P:
        y = y + ffn(x, P["shared_gate"], P["shared_up"], P["shared_down"], out_in, c["act"])
    # auxiliary losses (real tokens = all)
    losses = {}
    aux = torch.zeros(())
    if c.get("balance"):
        counting = c["balance"]
        run = c.get("seq_len") or T
        vals = []
        for t0 in range(0, T, run):
            t1 = min(T, t0 + run)
            n = t1 - t0
            f = np.zeros(E)
            for t in range(t0, t1):
                for j in range(1 if counting == "top1" else k):
                    if not removed[t, j]:
                        f[S[t][j]] += 1.0
            f /= n * (k if counting == "all_normalized" else 1)
            vals.append(E * (torch.as_tensor(f) * probs[t0:t1].mean(0)).sum())
        lb = torch.stack(vals).mean()
        losses["load_balance"] = lb
        aux = aux + c["balance_coef"] * lb
    if c.get("z_coef"):
        zl = (torch.logsumexp(z, dim=-1) ** 2).mean()
        losses["z_loss"] = zl
        aux = aux + c["z_coef"] * zl
    if c.get("importance_load"):
        w_imp, w_load = c["importance_load"]
        imp = torch.zeros(E).index_add(0, idx.reshape(-1), w_router.reshape(-1))
        # load: P(H_i + fresh noise in the top k) = Phi((z_i - threshold_i) / sigma_i)
        vd = v.detach().numpy()
        th_in = torch.stack([v[t, topk_desc(list(vd[t]), k + 1)[k]] for t in range(T)])
        th_out = torch.stack([v[t, S[t][k - 1]] for t in range(T)])
        is_in = torch.zeros(T, E, dtype=torch.bool)
        for t in range(T):
            is_in[t, S[t]] = True
        th = torch.where(is_in, th_in.unsqueeze(1), th_out.unsqueeze(1))
        p_in = 0.5 * torch.erfc(-((z - th) / sigma) / math.sqrt(2.0))
        load = p_in.sum(0)
        losses["importance"] = cv_squared(imp)
        losses["load"] = cv_squared(load)
        aux = aux + w_imp * losses["importance"] + w_load * losses["load"]
    L = (r * y).sum() + c["loss_scale"] * aux
    return L, y, losses, decisions


# ---- inputs, margins, fixture writing ------------------------------------------------------------

def make_params(c, g):
    D, F, E = c["D"], c["F"], c["E"]
    out_in = c["layout"] == "out_in"
    P = {}
    rw = g.normal(0.0, 2.0 / math.sqrt(D), (D, E))
    P["router"] = f32(rw.T if c.get("router_out_in") else rw)
    if c.get("noisy"):
        P["noise"] = f32(g.normal(0.0, 1.0 / math.sqrt(D), (D, E)))
    shp = lambda i, o: (o, i) if out_in else (i, o)
    P["gate"] = f32(g.normal(0.0, 1.0 / math.sqrt(D), (E,) + shp(D, F)))
    P["up"] = f32(g.normal(0.0, 1.0 / math.sqrt(D), (E,) + shp(D, F)))
    P["down"] = f32(g.normal(0.0, 1.0 / math.sqrt(F), (E,) + shp(F, D)))
    if c.get("shared_F"):
        Fs = c["shared_F"]
        P["shared_gate"] = f32(g.normal(0.0, 1.0 / math.sqrt(D), shp(D, Fs)))
        P["shared_up"] = f32(g.normal(0.0, 1.0 / math.sqrt(D), shp(D, Fs)))
        P["shared_down"] = f32(g.normal(0.0, 1.0 / math.sqrt(Fs), shp(Fs, D)))
    return P


def decisions_have_margin(c, P, x):
    """Selection margins (float32-safe), random-second margins, and (with capacity) some drops."""
    with torch.no_grad():
        _, _, _, d = step(c, P, x, torch.zeros_like(x))
    T, k = x.shape[0], c["k"]
    for t in range(T):
        if not margin_ok(c, d["sel_vals"][t], 1e-4):
            return False
    if c.get("random_second"):
        for t in range(T):
            for j in range(1, k):
                u = float(rng_uniform(c.get("seed", 0), c["step"], t, j))
                if abs(u - float(d["w_router"][t, j]) / c["random_second"]) < 1e-3:
                    return False
    removed = d.get("removed", np.zeros((T, k), dtype=bool))
    dropped = int((~d["kept"]).sum()) - int(removed.sum())
    return c.get("cf") is None or dropped > 0


def fmt(v):
    return "%.9g" % float(v)


def write_fixture(path, name, c, tensors, config):
    with open(path, "w") as fh:
        fh.write("# generated by tools/moe_grad_reference.py (torch %s, float64 autograd); "
                 "do not edit\n" % torch.__version__)
        fh.write("config case %s\n" % name)
        for k, v in config.items():
            fh.write("config %s %s\n" % (k, v))
        for k, t in tensors.items():
            t = torch.as_tensor(t).detach()
            if t.dim() == 0:
                fh.write("scalar %s %s\n" % (k, fmt(t.item())))
                continue
            fh.write("tensor %s %s\n" % (k, " ".join(str(s) for s in t.shape)))
            rows = t.reshape(-1, t.shape[-1]) if t.dim() > 1 else t.reshape(1, -1)
            for row in rows:
                fh.write(" ".join(fmt(v) for v in row.tolist()) + "\n")


PRESETS = {
    "switch": dict(E=4, k=1, score="softmax", renormalize=False, act="gelu_tanh", layout="in_out",
                   jitter=1e-2, cf=1.25, cf_times_k=True, min_capacity=4, balance="top1",
                   balance_coef=1e-2, z_coef=1e-3),
    "gshard": dict(E=4, k=2, score="softmax", renormalize=True, act="gelu_tanh", layout="in_out",
                   random_second=0.2, cf=1.0, cf_times_k=True, min_capacity=0, balance="top1",
                   balance_coef=1e-2),
    "stmoe": dict(E=4, k=2, score="softmax", renormalize=False, act="gelu_tanh", layout="in_out",
                  cf=1.25, cf_times_k=False, min_capacity=4, balance="all", balance_coef=1e-2,
                  z_coef=1e-3),
    "mixtral": dict(E=4, k=2, score="softmax", renormalize=True, act="silu", layout="out_in",
                    router_out_in=True, balance="all", balance_coef=1e-3),
    "grok1": dict(E=4, k=2, score="softmax", renormalize=False, act="gelu_tanh", layout="in_out"),
    "deepseekv3": dict(E=16, k=8, score="sigmoid", renormalize=True, route_scale=2.5, act="silu",
                       layout="in_out", n_group=8, topk_group=4, group_score="top2", shared_F=8,
                       balance="all_normalized", balance_coef=1e-4, seq_len=16),
    "glam": dict(E=4, k=2, score="softmax", renormalize=True, act="gelu_tanh", layout="in_out",
                 cf=2.0, cf_times_k=False, min_capacity=0, balance="top1", balance_coef=1e-2),
    "noisy_topk": dict(E=8, k=4, score="softmax_of_selected", renormalize=True, act="gelu_tanh",
                       layout="in_out", noisy=True, noise_epsilon=1e-2,
                       importance_load=(0.1, 0.1)),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data",
                                                  "moe"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    T, D, F = 32, 6, 8
    for name, preset in PRESETS.items():
        c = dict(preset, T=T, D=D, F=F, step=5, seed=0, loss_scale=50.0)
        for seed in range(1000, 3000):
            g = np.random.default_rng(seed)
            P = make_params(c, g)
            x = f32(g.normal(0.0, 1.0, (T, D)))
            r = f32(g.normal(0.0, 1.0, (T, D)))
            if name == "deepseekv3":
                c["bias"] = np.asarray(g.uniform(-0.05, 0.05, c["E"]), dtype=np.float32)
            if decisions_have_margin(c, P, x):
                break
        else:
            raise RuntimeError("no input with routing margins for " + name)
        for p in P.values():
            p.requires_grad_(True)
        x.requires_grad_(True)
        L, y, losses, d = step(c, P, x, r)
        L.backward()
        S = d["experts"]
        removed = d.get("removed", np.zeros((T, c["k"]), dtype=bool))
        experts = torch.tensor([[(-1 if removed[t, j] else S[t][j]) for j in range(c["k"])]
                                for t in range(T)], dtype=torch.float64)
        kept = torch.zeros(c["E"])
        for t in range(T):
            for j in range(c["k"]):
                if d["kept"][t, j]:
                    kept[S[t][j]] += 1
        tensors = dict(x=x, r=r)
        tensors.update({k_: v for k_, v in P.items()})
        if c.get("bias") is not None:
            tensors["bias"] = f32(c["bias"])
        tensors.update(experts=experts, kept=kept, y=y, loss=L)
        for k_, v in losses.items():
            tensors["loss_" + k_] = v
        tensors["grad_x"] = x.grad
        for k_, v in P.items():
            tensors["grad_" + k_] = v.grad
        cap = capacity(c, T)
        config = dict(preset=name, T=T, D=D, F=F, E=c["E"], k=c["k"], step=c["step"],
                      loss_scale=c["loss_scale"], layout=c["layout"],
                      router_layout="out_in" if c.get("router_out_in") else "in_out",
                      capacity=cap if cap is not None else 0)
        if c.get("seq_len"):
            config["seq_len"] = c["seq_len"]
        write_fixture(os.path.join(args.out, "grad_%s.txt" % name), name, c, tensors, config)
        print("%-11s seed %d  L = %.6f  kept %s  dropped %d" % (
            name, seed, float(L), kept.long().tolist(),
            int((~d["kept"]).sum()) - int(removed.sum())))


if __name__ == "__main__":
    main()
