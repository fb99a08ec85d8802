#!/usr/bin/python3
"""Writes the tokenizer fixtures in tests/data/text/ with Python's sentencepiece.

    /usr/bin/python3 tools/make_tokenizer_fixtures.py [--grok1 PATH] [--demo PATH] [--out DIR]

Run with Debian's /usr/bin/python3 (python3-sentencepiece, the same libsentencepiece 0.1.97 the
C++ side links). For each tokenizer (the real Grok-1 tokenizer.model, which is never copied into
the repository, and examples/data/demo_tokenizer.model) it writes two files:

  <name>_encode.tsv   name <TAB> hex(text) <TAB> ids <TAB> hex(decode(ids)) <TAB> repr(text)
  <name>_decode.tsv   name <TAB> ids <TAB> hex(decode(ids))

Texts are UTF-8 bytes in hex so that tabs, newlines, NUL and invalid UTF-8 survive; ids are
space-separated decimals (an empty field for none); the last encode column is only for humans.
Lines starting with '#' are comments. encode() adds no BOS/EOS, as Grok-1's run.py.

The decode cases are id sequences built to hit SentencePiece's decoding rules: control ids,
the unknown id, the lone "\u2581" piece and whitespace pieces at the start, byte pieces that
form valid, truncated and invalid UTF-8, byte runs split by control ids, plus random ids.
Everything is seeded, so the output is deterministic for a given model file.
"""

import argparse
import hashlib
import os
import random
import sys

import sentencepiece as spm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_PROMPT = "The answer to life the universe and everything is of course"


def encode_cases():
    """(name, text as bytes) pairs: the varied strings both tokenizers are checked on."""
    s = lambda t: t.encode("utf-8")
    cases = [
        ("demo_prompt", s(DEMO_PROMPT)),
        ("empty", b""),
        ("hello", s("Hello, world!")),
        ("single_space", s(" ")),
        ("two_spaces", s("  ")),
        ("leading_spaces", s("   leading spaces")),
        ("trailing_spaces", s("trailing spaces    ")),
        ("internal_spaces", s("multiple   internal      spaces  here")),
        ("sixteen_spaces", s("a" + " " * 16 + "b" + " " * 17 + "c")),
        ("digits_pi", s("3.14159265358979323846")),
        ("digits_mixed", s("In 2024, 1234567890 items cost $99.99 (or 1e-5 each)")),
        ("digits_only", s("0123456789")),
        ("newline", s("\n")),
        ("newlines", s("line1\nline2\n\nline4\n\n\nline7" + "\n" * 12 + "end")),
        ("tabs", s("\ttab\t\tindent" + "\t" * 9 + "many")),
        ("crlf", s("windows\r\nline\r\n")),
        ("whitespace_mix", s(" \n \t \n\n\t\t  x")),
        ("accents", s("na\u00efve caf\u00e9 r\u00e9sum\u00e9 \u00c5ngstr\u00f6m")),
        ("combining", s("cafe\u0301 n\u0303")),
        ("cjk_chinese", s("\u4e2d\u6587\u5206\u8bcd\u6d4b\u8bd5\uff0c\u4f60\u597d\u4e16\u754c\u3002")),
        ("cjk_japanese", s("\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8")),
        ("korean", s("\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8")),
        ("cyrillic", s("\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440")),
        ("arabic", s("\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645")),
        ("emoji", s("emoji \U0001F600\U0001F680\U0001F44D\U0001F3FD!")),
        ("emoji_zwj", s("\U0001F469\u200d\U0001F4bb \U0001F1E9\U0001F1EA")),
        ("math_symbols", s("\u03a9\u2248\u00e7\u221a\u222b \u2211 x\u00b2 \u2264 \u221e")),
        ("rare_plane", s("\U00010348\U0001D11E\U0002A700")),
        ("special_lookalikes", s("<|separator|> [BOS] [EOS] <0x41> <s></s>")),
        ("code", s("def f(x):\n    return x ** 2  # square\n\n\tprint(f(3))")),
        ("json", s('{"key": [1, 2, 3], "nested": {"a": null}}')),
        ("url", s("https://github.com/xai-org/grok-1/blob/main/run.py#L66")),
        ("nul_byte", b"a\x00b"),
        ("control_chars", b"bell\x07 esc\x1b[0m del\x7f"),
        ("invalid_utf8", b"a\xffb\xc3 \xe4\xb8 \xed\xa0\x80 end\xf0\x9f"),
        ("replacement_char", s("\ufffd literal")),
        ("word_boundary_space_sep", s("\u2581 the space symbol itself")),
    ]
    # Deterministic pseudo-random texts mixing scripts, digits and whitespace.
    rng = random.Random(20240317)
    ranges = [(0x20, 0x7E), (0x20, 0x7E), (0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF),
              (0x400, 0x4FF), (0x4E00, 0x9FFF), (0x3040, 0x30FF), (0xAC00, 0xD7A3),
              (0x1F300, 0x1F64F)]
    for i in range(24):
        chars = []
        for _ in range(rng.randint(1, 60)):
            r = rng.random()
            if r < 0.15:
                chars.append(rng.choice([" ", "  ", "\n", "\t", "\n\n", "    "]))
            elif r < 0.25:
                chars.append(str(rng.randint(0, 99999)))
            else:
                lo, hi = rng.choice(ranges)
                chars.append(chr(rng.randint(lo, hi)))
        cases.append((f"random_{i:02d}", s("".join(chars))))
    # A longer paragraph.
    cases.append(("paragraph", s(
        "Mixture-of-Experts layers route every token to the top-2 of 8 experts.  Grok-1 "
        "has 64 layers, 48 query heads and 8 key/value heads (head size 128), a vocabulary "
        "of 131072 pieces and a context of 8192 tokens.\n\nIts weights are stored as int8 "
        "with bf16 scales: 314B parameters, about 318 GB on disk.\t\u2014 The end.")))
    return cases


