#!/usr/bin/python3
"""The small-shape MoE layer of bench_moe in PyTorch, and the tokens/s ratio moe / PyTorch.

Computation (same as bench_moe's moe/small/<dtype>/...): D 1024, F 4096, 8 experts, top-2,
f32 router + softmax over all experts, top-2 renormalised (Mixtral), SiLU-gated experts
down(silu(x W1) * (x W3)), weighted combine; T = 1, 16, 256 tokens; expert weights in
nn.Linear's [out, in] layout; per-expert gather (index_select), 3 linears, index_add_.
  f32        f32 weights and activations (moe's f32 path)
  bf16       bf16 weights AND activations (the expert input and hidden state are rounded to bf16:
             PyTorch's own bf16 path, oneDNN brgemm, with AMX where the CPU has it; not the same
             numerics as moe, which keeps activations in f32 and widens the bf16 weights exactly)
  bf16noamx  the same with oneDNN limited to AVX-512 (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16)
  bf16w      bf16 weights, f32 activations (moe's numerics; PyTorch upcasts the weights per call)
moe's bf16 runs are compared with all three bf16 PyTorch variants.

Threads: every PyTorch measurement runs in a child process whose thread pools are pinned, so
PyTorch's OpenMP pool and OpenBLAS's pthread pool never nest or oversubscribe the cores:
  1T    OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1
  2T    OMP_NUM_THREADS=2, OPENBLAS_NUM_THREADS=2 (OMP_WAIT_POLICY=PASSIVE)
  2Tb   OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=2 (only the GEMMs threaded)
and the fastest setting is PyTorch's figure ("best"). OPENBLAS_CORETYPE=SkylakeX is set on every
AVX-512 host (Debian's OpenBLAS misdetects recent CPUs and falls back to slower kernels;
--openblas-coretype overrides).

Usage (Debian's python3 with python3-torch and libopenblas0-pthread: scripts/deps --bench):
  /usr/bin/python3 bench/compare_pytorch.py [--bench build/release/bench/bench_moe] [--rounds 5] \
      [--tokens 1,16,256] [--dtypes f32,bf16,bf16noamx,bf16w]

Without --bench: PyTorch alone. With --bench: the machine is shared and noisy, so the two are
measured in alternation: each round times PyTorch (all thread settings) and then runs bench_moe on
the same dtype and T (both weight layouts; 2 threads, and 1 thread at T = 256); the ratio
moe tok/s / PyTorch tok/s (2-thread moe against PyTorch's best, 1-thread moe against 1T) is
taken per round and the median over rounds is reported.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from pytorch_children import SETTINGS, add_coretype_argument, child_env, coretype_line

D, FF, E, K = 1024, 4096, 8, 2


def make(dtype, seed=0):
    """Router f32; expert weights in `dtype`."""
    g = torch.Generator().manual_seed(seed)
    router = torch.randn(E, D, generator=g) / 32.0  # f32 router (nn.Linear [out, in])
    experts = []
    for _ in range(E):
        w1 = (torch.randn(FF, D, generator=g) / 32.0).to(dtype)
        w3 = (torch.randn(FF, D, generator=g) / 32.0).to(dtype)
        w2 = (torch.randn(D, FF, generator=g) / 64.0).to(dtype)
        experts.append((w1, w3, w2))
    return router, experts


@torch.inference_mode()
def moe_forward(x, router, experts, upcast=False):
    """x: [T, D] f32 activations. Experts run in their weight dtype (f32 if upcast); combine in f32."""
    logits = F.linear(x, router)  # f32
    probs = torch.softmax(logits, dim=-1)
    w, idx = torch.topk(probs, K, dim=-1)
    w = w / w.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(x)
    dtype = torch.float32 if upcast else experts[0][0].dtype
    for e in range(E):
        tok, slot = torch.where(idx == e)
        if tok.numel() == 0:
            continue
        xe = x.index_select(0, tok).to(dtype)
        w1, w3, w2 = experts[e]
        if upcast:
            w1, w3, w2 = w1.float(), w3.float(), w2.float()
        h = F.silu(F.linear(xe, w1)) * F.linear(xe, w3)
        ye = F.linear(h, w2).float() * w[tok, slot].unsqueeze(-1)
        out.index_add_(0, tok, ye)
    return out


def torch_tok_per_s(dtype_name, t, reps, threads):
    """Median tokens/s over `reps` calls, cycling over 8 batches (spread routing); runs in the
    worker process whose environment pins the thread pools."""
    torch.set_num_threads(threads)
    upcast = dtype_name == "bf16w"
    router, experts = make(torch.float32 if dtype_name == "f32" else torch.bfloat16)
    g = torch.Generator().manual_seed(100 + t)
    xs = [torch.randn(t, D, generator=g) for _ in range(8)]
    moe_forward(xs[0], router, experts, upcast)
    moe_forward(xs[1], router, experts, upcast)
    times = []
    for r in range(reps):
        t0 = time.perf_counter()
        moe_forward(xs[r % len(xs)], router, experts, upcast)
        times.append(time.perf_counter() - t0)
    return t / statistics.median(times)


def torch_in_child(dtype_name, t, reps, setting, coretype):
    """tokens/s of PyTorch in a child process with pinned pools (see SETTINGS)."""
    omp, blas = SETTINGS[setting]
    env = child_env(omp, blas, coretype)
    if dtype_name == "bf16noamx":
        env["ONEDNN_MAX_CPU_ISA"] = "AVX512_CORE_BF16"
    dt = "bf16" if dtype_name == "bf16noamx" else dtype_name
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker",
                          "%s,%d,%d,%d" % (dt, t, reps, omp)],
                         check=True, capture_output=True, text=True, env=env).stdout
    return float(out.strip().splitlines()[-1])


def run_moe(path, dtype, t):
    """bench_moe tok/s for moe/small/<dtype>/<layout>/tokens:t/threads:N, keyed by "layout/NT"."""
    out = subprocess.run([path, "--benchmark_filter=moe/small/%s/(in_out|out_in)/tokens:%d/" % (dtype, t),
                          "--benchmark_format=json", "--benchmark_min_time=0.3"],
                         check=True, capture_output=True, text=True).stdout
    res = {}
    for b in json.loads(out)["benchmarks"]:
        parts = b["run_name"].split("/")
        res["%s/%sT" % (parts[3], parts[5].split(":")[1])] = b["tok/s"]
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", help="path of bench_moe: measure both, in alternation, and print ratios")
    ap.add_argument("--tokens", default="1,16,256")
    ap.add_argument("--dtypes", default="f32,bf16,bf16noamx,bf16w")
    add_coretype_argument(ap)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=10, help="PyTorch calls per measurement")
    a = ap.parse_args()
    if a.worker:
        dt, t, reps, threads = a.worker.split(",")
        print(torch_tok_per_s(dt, int(t), int(reps), int(threads)))
        return 0
    print("# torch %s, %s" % (torch.__version__, coretype_line(a.openblas_coretype)), flush=True)
    tokens = [int(t) for t in a.tokens.split(",")]
    summary = []
    for dt in a.dtypes.split(","):
        for t in tokens:
            reps = a.reps if t < 256 else max(5, a.reps // 2)
            rows = []
            for r in range(a.rounds if a.bench else 1):
                tp = {s: torch_in_child(dt, t, reps, s, a.openblas_coretype) for s in SETTINGS}
                best_th = max(tp, key=tp.get)
                ours = run_moe(a.bench, "f32" if dt == "f32" else "bf16", t) if a.bench else {}
                rows.append((tp, best_th, ours))
                line = "%-9s T=%4d round %d: torch %s" % (
                    dt, t, r, " ".join("%s %8.1f" % (s, v) for s, v in tp.items()))
                for lay, v in sorted(ours.items()):
                    line += " | moe %s %8.1f (x%.2f)" % (lay, v, v / tp[best_th])
                print(line, flush=True)
            if a.bench:
                for lay in sorted(rows[0][2]):
                    # 2-thread moe vs PyTorch's best; 1-thread moe vs 1-thread PyTorch
                    th = "1T" if lay.endswith("/1T") else None
                    ref = [row[0][th] if th else row[0][row[1]] for row in rows]
                    ratios = [row[2][lay] / r for row, r in zip(rows, ref)]
                    summary.append((dt, t, lay, statistics.median([row[2][lay] for row in rows]),
                                    statistics.median(ref), "1T" if th else "best", statistics.median(ratios),
                                    min(ratios), max(ratios)))
    if summary:
        print("\n%-9s %5s %-10s %12s %16s %16s" % ("torch", "T", "moe", "moe tok/s", "torch tok/s", "ratio (median)"))
        for dt, t, lay, m, tb, which, r, rmin, rmax in summary:
            print("%-9s %5d %-10s %12.1f %11.1f %-4s %8.2f  [%.2f, %.2f]" % (dt, t, lay, m, tb, which, r, rmin, rmax))


if __name__ == "__main__":
    sys.exit(main())
