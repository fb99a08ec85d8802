// moe/models/weight_residency.hpp: where a memory-mapped model's weights live, within a RAM budget.
//
// A checkpoint read in place (mmap) costs RAM only for the pages a process touches. When the
// whole model fits in the budget, everything stays mapped. When it does not (Grok-1: 318 GB),
// WeightResidency keeps the process's mapped pages within the budget while the decoder runs:
//
//   moe::WeightResidency res(moe::grok1::residency_plan(ckpt), {.ram_budget = 4ull << 30});
//   gen.on_layer = res.hook();                  // DecoderOptions / GenerateOptions::on_layer
//   moe::generate(pool, model, state, prompt, gen);
//   res.stats();                                // cache and speculation hit rates, bytes
//
// It is driven by the decoder's per-layer hook alone; after layer l it runs these steps:
//   1. observe   which of layer l's experts ran (a probe page per expert, see below)
//   2. cache     keep the experts the cache policy wants mapped, within the cache capacity
//                (ExpertCache decides; a recorded routing trace can drive it alone); unmap
//                (MADV_DONTNEED) the others. The pages stay in the page cache until the kernel
//                needs the memory, so an unmapped expert costs a re-read only under pressure.
//   3. release   layer l's attention, when the budget cannot hold every layer's attention
//   4. check     the files of layer l+1 still have their size (a truncated file is an IoError
//                here, not a SIGBUS later)
//   5. prefetch  layer l+1's attention (MADV_WILLNEED) and, with speculation, the experts that
//                layer l+1's router picks for the current hidden state (RMSNorm with the
//                router's norm, then the router): exact for the residual stream before the
//                attention block, a guess for the MoE input after it. Hit rates are reported.
//
// Observing expert use without touching the decoder: before layer l runs, one page inside each
// expert's gate slice (chosen so that no read outside the slice can map it: the centre of a
// 2 MiB-aligned block, beyond any page-cache folio or fault-around window of a neighbouring
// read) is not mapped in this process; after the layer, /proc/self/pagemap says whether it is
// (bit 63: present). An expert's gate matrix is read in full whenever it runs, so "present" ==
// "ran". Experts too small to hold such a block are "unknown": the cache treats them as used and
// the hit rates count only observed experts.
//
// The budget counts what the process holds: mapped checkpoint pages plus the weight bytes the
// reader copied into its own memory (ResidencyPlan::copied_bytes, e.g. Grok-1's misaligned norms
// and scales) plus a fixed allowance for activations, KV cache and code (kOverhead). A table read
// in chunks (ResidencyPlan::chunked: Grok-1's tied head) counts whole when the budget holds it
// beside every layer's attention, else one chunk, and is then released chunk by chunk
// (ResidencyStats::head_released; split_budget has the order).
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>
#include <vector>

#include <moe/core/error.hpp>
#include <moe/core/tensor.hpp>
#include <moe/io/mapped_file.hpp>
#include <moe/ops/weights.hpp>

