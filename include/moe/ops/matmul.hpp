// moe/ops/matmul.hpp: Y[T, out] = X[T, in] . W for every weight type and layout.
//
//   matmul(pool, x, w, y)   x: [T, in] f32, y: [T, out] f32 (both may have row strides)
//   matvec(pool, x, w, y)   one token: x[in], y[out]
//
// W is a DenseWeight<float | bf16> in either layout ([in, out] JAX, [out, in] PyTorch) or an
// Int8Weight (Grok-1's int8 [in, out] with bf16 scales [blocks, out]). Weights are read in place
// (they may be an mmap'd checkpoint): never repacked, copied or modified. Activations and
// accumulators are f32. Pointers need no alignment.
//
// Numerics
//  * bf16 -> f32 and int8 x bf16-scale -> f32 are exact (the product of an 8-bit and an 8-bit
//    significand fits in f32), and the scale is applied to each weight element before the FMA, so
//    every path sums exactly the dequantised weights of the reference.
//  * [in, out] weights and the packed path compute every output element as one sequential FMA
//    chain over k (k ascending). The only exception is a K split (narrow outputs, see
//    detail/matmul_plan.hpp): each chunk is such a chain, and the chunk sums are added to y in
//    chunk order. [out, in] weights at T <= 4 use lane-wise dot products (fixed lane order).
//  * The decomposition depends on the shapes only, never on the number of threads, so results
//    are bit-identical for every pool size.
//
// Threading and memory: the work is split into tasks run by `pool` (the caller takes part).
// Tiles are packed into the pool's per-thread scratch (pool.scratch(thread)): do not call matmul
// from inside a pool task that keeps live data in its own scratch block. No allocation.
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
#include <moe/ops/detail/matmul_kernels.hpp>
#include <moe/ops/detail/matmul_plan.hpp>
#include <moe/ops/detail/matmul_simd.hpp>
#include <moe/ops/weights.hpp>


MOE_SIMD_DETAIL_BEGIN

/// Element access of a weight type: element type, data, scales.
template <class W>
struct WeightAccess;
template <class T>
struct WeightAccess<DenseWeight<T>> {
  using E = T;
  static constexpr bool kInt8 = false;
  static bool in_out(const DenseWeight<T>& w) noexcept { return w.layout == Layout::kInOut; }
  static const bf16* scales(const DenseWeight<T>&) noexcept { return nullptr; }
  static std::size_t block_rows(const DenseWeight<T>& w) noexcept { return w.in; }
};
template <>
struct WeightAccess<Int8Weight> {
  using E = std::int8_t;
  static constexpr bool kInt8 = true;
  static bool in_out(const Int8Weight&) noexcept { return true; }
  static const bf16* scales(const Int8Weight& w) noexcept { return w.scales; }
  static std::size_t block_rows(const Int8Weight& w) noexcept { return w.block_rows(); }
};

/// y[t][n] += p[t][n] for t < rows, n < cols.
inline void add_tile(float* y, std::size_t ldy, const float* p, std::size_t ldp, std::size_t rows,
                     std::size_t cols) noexcept {
  constexpr std::size_t L = Vec::kLanes;
  for (std::size_t t = 0; t < rows; ++t) {
    float* yr = y + t * ldy;
    const float* pr = p + t * ldp;
    std::size_t n = 0;
    for (; n + L <= cols; n += L)
      Vec::store(yr + n, Vec::add(Vec::load(yr + n), Vec::load(pr + n)));
    if (n < cols) {
      const Vec::Mask m = Vec::mask(cols - n);
      Vec::store(yr + n, Vec::add(Vec::load(yr + n, m), Vec::load(pr + n, m)), m);
    }
  }
}

/// Where a task writes: y itself, or its scratch partial tile (K chunks after the first).
struct Dest {
  float* p;
  std::size_t ld;
};

