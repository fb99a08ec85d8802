// moe/ops/detail/host.hpp: what the kernels need to know about the CPU they run on.
//
//   const HostInfo& h = moe::detail::host();   // detected once: vendor, family/model, caches,
//                                               // instruction-set extensions
//   HostInfo::zen5(), HostInfo::emerald_rapids(), HostInfo::zen3(), HostInfo::zen1()
//                                               // the hosts the kernels were tuned on
//
// Detection reads CPUID on x86 (leaf 0 vendor, leaf 1 family/model, leaf 7 extensions, cache
// descriptors from leaf 4 on Intel and leaf 0x8000001D on AMD: same format, "deterministic cache
// parameters") and falls back to Linux sysfs (/sys/devices/system/cpu/cpu0/cache/index*) for the
// caches elsewhere. A field that cannot be found keeps the conservative default below. Nothing
// here is SIMD code, so it lives in plain moe::detail.
//
// The matmul plan (matmul_plan.hpp) is a pure function of a HostInfo, so the tests can check the
// blocking of both tuning hosts on any machine.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define MOE_HOST_X86 1
#else
#define MOE_HOST_X86 0
#endif

namespace moe::detail {

enum class CpuVendor : std::uint8_t { kOther, kIntel, kAmd };

inline const char* vendor_name(CpuVendor v) noexcept {
  return v == CpuVendor::kIntel ? "Intel" : v == CpuVendor::kAmd ? "AMD" : "other";
}

/// The CPU as the kernels see it. Cache sizes are per core (L1d, L2) and per sharing domain (L3:
/// the whole chip on Intel, one CCX on AMD).
struct HostInfo {
  CpuVendor vendor = CpuVendor::kOther;
  unsigned family = 0, model = 0;
  std::size_t l1d_bytes = 32 * 1024, l1d_ways = 8;
  std::size_t l2_bytes = 1024 * 1024, l2_ways = 16;
  std::size_t l3_bytes = 8 * 1024 * 1024;
  bool avx512 = false;       ///< AVX-512 F + BW + VL + DQ
  bool avx512_vnni = false;  ///< vpdpbusd on zmm
  bool avx512_bf16 = false;
  bool amx = false;  ///< AMX tiles (amx_tile + amx_bf16 + amx_int8) reported by CPUID

  /// AMD EPYC, Zen 5 (family 26): L1d 48 KiB 12-way, L2 1 MiB 16-way per core, L3 32 MiB per
  /// CCX. The host the first kernels were tuned on.
  static HostInfo zen5() noexcept {
    HostInfo h;
    h.vendor = CpuVendor::kAmd;
    h.family = 26;
    h.model = 2;
    h.l1d_bytes = 48 * 1024;
    h.l1d_ways = 12;
    h.l2_bytes = 1024 * 1024;
    h.l2_ways = 16;
    h.l3_bytes = 32 * 1024 * 1024;
    h.avx512 = h.avx512_vnni = h.avx512_bf16 = true;
    return h;
  }
  /// AMD EPYC, Zen 3 (Milan, family 25 model 1): L1d 32 KiB 8-way, L2 512 KiB 8-way per core,
  /// L3 32 MiB per CCX, AVX2 + FMA only (no AVX-512, no VNNI, no BF16): 16 vector registers.
  static HostInfo zen3() noexcept {
    HostInfo h;
    h.vendor = CpuVendor::kAmd;
    h.family = 25;
    h.model = 1;
    h.l1d_bytes = 32 * 1024;
    h.l1d_ways = 8;
    h.l2_bytes = 512 * 1024;
    h.l2_ways = 8;
    h.l3_bytes = 32 * 1024 * 1024;
    return h;
  }
  /// AMD EPYC, Zen 1 (Naples, family 23 model 1): Zen 3's L1d and L2, L3 8 MiB per CCX, AVX2 +
  /// FMA, and every 256-bit operation executed as two 128-bit halves (half_width_vectors()).
  static HostInfo zen1() noexcept {
    HostInfo h = zen3();
    h.family = 23;
    h.model = 1;
    h.l3_bytes = 8 * 1024 * 1024;
    return h;
  }
  /// Intel Xeon 5th generation (Emerald Rapids, family 6 model 207): L1d 48 KiB 12-way, L2 2 MiB
  /// 16-way per core, L3 260 MiB shared (as a 2-vCPU KVM guest reports it), AMX not exposed.
  static HostInfo emerald_rapids() noexcept {
    HostInfo h;
    h.vendor = CpuVendor::kIntel;
    h.family = 6;
    h.model = 207;
    h.l1d_bytes = 48 * 1024;
    h.l1d_ways = 12;
    h.l2_bytes = 2 * 1024 * 1024;
    h.l2_ways = 16;
    h.l3_bytes = 260 * 1024 * 1024;
    h.avx512 = h.avx512_vnni = h.avx512_bf16 = true;
    return h;
  }