namespace moe {

/// Bytes [offset, offset + length) of a mapped file.
struct MappedRange {
  const io::MappedFile* file = nullptr;
  std::size_t offset = 0;
  std::size_t length = 0;
};

/// Where one layer's weights live.
struct LayerRanges {
  std::vector<MappedRange> dense;                 ///< attention, norms, router: every token's
  std::vector<std::vector<MappedRange>> experts;  ///< [expert]: its slices of the expert tensors
  std::vector<MappedRange> probes;     ///< [expert]: one page only that expert touches (or empty)
  F32Weight router{};                  ///< [D, E] for speculation (optional)
  std::span<const float> router_norm;  ///< RMSNorm scale applied before the router
};

/// A model's weights as mapped ranges per layer and expert (grok1::residency_plan builds one
/// from the tensor table).
struct ResidencyPlan {
  std::vector<LayerRanges> layers;
  std::vector<MappedRange> always;  ///< read by every token outside the layers (e.g. a mapped head)
  /// Read by every token in chunks of chunk_bytes (e.g. a tied head over a mapped embedding). The
  /// budget counts them whole when it can, else one chunk, and the reader then unmaps each chunk
  /// after use (ResidencyStats::head_released; grok1::unmap_rows).
  std::vector<MappedRange> chunked;
  std::uint64_t chunk_bytes = 0;
  std::vector<const io::MappedFile*> files;  ///< every mapped file (size checks, totals)
  std::uint64_t copied_bytes = 0;            ///< weight bytes the reader copied into process memory
  std::size_t top_k = 2;
  double rms_eps = 1e-5;
};

enum class CachePolicy : std::uint8_t {
  kNone,      ///< unmap every expert after its layer
  kLru,       ///< keep the most recently used experts
  kMostUsed,  ///< keep the experts used most often (ties: the most recent)
};

inline constexpr std::string_view cache_policy_name(CachePolicy p) noexcept {
  return p == CachePolicy::kNone ? "none" : p == CachePolicy::kLru ? "lru" : "most-used";
}

struct ResidencyOptions {
  std::uint64_t ram_budget = 0;  ///< bytes the process may hold; 0 = default_ram_budget()
  CachePolicy cache = CachePolicy::kMostUsed;
  /// Prefetch the experts layer l+1's router picks after layer l. Off by default: measured, it
  /// did not pay off (docs/performance.md, "Weights larger than RAM").
  bool speculate = false;
  /// When streaming: MADV_HUGEPAGE on the files, so that a page fault reads ahead 4 MiB (in
  /// 2 MiB folios) instead of the device's read_ahead_kb (often 128 KiB), which leaves an
  /// expert read by faults far below the disk's speed.
  bool huge_readahead = true;
};

/// What the residency did, for reports.
struct ResidencyStats {
  std::uint64_t budget = 0;
  std::uint64_t model_bytes = 0;      ///< mapped checkpoint bytes + copied bytes
  std::uint64_t copied_bytes = 0;     ///< of which copied into process memory
  std::uint64_t cache_capacity = 0;   ///< bytes of experts kept mapped between uses
  bool streaming = false;             ///< false: everything stays mapped
  bool attention_streamed = false;    ///< attention released after use too
  bool head_released = false;         ///< ResidencyPlan::chunked released chunk by chunk
  std::size_t expert_uses = 0;        ///< observed (layer, expert) uses, decode steps only
  std::size_t cache_hits = 0;         ///< ... of which the expert was still mapped
  std::size_t speculated = 0;         ///< experts prefetched by speculation
  std::size_t speculation_hits = 0;   ///< ... that then ran
  std::size_t unobserved_layers = 0;  ///< layer runs whose experts could not be observed