def byte_id(sp, b):
    return sp.piece_to_id("<0x%02X>" % b)


def decode_cases(sp):
    """(name, ids) pairs: hand-made sequences around the decoding rules, then random ones."""
    space = sp.piece_to_id("\u2581")  # the lone word-boundary piece
    two_spaces = sp.piece_to_id("\u2581\u2581")
    the = sp.piece_to_id("\u2581the")
    unk = sp.unk_id()
    bos, eos, pad = sp.bos_id(), sp.eos_id(), sp.pad_id()
    for name, i in (("space", space), ("two_spaces", two_spaces), ("the", the)):
        assert i != unk, f"the tokenizer has no piece for {name}"
    B = lambda *bs: [byte_id(sp, b) for b in bs]
    emoji = B(0xF0, 0x9F, 0x98, 0x80)
    zhong = B(0xE4, 0xB8, 0xAD)
    cases = [
        ("empty", []),
        ("bos_only", [bos]),
        ("controls_only", [pad, bos, eos, pad]),
        ("unk_only", [unk]),
        ("unk_then_word", [unk, the]),
        ("space_alone", [space]),
        ("space_space_word", [space, space, the]),
        ("space_then_two_spaces", [space, two_spaces, the]),
        ("bos_space_word", [bos, space, the]),
        ("pad_word", [pad, the]),
        ("word_eos_word", [the, eos, the]),
        ("byte_space_then_word", B(0x20) + [the]),
        ("byte_letter_then_word", B(0x41) + [the]),
        ("emoji_bytes", emoji),
        ("emoji_after_word", [the, space] + emoji),
        ("zhong_bytes", zhong),
        ("truncated_lead", B(0xE4)),
        ("truncated_two", B(0xE4, 0xB8)),
        ("truncated_then_word", B(0xE4, 0xB8) + [the]),
        ("lead_lead_cont_cont", B(0xE4, 0xE4, 0xB8, 0xAD)),
        ("lone_continuations", B(0x80, 0xBF, 0x80)),
        ("overlong", B(0xC0, 0x80, 0xE0, 0x80, 0x80)),
        ("surrogate", B(0xED, 0xA0, 0x80)),
        ("above_unicode", B(0xF4, 0x90, 0x80, 0x80)),
        ("five_byte_form", B(0xF8, 0x88, 0x80, 0x80, 0x80)),
        ("ff_fe", B(0xFF, 0xFE)),
        ("bytes_split_by_eos", B(0xE4) + [eos] + B(0xB8, 0xAD)),
        ("replacement_char_bytes", B(0xEF, 0xBF, 0xBD)),
        ("newline_byte", B(0x0A) + [the]),
        ("nul_byte", B(0x00)),
    ]
    # Random sequences: mostly ordinary pieces, with many byte pieces (whole characters, pieces of
    # characters, garbage), control ids, the unknown id and space pieces mixed in.
    rng = random.Random(7)
    n = sp.vocab_size()
    utf8_chars = [c.encode("utf-8") for c in "\u00e9\u4e2d\u6587\U0001F600\u03a9\u0416\uac00"]
    for i in range(60):
        ids = []
        for _ in range(rng.randint(1, 30)):
            r = rng.random()
            if r < 0.35:
                ids.append(rng.randrange(n))
            elif r < 0.50:
                ch = rng.choice(utf8_chars)
                if rng.random() < 0.3:
                    ch = ch[: rng.randint(1, len(ch))]
                ids.extend(byte_id(sp, b) for b in ch)
            elif r < 0.58:
                ids.append(byte_id(sp, rng.randrange(256)))
            elif r < 0.68:
                ids.append(rng.choice([bos, eos, pad]))
            elif r < 0.72:
                ids.append(unk)
            elif r < 0.85:
                ids.append(rng.choice([space, two_spaces]))
            else:
                ids.append(rng.randrange(min(n, 400)))  # low ids: specials, user-defined, bytes
        cases.append((f"random_{i:02d}", ids))
    return cases


