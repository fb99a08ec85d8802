// moe/ops/detail/matmul_plan.hpp: how one matmul call is cut into tasks, for this host.
//
//   Blocking b = blocking_for(host());          // tile sizes, packing, prefetch: from the CPU
//   Plan p = make_plan(shape, b, scratch_bytes); // paths and the task decomposition of one call
//
// Both are pure functions: blocking_for of a HostInfo (so the tests check the Intel and the AMD
// parameter sets on any machine), make_plan of the shapes, the weight type, the Blocking, the
// pool's scratch size and whether the call can run in parallel at all, NEVER of the thread
// count: that is what makes results bit-identical for 1, 2 or N threads (the parallel flag only
// changes how tokens are cut into blocks, which no result depends on). A task is (K chunk c, token
// block b, column slab s). Tasks of different chunks that write the same (b, s) tile are combined
// in chunk order by whichever of them finishes last (see run() in matmul.hpp), so the summation
// order is fixed too, and no task ever waits for another.
//
// Three paths:
//  * kDirect (weights [in, out], T <= kMR): the micro-kernel reads the weight in place, a few
//    rows at a time across a slab 8 or 16 KiB wide, prefetching the same slab of the next rows
//    where the host's GemvStep says so (short rows: in address order where it says so).
//    Each weight row is thus read as one long sequential run (not a 64-byte sliver per 4 KiB
//    page, which defeats the hardware prefetcher). Narrow outputs are split along K instead.
//  * kPacked (more tokens, or [out, in] weights with T > kDotMaxT): a task walks its column slab
//    strip by strip (kNR columns). Each strip of kc weight rows is widened / dequantised /
//    transposed once into an f32 strip in the thread's scratch (L1-sized) and every token block
//    of the task runs the register-blocked micro-kernel over it. For [in, out] weights the first
//    token block does the packing itself, on the way ("fused": no separate pass over the
//    weights). While a tile is computed, the next tile of the task may be prefetched into L2
//    (where it fits: Blocking::tile_prefetch) and the next strip into L1, a share before each
//    micro-kernel call or, where such a share is large, a line every few k steps inside the
//    calls (Blocking::stream_prefetch_lines). Small T on f32
//    [in, out] may read the strips in place instead (Blocking::f32_in_place_max_t). Where an
//    [in, out] weight's rows alias (Blocking::group_stride), a few strips are packed together
//    in a pass of their own instead of fused, and every token block reads them packed.
//  * kDot ([out, in] weights, T <= kDotMaxT): dot products along the contiguous weight rows,
//    which prefetch the rows a few calls ahead where a row is short (Blocking::dot_pf_short).
#pragma once

#include <algorithm>
#include <cstddef>

#include <moe/config.hpp>
#include <moe/ops/detail/host.hpp>
#include <moe/ops/detail/matmul_kernels.hpp>

MOE_SIMD_DETAIL_BEGIN

enum class Path { kDirect, kPacked, kDot, kNone };  // kNone: the scratch is too small

/// A task's slab rows shorter than this take GemvStep::pf_short, and [out, in] weight rows
/// shorter than this Blocking::dot_pf_short (see make_plan).
inline constexpr std::size_t kShortSlabRowBytes = 4096;

/// How the one-token GEMV (direct path, T = 1) walks a weight: rows per micro-kernel call, the
/// software-prefetch distance in rows (0: none), the distance when each row of a task's slab is
/// shorter than kShortSlabRowBytes (the slab is then a few lines of every row: [6144 -> 1024]
/// int8 and bf16), the bytes of each weight row a task's slab takes, and whether such short
/// rows are prefetched in address order, a share before each call (see Plan::pf_in_order),
/// rather than by the micro-kernel, a line of each row it reads pf_short rows further on.
struct GemvStep {
  std::size_t rows = 4;
  std::size_t pf = 8;
  std::size_t pf_short = 8;
  std::size_t slab_bytes = 8192;
  bool short_in_order = false;

  friend bool operator==(const GemvStep&, const GemvStep&) = default;
};

