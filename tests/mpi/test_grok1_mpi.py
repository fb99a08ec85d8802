#!/usr/bin/python3
"""`mpirun -np N grok1` (tensor parallel, examples/grok1/tensor_parallel.hpp) against one process.

    test_grok1_mpi.py --grok1 BIN --source SRC --work DIR --case NAME

Every mpirun runs under `timeout` with --oversubscribe (this machine has 2 cores) over the
loopback; as root OpenMPI needs OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM), set here. Exits 77 (ctest:
skipped) when mpirun is not installed.

The checkpoint (tools/make_grok1_checkpoint.py): 11 layers, GQA 8 query / 2 KV heads (4 ranks:
every KV head on 2 ranks), D 64, d_ff 128, vocabulary 1003 (uneven slices over 2 and 4 ranks).

Cases:
  np2, np4     logits of every prompt position (--dump-logits) within 1e-5 of the largest logit
               of the single-process run; the greedy continuation identical; --json has
               "ranks": N and one peak RSS per rank; only rank 0 prints.
  bad_dimension  -np 3: 8 query heads do not split; exit 1, the ConfigError once, no hang.
  bad_token    a prompt id outside the vocabulary: exit 1, the TokenError once.
  rank_fails   rank 1 gets a checkpoint directory that does not exist (MPMD command line):
               exit 1, rank 0 prints "rank 1 of 2" and the path, no hang.
  rank_dies    rank 1 is a process that exits at once without MPI: mpirun ends the job with a
               non-zero status instead of hanging.
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
import cli_run  # noqa: E402

PROMPT = "5,17,300,42,999,7,64"
NEW_TOKENS = 6


def run(cmd, expect_rc=0, timeout=240):
    return cli_run.run(cmd, expect_rc, timeout + 30)  # slack past mpirun's own `timeout`


def mpirun(*rest, timeout=240):
    return ["timeout", str(timeout), "mpirun", "--oversubscribe", "--bind-to", "none", *rest]


def checkpoint(args):
    out = os.path.join(args.work, "gqa11")
    if not os.path.exists(os.path.join(out, "ckpt-0")):
        run([sys.executable, os.path.join(args.source, "tools/make_grok1_checkpoint.py"),
             "--config", "tiny", "--layers", "11", "--heads", "8", "--kv-heads", "2",
             "--head-dim", "8", "--d-model", "64", "--d-ff", "128", "--vocab", "1003",
             "--max-seq-len", "64", "--seed", "5", "--out", out, "--force", "--quiet"])
    return out


def grok1_args(args, ckpt, logits):
    return [args.grok1, "--checkpoint", ckpt, "--tokens", PROMPT, "--max-new-tokens",
            str(NEW_TOKENS), "--temperature", "0", "--threads", "1", "--json",
            "--dump-logits", logits]


def case_np(args, n):
    ckpt = checkpoint(args)
    one = os.path.join(args.work, "logits1.npy")
    ref = json.loads(run(grok1_args(args, ckpt, one)).stdout)
    many = os.path.join(args.work, f"logits{n}.npy")
    p = run(mpirun("-np", str(n), *grok1_args(args, ckpt, many)))
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one JSON line (rank 0 prints), got {len(lines)}"
    got = json.loads(lines[0])
    a, b = np.load(one), np.load(many)
    assert a.shape == b.shape == (7, 1003), (a.shape, b.shape)
    err = np.abs(a - b).max(axis=1) / np.abs(a).max(axis=1)
    print(f"np {n}: worst |logit difference| / largest |logit| per position: {err.max():.2e}")
    assert (err <= 1e-5).all(), err
    assert got["generated_tokens"] == ref["generated_tokens"], (got["generated_tokens"],
                                                                ref["generated_tokens"])
    assert got["ranks"] == n
    assert len(got["rank_peak_rss_bytes"]) == n and min(got["rank_peak_rss_bytes"]) > 0
    # The column slabs are copied (the copies fit on any test machine): part of the shard.
    copied, shard = got["rank_copied_slab_bytes"], got["rank_shard_bytes"]
    assert len(copied) == n and all(0 < c < s for c, s in zip(copied, shard)), (copied, shard)
    tp = got["tensor_parallel"]
    # Two all-reduces per layer and forward call: 1 prefill + (NEW_TOKENS - 1) decode calls.
    assert tp["all_reduces"] == 2 * 11 * NEW_TOKENS, tp
    assert tp["all_reduce_bytes"] == 2 * 11 * 64 * 4 * (7 + NEW_TOKENS - 1), tp


def case_bad_dimension(args):
    p = run(mpirun("-np", "3", *grok1_args(args, checkpoint(args), os.devnull)), expect_rc=1)
    assert "n_q_heads = 8 does not divide by 3 ranks" in p.stderr, p.stderr
    assert p.stderr.count("does not divide") == 1, p.stderr  # printed by rank 0 only
    assert p.stdout == "", p.stdout


def case_bad_token(args):
    cmd = grok1_args(args, checkpoint(args), os.devnull)
    cmd[cmd.index("--tokens") + 1] = "5,1003"
    p = run(mpirun("-np", "2", *cmd), expect_rc=1)
    assert p.stderr.count("prompt token id 1003 at index 1 is outside the vocabulary") == 1, p.stderr


def case_rank_fails(args):
    good = grok1_args(args, checkpoint(args), os.devnull)
    bad = list(good)
    missing = os.path.join(args.work, "no-such-checkpoint")
    bad[bad.index("--checkpoint") + 1] = missing
    p = run(mpirun("-np", "1", *good, ":", "-np", "1", *bad), expect_rc=1)
    assert "rank 1 of 2" in p.stderr and missing in p.stderr, p.stderr


def case_rank_dies(args):
    good = grok1_args(args, checkpoint(args), os.devnull)
    p = run(mpirun("-np", "1", *good, ":", "-np", "1", "false", timeout=60), expect_rc=None,
            timeout=60)
    assert p.returncode not in (0, 124), f"exit {p.returncode} (124: timed out)\n{p.stderr}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grok1", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--case", required=True)
    args = ap.parse_args()
    if shutil.which("mpirun") is None:
        print("mpirun not found (Debian: openmpi-bin): skipped")
        return 77
    os.makedirs(args.work, exist_ok=True)
    if os.geteuid() == 0:
        os.environ["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        os.environ["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    cases = {"np2": lambda: case_np(args, 2), "np4": lambda: case_np(args, 4),
             "bad_dimension": lambda: case_bad_dimension(args),
             "bad_token": lambda: case_bad_token(args),
             "rank_fails": lambda: case_rank_fails(args), "rank_dies": lambda: case_rank_dies(args)}
    cases[args.case]()
    print(f"{args.case}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
