#!/usr/bin/python3
"""Roofline plot and target table for bench_kernels JSON output.

Usage:
  /usr/bin/python3 tools/roofline.py bench/results/bench_kernels-latest.json \
      [--png roofline.png] [--markdown table.md]

Reads the medians (the "median" aggregates of a --benchmark_repetitions run, or the plain runs
otherwise). The limits are the same run's baselines: baseline/read_bw/threads:N (DRAM read
bandwidth) and baseline/fma_peak/threads:N (f32 FMA peak). Each kernel is a point at
(FLOP per weight byte, GFLOP/s) under the roofs min(peak, intensity x bandwidth) of its thread
count; the table prints every brief target with its measured same-run ratio. Needs Debian's
python3-matplotlib only for --png.
"""
import argparse
import json
import re
import sys

TARGETS_GEMV = 0.85  # GEMV: fraction of the same-run DRAM read bandwidth
TARGET_GEMM_F32 = 0.50  # GEMM T=256: fraction of the same-run FMA peak
TARGET_GEMM_Q = 0.40  # int8 / bf16 (exact dequantisation)

NAME_RE = re.compile(r"^(matmul|eigen)/([a-z0-9_]+)/(\d+)x(\d+)/T:(\d+)/threads:(\d+)")


def load(path):
    with open(path) as f:
        data = json.load(f)
    runs = data["benchmarks"]
    medians = [b for b in runs if b.get("aggregate_name") == "median"]
    cvs = {b["run_name"]: b for b in runs if b.get("aggregate_name") == "cv"}
    if not medians:  # a run without repetitions
        medians = [b for b in runs if b.get("run_type", "iteration") == "iteration"]
    out = {}
    for b in medians:
        name = b.get("run_name", b["name"])
        cv = cvs.get(name, {}).get("real_time")
        out[name] = dict(b, cv=cv)
    return data.get("context", {}), out


def seconds(b):
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b.get("time_unit", "ns")]
    return b["real_time"] * scale


def limits(runs):
    lim = {}
    for name, b in runs.items():
        m = re.match(r"baseline/(read_bw|fma_peak)/threads:(\d+)", name)
        if not m:
            continue
        t = int(m.group(2))
        if m.group(1) == "read_bw":
            lim[("bw", t)] = b["bytes_per_call"] / seconds(b)
        else:
            lim[("fma", t)] = b["flop_per_call"] / seconds(b)
    return lim


def kernels(runs):
    ks = []
    for name, b in runs.items():
        m = NAME_RE.match(name)
        if not m:
            continue
        lib, wt, din, dout, T, th = m.groups()
        s = seconds(b)
        ks.append(dict(name=name, lib=lib, wtype=wt, shape=(int(din), int(dout)), T=int(T),
                       threads=int(th), seconds=s, bytes=b["bytes_per_call"],
                       flops=b["flop_per_call"], cv=b.get("cv")))
    return ks


def fmt_cv(cv):
    return "" if cv is None else f"{100 * cv:.0f}%"


