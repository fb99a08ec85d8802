#!/usr/bin/python3
"""Checks an export written by moe::grok1::export_checkpoint against Python (tests/io/test_export.cpp).

    test_export_pickle.py --export DIR --sources DIR --source-tree SRC

DIR/ckpt-0/tensorNNNNN_000 are the C++ writer's files; SOURCES/tNNNNN.npy the f32 values they were
made from ([in, out] or [E, in, out], before quantisation). For every file:

  1. Python's own pickle VM loads it (with stand-ins for numpy's reconstructors, the bf16 dtype
     and QuantizedWeight8bit, which only record what the stream asks for), and the result has the
     release's structure: a float32 array, or a QuantizedWeight8bit holding an int8 weight and
     ml_dtypes.bfloat16 scales with numpy's dtype state.
  2. The stored values equal an independent numpy quantisation of the sources (per output column
     and row block: scale = bf16(max |w| / 127), q = rint(w / scale) clipped to [-127, 127]) and,
     for f32 tensors, the sources themselves.
  3. tools/make_grok1_checkpoint.py's StreamWriter, and Python's pickle.Pickler (its
     PicklerWriter), fed with the values the C++ writer stored, produce the same bytes.
Prints one line per check group and exits non-zero on the first mismatch.
"""
import argparse
import glob
import io
import os
import pickle
import sys

import numpy as np


class Bf16Tag:
    """Stands for ml_dtypes.bfloat16."""


class DtypeProxy:
    def __init__(self, what, align, copy):
        self.what, self.align, self.copy = what, align, copy
        self.state = None

    def __setstate__(self, state):
        self.state = state

    def numpy_dtype(self):
        if self.what is Bf16Tag:
            assert self.state == (3, "<", None, None, None, 2, 2, 0x50), self.state
            return np.dtype("<u2")  # the bits
        dt = np.dtype(self.what)
        endian = "|" if dt.itemsize == 1 else "<"
        assert self.state == (3, endian, None, None, None, -1, -1, 0), self.state
        return dt


class ArrayProxy:
    def __init__(self, cls, shape, dummy):
        assert cls is np.ndarray and shape == (0,) and dummy == b"b", (cls, shape, dummy)
        self.array = None
        self.bf16 = False

    def __setstate__(self, state):
        version, shape, dtype, fortran, data = state
        assert version == 1 and fortran is False and isinstance(dtype, DtypeProxy), state[:4]
        dt = dtype.numpy_dtype()
        self.bf16 = dtype.what is Bf16Tag
        self.array = np.frombuffer(data, dtype=dt).reshape(shape)


class Quantized:
    """Stands for __main__.QuantizedWeight8bit (BUILD sets its __dict__)."""


class ReleaseUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        table = {
            ("numpy.core.multiarray", "_reconstruct"): ArrayProxy,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): DtypeProxy,
            ("ml_dtypes", "bfloat16"): Bf16Tag,
            ("__main__", "QuantizedWeight8bit"): Quantized,
        }
        if (module, name) not in table:
            raise pickle.UnpicklingError("unexpected global %s.%s" % (module, name))
        return table[(module, name)]


def f32_to_bf16_bits(x):
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def quantize(w, blocks):
    """Independent block-wise int8 quantisation of w [..., in, out] (f32 arithmetic)."""
    *lead, n_in, n_out = w.shape
    blk = w.reshape(*lead, blocks, n_in // blocks, n_out)
    amax = np.abs(blk).max(axis=-2)  # [..., blocks, out]
    bits = f32_to_bf16_bits(amax / np.float32(127))
    s = (bits.astype(np.uint32) << 16).view(np.float32)
    s_rows = np.repeat(s, n_in // blocks, axis=-2)  # [..., in, out]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(s_rows > 0, np.rint(w / s_rows), 0).astype(np.float32)
    return np.clip(q, -127, 127).astype(np.int8), bits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", required=True)
    ap.add_argument("--sources", required=True)
    ap.add_argument("--source-tree", required=True)
    a = ap.parse_args()
    sys.path.insert(0, os.path.join(a.source_tree, "tools"))
    import make_grok1_checkpoint as mk  # noqa: E402

    files = sorted(glob.glob(os.path.join(a.export, "ckpt-0", "tensor*_000")))
    assert files, "no tensor files in %s" % a.export
    n_f32 = n_q = 0
    for path in files:
        index = int(os.path.basename(path)[6:11])
        data = open(path, "rb").read()
        src = np.load(os.path.join(a.sources, "t%05d.npy" % index))
        obj = ReleaseUnpickler(io.BytesIO(data)).load()
        if isinstance(obj, ArrayProxy):  # f32 tensor
            w = obj.array
            assert w.dtype == np.float32 and not obj.bf16, (path, w.dtype)
            assert w.shape == src.shape and np.array_equal(w, src), path
            sw_out = io.BytesIO()
            mk.StreamWriter(sw_out).dump("f32", w.shape, lambda o: o(memoryview(w).cast("B")))
            pk = mk.pickle_release_object(np.ascontiguousarray(w))
            n_f32 += 1
        else:
            assert isinstance(obj, Quantized), (path, type(obj))
            assert sorted(vars(obj)) == ["scales", "weight"], (path, vars(obj))
            q, s = obj.weight.array, obj.scales.array
            assert q.dtype == np.int8 and not obj.weight.bf16, path
            assert obj.scales.bf16 and s.dtype == np.uint16, path
            assert q.shape == src.shape, (path, q.shape, src.shape)
            blocks = s.shape[-2]
            want_q, want_s = quantize(src, blocks)
            if not np.array_equal(s, want_s):
                bad = np.argwhere(s != want_s)[0]
                raise AssertionError("%s: scale %s is %#06x, numpy says %#06x"
                                     % (path, tuple(bad), s[tuple(bad)], want_s[tuple(bad)]))
            if not np.array_equal(q, want_q):
                bad = np.argwhere(q != want_q)[0]
                raise AssertionError("%s: q%s = %d, numpy says %d (w = %r)"
                                     % (path, tuple(bad), q[tuple(bad)], want_q[tuple(bad)],
                                        src[tuple(bad)]))
            sw_out = io.BytesIO()
            mk.StreamWriter(sw_out).dump("qw8", q.shape, lambda o: o(memoryview(q).cast("B")),
                                         s.shape, lambda o: o(memoryview(s).cast("B")))
            pk = mk.pickle_release_object(
                mk.QuantizedWeight8bit(np.ascontiguousarray(q), mk.Bf16Array(s)))
            n_q += 1
        if sw_out.getvalue() != data:
            other = sw_out.getvalue()
            at = next((i for i in range(min(len(data), len(other))) if data[i] != other[i]),
                      min(len(data), len(other)))
            raise AssertionError("%s: C++ bytes differ from StreamWriter's at byte %d (%d vs %d "
                                 "bytes)" % (path, at, len(data), len(other)))
        assert pk == data, "%s: C++ bytes differ from pickle.Pickler's" % path
    print("export: %d f32 and %d int8 files load with pickle, match numpy's quantisation, and "
          "are byte-identical to StreamWriter and pickle.Pickler" % (n_f32, n_q))
    return 0


if __name__ == "__main__":
    sys.exit(main())
