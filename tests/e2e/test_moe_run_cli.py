#!/usr/bin/python3
"""End-to-end tests of the `moe-run` example binary (run by ctest; Debian's python3 + numpy).

    test_moe_run_cli.py --moe-run BIN --source SRC --work DIR --case NAME

Checkpoints are written by tools/make_hf_checkpoint.py (the Hugging Face layout, random weights)
and compared with tools/hf_reference.py (a float64 transliteration of the transformers modeling
code, with its own safetensors reader). Cases:
  logits     for Mixtral (bf16, 3 shards), Mixtral with a sliding window (f32), Qwen2-MoE (bf16,
             a dense first layer, the gated shared expert), OLMoE (f32, tied head) and Qwen2-MoE
             in f16 (widened at load): moe-run's prompt logits (--dump-logits) match the
             reference within 1e-5 of the largest logit.
  greedy     greedy generation (--temperature 0) equals the reference's argmax continuation for
             each family (up to a near-tie of the reference).
  errors     bad command lines exit 2; a truncated shard, header offsets past the end of a
             shard, a tensor of the wrong dtype, a tensor missing from the index and an unknown
             architecture exit 1, each with a clear message naming it, never a signal.
  tokenizer  a checkpoint shipping tokenizer.model: --prompt is encoded with BOS first, --json
             has the text, and --stop-at-eos stops at config.json's eos_token_id.
  sparse     (slow) one token through the real Mixtral 8x7B layout (19 sparse shards, 93.4 GB
             apparent, zero pages) under --ram-budget 4G: streams the experts, peak RSS within
             the budget; prints the timings (docs/hf-checkpoints.md).
"""
import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from cli_run import run  # noqa: E402

FAMILIES = {  # name: (family, dtype, shards, config overrides)
    "mixtral": ("mixtral", "bf16", 3, {}),
    "mixtral_window": ("mixtral", "f32", 1, {"sliding_window": 4}),
    "qwen2_moe": ("qwen2_moe", "bf16", 2, {"mlp_only_layers": [0]}),
    "olmoe": ("olmoe", "f32", 1, {"norm_topk_prob": True, "tie_word_embeddings": True}),
    "qwen2_moe_f16": ("qwen2_moe", "f16", 2, {}),  # f16 matrices: widened to f32 at load
}
PROMPT = [5, 17, 42, 3, 9, 33, 1, 60, 2, 11]


def make(args, name, family, dtype, shards, overrides, seed=3, extra=()):
    out = os.path.join(args.work, name)
    if not os.path.exists(os.path.join(out, "config.json")):
        sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={json.dumps(v)}")]
        run([sys.executable, os.path.join(args.source, "tools/make_hf_checkpoint.py"), out,
             "--family", family, "--dtype", dtype, "--shards", str(shards), "--seed", str(seed),
             *sets, *extra])
    return out


def reference():
    sys.path.insert(0, os.path.join(ARGS.source, "tools"))
    import hf_reference  # noqa: E402

    return hf_reference


def case_logits(args):
    ref = reference()
    for name, spec in FAMILIES.items():
        ck = make(args, name, *spec)
        out = os.path.join(args.work, name + "_logits.npy")
        p = run([args.moe_run, "--checkpoint", ck, "--tokens", ",".join(map(str, PROMPT)),
                 "--max-new-tokens", "0", "--dump-logits", out, "--json"])
        info = json.loads(p.stdout)
        assert info["prompt_tokens"] == PROMPT, info
        c, W = ref.load(ck)
        want = ref.forward(c, W, PROMPT)
        got = np.load(out)
        assert got.shape == want.shape == (len(PROMPT), c["vocab"]), (got.shape, want.shape)
        scale = np.abs(want).max()
        err = np.abs(got.astype(np.float64) - want).max()
        print(f"logits {name:15s} ({info['architecture']}, {info['weights']}): max |moe - ref| = "
              f"{err:.3e}, max |logit| = {scale:.3f}, relative {err / scale:.3e}")
        # f32 activations vs float64: ~3e-7 relative measured; 1e-5 catches any wrong tensor,
        # layout, norm, bias, routing rule or mask.
        assert err <= 1e-5 * scale, f"{name}: logits differ: {err} > 1e-5 * {scale}"
        assert (got.argmax(axis=1) == want.argmax(axis=1)).all(), name


