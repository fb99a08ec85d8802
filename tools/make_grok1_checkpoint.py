#!/usr/bin/python3
"""Writes a Grok-1 checkpoint in the exact format of xAI's original release, for any config.

    /usr/bin/python3 tools/make_grok1_checkpoint.py --config demo --out DIR [--seed 1]
    /usr/bin/python3 tools/make_grok1_checkpoint.py --config tiny --layers 11 --out DIR
    /usr/bin/python3 tools/make_grok1_checkpoint.py --config full --sparse --out DIR   # 318 GB apparent

Output (docs/checkpoint-format.md has the details):

    DIR/ckpt-0/tensor00000_000 .. tensorNNNNN_000   one pickle per parameter, 2 + 12 * layers files
    DIR/config.json      what the tensor shapes cannot tell (head_dim, ...), only when it differs
                         from what a reader infers by default (--config-json always|auto|never)
    DIR/expected.json    sidecar for tests: per tensor its name, shapes, CRC-32 of the payloads,
                         sums and a few dequantized sample values (not part of the release format)

Every file is pickled exactly as the release was: protocol 4, numpy 1.x `_reconstruct` arrays,
QuantizedWeight8bit as `__main__.QuantizedWeight8bit` via NEWOBJ + BUILD with a dict state, and the
bfloat16 dtype pickled as the global `ml_dtypes.bfloat16` (ml_dtypes is not packaged in Debian, so
its dtype's reduce value is emulated). Two writers produce the bytes:

  * PicklerWriter: Python's own pickle.Pickler with a reducer_override for the bf16 arrays (the
    int8 and float32 arrays are reduced by numpy itself). Used for normal checkpoints.
  * StreamWriter: writes the same opcodes itself, so that a payload can be skipped with a seek
    (--sparse: the payloads are file holes, 318 GB apparent, a few MB on disk) and nothing large
    is ever held in memory. tools/test_checkpoint_stream.py checks that both writers produce
    identical bytes.

Weights are random but scaled so that activations stay O(1): int8 uniform in [-127, 127], bf16
scales ~ 1 / (127 * sqrt(fan_in)) per output column, with different scales for each 1/8 row block
of the row-parallel tensors (moe/linear_1 and multi_head_attention/linear), as in the release.
Needs only Debian's /usr/bin/python3 and numpy.
"""
import argparse
import dataclasses
import io
import json
import math
import os
import pickle
import shutil
import struct
import sys
import types
import zlib

import numpy as np

# ---- configurations ----------------------------------------------------------------------------

# Must match moe::grok1::Config::full() / tiny() / demo() (include/moe/models/grok1_config.hpp).
PRESETS = {
    "full": dict(vocab=131072, d_model=6144, layers=64, heads=48, kv_heads=8, head_dim=128,
                 experts=8, d_ff=32768, top_k=2, max_seq_len=8192),
    "tiny": dict(vocab=64, d_model=32, layers=2, heads=4, kv_heads=2, head_dim=8, experts=8,
                 d_ff=48, top_k=2, max_seq_len=64),
    "demo": dict(vocab=1024, d_model=256, layers=12, heads=8, kv_heads=2, head_dim=32, experts=8,
                 d_ff=512, top_k=2, max_seq_len=512),
}

# What moe's reader assumes when config.json does not say otherwise (grok1_checkpoint.hpp).
READER_DEFAULTS = dict(head_dim=128, top_k=2, max_seq_len=8192, rope_base=10000.0, rms_eps=1e-5,
                       output_multiplier=0.5773502691896257, attn_softcap=30.0)


def derived_multipliers(d_model, head_dim):
    """embedding_multiplier = sqrt(D), attn_logit_multiplier = 1/sqrt(head_dim); the released
    model's constants (run.py) for D = 6144 and head_dim = 128."""
    emb = 78.38367176906169 if d_model == 6144 else math.sqrt(d_model)
    att = 0.08838834764831845 if head_dim == 128 else 1.0 / math.sqrt(head_dim)
    return emb, att


# ---- the parameter tree and its file order -----------------------------------------------------


