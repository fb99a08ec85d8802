// moe/ops/matmul.hpp: Y[T, out] = X[T, in] . W for every weight type and layout.
//
//   matmul(pool, x, w, y)   x: [T, in] f32, y: [T, out] f32 (both may have row strides)
//   matvec(pool, x, w, y)   one token: x[in], y[out]
//
// W is a DenseWeight<float | bf16> in either layout ([in, out] JAX, [out, in] PyTorch) or an
// Int8Weight (Grok-1's int8 [in, out] with bf16 scales [blocks, out]). Weights are read in place
// (they may be an mmap'd checkpoint): never repacked in memory, copied or modified. Activations
// and accumulators are f32. Pointers need no alignment. Int8ActWeight (the same int8 memory) opts
// into int8 activations: approximate, see detail/matmul_int8act.hpp. The backward products are
// in matmul_grad.hpp.
//
// Numerics
//  * bf16 -> f32 and int8 x bf16-scale -> f32 are exact (the product of an 8-bit and an 8-bit
//    significand fits in f32), and the scale is applied to each weight element before the FMA, so
//    every path sums exactly the dequantised weights of the reference.
//  * [in, out] weights and the packed path compute every output element as one sequential FMA
//    chain over k (k ascending). The only exception is a K split (narrow outputs, see
//    detail/matmul_plan.hpp): each chunk is such a chain, and the chunk sums are added to y in
//    chunk order. [out, in] weights at T <= 4 use lane-wise dot products (fixed lane order).
//  * The decomposition depends on the shapes and the host's blocking only (detail::Blocking,
//    from the CPU's cache sizes and vendor), never on the number of threads, so results are
//    bit-identical for every pool size (and may differ in the last bits between hosts).
//
// Threading and memory: the work is split into tasks run by `pool` (the caller takes part).
// Strips are packed into the pool's per-thread scratch (pool.scratch(thread)): do not call
// matmul from inside a pool task that keeps live data in its own scratch block. No allocation.
//
// Performance notes and measured numbers: docs/performance.md, section "Kernels".
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <moe/config.hpp>
#include <moe/core/tensor.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/ops/detail/matmul_int8act.hpp>
#include <moe/ops/detail/matmul_kernels.hpp>
#include <moe/ops/detail/matmul_plan.hpp>
#include <moe/ops/weights.hpp>

namespace moe::detail {

/// The transpose of an Int8Weight as a weight of its own: W'[k', n'] = W[n', k'] (in' = W.out,
/// out' = W.in), i.e. int8 stored [out', in'] with one bf16 scale per (block of W rows, W
/// column). Used by matmul_backward_input (dx = dy . W^T).
struct Int8WeightT {
  const std::int8_t* data = nullptr;
  const bf16* scales = nullptr;
  std::size_t in = 0, out = 0;  ///< of W^T: in = W.out, out = W.in
  std::size_t block_rows = 1;   ///< W rows per scale row
};

/// f32 rows with a row stride: an [in, out] f32 weight whose rows are `ld` floats apart (the
/// activations or output gradients that play the weight's role in matmul_backward_weight).
struct F32Rows {
  const float* data = nullptr;
  std::size_t in = 0, out = 0, ld = 0;
};

/// The left operand of C = A . W: element (r, c) = trans ? p[c * ld + r] : p[r * ld + c].
struct Activations {
  const float* p = nullptr;
  std::size_t rows = 0, cols = 0, ld = 0;
  bool trans = false;

  Activations() = default;
  Activations(MatrixView<const float> x) noexcept  // NOLINT(google-explicit-constructor)
      : p(x.data), rows(x.rows), cols(x.cols), ld(x.stride) {}
  static Activations transposed(MatrixView<const float> xt) noexcept {
    Activations a;
    a.p = xt.data;
    a.rows = xt.cols;
    a.cols = xt.rows;
    a.ld = xt.stride;
    a.trans = true;
    return a;
  }
  [[nodiscard]] const float* row(std::size_t r) const noexcept { return p + r * ld; }
};

}  // namespace moe::detail

MOE_SIMD_DETAIL_BEGIN

