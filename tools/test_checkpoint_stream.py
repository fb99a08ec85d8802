#!/usr/bin/python3
"""Tests of tools/make_grok1_checkpoint.py's byte stream (run by ctest; Debian python3 + numpy).

* Both writers (Python's pickle.Pickler and the streaming writer used by --sparse) produce
  identical bytes, over shapes that cross pickle's 256-byte and 64 KiB framing thresholds.
* The pickletools listing of a quantized and of a plain file is exactly the release's opcode
  stream: protocol 4, the globals __main__.QuantizedWeight8bit, numpy.core.multiarray.
  _reconstruct, numpy.ndarray, numpy.dtype, ml_dtypes.bfloat16, NEWOBJ + BUILD with a dict.
* Python's own Unpickler (with stand-ins for the globals, nothing imported by name) loads every
  file and gets back the generated values.
* --sparse files equal the normal files outside the payloads, read as zeros inside them, and the
  314B checkpoint takes ~318 GB apparent and only a few MB on disk.
* The file order is the sorted parameter paths (t519, t713, t758: docs/checkpoint-format.md, section 2).
"""
import io
import json
import os
import pickle
import pickletools
import shutil
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import make_grok1_checkpoint as gen  # noqa: E402

# Opcodes the C++ reader (include/moe/io/pickle.hpp) supports.
READER_OPCODES = {
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP", "SHORT_BINUNICODE", "BINUNICODE",
    "BINUNICODE8", "GLOBAL", "STACK_GLOBAL", "MEMOIZE", "BINPUT", "LONG_BINPUT", "BINGET",
    "LONG_BINGET", "EMPTY_TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "TUPLE", "EMPTY_LIST", "LIST",
    "APPEND", "APPENDS", "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS", "BININT", "BININT1",
    "BININT2", "LONG1", "LONG4", "NONE", "NEWTRUE", "NEWFALSE", "BINFLOAT", "SHORT_BINBYTES",
    "BINBYTES", "BINBYTES8", "BYTEARRAY8", "REDUCE", "BUILD", "NEWOBJ", "NEWOBJ_EX",
}

# The opcode stream of one numpy array (MEMOIZE / BINGET / FRAME left out: they depend on what
# was memoized before), as numpy 1.x's array_reduce + arraydescr_reduce produce it.
ARRAY_FIRST = [  # the first array of a file: every global is new
    "SHORT_BINUNICODE", "SHORT_BINUNICODE", "STACK_GLOBAL",        # numpy.core.multiarray._reconstruct
    "SHORT_BINUNICODE", "SHORT_BINUNICODE", "STACK_GLOBAL",        # numpy.ndarray
    "BININT1", "TUPLE1", "SHORT_BINBYTES", "TUPLE3", "REDUCE",     # (ndarray, (0,), b'b')
    "MARK", "BININT1", "@shape", "SHORT_BINUNICODE", "STACK_GLOBAL",  # (1, shape, numpy.dtype
    "@descr", "NEWFALSE", "NEWTRUE", "TUPLE3", "REDUCE",           # (descr, False, True)
    "MARK", "BININT1", "SHORT_BINUNICODE", "NONE", "NONE", "NONE", "@elsize", "@elsize", "BININT1",
    "TUPLE", "BUILD",                                              # (3, endian, .., flags))
    "NEWFALSE", "@payload", "TUPLE", "BUILD",                      # False, data) BUILD
]


def read(path):
    with open(path, "rb") as f:
        return f.read()


def listing(data):
    return [(op.name, arg, pos) for op, arg, pos in pickletools.genops(data)]


def globals_of(data):
    """The (module, name) of every STACK_GLOBAL/GLOBAL, resolving memo references."""
    memo, stack_strs, out = {}, [], []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE"):
            stack_strs.append(arg)
        elif op.name == "MEMOIZE":
            memo[len(memo)] = stack_strs[-1] if stack_strs else None
        elif op.name == "BINGET":
            stack_strs.append(memo.get(arg))
        elif op.name == "STACK_GLOBAL":
            out.append((stack_strs[-2], stack_strs[-1]))
        elif op.name == "GLOBAL":
            out.append(tuple(arg.split(" ")))
    return out


