// moe/io/pickle.hpp: a data-only pickle reader for numpy arrays and caller-allowed classes.
//
// Python's pickle format is a little stack machine. The real unpickler imports and CALLS any
// global a file names (`os.system` via GLOBAL + REDUCE is the classic exploit). This reader is a
// separate, much smaller VM that never executes anything: it knows a whitelist of opcodes (one
// table: byte, name, handler) and a whitelist of globals, treats those globals as symbols, and
// only builds the few objects a checkpoint file holds. Everything else is rejected with a
// FormatError naming the file, the byte offset and the opcode or global.
//
// What a file may contain (see docs/checkpoint-format.md for the byte-level listing):
//   * a numpy ndarray:  numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b') + BUILD
//     (1, shape, dtype, fortran_order, data)   [numpy 1.x, pickle protocols 2-4]
//     or numpy.core.numeric._frombuffer(data, dtype, shape, order)   [protocol 5]
//     with dtype = numpy.dtype(descr, False, True) + BUILD (3, endian, None, None, None, elsize,
//     alignment, flags); descr is 'f4', 'i1', ... or the global ml_dtypes.bfloat16.
//     `numpy._core.*` (numpy 2) is accepted wherever `numpy.core.*` is.
//   * an instance of a class the CALLER allows (PickleClass: module, name, the array attributes
//     its state sets), created with NEWOBJ (no arguments) + BUILD with a dict state of exactly
//     those attributes, each a numpy ndarray. The reader knows no model: e.g. Grok-1's
//     QuantizedWeight8bit {weight, scales} is declared in moe/models/grok1_checkpoint.hpp.
//
// Array payloads are zero-copy: Array::data points into the caller's buffer (a MappedFile) at
// the payload's offset, and the payload bytes are never read, only bounds-checked; parsing a
// 1.6 GB file touches its first and last few hundred bytes. Checked: every length and offset
// against the end of the input, shape products and byte counts for overflow, payload size ==
// prod(shape) * itemsize, C order, little-endian (or byte-order-free) dtypes, memo indices,
// stack underflow across MARKs, and fixed limits on stack depth, MARK nesting, memo size, object
// count and ndim (PickleLimits), so that a hostile file cannot exhaust memory or time.
//
// The pointer in Array::data has the file's alignment: a float32 payload at an odd offset is NOT
// 4-byte aligned (this happens in the Grok-1 release). Check Array::aligned() before casting.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <moe/core/error.hpp>

namespace moe::io {

static_assert(std::endian::native == std::endian::little,
              "moe's zero-copy readers expose little-endian file data directly");

/// Element types a pickled numpy array may have.
enum class DType : std::uint8_t {
  kBool,
  kI8,
  kU8,
  kI16,
  kU16,
  kI32,
  kU32,
  kI64,
  kU64,
  kF16,
  kBF16,
  kF32,
  kF64,
};

/// numpy's name of a dtype ("float32", "int8", "bfloat16", ...).
inline constexpr std::string_view dtype_name(DType t) noexcept {
  switch (t) {
    case DType::kBool:
      return "bool";
    case DType::kI8:
      return "int8";
    case DType::kU8:
      return "uint8";
    case DType::kI16:
      return "int16";
    case DType::kU16:
      return "uint16";
    case DType::kI32:
      return "int32";
    case DType::kU32:
      return "uint32";
    case DType::kI64:
      return "int64";
    case DType::kU64:
      return "uint64";
    case DType::kF16:
      return "float16";
    case DType::kBF16:
      return "bfloat16";
    case DType::kF32:
      return "float32";
    case DType::kF64:
      return "float64";
  }
  return "?";
}

/// Bytes per element.
inline constexpr std::size_t dtype_size(DType t) noexcept {
  switch (t) {
    case DType::kBool:
    case DType::kI8:
    case DType::kU8:
      return 1;
    case DType::kI16:
    case DType::kU16:
    case DType::kF16:
    case DType::kBF16:
      return 2;
    case DType::kI32:
    case DType::kU32:
    case DType::kF32:
      return 4;
    case DType::kI64:
    case DType::kU64:
    case DType::kF64:
      return 8;
  }
  return 0;
}

/// A C-order, little-endian array whose bytes live in the parsed buffer (zero-copy).
struct Array {
  DType dtype = DType::kF32;
  std::vector<std::size_t> shape;
  const std::byte* data = nullptr;  ///< first payload byte, inside the parsed buffer
  std::size_t nbytes = 0;           ///< == numel() * dtype_size(dtype)
  std::size_t offset = 0;           ///< byte offset of `data` in the parsed buffer