/// Element access of a weight type: element type, storage, scales, the [out, in] reader.
template <class W>
struct WeightAccess;
template <class T>
struct WeightAccess<DenseWeight<T>> {
  using E = T;
  static constexpr bool kInt8 = false;
  static bool in_out(const DenseWeight<T>& w) noexcept { return w.layout == Layout::kInOut; }
  static std::size_t ld(const DenseWeight<T>& w) noexcept { return in_out(w) ? w.out : w.in; }
  static const bf16* scales(const DenseWeight<T>&) noexcept { return nullptr; }
  static std::size_t block_rows(const DenseWeight<T>& w) noexcept { return w.in; }
  static RowReader<T> reader(const DenseWeight<T>& w) noexcept { return {w.data, w.in}; }
};
template <>
struct WeightAccess<Int8Weight> {
  using E = std::int8_t;
  static constexpr bool kInt8 = true;
  static bool in_out(const Int8Weight&) noexcept { return true; }
  static std::size_t ld(const Int8Weight& w) noexcept { return w.row_stride(); }
  static const bf16* scales(const Int8Weight& w) noexcept { return w.scales; }
  static std::size_t block_rows(const Int8Weight& w) noexcept { return w.block_rows(); }
  static RowReader<E> reader(const Int8Weight&) noexcept { return {}; }
};
template <>
struct WeightAccess<Int8WeightT> {
  using E = std::int8_t;
  static constexpr bool kInt8 = false;  // no [in, out] scale rows: read through reader()
  static bool in_out(const Int8WeightT&) noexcept { return false; }
  static std::size_t ld(const Int8WeightT& w) noexcept { return w.in; }
  static const bf16* scales(const Int8WeightT&) noexcept { return nullptr; }
  static std::size_t block_rows(const Int8WeightT& w) noexcept { return w.block_rows; }
  static RowReader<E> reader(const Int8WeightT& w) noexcept {
    return {w.data, w.in, w.scales, w.block_rows};
  }
};
template <>
struct WeightAccess<F32Rows> {
  using E = float;
  static constexpr bool kInt8 = false;
  static bool in_out(const F32Rows&) noexcept { return true; }
  static std::size_t ld(const F32Rows& w) noexcept { return w.ld; }
  static const bf16* scales(const F32Rows&) noexcept { return nullptr; }
  static std::size_t block_rows(const F32Rows& w) noexcept { return w.in; }
  static RowReader<float> reader(const F32Rows&) noexcept { return {}; }
};

/// Rows [k0, k0 + kc) x columns [n0, n0 + cols) of the weight's storage as a prefetch block.
template <class W>
BlockPrefetcher weight_block(const W& w, std::size_t k0, std::size_t kc, std::size_t n0,
                             std::size_t cols, std::size_t steps) noexcept {
  using A = WeightAccess<W>;
  using E = typename A::E;
  const std::size_t ld = A::ld(w) * sizeof(E);
  if (A::in_out(w)) return {w.data + k0 * A::ld(w) + n0, kc, cols * sizeof(E), ld, steps};
  return {w.data + n0 * A::ld(w) + k0, cols, kc * sizeof(E), ld, steps};
}

/// The strip a packed-path task computes after the one at (k0, n): the next of its tile, or the
/// first of the next tile (none after the last), as a prefetch block spread over `steps`.
template <class W>
BlockPrefetcher next_strip(const Plan& plan, const W& w, const Block& blk, std::size_t k0,
                           std::size_t n, std::size_t steps) noexcept {
  std::size_t kn = k0, nn = n + kNR;
  if (nn >= blk.n1) {
    kn = k0 + plan.kc;
    nn = blk.n0;
  }
  if (kn >= blk.r1) return {};
  return weight_block(w, kn, std::min(plan.kc, blk.r1 - kn), nn, std::min(kNR, blk.n1 - nn), steps);
}

