// The host description and the matmul plan: detection on this machine, the blocking of both
// tuning hosts (AMD Zen 5, Intel Emerald Rapids), and plans that are pure functions of the shapes
// (never of the thread count) and always fit the pool's scratch.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdio>
#include <string>

#include <moe/ops/detail/host.hpp>
#include <moe/ops/matmul.hpp>

namespace {

using moe::detail::Blocking;
using moe::detail::blocking_for;
using moe::detail::HostInfo;
using moe::detail::make_plan;
using moe::detail::Path;
using moe::detail::Plan;
using moe::detail::Shape;

Shape shape(std::size_t T, std::size_t in, std::size_t out, std::size_t elem, bool in_out = true) {
  Shape s;
  s.T = T;
  s.in = in;
  s.out = out;
  s.elem = elem;
  s.in_out = in_out;
  return s;
}

/// The strip depth rule: kc x kNR floats fill at most 2/3 of L1d (multiple of 16, 64..256).
std::size_t strip_rows(std::size_t l1d) {
  const std::size_t kc = l1d * 2 / 3 / (moe::detail::kNR * sizeof(float)) / 16 * 16;
  return std::clamp<std::size_t>(kc, 64, 256);
}

}  // namespace

TEST_CASE("host detection finds this CPU's caches", "[kernels][plan]") {
  const HostInfo h = HostInfo::detect();
  INFO(h.describe());
  CHECK(h.l1d_bytes >= 16 * 1024);
  CHECK(h.l1d_bytes <= 256 * 1024);
  CHECK(h.l2_bytes >= 256 * 1024);
  CHECK(h.l3_bytes >= h.l2_bytes);
#if defined(__x86_64__)
  CHECK(h.vendor != moe::detail::CpuVendor::kOther);
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
  CHECK(h.avx512);  // the compiler was told this CPU has it
#endif
  // CPUID and sysfs agree where sysfs exists (Linux).
  moe::detail::CacheDesc c;
  for (unsigned i = 0; i < 8 && moe::detail::read_sysfs_cache(i, c); ++i) {
    if (!c.data) continue;
    INFO("sysfs index" << i << ": L" << c.level << " " << c.bytes << " bytes, " << c.ways
                       << " ways");
    if (c.level == 1) CHECK(c.bytes == h.l1d_bytes);
    if (c.level == 2) CHECK(c.bytes == h.l2_bytes);
  }
}

TEST_CASE("cache sizes parse in sysfs notation", "[kernels][plan]") {
  CHECK(moe::detail::parse_cache_size("48K\n") == 48 * 1024);
  CHECK(moe::detail::parse_cache_size("2048K") == 2048 * 1024);
  CHECK(moe::detail::parse_cache_size("260M") == 260u * 1024 * 1024);
  CHECK(moe::detail::parse_cache_size("x") == 0);
}

TEST_CASE("the Zen 5 blocking keeps the parameters tuned there", "[kernels][plan]") {
  const Blocking b = blocking_for(HostInfo::zen5());
  CHECK(b.kc == strip_rows(48 * 1024));
#if MOE_MATMUL_AVX512
  CHECK(b.kc == 128);  // 64-column strips of 512-bit vectors
#endif
  CHECK(b.nc == 512);
  CHECK(b.max_tb == 256);
  CHECK(b.f32_in_place_max_t == static_cast<std::size_t>(-1));  // f32 [in, out] read in place
  CHECK(b.tile_prefetch);
  CHECK_FALSE(b.strip_prefetch);
  CHECK(b.strip_prefetch_int8);
  CHECK(b.direct_slab_bytes == 8192);
  CHECK(b.gemv_bf16 == moe::detail::GemvStep{4, 8});
  CHECK(b.gemv_int8 == moe::detail::GemvStep{4, 8});
  CHECK(b.gemv_f32 == moe::detail::GemvStep{16, 0, 0});
  CHECK(&b.gemv_step(2) == &b.gemv_bf16);
  CHECK(&b.gemv_step(1) == &b.gemv_int8);
  CHECK(&b.gemv_step(4) == &b.gemv_f32);
  CHECK(b.direct_rows == 8);
  CHECK(b.direct_pf == 8);
  CHECK(b.pack_fetch_cols == 0);
  CHECK(b.stream_prefetch_lines == 0);  // prefetches a share before each call
}