/// Direct path: rows [r0, r1) x columns [n0, n1) x tokens [t0, t1) of an [in, out] weight,
/// accumulated into d (d.p is element (t0, n0)).
template <class W>
void run_direct(const Plan& plan, MatrixView<const float> x, const W& w, std::size_t r0,
                std::size_t r1, std::size_t n0, std::size_t n1, std::size_t t0, std::size_t t1,
                Dest d) noexcept {
  using A = WeightAccess<W>;
  using E = typename A::E;
  const E* data = w.data;
  const std::size_t out = w.out;
  const std::size_t br = A::block_rows(w);
  const bf16* scales = A::scales(w);
  const StripMask full = strip_mask(kNR);
  for (std::size_t k0 = r0; k0 < r1;) {
    std::size_t k1 = std::min(k0 + plan.kc, r1);
    if constexpr (A::kInt8) k1 = std::min(k1, (k0 / br + 1) * br);  // one scale row per call
    const std::size_t kc = k1 - k0;
    const std::size_t pf = k1 + plan.pf <= w.in ? plan.pf : 0;  // prefetch rows ahead
    const bf16* srow = A::kInt8 ? scales + (k0 / br) * out : nullptr;
    for (std::size_t n = n0; n < n1; n += kNR) {
      const std::size_t cols = std::min(kNR, n1 - n);
      const E* wp = data + k0 * out + n;
      const bf16* sp = A::kInt8 ? srow + n : nullptr;
      for (std::size_t t = t0; t < t1; t += kMR) {
        const std::size_t mr = std::min(kMR, t1 - t);
        float* yp = d.p + (t - t0) * d.ld + (n - n0);
        const float* xp = x.row(t) + k0;
        if (cols == kNR) {
          axpy_kernel_mr<false, false, A::kInt8>(mr, kc, xp, x.stride, wp, out, sp, yp, d.ld,
                                                 k0 != r0, full, pf);
        } else {
          axpy_kernel_mr<true, true, A::kInt8>(mr, kc, xp, x.stride, wp, out, sp, yp, d.ld,
                                               k0 != r0, strip_mask(cols), pf);
        }
      }
    }
    k0 = k1;
  }
}

/// Prefetches a weight tile (rows x row_bytes, row stride ld bytes) into L2, a few lines at a
/// time, while the micro-kernels work on the previous tile from L1/L2: the DRAM stream of the
/// next tile overlaps the compute of this one.
class TilePrefetcher {
 public:
  TilePrefetcher() = default;
  TilePrefetcher(const void* base, std::size_t rows, std::size_t row_bytes, std::size_t ld,
                 std::size_t calls) noexcept
      : base_(reinterpret_cast<std::uintptr_t>(base)),
        rows_(rows),
        lines_((row_bytes + kCacheLine - 1) / kCacheLine),
        ld_(ld),
        per_call_(calls == 0 ? 0 : (rows * lines_ + calls - 1) / calls) {}
  /// Issues the next share of prefetches (call once per micro-kernel call).
  void step() noexcept {
    for (std::size_t n = 0; n < per_call_ && row_ < rows_; ++n) {
      MOE_MM_PREFETCH_L2(base_ + row_ * ld_ + line_ * kCacheLine);
      if (++line_ == lines_) {
        line_ = 0;
        ++row_;
      }
    }
  }

 private:
  std::uintptr_t base_ = 0;
  std::size_t rows_ = 0, lines_ = 1, ld_ = 0, per_call_ = 0;
  std::size_t row_ = 0, line_ = 0;
};