/// Host-dependent parameters of the kernels (see blocking_for).
struct Blocking {
  // Packed path (GEMM).
  std::size_t kc = 128;      ///< K rows of a packed strip (kc x kNR floats, kept in L1)
  std::size_t nc = 512;      ///< columns per task (a tile: kc rows of them)
  std::size_t max_tb = 256;  ///< tokens per task block (one packed strip serves them all)
  /// f32 [in, out] weights are read in place (no packing) while T <= this.
  std::size_t f32_in_place_max_t = static_cast<std::size_t>(-1);
  bool tile_prefetch = true;    ///< prefetch the next tile into L2 during the compute
  bool strip_prefetch = false;  ///< and the next strip into L1 (f32 and bf16 weights)
  /// The same for int8 weights (Zen 5 too: +8-11 % at T = 64, +1-3 % at T = 256, measured with
  /// bench_kernels zen5plan against a zen5 blocking with it on, per-core CPU time; f32 and bf16
  /// there within -5 .. +3 %).
  bool strip_prefetch_int8 = true;
  /// Those two prefetches issued from inside the micro-kernel calls that read the packed strip,
  /// a share every few k steps (KernelPrefetch), instead of a share before each call, where the
  /// share before a call would be more than this many cache lines (0: never; see burst_lines).
  std::size_t stream_prefetch_lines = 0;
  /// f32 and bf16 [in, out] weights: the fused first token block (see kPacked) fetches this many
  /// columns of each weight row together, its own strip's and, by an L2 prefetch of the lines
  /// that follow, the next strips' (0: its strip only; see pack_pf_lines). int8 strips are
  /// prefetched into L1 ahead instead (strip_prefetch_int8).
  std::size_t pack_fetch_cols = 0;
  /// [in, out] weights whose row stride in bytes is a multiple of group_stride (0: none) are
  /// packed pack_group strips at a time, all token blocks then reading the packed strips, in a
  /// pass of their own that prefetches group_pf_rows rows ahead (see pack_strips_inout): the
  /// rows of such a weight fall on so few cache sets that the lines of the next strips a fused
  /// packing fetches are evicted before their strip comes.
  std::size_t group_stride = 0;
  std::size_t pack_group = 1;
  std::size_t group_pf_rows = 8;
  /// A task accumulates its outputs in a contiguous tile in scratch and copies it to y at the
  /// end (y rows whose stride is a multiple of 4 KiB map to the same cache sets).
  bool c_tile = true;
  // Direct path (GEMV, T <= kMR): bytes of a task's slab for T = 2..6; the T = 1 step per weight
  // type (see gemv_step); rows per micro-kernel call for T = 2..6, and the rows ahead prefetched
  // for T = 2..6 where a slab row is kShortSlabRowBytes or longer (shorter rows: direct_rows).
  std::size_t direct_slab_bytes = 8192;
  GemvStep gemv_f32{16, 0, 0};
  GemvStep gemv_bf16{4, 8, 8};
  GemvStep gemv_int8{4, 8, 8};
  std::size_t direct_rows = 8;
  std::size_t direct_pf = 8;
  /// Rows per call for T = 2..6 where a call does at least two multiply-adds per weight byte
  /// (T >= 2 x the element's bytes: int8 from 2 tokens, bf16 from 4), which the core bounds
  /// rather than the reads (see blocking_for); direct_rows for the others and for rows a
  /// multiple of an L2 way apart.
  std::size_t direct_rows_core_bound = 8;
  /// Dot path ([out, in] weights, T <= kDotMaxT): rows ahead the kernel prefetches when a
  /// weight row is shorter than kShortSlabRowBytes (0: none; see blocking_for).
  std::size_t dot_pf_short = 0;

  /// The T = 1 step for weights of `elem` bytes per element (4 f32, 2 bf16, 1 int8).
  [[nodiscard]] const GemvStep& gemv_step(std::size_t elem) const noexcept {
    return elem == 4 ? gemv_f32 : elem == 1 ? gemv_int8 : gemv_bf16;
  }

  friend bool operator==(const Blocking&, const Blocking&) = default;
};