TEST_CASE("Zen 5 prefetches the next strip for int8 weights only", "[kernels][plan]") {
  const Blocking b = blocking_for(HostInfo::zen5());
  const std::size_t scratch = std::size_t{4} << 20;
  CHECK(make_plan(shape(64, 1024, 4096, 1), b, scratch).strip_pf);
  CHECK_FALSE(make_plan(shape(64, 1024, 4096, 2), b, scratch).strip_pf);
  CHECK_FALSE(make_plan(shape(64, 1024, 4096, 4), b, scratch).strip_pf);
  Blocking off = b;
  off.strip_prefetch_int8 = false;
  CHECK_FALSE(make_plan(shape(64, 1024, 4096, 1), off, scratch).strip_pf);
  const Blocking emr = blocking_for(HostInfo::emerald_rapids());
  CHECK(make_plan(shape(64, 1024, 4096, 2), emr, scratch).strip_pf);
}

TEST_CASE("Emerald Rapids prefetches from inside the calls where a burst exceeds 16 lines",
          "[kernels][plan]") {
  const Blocking b = blocking_for(HostInfo::emerald_rapids());
  const std::size_t scratch = std::size_t{4} << 20;
  // T = 64 (11 calls per strip): every weight type's shares before a call exceed 16 lines.
  for (std::size_t elem : {1, 2, 4}) {
    const moe::detail::Plan p = make_plan(shape(64, 6144, 32768, elem), b, scratch);
    CAPTURE(elem);
    CHECK(p.strip_pf);
    CHECK(p.tile_pf);
    CHECK(moe::detail::burst_lines(p, elem) > 16);
    CHECK(p.stream_pf);
  }
#if MOE_MATMUL_AVX512
  // T = 256 (43 calls): 128 rows x 4 lines of f32 strip over 43 calls (12) + the tile's 12 lines
  // per call stream; bf16 (6 + 6) and int8 (3 + 3) keep the bursts.
  const moe::detail::Plan f32 = make_plan(shape(256, 6144, 32768, 4), b, scratch);
  CHECK(moe::detail::burst_lines(f32, 4) == 24);
  CHECK(f32.stream_pf);
  const moe::detail::Plan bf16 = make_plan(shape(256, 6144, 32768, 2), b, scratch);
  CHECK(moe::detail::burst_lines(bf16, 2) == 12);
  CHECK_FALSE(bf16.stream_pf);
  CHECK_FALSE(make_plan(shape(256, 6144, 32768, 1), b, scratch).stream_pf);
#endif
  // The direct path and Zen 5 never do.
  CHECK_FALSE(make_plan(shape(4, 6144, 32768, 4), b, scratch).stream_pf);
  CHECK_FALSE(
      make_plan(shape(64, 6144, 32768, 4), blocking_for(HostInfo::zen5()), scratch).stream_pf);
}

TEST_CASE("the Emerald Rapids blocking", "[kernels][plan]") {
  const Blocking b = blocking_for(HostInfo::emerald_rapids());
  CHECK(b.kc == blocking_for(HostInfo::zen5()).kc);  // same L1d as Zen 5
  CHECK(b.nc == 512);
  CHECK(b.max_tb == 256);
  CHECK(b.f32_in_place_max_t == 0);  // f32 strips packed at every T
  CHECK(b.tile_prefetch);
  CHECK(b.strip_prefetch);
  CHECK(b.strip_prefetch_int8);
  CHECK(b.gemv_bf16.pf == 8);
  CHECK(b.pack_fetch_cols == 0);
  CHECK(b.stream_prefetch_lines == 16);  // the L1 fill buffers of a Golden Cove core
  // A smaller L1d gives shallower strips; an unknown vendor gets the Zen 5 defaults.
  HostInfo small = HostInfo::emerald_rapids();
  small.l1d_bytes = 32 * 1024;
  CHECK(blocking_for(small).kc == strip_rows(32 * 1024));
#if MOE_MATMUL_AVX512
  CHECK(blocking_for(small).kc == 80);
#endif
  HostInfo other = HostInfo::zen5();
  other.vendor = moe::detail::CpuVendor::kOther;
  CHECK(blocking_for(other) == blocking_for(HostInfo::zen5()));
}

