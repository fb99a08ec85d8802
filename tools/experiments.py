#!/usr/bin/env python3
"""The routing-policy experiments of docs/training.md, run with moe's `train` example.

Trains a small Grok-shaped MoE language model (D 128, 4 layers, 8 experts of width 256, top-2,
128-token windows, batch 8) on Jane Austen's novels under each routing policy, same tokens and
same seed for every run, and writes a Markdown table and PNG plots of what the MoE literature
measures: validation loss, expert-load balance (coefficient of variation and max/mean of each
layer's share of the routed pairs), the share of (token, expert) pairs dropped by the capacity,
the router's mean log-sum-exp and entropy, and tokens/s. Then fine-tunes the base run on a small
slice of the King James Bible with and without expert dropout and with the MoE layers frozen.

Usage (scripts/experiments wraps it: builds `train`, fetches the corpus):
  tools/experiments.py --train build/release/examples/train --data data --out runs/experiments \
      [--jobs 2] [--steps 600] [--only NAME...] [--docs docs]

Each run writes OUT/NAME/metrics.jsonl (train --json); a run whose metrics end at its last step
is not repeated, so an interrupted invocation continues where it stopped. Then it measures each
configuration's speed one after the other (OUT/speed.json). --docs writes
DOCS/images/training/*.png and the table into DOCS/training.md (between its two markers).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SMALL = {"d_model": 128, "n_layers": 4, "n_q_heads": 4, "n_kv_heads": 2, "head_dim": 32,
         "n_experts": 8, "top_k": 2, "d_ff": 256}
TOP1 = dict(SMALL, top_k=1, d_ff=512)  # top-1 with twice the width: the same expert FLOPs

# name -> (label, config, flags, init run or None, corpus, validation)
AUSTEN = ("austen.train.txt", "austen.val.txt")
KJV_SLICE = ("kjv.slice.txt", "kjv.val.txt")
RUNS = {
    "base": ("top-2, dropless, balance 1e-2, z 1e-3", SMALL, [], None, AUSTEN),
    "no-balance": ("balance off", SMALL, ["--balance", "0"], None, AUSTEN),
    "cf1.0": ("CF 1.0", SMALL, ["--capacity-factor", "1.0"], None, AUSTEN),
    "cf1.25": ("CF 1.25", SMALL, ["--capacity-factor", "1.25"], None, AUSTEN),
    "cf2.0": ("CF 2.0", SMALL, ["--capacity-factor", "2.0"], None, AUSTEN),
    "cf1.0-no-balance": ("CF 1.0, balance off", SMALL,
                         ["--capacity-factor", "1.0", "--balance", "0"], None, AUSTEN),
    "no-z": ("z-loss off", SMALL, ["--z-loss", "0"], None, AUSTEN),
    "lr1e-2": ("lr 1e-2, z 1e-3", SMALL, ["--lr", "1e-2"], None, AUSTEN),
    "lr1e-2-no-z": ("lr 1e-2, z-loss off", SMALL, ["--lr", "1e-2", "--z-loss", "0"], None, AUSTEN),
    "top1": ("top-1, width 512 (equal compute)", TOP1, [], None, AUSTEN),
    "dense": ("dense, width 512 (equal active size)", SMALL, ["--dense"], None, AUSTEN),
    "ft": ("fine-tune", SMALL, [], "base", KJV_SLICE),
    "ft-expert-dropout": ("fine-tune, expert dropout 0.4", SMALL, ["--expert-dropout", "0.4"],
                          "base", KJV_SLICE),
    "ft-frozen": ("fine-tune, MoE frozen", SMALL, ["--freeze-moe"], "base", KJV_SLICE),
}
GROUPS = [
    ("1. Balance loss (dropless)", ["base", "no-balance"]),
    ("2. Capacity factor (balance 1e-2)", ["cf1.0", "cf1.25", "cf2.0", "base"]),
    ("3. Capacity factor 1.0 with and without the balance loss", ["cf1.0", "cf1.0-no-balance"]),
    ("4. Router z-loss", ["base", "no-z", "lr1e-2", "lr1e-2-no-z"]),
    ("5. Top-1 vs top-2 vs dense", ["base", "top1", "dense"]),
    ("6. Fine-tuning on 1,500 verses of the KJV Bible", ["ft", "ft-expert-dropout", "ft-frozen"]),
]
KJV_SLICE_LINES = 1500


def run_steps(name, args):
    return args.ft_steps if RUNS[name][3] else args.steps


def read_metrics(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def complete(name, args):
    evals = [m for m in read_metrics(args.out / name / "metrics.jsonl") if m["event"] == "eval"]
    return bool(evals) and evals[-1]["step"] == run_steps(name, args)


def command(name, args, out, steps, val_windows=32):
    label, config, flags, init, (corpus, val) = RUNS[name]
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.ckpt").unlink(missing_ok=True)  # an incomplete run starts over
    (out / "config.json").write_text(json.dumps(config) + "\n")
    cmd = [str(args.train), "--corpus", str(args.data / corpus), "--val", str(args.data / val),
           "--tokenizer", str(args.data / "austen.model"), "--config", str(out / "config.json"),
           "--out", str(out), "--seq", "128", "--batch", "8", "--steps", str(steps),
           "--eval-every", str(min(steps, args.eval_every)), "--val-windows", str(val_windows),
           "--threads", str(args.threads), "--seed", "1", "--save-every", str(steps),
           "--no-export", "--json"]
    if init:
        cmd += ["--init", str(args.out / init), "--lr", "1e-3", "--warmup", "20"]
    return cmd + flags


def train(name, args):
    out = args.out / name
    if complete(name, args):
        print(f"experiments: {name}: done already", file=sys.stderr)
        return
    cmd = command(name, args, out, run_steps(name, args))
    t0 = time.time()
    print(f"experiments: {name}: {' '.join(cmd)}", file=sys.stderr)
    with open(out / "metrics.jsonl.tmp", "w") as f, open(out / "train.log", "w") as log:
        r = subprocess.run(cmd, stdout=f, stderr=log)
    if r.returncode != 0:
        raise SystemExit(f"experiments: {name} failed (exit {r.returncode}); see {out}/train.log")
    os.replace(out / "metrics.jsonl.tmp", out / "metrics.jsonl")
    print(f"experiments: {name}: {time.time() - t0:.0f} s", file=sys.stderr)


def speed(args):
    """tokens/s of every run's configuration, measured one after the other in the same window
    (the runs themselves share the machine two at a time, with whatever else runs): 40 steps,
    one thread, three rounds in alternating order; the median."""
    rates = {n: [] for n in RUNS}
    for r in range(3):
        for name in (list(RUNS) if r % 2 == 0 else list(reversed(RUNS))):
            out = args.out / "speed" / name
            cmd = command(name, args, out, 40, val_windows=1)
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                raise SystemExit(f"experiments: speed of {name} failed: {p.stderr[-500:]}")
            last = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")][-1]
            rates[name].append(40 * 8 * 128 / last["elapsed_seconds"])
    load = os.getloadavg()[0]
    result = {n: sorted(v)[1] for n, v in rates.items()}
    result["load_average"] = load
    (args.out / "speed.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"experiments: speed measured (load average {load:.1f})", file=sys.stderr)


def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def summary(name, args):
    """The last evaluation's figures; routing statistics over the last quarter of the run."""
    evals = [m for m in read_metrics(args.out / name / "metrics.jsonl") if m["event"] == "eval"]
    last = evals[-1]
    tail = evals[-max(1, len(evals) // 4):]
    moe = bool(last["load_cv"]) and "--dense" not in RUNS[name][2]

    def tail_mean(key):
        return mean([mean(e[key]) for e in tail]) if moe else float("nan")

    return {
        "val_loss": last["val_loss"], "train_eval_loss": last["train_eval_loss"],
        "cv": tail_mean("load_cv"), "max_over_mean": tail_mean("load_max_over_mean"),
        "dropped": tail_mean("dropped"), "lse": tail_mean("router_lse"),
        "entropy": tail_mean("router_entropy"),
        "tokens_per_second": json.loads((args.out / "speed.json").read_text())[name],
    }


def fmt(x, spec):
    return "-" if x != x else format(x, spec)


def moe(s):
    return s["cv"] == s["cv"]  # not NaN: a model with MoE layers


def table(args):
    lines = ["| group | run | val loss | train loss | load CV | max/mean | dropped | router lse "
             "| router entropy | tokens/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for group, names in GROUPS:
        for i, name in enumerate(names):
            s = summary(name, args)
            lines.append(
                f"| {group if i == 0 else ''} | {RUNS[name][0]} | {s['val_loss']:.3f} | "
                f"{s['train_eval_loss']:.3f} | {fmt(s['cv'], '.2f')} | "
                f"{fmt(s['max_over_mean'], '.2f')} | {fmt(100 * s['dropped'], '.1f')}{'%' * moe(s)} | "
                f"{fmt(s['lse'], '.2f')} | {fmt(s['entropy'], '.2f')} | "
                f"{s['tokens_per_second']:,.0f} |")
    return "\n".join(lines) + "\n"


def series(name, key, args, reduce=mean):
    evals = [m for m in read_metrics(args.out / name / "metrics.jsonl") if m["event"] == "eval"]
    return [e["step"] for e in evals], [reduce(e[key]) if isinstance(e[key], list) else e[key]
                                        for e in evals]


def plots(args, images):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    images.mkdir(parents=True, exist_ok=True)

    def figure(file, panels):
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6))
        axes = axes if len(panels) > 1 else [axes]
        for ax, (title, key, names, ylabel) in zip(axes, panels):
            for name in names:
                x, y = series(name, key, args)
                ax.plot(x, y, label=RUNS[name][0])
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(images / file, dpi=90)
        plt.close(fig)
        print(f"experiments: wrote {images / file}", file=sys.stderr)

    figure("balance.png", [
        ("validation loss", "val_loss", ["base", "no-balance"], "loss"),
        ("expert-load CV (mean over layers)", "load_cv", ["base", "no-balance"], "CV"),
        ("max/mean expert load", "load_max_over_mean", ["base", "no-balance"], "max/mean")])
    cfs = ["cf1.0", "cf1.25", "cf2.0", "base", "cf1.0-no-balance"]
    figure("capacity.png", [
        ("validation loss", "val_loss", cfs, "loss"),
        ("(token, expert) pairs dropped", "dropped", cfs, "share of pairs")])
    zs = ["base", "no-z", "lr1e-2", "lr1e-2-no-z"]
    figure("z_loss.png", [
        ("router log-sum-exp (mean over layers)", "router_lse", zs, "mean lse"),
        ("validation loss", "val_loss", zs, "loss")])
    figure("top_k.png", [("validation loss", "val_loss", ["base", "top1", "dense"], "loss")])
    fts = ["ft", "ft-expert-dropout", "ft-frozen"]
    figure("fine_tune.png", [
        ("training-text loss (eval mode)", "train_eval_loss", fts, "loss"),
        ("validation loss", "val_loss", fts, "loss")])


BEGIN, END = "<!-- experiments table: tools/experiments.py -->", "<!-- end of table -->"


def write_table(doc, text):
    """Replaces the table between the two markers of docs/training.md."""
    old = doc.read_text()
    if BEGIN not in old or END not in old:
        raise SystemExit(f"experiments: {doc} lacks the table markers {BEGIN!r} / {END!r}")
    head, rest = old.split(BEGIN, 1)
    doc.write_text(head + BEGIN + "\n" + text + rest[rest.index(END):])
    print(f"experiments: wrote the table into {doc}", file=sys.stderr)


def kjv_slice(data):
    path = data / "kjv.slice.txt"
    lines = (data / "kjv.train.txt").read_text().splitlines(keepends=True)[:KJV_SLICE_LINES]
    text = "".join(lines)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=Path, required=True, help="the train binary")
    ap.add_argument("--data", type=Path, required=True, help="scripts/get_corpus's directory")
    ap.add_argument("--out", type=Path, required=True, help="one directory per run")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="threads per run (default 1)")
    ap.add_argument("--steps", type=int, default=600, help="steps of the Austen runs")
    ap.add_argument("--ft-steps", type=int, default=300, help="steps of the fine-tuning runs")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--only", nargs="*", help="run only these (and what they start from)")
    ap.add_argument("--docs", type=Path, help="write the table and the plots under DOCS")
    args = ap.parse_args()
    for f in ("austen.train.txt", "austen.val.txt", "austen.model", "kjv.train.txt",
              "kjv.val.txt"):
        if not (args.data / f).exists():
            raise SystemExit(f"experiments: {args.data / f} is missing (run scripts/get_corpus)")
    kjv_slice(args.data)

    wanted = list(RUNS) if not args.only else args.only
    for n in wanted:
        if n not in RUNS:
            raise SystemExit(f"experiments: unknown run {n!r} (known: {', '.join(RUNS)})")
    first = [n for n in RUNS if n in wanted or any(RUNS[m][3] == n for m in wanted)]
    first = [n for n in first if RUNS[n][3] is None]
    second = [n for n in wanted if RUNS[n][3] is not None]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda n: train(n, args), first))
        list(pool.map(lambda n: train(n, args), second))

    if args.docs and not args.only:
        if not (args.out / "speed.json").exists():
            speed(args)
        text = table(args)
        write_table(args.docs / "training.md", text)
        plots(args, args.docs / "images" / "training")
        print(text)


if __name__ == "__main__":
    main()