def case_greedy(args):
    ref = reference()
    n_new = 6
    for name, spec in FAMILIES.items():
        ck = make(args, name, *spec)
        p = run([args.moe_run, "--checkpoint", ck, "--tokens", ",".join(map(str, PROMPT)),
                 "--max-new-tokens", str(n_new), "--temperature", "0", "--json"])
        got = json.loads(p.stdout)["generated_tokens"]
        c, W = ref.load(ck)
        seq, compared = list(PROMPT), 0
        for i in range(n_new):
            last = ref.forward(c, W, seq)[-1]
            order = np.argsort(-last, kind="stable")
            if last[order[0]] - last[order[1]] < 1e-4 * np.abs(last).max():
                print(f"greedy {name}: step {i} is a near-tie; stop comparing")
                break
            assert got[i] == order[0], f"{name} step {i}: moe-run chose {got[i]}, ref {order[0]}"
            seq.append(int(order[0]))
            compared += 1
        print(f"greedy {name:15s}: {compared} tokens agree with the float64 reference: {got}")


def rewrite_header(path, edit):
    """Applies edit(header dict) to a safetensors file's JSON header (same padded length)."""
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        edit(header)
        text = json.dumps(header, separators=(",", ":")).encode()
        assert len(text) <= n, "the edited header is longer than the original"
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