  /// The core executes each 256-bit vector operation as two 128-bit halves: AMD family 23
  /// before Zen 2 (models below 0x30: Zen 1 and Zen+), half the FMA and load width per cycle of
  /// later cores at the same instruction count.
  [[nodiscard]] bool half_width_vectors() const noexcept {
    return vendor == CpuVendor::kAmd && family == 23 && model < 0x30;
  }

  /// One line for logs and benchmark contexts, e.g.
  /// "Intel family 6 model 207, L1d 48 KiB/12, L2 2048 KiB/16, L3 266240 KiB, avx512 vnni bf16".
  [[nodiscard]] std::string describe() const {
    char buf[192];
    std::snprintf(buf, sizeof buf,
                  "%s family %u model %u, L1d %zu KiB/%zu, L2 %zu KiB/%zu, L3 %zu KiB%s%s%s%s",
                  vendor_name(vendor), family, model, l1d_bytes / 1024, l1d_ways, l2_bytes / 1024,
                  l2_ways, l3_bytes / 1024, avx512 ? ", avx512" : "", avx512_vnni ? " vnni" : "",
                  avx512_bf16 ? " bf16" : "", amx ? " amx" : "");
    return buf;
  }

  static HostInfo detect() noexcept;
};

/// One cache as CPUID leaf 4 / 0x8000001D or sysfs describes it.
struct CacheDesc {
  unsigned level = 0;  ///< 1, 2, 3
  bool data = false;   ///< data or unified (not instruction-only)
  std::size_t bytes = 0, ways = 0;
};

/// Puts a data/unified cache description into h.
inline void apply_cache(HostInfo& h, const CacheDesc& c) noexcept {
  if (!c.data || c.bytes == 0) return;
  if (c.level == 1) {
    h.l1d_bytes = c.bytes;
    h.l1d_ways = c.ways;
  } else if (c.level == 2) {
    h.l2_bytes = c.bytes;
    h.l2_ways = c.ways;
  } else if (c.level == 3) {
    h.l3_bytes = c.bytes;
  }
}

/// Parses sysfs's cache size notation ("48K", "2048K", "260M").
inline std::size_t parse_cache_size(const char* s) noexcept {
  char* end = nullptr;
  const unsigned long long v = std::strtoull(s, &end, 10);
  if (end == s) return 0;
  const std::size_t n = static_cast<std::size_t>(v);
  if (*end == 'K' || *end == 'k') return n * 1024;
  if (*end == 'M' || *end == 'm') return n * 1024 * 1024;
  if (*end == 'G' || *end == 'g') return n * 1024 * 1024 * 1024;
  return n;
}

/// Reads /sys/devices/system/cpu/cpu0/cache/index<i>; false when it does not exist.
inline bool read_sysfs_cache(unsigned i, CacheDesc& c) noexcept {
  auto read = [i](const char* leaf, char* buf, std::size_t n) {
    char path[96];
    std::snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%u/%s", i, leaf);
    std::FILE* f = std::fopen(path, "r");
    if (f == nullptr) return false;
    const bool ok = std::fgets(buf, static_cast<int>(n), f) != nullptr;
    std::fclose(f);
    return ok;
  };
  char buf[64];
  if (!read("level", buf, sizeof buf)) return false;
  c.level = static_cast<unsigned>(std::strtoul(buf, nullptr, 10));
  c.data = read("type", buf, sizeof buf) && std::strncmp(buf, "Instruction", 11) != 0;
  c.bytes = read("size", buf, sizeof buf) ? parse_cache_size(buf) : 0;
  c.ways = read("ways_of_associativity", buf, sizeof buf)
               ? static_cast<std::size_t>(std::strtoul(buf, nullptr, 10))
               : 0;
  return true;
}

#if MOE_HOST_X86
/// Cache descriptor `sub` of a "deterministic cache parameters" leaf (4 on Intel, 0x8000001D on
/// AMD); false past the last one.
inline bool cpuid_cache(unsigned leaf, unsigned sub, CacheDesc& c) noexcept {
  unsigned a = 0, b = 0, cx = 0, d = 0;
  if (__get_cpuid_count(leaf, sub, &a, &b, &cx, &d) == 0) return false;
  const unsigned type = a & 0x1f;  // 0 none, 1 data, 2 instruction, 3 unified
  if (type == 0) return false;
  c.level = (a >> 5) & 0x7;
  c.data = type != 2;
  c.ways = ((b >> 22) & 0x3ff) + 1;
  const std::size_t partitions = ((b >> 12) & 0x3ff) + 1, line = (b & 0xfff) + 1;
  c.bytes = c.ways * partitions * line * (static_cast<std::size_t>(cx) + 1);
  return true;
}
#endif

inline HostInfo HostInfo::detect() noexcept {
  HostInfo h;
  bool caches = false;
#if MOE_HOST_X86
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(0, &a, &b, &c, &d) != 0) {
    const unsigned max_leaf = a;
    char v[13];
    std::memcpy(v, &b, 4);
    std::memcpy(v + 4, &d, 4);
    std::memcpy(v + 8, &c, 4);
    v[12] = 0;
    if (std::strcmp(v, "GenuineIntel") == 0) h.vendor = CpuVendor::kIntel;
    if (std::strcmp(v, "AuthenticAMD") == 0) h.vendor = CpuVendor::kAmd;
    if (__get_cpuid(1, &a, &b, &c, &d) != 0) {
      const unsigned base = (a >> 8) & 0xf;
      h.family = base == 0xf ? base + ((a >> 20) & 0xff) : base;
      h.model = (a >> 4) & 0xf;
      if (base == 0x6 || base == 0xf) h.model |= ((a >> 16) & 0xf) << 4;
    }
    if (max_leaf >= 7 && __get_cpuid_count(7, 0, &a, &b, &c, &d) != 0) {
      h.avx512 = (b & (1u << 16)) && (b & (1u << 17)) && (b & (1u << 30)) && (b & (1u << 31));
      h.avx512_vnni = (c & (1u << 11)) != 0;
      h.amx = (d & (1u << 22)) && (d & (1u << 24)) && (d & (1u << 25));
      unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
      if (a >= 1 && __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1) != 0) {
        h.avx512_bf16 = (a1 & (1u << 5)) != 0;
      }
    }
    unsigned leaf = 0;
    if (h.vendor == CpuVendor::kIntel && max_leaf >= 4) leaf = 4;
    if (h.vendor == CpuVendor::kAmd && __get_cpuid(0x80000000u, &a, &b, &c, &d) != 0 &&
        a >= 0x8000001Du && __get_cpuid(0x80000001u, &a, &b, &c, &d) != 0 && (c & (1u << 22))) {
      leaf = 0x8000001Du;  // topology extensions: leaf 4's format
    }
    CacheDesc cd;
    for (unsigned sub = 0; leaf != 0 && sub < 16 && cpuid_cache(leaf, sub, cd); ++sub) {
      apply_cache(h, cd);
      caches = true;
    }
  }
#endif
  if (!caches) {
    CacheDesc cd;
    for (unsigned i = 0; i < 16 && read_sysfs_cache(i, cd); ++i) apply_cache(h, cd);
  }
  return h;
}

/// The host this process runs on (detected at first use).
inline const HostInfo& host() noexcept {
  static const HostInfo h = HostInfo::detect();
  return h;
}

}  // namespace moe::detail