/// Direct path: an [in, out] weight read in place, a few rows per micro-kernel call.
template <class W>
void run_direct(const Plan& plan, const Activations& x, const W& w, const Block& blk) noexcept {
  using A = WeightAccess<W>;
  using E = typename A::E;
  const E* data = w.data;
  const std::size_t ldw = A::ld(w);
  const std::size_t br = A::block_rows(w);
  const bf16* scales = A::scales(w);
  for (std::size_t k0 = blk.r0; k0 < blk.r1;) {
    std::size_t k1 = std::min(k0 + plan.kc, blk.r1);
    if constexpr (A::kInt8) k1 = std::min(k1, (k0 / br + 1) * br);  // one scale row per call
    const std::size_t kc = k1 - k0;
    std::size_t pf = k1 + plan.pf <= w.in ? plan.pf : 0;  // prefetch rows ahead
    const bf16* srow = A::kInt8 ? scales + (k0 / br) * ldw : nullptr;
    const bool load_y = blk.load_y || k0 != blk.r0;
    constexpr std::size_t NV = direct_nv(A::kInt8), NR = NV * simd::kLanes;
    // The rows pf ahead in address order, a share before each call (Plan::pf_in_order), or a
    // line of each by the micro-kernel.
    BlockPrefetcher ahead;
    if (plan.pf_in_order && pf != 0) {
      ahead = weight_block(w, k0 + pf, kc, blk.n0, blk.n1 - blk.n0,
                           ceil_div(blk.n1 - blk.n0, NR) * ceil_div(blk.t1 - blk.t0, kMR));
      pf = 0;
    }
    for (std::size_t n = blk.n0; n < blk.n1; n += NR) {
      const std::size_t cols = std::min(NR, blk.n1 - n);
      const E* wp = data + k0 * ldw + n;
      const bf16* sp = A::kInt8 ? srow + n : nullptr;
      for (std::size_t t = blk.t0; t < blk.t1; t += kMR) {
        const std::size_t mr = std::min(kMR, blk.t1 - t);
        float* yp = blk.d.p + (t - blk.t0) * blk.d.ld + (n - blk.n0);
        const float* xp = x.row(t) + k0;
        ahead.template step<true>();
        axpy_strip<false, A::kInt8, false, NV>(mr, kc, xp, x.ld, wp, ldw, sp, yp, blk.d.ld, load_y,
                                               cols, pf);
      }
    }
    k0 = k1;
  }
}

/// Calls f(ka, kb, sp) for each int8 scale block that rows [k0, k0 + kc) of an [in, out] weight
/// cross (once for the whole range with other weights): rows [ka, kb) share the scale row whose
/// column n sp points at (nullptr without scales).
template <class W, class F>
void for_each_scale_block(const W& w, std::size_t k0, std::size_t kc, std::size_t n,
                          F&& f) noexcept {
  using A = WeightAccess<W>;
  const std::size_t br = A::block_rows(w);
  for (std::size_t ka = k0; ka < k0 + kc;) {
    std::size_t kb = k0 + kc;
    if constexpr (A::kInt8) kb = std::min(kb, (ka / br + 1) * br);
    f(ka, kb, A::kInt8 ? A::scales(w) + (ka / br) * A::ld(w) + n : nullptr);
    ka = kb;
  }
}

/// Packs rows [k0, k0 + kc) x columns [n, n + cols) of an [in, out] weight as plan.group
/// consecutive strips at bp (see pack_strips_inout), one int8 scale block at a time.
template <class W>
void pack_group(const Plan& plan, const W& w, std::size_t k0, std::size_t kc, std::size_t n,
                std::size_t cols, float* bp) noexcept {
  using A = WeightAccess<W>;
  const std::size_t ldw = A::ld(w);
  for_each_scale_block(w, k0, kc, n, [&](std::size_t ka, std::size_t kb, const bf16* sp) {
    pack_strips_inout<A::kInt8>(kb - ka, w.data + ka * ldw + n, ldw, sp, cols, bp + (ka - k0) * kNR,
                                plan.kc * kNR, plan.group_pf);
  });
}

