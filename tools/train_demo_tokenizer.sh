#!/usr/bin/env bash
# Trains the demo tokenizer, examples/data/demo_tokenizer.model: a 1024-piece SentencePiece BPE
# model with Grok-1's settings where they make sense at this size (byte fallback, split digits,
# identity normalization, dummy prefix, whitespace kept as is; ids pad 0, bos 1, eos 2, unk 3).
#
#   tools/train_demo_tokenizer.sh [COMMIT]      (default: the commit the committed model used)
#
# The corpus is this repository's own text at COMMIT, so it is license-clean and reproducible:
# LICENSE (Apache-2.0), every Markdown file, and the comment lines of the C++ sources (prose
# about the code). It is read with `git show COMMIT:path`, never from the work tree, so the same
# commit gives the same corpus and, as spm_train's BPE is deterministic, the same model bytes.
# Needs Debian's sentencepiece (spm_train) and /usr/bin/python3 with python3-sentencepiece for
# the round-trip check.
set -euo pipefail

# The commit examples/data/demo_tokenizer.model was trained from.
readonly DEFAULT_COMMIT=397e8bb
commit="${1:-$DEFAULT_COMMIT}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/examples/data/demo_tokenizer.model"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$root"
git rev-parse --verify --quiet "$commit^{commit}" >/dev/null || {
  echo "train_demo_tokenizer: unknown commit '$commit'" >&2
  exit 1
}

# ---- corpus: one sentence per line (spm_train reads lines; empty lines are skipped) -----------
{
  git show "$commit:LICENSE"
  git ls-tree -r --name-only "$commit" | grep -E '\.md$' | LC_ALL=C sort | while read -r f; do
    git show "$commit:$f"
  done
  git ls-tree -r --name-only "$commit" | grep -E '\.(hpp|cpp)$' | LC_ALL=C sort | while read -r f; do
    # Comment lines only, without the leading "//" or "///".
    git show "$commit:$f" | sed -n 's|^[[:space:]]*///*[[:space:]]\{0,1\}||p'
  done
} >"$work/corpus.txt"
echo "train_demo_tokenizer: corpus from $(git rev-parse --short "$commit"):" \
  "$(wc -l <"$work/corpus.txt") lines, $(wc -c <"$work/corpus.txt") bytes" >&2

# ---- training ----------------------------------------------------------------------------------
# Grok-1's tokenizer.model has: model_type BPE, byte_fallback, split_digits, identity normalizer,
# add_dummy_prefix, remove_extra_whitespaces=false, allow_whitespace_only_pieces,
# max_sentencepiece_length 16, pieces [PAD] [BOS] [EOS] [UNK] at ids 0-3, then user-defined
# pieces for runs of newlines and tabs (spm_train reads one line at a time, so it never sees a
# newline: without them "\n" would fall back to the byte piece <0x0A>). Grok-1's other
# user-defined pieces (digits, runs of spaces, <|separator|>, <|controlN|>) are left out: digits
# are split anyway and space runs are learned (allow_whitespace_only_pieces).
# character_coverage 1: keep every character of the corpus (rare ones would otherwise become
# byte pieces, which is also fine). num_threads 1 and a fixed seed keep the run deterministic.
# Relative paths: spm_train stores --input and --model_prefix in the model's trainer_spec.
(cd "$work" && spm_train \
  --input=corpus.txt \
  --model_prefix=demo_tokenizer \
  --model_type=bpe \
  --vocab_size=1024 \
  --byte_fallback=true \
  --split_digits=true \
  --normalization_rule_name=identity \
  --add_dummy_prefix=true \
  --remove_extra_whitespaces=false \
  --allow_whitespace_only_pieces=true \
  --max_sentencepiece_length=16 \
  --character_coverage=1.0 \
  --user_defined_symbols=$'\n,\n\n,\n\n\n,\n\n\n\n,\t,\t\t' \
  --pad_id=0 --bos_id=1 --eos_id=2 --unk_id=3 \
  --pad_piece='[PAD]' --bos_piece='[BOS]' --eos_piece='[EOS]' --unk_piece='[UNK]' \
  --num_threads=1 --random_seed=42 \
  --minloglevel=1) \
  >"$work/train.log" 2>&1 || {
  cat "$work/train.log" >&2
  exit 1
}

# ---- checks: size, special ids, the run.py demo prompt round-trips -----------------------------
/usr/bin/python3 - "$work/demo_tokenizer.model" <<'EOF'
import sys
import sentencepiece as spm

sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
assert sp.vocab_size() == 1024, sp.vocab_size()
assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
assert [sp.id_to_piece(i) for i in range(4, 10)] == ["\n", "\n\n", "\n\n\n", "\n\n\n\n", "\t", "\t\t"]
for text in ["The answer to life the universe and everything is of course",
             "Grok-1 has 314B parameters, 8 experts and top-2 routing.\n\tdone  ",
             "unicode: \u00e9\u4e2d\u6587 \U0001F600", ""]:
    ids = sp.encode(text)
    assert sp.decode(ids) == text, (text, ids, sp.decode(ids))
prompt = "The answer to life the universe and everything is of course"
print("train_demo_tokenizer: demo prompt ->", sp.encode(prompt), file=sys.stderr)
EOF

mkdir -p "$(dirname "$out")"
cp "$work/demo_tokenizer.model" "$out"
echo "train_demo_tokenizer: wrote $out ($(wc -c <"$out") bytes," \
  "sha256 $(sha256sum "$out" | cut -c1-16)...)" >&2