  [[nodiscard]] double cache_hit_rate() const noexcept {
    return expert_uses ? static_cast<double>(cache_hits) / static_cast<double>(expert_uses) : 0;
  }
  [[nodiscard]] double speculation_hit_rate() const noexcept {
    return speculated ? static_cast<double>(speculation_hits) / static_cast<double>(speculated) : 0;
  }
};

namespace detail {

/// What the SIGBUS report knows: the mapped files (address ranges, paths) and a message prefix.
struct FaultTable {
  struct Entry {
    std::uintptr_t begin = 0, end = 0;
    std::string path;
  };
  std::vector<Entry> files;
  std::string prefix;
};

inline FaultTable*& fault_table() noexcept {
  static FaultTable* table = nullptr;
  return table;
}

inline void write_all(const char* s, std::size_t n) noexcept {
  while (n > 0) {
    const ssize_t w = ::write(STDERR_FILENO, s, n);
    if (w <= 0) return;
    s += w;
    n -= static_cast<std::size_t>(w);
  }
}

/// SIGBUS on a mapped checkpoint page (the file was truncated or the disk failed): one clear
/// line naming the file and the byte, then exit(1). Async-signal-safe (write, _exit).
inline void on_sigbus(int, siginfo_t* info, void*) noexcept {
  // Several pool threads can fault on the same truncated file at once: the first one reports
  // and ends the process, the others wait for that (lock-free, async-signal-safe).
  static std::atomic_flag reporting = ATOMIC_FLAG_INIT;
  if (reporting.test_and_set()) {
    for (;;) ::pause();
  }
  const FaultTable* t = fault_table();
  const auto addr = reinterpret_cast<std::uintptr_t>(info->si_addr);
  auto text = [](const char* s) { write_all(s, std::char_traits<char>::length(s)); };
  text("\n");
  if (t != nullptr) write_all(t->prefix.data(), t->prefix.size());
  text(
      "[residency] reading a mapped weight file failed (SIGBUS: the file was truncated or the "
      "disk returned an error while in use)");
  for (std::size_t i = 0; t != nullptr && i < t->files.size(); ++i) {
    const FaultTable::Entry& f = t->files[i];
    if (addr < f.begin || addr >= f.end) continue;
    char num[24];
    std::size_t n = 0;
    for (std::uintptr_t v = addr - f.begin; n == 0 || v > 0; v /= 10) num[n++] = char('0' + v % 10);
    text(": '");
    write_all(f.path.data(), f.path.size());
    text("' at byte ");
    while (n > 0) write_all(&num[--n], 1);
  }
  text("\n");
  ::_exit(1);
}

/// min(MemAvailable, the memory cgroup's limit), in bytes (0 if unknown).
inline std::uint64_t available_memory() {
  std::uint64_t avail = 0;
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  std::uint64_t kb = 0;
  std::string unit;
  while (meminfo >> key >> kb >> unit) {
    if (key == "MemAvailable:") avail = kb * 1024;
  }
  std::ifstream cg("/proc/self/cgroup");
  std::string line;
  while (std::getline(cg, line)) {  // cgroup v1 "N:memory:/path"
    const std::size_t at = line.find(":memory:");
    if (at == std::string::npos) continue;
    std::ifstream lim("/sys/fs/cgroup/memory" + line.substr(at + 8) + "/memory.limit_in_bytes");
    std::uint64_t limit = 0;
    if (lim >> limit && limit > 0 && limit < avail) avail = limit;
  }
  return avail;
}

/// Page-aligned madvise of a range (a hint: failures are ignored).
inline void advise_range(const MappedRange& r, io::Advice a) noexcept {
  if (r.file == nullptr || r.length == 0) return;
  try {
    r.file->advise(a, r.offset, r.length);
  } catch (const Error&) {
  }
}

/// /proc/self/pagemap: is the page at `addr` mapped in this process?
class PagemapReader {
 public:
  PagemapReader() : fd_(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)) {}
  PagemapReader(const PagemapReader&) = delete;
  PagemapReader& operator=(const PagemapReader&) = delete;
  PagemapReader(PagemapReader&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  PagemapReader& operator=(PagemapReader&& o) noexcept {
    std::swap(fd_, o.fd_);
    return *this;
  }
  ~PagemapReader() {
    if (fd_ >= 0) ::close(fd_);
  }
  [[nodiscard]] bool ok() const noexcept { return fd_ >= 0; }
  /// 1 mapped, 0 not, -1 unknown.
  [[nodiscard]] int present(const void* addr) const noexcept {
    if (fd_ < 0) return -1;
    const auto page = reinterpret_cast<std::uintptr_t>(addr) / io::detail::page_size();
    std::uint64_t entry = 0;
    const auto off = static_cast<off_t>(page * sizeof entry);
    if (::pread(fd_, &entry, sizeof entry, off) != static_cast<ssize_t>(sizeof entry)) return -1;
    return (entry >> 63) & 1u ? 1 : 0;
  }

 private:
  int fd_ = -1;
};

inline std::uint64_t range_bytes(const std::vector<MappedRange>& v) {
  std::uint64_t n = 0;
  for (const MappedRange& r : v) n += r.length;
  return n;
}

}  // namespace detail

/// The default RAM budget: 80% of what the machine (or the memory cgroup) has available now.
inline std::uint64_t default_ram_budget() {
  return detail::available_memory() / 10 * 8;
}

/// Activations, KV cache, scratch, code and the page-cache slack of prefetching: what the budget
/// keeps free besides the weights.
inline constexpr std::uint64_t kResidencyOverhead = std::uint64_t{384} << 20;

/// How a budget divides between a plan's parts (sizes only: no memory is touched).
struct BudgetSplit {
  std::uint64_t model_bytes = 0;     ///< mapped file bytes + copied bytes
  bool streaming = false;            ///< the model does not fit: experts are released after use
  bool attention_streamed = false;   ///< every layer's attention does not fit beside the rest
  bool head_released = false;        ///< the chunked tables do not fit whole: one chunk counts
  std::uint64_t cache_capacity = 0;  ///< what is left for the expert cache
  bool batch_fits = true;            ///< a layer's experts all fit at once (batched prefill)
};

/// The budget's split for `plan` (ranges' lengths and files' sizes). Fixed: copies, the tables
/// read by every token, kResidencyOverhead, the largest top_k experts of a layer. Then, as far as
/// the budget goes, in this order (all read by every token): every layer's attention (else one
/// layer's at a time), the chunked tables whole (else one chunk), the expert cache.
inline BudgetSplit split_budget(const ResidencyPlan& plan, std::uint64_t budget,
                                CachePolicy policy) {
  BudgetSplit b;
  std::uint64_t mapped = 0;
  for (const io::MappedFile* f : plan.files) mapped += f->size();
  b.model_bytes = mapped + plan.copied_bytes;
  b.streaming = b.model_bytes + kResidencyOverhead > budget;
  if (!b.streaming) return b;
  std::uint64_t dense = 0, max_dense = 0, max_working = 0, max_layer_experts = 0;
  for (const LayerRanges& ranges : plan.layers) {
    const std::uint64_t d = detail::range_bytes(ranges.dense);
    dense += d;
    max_dense = std::max(max_dense, d);
    std::vector<std::uint64_t> sizes;
    for (const auto& e : ranges.experts) sizes.push_back(detail::range_bytes(e));
    std::sort(sizes.rbegin(), sizes.rend());
    const auto k = static_cast<std::ptrdiff_t>(std::min(plan.top_k, sizes.size()));
    max_working =
        std::max(max_working, std::accumulate(sizes.begin(), sizes.begin() + k, std::uint64_t{0}));
    max_layer_experts =
        std::max(max_layer_experts, std::accumulate(sizes.begin(), sizes.end(), std::uint64_t{0}));
  }
  const std::uint64_t chunked = detail::range_bytes(plan.chunked);
  const std::uint64_t chunk = std::min<std::uint64_t>(plan.chunk_bytes, chunked);
  const std::uint64_t fixed = plan.copied_bytes + detail::range_bytes(plan.always) + chunk +
                              kResidencyOverhead + max_working;
  b.attention_streamed = fixed + dense > budget;
  const std::uint64_t resident_dense = b.attention_streamed ? max_dense : dense;
  b.head_released = fixed + resident_dense + (chunked - chunk) > budget;
  const std::uint64_t used = fixed + resident_dense + (b.head_released ? 0 : chunked - chunk);
  b.cache_capacity = policy == CachePolicy::kNone || used >= budget ? 0 : budget - used;
  b.batch_fits = used - max_working + max_layer_experts <= budget;
  return b;
}

/// The expert cache's bookkeeping and decisions, apart from the memory they act on: which experts
/// stay mapped between uses, within a capacity in bytes, under a CachePolicy. WeightResidency
/// drives it with the experts it observes after each layer and unmaps what it evicts; a recorded
/// routing trace drives the same code (examples/grok1_routing: hit rates of real routing at
/// Grok-1's expert size).
class ExpertCache {
 public:
  /// What one layer's run did: experts observed to run, and how many of them were cached.
  struct Step {
    std::size_t uses = 0;
    std::size_t hits = 0;
  };