  [[nodiscard]] std::size_t ndim() const noexcept { return shape.size(); }
  [[nodiscard]] std::size_t numel() const noexcept {
    std::size_t n = 1;
    for (std::size_t d : shape) n *= d;  // cannot overflow: checked by the parser
    return n;
  }
  /// True when `data` is aligned for its element type (so it may be read as T*).
  [[nodiscard]] bool aligned() const noexcept {
    return reinterpret_cast<std::uintptr_t>(data) % dtype_size(dtype) == 0;
  }
  /// "float32 [6144, 8]"
  [[nodiscard]] std::string describe() const {
    return std::string(dtype_name(dtype)) + " " + shape_str(shape);
  }
};

/// A class the caller allows in a pickle. It is never imported or called: a file may name it
/// (GLOBAL / STACK_GLOBAL), create it with NEWOBJ without arguments, and fill it with BUILD and a
/// dict state whose keys are `attributes` (all required, nothing else), each a numpy ndarray.
struct PickleClass {
  std::string_view module;  ///< e.g. "__main__"; empty: any module (a dotted identifier)
  std::string_view name;    ///< e.g. "QuantizedWeight8bit"
  std::span<const std::string_view> attributes;  ///< the array attributes of its state
};

/// An instance of an allowed class: its attributes, in the order of PickleClass::attributes.
struct PickledInstance {
  std::size_t class_index = 0;  ///< into the classes given to parse_pickle
  std::string class_name;       ///< as pickled, e.g. "__main__.QuantizedWeight8bit"
  std::vector<Array> attributes;
};

/// The object a file holds: a plain array or an instance of an allowed class.
using PickledObject = std::variant<Array, PickledInstance>;

/// Resource limits of the VM (defaults are generous for checkpoint files, which use a few dozen
/// objects, and small enough that a hostile file cannot make the parser use more than ~20 MB).
struct PickleLimits {
  std::size_t max_stack = 1 << 14;    ///< values on the stack
  std::size_t max_marks = 256;        ///< MARK nesting depth
  std::size_t max_memo = 1 << 16;     ///< memo slots (and largest memo index + 1)
  std::size_t max_objects = 1 << 16;  ///< objects created
  std::size_t max_items = 1 << 18;    ///< total items in all tuples, lists and dicts
  std::size_t max_ndim = 32;          ///< array rank (numpy 1.x's NPY_MAXDIMS)
  std::size_t max_global_name = 512;  ///< bytes of a GLOBAL module or name
};

namespace detail {

/// The symbols the whitelisted globals stand for.
enum class PickleGlobal : std::uint8_t {
  kReconstruct,  ///< numpy.core.multiarray._reconstruct
  kNdarray,      ///< numpy.ndarray
  kDtype,        ///< numpy.dtype
  kFrombuffer,   ///< numpy.core.numeric._frombuffer (protocol 5 arrays)
  kBfloat16,     ///< ml_dtypes.bfloat16 (the scalar type numpy pickles as the dtype descr)
  kClass,        ///< a class the caller allows (PickleClass)
};

inline bool is_dotted_identifier(std::string_view s) noexcept {
  if (s.empty()) return false;
  bool start = true;
  for (char ch : s) {
    const bool alpha = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
    const bool digit = ch >= '0' && ch <= '9';
    if (ch == '.') {
      if (start) return false;
      start = true;
    } else if (alpha || (digit && !start)) {
      start = false;
    } else {
      return false;
    }
  }
  return !start;
}

/// Maps (module, name) to a whitelisted numpy / ml_dtypes symbol; false if not whitelisted.
inline bool resolve_numpy_global(std::string_view module, std::string_view name,
                                 PickleGlobal& out) noexcept {
  const bool np_multiarray =
      module == "numpy.core.multiarray" || module == "numpy._core.multiarray";
  const bool np_numeric = module == "numpy.core.numeric" || module == "numpy._core.numeric";
  if (np_multiarray && name == "_reconstruct") {
    out = PickleGlobal::kReconstruct;
  } else if ((module == "numpy" || np_multiarray) && name == "ndarray") {
    out = PickleGlobal::kNdarray;
  } else if ((module == "numpy" || np_multiarray) && name == "dtype") {
    out = PickleGlobal::kDtype;
  } else if (np_numeric && name == "_frombuffer") {
    out = PickleGlobal::kFrombuffer;
  } else if (module == "ml_dtypes" && name == "bfloat16") {
    out = PickleGlobal::kBfloat16;
  } else {
    return false;
  }
  return true;
}

/// Index of the allowed class named (module, name), or classes.size().
inline std::size_t find_pickle_class(std::span<const PickleClass> classes, std::string_view module,
                                     std::string_view name) noexcept {
  for (std::size_t i = 0; i < classes.size(); ++i) {
    const PickleClass& c = classes[i];
    const bool module_ok = c.module.empty() ? is_dotted_identifier(module) : module == c.module;
    if (module_ok && name == c.name) return i;
  }
  return classes.size();
}

/// "*.QuantizedWeight8bit" / "__main__.Foo": how a class is named in messages.
inline std::string pickle_class_pattern(const PickleClass& c) {
  return (c.module.empty() ? std::string("*") : std::string(c.module)) + "." + std::string(c.name);
}

/// numpy dtype descr strings ("f4", "i1", ...; the byte order is in the BUILD state).
inline bool parse_dtype_descr(std::string_view s, DType& out) noexcept {
  struct Entry {
    const char* descr;
    DType type;
  };
  static constexpr Entry kTable[] = {
      {"b1", DType::kBool}, {"i1", DType::kI8},  {"u1", DType::kU8},  {"i2", DType::kI16},
      {"u2", DType::kU16},  {"i4", DType::kI32}, {"u4", DType::kU32}, {"i8", DType::kI64},
      {"u8", DType::kU64},  {"f2", DType::kF16}, {"f4", DType::kF32}, {"f8", DType::kF64},
  };
  for (const Entry& e : kTable) {
    if (s == e.descr) {
      out = e.type;
      return true;
    }
  }
  return false;
}

class PickleVM {
 public:
  PickleVM(std::span<const std::byte> in, std::string_view name,
           std::span<const PickleClass> classes, const PickleLimits& limits)
      : in_(in), name_(name), classes_(classes), lim_(limits) {}

  PickledObject run() {
    while (result_ == kNone) {
      op_at_ = pos_;
      if (pos_ >= in_.size()) {
        op_ = nullptr;
        throw error_at(pos_, "", "file ends without a STOP opcode (truncated?)");
      }
      step(u8(in_[pos_++]));
    }
    if (pos_ != in_.size()) {
      throw error_at(pos_, "",
                     std::to_string(in_.size() - pos_) + " unexpected bytes after the STOP opcode");
    }
    return extract(result_);
  }

 private:
  static constexpr std::uint32_t kNone = 0xffffffffu;

  enum class Kind : std::uint8_t {
    kNone,
    kBool,
    kInt,
    kFloat,
    kStr,
    kBytes,
    kTuple,
    kList,
    kDict,
    kGlobal,
    kDtype,
    kNdarray,
    kInstance,
  };

