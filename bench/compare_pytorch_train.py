#!/usr/bin/python3
"""A training step of bench_train's small language models in PyTorch, and the tokens/s ratio
moe / PyTorch.

The model (bench/bench_train.cpp, examples/train's default): Grok-1's architecture (written from
the public xai-org/grok-1 model.py) at D 256, 4 layers, 8 query / 2 KV heads of 32 (GQA),
half-split RoPE (base 10000), attention logits times 1/sqrt(32) and soft-capped at 30 tanh(z / 30),
sandwich RMSNorms (eps 1e-5), embedding times sqrt(D), tied head times 1/sqrt(3), vocab 4096;
  moe    8 experts top-2 of width 512: softmax router, the top-2 probabilities as gates (not
         renormalised), GELU-tanh gated experts down(gelu(x Wg) * (x Wu)), dropless; Switch
         load-balancing loss 1e-2 (f_i = choices of i / (k T), gradient through the mean
         probabilities only) and router z-loss 1e-3 (mean logsumexp^2)
  dense  a gated GELU-tanh FFN of width 1024 in every block (the active size of the MoE model)
One step = forward + backward + torch.nn.utils.clip_grad_norm_(1.0) + torch.optim.AdamW(lr 3e-3,
betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on the matrices, none on the norm scales), on a
batch of 8 x 256 random token ids, in PyTorch eager float32. The MoE layer is the usual eager
formulation (one parameter set per expert; per expert: gather the routed rows, three matmuls,
weighted index_add_), as bench/compare_pytorch.py does for the layer.

Threads: every PyTorch measurement runs in a child process with pinned thread pools (as
bench/compare_pytorch.py): 1T (OMP 1, OpenBLAS 1), 2T (OMP 2, OpenBLAS 2, OMP_WAIT_POLICY=PASSIVE),
2Tb (OMP 1, OpenBLAS 2); the fastest is PyTorch's figure ("best"). OPENBLAS_CORETYPE=SkylakeX
is set on every AVX-512 host (--openblas-coretype overrides). Needs python3-torch and
libopenblas0-pthread (without it PyTorch falls back to the reference BLAS): scripts/deps --bench.

Usage:
  /usr/bin/python3 bench/compare_pytorch_train.py --bench build/release/bench/bench_train \\
      [--rounds 3] [--models moe,dense] [--reps 5]
  /usr/bin/python3 bench/compare_pytorch_train.py --bench build/release/bench/bench_train --gemm
      (the step's products alone, one thread: bench_train's train_gemm against torch.mm)
  /usr/bin/python3 bench/compare_pytorch_train.py --check   (the twin against the float64
      reference of tools/decoder_grad_reference.py, which the C++ gradients are tested against)

Without --bench: PyTorch alone. With --bench: the machine is shared and noisy, so the two are
measured in alternation: each round times PyTorch (each thread setting) and then runs
bench_train (1 and 2 threads); the ratio moe tok/s / PyTorch tok/s (2-thread moe against
PyTorch's best, 1-thread moe against 1T) is taken per round and the median over rounds reported.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from pytorch_children import SETTINGS, add_coretype_argument, child_env, coretype_line

# The shape of bench_train (examples/train's default model at vocab 4096).
CFG = dict(vocab=4096, d=256, layers=4, hq=8, hkv=2, dh=32, experts=8, top_k=2, d_ff=512,
           rope_base=10000.0, eps=1e-5, emb_mult=16.0, out_mult=1 / math.sqrt(3),
           logit_mult=1 / math.sqrt(32), softcap=30.0, balance=1e-2, z_loss=1e-3,
           batch=8, seq_len=256)
ADAMW = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
CLIP = 1.0


def rms_norm(x, s, eps):
    return s * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


class GrokLM(torch.nn.Module):
    """Weights stored [in, out] (moe's and JAX's layout); initialised as moe's TrainableDecoder
    (normal, std 1/sqrt(fan_in), residual writers / sqrt(2 L), router x 0.1, norms 1)."""

    def __init__(self, cfg, dense, seed=1):
        super().__init__()
        self.cfg, self.dense = cfg, dense
        g = torch.Generator().manual_seed(seed)
        d, L, e, f = cfg["d"], cfg["layers"], cfg["experts"], cfg["d_ff"]
        q, kv = cfg["hq"] * cfg["dh"], cfg["hkv"] * cfg["dh"]
        resid = 1 / math.sqrt(2 * L)

        def w(i, o, gain=1.0):
            return torch.nn.Parameter(torch.randn(i, o, generator=g) * (gain / math.sqrt(i)))

        def ones():
            return torch.nn.Parameter(torch.ones(d))

        self.embedding = torch.nn.Parameter(torch.randn(cfg["vocab"], d, generator=g) / math.sqrt(d))
        self.final_norm = ones()
        self.layers = torch.nn.ModuleList()
        for _ in range(L):
            m = torch.nn.Module()
            m.wq, m.wk, m.wv, m.wo = w(d, q), w(d, kv), w(d, kv), w(q, d, resid)
            m.n0, m.n1, m.n2, m.n3 = ones(), ones(), ones(), ones()
            if dense:
                fd = cfg["top_k"] * f
                m.gate, m.up, m.down = w(d, fd), w(d, fd), w(fd, d, resid)
            else:
                m.router = w(d, e, 0.1)
                m.gate = torch.nn.ParameterList([w(d, f) for _ in range(e)])
                m.up = torch.nn.ParameterList([w(d, f) for _ in range(e)])
                m.down = torch.nn.ParameterList([w(f, d, resid) for _ in range(e)])
            self.layers.append(m)
        t, dh = cfg["seq_len"], cfg["dh"]
        inv = cfg["rope_base"] ** (-torch.arange(0, dh // 2, dtype=torch.float64) * 2 / dh)
        th = torch.arange(t, dtype=torch.float64)[:, None] * inv[None, :]
        dtype = torch.get_default_dtype()
        self.register_buffer("cos", torch.cos(th).to(dtype), persistent=False)  # [T, dh/2]
        self.register_buffer("sin", torch.sin(th).to(dtype), persistent=False)
        self.register_buffer("mask", torch.ones(t, t, dtype=torch.bool).triu(1), persistent=False)

    def rope(self, x):  # x [B, H, T, dh], half-split ("NeoX") rotation
        half = x.shape[-1] // 2
        a, b = x[..., :half], x[..., half:]
        return torch.cat([a * self.cos - b * self.sin, b * self.cos + a * self.sin], dim=-1)

    def attention(self, a, m):
        c = self.cfg
        bsz, t, _ = a.shape
        hq, hkv, dh = c["hq"], c["hkv"], c["dh"]
        grp = hq // hkv
        q = self.rope((a @ m.wq).view(bsz, t, hq, dh).transpose(1, 2))  # [B, Hq, T, dh]
        k = self.rope((a @ m.wk).view(bsz, t, hkv, dh).transpose(1, 2))  # [B, Hkv, T, dh]
        v = (a @ m.wv).view(bsz, t, hkv, dh).transpose(1, 2)
        # the grp query heads of a KV head as one [grp T, dh] matrix: no copies of k and v
        qg = q.reshape(bsz, hkv, grp * t, dh)
        z = (qg @ k.transpose(-1, -2)) * c["logit_mult"]  # [B, Hkv, grp T, T]
        z = c["softcap"] * torch.tanh(z / c["softcap"])
        z = z.view(bsz, hkv, grp, t, t).masked_fill(self.mask, float("-inf"))
        p = torch.softmax(z, dim=-1).view(bsz, hkv, grp * t, t)
        o = (p @ v).view(bsz, hq, t, dh).transpose(1, 2).reshape(bsz, t, hq * dh)
        return o @ m.wo

    def moe(self, x, m):
        """x [N, D] -> (y [N, D], weighted aux losses)."""
        c = self.cfg
        n, e_count, k = x.shape[0], c["experts"], c["top_k"]
        logits = x @ m.router
        probs = torch.softmax(logits, dim=-1)
        gates, idx = torch.topk(probs, k, dim=-1)
        y = torch.zeros_like(x)
        for e in range(e_count):
            tok, slot = torch.where(idx == e)
            if tok.numel() == 0:
                continue
            xe = x.index_select(0, tok)
            h = F.gelu(xe @ m.gate[e], approximate="tanh") * (xe @ m.up[e])
            y.index_add_(0, tok, (h @ m.down[e]) * gates[tok, slot].unsqueeze(-1))
        aux = x.new_zeros(())
        if c["balance"] > 0:
            f = torch.bincount(idx.flatten(), minlength=e_count).to(x.dtype) / (n * k)
            aux = aux + c["balance"] * e_count * torch.sum(f * probs.mean(0))
        if c["z_loss"] > 0:
            aux = aux + c["z_loss"] * torch.logsumexp(logits, dim=-1).pow(2).mean()
        return y, aux

    def forward(self, tokens, targets):
        """tokens, targets [B, T] -> (loss, ce)."""
        c = self.cfg
        bsz, t = tokens.shape
        eps = c["eps"]
        h = self.embedding[tokens] * c["emb_mult"]  # [B, T, D]
        aux = h.new_zeros(())
        for m in self.layers:
            h = h + rms_norm(self.attention(rms_norm(h, m.n0, eps), m), m.n1, eps)
            x = rms_norm(h, m.n2, eps).reshape(bsz * t, -1)
            if self.dense:
                y = (F.gelu(x @ m.gate, approximate="tanh") * (x @ m.up)) @ m.down
            else:
                y, a = self.moe(x, m)
                aux = aux + a
            h = h + rms_norm(y.view(bsz, t, -1), m.n3, eps)
        logits = (rms_norm(h, self.final_norm, eps) @ self.embedding.T) * c["out_mult"]
        ce = F.cross_entropy(logits.view(bsz * t, -1), targets.reshape(-1), ignore_index=-1)
        return ce + aux, ce


def make_optimizer(model):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
                             **ADAMW)


def train_step(model, opt, tokens, targets):
    opt.zero_grad(set_to_none=True)
    loss, ce = model(tokens, targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    opt.step()
    return float(ce)


def torch_tok_per_s(kind, reps, threads):
    """Median tokens/s over `reps` steps after 2 warm-up steps (in the worker process)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = GrokLM(CFG, dense=(kind == "dense"))
    opt = make_optimizer(model)
    g = torch.Generator().manual_seed(7)
    shape = (CFG["batch"], CFG["seq_len"])
    batches = [(torch.randint(0, CFG["vocab"], shape, generator=g),
                torch.randint(0, CFG["vocab"], shape, generator=g)) for _ in range(4)]
    for i in range(2):
        train_step(model, opt, *batches[i])
    times = []
    for r in range(reps):
        t0 = time.perf_counter()
        train_step(model, opt, *batches[r % len(batches)])
        times.append(time.perf_counter() - t0)
    n_params = sum(p.numel() for p in model.parameters())
    return CFG["batch"] * CFG["seq_len"] / statistics.median(times), n_params