TEST_CASE("the Zen 3 blocking packs f32 strips (a 32 KiB L1d)", "[kernels][plan]") {
  const Blocking b = blocking_for(HostInfo::zen3());
  CHECK(b.kc == strip_rows(32 * 1024));
#if MOE_MATMUL_AVX512
  CHECK(b.kc == 80);
#elif defined(__AVX2__)
  CHECK(b.kc == 256);  // 16-column strips of 256-bit vectors (kNV = 2: 16 registers)
#endif
  CHECK(b.f32_in_place_max_t == 0);
  CHECK_FALSE(b.strip_prefetch);
  CHECK(b.strip_prefetch_int8);
  CHECK(b.nc == 512);
  // The next tile into L2 only while an f32 tile (kc x nc floats) fills at most half of it:
  // 80 x 512 floats (160 KiB of 512) with AVX-512, 256 x 512 (all 512 KiB) with AVX2.
#if MOE_MATMUL_AVX512
  CHECK(b.tile_prefetch);
#elif defined(__AVX2__)
  CHECK_FALSE(b.tile_prefetch);
  HostInfo big_l2 = HostInfo::zen3();
  big_l2.l2_bytes = 1024 * 1024;
  CHECK(blocking_for(big_l2).tile_prefetch);
#endif
  CHECK(make_plan(shape(64, 6144, 32768, 4), b, std::size_t{4} << 20).tile_pf == b.tile_prefetch);
  CHECK(b.gemv_bf16.pf == 8);
  CHECK(b.gemv_int8 == moe::detail::GemvStep{16, 0, 0});  // 8-lane kernels: 16 int8 rows a call
  CHECK(blocking_for(HostInfo::emerald_rapids()).gemv_int8.rows == 4);
  const std::size_t scratch = std::size_t{4} << 20;
  CHECK(make_plan(shape(256, 6144, 32768, 4), b, scratch).pack);
  CHECK_FALSE(make_plan(shape(256, 6144, 32768, 4), blocking_for(HostInfo::zen5()), scratch).pack);
  const Plan int8_gemv = make_plan(shape(1, 6144, 32768, 1), b, scratch);
  CHECK(int8_gemv.path == Path::kDirect);
  CHECK(int8_gemv.kc == 16);
  CHECK(int8_gemv.pf == 0);
  CHECK(make_plan(shape(1, 6144, 32768, 2), b, scratch).kc == 4);  // bf16 keeps 4 rows
  CHECK(make_plan(shape(1, 6144, 32768, 1), blocking_for(HostInfo::zen5()), scratch).kc == 4);
}