  struct Node {
    Kind kind = Kind::kNone;
    bool built = false;                // kBool: value; kDtype/kNdarray/kInstance: BUILD done
    std::int64_t i = 0;                // kInt
    std::size_t off = 0;               // kStr/kBytes: first byte in the input
    std::size_t len = 0;               // kStr/kBytes: length
    PickleGlobal global{};             // kGlobal
    std::size_t cls = 0;               // kGlobal (kClass) / kInstance: index into classes_
    DType dtype{};                     // kDtype
    char endian = '=';                 // kDtype
    std::size_t array = 0;             // kNdarray (built): index into arrays_
    std::vector<std::uint32_t> items;  // kTuple/kList; kDict: key0, value0, ...; kInstance: attrs
    std::string name;                  // kGlobal / kInstance: "module.name"
  };

  static std::uint8_t u8(std::byte b) noexcept { return static_cast<std::uint8_t>(b); }

  // ---- errors ----
  [[nodiscard]] FormatError error_at(std::size_t at, std::string_view opname,
                                     const std::string& msg) const {
    std::string s = "[pickle] '" + name_ + "' at byte " + std::to_string(at);
    if (!opname.empty()) s += " (" + std::string(opname) + ")";
    return FormatError(s + ": " + msg);
  }
  [[nodiscard]] FormatError error(const std::string& msg) const {
    return error_at(op_at_, op_ ? op_->name : "", msg);
  }

  // ---- reading the input ----
  std::size_t remaining() const noexcept { return in_.size() - pos_; }