def parameter_specs(c):
    """Every parameter as (module, param, kind, weight shape, scales shape). kind is 'f32' for a
    plain float32 ndarray and 'qw8' for a QuantizedWeight8bit (int8 weight + bf16 scales)."""
    D, V, E, F = c["d_model"], c["vocab"], c["experts"], c["d_ff"]
    Q, K = c["heads"] * c["head_dim"], c["kv_heads"] * c["head_dim"]

    def blocks(n_in):  # the row-parallel tensors were quantized in 8 input-row blocks
        return 8 if n_in % 8 == 0 else 1

    specs = [("language_model/in_out_embed", "embeddings", "f32", (V, D), None),
             ("language_model/rms_norm", "scale", "f32", (D,), None)]
    for n in range(c["layers"]):
        p = "transformer/decoder_layer_%d/" % n
        specs += [
            (p + "moe/linear", "w", "qw8", (E, D, F), (E, 1, F)),
            (p + "moe/linear_1", "w", "qw8", (E, F, D), (E, blocks(F), D)),
            (p + "moe/linear_v", "w", "qw8", (E, D, F), (E, 1, F)),
            (p + "multi_head_attention/key", "w", "qw8", (D, K), (1, K)),
            (p + "multi_head_attention/linear", "w", "qw8", (Q, D), (blocks(Q), D)),
            (p + "multi_head_attention/query", "w", "qw8", (D, Q), (1, Q)),
            (p + "multi_head_attention/value", "w", "qw8", (D, K), (1, K)),
            (p + "rms_norm", "scale", "f32", (D,), None),
            (p + "rms_norm_1", "scale", "f32", (D,), None),
            (p + "rms_norm_2", "scale", "f32", (D,), None),
            (p + "rms_norm_3", "scale", "f32", (D,), None),
            (p + "router", "w", "f32", (D, E), None),
        ]
    # checkpoint.py restores leaf i of jax.tree_util.tree_flatten(params) from tensor{i:05d}_000.
    # JAX flattens dicts in sorted key order: modules sorted as strings, then params. This is why
    # the layers appear as 0, 1, 10, 11, ..., 19, 2, 20, ... in the files.
    specs.sort(key=lambda s: (s[0], s[1]))
    return specs


def file_name(index):
    return "tensor%05d_000" % index


# ---- random weights ----------------------------------------------------------------------------