/// Packed path: the same block, through f32 tiles packed into `bp`.
template <class W>
void run_packed(const Plan& plan, MatrixView<const float> x, const W& w, std::size_t r0,
                std::size_t r1, std::size_t n0, std::size_t n1, std::size_t t0, std::size_t t1,
                Dest d, float* bp) noexcept {
  using A = WeightAccess<W>;
  using E = typename A::E;
  const std::size_t nc = n1 - n0;
  const StripMask full = strip_mask(kNR);
  const std::size_t calls = ceil_div(nc, kNR) * ceil_div(t1 - t0, kMR);
  const bool in_out = A::in_out(w);
  for (std::size_t k0 = r0; k0 < r1; k0 += plan.kc) {
    const std::size_t kc = std::min(plan.kc, r1 - k0);
    if (!plan.pack) {
      // f32 [in, out]: the tile is read in place (row stride w.out).
    } else if constexpr (A::kInt8) {
      pack_inout(w.data + k0 * w.out + n0, w.out, kc, nc, bp, w.scales + n0, k0, w.block_rows(),
                 plan.pf, w.in - k0);
    } else if (in_out) {
      pack_inout(w.data + k0 * w.out + n0, w.out, kc, nc, bp, nullptr, k0, 1, plan.pf, w.in - k0);
    } else {
      pack_outin(w.data + n0 * w.in + k0, w.in, kc, nc, bp);
    }
    // The next tile of this task, fetched into L2 during the compute below.
    TilePrefetcher pf;
    const std::size_t k_next = k0 + plan.kc;
    // In place (no packing): the first token block of each strip prefetches the same strip of
    // the next tile, a row per k step, inside the micro-kernel (an even trickle instead of the
    // TilePrefetcher's bursts; measured faster at T = 16).
    const std::size_t strip_pf = !plan.pack && k_next + plan.kc <= r1 ? plan.kc : 0;
    if (plan.pack && plan.tile_pf && k_next < r1) {
      const std::size_t kn = std::min(plan.kc, r1 - k_next);
      if (in_out) {
        pf = TilePrefetcher(w.data + k_next * w.out + n0, kn, nc * sizeof(E), w.out * sizeof(E),
                            calls);
      } else {
        pf = TilePrefetcher(w.data + n0 * w.in + k_next, nc, kn * sizeof(E), w.in * sizeof(E),
                            calls);
      }
    }
    for (std::size_t n = n0; n < n1; n += kNR) {
      const std::size_t cols = std::min(kNR, n1 - n);
      const float* bs = bp + ((n - n0) / kNR) * kc * kNR;
      const StripMask sm = cols == kNR ? full : strip_mask(cols);
      for (std::size_t t = t0; t < t1; t += kMR) {
        const std::size_t mr = std::min(kMR, t1 - t);
        float* yp = d.p + (t - t0) * d.ld + (n - n0);
        const float* xp = x.row(t) + k0;
        pf.step();
        if constexpr (std::is_same_v<E, float>) {
          if (!plan.pack) {
            const float* wp = w.data + k0 * w.out + n;
            if (cols == kNR) {
              axpy_kernel_mr<false, false, false>(mr, kc, xp, x.stride, wp, w.out, nullptr, yp,
                                                  d.ld, k0 != r0, sm, t == t0 ? strip_pf : 0);
            } else {
              axpy_kernel_mr<true, true, false>(mr, kc, xp, x.stride, wp, w.out, nullptr, yp, d.ld,
                                                k0 != r0, sm, t == t0 ? strip_pf : 0);
            }
            continue;
          }
        }
        if (cols == kNR) {
          axpy_kernel_mr<false, false, false>(mr, kc, xp, x.stride, bs, kNR, nullptr, yp, d.ld,
                                              k0 != r0, sm, 0);
        } else {
          axpy_kernel_mr<false, true, false>(mr, kc, xp, x.stride, bs, kNR, nullptr, yp, d.ld,
                                             k0 != r0, sm, 0);
        }
      }
    }
  }
}

/// Dot path: output rows [n0, n1) for tokens [t0, t1) of an [out, in] weight, written to y.
template <class T>
void run_dot(MatrixView<const float> x, const DenseWeight<T>& w, std::size_t n0, std::size_t n1,
             std::size_t t0, std::size_t t1, MatrixView<float> y) noexcept {
  for (std::size_t t = t0; t < t1; t += kDotMaxT) {
    const std::size_t mr = std::min(kDotMaxT, t1 - t);
    const std::size_t step = dot_rows(mr);
    for (std::size_t o = n0; o < n1; o += step) {
      const std::size_t no = std::min(step, n1 - o);
      dot_kernel_rt(mr, no, w.in, x.row(t), x.stride, w.data + o * w.in, w.in, y.row(t) + o,
                    y.stride);
    }
  }
}