/// The blocking for a host. The defaults above are the parameters measured best on the AMD Zen 5
/// host (L1d 48 KiB, L2 1 MiB/core, L3 32 MiB per CCX), where the kernels were first tuned; the
/// rules below derive the rest from the cache sizes and the vendor (docs/performance.md
/// "Kernels" gives the measurements behind each):
///  * kc: the packed strip (kc x kNR f32) fills at most 2/3 of L1d, so the strip, the x rows of
///    a micro-kernel call and its y rows stay in L1 (48 KiB: 128 rows of 64 floats).
///  * Intel's L3 is a mesh shared by all cores, with higher latency and much less bandwidth per
///    core than AMD's per-CCX L3 (one core of the Xeon reads ~16 GB/s, one Zen 5 core ~40): data
///    that is not in L1/L2 when the micro-kernel wants it costs more there. So on Intel
///      - f32 [in, out] strips are packed for every T (reading them in place re-reads each strip
///        from L2/L3 for every token block, and rows whose stride is a multiple of 4 KiB map to
///        the same L1/L2 sets),
///      - the next strip is prefetched into L1 while the current one is computed (int8 strips are
///        on every host: Blocking::strip_prefetch_int8).
///    (The GEMV parameters stay Zen 5's: 8, 16 and 24 rows of prefetch distance measured the
///    same here, within the noise of a shared machine.)
///  * on Intel those two prefetches leave from inside the micro-kernel calls that read the
///    packed strip, a line every 2nd (strip) and every 4th (tile) k step, wherever the share
///    before each call would exceed 16 lines (stream_prefetch_lines; burst_lines): f32 at every
///    token count of the packed path (below ~380 per block), bf16 below ~190, int8 below ~95.
///    Issued as a burst, such a share takes all 16 of a Golden Cove core's L1 fill buffers for
///    a DRAM round trip, and the call's own loads of activations and outputs (from L2) queue
///    behind it: timed with rdtsc around the calls (f32 [1024 -> 4096], T = 64, one thread), a
///    call over the packed strip took ~1,370 cycles with no prefetch and ~2,000 with the bursts
///    (the fused first call, without prefetch, 8x a normal one). Emerald Rapids, bench_kernels'
///    four shapes, one binary (the blocking with stream_prefetch_lines 0 against 16), 5
///    interleaved repetitions, medians; one thread, CPU time: T = 64 f32 1.14-1.26x (0.57-0.61
///    -> 0.69-0.75 of the FMA peak), bf16 1.11-1.21x, int8 1.03-1.07x, f32 at T = 256
///    1.03-1.07x; 2 threads: T = 64 f32 1.07-1.29x, bf16 0.93-1.19x, int8 1.04-1.14x. bf16 and
///    int8 at T = 256 (12 and 6 lines: they keep the bursts) measured 0.93-1.06x streamed. AMD
///    hosts are unmeasured and keep the bursts.
///  * f32 [in, out] strips are also packed for every T on a host whose L1d is smaller than
///    48 KiB: a strip row read in place is one to four cache lines of a weight row, and weight
///    rows 4 KiB apart (out = 1024, 4096, 6144, 32768) all map to the same L1 set, so only as
///    many rows as the L1 has ways stay cached. On Zen 3 (32 KiB, 8-way) the in-place strips ran
///    at 0.52-0.80 of the packed ones at T = 64 and 256 (bench_kernels matmul/ against emrplan/).
///  * the int8 GEMV (T = 1) calls the micro-kernel for 16 rows at a time, without software
///    prefetch, on a host without AVX-512: its kernels are 8 lanes wide, and dequantising one
///    int8 vector (sign extension, conversion, scale, FMA) costs ~1.5 cycles on Zen 3 even from
///    L1, so a call's fixed cost (y, the column scales) weighed 1.9x at 4 rows per call. On
///    Zen 3: 1.20-1.45x with 2 threads, 1.37-1.40x with 1 (bench_kernels matmul/ against
///    zen5plan/, same run); bf16 stays at 4 rows (0.80-0.97 of DRAM there, 0.66-0.95 with 16).
///  * on a host without AVX-512 the fused packing fetches 64 columns of each f32 / bf16 weight
///    row together (pack_fetch_cols), as an AVX-512 strip does: a strip row there is 16 columns
///    (64 bytes of f32, 32 of bf16), so the first token block had one line of each weight row in
///    flight, and its loads waited on DRAM (a profile of f32 [6144 -> 1024] at T = 64 on Zen 3:
///    ~40 % of the GEMM's samples in run_packed, where that block is inlined). The tile prefetch
///    cannot do it there: rows 4 or 16 KiB apart (out = 1024, 4096 floats) put a strip's 256
///    rows in 16 or 4 of the L2's 1024 sets (8-way), so lines fetched a tile ahead are evicted
///    before use. Zen 3, 2 threads, alternated with the code before: f32 GEMMs 1.03-1.33x and
///    bf16 1.01-1.24x at T = 64 and 256 (bench_kernels' four shapes), the f32 MoE layer
///    1.04-1.10x; int8 0.90x at T = 64 (not applied).
///  * the next tile is prefetched into L2 only while a tile of f32 strips (kc x nc floats) takes
///    at most half of it. With 16-column strips kc is 256, so the tile is 512 KiB: all of a
///    512 KiB L2 (Zen 1, Zen 3), and fetching it evicts the output tile and the activations the
///    current tile is still using. Zen 1, 2 threads, alternated with the prefetch on: f32
///    [6144 -> 32768] at T = 64 1.17x, [32768 -> 6144] 1.06x, bf16 up to 1.07x, every other
///    GEMM at T = 64 and 256 0.98-1.04x (medians); Zen 3 (earlier, one core) 0.83-1.35x, 1.04x
///    geometric mean. Zen 5 and Intel (1 and 2 MiB L2, tiles of 256 KiB) keep it.
///  * on a core that runs 256-bit operations as two halves (Zen 1: HostInfo::half_width_vectors)
///    one thread's bf16 GEMV read only ~0.53 of its DRAM limit: the widening is slow there (see
///    axpy_kernel_bf16_unpack), and software prefetch competes with the hardware's streams while
///    a slab row is long. So bf16 takes 8 rows per call, 16 KiB of each row per slab and no
///    prefetch, except on slab rows shorter than kShortSlabRowBytes (a task then reads a few
///    lines of every row), which keep 8 rows ahead; int8 prefetches 16 rows ahead on such rows.
///    Zen 1, alternated with the Zen 3 steps, 5 rounds, medians: bf16 [6144 -> 32768] and
///    [32768 -> 6144] 1.19x (2 threads), 1.22x (1), [1024 -> 4096] 1.13x, [6144 -> 1024] 1.05x;
///    int8 [6144 -> 1024] 1.62x (1.83x with 1 thread); f32 and the other int8 shapes unchanged
///    (0.98-1.02x). With the unpacking kernel on top, bf16 reads 0.92-0.98 of DRAM on long rows.
///  * on a host without AVX-512, [in, out] weights whose rows are a multiple of half an L2 way
///    apart (32 KiB on a 512 KiB 8-way L2: Grok's [6144 -> 32768] in f32, bf16 and int8) pack
///    pack_fetch_cols / kNR strips at a time (4 on AVX2) in a pass of their own that prefetches
///    8 rows ahead, instead of the fused packing. Such rows take one or two positions of an L2
///    way, so the lines of the next strips that the fused packing fetches are evicted before
///    their strip comes, and each strip's first token block waited on a miss per weight row.
///    Zen 1, T = 64: 0.64-0.70 of the FMA peak against 0.81-0.84 for [6144 -> 32704] (2 MiB
///    pages; in 4 KiB pages as slow, and the rule 1.15-1.32x there too). Alternated with the
///    fused packing, 3 rounds, medians: T = 64 1.19-1.25x (0.76-0.82 of the peak), T = 256
///    1.08-1.13x; with every weight grouped, the other shapes moved 0.96-1.06x (so they keep
///    the fused packing). Groups of 2 or 8 and 4 or 16 rows ahead measured within 0.98-1.03x.
///  * on a host without AVX-512 the dot path prefetches 8 rows ahead where an [out, in] weight
///    row is shorter than kShortSlabRowBytes (dot_pf_short): a one-token call reads 7 rows of
///    2 KiB in bf16 [1024 -> 4096], short streams the hardware prefetcher did not run ahead of
///    (0.58 of DRAM, where rows of 12 KiB and more read 0.86-0.89). Zen 1, alternated with the
///    code before, 5 rounds, medians, with the unpacking dot kernel: 1.42x (0.83 of DRAM), 2-4
///    tokens 1.13-1.50x; 4, 16 and 32 rows ahead 0.82-0.95x of 8. AVX-512 hosts: unmeasured.
///  * on a core with half-width 256-bit units (Zen 1) the bf16 GEMV's short slab rows are
///    prefetched in address order, a share before each micro-kernel call (GemvStep::
///    short_in_order), as the dot path's prefetch_rows does on every host that has it: the
///    micro-kernel asked for the same lines a column at a time across rows 2 KiB apart. Zen 1,
///    alternated with the code before, 5 rounds, medians: bf16 [in, out] [6144 -> 1024] 1.25x
///    (0.73 -> 0.87 of DRAM), [out, in] [1024 -> 4096] 1.06x (0.82 -> 0.86); int8 in address
///    order 0.85-0.92x (bound by its multiplies), so it keeps the micro-kernel's prefetch.
///  * on the same cores the direct path for 2-6 tokens drops its prefetch on slab rows of 4 KiB
///    or more (direct_pf; shorter rows keep direct_rows ahead), as the one-token GEMV does: a
///    16-token prefill of a Grok-1-shaped layer (2-4 tokens per expert) took longer than a
///    64-token one. Zen 1, alternated with the code before, 3 rounds, medians: that prefill
///    2.86x (bench_decoder grok1_layer/prefill); [6144 -> 32768] at T = 2 and 4 1.12-1.35x,
///    [32768 -> 6144] 0.92-1.00x at T = 2 and 1.06-1.10x at T = 4 (bf16, f32, int8).
///  * on the same cores the 2-6-token slabs are 16 KiB (direct_slab_bytes, as the one-token bf16
///    GEMV's): the rows of [32768 -> 6144] (12 KiB in bf16) are then read whole, in one run each,
///    instead of as an 8 KiB and a 4 KiB slab. Zen 1, 5 rounds, medians, one binary (plan data
///    only), T = 2-4: bf16 and f32 1.00-1.11x on rows of 12 KiB and more (bf16
///    [32768 -> 6144] 1.11x at T = 2), int8 and the int8-activation path 0.98-1.02x, rows of 8 KiB
///    or less 0.99-1.02x.
///  * on the same cores the 2-6-token calls that do two or more multiply-adds per weight byte
///    (int8 from 2 tokens, bf16 from 4: bound by the core's multiplies and widening, not by
///    DRAM) take 16 rows (direct_rows_core_bound), which halves the y round trips per row; the
///    others keep 8 (with 16, bf16 at T = 2 ran 0.86-0.92x and f32 0.87-1.00x: more rows are
///    more streams for the reads), and so do rows a multiple of an L2 way apart (bf16
///    [6144 -> 32768]: 16 rows in one 8-way set, 0.58-0.72x). Zen 1, alternated with the code
///    before, 3 rounds, medians: int8 T = 2-6 1.05-1.15x, bf16 T = 4 and 6 1.09-1.23x, unchanged
///    plans 0.97-1.04x.
inline Blocking blocking_for(const HostInfo& h) noexcept {
  Blocking b;
  std::size_t kc = (h.l1d_bytes * 2 / 3) / (kNR * sizeof(float));
  kc = std::clamp<std::size_t>(kc / 16 * 16, 64, 256);
  b.kc = kc;
  b.tile_prefetch = b.kc * b.nc * sizeof(float) <= h.l2_bytes / 2;
  if (h.vendor == CpuVendor::kIntel) {
    b.f32_in_place_max_t = 0;
    b.strip_prefetch = true;
    b.stream_prefetch_lines = 16;
  }
  if (h.l1d_bytes < 48 * 1024) b.f32_in_place_max_t = 0;
  if (!h.avx512) {
    b.gemv_int8 = GemvStep{16, 0, 0};
    b.pack_fetch_cols = 64;
    b.pack_group = b.pack_fetch_cols / kNR;
    b.group_stride = h.l2_bytes / h.l2_ways / 2;
    b.dot_pf_short = 8;
  }
  if (h.half_width_vectors()) {
    b.gemv_bf16 = GemvStep{8, 0, 8, 16384, true};
    b.gemv_int8.pf_short = 16;
    b.direct_pf = 0;
    b.direct_slab_bytes = 16384;
    b.direct_rows_core_bound = 16;
  }
  return b;
}