def f32_to_bf16_bits(x):
    """float32 -> bfloat16 bits, round to nearest even (what ml_dtypes does)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return r


def bf16_bits_to_f32(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def make_values(kind, name, shape, scales_shape, rng):
    """Returns (weight ndarray, scales bf16 bits or None)."""
    if kind == "qw8":
        w = rng.integers(-127, 128, size=shape, dtype=np.int8)
        fan_in = shape[-2]
        base = 1.0 / (127.0 * math.sqrt(fan_in))
        s = base * rng.uniform(0.5, 1.5, size=scales_shape)  # differs per row block and column
        return w, f32_to_bf16_bits(s.astype(np.float32))
    if name.endswith("embeddings"):  # h = E[t] * sqrt(D) ~ N(0, 1)
        return rng.standard_normal(shape, dtype=np.float32) / np.float32(math.sqrt(shape[1])), None
    if name.endswith("router/w"):
        return rng.standard_normal(shape, dtype=np.float32) / np.float32(math.sqrt(shape[0])), None
    return rng.uniform(0.8, 1.2, size=shape).astype(np.float32), None  # RMSNorm scales


# ---- writer 1: Python's own pickler ------------------------------------------------------------


@dataclasses.dataclass
class QuantizedWeight8bit:
    """Stand-in for grok-1 model.py's class; pickled as __main__.QuantizedWeight8bit (checkpoint.py
    installs the class into __main__ for the same reason)."""
    weight: object
    scales: object


QuantizedWeight8bit.__module__ = "__main__"
QuantizedWeight8bit.__qualname__ = "QuantizedWeight8bit"


def _install_emulations():
    """Makes __main__.QuantizedWeight8bit and ml_dtypes.bfloat16 resolvable for pickle.Pickler
    (which checks that a global's module attribute is the object being pickled)."""
    setattr(sys.modules["__main__"], "QuantizedWeight8bit", QuantizedWeight8bit)
    mod = sys.modules.get("ml_dtypes")
    if mod is None or not getattr(mod, "_moe_emulation", False):
        mod = types.ModuleType("ml_dtypes")
        mod._moe_emulation = True

        class bfloat16:  # noqa: N801  (the scalar type object numpy pickles as the dtype descr)
            pass

        bfloat16.__module__ = "ml_dtypes"
        bfloat16.__qualname__ = "bfloat16"
        mod.bfloat16 = bfloat16
        sys.modules["ml_dtypes"] = mod
    return mod.bfloat16


class _Bf16Dtype:
    """Pickles like numpy's dtype(ml_dtypes.bfloat16): numpy's arraydescr_reduce returns
    (numpy.dtype, (typeobj, False, True), (3, '<', None, None, None, elsize, alignment, flags))
    for user-defined dtypes; ml_dtypes (2024) registers elsize 2, alignment 2 and flags
    NPY_NEEDS_PYAPI | NPY_USE_SETITEM = 0x50."""

    def __init__(self, typeobj):
        self.typeobj = typeobj

    def reduce(self):
        return (np.dtype, (self.typeobj, False, True), (3, "<", None, None, None, 2, 2, 0x50))


class Bf16Array:
    """A bfloat16 ndarray (numpy cannot hold one without ml_dtypes): the uint16 bits."""

    def __init__(self, bits):
        assert bits.dtype == np.uint16
        self.bits = np.ascontiguousarray(bits)


class _ReleasePickler(pickle.Pickler):
    def __init__(self, f):
        super().__init__(f, protocol=4)
        self.bf16_dtype = _Bf16Dtype(_install_emulations())

    def reducer_override(self, obj):
        if isinstance(obj, Bf16Array):  # exactly numpy's array_reduce for a C-contiguous array
            b = obj.bits
            return (np.core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                    (1, b.shape, self.bf16_dtype, False, b.tobytes()))
        if isinstance(obj, _Bf16Dtype):
            return obj.reduce()
        return NotImplemented


def pickle_release_object(obj):
    """The bytes of pickle.dump(obj) as the release wrote them. obj is a float32 ndarray or a
    QuantizedWeight8bit(int8 ndarray, Bf16Array)."""
    buf = io.BytesIO()
    _ReleasePickler(buf).dump(obj)
    return buf.getvalue()


# ---- writer 2: the same opcodes, streamed ------------------------------------------------------


class StreamWriter:
    """Emits the opcode stream of pickle protocol 4 for the two objects of a checkpoint file,
    byte-identical to pickle.Pickler (frames of >= 64 KiB target, payloads >= 64 KiB outside any
    frame, MEMOIZE after every memoized object). A payload is written by a callback or, when
    sparse, skipped with a seek, which leaves a hole in the file."""

    FRAME_TARGET = 64 * 1024
    FRAME_MIN = 4

    def __init__(self, f, sparse=False, numpy_module="numpy.core.multiarray"):
        self.f = f
        self.sparse = sparse
        self.numpy_module = numpy_module
        self.frame = None  # bytearray of the open frame, or None
        self.frame_holes = []  # (start, length) of skipped payloads in the open frame
        self.memo = {}  # key -> memo index, for the objects pickle would find in its memo again
        self.memo_len = 0  # every MEMOIZE takes the next index, keyed or not
        self.pos = 0  # file position (the file may be sparse, so track it ourselves)
        self.payload_offsets = []

    # -- low level
    def _out(self, b):
        self.f.write(b)
        self.pos += b.nbytes if isinstance(b, memoryview) else len(b)

    def _w(self, b):
        if self.frame is None:
            self.frame = bytearray()
        self.frame += b

    def _commit(self):
        if self.frame is None:
            return
        if len(self.frame) >= self.FRAME_MIN:
            self._out(b"\x95" + struct.pack("<Q", len(self.frame)))
        at = 0
        for start, n in self.frame_holes:  # sparse: skip the zero payloads inside the frame
            self._out(bytes(self.frame[at:start]))
            self.f.seek(n, os.SEEK_CUR)
            self.pos += n
            at = start + n
        self._out(bytes(self.frame[at:]))
        self.frame = None
        self.frame_holes = []

    def _boundary(self):  # pickle commits a full frame before saving the next object
        if self.frame is not None and len(self.frame) >= self.FRAME_TARGET:
            self._commit()

    def _memoize(self, key):
        if key is not None:
            self.memo[key] = self.memo_len
        self.memo_len += 1
        self._w(b"\x94")  # MEMOIZE

    def _get(self, key):
        i = self.memo[key]
        self._w(b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i))

    # -- objects
    def save_str(self, s):
        self._boundary()
        key = ("str", s)
        if key in self.memo:
            return self._get(key)
        b = s.encode("utf-8")
        assert len(b) < 256
        self._w(b"\x8c" + bytes([len(b)]) + b)  # SHORT_BINUNICODE
        self._memoize(key)

    def save_global(self, module, name):
        self._boundary()
        key = ("global", module, name)
        if key in self.memo:
            return self._get(key)
        self.save_str(module)
        self.save_str(name)
        self._w(b"\x93")  # STACK_GLOBAL
        self._memoize(key)

    def save_int(self, v):
        self._boundary()
        if 0 <= v < 256:
            self._w(b"K" + bytes([v]))
        elif 0 <= v < 65536:
            self._w(b"M" + struct.pack("<H", v))
        elif -(2 ** 31) <= v < 2 ** 31:
            self._w(b"J" + struct.pack("<i", v))
        else:
            n = (v.bit_length() + 8) // 8
            self._w(b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True))

    def save_const(self, v):
        self._boundary()
        self._w({None: b"N", True: b"\x88", False: b"\x89"}[v])

    def save_tuple(self, savers):
        self._boundary()
        if not savers:
            self._w(b")")
            return
        if len(savers) > 3:
            self._w(b"(")
        for s in savers:
            s()
        self._w({1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(savers), b"t"))
        self._memoize(None)

    def save_bytes_b(self):  # numpy's dummy b'b': a cached 1-byte object, memoized once
        self._boundary()
        key = ("bytes", b"b")
        if key in self.memo:
            return self._get(key)
        self._w(b"C\x01b")
        self._memoize(key)

    def save_payload(self, nbytes, write):
        self._boundary()
        if nbytes < 256:
            header = b"C" + bytes([nbytes])
        elif nbytes <= 0xFFFFFFFF:
            header = b"B" + struct.pack("<I", nbytes)
        else:
            header = b"\x8e" + struct.pack("<Q", nbytes)
        if nbytes >= self.FRAME_TARGET:  # large payloads bypass the frame
            self._commit()
            self._out(header)
            self.payload_offsets.append(self.pos)
            if self.sparse:
                self.f.seek(nbytes, os.SEEK_CUR)
                self.pos += nbytes
            else:
                n0 = self.pos
                write(self._out)
                assert self.pos - n0 == nbytes
        else:
            self._w(header)
            self.payload_offsets.append(self.pos + 9 + len(self.frame))  # frame header + content
            if self.sparse:
                self.frame_holes.append((len(self.frame), nbytes))
                self._w(bytes(nbytes))
            else:
                chunks = []
                write(chunks.append)
                data = b"".join(chunks)
                assert len(data) == nbytes
                self._w(data)
        self._memoize(None)

    def save_dtype(self, descr, endian, elsize, alignment, flags):
        self._boundary()
        self.save_global("numpy", "dtype")
        if descr == "bfloat16":
            self.save_tuple([lambda: self.save_global("ml_dtypes", "bfloat16"),
                             lambda: self.save_const(False), lambda: self.save_const(True)])
        else:
            self.save_tuple([lambda: self.save_str_new(descr), lambda: self.save_const(False),
                             lambda: self.save_const(True)])
        self._w(b"R")
        self._memoize(None)
        self.save_tuple([lambda: self.save_int(3), lambda: self.save_str(endian),
                         lambda: self.save_const(None), lambda: self.save_const(None),
                         lambda: self.save_const(None), lambda: self.save_int(elsize),
                         lambda: self.save_int(alignment), lambda: self.save_int(flags)])
        self._w(b"b")

    def save_str_new(self, s):  # a fresh (not interned) string object: memoized, never reused
        self._boundary()
        b = s.encode("utf-8")
        self._w(b"\x8c" + bytes([len(b)]) + b)
        self._memoize(None)

    def save_array(self, shape, descr, nbytes, write):
        """numpy's array_reduce: _reconstruct(ndarray, (0,), b'b') + BUILD (1, shape, dtype,
        False, data)."""
        self._boundary()
        self.save_global(self.numpy_module, "_reconstruct")
        self.save_tuple([lambda: self.save_global("numpy", "ndarray"),
                         lambda: self.save_tuple([lambda: self.save_int(0)]),
                         self.save_bytes_b])
        self._w(b"R")
        self._memoize(None)
        if descr == "bfloat16":
            dt = ("bfloat16", "<", 2, 2, 0x50)
        else:
            dt = (descr, "|" if descr[1:] == "1" else "<", -1, -1, 0)
        self.save_tuple([lambda: self.save_int(1),
                         lambda: self.save_tuple([(lambda d: lambda: self.save_int(d))(d)
                                                  for d in shape]),
                         lambda: self.save_dtype(*dt),
                         lambda: self.save_const(False),
                         lambda: self.save_payload(nbytes, write)])
        self._w(b"b")

    def dump(self, kind, shape, write_w, scales_shape=None, write_s=None):
        """Writes one checkpoint file. write_w / write_s are callbacks write(out) that call
        out(bytes) with the payload (never called when sparse)."""
        self._out(b"\x80\x04")  # PROTO 4
        n_w = int(np.prod(shape)) * (1 if kind == "qw8" else 4)
        if kind == "f32":
            self.save_array(shape, "f4", n_w, write_w)
        else:
            n_s = int(np.prod(scales_shape)) * 2
            self._boundary()
            self.save_global("__main__", "QuantizedWeight8bit")
            self.save_tuple([])
            self._w(b"\x81")  # NEWOBJ
            self._memoize(None)
            self._boundary()
            self._w(b"}")  # EMPTY_DICT
            self._memoize(None)
            self._w(b"(")
            self.save_str("weight")
            self.save_array(shape, "i1", n_w, write_w)
            self.save_str("scales")
            self.save_array(scales_shape, "bfloat16", n_s, write_s)
            self._w(b"u")  # SETITEMS
            self._w(b"b")  # BUILD
        self._w(b".")  # STOP
        self._commit()
        if self.sparse:
            self.f.truncate(self.pos)  # the tail might end in a hole