TEST_CASE("Zen 1's one-token GEMV: 8 bf16 rows a call, prefetch only on short slab rows",
          "[kernels][plan]") {
  const HostInfo zen1 = HostInfo::zen1();
  CHECK(zen1.half_width_vectors());
  for (const HostInfo& h : {HostInfo::zen3(), HostInfo::zen5(), HostInfo::emerald_rapids()}) {
    CHECK_FALSE(h.half_width_vectors());
  }
  HostInfo zen2 = zen1;
  zen2.model = 0x31;  // Zen 2 (Rome): full-width 256-bit units
  CHECK_FALSE(zen2.half_width_vectors());
  CHECK(blocking_for(zen2) == blocking_for(HostInfo::zen3()));

  const Blocking b = blocking_for(zen1);
  CHECK(b.gemv_bf16 == moe::detail::GemvStep{8, 0, 8, 16384, true});
  CHECK(b.gemv_int8 == moe::detail::GemvStep{16, 0, 16});
  // Everything else is Zen 3's (the same caches).
  CHECK(b.direct_pf == 0);
  Blocking rest = b;
  rest.gemv_bf16 = rest.gemv_int8 = moe::detail::GemvStep{};
  Blocking zen3 = blocking_for(HostInfo::zen3());
  zen3.gemv_bf16 = zen3.gemv_int8 = moe::detail::GemvStep{};
  CHECK(b.direct_slab_bytes == 16384);
  CHECK(b.direct_rows_core_bound == 16);
  CHECK(zen3.direct_pf == zen3.direct_rows);
  CHECK(zen3.direct_slab_bytes == 8192);
  rest.direct_pf = zen3.direct_pf;
  rest.direct_slab_bytes = zen3.direct_slab_bytes;
  CHECK(zen3.direct_rows_core_bound == zen3.direct_rows);
  rest.direct_rows_core_bound = zen3.direct_rows_core_bound;
  CHECK(rest == zen3);

  const std::size_t scratch = std::size_t{4} << 20;
  const Plan bf16_long = make_plan(shape(1, 6144, 32768, 2), b, scratch);
  CHECK(bf16_long.path == Path::kDirect);
  CHECK(bf16_long.kc == 8);
  CHECK(bf16_long.nc == 8192);  // 16 KiB of each bf16 row
  CHECK(bf16_long.pf == 0);
  CHECK_FALSE(bf16_long.pf_in_order);
  const Plan bf16_short = make_plan(shape(1, 6144, 1024, 2), b, scratch);
  CHECK(bf16_short.nc == 1024);  // the whole row: 2 KiB
  CHECK(bf16_short.pf == 8);
  CHECK(bf16_short.pf_in_order);  // in address order, before each call
  CHECK(make_plan(shape(1, 1024, 4096, 2), b, scratch).pf == 0);  // 8 KiB rows
  const Plan int8_short = make_plan(shape(1, 6144, 1024, 1), b, scratch);
  CHECK(int8_short.pf == 16);
  CHECK_FALSE(int8_short.pf_in_order);  // int8 keeps the micro-kernel's prefetch
  CHECK(make_plan(shape(1, 6144, 32768, 1), b, scratch).pf == 0);
  CHECK(make_plan(shape(1, 6144, 1024, 4), b, scratch).pf == 0);  // f32 rows: 4 KiB, no distance
  // T = 2..6 keep the direct path's own slab and step.
  const Plan bf16_t2 = make_plan(shape(2, 6144, 32768, 2), b, scratch);
  CHECK(bf16_t2.kc == b.direct_rows);
  CHECK(bf16_t2.nc == 8192);  // 16 KiB of each row, as for one token
  CHECK(bf16_t2.pf == 0);     // long slab rows: no prefetch for 2-6 tokens either
  CHECK(make_plan(shape(2, 32768, 6144, 2), b, scratch).nc == 6144);  // a whole 12 KiB row
  CHECK(make_plan(shape(2, 32768, 6144, 2), blocking_for(HostInfo::zen3()), scratch).nc == 4096);
  const Plan bf16_t2_short = make_plan(shape(2, 6144, 1024, 2), b, scratch);
  CHECK(bf16_t2_short.pf == b.direct_rows);  // 2 KiB rows keep a call group ahead
  CHECK_FALSE(bf16_t2_short.pf_in_order);
  CHECK(make_plan(shape(4, 6144, 32768, 1), b, scratch).pf == 0);
  // Core-bound calls (two or more multiply-adds per weight byte) take 16 rows; short rows then
  // prefetch 16 ahead.
  CHECK(make_plan(shape(2, 6144, 32768, 1), b, scratch).kc == 16);  // int8 from 2 tokens
  CHECK(make_plan(shape(3, 6144, 32768, 2), b, scratch).kc == 8);   // bf16 at 3: read-bound
  CHECK(make_plan(shape(4, 1024, 4096, 2), b, scratch).kc == 16);   // bf16 from 4
  CHECK(make_plan(shape(4, 32768, 6144, 2), b, scratch).kc == 16);
  CHECK(make_plan(shape(4, 6144, 32768, 2), b, scratch).kc == 8);   // 64 KiB rows: one L2 set
  CHECK(make_plan(shape(4, 6144, 32768, 1), b, scratch).kc == 16);  // 32 KiB rows: two sets
  CHECK(make_plan(shape(4, 6144, 1024, 2), b, scratch).pf == 16);
  CHECK(make_plan(shape(6, 6144, 32768, 4), b, scratch).kc == 8);   // f32: never
  CHECK(make_plan(shape(1, 6144, 32768, 1), b, scratch).kc == 16);  // T = 1: its own step
  for (const HostInfo& h : {HostInfo::zen3(), HostInfo::zen5(), HostInfo::emerald_rapids()}) {
    CHECK(make_plan(shape(4, 6144, 32768, 1), blocking_for(h), scratch).kc == 8);
  }
  CHECK(make_plan(shape(6, 6144, 32768, 4), b, scratch).pf == 0);
  CHECK(make_plan(shape(2, 6144, 32768, 2), blocking_for(HostInfo::zen3()), scratch).pf == 8);
  // Only Zen 1 prefetches short rows in order (measured there).
  for (const HostInfo& h : {HostInfo::zen3(), HostInfo::zen5(), HostInfo::emerald_rapids()}) {
    CHECK_FALSE(make_plan(shape(1, 6144, 1024, 2), blocking_for(h), scratch).pf_in_order);
  }
  // Zen 3 keeps its prefetch on every bf16 row.
  CHECK(make_plan(shape(1, 6144, 32768, 2), blocking_for(HostInfo::zen3()), scratch).pf == 8);
}