/// Packed path: see detail/matmul_plan.hpp. `scratch` holds the packed strip (or group of
/// strips), then the packed (transposed) activation block.
template <class W>
void run_packed(const Plan& plan, const Activations& a, const W& w, const Block& blk,
                float* scratch) noexcept {
  using A = WeightAccess<W>;
  using E = typename A::E;
  float* bp = scratch;
  float* ab = scratch + plan.strip_floats;
  const std::size_t ldw = A::ld(w);
  const bool in_out = A::in_out(w);
  const std::size_t r0 = blk.r0, r1 = blk.r1, n0 = blk.n0, n1 = blk.n1, t0 = blk.t0, t1 = blk.t1;
  const std::size_t t_blocks = ceil_div(t1 - t0, kMR);
  for (std::size_t k0 = r0; k0 < r1; k0 += plan.kc) {
    const std::size_t kc = std::min(plan.kc, r1 - k0);
    const bool load_y = blk.load_y || k0 != r0;
    // The activations of this K block: rows of x, or a transposed block packed into `ab`.
    const float* xb = nullptr;
    std::size_t ldx = a.ld;
    if (a.trans) {
      transpose_block(RowReader<float>{a.p, a.ld}, k0, kc, t0, t1 - t0, ab, kc);
      xb = ab;
      ldx = kc;
    } else if (plan.a_pack) {
      copy_tile(a.row(t0) + k0, a.ld, ab, kc, t1 - t0, kc);
      xb = ab;
      ldx = kc;
    } else {
      xb = a.row(t0) + k0;
    }
    // The next tile of this task (into L2) and the next strip (into L1), fetched during the
    // compute below: a share before each micro-kernel call, or (plan.stream_pf) a share every
    // few k steps inside the calls that read the packed strip.
    const std::size_t strips = ceil_div(n1 - n0, kNR);
    const std::size_t packed_calls = in_out && plan.group == 1 ? t_blocks - 1 : t_blocks;
    const bool stream = plan.stream_pf && packed_calls > 0;
    KernelPrefetch next;
    const std::size_t k_next = k0 + plan.kc;
    if (plan.tile_pf && plan.pack && k_next < r1) {
      next.tile = weight_block(
          w, k_next, std::min(plan.kc, r1 - k_next), n0, n1 - n0,
          stream ? KernelPrefetch::steps(strips * packed_calls, kc, KernelPrefetch::kTileEvery)
                 : strips * t_blocks);
    }
    // In place (no packing): the first token block of each strip prefetches the same strip of
    // the next tile, a row per k step, inside the micro-kernel.
    const std::size_t in_place_pf = !plan.pack && k_next + plan.kc <= r1 ? plan.kc : 0;
    for (std::size_t n = n0; n < n1; n += kNR) {
      const std::size_t cols = std::min(kNR, n1 - n);
      next.strip = {};
      if (plan.strip_pf && plan.pack) {
        next.strip =
            next_strip(plan, w, blk, k0, n,
                       stream ? KernelPrefetch::steps(packed_calls, kc, KernelPrefetch::kStripEvery)
                              : t_blocks);
      }
      std::size_t t = t0;
      auto yp = [&](std::size_t tt) { return blk.d.p + (tt - t0) * blk.d.ld + (n - n0); };
      auto xp = [&](std::size_t tt) { return xb + (tt - t0) * ldx; };
      if (!plan.pack) {
        if constexpr (std::is_same_v<E, float> && !A::kInt8) {
          const float* wp = w.data + k0 * ldw + n;
          for (; t < t1; t += kMR) {
            const std::size_t mr = std::min(kMR, t1 - t), pf = t == t0 ? in_place_pf : 0;
            axpy_strip<false, false>(mr, kc, xp(t), ldx, wp, ldw, nullptr, yp(t), blk.d.ld, load_y,
                                     cols, pf);
          }
        }
        continue;
      }
      const float* strip = bp;  // what the token blocks below read
      if (plan.group > 1) {
        // Grouped packing: the first strip of each group packs the whole group.
        const std::size_t j = (n - n0) / kNR % plan.group;
        if (j == 0) pack_group(plan, w, k0, kc, n, std::min(plan.group * kNR, n1 - n), bp);
        strip = bp + j * plan.kc * kNR;
      } else if (in_out) {
        // Fused packing: the first token block reads the weights (int8: one scale block at a
        // time) and stores the widened strip into bp on the way.
        const std::size_t mr = std::min(kMR, t1 - t);
        if (!stream) {
          next.tile.template step<false>();
          next.strip.template step<true>();
        }
        for_each_scale_block(w, k0, kc, n, [&](std::size_t ka, std::size_t kb, const bf16* sp) {
          const E* wp = w.data + ka * ldw + n;
          const bool ly = ka == k0 ? load_y : true;
          axpy_strip<false, A::kInt8, true>(mr, kb - ka, xp(t) + (ka - k0), ldx, wp, ldw, sp, yp(t),
                                            blk.d.ld, ly, cols, 0, bp + (ka - k0) * kNR,
                                            plan.pack_pf_lines);
        });
        t += kMR;
      } else {
        pack_strip_outin(A::reader(w), n, cols, k0, kc, bp);
      }
      for (; t < t1; t += kMR) {
        const std::size_t mr = std::min(kMR, t1 - t);
        if (!stream) {
          next.tile.template step<false>();
          next.strip.template step<true>();
        }
        axpy_strip<true, false>(mr, kc, xp(t), ldx, strip, kNR, nullptr, yp(t), blk.d.ld, load_y,
                                cols, 0, nullptr, 0, stream ? &next : nullptr);
      }
    }
  }
}

