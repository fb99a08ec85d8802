// moe/ops/detail/matmul_plan.hpp: how one matmul call is cut into tasks.
//
// The plan is a pure function of the shapes, the weight type and the pool's scratch size, NEVER
// of the thread count: that is what makes results bit-identical for 1, 2 or N threads. A task is
// (K chunk c, token block b, column slab s). Tasks of different chunks that write the same
// (b, s) tile are combined in chunk order by whichever of them finishes last (see run() in
// matmul.hpp), so the summation order is fixed too, and no task ever waits for another.
//
// Three paths:
//  * kDirect (weights [in, out], few tokens): the micro-kernel reads the weight in place, a few
//    rows at a time across a slab about 8 KiB wide, prefetching the same slab of the next rows.
//    Each weight row is thus read as one long sequential run (not a 64-byte sliver per 4 KiB
//    page, which defeats the hardware prefetcher). Narrow outputs are split along K instead.
//  * kPacked (many tokens, or [out, in] weights with T > kDotMaxT): each task widens /
//    dequantises / transposes a [kc, nc] weight tile into its thread's scratch (f32, strips of
//    kNR columns) and runs the register-blocked micro-kernel over all its tokens from there.
//    f32 [in, out] weights skip the packing (Plan::pack == false): the micro-kernel reads the
//    same tiles in place, prefetching the next tile's strip as it goes.
//  * kDot ([out, in] weights, T <= kDotMaxT): dot products along the contiguous weight rows.
#pragma once

#include <algorithm>
#include <cstddef>

#include <moe/config.hpp>
#include <moe/ops/detail/matmul_kernels.hpp>


MOE_SIMD_DETAIL_BEGIN

enum class Path { kDirect, kPacked, kDot };

/// Tunables (measured on the reference machine; see docs/performance.md "Kernels").
struct Tuning {
  /// Aim for at least this many tasks per call (load balance with dynamic scheduling).
  static constexpr std::size_t kTargetTasks = 16;
  /// Direct path: bytes of one weight row a task covers; rows per micro-kernel call and the
  /// software-prefetch distance (rows) for one token: int8 / bf16 weights read 4 rows at a time
  /// and prefetch 8 rows ahead; f32 weights do best with 16 rows and the hardware prefetcher
  /// alone (2 threads, [6144 -> 32768]: 40 vs 35 GB/s). Several tokens: 8 rows.
  static constexpr std::size_t kDirectSlabBytes = 8192;
  static constexpr std::size_t kDirectRowsT1 = 4;
  static constexpr std::size_t kDirectPrefetchT1 = 8;
  static constexpr std::size_t kDirectRowsT1F32 = 16;
  static constexpr std::size_t kDirectPrefetchT1F32 = 0;
  static constexpr std::size_t kDirectRows = 8;
  /// The direct path is used for T <= kDirectMaxT ([in, out] weights).
  static constexpr std::size_t kDirectMaxT = kMR;
  /// Smallest K chunk worth splitting off (rows).
  static constexpr std::size_t kMinChunkRows = 256;
  /// Packed path: tile [kPackKc, kPackNc], tokens per block.
  static constexpr std::size_t kPackKc = 128;
  static constexpr std::size_t kPackNc = 512;
  static constexpr std::size_t kPackMaxT = 256;
  /// Packing prefetches 8 rows ahead, and the next tile is prefetched into L2 during the
  /// compute of the current one (T = 16 int8, 2 threads: 116 -> 149 GFLOP/s).
  static constexpr std::size_t kPackPrefetchRows = 8;
  static constexpr bool kPackTilePrefetch = true;
  /// Dot path: at least this many output rows per task.
  static constexpr std::size_t kDotMinRows = 8;
  /// Below this many weight bytes (and few tokens) a call runs as one task.
  static constexpr std::size_t kTinyBytes = 32 * 1024;
  /// At most this many K chunks (so at most kTargetTasks * kMaxChunks partials per call).
  static constexpr std::size_t kMaxChunks = 16;
};

struct Plan {
  Path path = Path::kDirect;
  std::size_t nc = 0, n_slabs = 1;      ///< output columns per slab
  std::size_t chunk = 0, n_chunks = 1;  ///< K rows per chunk
  std::size_t tb = 0, n_tblocks = 1;    ///< tokens per block
  std::size_t kc = 0;                   ///< K rows per micro-kernel call / packed tile
  std::size_t pf = 0;                   ///< prefetch distance in rows (direct path, packing)
  bool tile_pf = false;                 ///< packed path: prefetch the next tile during compute
  bool pack = true;  ///< packed path: pack tiles (false: f32 [in, out] read in place, see below)
  std::size_t pack_floats = 0;     ///< scratch floats for the packed tile
  std::size_t partial_floats = 0;  ///< scratch floats for all K-chunk partial slots

  [[nodiscard]] std::size_t n_tasks() const noexcept { return n_slabs * n_chunks * n_tblocks; }
  [[nodiscard]] std::size_t scratch_bytes() const noexcept {
    return (pack_floats + partial_floats) * sizeof(float);
  }
};

constexpr std::size_t ceil_div(std::size_t a, std::size_t b) noexcept {
  return (a + b - 1) / b;
}
constexpr std::size_t round_up(std::size_t a, std::size_t b) noexcept {
  return ceil_div(a, b) * b;
}

