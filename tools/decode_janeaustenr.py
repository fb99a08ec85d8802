#!/usr/bin/python3
"""Decodes the six novels of Debian's r-cran-janeaustenr package to plain UTF-8 text.

    decode_janeaustenr.py DATA_DIR [--paragraphs] [--out FILE]

DATA_DIR is the package's usr/lib/R/site-library/janeaustenr/data (after `dpkg -x`), holding R's
lazy-load database of the data sets:

  Rdata.rdx   gzip of an R serialization: a list (variables, references, compressed) whose
              `variables` maps each data set's name to the (offset, length) of its block.
  Rdata.rdb   the blocks, back to back. A block is a 4-byte big-endian length (of the
              uncompressed bytes) followed by a zlib stream of that many bytes, holding the R
              serialization of one object: here a character vector, one element per line.

An R serialization (format "X\\n", XDR = big-endian) is a header (version, writer and reader R
versions, and for version 3 the native encoding) and one item. An item starts with a 32-bit flags
word: the low byte is the type (16 = character vector, 9 = string, 19 = list, 13 = integer vector,
2 = pairlist, 1 = symbol, 254 = NULL, 255 = a back-reference to an earlier symbol), bit 9 says
attributes follow, bit 10 that a pairlist tag follows. Strings are a 32-bit length (-1 = NA) and
the bytes. This script reads exactly the item types the package uses and rejects anything else.

Output: the novels in the index's order (Emma, Mansfield Park, Northanger Abbey, Persuasion,
Pride and Prejudice, Sense and Sensibility). By default the text is as stored: one line per
element (printed lines of the Gutenberg editions, wrapped at ~70 characters, blank lines between
paragraphs). With --paragraphs, each paragraph (a run of non-blank lines) is joined into one line
with single spaces and blank lines are dropped: one paragraph per line, the form scripts/get_corpus
trains on. Standard library only; prints the books and their sizes on stderr.
"""
import argparse
import gzip
import os
import struct
import sys
import zlib

# R's SEXP types used by the package's data and index.
NILVALUE, SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, STRSXP, VECSXP, REFSXP = (
    254, 1, 2, 9, 10, 13, 16, 19, 255)
HAS_ATTR, HAS_TAG = 1 << 9, 1 << 10
LATIN1, UTF8 = 1 << 2, 1 << 3  # CHARSXP encoding bits of the "levels" field (flags >> 12)


class DecodeError(Exception):
    pass


class RObject:
    """A vector with attributes (e.g. a named list)."""

    def __init__(self, value, attrs):
        self.value = value
        self.attrs = attrs

    def named(self):
        names = self.attrs.get("names")
        if names is None or len(names) != len(self.value):
            raise DecodeError("expected a named list")
        return dict(zip(names, self.value))


class XdrReader:
    def __init__(self, data, what):
        self.data = data
        self.what = what
        self.pos = 0
        self.refs = []  # symbols, in order of appearance (REFSXP indices are 1-based)

    def fail(self, msg):
        raise DecodeError("%s: %s (byte %d)" % (self.what, msg, self.pos))

    def take(self, n):
        if n < 0 or self.pos + n > len(self.data):
            self.fail("truncated: need %d bytes, %d left" % (n, len(self.data) - self.pos))
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def int(self):
        return struct.unpack(">i", self.take(4))[0]

    def header(self):
        if self.take(2) != b"X\n":
            self.fail("not an R XDR serialization (no 'X\\n' magic)")
        version = self.int()
        if version not in (2, 3):
            self.fail("unsupported serialization version %d" % version)
        self.int()  # R version that wrote it
        self.int()  # minimal R version to read it
        if version == 3:
            self.take(self.int())  # native encoding name, e.g. "UTF-8"

    def length(self):
        n = self.int()
        if n == -1:  # long vector: two more words
            hi, lo = self.int(), self.int()
            n = (hi << 32) | lo
        if n < 0:
            self.fail("negative length %d" % n)
        return n

    def string(self, flags):
        n = self.int()
        if n == -1:
            return None  # NA_character_
        raw = self.take(n)
        enc = "latin-1" if (flags >> 12) & LATIN1 else "utf-8"
        try:
            return raw.decode(enc)
        except UnicodeDecodeError as e:
            self.fail("string is not valid %s: %s" % (enc, e))

    def item(self):
        flags = self.int()
        kind = flags & 0xFF
        if kind == NILVALUE:
            return None
        if kind == REFSXP:
            i = flags >> 8 or self.int()
            if not 1 <= i <= len(self.refs):
                self.fail("reference %d to an unknown object" % i)
            return self.refs[i - 1]
        if kind == SYMSXP:
            name = self.item()
            self.refs.append(name)
            return name
        if kind == CHARSXP:
            return self.string(flags)
        if kind == LISTSXP:  # pairlist: (attr) (tag) car, then cdr; returned as a dict
            out = {}
            while kind == LISTSXP:
                if flags & HAS_ATTR:
                    self.item()
                tag = self.item() if flags & HAS_TAG else None
                out[tag] = self.item()
                flags = self.int()
                kind = flags & 0xFF
            if kind != NILVALUE:
                self.fail("pairlist ends in type %d, expected NULL" % kind)
            return out
        if kind == STRSXP:
            n = self.length()
            value = []
            for _ in range(n):
                f = self.int()
                if f & 0xFF != CHARSXP:
                    self.fail("character vector element of type %d" % (f & 0xFF))
                value.append(self.string(f))
        elif kind in (INTSXP, LGLSXP):
            n = self.length()
            value = list(struct.unpack(">%di" % n, self.take(4 * n)))
        elif kind == VECSXP:
            value = [self.item() for _ in range(self.length())]
        else:
            self.fail("unsupported R object type %d" % kind)
        if flags & HAS_ATTR:
            attrs = self.item()
            if not isinstance(attrs, dict):
                self.fail("attributes are not a pairlist")
            return RObject(value, attrs)
        return value

    def done(self):
        if self.pos != len(self.data):
            self.fail("%d unexpected bytes after the object" % (len(self.data) - self.pos))