  /// The opcode's fixed-size little-endian argument.
  template <class T>
  T read_le() {
    if (sizeof(T) > remaining()) {
      throw error(std::string(op_->name) + " needs " + std::to_string(sizeof(T)) +
                  " bytes but the file ends " + std::to_string(remaining()) +
                  " bytes later (truncated?)");
    }
    T v;
    std::memcpy(&v, in_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;  // little-endian host (static_assert above)
  }
  /// A length-prefixed blob: checks the length against the end of the file, returns its offset.
  std::size_t take(std::uint64_t len, const char* what) {
    if (len > remaining()) {
      throw error(std::string(what) + " length " + std::to_string(len) +
                  " goes past the end of the file (" + std::to_string(remaining()) +
                  " bytes left)");
    }
    const std::size_t off = pos_;
    pos_ += static_cast<std::size_t>(len);
    return off;
  }
  std::string_view text(std::size_t off, std::size_t len) const {
    return {reinterpret_cast<const char*>(in_.data()) + off, len};
  }
  std::string_view read_line(const char* what) {
    const std::size_t start = pos_;
    const std::size_t limit = std::min(remaining(), lim_.max_global_name + 1);
    for (std::size_t k = 0; k < limit; ++k) {
      if (u8(in_[start + k]) == '\n') {
        pos_ = start + k + 1;
        return text(start, k);
      }
    }
    if (limit == remaining()) throw error(std::string(what) + " runs past the end of the file");
    throw error(std::string(what) + " is longer than " + std::to_string(lim_.max_global_name) +
                " bytes");
  }

  // ---- objects ----
  std::uint32_t make(Kind k) {
    if (nodes_.size() >= lim_.max_objects) {
      throw error("more than " + std::to_string(lim_.max_objects) + " objects (limit)");
    }
    nodes_.emplace_back();
    nodes_.back().kind = k;
    return static_cast<std::uint32_t>(nodes_.size() - 1);
  }
  void count_items(std::size_t n) {
    items_ += n;
    if (items_ > lim_.max_items) {
      throw error("more than " + std::to_string(lim_.max_items) + " container items (limit)");
    }
  }
  std::string describe(std::uint32_t id) const {
    const Node& n = nodes_[id];
    switch (n.kind) {
      case Kind::kNone:
        return "None";
      case Kind::kBool:
        return "a bool";
      case Kind::kInt:
        return "an int";
      case Kind::kFloat:
        return "a float";
      case Kind::kStr:
        return "a str";
      case Kind::kBytes:
        return "a bytes object";
      case Kind::kTuple:
        return "a tuple of " + std::to_string(n.items.size());
      case Kind::kList:
        return "a list";
      case Kind::kDict:
        return "a dict";
      case Kind::kGlobal:
        return "the global '" + n.name + "'";
      case Kind::kDtype:
        return "a numpy.dtype";
      case Kind::kNdarray:
        return "a numpy.ndarray";
      case Kind::kInstance:
        return "a " + std::string(classes_[n.cls].name);
    }
    return "?";
  }

  // ---- the stack ----
  std::size_t fence() const noexcept { return marks_.empty() ? 0 : marks_.back(); }
  void push(std::uint32_t id) {
    if (stack_.size() >= lim_.max_stack) {
      throw error("stack deeper than " + std::to_string(lim_.max_stack) + " (limit)");
    }
    stack_.push_back(id);
  }
  std::uint32_t pop() {
    if (stack_.size() <= fence()) throw error("stack underflow");
    const std::uint32_t v = stack_.back();
    stack_.pop_back();
    return v;
  }
  std::uint32_t& top() {
    if (stack_.size() <= fence()) throw error("stack underflow");
    return stack_.back();
  }
  /// Pops everything above the innermost MARK (and the MARK).
  std::vector<std::uint32_t> pop_mark() {
    if (marks_.empty()) throw error("no MARK on the stack");
    const std::size_t m = marks_.back();
    marks_.pop_back();
    std::vector<std::uint32_t> v(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return v;
  }
  std::uint32_t make_seq(Kind k, std::vector<std::uint32_t> items) {
    count_items(items.size());
    const std::uint32_t id = make(k);
    nodes_[id].items = std::move(items);
    return id;
  }
  std::uint32_t make_int(std::int64_t v) {
    const std::uint32_t id = make(Kind::kInt);
    nodes_[id].i = v;
    return id;
  }
  std::uint32_t make_blob(Kind k, std::uint64_t len, const char* what) {
    const std::size_t off = take(len, what);
    const std::uint32_t id = make(k);
    nodes_[id].off = off;
    nodes_[id].len = static_cast<std::size_t>(len);
    return id;
  }
  void set_items(std::uint32_t dict, const std::vector<std::uint32_t>& kv) {
    if (nodes_[dict].kind != Kind::kDict) {
      throw error("cannot set items on " + describe(dict) + " (expected a dict)");
    }
    if (kv.size() % 2 != 0) throw error("odd number of items for a dict");
    count_items(kv.size());
    // Appended in order; a repeated key is resolved by its last value where the dict is read
    // (QuantizedWeight8bit's state), as in Python. No per-insert lookup: that would be
    // quadratic in the number of keys of a hostile dict.
    std::vector<std::uint32_t>& items = nodes_[dict].items;
    items.insert(items.end(), kv.begin(), kv.end());
  }
  std::string_view str(std::uint32_t id) const { return text(nodes_[id].off, nodes_[id].len); }

  // ---- the memo ----
  void memo_put(std::uint64_t idx) {
    if (idx >= lim_.max_memo) {
      throw error("memo index " + std::to_string(idx) + " is too large (limit " +
                  std::to_string(lim_.max_memo) + ")");
    }
    const std::uint32_t v = top();
    if (memo_.size() <= idx) memo_.resize(static_cast<std::size_t>(idx) + 1, kNone);
    if (memo_[static_cast<std::size_t>(idx)] == kNone) ++memo_count_;
    memo_[static_cast<std::size_t>(idx)] = v;
  }
  void memo_get(std::uint64_t idx) {
    if (idx >= memo_.size() || memo_[static_cast<std::size_t>(idx)] == kNone) {
      throw error("memo index " + std::to_string(idx) + " is out of range (the memo has " +
                  std::to_string(memo_.size()) + " entries)");
    }
    push(memo_[static_cast<std::size_t>(idx)]);
  }

  // ---- globals ----
  void push_global(std::string_view module, std::string_view name) {
    const std::string full = std::string(module) + "." + std::string(name);
    PickleGlobal g = PickleGlobal::kClass;
    const std::size_t cls = find_pickle_class(classes_, module, name);
    if (cls == classes_.size() && !resolve_numpy_global(module, name, g)) {
      if (full == "_codecs.encode") {
        throw error(
            "global '_codecs.encode' is not allowed: protocol 2 stores bytes as "
            "_codecs.encode(str, 'latin1'); re-pickle with protocol 3 or later");
      }
      throw error("global '" + full +
                  "' is not allowed (a data-only reader accepts only numpy._reconstruct, "
                  "numpy.ndarray, numpy.dtype, numpy _frombuffer, ml_dtypes.bfloat16" +
                  allowed_classes(" and ") + ")");
    }
    const std::uint32_t id = make(Kind::kGlobal);
    nodes_[id].global = g;
    nodes_[id].cls = cls;
    nodes_[id].name = full;
    push(id);
  }
  /// "<prefix>*.A, *.B" for the caller's classes ("" when there are none).
  std::string allowed_classes(const char* prefix) const {
    std::string s;
    for (std::size_t i = 0; i < classes_.size(); ++i) {
      s += (i == 0 ? prefix : ", ") + pickle_class_pattern(classes_[i]);
    }
    return s;
  }
  bool is_global(std::uint32_t id, PickleGlobal g) const {
    return nodes_[id].kind == Kind::kGlobal && nodes_[id].global == g;
  }

  // ---- numpy objects ----
  /// The items of a tuple argument (a copy: creating objects may move nodes_).
  std::vector<std::uint32_t> tuple_arg(std::uint32_t args, std::size_t lo, std::size_t hi,
                                       const char* what) const {
    const Node& t = nodes_[args];
    if (t.kind != Kind::kTuple || t.items.size() < lo || t.items.size() > hi) {
      throw error(std::string(what) + " expects a tuple of " +
                  (lo == hi ? std::to_string(lo) : std::to_string(lo) + "-" + std::to_string(hi)) +
                  " items, got " + describe(args));
    }
    return t.items;
  }
  std::int64_t int_arg(std::uint32_t id, const char* what) const {
    const Node& n = nodes_[id];
    if (n.kind == Kind::kInt) return n.i;
    if (n.kind == Kind::kBool) return n.built ? 1 : 0;
    throw error(std::string(what) + " must be an int, got " + describe(id));
  }

  std::uint32_t reduce_dtype(std::uint32_t args) {
    const std::vector<std::uint32_t> t = tuple_arg(args, 1, 3, "numpy.dtype(...)");
    const std::uint32_t d = t[0];
    DType type{};
    if (is_global(d, PickleGlobal::kBfloat16)) {
      type = DType::kBF16;
    } else if (nodes_[d].kind == Kind::kStr) {
      if (!parse_dtype_descr(str(d), type)) {
        throw error("unsupported dtype '" + std::string(str(d)) +
                    "' (supported: b1 i1 u1 i2 u2 i4 u4 i8 u8 f2 f4 f8 and ml_dtypes.bfloat16)");
      }
    } else {
      throw error("numpy.dtype(...) descriptor must be a str or ml_dtypes.bfloat16, got " +
                  describe(d));
    }
    const std::uint32_t id = make(Kind::kDtype);
    nodes_[id].dtype = type;
    return id;
  }

  void build_dtype(std::uint32_t obj, std::uint32_t state) {
    Node& d = nodes_[obj];
    if (d.built) throw error("numpy.dtype is built twice");
    const std::vector<std::uint32_t> t = tuple_arg(state, 8, 9, "numpy.dtype state");
    const std::int64_t version = int_arg(t[0], "dtype state version");
    if (version != 3 && version != 4) {
      throw error("unsupported numpy.dtype state version " + std::to_string(version));
    }
    const std::uint32_t e = t[1];
    if (nodes_[e].kind != Kind::kStr || nodes_[e].len != 1) {
      throw error("dtype byte order must be a 1-character str, got " + describe(e));
    }
    const char endian = str(e)[0];
    const std::size_t size = dtype_size(nodes_[obj].dtype);
    const std::string type(dtype_name(nodes_[obj].dtype));
    if (endian == '>') {
      throw error("big-endian dtype >" + type + " is not supported (only little-endian data)");
    }
    if (endian != '<' && endian != '=' && endian != '|') {
      throw error(std::string("invalid dtype byte order '") + endian + "'");
    }
    if (endian == '|' && size != 1) {
      throw error("dtype " + type + " has byte order '|' (only valid for 1-byte types)");
    }
    for (std::size_t k = 2; k <= 4; ++k) {
      if (nodes_[t[k]].kind != Kind::kNone) {
        throw error("structured or sub-array dtypes are not supported (state item " +
                    std::to_string(k) + " is " + describe(t[k]) + ")");
      }
    }
    const std::int64_t elsize = int_arg(t[5], "dtype elsize");
    if (elsize != -1 && elsize != static_cast<std::int64_t>(size)) {
      throw error("dtype " + type + " declares an item size of " + std::to_string(elsize) +
                  " bytes, expected " + std::to_string(size));
    }
    (void)int_arg(t[6], "dtype alignment");
    (void)int_arg(t[7], "dtype flags");
    nodes_[obj].endian = endian;
    nodes_[obj].built = true;
  }

  /// Builds an Array from (shape, dtype, data), all checked.
  std::size_t make_array(std::uint32_t shape_id, std::uint32_t dtype_id, std::uint32_t data_id,
                         bool fortran) {
    if (nodes_[dtype_id].kind != Kind::kDtype) {
      throw error("array dtype must be a numpy.dtype, got " + describe(dtype_id));
    }
    const Node& shape = nodes_[shape_id];
    if (shape.kind != Kind::kTuple) {
      throw error("array shape must be a tuple, got " + describe(shape_id));
    }
    if (shape.items.size() > lim_.max_ndim) {
      throw error("array has " + std::to_string(shape.items.size()) + " dimensions (limit " +
                  std::to_string(lim_.max_ndim) + ")");
    }
    Array a;
    a.dtype = nodes_[dtype_id].dtype;
    const std::size_t item = dtype_size(a.dtype);
    std::size_t numel = 1;
    bool overflow = false;
    for (std::uint32_t d : shape.items) {
      const std::int64_t v = int_arg(d, "array dimension");
      if (v < 0) throw error("array has a negative dimension " + std::to_string(v));
      a.shape.push_back(static_cast<std::size_t>(v));
      overflow = overflow || __builtin_mul_overflow(numel, static_cast<std::size_t>(v), &numel);
    }
    std::size_t nbytes = 0;
    overflow = overflow || __builtin_mul_overflow(numel, item, &nbytes);
    if (overflow) {
      throw error("array shape " + shape_str(a.shape) + " x " + std::to_string(item) +
                  " bytes overflows 64 bits");
    }
    const Node& data = nodes_[data_id];
    if (data.kind != Kind::kBytes) {
      throw error("array data must be bytes, got " + describe(data_id) +
                  " (object arrays are not supported)");
    }
    if (data.len != nbytes) {
      throw error("array " + a.describe() + " needs " + std::to_string(nbytes) +
                  " bytes of data, the pickle has " + std::to_string(data.len));
    }
    if (fortran) {
      throw error("array " + a.describe() +
                  " is in Fortran (column-major) order; only C order is supported");
    }
    a.data = in_.data() + data.off;
    a.nbytes = nbytes;
    a.offset = data.off;
    arrays_.push_back(std::move(a));
    return arrays_.size() - 1;
  }

  void build_ndarray(std::uint32_t obj, std::uint32_t state) {
    if (nodes_[obj].built) throw error("numpy.ndarray is built twice");
    const std::vector<std::uint32_t> t = tuple_arg(state, 4, 5, "numpy.ndarray state");
    std::size_t k = 0;
    if (t.size() == 5) {
      const std::int64_t version = int_arg(t[0], "ndarray state version");
      if (version != 1) {
        throw error("unsupported numpy.ndarray state version " + std::to_string(version));
      }
      k = 1;
    }
    const bool fortran = int_arg(t[k + 2], "fortran_order flag") != 0;
    const std::size_t arr = make_array(t[k], t[k + 1], t[k + 3], fortran);
    nodes_[obj].array = arr;
    nodes_[obj].built = true;
  }

  std::uint32_t reduce_frombuffer(std::uint32_t args) {
    const std::vector<std::uint32_t> t = tuple_arg(args, 4, 4, "numpy _frombuffer(...)");
    const std::uint32_t order = t[3];
    if (nodes_[order].kind != Kind::kStr || (str(order) != "C" && str(order) != "F")) {
      throw error("_frombuffer order must be 'C' or 'F', got " + describe(order));
    }
    const bool fortran = str(order) == "F";
    // Fortran order of a 0/1-d array is C order; make_array rejects real Fortran data.
    const bool real_fortran =
        fortran && nodes_[t[2]].kind == Kind::kTuple && nodes_[t[2]].items.size() > 1;
    const std::size_t arr = make_array(t[2], t[1], t[0], real_fortran);
    const std::uint32_t id = make(Kind::kNdarray);
    nodes_[id].array = arr;
    nodes_[id].built = true;
    return id;
  }

  std::uint32_t reduce_reconstruct(std::uint32_t args) {
    const std::vector<std::uint32_t> t = tuple_arg(args, 3, 3, "_reconstruct(...)");
    if (!is_global(t[0], PickleGlobal::kNdarray)) {
      throw error("_reconstruct(...) must create a numpy.ndarray, got " + describe(t[0]));
    }
    return make(Kind::kNdarray);  // shape, dtype and data come with BUILD
  }

  // ---- the opcodes: one table of (byte, name, handler) -----------------------------------------

  using Handler = void (PickleVM::*)();
  struct Opcode {
    std::uint8_t code;
    const char* name;  ///< Python's pickletools name, for messages
    Handler run;       ///< nullptr: a pickle opcode this data-only reader does not allow
  };

  /// The entry of opcode byte `code`, or nullptr when it is not a pickle opcode.
  static const Opcode* opcode(std::uint8_t code) noexcept {
    static constexpr Opcode kTable[] = {
        {0x80, "PROTO", &PickleVM::op_proto},
        {0x95, "FRAME", &PickleVM::op_frame},
        {'.', "STOP", &PickleVM::op_stop},
        {'(', "MARK", &PickleVM::op_mark},
        {'0', "POP", &PickleVM::op_pop},
        {'1', "POP_MARK", &PickleVM::op_pop_mark},
        {'2', "DUP", &PickleVM::op_dup},
        {'N', "NONE", &PickleVM::op_none},
        {0x88, "NEWTRUE", &PickleVM::op_bool<true>},
        {0x89, "NEWFALSE", &PickleVM::op_bool<false>},
        {'K', "BININT1", &PickleVM::op_int<std::uint8_t>},
        {'M', "BININT2", &PickleVM::op_int<std::uint16_t>},
        {'J', "BININT", &PickleVM::op_int<std::int32_t>},
        {0x8a, "LONG1", &PickleVM::op_long<std::uint8_t>},
        {0x8b, "LONG4", &PickleVM::op_long<std::uint32_t>},
        {'G', "BINFLOAT", &PickleVM::op_binfloat},
        {0x8c, "SHORT_BINUNICODE", &PickleVM::op_blob<std::uint8_t, Kind::kStr>},
        {'X', "BINUNICODE", &PickleVM::op_blob<std::uint32_t, Kind::kStr>},
        {0x8d, "BINUNICODE8", &PickleVM::op_blob<std::uint64_t, Kind::kStr>},
        {'C', "SHORT_BINBYTES", &PickleVM::op_blob<std::uint8_t, Kind::kBytes>},
        {'B', "BINBYTES", &PickleVM::op_blob<std::uint32_t, Kind::kBytes>},
        {0x8e, "BINBYTES8", &PickleVM::op_blob<std::uint64_t, Kind::kBytes>},
        {0x96, "BYTEARRAY8", &PickleVM::op_blob<std::uint64_t, Kind::kBytes>},
        {')', "EMPTY_TUPLE", &PickleVM::op_empty<Kind::kTuple>},
        {']', "EMPTY_LIST", &PickleVM::op_empty<Kind::kList>},
        {'}', "EMPTY_DICT", &PickleVM::op_empty<Kind::kDict>},
        {'t', "TUPLE", &PickleVM::op_from_mark<Kind::kTuple>},
        {'l', "LIST", &PickleVM::op_from_mark<Kind::kList>},
        {0x85, "TUPLE1", &PickleVM::op_tuple_n<1>},
        {0x86, "TUPLE2", &PickleVM::op_tuple_n<2>},
        {0x87, "TUPLE3", &PickleVM::op_tuple_n<3>},
        {'a', "APPEND", &PickleVM::op_append},
        {'e', "APPENDS", &PickleVM::op_appends},
        {'d', "DICT", &PickleVM::op_dict},
        {'s', "SETITEM", &PickleVM::op_setitem},
        {'u', "SETITEMS", &PickleVM::op_setitems},
        {0x94, "MEMOIZE", &PickleVM::op_memoize},
        {'q', "BINPUT", &PickleVM::op_put<std::uint8_t>},
        {'r', "LONG_BINPUT", &PickleVM::op_put<std::uint32_t>},
        {'h', "BINGET", &PickleVM::op_get<std::uint8_t>},
        {'j', "LONG_BINGET", &PickleVM::op_get<std::uint32_t>},
        {'c', "GLOBAL", &PickleVM::op_global},
        {0x93, "STACK_GLOBAL", &PickleVM::op_stack_global},
        {'R', "REDUCE", &PickleVM::op_reduce},
        {0x81, "NEWOBJ", &PickleVM::op_newobj},
        {0x92, "NEWOBJ_EX", &PickleVM::op_newobj},
        {'b', "BUILD", &PickleVM::op_build},
        // pickle opcodes a data-only reader rejects (text forms, persistent ids, extensions,
        // sets, out-of-band buffers)
        {'F', "FLOAT", nullptr},
        {'I', "INT", nullptr},
        {'L', "LONG", nullptr},
        {'P', "PERSID", nullptr},
        {'Q', "BINPERSID", nullptr},
        {'S', "STRING", nullptr},
        {'T', "BINSTRING", nullptr},
        {'U', "SHORT_BINSTRING", nullptr},
        {'V', "UNICODE", nullptr},
        {'g', "GET", nullptr},
        {'p', "PUT", nullptr},
        {'i', "INST", nullptr},
        {'o', "OBJ", nullptr},
        {0x82, "EXT1", nullptr},
        {0x83, "EXT2", nullptr},
        {0x84, "EXT4", nullptr},
        {0x8f, "EMPTY_SET", nullptr},
        {0x90, "ADDITEMS", nullptr},
        {0x91, "FROZENSET", nullptr},
        {0x97, "NEXT_BUFFER", nullptr},
        {0x98, "READONLY_BUFFER", nullptr},
    };
    static constexpr std::array<std::uint8_t, 256> kIndex = [] {
      std::array<std::uint8_t, 256> ix{};
      ix.fill(0xff);
      for (std::size_t i = 0; i < std::size(kTable); ++i) {
        ix[kTable[i].code] = static_cast<std::uint8_t>(i);
      }
      return ix;
    }();
    return kIndex[code] == 0xff ? nullptr : &kTable[kIndex[code]];
  }

  void step(std::uint8_t code) {
    op_ = opcode(code);
    if (op_ == nullptr || op_->run == nullptr) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "0x%02x", static_cast<unsigned>(code));
      if (op_ == nullptr) throw error(std::string("unknown opcode ") + hex);
      throw error(std::string("opcode ") + op_->name + " (" + hex +
                  ") is not allowed in a data-only pickle");
    }
    (this->*op_->run)();
  }