TEST_CASE("Zen 3's fused packing fetches 64 columns of f32 and bf16 weight rows at once",
          "[kernels][plan]") {
  using moe::detail::kNR;
  const Blocking b = blocking_for(HostInfo::zen3());
  CHECK(b.pack_fetch_cols == 64);
  // The lines beyond the strip's own: with strips of 16 columns or fewer (AVX2, SSE2) f32 3 of
  // 4, bf16 1 of 2; none where the strip is 64 columns wide already (AVX-512).
  const std::size_t f32_lines = kNR <= 16 ? 3 : 0;
  const std::size_t bf16_lines = kNR <= 16 ? 1 : 0;
  CHECK(moe::detail::pack_pf_lines(b, 4) == f32_lines);
  CHECK(moe::detail::pack_pf_lines(b, 2) == bf16_lines);
  const std::size_t scratch = std::size_t{4} << 20;
  for (std::size_t T : {7, 64, 256}) {
    INFO("T " << T);
    CHECK(make_plan(shape(T, 6144, 1024, 4), b, scratch).pack_pf_lines == f32_lines);
    CHECK(make_plan(shape(T, 1024, 4096, 2), b, scratch).pack_pf_lines == bf16_lines);
    CHECK(make_plan(shape(T, 1024, 4096, 1), b, scratch).pack_pf_lines == 0);  // int8: not here
    CHECK(make_plan(shape(T, 1024, 4096, 4, false), b, scratch).pack_pf_lines == 0);  // [out, in]
    CHECK(
        make_plan(shape(T, 1024, 4096, 2), blocking_for(HostInfo::zen5()), scratch).pack_pf_lines ==
        0);
  }
  CHECK(make_plan(shape(1, 1024, 4096, 4), b, scratch).pack_pf_lines == 0);  // direct path
}