def unserialize(data, what):
    r = XdrReader(data, what)
    r.header()
    obj = r.item()
    r.done()
    return obj


def read_index(path):
    """[(name, offset, length)] of the data sets, in the index's order."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DecodeError("%s: cannot read the gzip index: %s" % (path, e))
    index = unserialize(data, path)
    if not isinstance(index, RObject):
        raise DecodeError("%s: the index is not a named list" % path)
    fields = index.named()
    compressed = fields.get("compressed")
    if compressed not in ([1], [True]):
        raise DecodeError("%s: blocks are compressed with method %r, only zlib (1) is supported"
                          % (path, compressed))
    variables = fields.get("variables")
    if not isinstance(variables, RObject):
        raise DecodeError("%s: no 'variables' table" % path)
    out = []
    for name, where in variables.named().items():
        if not (isinstance(where, list) and len(where) == 2):
            raise DecodeError("%s: entry %r is not an (offset, length) pair" % (path, name))
        out.append((name, where[0], where[1]))
    return out


def read_block(db, name, offset, length, path):
    """The character vector stored at db[offset : offset + length]."""
    what = "%s, block %r at byte %d" % (path, name, offset)
    if offset < 0 or length < 4 or offset + length > len(db):
        raise DecodeError("%s: length %d goes past the end of the file (%d bytes)"
                          % (what, length, len(db)))
    size = struct.unpack(">I", db[offset:offset + 4])[0]
    try:
        raw = zlib.decompress(db[offset + 4:offset + length])
    except zlib.error as e:
        raise DecodeError("%s: bad zlib stream: %s" % (what, e))
    if len(raw) != size:
        raise DecodeError("%s: %d bytes uncompressed, the header says %d" % (what, len(raw), size))
    lines = unserialize(raw, what)
    if not isinstance(lines, list) or not all(isinstance(s, str) or s is None for s in lines):
        raise DecodeError("%s: not a character vector" % what)
    return ["" if s is None else s for s in lines]


def paragraphs(lines):
    """Joins each run of non-blank lines into one line (single spaces)."""
    out, current = [], []
    for line in lines:
        words = line.split()
        if words:
            current.extend(words)
        elif current:
            out.append(" ".join(current))
            current = []
    if current:
        out.append(" ".join(current))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", help="janeaustenr's data directory (Rdata.rdb, Rdata.rdx)")
    ap.add_argument("--paragraphs", action="store_true",
                    help="one paragraph per line instead of the stored line wrapping")
    ap.add_argument("--out", help="output file (default: stdout)")
    a = ap.parse_args(argv)
    rdb = os.path.join(a.data_dir, "Rdata.rdb")
    rdx = os.path.join(a.data_dir, "Rdata.rdx")
    try:
        index = read_index(rdx)
        with open(rdb, "rb") as f:
            db = f.read()
        books = []
        for name, offset, length in index:
            lines = read_block(db, name, offset, length, rdb)
            books.append((name, paragraphs(lines) if a.paragraphs else lines))
    except (OSError, DecodeError) as e:
        print("decode_janeaustenr: error: %s" % e, file=sys.stderr)
        return 1
    if len(books) != 6:
        print("decode_janeaustenr: error: %s holds %d data sets, expected the six novels"
              % (rdx, len(books)), file=sys.stderr)
        return 1
    text = "\n".join("\n".join(lines) for _, lines in books) + "\n"
    for name, lines in books:
        print("decode_janeaustenr: %-18s %6d lines %8d bytes"
              % (name, len(lines), sum(len(s.encode()) + 1 for s in lines)), file=sys.stderr)
    data = text.encode("utf-8")
    if a.out:
        with open(a.out, "wb") as f:
            f.write(data)
    else:
        sys.stdout.buffer.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