/// The blocking of the host this process runs on.
inline const Blocking& host_blocking() noexcept {
  static const Blocking b = blocking_for(host());
  return b;
}

/// Structural constants (not host-dependent).
struct Tuning {
  /// Aim for at least this many tasks per call (load balance with dynamic scheduling).
  static constexpr std::size_t kTargetTasks = 16;
  /// The direct path is used for T <= kDirectMaxT ([in, out] weights).
  static constexpr std::size_t kDirectMaxT = kMR;
  /// Smallest K chunk worth splitting off (rows).
  static constexpr std::size_t kMinChunkRows = 256;
  /// Dot path: at least this many output rows per task.
  static constexpr std::size_t kDotMinRows = 8;
  /// Below this many weight bytes (and few tokens) a call runs as one task.
  static constexpr std::size_t kTinyBytes = 32 * 1024;
  /// At most this many K chunks (so at most kTargetTasks * kMaxChunks partials per call).
  static constexpr std::size_t kMaxChunks = 16;
};

/// What a call multiplies: Y[T, out] (+)= A[T, in] . W.
struct Shape {
  std::size_t T = 0, in = 0, out = 0;
  std::size_t elem = 4;  ///< bytes per weight element
  bool in_out = true;    ///< weight rows are contiguous along `out` ([in, out] storage)
  bool a_trans = false;  ///< A is stored transposed (its rows are strided): packed path only
  /// A's row stride is a multiple of 4 KiB: the rows of a task's block would share cache sets
  /// (in = 32768 floats: every row in one L2 set), so the packed path copies the block first.
  /// With a 4 KiB-multiple stride the 256 rows of a block fall on at most 16 positions of a
  /// 64 KiB L2 way, 16 rows or more per set (the ways of a 16-way L2); at 1 or 2 KiB (in = 256,
  /// 512) they spread over 64-128 positions and the copy only costs time (measured: 8-17 % on
  /// the D 256 training shapes).
  bool a_alias = false;
  /// Y's row stride is a multiple of 4 KiB (out = 1024, 4096, 6144, 32768 floats): its rows map
  /// to the same L1 / L2 sets, so the packed path accumulates in a contiguous tile
  /// (Blocking::c_tile). At 1 or 2 KiB (out = 256, 512) the copies in and out only cost time.
  bool y_alias = true;
  bool dot = true;  ///< an [out, in] weight of this type has a dot kernel (else: packed)
  /// Elements between the starts of two weight rows in storage (0: `out` for [in, out], `in`
  /// for [out, in] weights).
  std::size_t ldw = 0;
};