def case_errors(args):
    ck = make(args, "mixtral", *FAMILIES["mixtral"])
    m = args.moe_run

    def expect(cmd, rc, *texts):
        p = run([m, *cmd], expect_rc=rc, timeout=120)
        for text in texts:
            assert text in p.stderr, f"{cmd}: expected {text!r} in stderr, got:\n{p.stderr}"
        return p.stderr

    one = ["--tokens", "1", "--max-new-tokens", "1"]
    expect([], 2, "--checkpoint DIR is required")
    expect(["--checkpoint", ck], 2, "exactly one of --prompt TEXT or --tokens IDS")
    expect(["--checkpoint", ck, "--tokens", "1", "--bogus"], 2, "unknown option '--bogus'")
    expect(["--checkpoint", ck, "--tokens", "1,x"], 2, "--tokens expects an integer")
    expect(["--checkpoint", ck, "--tokens", "1", "--top-p", "0"], 2, "--top-p expects a number")
    for budget in ("2000000G", "5X"):
        expect(["--checkpoint", ck, "--tokens", "1", "--ram-budget", budget], 2,
               "--ram-budget expects a size from 1 byte to 1 PiB", f"got '{budget}'")
    expect(["--checkpoint", ck, "--tokens", "1", "--seed"], 2, "--seed needs a value")
    expect(["--checkpoint", ck, "--prompt", "hi"], 2, "--prompt needs a SentencePiece tokenizer")
    expect(["--checkpoint", ck, "--tokens", "1,96", "--max-new-tokens", "1"], 1,
           "token id 96", "outside the vocabulary")
    expect(["--checkpoint", os.path.join(args.work, "nope"), *one], 1, "nope")
    expect(["--checkpoint", ck, "--tokens", "1", "--max-new-tokens", "1000"], 1,
           "exceed the context of 128")

    def damaged(name):
        bad = os.path.join(args.work, "bad_" + name)
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(ck, bad)
        return bad

    shard = "model-00002-of-00003.safetensors"
    # A truncated shard: its header no longer fits the file.
    bad = damaged("truncated")
    path = os.path.join(bad, shard)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    expect(["--checkpoint", bad, *one], 1, shard, "end past the data section")
    # Header offsets past the end of the file.
    bad = damaged("offsets")
    path = os.path.join(bad, shard)

    def past_end(h):
        name = max((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][1])
        h[name]["data_offsets"][1] += 64

    rewrite_header(path, past_end)
    expect(["--checkpoint", bad, *one], 1, shard, "past the data section")
    # A tensor of the wrong dtype (F16 where config.json says bfloat16).
    bad = damaged("dtype")
    victim = "model.layers.0.self_attn.o_proj.weight"
    with open(os.path.join(bad, "model.safetensors.index.json")) as f:
        where = json.load(f)["weight_map"][victim]
    rewrite_header(os.path.join(bad, where), lambda h: h[victim].update(dtype="F16"))
    expect(["--checkpoint", bad, *one], 1, victim, "has dtype F16, expected BF16")
    # A tensor missing from the index.
    bad = damaged("index")
    index_path = os.path.join(bad, "model.safetensors.index.json")
    with open(index_path) as f:
        index = json.load(f)
    victim = "model.layers.1.block_sparse_moe.experts.2.w3.weight"
    del index["weight_map"][victim]
    with open(index_path, "w") as f:
        json.dump(index, f)
    expect(["--checkpoint", bad, *one], 1, victim, "is not in the index")
    # An unknown architecture.
    bad = damaged("arch")
    with open(os.path.join(bad, "config.json")) as f:
        config = json.load(f)
    config["architectures"] = ["DeepseekV3ForCausalLM"]
    config["model_type"] = "deepseek_v3"
    with open(os.path.join(bad, "config.json"), "w") as f:
        json.dump(config, f)
    expect(["--checkpoint", bad, *one], 1, "config.json", "'DeepseekV3ForCausalLM' is not supported",
           "MixtralForCausalLM")
    # An unsupported value of a known architecture.
    config["architectures"] = ["MixtralForCausalLM"]
    config["model_type"] = "mixtral"
    config["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    with open(os.path.join(bad, "config.json"), "w") as f:
        json.dump(config, f)
    expect(["--checkpoint", bad, *one], 1, "rope_scaling", "is not supported")
    print("errors: all bad inputs rejected with exit codes 1/2 and clear messages")


def case_tokenizer(args):
    tok = os.path.join(args.source, "examples/data/demo_tokenizer.model")
    ck = make(args, "mixtral_tok", "mixtral", "bf16", 1,
              {"vocab_size": 1024, "eos_token_id": 2, "bos_token_id": 1})
    shutil.copy(tok, os.path.join(ck, "tokenizer.model"))
    p = run([args.moe_run, "--checkpoint", ck, "--prompt", "The answer to life", "--max-new-tokens",
             "5", "--json"])
    assert p.stderr == "", f"--json must keep stderr quiet, got {p.stderr!r}"
    info = json.loads(p.stdout)
    for key in ["prompt_tokens", "generated_tokens", "text", "timings", "peak_rss_bytes",
                "architecture", "weights", "config", "io", "residency"]:
        assert key in info, key
    assert info["prompt_tokens"][0] == 1, "BOS first"
    assert info["architecture"] == "MixtralForCausalLM" and info["weights"] == "bf16"
    assert len(info["generated_tokens"]) == 5 and isinstance(info["text"], str)
    nobos = json.loads(run([*p.args, "--no-bos"]).stdout)
    assert nobos["prompt_tokens"] == info["prompt_tokens"][1:]
    # --stop-at-eos: force EOS to be the greedy choice by naming the first generated id as EOS.
    first = info["generated_tokens"][0]
    with open(os.path.join(ck, "config.json")) as f:
        config = json.load(f)
    config["eos_token_id"] = [first, 2]
    with open(os.path.join(ck, "config.json"), "w") as f:
        json.dump(config, f)
    stop = json.loads(run([*p.args, "--stop-at-eos"]).stdout)
    assert stop["generated_tokens"] == [first] and stop["stopped_at_eos"], stop
    print(f"tokenizer: {info['prompt_tokens']} -> {info['generated_tokens']} {info['text']!r}")


def case_sparse(args):
    ck = os.path.join(args.work, "mixtral_8x7b_sparse")
    if not os.path.exists(os.path.join(ck, "config.json")):
        run([sys.executable, os.path.join(args.source, "tools/make_hf_checkpoint.py"), ck,
             "--family", "mixtral", "--preset", "full", "--sparse", "--shards", "19"])
    try:
        budget = 4 << 30
        p = run([args.moe_run, "--checkpoint", ck, "--tokens", "1,2", "--max-new-tokens", "2",
                 "--ram-budget", "4G", "--json"], timeout=3600)
        info = json.loads(p.stdout)
        r, t = info["residency"], info["timings"]
        print(f"sparse: model {r['model_bytes'] / 1e9:.1f} GB, streaming {r['streaming']}, "
              f"attention streamed {r['attention_streamed']}, cache {r['cache_capacity_bytes'] / 1e9:.2f} GB, "
              f"prefill chunk {r['prefill_chunk']}; load {t['load_seconds']:.2f} s, prefill "
              f"{info['timings']['prefill_seconds']:.1f} s, decode {t['decode_seconds']:.1f} s "
              f"({t['decode_tokens_per_second']:.3f} tokens/s); peak RSS "
              f"{info['peak_rss_bytes'] / 2**30:.2f} GiB")
        assert r["streaming"], r
        assert info["peak_rss_bytes"] <= budget + (512 << 20), info["peak_rss_bytes"]
    finally:
        shutil.rmtree(ck, ignore_errors=True)


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--moe-run", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--case", required=True,
                    choices=["logits", "greedy", "errors", "tokenizer", "sparse"])
    ARGS = ap.parse_args()
    os.makedirs(ARGS.work, exist_ok=True)
    globals()["case_" + ARGS.case](ARGS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