TEST_CASE("hosts without AVX-512 pack the strips of aliasing weight rows in groups",
          "[kernels][plan]") {
  using moe::detail::kNR;
  const std::size_t scratch = std::size_t{4} << 20;
  for (const HostInfo& h : {HostInfo::zen3(), HostInfo::zen1()}) {
    INFO(h.describe());
    const Blocking b = blocking_for(h);
    CHECK(b.pack_group == b.pack_fetch_cols / kNR);  // the columns a fused packing fetches
    CHECK(b.group_stride == 32 * 1024);              // half a way of a 512 KiB 8-way L2
    if (b.pack_group < 2) continue;                  // an AVX-512 build: strips 64 columns wide
    for (std::size_t T : {7, 64, 256}) {
      INFO("T " << T);
      // [6144 -> 32768]: rows 128, 64 and 32 KiB apart, on one or two positions of an L2 way.
      for (std::size_t elem : {1, 2, 4}) {
        const Plan p = make_plan(shape(T, 6144, 32768, elem), b, scratch);
        CHECK(p.group == b.pack_group);
        CHECK(p.group_pf == b.group_pf_rows);
        CHECK(p.strip_floats == b.pack_group * p.kc * kNR);
        CHECK_FALSE(p.strip_pf);
        CHECK(p.pack_pf_lines == 0);
      }
      // Rows 24 KiB apart, or not a power-of-two multiple, or stored [out, in]: one at a time.
      CHECK(make_plan(shape(T, 32768, 6144, 4), b, scratch).group == 1);
      CHECK(make_plan(shape(T, 6144, 32704, 4), b, scratch).group == 1);
      CHECK(make_plan(shape(T, 1024, 4096, 4), b, scratch).group == 1);
      CHECK(make_plan(shape(T, 32768, 6144, 4, false), b, scratch).group == 1);
      // The stride, not the width, decides: a narrow view of a wide weight.
      Shape view = shape(T, 6144, 1000, 4);
      view.ldw = 32768;
      CHECK(make_plan(view, b, scratch).group == b.pack_group);
      // A scratch with no room for the group packs one strip at a time.
      const Plan one = make_plan(shape(T, 6144, 32768, 4), b, b.kc * kNR * 4 * 2);
      CHECK(one.group == 1);
      CHECK(one.strip_floats == one.kc * kNR);
    }
    CHECK(make_plan(shape(1, 6144, 32768, 4), b, scratch).group == 1);  // direct path
  }
  for (const HostInfo& h : {HostInfo::zen5(), HostInfo::emerald_rapids()}) {
    const Blocking b = blocking_for(h);
    CHECK(b.group_stride == 0);
    CHECK(make_plan(shape(64, 6144, 32768, 4), b, scratch).group == 1);
  }
}

TEST_CASE("hosts without AVX-512 prefetch [out, in] rows shorter than 4 KiB in the dot path",
          "[kernels][plan]") {
  const std::size_t scratch = std::size_t{4} << 20;
  for (const HostInfo& h : {HostInfo::zen3(), HostInfo::zen1()}) {
    INFO(h.describe());
    const Blocking b = blocking_for(h);
    CHECK(b.dot_pf_short == 8);
    for (std::size_t T : {1, 2, 4}) {
      INFO("T " << T);
      // [1024 -> 4096] in bf16: rows of 2 KiB; in f32 they are 4 KiB, not short.
      const Plan p = make_plan(shape(T, 1024, 4096, 2, false), b, scratch);
      CHECK(p.path == Path::kDot);
      CHECK(p.pf == 8);
      CHECK(make_plan(shape(T, 1023, 4096, 4, false), b, scratch).pf == 8);
      CHECK(make_plan(shape(T, 1024, 4096, 4, false), b, scratch).pf == 0);
      CHECK(make_plan(shape(T, 6144, 1024, 2, false), b, scratch).pf == 0);
    }
  }
  for (const HostInfo& h : {HostInfo::zen5(), HostInfo::emerald_rapids()}) {
    const Blocking b = blocking_for(h);
    CHECK(b.dot_pf_short == 0);
    CHECK(make_plan(shape(1, 1024, 4096, 2, false), b, scratch).pf == 0);
  }
}