struct Plan {
  Path path = Path::kDirect;
  std::size_t nc = 0, n_slabs = 1;      ///< output columns per slab
  std::size_t chunk = 0, n_chunks = 1;  ///< K rows per chunk
  std::size_t tb = 0, n_tblocks = 1;    ///< tokens per block
  std::size_t kc = 0;                   ///< K rows per micro-kernel call / packed strip
  std::size_t pf = 0;                   ///< direct and dot paths: prefetch distance in rows
  /// Direct path: the pf rows ahead of each call group are prefetched in address order, a share
  /// before each micro-kernel call (GemvStep::short_in_order), not by the micro-kernel.
  bool pf_in_order = false;
  bool pack = true;               ///< packed path: pack strips (false: f32 [in, out] read in place)
  std::size_t group = 1;          ///< packed path: strips packed together (Blocking::pack_group)
  std::size_t group_pf = 0;       ///< ... prefetching this many rows ahead
  bool tile_pf = false;           ///< packed path: prefetch the next tile into L2
  bool strip_pf = false;          ///< packed path: prefetch the next strip into L1
  bool stream_pf = false;         ///< ... both inside the calls (see burst_lines)
  std::size_t pack_pf_lines = 0;  ///< packed path, fused packing: see pack_pf_lines()
  bool c_tile = false;            ///< packed path: accumulate in a contiguous scratch tile
  std::size_t strip_floats = 0;   ///< scratch floats for the packed strip
  bool a_pack = false;            ///< packed path: copy / transpose each activation block
  std::size_t a_floats = 0;       ///< scratch floats for a packed (transposed) activation block
  std::size_t c_floats = 0;       ///< scratch floats for the contiguous output tile (c_tile)
  std::size_t partial_floats = 0;  ///< scratch floats for all K-chunk partial slots