# ---- the check against tools/decoder_grad_reference.py ------------------------------------------

def check():
    """The twin in float64 on the reference's tiny Grok-shaped decoder (its weights, tokens and
    targets): loss and every gradient against the reference's autograd, without aux losses and
    with the balance loss (the reference counts f_i = choices / T: k times ours, so its
    coefficient is ours / k)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "tools"))
    import numpy as np
    import decoder_grad_reference as ref  # sets float64 as torch's default dtype
    worst = 0.0
    for balance in (0.0, 1e-2):
        rcfg = dict(ref.GROK, balance_coef=balance / ref.GROK["top_k"])
        rng = np.random.default_rng(rcfg["seed"])
        values = ref.make_params(rcfg, rng)
        n = rcfg["batch"] * rcfg["seq_len"]
        tokens = rng.integers(0, rcfg["vocab"], size=n)
        targets = rng.integers(0, rcfg["vocab"], size=n)
        targets[rcfg["seq_len"] - 1::rcfg["seq_len"]] = -1
        rp = {k: torch.tensor(v, requires_grad=True) for k, v in values.items()}
        rloss = ref.forward(rp, tokens, list(targets), rcfg)[0]
        rloss.backward()

        cfg = dict(vocab=rcfg["vocab"], d=rcfg["d"], layers=rcfg["layers"], hq=rcfg["hq"],
                   hkv=rcfg["hkv"], dh=rcfg["dh"], experts=rcfg["experts"], top_k=rcfg["top_k"],
                   d_ff=rcfg["d_ff"], rope_base=rcfg["rope_base"], eps=rcfg["eps"],
                   emb_mult=rcfg["emb_mult"], out_mult=rcfg["out_mult"],
                   logit_mult=rcfg["logit_mult"], softcap=rcfg["softcap"], balance=balance,
                   z_loss=0.0, batch=rcfg["batch"], seq_len=rcfg["seq_len"])
        model = GrokLM(cfg, dense=False).double()
        names = {"embedding": model.embedding, "final_norm": model.final_norm}
        for l, m in enumerate(model.layers):
            p = "layer%d." % l
            names.update({p + "wq": m.wq, p + "wk": m.wk, p + "wv": m.wv, p + "wo": m.wo,
                          p + "norm0": m.n0, p + "norm1": m.n1, p + "norm2": m.n2,
                          p + "norm3": m.n3, p + "router": m.router})
            for e in range(cfg["experts"]):
                for t in ("gate", "up", "down"):
                    names["%s%s/%d" % (p, t, e)] = getattr(m, t)[e]
        with torch.no_grad():
            for name, param in names.items():
                base, _, e = name.partition("/")
                param.copy_(torch.tensor(values[base][int(e)] if e else values[base]))
        shape = (rcfg["batch"], rcfg["seq_len"])
        loss, _ = model(torch.tensor(tokens).view(shape), torch.tensor(targets).view(shape))
        loss.backward()
        assert abs(float(loss) - float(rloss)) < 1e-12 * abs(float(rloss)), (float(loss), float(rloss))
        for name, param in names.items():
            base, _, e = name.partition("/")
            want = rp[base].grad[int(e)] if e else rp[base].grad
            scale = float(rp[base].grad.abs().max())
            err = float((param.grad - want).abs().max()) / scale
            worst = max(worst, err)
            assert err < 1e-10, "%s (balance %g): gradient differs by %.3g of its largest" % (
                name, balance, err)
        print("balance %g: loss %.12f == reference %.12f" % (balance, float(loss), float(rloss)))
    print("check passed: every gradient within %.2g of its tensor's largest" % worst)


# ---- the comparison -----------------------------------------------------------------------------

def torch_in_child(kind, reps, setting, coretype):
    """(tokens/s, parameters) of PyTorch in a child process with pinned pools (see SETTINGS)."""
    omp, blas = SETTINGS[setting]
    env = child_env(omp, blas, coretype)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker",
                          "%s,%d,%d" % (kind, reps, omp)],
                         check=True, capture_output=True, text=True, env=env).stdout
    tps, n_params = out.strip().splitlines()[-1].split()
    return float(tps), int(n_params)


def run_moe(path, models):
    """bench_train tok/s keyed by "<model>/<N>T", and its parameter counts and load."""
    filt = "train/grok_(%s)/" % "|".join(models)
    out = subprocess.run([path, "--benchmark_filter=" + filt, "--benchmark_format=json"],
                         check=True, capture_output=True, text=True).stdout
    doc = json.loads(out)
    res, params = {}, {}
    for b in doc["benchmarks"]:
        parts = b["run_name"].split("/")
        kind = parts[1].split("_")[1]
        res["%s/%sT" % (kind, parts[2].split(":")[1])] = b["tok/s"]
        params[kind] = round(b["params_M"] * 1e6)
    return res, params, doc["context"].get("load_avg", [])


# bench_train's train_gemm shapes: name -> (T, in, out, weight stored [out, in]).
GEMM_CASES = {"up": (512, 256, 512, False), "down": (512, 512, 256, False),
              "q": (2048, 256, 256, False), "kv": (2048, 256, 64, False),
              "head": (2048, 256, 4096, True)}
GEMM_OPS = ("fwd", "grad_input", "grad_weight")


def torch_gemm_flops(reps):
    """FLOP/s of torch.mm on one thread for every (op, case) of bench_train's train_gemm: the
    same products, as PyTorch's autograd runs them (x @ W, dy @ W^T, x^T @ dy)."""
    torch.manual_seed(0)
    res = {}
    for name, (t, n_in, n_out, out_in) in GEMM_CASES.items():
        x, dy = torch.randn(t, n_in), torch.randn(t, n_out)
        w = torch.randn(n_out, n_in) if out_in else torch.randn(n_in, n_out)
        wl = w.t() if out_in else w  # the logical [in, out] matrix (a view)
        runs = {"fwd": lambda: x @ wl, "grad_input": lambda: dy @ wl.t(),
                "grad_weight": (lambda: dy.t() @ x) if out_in else (lambda: x.t() @ dy)}
        for op in GEMM_OPS:
            f = runs[op]
            f()
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                f()
                times.append(time.perf_counter() - t0)
            res["%s/%s" % (op, name)] = 2.0 * t * n_in * n_out / statistics.median(times)
    return res