def table(ks, lim):
    rows = []
    bw2, fma2 = lim.get(("bw", 2)), lim.get(("fma", 2))
    lines = []
    lines.append(f"Same-run limits: DRAM read {lim.get(('bw', 1), 0) / 1e9:.1f} GB/s (1 thread), "
                 f"{(bw2 or 0) / 1e9:.1f} GB/s (2 threads); f32 FMA peak "
                 f"{lim.get(('fma', 1), 0) / 1e9:.0f} / {(fma2 or 0) / 1e9:.0f} GFLOP/s.")
    lines.append("")
    lines.append("| target | kernel | shape | T | median | measured | ratio | target | cv |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    grok = [(6144, 32768), (32768, 6144), (6144, 1024)]
    for k in sorted(ks, key=lambda k: (k["T"], k["wtype"], k["shape"])):
        if k["lib"] != "matmul" or k["threads"] != 2:
            continue
        shape = f"[{k['shape'][0]} -> {k['shape'][1]}]"
        if k["T"] == 1 and k["shape"] in grok and bw2:
            gbs = k["bytes"] / k["seconds"]
            r = gbs / bw2
            rows.append((k, r))
            lines.append(f"| GEMV bandwidth | {k['wtype']} | {shape} | 1 | {k['seconds'] * 1e3:.2f} ms | "
                         f"{gbs / 1e9:.1f} GB/s | **{100 * r:.0f}%** of DRAM | >= {100 * TARGETS_GEMV:.0f}% "
                         f"| {fmt_cv(k['cv'])} |")
        elif k["T"] == 256 and fma2:
            gf = k["flops"] / k["seconds"]
            r = gf / fma2
            tgt = TARGET_GEMM_F32 if k["wtype"].startswith("f32") else TARGET_GEMM_Q
            lines.append(f"| GEMM compute | {k['wtype']} | {shape} | 256 | {k['seconds'] * 1e3:.1f} ms | "
                         f"{gf / 1e9:.0f} GFLOP/s | **{100 * r:.0f}%** of FMA peak | >= {100 * tgt:.0f}% "
                         f"| {fmt_cv(k['cv'])} |")
    # Wall-time comparisons with Eigen on the same shapes (f32 [in, out] data).
    lines.append("")
    lines.append("| shape | T | Eigen f32 | moe f32 | moe bf16 | moe int8 | int8 speed-up vs Eigen |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    by = {}
    for k in ks:
        key = (k["shape"], k["T"])
        if k["lib"] == "eigen":
            if k["T"] == 1 or k["threads"] == 2:  # Eigen's GEMV is single-threaded anyway
                by.setdefault(key, {})["eigen"] = k
        elif k["threads"] == 2 and (k["wtype"] in ("f32", "bf16") or k["wtype"].startswith("int8")):
            by.setdefault(key, {})[k["wtype"].split("_")[0]] = k
    for (shape, T), d in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if "eigen" not in d:
            continue
        cell = lambda n: f"{d[n]['seconds'] * 1e3:.2f} ms" if n in d else "-"
        speed = f"{d['eigen']['seconds'] / d['int8']['seconds']:.1f}x" if "int8" in d else "-"
        lines.append(f"| [{shape[0]} -> {shape[1]}] | {T} | {cell('eigen')} | {cell('f32')} | "
                     f"{cell('bf16')} | {cell('int8')} | {speed} |")
    return "\n".join(lines)


def plot(ks, lim, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 7))
    xs = [0.1, 1000.0]
    for t, style in ((2, "-"), (1, ":")):
        if ("bw", t) not in lim or ("fma", t) not in lim:
            continue
        bw, pk = lim[("bw", t)], lim[("fma", t)]
        knee = pk / bw
        ax.plot([xs[0], knee, xs[1]], [xs[0] * bw / 1e9, pk / 1e9, pk / 1e9], "k" + style,
                lw=1.5, label=f"roof {t} thread{'s' if t > 1 else ''}: "
                f"{bw / 1e9:.0f} GB/s, {pk / 1e9:.0f} GFLOP/s")
    colors = {"f32": "tab:blue", "f32_outin": "tab:cyan", "bf16": "tab:orange",
              "bf16_outin": "tab:olive", "int8_b1": "tab:green", "int8_b8": "darkgreen",
              "eigen": "tab:red"}
    markers = {1: "o", 16: "s", 64: "^", 256: "D"}
    keys = sorted({"eigen" if k["lib"] == "eigen" else k["wtype"] for k in ks})
    for key in keys:  # legend entries
        ax.scatter([], [], c=colors.get(key, "gray"), marker="o",
                   label="Eigen f32" if key == "eigen" else f"moe {key}")
    for k in ks:
        key = "eigen" if k["lib"] == "eigen" else k["wtype"]
        ai = k["flops"] / k["bytes"]
        gf = k["flops"] / k["seconds"] / 1e9
        ax.scatter([ai], [gf], c=colors.get(key, "gray"), marker=markers.get(k["T"], "x"),
                   s=40 if k["threads"] == 2 else 18, alpha=0.85 if k["threads"] == 2 else 0.5,
                   edgecolors="k" if k["threads"] == 1 else "none")
    for T, m in markers.items():
        ax.scatter([], [], c="gray", marker=m, label=f"T = {T}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP per weight byte)")
    ax.set_ylabel("GFLOP/s (median)")
    ax.set_title("moe::matmul roofline (same-run limits; small outlined markers = 1 thread)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json")
    ap.add_argument("--png")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    _, runs = load(args.json)
    lim = limits(runs)
    ks = kernels(runs)
    if not ks:
        sys.exit(f"{args.json}: no matmul/eigen benchmarks found")
    text = table(ks, lim)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    if args.png:
        try:
            import matplotlib  # noqa: F401  (only the plot needs it)
        except ImportError:
            print(f"roofline plot skipped ({args.png}): python3-matplotlib is not installed "
                  "(scripts/deps python3-matplotlib)", file=sys.stderr)
            return
        plot(ks, lim, args.png)
        print(f"roofline plot: {args.png}", file=sys.stderr)


if __name__ == "__main__":
    main()
