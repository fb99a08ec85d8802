#!/usr/bin/python3
"""Writes the seed corpus of fuzz_pickle (and fuzz_json) into OUT_DIR.

    /usr/bin/python3 fuzz/make_seed_corpus.py OUT_DIR [pickle|json|safetensors]

Pickle seeds: single checkpoint tensors in the release's exact format (tools/
make_grok1_checkpoint.py, both writers, numpy 1 and 2 module names), numpy arrays pickled by
Python itself with protocols 2-5, and a few hostile or unsupported objects.
"""
import io
import os
import pickle
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import make_grok1_checkpoint as gen  # noqa: E402


class _Exploit:
    def __reduce__(self):
        return (os.system, ("true",))


def pickle_seeds(out):
    rng = np.random.default_rng(0)
    seeds = {}
    for kind, shape, sshape in [("f32", (3,), None), ("f32", (4, 2), None),
                                ("qw8", (4, 8), (1, 8)), ("qw8", (16, 4), (8, 4)),
                                ("qw8", (2, 8, 3), (2, 1, 3)), ("qw8", (2, 16, 3), (2, 8, 3))]:
        w, s = gen.make_values(kind, "x/router/w", shape, sshape, rng)
        obj = w if kind == "f32" else gen.QuantizedWeight8bit(w, gen.Bf16Array(s))
        tag = "%s_%s" % (kind, "x".join(map(str, shape)))
        seeds["release_" + tag] = gen.pickle_release_object(obj)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            f = io.BytesIO()
            gen.StreamWriter(f, numpy_module=module).dump(
                kind, shape, lambda o: o(w.tobytes()), sshape,
                None if s is None else (lambda o: o(s.tobytes())))
            seeds["stream_%s_%s" % (module.split(".")[1], tag)] = f.getvalue()
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    for proto in (2, 3, 4, 5):
        for name, obj in [("f32", a), ("i8", a.astype(np.int8)), ("f64", a.astype(np.float64)),
                          ("fortran", np.asfortranarray(a)), ("bigendian", a.astype(">f4")),
                          ("dict", {"weight": [1, 2.5, None, True]}), ("exploit", _Exploit())]:
            seeds["python_p%d_%s" % (proto, name)] = pickle.dumps(obj, protocol=proto)
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    return len(seeds)


def json_seeds(out):
    texts = ['{"head_dim": 8, "max_seq_len": 64}', '[1, -2.5e3, "a\\u00e9\\n", true, null, {}]',
             '{"a": {"b": [[], [{}]]}, "c": "\\ud83d\\ude00"}', '0', '"x"', '{"a": 1,}']
    for i, t in enumerate(texts):
        with open(os.path.join(out, "seed%d.json" % i), "w") as f:
            f.write(t)
    return len(texts)


def safetensors_seeds(out):
    """Files of tools/make_hf_checkpoint.py: the dtypes fixture, one shard of a tiny checkpoint
    of each family (small widths), an empty file, and a few damaged copies."""
    import make_hf_checkpoint as hf
    seeds = {"dtypes": hf.safetensors_bytes(hf.dtypes_tensors(), {"format": "pt"}),
             "empty": hf.safetensors_bytes([]), "metadata_only": hf.safetensors_bytes([], {"a": "b"})}
    rng = np.random.default_rng(0)
    for family in ("mixtral", "qwen2_moe", "olmoe"):
        c = hf.tiny_config(family, "bf16")
        c.update({"hidden_size": 8, "num_hidden_layers": 1, "vocab_size": 4, "intermediate_size": 4,
                  "moe_intermediate_size": 4, "shared_expert_intermediate_size": 4})
        tensors = [(n, "BF16", s, hf.encode(hf.random_values(n, s, rng), "BF16"))
                   for n, s in hf.tensor_list(c)]
        seeds["shard_" + family] = hf.safetensors_bytes(tensors, {"format": "pt"})
    base = seeds["dtypes"]
    seeds["truncated"] = base[:-5]
    seeds["short_header"] = base[:8] + base[8:40]
    seeds["trailing"] = base + b"\0\0\0\0"
    for name, data in seeds.items():
        with open(os.path.join(out, name + ".safetensors"), "wb") as f:
            f.write(data)
    return len(seeds)


def main():
    out = sys.argv[1]
    which = sys.argv[2] if len(sys.argv) > 2 else "pickle"
    os.makedirs(out, exist_ok=True)
    seeders = {"pickle": pickle_seeds, "json": json_seeds, "safetensors": safetensors_seeds}
    n = seeders[which](out)
    print("fuzz: %d %s seeds in %s" % (n, which, out))


if __name__ == "__main__":
    main()