TEST_CASE("micro-kernel register blocks fit the instruction set's registers", "[kernels][plan]") {
  using moe::detail::kMR;
  using moe::detail::kNV;
  using moe::detail::kVectorRegisters;
  CHECK(kMR * kNV + kNV + 1 <= kVectorRegisters);
  for (bool scaled : {false, true}) {
    const std::size_t nv = moe::detail::direct_nv(scaled);
    CHECK(nv % kNV == 0);
    CHECK(moe::detail::fitting_nv(1, nv) == nv);  // one token row takes the whole direct step
    CHECK(moe::detail::fitting_nv(kMR, nv) == kNV);
  }
#if MOE_MATMUL_AVX512
  CHECK(kVectorRegisters == 32);
  CHECK(kNV == 4);
#elif defined(__AVX2__) || defined(__SSE2__)
  CHECK(kVectorRegisters == 16);
  CHECK(kNV == 2);  // 6 x 2 accumulators + 2 weights + 1 broadcast: 15 of 16
#endif
  for (std::size_t mr = 1; mr <= moe::detail::kDotMaxT; ++mr) {
    const std::size_t no = moe::detail::dot_rows(mr);
    CHECK(mr * no + no + 1 <= kVectorRegisters);
  }
}

TEST_CASE("plans use the expected paths and fit the scratch", "[kernels][plan]") {
  const std::size_t scratch = moe::ThreadPool::kDefaultScratchBytes;
  for (const HostInfo& h :
       {HostInfo::zen5(), HostInfo::emerald_rapids(), HostInfo::zen3(), HostInfo::zen1()}) {
    const Blocking b = blocking_for(h);
    INFO(h.describe());
    for (std::size_t T : {1, 2, 6, 7, 16, 64, 256, 1000}) {
      for (auto [in, out] : {std::pair<std::size_t, std::size_t>{6144, 32768},
                             {32768, 6144},
                             {6144, 1024},
                             {1024, 4096},
                             {17, 5}}) {
        for (std::size_t elem : {1, 2, 4}) {
          for (bool in_out : {true, false}) {
            if (elem == 1 && !in_out) continue;
            const Plan p = make_plan(shape(T, in, out, elem, in_out), b, scratch);
            INFO("T " << T << " in " << in << " out " << out << " elem " << elem << " in_out "
                      << in_out);
            CHECK(p.scratch_bytes() <= scratch);
            CHECK(p.n_chunks * p.chunk >= in);
            CHECK(p.n_slabs * p.nc >= out);
            CHECK(p.n_tblocks * p.tb >= T);
            if (in_out) {
              CHECK(p.path == (T <= moe::detail::kMR ? Path::kDirect : Path::kPacked));
            } else {
              CHECK(p.path == (T <= moe::detail::kDotMaxT ? Path::kDot : Path::kPacked));
            }
            if (p.path == Path::kPacked && elem == 4 && in_out) {
              CHECK(p.pack == (T > b.f32_in_place_max_t));
            }
            if (in * out >= 1u << 20) CHECK(p.n_tasks() >= 4);  // enough tasks for 2+ threads
            // A call that runs on one thread: the same K chunks (the summation order), no more
            // token blocks than max_tb needs.
            const Plan q = make_plan(shape(T, in, out, elem, in_out), b, scratch, false);
            CHECK(q.path == p.path);
            CHECK(q.chunk == p.chunk);
            CHECK(q.n_chunks == p.n_chunks);
            CHECK(q.kc == p.kc);
            CHECK(q.n_tblocks <= p.n_tblocks);
            if (q.path == Path::kPacked) CHECK(q.n_tblocks == (T + b.max_tb - 1) / b.max_tb);
          }
        }
      }
    }
  }
}

TEST_CASE("a scratch too small for a strip gives unpacked plans", "[kernels][plan]") {
  const Blocking b = blocking_for(HostInfo::emerald_rapids());
  CHECK(make_plan(shape(20, 2000, 70, 2), b, 4096).path == Path::kDirect);
  CHECK(make_plan(shape(20, 2000, 70, 2, false), b, 4096).path == Path::kDot);
  Shape t = shape(20, 2000, 70, 4);
  t.a_trans = true;
  CHECK(make_plan(t, b, 4096).path == Path::kNone);
  CHECK(make_plan(t, b, std::size_t{1} << 20).path == Path::kPacked);
}
