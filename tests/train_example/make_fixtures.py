#!/usr/bin/python3
"""Fixtures of the train_example tests: a small synthetic corpus and its tokenizer.

    make_fixtures.py OUT_DIR SOURCE_DIR

Writes OUT_DIR/train.txt (~90 KB: more than one 64 KiB tokenisation chunk) and OUT_DIR/val.txt,
one paragraph a line like scripts/get_corpus's corpora, made of sentences drawn from a small
grammar (so a bigram model has something to learn: the loss falls well below log(vocab)), with a
few non-ASCII characters and digits; OUT_DIR/tokenizer.model, trained on train.txt by
scripts/train_tokenizer (the flags of the real tokenizer) with 400 pieces; and
OUT_DIR/model.json, a tiny Grok-1 configuration for fast runs. Deterministic (fixed seed).
"""
import json
import os
import random
import subprocess
import sys

NAMES = ["Emma", "Harriet", "Mr. Knightley", "Miss Bates", "Mrs. Weston", "Frank", "Jane"]
VERBS = ["walked to", "spoke of", "thought of", "wrote to", "laughed at", "waited for"]
OBJECTS = ["the village", "Hartfield", "the vicarage", "a letter", "the garden", "the café",
           "the ball", "Randalls"]
ADVERBS = ["quietly", "at once", "with great pleasure", "in the year 1815", "again"]
SAYINGS = ["\"I do not know,\" said {n}.", "\"Indeed!\" cried {n}.", "{n} was silent."]


def sentence(rng):
    if rng.random() < 0.2:
        return rng.choice(SAYINGS).format(n=rng.choice(NAMES))
    s = "%s %s %s" % (rng.choice(NAMES), rng.choice(VERBS), rng.choice(OBJECTS))
    if rng.random() < 0.5:
        s += " " + rng.choice(ADVERBS)
    return s + "."


def text(rng, n_bytes):
    lines, size = [], 0
    while size < n_bytes:
        if rng.random() < 0.05:
            line = "CHAPTER %d" % (len(lines) // 20 + 1)
        else:
            line = " ".join(sentence(rng) for _ in range(rng.randint(1, 5)))
        lines.append(line)
        size += len(line.encode()) + 1
    return "\n".join(lines) + "\n"


def main():
    out, source = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    rng = random.Random(2024)
    with open(os.path.join(out, "train.txt"), "w", encoding="utf-8") as f:
        f.write(text(rng, 90_000))
    with open(os.path.join(out, "val.txt"), "w", encoding="utf-8") as f:
        f.write(text(rng, 12_000))
    subprocess.run([os.path.join(source, "scripts", "train_tokenizer"),
                    os.path.join(out, "train.txt"), os.path.join(out, "tokenizer.model"), "400"],
                   check=True)
    model = dict(d_model=32, n_layers=2, n_q_heads=2, n_kv_heads=1, head_dim=16, n_experts=4,
                 top_k=2, d_ff=32)
    with open(os.path.join(out, "model.json"), "w") as f:
        json.dump(model, f)
    print("train_example fixtures in %s" % out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