/// Dot path: output rows [n0, n1) for tokens [t0, t1) of an [out, in] weight, written (or added)
/// to y, prefetching plan.pf rows ahead while those rows exist.
template <class T>
void run_dot(const Plan& plan, const Activations& x, const DenseWeight<T>& w, std::size_t n0,
             std::size_t n1, std::size_t t0, std::size_t t1, MatrixView<float> y,
             bool add) noexcept {
  for (std::size_t t = t0; t < t1; t += kDotMaxT) {
    const std::size_t mr = std::min(kDotMaxT, t1 - t);
    const std::size_t step = dot_rows(mr);
    for (std::size_t o = n0; o < n1; o += step) {
      const std::size_t no = std::min(step, n1 - o);
      const std::size_t pf = o + no + plan.pf <= w.out ? plan.pf : 0;
      dot_kernel_rt(mr, no, w.in, x.row(t), x.ld, w.data + o * w.in, w.in, y.row(t) + o, y.stride,
                    add, pf);
    }
  }
}

/// Runs the tasks of `plan` for Y[T, out] (+)= ...: run(block, scratch) computes one task. K
/// chunks: chunk 0 accumulates straight into y; chunk c > 0 into its own slot (c - 1, tile) in
/// the scratch of the thread that runs it (after plan.work_floats()). The last chunk of a tile to
/// finish (counted in `finished`) adds the slots to y in chunk order 1, 2, ...: a fixed order,
/// and no waiting.
template <class Run>
void run_tasks(ThreadPool& pool, const Plan& plan, std::size_t T, std::size_t in, std::size_t out,
               MatrixView<float> y, bool accumulate, Run&& run) {
  const bool split = plan.n_chunks > 1;
  const std::size_t tiles = plan.n_slabs * plan.n_tblocks;
  constexpr std::size_t kMaxTiles = Tuning::kTargetTasks;
  constexpr std::size_t kMaxPartials = Tuning::kTargetTasks * Tuning::kMaxChunks;
  std::atomic<std::uint32_t> finished[kMaxTiles];
  const float* partials[kMaxPartials];
  if (split) {
    for (auto& f : finished) f.store(0, std::memory_order_relaxed);
  }
  const std::size_t slot_floats = plan.tb * round_up(plan.nc, kNR);
  pool.parallel_for(plan.n_tasks(), [&](std::size_t task, std::size_t thread) {
    const std::size_t c = task / tiles;
    const std::size_t tile = task % tiles;
    const std::size_t b = tile / plan.n_slabs;
    const std::size_t s = tile % plan.n_slabs;
    Block blk;
    blk.r0 = c * plan.chunk;
    blk.r1 = std::min(in, blk.r0 + plan.chunk);
    blk.n0 = s * plan.nc;
    blk.n1 = std::min(out, blk.n0 + plan.nc);
    blk.t0 = b * plan.tb;
    blk.t1 = std::min(T, blk.t0 + plan.tb);
    blk.d = Dest{y.row(blk.t0) + blk.n0, y.stride};
    blk.load_y = accumulate;
    blk.in_y = true;
    float* scratch = reinterpret_cast<float*>(pool.scratch(thread));
    if (split && c > 0) {
      blk.d = Dest{scratch + plan.work_floats() + ((c - 1) * tiles + tile) * slot_floats,
                   round_up(blk.n1 - blk.n0, kNR)};
      blk.load_y = false;
      blk.in_y = false;
      partials[(c - 1) * tiles + tile] = blk.d.p;
    }
    run(blk, scratch);
    if (split && finished[tile].fetch_add(1, std::memory_order_acq_rel) + 1 == plan.n_chunks) {
      const std::size_t ld = round_up(blk.n1 - blk.n0, kNR);
      for (std::size_t cc = 1; cc < plan.n_chunks; ++cc) {
        add_tile(y.row(blk.t0) + blk.n0, y.stride, partials[(cc - 1) * tiles + tile], ld,
                 blk.t1 - blk.t0, blk.n1 - blk.n0);
      }
    }
  });
}