def gemm_in_child(reps, coretype):
    env = child_env(1, 1, coretype, passive=False)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", "gemm,%d,1" % reps],
                         check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def compare_gemm(path, rounds, reps, coretype):
    """train_gemm (moe, 1 thread) against torch.mm (OpenBLAS, 1 thread), alternating rounds."""
    ratios, ours_all, theirs_all = {}, {}, {}
    for r in range(rounds):
        theirs = gemm_in_child(reps, coretype)
        out = subprocess.run([path, "--benchmark_filter=train_gemm/|fma_peak/threads:1",
                              "--benchmark_format=json"],
                             check=True, capture_output=True, text=True).stdout
        doc = json.loads(out)
        peak = [b["FLOP/s"] for b in doc["benchmarks"] if "fma_peak" in b["run_name"]][0]
        for b in doc["benchmarks"]:
            if not b["run_name"].startswith("train_gemm/"):
                continue
            key = "/".join(b["run_name"].split("/")[1:3])
            ours_all.setdefault(key, []).append(b["FLOP/s"] / peak)
            theirs_all.setdefault(key, []).append(theirs[key] / peak)
            ratios.setdefault(key, []).append(b["FLOP/s"] / theirs[key])
        print("round %d done; load %s" % (r, " ".join(open("/proc/loadavg").read().split()[:3])),
              flush=True)
    print("\n%-22s %10s %10s %8s %14s" % ("product (1 thread)", "moe peak", "torch peak",
                                           "ratio", "[min, max]"))
    for key in ratios:
        print("%-22s %10.2f %10.2f %8.2f   [%.2f, %.2f]" % (
            key, statistics.median(ours_all[key]), statistics.median(theirs_all[key]),
            statistics.median(ratios[key]), min(ratios[key]), max(ratios[key])))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", help="path of bench_train: measure both, in alternation, and print ratios")
    ap.add_argument("--models", default="moe,dense")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5, help="timed PyTorch steps per measurement")
    ap.add_argument("--check", action="store_true", help="check the twin against the float64 reference")
    ap.add_argument("--gemm", action="store_true",
                    help="with --bench: the step's products alone (train_gemm) against torch.mm")
    add_coretype_argument(ap)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.check:
        check()
        return 0
    if a.worker:
        kind, reps, threads = a.worker.split(",")
        if kind == "gemm":
            torch.set_num_threads(1)
            print(json.dumps(torch_gemm_flops(int(reps))))
            return 0
        tps, n_params = torch_tok_per_s(kind, int(reps), int(threads))
        print(tps, n_params)
        return 0
    print("# torch %s, %s, load %s" %
          (torch.__version__, coretype_line(a.openblas_coretype),
           " ".join(open("/proc/loadavg").read().split()[:3])), flush=True)
    if a.gemm:
        if not a.bench:
            ap.error("--gemm needs --bench PATH")
        compare_gemm(a.bench, a.rounds, max(a.reps, 20), a.openblas_coretype)
        return 0
    models = a.models.split(",")
    rows = {m: [] for m in models}
    for r in range(a.rounds if a.bench else 1):
        tp = {}
        for m in models:
            tp[m] = {}
            for s in SETTINGS:
                tp[m][s], n_params = torch_in_child(m, a.reps, s, a.openblas_coretype)
            print("%-5s round %d: torch (%.2fM parameters) %s" % (
                m, r, n_params / 1e6, " ".join("%s %7.1f" % (s, v) for s, v in tp[m].items())),
                flush=True)
        if a.bench:
            ours, params, load = run_moe(a.bench, models)
            for m in models:
                best = max(tp[m].values())
                print("%-5s round %d: moe (%.2fM parameters) 2T %7.1f (x%.2f of torch's best) "
                      "1T %7.1f (x%.2f of torch 1T); load %s" % (
                          m, r, params[m] / 1e6, ours[m + "/2T"], ours[m + "/2T"] / best,
                          ours[m + "/1T"], ours[m + "/1T"] / tp[m]["1T"],
                          " ".join("%.2f" % x for x in load)), flush=True)
                rows[m].append((tp[m], ours))
    if not a.bench:
        return 0
    print("\n%-6s %-8s %12s %-14s %12s %8s %14s" % ("model", "moe", "moe tok/s", "torch",
                                                    "torch tok/s", "ratio", "[min, max]"))
    for m in models:
        for th, ref in (("2T", None), ("1T", "1T")):
            mine = [o[m + "/" + th] for _, o in rows[m]]
            theirs = [t[ref] if ref else max(t.values()) for t, _ in rows[m]]
            best = [max(t, key=t.get) for t, _ in rows[m]]
            ratios = [x / y for x, y in zip(mine, theirs)]
            label = "1T" if ref else "best (%s)" % ",".join(sorted(set(best)))
            print("%-6s %-8s %12.1f %-14s %12.1f %8.2f   [%.2f, %.2f]" % (
                m, th, statistics.median(mine), label, statistics.median(theirs),
                statistics.median(ratios), min(ratios), max(ratios)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