template <class W>
void run(ThreadPool& pool, MatrixView<const float> x, const W& w, MatrixView<float> y) {
  using A = WeightAccess<W>;
  const std::size_t T = x.rows;
  const Plan plan =
      make_plan(T, w.in, w.out, sizeof(typename A::E), A::in_out(w), pool.scratch_bytes());

  if (plan.path == Path::kDot) {
    if constexpr (!A::kInt8) {
      pool.parallel_for(plan.n_slabs, [&](std::size_t s, std::size_t) {
        const std::size_t n0 = s * plan.nc;
        run_dot(x, w, n0, std::min(w.out, n0 + plan.nc), 0, T, y);
      });
    }
    return;
  }

  // K chunks: chunk 0 accumulates straight into y; chunk c > 0 into its own slot (c - 1, tile)
  // in the scratch of the thread that runs it. The last chunk of a tile to finish (counted in
  // `finished`) adds the slots to y in chunk order 1, 2, ...: a fixed order, and no waiting.
  const bool split = plan.n_chunks > 1;
  const std::size_t tiles = plan.n_slabs * plan.n_tblocks;
  constexpr std::size_t kMaxTiles = Tuning::kTargetTasks;
  constexpr std::size_t kMaxPartials = Tuning::kTargetTasks * Tuning::kMaxChunks;
  std::atomic<std::uint32_t> finished[kMaxTiles];
  const float* partials[kMaxPartials];
  if (split) {
    for (auto& f : finished) f.store(0, std::memory_order_relaxed);
  }
  const std::size_t slot_floats = plan.n_tblocks == 0 ? 0 : plan.tb * round_up(plan.nc, kNR);
  pool.parallel_for(plan.n_tasks(), [&](std::size_t task, std::size_t thread) {
    const std::size_t c = task / tiles;
    const std::size_t tile = task % tiles;
    const std::size_t b = tile / plan.n_slabs;
    const std::size_t s = tile % plan.n_slabs;
    const std::size_t r0 = c * plan.chunk, r1 = std::min(w.in, r0 + plan.chunk);
    const std::size_t n0 = s * plan.nc, n1 = std::min(w.out, n0 + plan.nc);
    const std::size_t t0 = b * plan.tb, t1 = std::min(T, t0 + plan.tb);
    float* scratch = reinterpret_cast<float*>(pool.scratch(thread));
    float* bp = scratch;
    Dest d{y.row(t0) + n0, y.stride};
    if (split && c > 0) {
      d = Dest{scratch + plan.pack_floats + ((c - 1) * tiles + tile) * slot_floats,
               round_up(n1 - n0, kNR)};
      partials[(c - 1) * tiles + tile] = d.p;
    }
    if (plan.path == Path::kPacked) {
      run_packed(plan, x, w, r0, r1, n0, n1, t0, t1, d, bp);
    } else {
      run_direct(plan, x, w, r0, r1, n0, n1, t0, t1, d);
    }
    if (split && finished[tile].fetch_add(1, std::memory_order_acq_rel) + 1 == plan.n_chunks) {
      const std::size_t ld = round_up(n1 - n0, kNR);
      for (std::size_t cc = 1; cc < plan.n_chunks; ++cc) {
        add_tile(y.row(t0) + n0, y.stride, partials[(cc - 1) * tiles + tile], ld, t1 - t0, n1 - n0);
      }
    }
  });
}

MOE_SIMD_DETAIL_END

MOE_SIMD_NAMESPACE_BEGIN

/// Y[T, out] = X[T, in] . W. Accumulates in f32. x.cols == w.in, y.cols == w.out,
/// x.rows == y.rows (checked with MOE_ASSERT only: callers validate shapes at construction).
/// x and y must not overlap. Results are bit-identical for every pool size. No allocation.
template <class W>
void matmul(ThreadPool& pool, MatrixView<const float> x, const W& w, MatrixView<float> y) {
  static_assert(is_weight_v<W>, "matmul: W must be DenseWeight<float|bf16> or Int8Weight");
  MOE_ASSERT(x.cols == w.in && y.cols == w.out && x.rows == y.rows);
  if (x.rows == 0 || w.out == 0) return;
  if (w.in == 0) {
    for (std::size_t t = 0; t < y.rows; ++t) std::fill_n(y.row(t), y.cols, 0.0f);
    return;
  }
  detail::run(pool, x, w, y);
}

/// y[out] = x[in] . W (one token).
template <class W>
void matvec(ThreadPool& pool, const float* x, const W& w, float* y) {
  matmul(pool, MatrixView<const float>(x, 1, w.in), w, MatrixView<float>(y, 1, w.out));
}

MOE_SIMD_NAMESPACE_END