  ExpertCache() = default;
  /// `bytes[layer][expert]`: the size of each expert.
  ExpertCache(CachePolicy policy, std::uint64_t capacity,
              const std::vector<std::vector<std::uint64_t>>& bytes)
      : policy_(policy), capacity_(capacity) {
    experts_.resize(bytes.size());
    for (std::size_t l = 0; l < bytes.size(); ++l) {
      for (std::uint64_t b : bytes[l]) experts_[l].push_back(Entry{b});
    }
  }

  /// After `layer` ran: `seen[e]` is 1 when expert e ran, 0 when it did not, -1 when unknown.
  /// Counts the uses (a hit when the expert was cached), then admits every expert not known to
  /// be idle, evicting what the policy values less (`evict(layer, expert)` for each; an expert
  /// worth less than every cached one is not admitted).
  template <class Evict>
  Step after_layer(std::size_t layer, std::span<const int> seen, Evict&& evict) {
    ++tick_;
    Step step;
    std::vector<Entry>& xs = experts_.at(layer);
    for (std::size_t e = 0; e < xs.size() && e < seen.size(); ++e) {
      if (seen[e] != 1) continue;
      Entry& x = xs[e];
      ++x.uses;
      x.last_use = tick_;
      ++step.uses;
      step.hits += x.cached ? 1 : 0;
    }
    for (std::size_t e = 0; e < xs.size(); ++e) {
      const int s = e < seen.size() ? seen[e] : -1;
      if (s != 0 && !xs[e].cached && xs[e].bytes <= capacity_) admit(layer, e, evict);
    }
    return step;
  }