/// Y[T, out] (+= when accumulate) A[T, in] . W with the given blocking, for the exact weight
/// types and the backward products' internal views. Returns false (and does nothing) only when
/// the pool's scratch cannot hold the strip an internal view needs (Path::kNone).
template <class W>
bool gemm(ThreadPool& pool, const Activations& x, const W& w, MatrixView<float> y, bool accumulate,
          const Blocking& blocking) {
  using A = WeightAccess<W>;
  const std::size_t T = x.rows;
  Shape shape;
  shape.T = T;
  shape.in = w.in;
  shape.out = w.out;
  shape.elem = sizeof(typename A::E);
  shape.in_out = A::in_out(w);
  shape.ldw = A::ld(w);
  shape.a_trans = x.trans;
  shape.a_alias = !x.trans && x.rows > 1 && (x.ld * sizeof(float)) % 4096 == 0;
  shape.y_alias = (y.stride * sizeof(float)) % 4096 == 0;
  constexpr bool kDense =
      std::is_same_v<W, DenseWeight<float>> || std::is_same_v<W, DenseWeight<bf16>>;
  shape.dot = kDense;
  const Plan plan = make_plan(shape, blocking, pool.scratch_bytes(), pool.available() > 1);
  if (plan.path == Path::kNone) return false;
  if (plan.path == Path::kDot) {
    if constexpr (kDense) {
      pool.parallel_for(plan.n_slabs, [&](std::size_t s, std::size_t) {
        const std::size_t n0 = s * plan.nc;
        run_dot(plan, x, w, n0, std::min(w.out, n0 + plan.nc), 0, T, y, accumulate);
      });
    }
    return true;
  }
  run_tasks(pool, plan, T, w.in, w.out, y, accumulate, [&](const Block& blk, float* scratch) {
    if (plan.path == Path::kPacked && plan.c_tile && blk.in_y) {
      // Through a contiguous tile: y's rows may alias in the caches (see Blocking::c_tile).
      Block b = blk;
      b.d = Dest{scratch + plan.strip_floats + plan.a_floats, round_up(blk.n1 - blk.n0, kNR)};
      const std::size_t rows = blk.t1 - blk.t0, cols = blk.n1 - blk.n0;
      if (blk.load_y) copy_tile(blk.d.p, blk.d.ld, b.d.p, b.d.ld, rows, cols);
      run_packed(plan, x, w, b, scratch);
      copy_tile(b.d.p, b.d.ld, blk.d.p, blk.d.ld, rows, cols);
    } else if (plan.path == Path::kPacked) {
      run_packed(plan, x, w, blk, scratch);
    } else {
      run_direct(plan, x, w, blk);
    }
  });
  return true;
}

/// Y[T, out] (+)= X[T, in] . W with int8-quantised activations (Int8ActWeight), with kernel K
/// (this TU's best; the tests also run kScalar where an AVX2 kernel is compiled).
template <Int8ActKernel K = kInt8ActKernel>
void gemm_int8act(ThreadPool& pool, MatrixView<const float> x, const Int8Weight& w,
                  MatrixView<float> y, bool accumulate, const Blocking& blocking) {
  const Plan plan = make_int8act_plan(x.rows, w.in, w.out, blocking, pool.scratch_bytes());
  run_tasks(pool, plan, x.rows, w.in, w.out, y, accumulate,
            [&](const Block& blk, float* scratch) { run_int8act<K>(plan, x, w, blk, scratch); });
}

MOE_SIMD_DETAIL_END

MOE_SIMD_NAMESPACE_BEGIN

/// Y[T, out] = X[T, in] . W. Accumulates in f32. x.cols == w.in, y.cols == w.out,
/// x.rows == y.rows (checked with MOE_ASSERT only: callers validate shapes at construction).
/// x and y must not overlap. Results are bit-identical for every pool size. No allocation.
template <class W>
void matmul(ThreadPool& pool, MatrixView<const float> x, const W& w, MatrixView<float> y) {
  static_assert(is_weight_v<W>,
                "matmul: W must be DenseWeight<float|bf16>, Int8Weight or "
                "Int8ActWeight");
  MOE_ASSERT(x.cols == w.in && y.cols == w.out && x.rows == y.rows);
  if (x.rows == 0 || w.out == 0) return;
  if (w.in == 0) {
    for (std::size_t t = 0; t < y.rows; ++t) std::fill_n(y.row(t), y.cols, 0.0f);
    return;
  }
  if constexpr (std::is_same_v<W, Int8ActWeight>) {
    detail::gemm_int8act(pool, x, w, y, false, detail::host_blocking());
  } else {
    detail::gemm(pool, detail::Activations(x), w, y, false, detail::host_blocking());
  }
}

/// y[out] = x[in] . W (one token).
template <class W>
void matvec(ThreadPool& pool, const float* x, const W& w,
            float* y) {  // NOLINT(readability-non-const-parameter): written via the view
  matmul(pool, MatrixView<const float>(x, 1, w.in), w, MatrixView<float>(y, 1, w.out));
}

MOE_SIMD_NAMESPACE_END