# ---- the checkpoint ----------------------------------------------------------------------------


def _crc(b):
    return zlib.crc32(memoryview(b).cast("B")) & 0xFFFFFFFF


def _samples(kind, w, s_bits, rng, n=6):
    """A few (index, value) pairs: f32 values at flat indices, or dequantized W[(e,) i, o]."""
    out = []
    for _ in range(n):
        idx = tuple(int(rng.integers(0, d)) for d in w.shape)
        if kind == "f32":
            out.append([list(idx), float(w[idx])])
        else:
            *lead, i, o = idx
            nb = s_bits.shape[-2]
            blk = w.shape[-2] // nb
            scale = bf16_bits_to_f32(np.array([s_bits[tuple(lead) + (i // blk, o)]]))[0]
            out.append([list(idx), float(np.float32(w[idx]) * scale)])
    return out


PICKLER_MAX_BYTES = 256 << 20  # tensors above this are written by the StreamWriter
DENSE_LIMIT_BYTES = 64 << 30  # refuse to write more random data than this without --force


def payload_bytes(c):
    """Total payload bytes of a checkpoint for config c."""
    total = 0
    for _, _, kind, shape, sshape in parameter_specs(c):
        total += int(np.prod(shape)) * (1 if kind == "qw8" else 4)
        if sshape is not None:
            total += int(np.prod(sshape)) * 2
    return total


def write_checkpoint(c, out, seed=0, sparse=False, config_json="auto", numpy_module=None,
                     writer="pickle", progress=None):
    """Writes the checkpoint for config dict c into directory out. Returns the expected-values
    sidecar (a dict, also written to out/expected.json)."""
    if numpy_module is None:
        numpy_module = "numpy.core.multiarray"
    ckpt = os.path.join(out, "ckpt-0")
    if os.path.isdir(ckpt):
        shutil.rmtree(ckpt)
    os.makedirs(ckpt)
    specs = parameter_specs(c)
    if writer == "pickle" and (sparse or numpy_module != "numpy.core.multiarray"):
        writer = "stream"
    sidecar = dict(config=c, seed=seed, sparse=sparse, tensors=[])
    for index, (module, param, kind, shape, sshape) in enumerate(specs):
        name = module + "/" + param
        path = os.path.join(ckpt, file_name(index))
        entry = dict(index=index, file=file_name(index), name=name, kind=kind, shape=list(shape))
        if sshape is not None:
            entry["scales_shape"] = list(sshape)
        if sparse:
            with open(path, "wb") as f:
                sw = StreamWriter(f, sparse=True, numpy_module=numpy_module)
                sw.dump(kind, shape, None, sshape, None)
            entry["payload_offsets"] = sw.payload_offsets
        else:
            rng = np.random.default_rng([seed, index])
            w, s = make_values(kind, name, shape, sshape, rng)
            # Python's pickler holds a whole file in memory: stream the big ones (same bytes).
            if writer == "pickle" and w.nbytes < PICKLER_MAX_BYTES:
                obj = w if kind == "f32" else QuantizedWeight8bit(w, Bf16Array(s))
                data = pickle_release_object(obj)
                with open(path, "wb") as f:
                    f.write(data)
            else:
                with open(path, "wb") as f:
                    sw = StreamWriter(f, numpy_module=numpy_module)
                    sw.dump(kind, shape, lambda o: o(memoryview(w).cast("B")), sshape,
                            None if s is None else (lambda o: o(memoryview(s).cast("B"))))
            entry["crc32"] = _crc(w)
            entry["sum"] = float(w.astype(np.float64).sum())
            if s is not None:
                entry["scales_crc32"] = _crc(s)
                entry["scales_sum"] = float(bf16_bits_to_f32(s).astype(np.float64).sum())
            entry["samples"] = _samples(kind, w, s, np.random.default_rng([seed, index, 7]))
        sidecar["tensors"].append(entry)
        if progress:
            progress(index + 1, len(specs))

    emb, att = derived_multipliers(c["d_model"], c["head_dim"])
    full = dict(READER_DEFAULTS, embedding_multiplier=emb, attn_logit_multiplier=att)
    want = dict(head_dim=c["head_dim"], top_k=c["top_k"], max_seq_len=c["max_seq_len"])
    for k in ("rope_base", "rms_eps", "output_multiplier", "attn_softcap",
              "embedding_multiplier", "attn_logit_multiplier"):
        if k in c:
            want[k] = c[k]
    cfg_path = os.path.join(out, "config.json")
    if config_json == "always":
        cfg = dict(want, embedding_multiplier=c.get("embedding_multiplier", emb),
                   attn_logit_multiplier=c.get("attn_logit_multiplier", att))
    else:
        cfg = {k: v for k, v in want.items() if full.get(k) != v}
    if config_json == "never" or (config_json == "auto" and not cfg):
        if os.path.exists(cfg_path):
            os.remove(cfg_path)
    else:
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(sidecar, f, indent=1)
        f.write("\n")
    return sidecar


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(PRESETS), default="tiny",
                    help="preset matching grok1::Config::full()/tiny()/demo() (default tiny)")
    ap.add_argument("--out", required=True, help="output directory (ckpt-0/ is replaced)")
    ap.add_argument("--vocab", type=int)
    ap.add_argument("--d-model", type=int)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--heads", type=int, help="query heads")
    ap.add_argument("--kv-heads", type=int)
    ap.add_argument("--head-dim", type=int)
    ap.add_argument("--experts", type=int)
    ap.add_argument("--d-ff", type=int, help="expert FFN width F")
    ap.add_argument("--top-k", type=int)
    ap.add_argument("--max-seq-len", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sparse", action="store_true",
                    help="leave every payload as a file hole (zeros): real shapes, tiny disk use")
    ap.add_argument("--config-json", choices=["auto", "always", "never"], default="auto",
                    help="write config.json: only keys a reader cannot infer (auto), all, none")
    ap.add_argument("--numpy-module", default="numpy.core.multiarray",
                    help="module of _reconstruct (numpy 2 writes numpy._core.multiarray)")
    ap.add_argument("--writer", choices=["pickle", "stream"], default="pickle",
                    help="Python's pickler (default) or the streaming writer (same bytes)")
    ap.add_argument("--force", action="store_true",
                    help="write more than 64 GB of random weights without --sparse")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)

    c = dict(PRESETS[a.config])
    for k in ("vocab", "d_model", "layers", "heads", "kv_heads", "head_dim", "experts", "d_ff",
              "top_k", "max_seq_len"):
        v = getattr(a, k)
        if v is not None:
            c[k] = v
    for k, v in c.items():
        if v <= 0:
            ap.error("--%s must be > 0" % k.replace("_", "-"))
    if c["heads"] % c["kv_heads"]:
        ap.error("--heads must be a multiple of --kv-heads")
    if c["top_k"] > c["experts"]:
        ap.error("--top-k must be <= --experts")

    def progress(done, total):
        if not a.quiet and (done == total or done % 64 == 0):
            print("\rwrote %d/%d files" % (done, total), end="\n" if done == total else "",
                  file=sys.stderr, flush=True)

    if not a.sparse and payload_bytes(c) > DENSE_LIMIT_BYTES and not a.force:
        ap.error("this config has %.1f GB of weights; use --sparse (file holes) or --force"
                 % (payload_bytes(c) / 1e9))
    write_checkpoint(c, a.out, seed=a.seed, sparse=a.sparse, config_json=a.config_json,
                     numpy_module=a.numpy_module, writer=a.writer, progress=progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