  void op_proto() {
    const std::uint8_t v = read_le<std::uint8_t>();
    if (v < 2 || v > 5)
      throw error("unsupported pickle protocol " + std::to_string(v) + " (2-5 are)");
  }
  void op_frame() {  // a length hint; the opcodes inside are read as usual
    const std::uint64_t n = read_le<std::uint64_t>();
    if (n > remaining()) {
      throw error("frame length " + std::to_string(n) + " goes past the end of the file (" +
                  std::to_string(remaining()) + " bytes left)");
    }
  }
  void op_stop() {
    if (!marks_.empty()) throw error("STOP inside an unclosed MARK");
    if (stack_.size() != 1) {
      throw error("STOP with " + std::to_string(stack_.size()) +
                  " values on the stack (expected exactly 1)");
    }
    result_ = stack_.back();
  }
  void op_mark() {
    if (marks_.size() >= lim_.max_marks) {
      throw error("MARKs nested deeper than " + std::to_string(lim_.max_marks) + " (limit)");
    }
    marks_.push_back(stack_.size());
  }
  void op_pop() {  // pops a MARK when one is on top, as Python does
    if (!marks_.empty() && marks_.back() == stack_.size()) {
      marks_.pop_back();
    } else {
      (void)pop();
    }
  }
  void op_pop_mark() { (void)pop_mark(); }
  void op_dup() { push(top()); }
  void op_none() { push(make(Kind::kNone)); }
  template <bool kValue>
  void op_bool() {
    const std::uint32_t id = make(Kind::kBool);
    nodes_[id].built = kValue;
    push(id);
  }
  template <class T>
  void op_int() {
    push(make_int(read_le<T>()));
  }
  template <class T>
  void op_long() {  // little-endian two's complement of n bytes (up to 8)
    const std::uint64_t n = read_le<T>();
    if (n > 8) throw error("integer of " + std::to_string(n) + " bytes is too large");
    const std::size_t off = take(n, "integer");
    std::uint64_t u = 0;
    for (std::size_t k = 0; k < n; ++k) u |= std::uint64_t{u8(in_[off + k])} << (8 * k);
    if (n > 0 && n < 8 && (u8(in_[off + n - 1]) & 0x80u)) u |= ~std::uint64_t{0} << (8 * n);
    push(make_int(static_cast<std::int64_t>(u)));
  }
  void op_binfloat() {  // big-endian double; the value is never used
    (void)read_le<std::uint64_t>();
    push(make(Kind::kFloat));
  }
  template <class T, Kind kKind>
  void op_blob() {
    push(make_blob(kKind, read_le<T>(), kKind == Kind::kStr ? "str" : "bytes"));
  }
  template <Kind kKind>
  void op_empty() {
    push(make_seq(kKind, {}));
  }
  template <Kind kKind>
  void op_from_mark() {
    push(make_seq(kKind, pop_mark()));
  }
  template <std::size_t kN>
  void op_tuple_n() {
    std::vector<std::uint32_t> v(kN);
    for (std::size_t k = kN; k-- > 0;) v[k] = pop();
    push(make_seq(Kind::kTuple, std::move(v)));
  }
  void op_append() {
    const std::uint32_t v = pop();
    const std::uint32_t list = top();
    if (nodes_[list].kind != Kind::kList) throw error("APPEND to " + describe(list));
    count_items(1);
    nodes_[list].items.push_back(v);
  }
  void op_appends() {
    std::vector<std::uint32_t> v = pop_mark();
    const std::uint32_t list = top();
    if (nodes_[list].kind != Kind::kList) throw error("APPENDS to " + describe(list));
    count_items(v.size());
    nodes_[list].items.insert(nodes_[list].items.end(), v.begin(), v.end());
  }
  void op_dict() {
    std::vector<std::uint32_t> kv = pop_mark();
    const std::uint32_t id = make_seq(Kind::kDict, {});
    set_items(id, kv);
    push(id);
  }
  void op_setitem() {
    const std::uint32_t v = pop();
    const std::uint32_t k = pop();
    set_items(top(), {k, v});
  }
  void op_setitems() {
    std::vector<std::uint32_t> kv = pop_mark();
    set_items(top(), kv);
  }
  void op_memoize() { memo_put(memo_count_); }  // next index = entries so far
  template <class T>
  void op_put() {
    memo_put(read_le<T>());
  }
  template <class T>
  void op_get() {
    memo_get(read_le<T>());
  }
  void op_global() {  // "module\nname\n"
    const std::string_view module = read_line("GLOBAL module name");
    const std::string_view name = read_line("GLOBAL name");
    push_global(module, name);
  }
  void op_stack_global() {
    const std::uint32_t name = pop();
    const std::uint32_t module = pop();
    if (nodes_[module].kind != Kind::kStr || nodes_[name].kind != Kind::kStr) {
      throw error("STACK_GLOBAL needs two str, got " + describe(module) + " and " + describe(name));
    }
    if (nodes_[module].len > lim_.max_global_name || nodes_[name].len > lim_.max_global_name) {
      throw error("global name longer than " + std::to_string(lim_.max_global_name) + " bytes");
    }
    push_global(str(module), str(name));
  }
  void op_reduce() {  // callable(*args), for the whitelisted numpy constructors only
    const std::uint32_t args = pop();
    const std::uint32_t fn = pop();
    if (nodes_[fn].kind != Kind::kGlobal) {
      throw error("REDUCE calls " + describe(fn) + " (only whitelisted globals are callable)");
    }
    switch (nodes_[fn].global) {
      case PickleGlobal::kReconstruct:
        push(reduce_reconstruct(args));
        return;
      case PickleGlobal::kDtype:
        push(reduce_dtype(args));
        return;
      case PickleGlobal::kFrombuffer:
        push(reduce_frombuffer(args));
        return;
      default:
        throw error("REDUCE cannot call '" + nodes_[fn].name + "'");
    }
  }
  void op_newobj() {  // NEWOBJ: cls.__new__(cls, *args); NEWOBJ_EX also pops **kwargs
    if (op_->code == 0x92) {
      const std::uint32_t kwargs = pop();
      if (nodes_[kwargs].kind != Kind::kDict || !nodes_[kwargs].items.empty()) {
        throw error("NEWOBJ_EX keyword arguments must be an empty dict, got " + describe(kwargs));
      }
    }
    const std::uint32_t args = pop();
    const std::uint32_t cls = pop();
    if (!is_global(cls, PickleGlobal::kClass)) {
      throw error("cannot create an instance of " + describe(cls) + " (only " +
                  (classes_.empty() ? std::string("the classes the caller allows: none")
                                    : allowed_classes("")) +
                  ")");
    }
    const PickleClass& c = classes_[nodes_[cls].cls];
    if (nodes_[args].kind != Kind::kTuple || !nodes_[args].items.empty()) {
      throw error(std::string(c.name) + ".__new__ takes no arguments, got " + describe(args));
    }
    const std::uint32_t id = make(Kind::kInstance);
    nodes_[id].cls = nodes_[cls].cls;
    nodes_[id].name = nodes_[cls].name;
    nodes_[id].items.assign(c.attributes.size(), kNone);
    push(id);
  }
  void op_build() {  // obj.__setstate__(state); obj stays on the stack
    const std::uint32_t state = pop();
    const std::uint32_t obj = top();
    switch (nodes_[obj].kind) {
      case Kind::kDtype:
        build_dtype(obj, state);
        return;
      case Kind::kNdarray:
        build_ndarray(obj, state);
        return;
      case Kind::kInstance:
        build_instance(obj, state);
        return;
      default:
        throw error("BUILD on " + describe(obj) + " is not supported");
    }
  }