class _Stand:
    """Stand-ins for the pickled globals: they record what they are given, nothing is run."""

    class Bf16:
        pass

    class Dtype:
        def __init__(self, descr, align, copy):
            self.descr, self.align, self.copy = descr, align, copy

        def __setstate__(self, state):
            self.state = state

    class Array:
        def __init__(self, cls, shape, dummy):
            assert cls is np.ndarray and shape == (0,) and dummy == b"b"

        def __setstate__(self, state):
            version, shape, dtype, fortran, data = state
            assert version == 1 and not fortran and isinstance(data, bytes)
            self.dtype = dtype
            np_dtype = np.uint16 if dtype.descr is _Stand.Bf16 else np.dtype(dtype.descr)
            self.value = np.frombuffer(data, dtype=np_dtype).reshape(shape)


class _StandInUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        table = {
            ("numpy.core.multiarray", "_reconstruct"): _Stand.Array,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): _Stand.Dtype,
            ("ml_dtypes", "bfloat16"): _Stand.Bf16,
            ("__main__", "QuantizedWeight8bit"): gen.QuantizedWeight8bit,
        }
        if (module, name) not in table:
            raise pickle.UnpicklingError("unexpected global %s.%s" % (module, name))
        return table[(module, name)]


def load(path):
    with open(path, "rb") as f:
        return _StandInUnpickler(f).load()


def writer_bytes(kind, shape, sshape, w, s, sparse=False):
    f = io.BytesIO()
    sw = gen.StreamWriter(f, sparse=sparse)
    sw.dump(kind, shape, lambda o: o(w.tobytes()), sshape,
            None if s is None else (lambda o: o(s.tobytes())))
    return f.getvalue(), sw.payload_offsets


class StreamTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="moe_ckpt_stream_")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_writers_agree(self):
        cases = [("f32", (6144,), None), ("f32", (3,), None), ("f32", (63,), None),
                 ("f32", (64,), None), ("f32", (16383,), None), ("f32", (16384,), None),
                 ("f32", (300, 70), None), ("f32", (70000,), None), ("f32", (64, 8), None),
                 ("f32", (0, 5), None)]
        for sh in [(32, 16), (4, 32, 48), (4, 48, 32), (256, 256), (8, 256, 512), (200, 300),
                   (16, 4096), (16, 4095), (70000, 1), (65535, 1), (65536, 1), (65280, 1),
                   (5, 10000), (40000, 1), (1, 20000), (128, 500)]:
            cases.append(("qw8", sh, sh[:-2] + (1, sh[-1])))
            if sh[-2] % 8 == 0:
                cases.append(("qw8", sh, sh[:-2] + (8, sh[-1])))
        rng = np.random.default_rng(5)
        for kind, shape, sshape in cases:
            with self.subTest(kind=kind, shape=shape, scales=sshape):
                w, s = gen.make_values(kind, "x/router/w", shape, sshape, rng)
                obj = w if kind == "f32" else gen.QuantizedWeight8bit(w, gen.Bf16Array(s))
                a = gen.pickle_release_object(obj)
                b, offsets = writer_bytes(kind, shape, sshape, w, s)
                self.assertEqual(a, b)
                # the recorded payload offsets point at the payload bytes
                self.assertEqual(b[offsets[0]:offsets[0] + w.nbytes], w.tobytes())
                if s is not None:
                    self.assertEqual(b[offsets[1]:offsets[1] + s.nbytes], s.tobytes())

    def test_opcode_listing_of_the_release_format(self):
        out = os.path.join(self.tmp, "tiny")
        side = gen.write_checkpoint(dict(gen.PRESETS["tiny"]), out, seed=4)
        ckpt = os.path.join(out, "ckpt-0")
        # t3 = layer 0 moe/linear_1: QW8 [8, 48, 32] with scales [8, 8, 32]
        q = read(os.path.join(ckpt, "tensor00003_000"))
        ops = listing(q)
        self.assertEqual(ops[0][:2], ("PROTO", 4))
        self.assertEqual(ops[1][0], "FRAME")
        self.assertEqual(ops[-1][0], "STOP")
        self.assertEqual(globals_of(q), [("__main__", "QuantizedWeight8bit"),
                                         ("numpy.core.multiarray", "_reconstruct"),
                                         ("numpy", "ndarray"), ("numpy", "dtype"),
                                         ("ml_dtypes", "bfloat16")])
        names = [n for n, _, _ in ops if n not in ("MEMOIZE", "BINGET", "FRAME", "PROTO")]
        head = ["SHORT_BINUNICODE", "SHORT_BINUNICODE", "STACK_GLOBAL", "EMPTY_TUPLE", "NEWOBJ",
                "EMPTY_DICT", "MARK", "SHORT_BINUNICODE"]  # QW8.__new__, {'weight':
        self.assertEqual(names[:len(head)], head)
        self.assertEqual(names[-3:], ["SETITEMS", "BUILD", "STOP"])
        # the first array, expanded for a 3-D shape, int8 ('i1', '|', elsize -1)
        first = []
        for t in ARRAY_FIRST:
            if t == "@shape":
                first += ["BININT1", "BININT1", "BININT1", "TUPLE3"]
            elif t == "@descr":
                first.append("SHORT_BINUNICODE")
            elif t == "@elsize":
                first.append("BININT")
            elif t == "@payload":
                first.append("BINBYTES")  # 12288 bytes: in the frame
            else:
                first.append(t)
        body = names[len(head):len(head) + len(first)]
        self.assertEqual(body, first)
        strs = {a for n, a, _ in ops if n == "SHORT_BINUNICODE" and a in ("i1", "|", "<")}
        self.assertEqual(strs, {"i1", "|", "<"})
        self.assertTrue(set(n for n, _, _ in ops) <= READER_OPCODES)
        self.assertEqual(sum(1 for n, _, _ in ops if n == "BUILD"), 5)  # 2 dtypes, 2 arrays, QW8
        # bf16 dtype state: (3, '<', None, None, None, 2, 2, 0x50) as ml_dtypes registers it
        ints = [a for n, a, _ in ops if n == "BININT1"]
        self.assertEqual(ints[-4:], [3, 2, 2, 0x50])

        # t0 = embeddings: a plain float32 [64, 32] array, numpy's stream alone
        p = read(os.path.join(ckpt, "tensor00000_000"))
        self.assertEqual(globals_of(p), [("numpy.core.multiarray", "_reconstruct"),
                                         ("numpy", "ndarray"), ("numpy", "dtype")])
        names = [n for n, _, _ in listing(p) if n not in ("MEMOIZE", "BINGET", "FRAME", "PROTO")]
        want = []
        for t in ARRAY_FIRST:
            want += {"@shape": ["BININT1", "BININT1", "TUPLE2"], "@descr": ["SHORT_BINUNICODE"],
                     "@elsize": ["BININT"], "@payload": ["BINBYTES"]}.get(t, [t])
        self.assertEqual(names, want + ["STOP"])

        # every file loads with Python's own Unpickler and holds the generated values
        specs = gen.parameter_specs(gen.PRESETS["tiny"])
        for i, (module, param, kind, shape, sshape) in enumerate(specs):
            with self.subTest(file=i):
                obj = load(os.path.join(ckpt, gen.file_name(i)))
                w, s = gen.make_values(kind, module + "/" + param, shape, sshape,
                                       np.random.default_rng([4, i]))
                if kind == "f32":
                    self.assertIsInstance(obj, _Stand.Array)
                    self.assertEqual(obj.dtype.descr, "f4")
                    np.testing.assert_array_equal(obj.value, w)
                else:
                    self.assertIsInstance(obj, gen.QuantizedWeight8bit)
                    self.assertEqual(obj.weight.dtype.descr, "i1")
                    self.assertIs(obj.scales.dtype.descr, _Stand.Bf16)
                    self.assertEqual(obj.scales.dtype.state, (3, "<", None, None, None, 2, 2, 0x50))
                    np.testing.assert_array_equal(obj.weight.value, w)
                    np.testing.assert_array_equal(obj.scales.value, s)
                self.assertEqual(side["tensors"][i]["name"], module + "/" + param)

        print("\npickletools listing of tiny tensor00003_000 (first 40 opcodes):")
        pickletools.dis(q, out=_Head(40))

    def test_sparse_matches_dense_outside_payloads(self):
        c = dict(gen.PRESETS["tiny"], d_model=64, d_ff=4096, vocab=512)  # payloads > 64 KiB too
        dense = os.path.join(self.tmp, "dense")
        sparse = os.path.join(self.tmp, "sparse")
        gen.write_checkpoint(c, dense, seed=1)
        side = gen.write_checkpoint(c, sparse, seed=1, sparse=True)
        for t in side["tensors"]:
            a = read(os.path.join(dense, "ckpt-0", t["file"]))
            b = read(os.path.join(sparse, "ckpt-0", t["file"]))
            self.assertEqual(len(a), len(b))
            sizes = [int(np.prod(t["shape"])) * (1 if t["kind"] == "qw8" else 4)]
            if t["kind"] == "qw8":
                sizes.append(int(np.prod(t["scales_shape"])) * 2)
            a, b = bytearray(a), bytearray(b)
            for off, n in zip(t["payload_offsets"], sizes):
                self.assertEqual(bytes(b[off:off + n]), bytes(n))  # holes read as zeros
                a[off:off + n] = bytes(n)
            self.assertEqual(a, b, t["file"])

    def test_full_sparse_checkpoint(self):
        out = os.path.join(self.tmp, "full")
        side = gen.write_checkpoint(dict(gen.PRESETS["full"]), out, sparse=True)
        ckpt = os.path.join(out, "ckpt-0")
        files = sorted(os.listdir(ckpt))
        self.assertEqual(len(files), 770)
        self.assertEqual(files[-1], "tensor00769_000")
        apparent = sum(os.path.getsize(os.path.join(ckpt, f)) for f in files)
        on_disk = sum(os.stat(os.path.join(ckpt, f)).st_blocks * 512 for f in files)
        self.assertGreater(apparent, 318_239_694_848)
        self.assertLess(apparent, 318_239_694_848 + 770 * 1024)
        self.assertLess(on_disk, 32 << 20, "sparse files should take a few MB on disk")
        names = [t["name"] for t in side["tensors"]]
        self.assertEqual(names[519], "transformer/decoder_layer_48/moe/linear_1/w")
        self.assertEqual(names[713], "transformer/decoder_layer_62/multi_head_attention/key/w")
        self.assertEqual(names[758], "transformer/decoder_layer_9/moe/linear/w")
        self.assertEqual(names[0], "language_model/in_out_embed/embeddings")
        self.assertEqual(names[146], "transformer/decoder_layer_2/moe/linear/w")
        self.assertFalse(os.path.exists(os.path.join(out, "config.json")))  # all inferable
        # the shapes of the release (grok1.md 5.1)
        t = side["tensors"]
        self.assertEqual(t[0]["shape"], [131072, 6144])
        self.assertEqual(t[3]["shape"], [8, 32768, 6144])
        self.assertEqual(t[3]["scales_shape"], [8, 8, 6144])
        self.assertEqual(t[6]["scales_shape"], [8, 6144])
        self.assertEqual(t[7]["scales_shape"], [1, 6144])
        self.assertEqual(t[13]["shape"], [6144, 8])
        self.assertEqual(t[0]["payload_offsets"], [151])  # misaligned: see the C++ reader
        big = load(os.path.join(ckpt, "tensor00005_000"))  # the unpickler reads 6 MB of zeros
        self.assertEqual(big.weight.value.shape, (6144, 1024))
        self.assertFalse(big.weight.value.any())

    def test_config_json(self):
        for preset, want in [("tiny", {"head_dim": 8, "max_seq_len": 64}),
                             ("demo", {"head_dim": 32, "max_seq_len": 512})]:
            out = os.path.join(self.tmp, "cfg_" + preset)
            gen.write_checkpoint(dict(gen.PRESETS[preset], layers=1), out, sparse=True)
            with open(os.path.join(out, "config.json")) as f:
                self.assertEqual(json.load(f), want)


class _Head:
    """A file-like that keeps the first n lines of pickletools.dis output and prints them."""

    def __init__(self, n):
        self.n, self.buf = n, ""

    def write(self, s):
        if self.n > 0:
            self.buf += s
            while "\n" in self.buf and self.n > 0:
                line, self.buf = self.buf.split("\n", 1)
                print(line)
                self.n -= 1


if __name__ == "__main__":
    unittest.main(verbosity=2)