  [[nodiscard]] std::size_t n_tasks() const noexcept { return n_slabs * n_chunks * n_tblocks; }
  [[nodiscard]] std::size_t work_floats() const noexcept {
    return strip_floats + a_floats + c_floats;
  }
  [[nodiscard]] std::size_t scratch_bytes() const noexcept {
    return (work_floats() + partial_floats) * sizeof(float);
  }
};

/// Where a task writes: y itself, or its scratch partial tile (K chunks after the first).
struct Dest {
  float* p;
  std::size_t ld;
};

/// One task's work: K rows [r0, r1), columns [n0, n1), tokens [t0, t1), written to d (element
/// (t0, n0) at d.p); `load_y`: the first K step adds to what d holds instead of overwriting it.
struct Block {
  std::size_t r0, r1, n0, n1, t0, t1;
  Dest d;
  bool load_y;
  bool in_y;  ///< d points into y (K chunk 0), not at a partial slot in scratch
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
inline void split_k(Plan& p, std::size_t t_block, std::size_t in, std::size_t align,
                    std::size_t reserved_floats, std::size_t scratch_bytes) noexcept {
  p.chunk = in;
  p.n_chunks = 1;
  const std::size_t tiles = p.n_slabs * p.n_tblocks;
  if (tiles >= Tuning::kTargetTasks) return;
  const std::size_t partial = t_block * round_up(p.nc, kNR);
  std::size_t want = std::min(
      {ceil_div(Tuning::kTargetTasks, tiles), in / Tuning::kMinChunkRows, Tuning::kMaxChunks});
  const std::size_t budget = scratch_bytes / sizeof(float);
  while (want > 1 && reserved_floats + (want - 1) * tiles * partial > budget) --want;
  if (want <= 1) return;
  p.chunk = round_up(ceil_div(in, want), align);
  p.n_chunks = ceil_div(in, p.chunk);
  if (p.n_chunks > 1) p.partial_floats = (p.n_chunks - 1) * tiles * partial;
}

/// The cache lines after the start of a weight row that the fused packing prefetches into L2
/// (the row's part of the next strips): those of Blocking::pack_fetch_cols columns beyond the
/// strip's own (f32 on AVX2: 64 columns are 4 lines, the 16-column strip 1, so 3; bf16: 1).
constexpr std::size_t pack_pf_lines(const Blocking& b, std::size_t elem) noexcept {
  const std::size_t want = ceil_div(b.pack_fetch_cols * elem, kCacheLine);
  const std::size_t own = ceil_div(kNR * elem, kCacheLine);
  return want > own ? want - own : 0;
}

/// The cache lines a packed-path task prefetches before each micro-kernel call when it does so
/// call by call: its shares of the next strip (kc rows of kNR elements) and of the next tile (kc
/// rows of nc), each spread over the calls that compute a strip or a tile.
constexpr std::size_t burst_lines(const Plan& q, std::size_t elem) noexcept {
  const std::size_t calls = ceil_div(q.tb, kMR);
  const std::size_t strip =
      q.strip_pf ? ceil_div(q.kc * ceil_div(kNR * elem, kCacheLine), calls) : 0;
  const std::size_t tile =
      q.tile_pf ? ceil_div(q.kc * ceil_div(q.nc * elem, kCacheLine), ceil_div(q.nc, kNR) * calls)
                : 0;
  return strip + tile;
}

/// Dot path over [out, in] weights: rows shorter than kShortSlabRowBytes prefetch
/// Blocking::dot_pf_short rows ahead.
inline Plan dot_plan(const Shape& s, const Blocking& b, bool tiny) noexcept {
  Plan p;
  p.path = Path::kDot;
  p.tb = s.T;
  p.chunk = s.in;
  p.pf = s.in * s.elem < kShortSlabRowBytes ? b.dot_pf_short : 0;
  p.nc =
      tiny ? s.out
           : std::max(Tuning::kDotMinRows, round_up(ceil_div(s.out, 2 * Tuning::kTargetTasks), 8));
  p.n_slabs = ceil_div(s.out, p.nc);
  return p;
}

/// The plan for one call, given the host's blocking and the pool's per-thread scratch size.
/// `parallel`: the call may run on several threads. Without it (one thread, or a call nested in
/// a pool task, which runs inline) the packed path does not cut the tokens into more blocks than
/// max_tb gives: each block packs its own strips, so more blocks only add packing work. Cutting
/// tokens never changes a result (every output is the same FMA chain over K whatever the token
/// blocks), so this is the one plan decision that may depend on the pool; the K chunks, which
/// do change the summation order, never do.
inline Plan make_plan(const Shape& s, const Blocking& b, std::size_t scratch_bytes,
                      bool parallel = true) noexcept {
  const std::size_t T = s.T, in = s.in, out = s.out;
  const std::size_t bytes = in * out * s.elem;
  // The weight's row stride in bytes (its rows alias in the caches at group_stride multiples).
  const std::size_t row_bytes = (s.ldw != 0 ? s.ldw : s.in_out ? out : in) * s.elem;
  const bool tiny = bytes <= Tuning::kTinyBytes && T <= kMR;

  if (!s.in_out && T <= kDotMaxT && !s.a_trans && s.dot) return dot_plan(s, b, tiny);

  // Packed path, if a strip (and a transposed activation block) fits in the scratch.
  if (!s.in_out || T > Tuning::kDirectMaxT || s.a_trans) {
    Plan q;
    q.path = Path::kPacked;
    q.kc = std::min(b.kc, in);
    q.tile_pf = b.tile_prefetch;
    q.nc = std::min(b.nc, out);
    q.n_slabs = ceil_div(out, q.nc);
    q.pack = !(s.in_out && s.elem == sizeof(float) && T <= b.f32_in_place_max_t);
    q.n_tblocks = ceil_div(T, b.max_tb);
    q.tb = round_up(ceil_div(T, q.n_tblocks), kMR);
    q.n_tblocks = ceil_div(T, q.tb);
    // Strips packed one at a time (fused), or in groups where the weight rows alias, and only
    // with room for every buffer next to the group.
    const bool alias = b.group_stride != 0 && row_bytes % b.group_stride == 0;
    const std::size_t group_floats =
        b.pack_group * q.kc * kNR + q.tb * q.kc + q.tb * round_up(q.nc, kNR);
    q.group = q.pack && s.in_out && alias && group_floats * sizeof(float) <= scratch_bytes
                  ? b.pack_group
                  : 1;
    const bool fused = q.group == 1;
    q.group_pf = fused ? 0 : b.group_pf_rows;
    q.strip_pf = fused && (s.elem == 1 ? b.strip_prefetch_int8 : b.strip_prefetch);
    q.pack_pf_lines = q.pack && s.in_out && s.elem != 1 && fused ? pack_pf_lines(b, s.elem) : 0;
    q.strip_floats = q.pack ? q.group * q.kc * kNR : 0;
    auto size_buffers = [&q, &s, &b, scratch_bytes] {
      q.a_pack = s.a_trans || s.a_alias;
      q.a_floats = q.a_pack ? q.tb * q.kc : 0;
      if (!s.a_trans && (q.strip_floats + q.a_floats) * sizeof(float) > scratch_bytes) {
        q.a_pack = false;  // an optimisation only: not when the scratch is that small
        q.a_floats = 0;
      }
      q.c_floats = q.tb * round_up(q.nc, kNR);
      q.c_tile = b.c_tile && s.y_alias && q.work_floats() * sizeof(float) <= scratch_bytes;
      if (!q.c_tile) q.c_floats = 0;
    };
    size_buffers();
    if (q.work_floats() * sizeof(float) <= scratch_bytes) {
      split_k(q, q.tb, in, q.kc, q.work_floats(), scratch_bytes);
      // Still too few tasks (small K): split the tokens further.
      if (parallel && q.n_tasks() < Tuning::kTargetTasks && q.n_chunks == 1) {
        const std::size_t more =
            std::min(ceil_div(Tuning::kTargetTasks, q.n_tasks()), ceil_div(q.tb, 4 * kMR));
        if (more > 1) {
          q.tb = round_up(ceil_div(q.tb, more), kMR);
          q.n_tblocks = ceil_div(T, q.tb);
          size_buffers();
        }
      }
      q.stream_pf = b.stream_prefetch_lines != 0 && q.pack &&
                    burst_lines(q, s.elem) > b.stream_prefetch_lines;
      return q;
    }
    // A scratch too small for a strip: dot products kDotMaxT tokens at a time, or nothing.
    if (!s.in_out && !s.a_trans && s.dot) return dot_plan(s, b, false);
    if (!s.in_out || s.a_trans) {
      Plan none;
      none.path = Path::kNone;
      return none;
    }
  }

  // Direct path on [in, out] weights.
  Plan p;
  p.path = Path::kDirect;
  const GemvStep& gemv = b.gemv_step(s.elem);
  // Rows a multiple of an L2 way apart (2 x group_stride: bf16 [6144 -> 32768]) all fall in one
  // L2 set, which 16 rows in flight overflow (8 ways): they keep direct_rows.
  const bool one_l2_set = b.group_stride != 0 && row_bytes % (2 * b.group_stride) == 0;
  p.kc = T == 1                           ? gemv.rows
         : T >= 2 * s.elem && !one_l2_set ? b.direct_rows_core_bound
                                          : b.direct_rows;
  p.pf = T == 1 ? gemv.pf : b.direct_pf;
  p.tb = T;
  if (tiny) {
    p.nc = out;
    p.chunk = in;
    return p;
  }
  const std::size_t slab_bytes = T == 1 ? gemv.slab_bytes : b.direct_slab_bytes;
  const std::size_t slab =
      round_up(std::max<std::size_t>(slab_bytes / s.elem, kDirectNR), kDirectNR);
  p.nc = slab >= out ? out : slab;
  if (p.nc * s.elem < kShortSlabRowBytes) {
    p.pf = T == 1 ? gemv.pf_short : p.kc;
    p.pf_in_order = T == 1 && gemv.short_in_order;
  }
  p.n_slabs = ceil_div(out, p.nc);
  split_k(p, T, in, p.kc, 0, scratch_bytes);
  return p;
}

MOE_SIMD_DETAIL_END