  [[nodiscard]] bool cached(std::size_t layer, std::size_t e) const {
    return experts_.at(layer).at(e).cached;
  }
  [[nodiscard]] std::uint64_t capacity() const noexcept { return capacity_; }
  [[nodiscard]] std::uint64_t cached_bytes() const noexcept { return cached_bytes_; }

 private:
  struct Entry {
    std::uint64_t bytes = 0;
    bool cached = false;
    std::uint64_t uses = 0;
    std::uint64_t last_use = 0;
  };

  template <class Evict>
  void admit(std::size_t layer, std::size_t e, Evict& evict) {
    Entry& x = experts_[layer][e];
    while (cached_bytes_ + x.bytes > capacity_) {
      Entry* victim = nullptr;
      std::size_t victim_layer = 0, victim_e = 0;
      for (std::size_t l = 0; l < experts_.size(); ++l) {
        for (std::size_t k = 0; k < experts_[l].size(); ++k) {
          Entry& y = experts_[l][k];
          if (!y.cached || (l == layer && k == e)) continue;
          if (victim == nullptr || worse(y, *victim)) {
            victim = &y;
            victim_layer = l;
            victim_e = k;
          }
        }
      }
      if (victim == nullptr || !worse(*victim, x)) return;  // x is the least worth keeping
      victim->cached = false;
      cached_bytes_ -= victim->bytes;
      evict(victim_layer, victim_e);
    }
    x.cached = true;
    cached_bytes_ += x.bytes;
  }

  // True when `a` is less worth keeping than `b` under the policy.
  [[nodiscard]] bool worse(const Entry& a, const Entry& b) const noexcept {
    if (policy_ == CachePolicy::kMostUsed && a.uses != b.uses) return a.uses < b.uses;
    return a.last_use < b.last_use;
  }

  CachePolicy policy_ = CachePolicy::kNone;
  std::uint64_t capacity_ = 0;
  std::vector<std::vector<Entry>> experts_;
  std::uint64_t cached_bytes_ = 0;
  std::uint64_t tick_ = 0;
};

class WeightResidency {
 public:
  /// What the budget keeps free besides the weights (kResidencyOverhead).
  static constexpr std::uint64_t kOverhead = kResidencyOverhead;

  WeightResidency(ResidencyPlan plan, const ResidencyOptions& options = {})
      : plan_(std::move(plan)), opt_(options) {
    const std::size_t n_layers = plan_.layers.size();
    check_config(n_layers > 0, "residency", "the plan has no layers");
    stats_.budget = opt_.ram_budget ? opt_.ram_budget : default_ram_budget();
    stats_.copied_bytes = plan_.copied_bytes;
    const BudgetSplit split = split_budget(plan_, stats_.budget, opt_.cache);
    stats_.model_bytes = split.model_bytes;
    stats_.streaming = split.streaming;
    stats_.attention_streamed = split.attention_streamed;
    stats_.head_released = split.head_released;
    stats_.cache_capacity = split.cache_capacity;
    batch_fits_ = split.batch_fits;
    experts_.resize(n_layers);
    std::vector<std::vector<std::uint64_t>> bytes(n_layers);
    for (std::size_t l = 0; l < n_layers; ++l) {
      experts_[l].resize(plan_.layers[l].experts.size());
      for (const auto& e : plan_.layers[l].experts) bytes[l].push_back(detail::range_bytes(e));
    }
    cache_ = ExpertCache(opt_.cache, stats_.cache_capacity, bytes);
    if (stats_.streaming) {
      if (opt_.huge_readahead) {
        for (const io::MappedFile* f : plan_.files) {
          detail::advise_range({f, 0, f->size()}, io::Advice::kHugePage);
        }
      }
      // Start from nothing mapped, so that the first use of every expert is observed too.
      for (const LayerRanges& ranges : plan_.layers) {
        for (const auto& e : ranges.experts) {
          for (const MappedRange& r : e) detail::advise_range(r, io::Advice::kDontNeed);
        }
      }
    }
    check_files(0);
  }