  // ---- instances of the caller's classes ----
  void build_instance(std::uint32_t obj, std::uint32_t state) {
    const PickleClass& c = classes_[nodes_[obj].cls];
    const std::string cname(c.name);
    if (nodes_[obj].built) throw error(cname + " is built twice");
    if (nodes_[state].kind != Kind::kDict) {
      throw error(cname + " state must be a dict, got " + describe(state));
    }
    const std::vector<std::uint32_t> kv = nodes_[state].items;
    for (std::size_t e = 0; e < kv.size(); e += 2) {
      if (nodes_[kv[e]].kind != Kind::kStr) {
        throw error(cname + " attribute name is " + describe(kv[e]));
      }
      const std::string_view key = str(kv[e]);
      const auto it = std::find(c.attributes.begin(), c.attributes.end(), key);
      if (it == c.attributes.end()) {
        throw error(cname + " has an unexpected attribute '" + std::string(key) + "'");
      }
      // a repeated key: the last value wins, as in Python's dict
      nodes_[obj].items[static_cast<std::size_t>(it - c.attributes.begin())] = kv[e + 1];
    }
    nodes_[obj].built = true;
  }

  const Array& array_of(std::uint32_t id, const std::string& what) const {
    const Node& n = nodes_[id];
    if (n.kind != Kind::kNdarray) {
      throw error_at(op_at_, "", what + " is " + describe(id) + ", expected a numpy.ndarray");
    }
    if (!n.built) throw error_at(op_at_, "", what + " is a numpy.ndarray that was never built");
    return arrays_[n.array];
  }

