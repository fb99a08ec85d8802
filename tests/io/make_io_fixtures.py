#!/usr/bin/python3
"""Generates the fixtures of test_io into OUT (run by ctest as the `moe_io_fixtures` setup test).

    /usr/bin/python3 tests/io/make_io_fixtures.py OUT

OUT/tiny11/       tiny config with 11 layers (lexicographic file order matters), config.json, and
                  expected.json (CRC-32s, sums and sample values of every tensor)
OUT/demo/         grok1::Config::demo() (12 layers)
OUT/tiny_np2/     tiny config pickled with numpy 2's module names, by the streaming writer
OUT/full_sparse/  the real 314B shapes, payloads left as holes (318 GB apparent, ~8 MB on disk)
OUT/residency/    2 layers of 4 experts with 4 MiB gate slices (~100 MB), large enough for
                  WeightResidency to observe each expert's use
OUT/pickles/      single objects pickled by Python's own pickle: protocol 2/3/4/5 numpy arrays,
                  a dict, an `os.system` payload (must be rejected, never run)
OUT/npy/          arrays saved with numpy's np.save (the C++ writer must reproduce the bytes)
"""
import os
import pickle
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import make_grok1_checkpoint as gen  # noqa: E402


class _Exploit:
    """Pickles as os.system('...'): a real unpickler would run the command."""

    def __reduce__(self):
        return (os.system, ("echo moe-io-fixture-exploit-ran > exploit_ran.txt",))


def main():
    out = os.path.abspath(sys.argv[1])
    os.makedirs(out, exist_ok=True)

    tiny = dict(gen.PRESETS["tiny"], layers=11)
    gen.write_checkpoint(tiny, os.path.join(out, "tiny11"), seed=1)
    gen.write_checkpoint(dict(gen.PRESETS["demo"]), os.path.join(out, "demo"), seed=2)
    gen.write_checkpoint(dict(gen.PRESETS["tiny"]), os.path.join(out, "tiny_np2"), seed=3,
                         numpy_module="numpy._core.multiarray", writer="stream")
    gen.write_checkpoint(dict(gen.PRESETS["full"]), os.path.join(out, "full_sparse"),
                         sparse=True)
    residency = dict(gen.PRESETS["tiny"], vocab=256, d_model=512, layers=2, heads=4, kv_heads=2,
                     head_dim=64, experts=4, d_ff=8192, max_seq_len=64)
    gen.write_checkpoint(residency, os.path.join(out, "residency"), seed=4)

    pk = os.path.join(out, "pickles")
    os.makedirs(pk, exist_ok=True)
    a = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    big = np.linspace(-1, 1, 20000, dtype=np.float32)  # > 64 KiB: payload outside any frame
    objects = {
        "f32_2x3": a,
        "f32_big": big,
        "i8_3x4": (np.arange(12, dtype=np.int8) - 6).reshape(3, 4),
        "f32_fortran": np.asfortranarray(a),
        "f32_bigendian": a.astype(">f4"),
        "f64_2x3": a.astype(np.float64),
        "dict": {"weight": 1},
        "exploit": _Exploit(),
    }
    for name, obj in objects.items():
        for proto in (2, 3, 4, 5):
            with open(os.path.join(pk, "%s.p%d" % (name, proto)), "wb") as f:
                pickle.dump(obj, f, protocol=proto)

    npy = os.path.join(out, "npy")
    os.makedirs(npy, exist_ok=True)
    np.save(os.path.join(npy, "f32_2x3.npy"), a)
    np.save(os.path.join(npy, "f32_7.npy"), np.arange(7, dtype=np.float32) * 0.5)
    np.save(os.path.join(npy, "f32_2x3x4.npy"), np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    np.save(os.path.join(npy, "f32_12345x2.npy"), np.ones((12345, 2), dtype=np.float32))
    np.save(os.path.join(npy, "f64_2x3.npy"), a.astype(np.float64))
    np.save(os.path.join(npy, "f32_fortran.npy"), np.asfortranarray(a))
    print("fixtures written to", out)


if __name__ == "__main__":
    main()