  /// The per-layer hook to set as DecoderOptions::on_layer / GenerateOptions::on_layer. It
  /// refers to this object: keep it alive and in place while the hook is in use.
  [[nodiscard]] std::function<void(std::size_t, MatrixView<const float>)> hook() {
    return [this](std::size_t layer, MatrixView<const float> h) { on_layer(layer, h); };
  }

  /// Runs the steps of the file comment after `layer`; `h` is the residual stream [T, D].
  void on_layer(std::size_t layer, MatrixView<const float> h) {
    check_config(layer < plan_.layers.size(), "residency",
                 "layer " + std::to_string(layer) + " is outside the plan");
    const std::size_t next = (layer + 1) % plan_.layers.size();
    if (stats_.streaming) {
      const bool decode = h.rows == 1;
      observe(layer, decode);
      cache(layer, decode);
      if (stats_.attention_streamed) {
        for (const MappedRange& r : plan_.layers[layer].dense) {
          detail::advise_range(r, io::Advice::kDontNeed);
        }
      }
    }
    check_files(next);
    if (stats_.streaming) prefetch(next, h);
  }

  /// Throws IoError naming the file when one of `layer`'s files no longer has the size it had
  /// when it was mapped (truncated or replaced while in use).
  void check_files(std::size_t layer) const {
    auto check = [](const MappedRange& r) {
      if (r.file == nullptr) return;
      struct stat st {};
      if (::stat(r.file->path().c_str(), &st) != 0 ||
          static_cast<std::uint64_t>(st.st_size) != r.file->size()) {
        throw IoError("[residency] '" + r.file->path() + "' changed while in use: it was " +
                      std::to_string(r.file->size()) + " bytes when mapped, now " +
                      (::stat(r.file->path().c_str(), &st) != 0
                           ? std::string("it cannot be read")
                           : std::to_string(st.st_size) + " bytes (truncated?)"));
      }
    };
    const LayerRanges& ranges = plan_.layers[layer];
    for (const MappedRange& r : ranges.dense) check(r);
    for (const auto& e : ranges.experts) {
      if (!e.empty()) check(e.front());
    }
  }

  /// Installs a SIGBUS handler that turns a failed read of a mapped page of this plan's files
  /// (truncated under the process, or a disk error: the kernel's only way to report either for
  /// a mapping) into one line on stderr, "<prefix>[residency] ... '<file>' at byte N", and
  /// exit status 1. Process-wide: for programs (the grok1 example), not for libraries.
  void report_faults(std::string prefix) {
    auto& t = detail::fault_table();
    static detail::FaultTable table;
    table.prefix = std::move(prefix);
    table.files.clear();
    for (const io::MappedFile* f : plan_.files) {
      const auto b = reinterpret_cast<std::uintptr_t>(f->data());
      table.files.push_back({b, b + f->size(), f->path()});
    }
    t = &table;
    struct sigaction sa {};
    sa.sa_sigaction = &detail::on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, nullptr);
  }

  [[nodiscard]] const ResidencyStats& stats() const noexcept { return stats_; }
  [[nodiscard]] const ResidencyOptions& options() const noexcept { return opt_; }
  /// True when every layer's experts fit beside the rest, so a prompt may run as one batch
  /// (which reads every expert of a layer at once); otherwise feed it one token at a time.
  [[nodiscard]] bool batch_prefill_fits() const noexcept { return batch_fits_; }
  /// Experts observed to run in the last decode step of `layer` (-1 unknown, 0 no, 1 yes).
  [[nodiscard]] std::vector<int> last_used(std::size_t layer) const {
    std::vector<int> v;
    for (const Expert& x : experts_.at(layer)) v.push_back(x.last_seen);
    return v;
  }

 private:
  struct Expert {
    bool prefetched = false;  ///< speculation asked for it before its layer ran
    int last_seen = -1;       ///< in the last run of its layer: 1 ran, 0 did not, -1 unknown
  };