  PickledObject extract(std::uint32_t id) const {
    const Node& n = nodes_[id];
    if (n.kind == Kind::kNdarray) return array_of(id, "the pickled object");
    if (n.kind == Kind::kInstance) {
      const PickleClass& c = classes_[n.cls];
      const std::string cname(c.name);
      if (!n.built) throw error_at(op_at_, "", cname + " has no state (no BUILD)");
      PickledInstance inst;
      inst.class_index = n.cls;
      inst.class_name = n.name;
      for (std::size_t k = 0; k < c.attributes.size(); ++k) {
        const std::string attr(c.attributes[k]);
        if (n.items[k] == kNone) throw error_at(op_at_, "", cname + " has no '" + attr + "'");
        inst.attributes.push_back(array_of(n.items[k], cname + "." + attr));
      }
      return inst;
    }
    throw error_at(
        op_at_, "",
        "the pickle holds " + describe(id) + ", expected a numpy.ndarray" +
            (classes_.empty() ? std::string() : " or an instance of " + allowed_classes("")));
  }

  std::span<const std::byte> in_;
  std::string name_;
  std::span<const PickleClass> classes_;
  PickleLimits lim_;
  std::size_t pos_ = 0;
  std::size_t op_at_ = 0;
  const Opcode* op_ = nullptr;    // the opcode being run
  std::uint32_t result_ = kNone;  // set by STOP
  std::vector<Node> nodes_;
  std::vector<Array> arrays_;
  std::vector<std::uint32_t> stack_;
  std::vector<std::size_t> marks_;
  std::vector<std::uint32_t> memo_;
  std::size_t memo_count_ = 0;  // memo entries set (MEMOIZE stores at this index, as Python)
  std::size_t items_ = 0;
};

}  // namespace detail

/// Parses one pickled object from `bytes` (e.g. MappedFile::bytes()). `name` (usually the file
/// path) goes into error messages; `classes` are the only classes the file may instantiate.
/// Returned arrays point into `bytes`, which must outlive them. Throws FormatError
/// "[pickle] 'name' at byte N (OPCODE): what was wrong".
inline PickledObject parse_pickle(std::span<const std::byte> bytes, std::string_view name,
                                  std::span<const PickleClass> classes = {},
                                  const PickleLimits& limits = {}) {
  return detail::PickleVM(bytes, name, classes, limits).run();
}

}  // namespace moe::io
