#!/usr/bin/python3
"""End-to-end tests of the `train` example binary (run by ctest; Debian's python3).

    test_train_cli.py --train BIN --grok1 BIN --fixtures DIR --work DIR --case NAME

The fixtures (make_fixtures.py) are a small synthetic corpus, its tokenizer and a tiny model
config. Cases:
  learns     the validation loss falls; the --json log has one object per evaluation plus the
             export's; the int8 export's validation loss is within 0.05 of the f32 model's;
             progress lines on stderr.
  resume     a run stopped at step 20 (--stop-after) and resumed to 40 ends with a training
             checkpoint and an export byte-identical to an uninterrupted 40-step run.
  threads    1 and 2 threads give byte-identical checkpoints.
  interrupt  Ctrl-C (SIGINT) saves the last finished step and exits 130; resuming from there
             equals an uninterrupted run.
  export     `grok1` runs the export with its tokenizer (greedy, --json) and generates text.
  errors     each bad input exits 1 with a message naming the problem and changes no file;
             usage errors exit 2; nothing dies of a signal.
"""
import argparse
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
import cli_run  # noqa: E402


def run(cmd, expect_rc=0, timeout=300):
    return cli_run.run(cmd, expect_rc, timeout)


def tree_digest(path):
    """{relative path: sha256} of every file under path (empty if it does not exist)."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


class Env:
    def __init__(self, args):
        self.args = args
        self.work = args.work
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(self.work)
        # A private copy of the fixtures: the corpus caches (FILE.tokens) are written next to it.
        self.data = os.path.join(self.work, "data")
        os.makedirs(self.data)
        for f in ("train.txt", "val.txt", "tokenizer.model", "model.json"):
            shutil.copy(os.path.join(args.fixtures, f), self.data)

    def path(self, *p):
        return os.path.join(self.work, *p)

    def base(self, out, *extra, data=None):
        d = data or self.data
        return [self.args.train, "--corpus", os.path.join(d, "train.txt"),
                "--val", os.path.join(d, "val.txt"), "--tokenizer",
                os.path.join(d, "tokenizer.model"), "--config", os.path.join(d, "model.json"),
                "--out", out, "--batch", "4", "--seq", "32", "--lr", "1e-2", "--val-windows", "8",
                *extra]


def json_lines(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def case_learns(env):
    out = env.path("run")
    p = run(env.base(out, "--steps", "60", "--eval-every", "20", "--json"))
    log = json_lines(p.stdout)
    evals = [o for o in log if o["event"] == "eval"]
    assert [o["step"] for o in evals] == [20, 40, 60], log
    for o in evals:
        for k in ("epoch", "lr", "loss", "val_loss", "grad_norm", "tokens_per_second",
                  "elapsed_seconds", "aux_loss", "expert_load", "load_cv", "load_max_over_mean",
                  "dropped", "router_entropy", "router_lse", "balance_loss"):
            assert k in o, (k, o)
        assert len(o["expert_load"]) == 2 and len(o["load_cv"]) == 2, o
        assert all(d == 0 for d in o["dropped"]), o  # dropless by default
    vocab = 400
    first, last = evals[0]["val_loss"], evals[-1]["val_loss"]
    print("validation loss %.4f -> %.4f (log vocab %.4f)" % (first, last, math.log(vocab)))
    assert last < first < math.log(vocab) + 0.5, evals
    assert last < 0.7 * math.log(vocab), evals
    exp = [o for o in log if o["event"] == "export"]
    assert len(exp) == 1 and log[-1] is exp[0], log
    # The int8 export rounds every weight to 8 bits: a small, nonzero cost.
    assert 0 < abs(exp[0]["val_loss_int8"] - exp[0]["val_loss_f32"]) < 0.05, exp
    assert abs(exp[0]["val_loss_f32"] - last) < 1e-9, (exp, last)
    assert "step 20/60 [######              ]  33% | loss " in p.stderr, p.stderr
    assert "validation loss: f32 model" in p.stderr, p.stderr
    assert os.path.isfile(os.path.join(out, "train.ckpt"))
    ex = os.path.join(out, "grok1")
    assert sorted(os.listdir(ex)) == ["ckpt-0", "config.json", "tokenizer.model"], os.listdir(ex)
    assert len(os.listdir(os.path.join(ex, "ckpt-0"))) == 2 + 12 * 2
    cfg = json.load(open(os.path.join(ex, "config.json")))
    for k in ("vocab_size", "d_model", "n_layers", "n_q_heads", "n_kv_heads", "head_dim",
              "n_experts", "top_k", "d_ff", "max_seq_len", "rope_base", "rms_eps",
              "embedding_multiplier", "output_multiplier", "attn_logit_multiplier",
              "attn_softcap", "pad_id", "bos_id", "eos_id"):
        assert k in cfg, k
    assert cfg["vocab_size"] == vocab and cfg["d_model"] == 32 and cfg["max_seq_len"] == 32, cfg
    assert open(os.path.join(ex, "tokenizer.model"), "rb").read() == \
        open(os.path.join(env.data, "tokenizer.model"), "rb").read()


def case_resume(env):
    full, part = env.path("full"), env.path("part")
    run(env.base(full, "--steps", "40", "--eval-every", "10", "--save-every", "7"))
    p = run(env.base(part, "--steps", "40", "--eval-every", "10", "--stop-after", "20"))
    assert "stopped (--stop-after)" in p.stderr and not os.path.exists(os.path.join(part, "grok1"))
    p = run(env.base(part, "--steps", "40", "--eval-every", "10", "--resume", part))
    assert "resuming" in p.stderr and "at step 20" in p.stderr, p.stderr
    a, b = tree_digest(full), tree_digest(part)
    assert a == b, "resumed run differs from the uninterrupted one:\n%s\n%s" % (a, b)
    # Resuming into another directory leaves the original alone and gives the same result.
    p2, other = env.path("p2"), env.path("other")
    run(env.base(p2, "--steps", "40", "--eval-every", "10", "--stop-after", "20"))
    before = tree_digest(p2)
    run(env.base(other, "--steps", "40", "--eval-every", "10", "--resume", p2))
    assert tree_digest(p2) == before
    assert tree_digest(other) == a, "resuming into a new --out differs"
    # A finished run cannot be "resumed" to fewer steps.
    expect_error(env.base(part, "--steps", "30", "--warmup", "4", "--resume", part),
                 "is at step 40, beyond --steps 30")
    print("resume: %d files identical" % len(a))


def case_threads(env):
    one, two = env.path("one"), env.path("two")
    run(env.base(one, "--steps", "25", "--threads", "1", "--no-export"))
    run(env.base(two, "--steps", "25", "--threads", "2", "--no-export"))
    assert tree_digest(one) == tree_digest(two)


def case_interrupt(env):
    out, ref = env.path("int"), env.path("ref")
    cmd = env.base(out, "--steps", "100000", "--eval-every", "5", "--json")
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    first = proc.stdout.readline()
    assert first and json.loads(first)["step"] == 5, first
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, stderr)
    assert "interrupted: saved" in stderr, stderr
    step = int(stderr.split("interrupted: saved")[1].split("at step ")[1].split(";")[0])
    assert step >= 5
    stop = step + 7
    run(env.base(out, "--steps", "100000", "--eval-every", "5", "--resume", out,
                 "--stop-after", str(stop)))
    run(env.base(ref, "--steps", "100000", "--eval-every", "5", "--stop-after", str(stop)))
    assert tree_digest(out) == tree_digest(ref)
    print("interrupted at step %d, resumed to %d: identical" % (step, stop))


def case_export(env):
    out = env.path("run")
    run(env.base(out, "--steps", "80", "--eval-every", "40"))
    ex = os.path.join(out, "grok1")
    p = run([env.args.grok1, "--checkpoint", ex, "--tokenizer", os.path.join(ex, "tokenizer.model"),
             "--prompt", "Emma walked to", "--max-new-tokens", "20", "--temperature", "0",
             "--json"])
    info = json.loads(p.stdout)
    assert len(info["generated_tokens"]) == 20 and info["text"], info
    assert info["config"]["vocab_size"] == 400 and info["config"]["n_layers"] == 2, info
    print("grok1 continues 'Emma walked to' with %r" % info["text"])
    # Sampled text from the terminal interface as well (what scripts/demo shows).
    p = run([env.args.grok1, "--checkpoint", ex, "--tokenizer", os.path.join(ex, "tokenizer.model"),
             "--prompt", "Harriet", "--max-new-tokens", "12", "--temperature", "0.8"])
    assert p.stdout.startswith("Harriet"), p.stdout


def expect_error(cmd, *needles, rc=1):
    p = run(cmd, expect_rc=rc)
    msg = p.stderr
    for n in needles:
        assert n in msg, "expected %r in the message:\n%s" % (n, msg)
    if rc == 1:
        assert "train: error: " in msg, msg
    return msg


def case_errors(env):
    d = env.data
    out = env.path("out")
    # Usage errors: exit 2 with the usage text.
    expect_error([env.args.train], "--corpus FILE... is required", rc=2)
    expect_error(env.base(out, "--bogus"), "unknown option '--bogus'", rc=2)
    expect_error(env.base(out, "--steps", "0"), "--steps expects an integer", rc=2)
    expect_error(env.base(out, "--steps", "10", "--warmup", "10"), "--warmup (10)", rc=2)
    expect_error(env.base(out, "--lr", "abc"), "--lr expects a number", rc=2)
    expect_error(env.base(out, "--val"), "--val needs at least one file", rc=2)
    expect_error(env.base(out, "--seed"), "--seed needs a value", rc=2)
    assert not os.path.exists(out)

    # Bad inputs: exit 1, a clear message, no output directory created.
    missing = os.path.join(d, "missing.txt")
    cmd = env.base(out, "--steps", "5")
    cmd[cmd.index("--corpus") + 1] = missing
    expect_error(cmd, "[corpus] cannot read '%s': No such file or directory" % missing)
    empty = os.path.join(d, "empty.txt")
    open(empty, "w").close()
    cmd[cmd.index("--corpus") + 1] = empty
    expect_error(cmd, "'%s' is empty" % empty)
    cmd = env.base(out, "--steps", "5")
    cmd[cmd.index("--tokenizer") + 1] = os.path.join(d, "nope.model")
    expect_error(cmd, "[tokenizer] cannot read")
    mismatch = os.path.join(d, "mismatch.json")
    json.dump({"vocab_size": 1024, "d_model": 32, "n_layers": 1, "n_q_heads": 2,
               "n_kv_heads": 1, "head_dim": 16, "n_experts": 4, "d_ff": 32}, open(mismatch, "w"))
    cmd = env.base(out, "--steps", "5")
    cmd[cmd.index("--config") + 1] = mismatch
    expect_error(cmd, "has 400 pieces but the model config says vocab_size 1024")
    badkey = os.path.join(d, "badkey.json")
    json.dump({"d_model": 32, "rope_theta": 5}, open(badkey, "w"))
    cmd[cmd.index("--config") + 1] = badkey
    expect_error(cmd, "unknown key 'rope_theta'")
    expect_error(env.base(out, "--steps", "5", "--seq", "200000"), "fewer than one window")
    assert not os.path.exists(out), os.listdir(out)

    # A run to damage and to protect.
    run(env.base(out, "--steps", "10", "--eval-every", "5"))
    ckpt = os.path.join(out, "train.ckpt")
    good = tree_digest(out)
    expect_error(env.base(out, "--steps", "10"), "already holds a training checkpoint",
                 "--resume " + out)
    expect_error(env.base(out, "--steps", "10", "--lr", "2e-2", "--resume", out),
                 "--lr differs from the run that wrote it (then 0.01, now 0.02)")
    other = os.path.join(d, "other.txt")
    with open(other, "w") as f:
        f.write(open(os.path.join(d, "train.txt")).read().replace("Emma", "Anne"))
    cmd = env.base(out, "--steps", "10", "--resume", out)
    cmd[cmd.index("--corpus") + 1] = other
    expect_error(cmd, "the corpus text differs")
    expect_error(env.base(out, "--steps", "10", "--resume", env.path("nowhere")),
                 "cannot open '%s'" % os.path.join(env.path("nowhere"), "train.ckpt"))
    assert tree_digest(out) == good

    data = bytearray(open(ckpt, "rb").read())
    data[len(data) // 2] ^= 0x40
    open(ckpt, "wb").write(data)
    damaged = tree_digest(out)
    expect_error(env.base(out, "--steps", "10", "--resume", out), "is corrupted (checksum mismatch)")
    open(ckpt, "wb").write(data[:1000])
    truncated = tree_digest(out)
    assert truncated != damaged
    # (moe/train/checkpoint.hpp checks the hash first: a truncated file reads as corrupted)
    msg = expect_error(env.base(out, "--steps", "10", "--resume", out), "train.ckpt' is ")
    assert "truncated" in msg or "corrupted" in msg, msg
    assert tree_digest(out) == truncated

    # An export directory holding a user's file: refused before training starts.
    user = env.path("user")
    os.makedirs(user)
    open(os.path.join(user, "notes.txt"), "w").write("mine")
    fresh = env.path("fresh")
    expect_error(env.base(fresh, "--steps", "5", "--export", user), "notes.txt", "refusing")
    assert not os.path.exists(os.path.join(fresh, "train.ckpt"))
    assert open(os.path.join(user, "notes.txt")).read() == "mine"
    print("errors: all bad inputs rejected, nothing overwritten")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--grok1", required=True)
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--case", required=True)
    args = ap.parse_args()
    env = Env(args)
    globals()["case_" + args.case](env)
    print("train_example.cli %s: ok" % args.case)
    return 0


if __name__ == "__main__":
    sys.exit(main())