  // 1. Which experts of `layer` ran: the probe page is mapped again.
  void observe(std::size_t layer, bool decode) {
    const LayerRanges& ranges = plan_.layers[layer];
    bool unknown = false;
    for (std::size_t e = 0; e < experts_[layer].size(); ++e) {
      Expert& x = experts_[layer][e];
      const MappedRange& p = e < ranges.probes.size() ? ranges.probes[e] : MappedRange{};
      x.last_seen = p.file ? pagemap_.present(p.file->data() + p.offset) : -1;
      if (x.last_seen < 0) unknown = true;
      if (decode && x.last_seen == 1 && x.prefetched) ++stats_.speculation_hits;
      x.prefetched = false;
    }
    if (unknown) ++stats_.unobserved_layers;
  }

  // 2. The cache's decision (ExpertCache); unmap what it does not keep; re-arm the probes.
  void cache(std::size_t layer, bool decode) {
    const LayerRanges& ranges = plan_.layers[layer];
    std::vector<int> seen;
    for (const Expert& x : experts_[layer]) seen.push_back(x.last_seen);
    const ExpertCache::Step step =
        cache_.after_layer(layer, seen, [&](std::size_t victim_layer, std::size_t victim_e) {
          for (const MappedRange& r : plan_.layers[victim_layer].experts[victim_e]) {
            detail::advise_range(r, io::Advice::kDontNeed);
          }
        });
    if (decode) {
      stats_.expert_uses += step.uses;
      stats_.cache_hits += step.hits;
    }
    for (std::size_t e = 0; e < experts_[layer].size(); ++e) {
      if (!cache_.cached(layer, e)) {
        for (const MappedRange& r : ranges.experts[e])
          detail::advise_range(r, io::Advice::kDontNeed);
      } else if (e < ranges.probes.size()) {
        detail::advise_range(ranges.probes[e], io::Advice::kDontNeed);  // to see the next use
      }
    }
  }

  // 5. Prefetch what layer `next` will read.
  void prefetch(std::size_t next, MatrixView<const float> h) {
    const LayerRanges& ranges = plan_.layers[next];
    if (stats_.attention_streamed) {
      for (const MappedRange& r : ranges.dense) detail::advise_range(r, io::Advice::kWillNeed);
    }
    // Layer 0 reads a new token's embedding, which the last layer's output cannot predict.
    if (!opt_.speculate || h.rows != 1 || next == 0 || ranges.router.data == nullptr) return;
    const std::vector<std::size_t> picks = predict(ranges, h.row(0), h.cols);
    for (std::size_t e : picks) {
      Expert& x = experts_[next][e];
      x.prefetched = true;
      if (e < ranges.probes.size() && ranges.probes[e].file != nullptr) ++stats_.speculated;
      if (cache_.cached(next, e)) continue;
      for (const MappedRange& r : ranges.experts[e]) detail::advise_range(r, io::Advice::kWillNeed);
    }
  }

  // The top_k experts of ranges's router for RMSNorm(x) * router_norm (scores ordered as the router
  // orders them: softmax is monotonic, so the largest logits).
  [[nodiscard]] std::vector<std::size_t> predict(const LayerRanges& ranges, const float* x,
                                                 std::size_t d) const {
    const F32Weight& w = ranges.router;
    if (w.in != d || (!ranges.router_norm.empty() && ranges.router_norm.size() != d)) return {};
    double ss = 0;
    for (std::size_t i = 0; i < d; ++i) ss += static_cast<double>(x[i]) * x[i];
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(d) + plan_.rms_eps);
    std::vector<double> logits(w.out, 0.0);
    for (std::size_t i = 0; i < d; ++i) {
      const double v = x[i] * inv * (ranges.router_norm.empty() ? 1.0 : ranges.router_norm[i]);
      for (std::size_t o = 0; o < w.out; ++o) logits[o] += v * w.at(i, o);
    }
    std::vector<std::size_t> order(w.out);
    std::iota(order.begin(), order.end(), std::size_t{0});
    const std::size_t k = std::min(plan_.top_k, order.size());
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k), order.end(),
                      [&](std::size_t a, std::size_t b) {
                        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
                      });
    order.resize(k);
    return order;
  }

  ResidencyPlan plan_;
  ResidencyOptions opt_;
  ResidencyStats stats_;
  std::vector<std::vector<Expert>> experts_;
  ExpertCache cache_;
  bool batch_fits_ = true;
  detail::PagemapReader pagemap_;
};

}  // namespace moe