/// Splits K into chunks when the other dimensions give fewer than kTargetTasks tasks. Every
/// chunk after the first keeps its partial tile in the scratch of the thread that computed it,
/// at a slot reserved for that (chunk, tile), until the tile's last chunk to finish adds them
/// all to y in chunk order; so all those slots must fit next to `reserved_floats` in
/// `scratch_bytes` (a function of the pool's scratch size, never of its thread count). Chunks are
/// multiples of `align` rows.
inline void split_k(Plan& p, std::size_t T_block, std::size_t in, std::size_t align,
                    std::size_t reserved_floats, std::size_t scratch_bytes) noexcept {
  p.chunk = in;
  p.n_chunks = 1;
  const std::size_t tiles = p.n_slabs * p.n_tblocks;
  if (tiles >= Tuning::kTargetTasks) return;
  const std::size_t partial = T_block * round_up(p.nc, kNR);
  std::size_t want = std::min(
      {ceil_div(Tuning::kTargetTasks, tiles), in / Tuning::kMinChunkRows, Tuning::kMaxChunks});
  const std::size_t budget = scratch_bytes / sizeof(float);
  while (want > 1 && reserved_floats + (want - 1) * tiles * partial > budget) --want;
  if (want <= 1) return;
  p.chunk = round_up(ceil_div(in, want), align);
  p.n_chunks = ceil_div(in, p.chunk);
  if (p.n_chunks > 1) p.partial_floats = (p.n_chunks - 1) * tiles * partial;
}

/// The plan for Y[T, out] = X[T, in] . W with elem-byte weights in layout [in, out] (in_out) or
/// [out, in], given the pool's per-thread scratch size.
inline Plan make_plan(std::size_t T, std::size_t in, std::size_t out, std::size_t elem, bool in_out,
                      std::size_t scratch_bytes) noexcept {
  Plan p;
  const std::size_t bytes = in * out * elem;
  const bool tiny = bytes <= Tuning::kTinyBytes && T <= kMR;

  if (!in_out && T <= kDotMaxT) {  // dot products along contiguous rows
    p.path = Path::kDot;
    p.tb = T;
    p.chunk = in;
    p.nc =
        tiny ? out
             : std::max(Tuning::kDotMinRows, round_up(ceil_div(out, 2 * Tuning::kTargetTasks), 8));
    p.n_slabs = ceil_div(out, p.nc);
    return p;
  }

  // Packed path, if a tile fits in the scratch.
  const bool packed_wanted = !in_out || T > Tuning::kDirectMaxT;
  if (packed_wanted) {
    Plan q;
    q.path = Path::kPacked;
    q.kc = std::min(Tuning::kPackKc, in);
    q.pf = Tuning::kPackPrefetchRows;
    q.tile_pf = Tuning::kPackTilePrefetch;
    q.nc = std::min(Tuning::kPackNc, out);
    q.n_slabs = ceil_div(out, q.nc);
    // f32 [in, out] weights are already f32 rows contiguous along out: the micro-kernel reads
    // the tile in place (prefetching the next tile's strips during the compute), so no packing
    // pass alternates with the compute. Same [kc, nc] tiles as packed (measured best:
    // 32 x 2048, 64 x 1024 and 16 x 4096 were slower at T = 16 and 64).
    q.pack = !(in_out && elem == sizeof(float));
    q.pack_floats = q.pack ? q.kc * round_up(q.nc, kNR) : 0;
    q.n_tblocks = ceil_div(T, Tuning::kPackMaxT);
    q.tb = round_up(ceil_div(T, q.n_tblocks), kMR);
    q.n_tblocks = ceil_div(T, q.tb);
    if (q.pack_floats * sizeof(float) <= scratch_bytes) {
      split_k(q, q.tb, in, q.kc, q.pack_floats, scratch_bytes);
      // Still too few tasks (small K): split the tokens further.
      if (q.n_tasks() < Tuning::kTargetTasks && q.n_chunks == 1) {
        const std::size_t more =
            std::min(ceil_div(Tuning::kTargetTasks, q.n_tasks()), ceil_div(q.tb, 4 * kMR));
        if (more > 1) {
          q.tb = round_up(ceil_div(q.tb, more), kMR);
          q.n_tblocks = ceil_div(T, q.tb);
        }
      }
      return q;
    }
    if (!in_out) {  // no scratch for a tile: dot products, kDotMaxT tokens at a time
      p.path = Path::kDot;
      p.tb = T;
      p.chunk = in;
      p.nc = std::max(Tuning::kDotMinRows, round_up(ceil_div(out, 2 * Tuning::kTargetTasks), 8));
      p.n_slabs = ceil_div(out, p.nc);
      return p;
    }
  }

  // Direct path on [in, out] weights.
  p.path = Path::kDirect;
  if (T == 1) {
    p.kc = elem == 4 ? Tuning::kDirectRowsT1F32 : Tuning::kDirectRowsT1;
    p.pf = elem == 4 ? Tuning::kDirectPrefetchT1F32 : Tuning::kDirectPrefetchT1;
  } else {
    p.kc = Tuning::kDirectRows;
    p.pf = p.kc;
  }
  p.tb = T;
  if (tiny) {
    p.nc = out;
    p.chunk = in;
    return p;
  }
  const std::size_t slab =
      round_up(std::max<std::size_t>(Tuning::kDirectSlabBytes / elem, kNR), kNR);
  p.nc = slab >= out ? out : slab;
  p.n_slabs = ceil_div(out, p.nc);
  split_k(p, T, in, p.kc, 0, scratch_bytes);
  return p;
}

MOE_SIMD_DETAIL_END