def write(path, header, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in header:
            f.write(f"# {line}\n" if line else "#\n")
        for row in rows:
            assert all("\t" not in c and "\n" not in c for c in row), row
            f.write("\t".join(row) + "\n")


def make(name, model_path, out_dir):
    sp = spm.SentencePieceProcessor(model_file=model_path)
    with open(model_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    header = [
        f"Generated by tools/make_tokenizer_fixtures.py with sentencepiece {spm.__version__};",
        f"model {os.path.basename(model_path)} (vocab {sp.vocab_size()}, sha256 {digest}).",
    ]
    ids_str = lambda ids: " ".join(str(i) for i in ids)
    rows = []
    for case, text in encode_cases():
        ids = sp.encode(text)  # bytes in: invalid UTF-8 is handled by SentencePiece itself
        decoded = sp.decode(ids).encode("utf-8")
        rows.append([case, text.hex(), ids_str(ids), decoded.hex(),
                     repr(text.decode("utf-8", errors="backslashreplace"))])
    write(os.path.join(out_dir, f"{name}_encode.tsv"),
          header + ["name, hex(text), ids (no BOS/EOS), hex(decode(ids)), repr(text)"], rows)
    rows = []
    for case, ids in decode_cases(sp):
        rows.append([case, ids_str(ids), sp.decode(ids).encode("utf-8").hex()])
    write(os.path.join(out_dir, f"{name}_decode.tsv"),
          header + ["name, ids, hex(decode(ids))"], rows)
    print(f"make_tokenizer_fixtures: {name}: {len(encode_cases())} encode and "
          f"{len(rows)} decode cases", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grok1", default=os.path.join(ROOT, "..", "shared", "grok1",
                                                    "tokenizer.model"))
    ap.add_argument("--demo", default=os.path.join(ROOT, "examples", "data",
                                                   "demo_tokenizer.model"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "text"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    make("grok1", args.grok1, args.out)
    make("demo", args.demo, args.out)


if __name__ == "__main__":
    main()
