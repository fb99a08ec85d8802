// moe/io/mapped_file.hpp: a read-only memory-mapped file (RAII, move-only, POSIX).
//
// MappedFile maps a whole regular file read-only (PROT_READ, MAP_SHARED). The pages belong to the
// kernel's page cache: mapping a 300 GB checkpoint costs address space, not RAM, and pages that
// were read can be evicted again under memory pressure. Nothing is read at construction.
//
//   moe::io::MappedFile f("tensor00000_000");      // throws moe::IoError on failure
//   std::span<const std::byte> all = f.bytes();    // the whole file
//   f.advise(moe::io::Advice::kWillNeed, off, n);  // prefetch a range (a hint)
//   f.advise(moe::io::Advice::kDontNeed, off, n);  // drop it from this process again
//
// Empty files are valid (size 0, data() == nullptr, nothing is mapped). Directories, FIFOs and
// other non-regular files are rejected with IoError. Every IoError message starts with
// "[io] " and names the path and the errno text.
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>
#include <vector>

#include <moe/core/error.hpp>

namespace moe::io {

/// Access-pattern hints (madvise). They never change what is read, only when and what stays.
enum class Advice : std::uint8_t {
  kNormal,      ///< MADV_NORMAL: default read-ahead
  kSequential,  ///< MADV_SEQUENTIAL: aggressive read-ahead, pages freed soon after use
  kRandom,      ///< MADV_RANDOM: no read-ahead (read exactly the pages touched)
  kWillNeed,    ///< MADV_WILLNEED: start reading the range now (asynchronous prefetch)
  kDontNeed,    ///< MADV_DONTNEED: unmap the range's pages from this process (they stay cached)
  kHugePage,    ///< MADV_HUGEPAGE: page-cache folios of up to 2 MiB; for a file mapping the kernel
                ///< then reads ahead 4 MiB per fault instead of the device's read_ahead_kb
};

inline constexpr std::string_view advice_name(Advice a) noexcept {
  switch (a) {
    case Advice::kNormal:
      return "normal";
    case Advice::kSequential:
      return "sequential";
    case Advice::kRandom:
      return "random";
    case Advice::kWillNeed:
      return "willneed";
    case Advice::kDontNeed:
      return "dontneed";
    case Advice::kHugePage:
      return "hugepage";
  }
  return "?";
}

namespace detail {

inline std::string errno_text(int err) {
  return std::string(std::strerror(err));
}

inline std::size_t page_size() noexcept {
  static const std::size_t p = [] {
    const long v = ::sysconf(_SC_PAGESIZE);
    return v > 0 ? static_cast<std::size_t>(v) : std::size_t{4096};
  }();
  return p;
}

inline int madvise_flag(Advice a) noexcept {
  switch (a) {
    case Advice::kNormal:
      return MADV_NORMAL;
    case Advice::kSequential:
      return MADV_SEQUENTIAL;
    case Advice::kRandom:
      return MADV_RANDOM;
    case Advice::kWillNeed:
      return MADV_WILLNEED;
    case Advice::kDontNeed:
      return MADV_DONTNEED;
    case Advice::kHugePage:
      return MADV_HUGEPAGE;
  }
  return MADV_NORMAL;
}

}  // namespace detail

/// A read-only mapping of a whole file. Move-only; unmapped in the destructor.
class MappedFile {
 public:
  MappedFile() = default;

  /// Opens and maps `path`. Throws IoError "[io] cannot open 'path': No such file or directory"
  /// (and similar for stat/mmap failures, directories and non-regular files).
  explicit MappedFile(const std::filesystem::path& path) : path_(path.string()) {
    struct stat st {};
    if (::stat(path_.c_str(), &st) != 0) fail("cannot open", errno);
    if (S_ISDIR(st.st_mode)) throw IoError("[io] cannot map '" + path_ + "': it is a directory");
    if (!S_ISREG(st.st_mode)) {
      throw IoError("[io] cannot map '" + path_ + "': not a regular file");
    }
    // O_NONBLOCK: never hang on a FIFO that replaced the file after the stat above.
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) fail("cannot open", errno);
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      fail("cannot stat", err);
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      throw IoError("[io] cannot map '" + path_ + "': not a regular file");
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
      if (p == MAP_FAILED) {
        const int err = errno;
        ::close(fd);
        size_ = 0;
        fail("cannot mmap " + std::to_string(st.st_size) + " bytes of", err);
      }
      data_ = static_cast<const std::byte*>(p);
    }
    ::close(fd);  // the mapping keeps the file alive
  }

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& o) noexcept
      : path_(std::move(o.path_)),
        data_(std::exchange(o.data_, nullptr)),
        size_(std::exchange(o.size_, 0)) {}
  MappedFile& operator=(MappedFile&& o) noexcept {
    if (this != &o) {
      unmap();
      path_ = std::move(o.path_);
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  ~MappedFile() { unmap(); }

  /// First byte of the file (page-aligned), or nullptr for an empty file / default object.
  [[nodiscard]] const std::byte* data() const noexcept { return data_; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
  [[nodiscard]] std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
  /// Bytes [offset, offset + length); throws IoError when the range is not inside the file.
  [[nodiscard]] std::span<const std::byte> bytes(std::size_t offset, std::size_t length) const {
    check_range(offset, length, "range");
    return {data_ + offset, length};
  }
  [[nodiscard]] const std::string& path() const noexcept { return path_; }
  [[nodiscard]] bool is_mapped() const noexcept { return data_ != nullptr; }

  /// Applies an access hint to the whole file. No-op for an empty file.
  void advise(Advice a) const { advise(a, 0, size_); }

  /// Applies an access hint to bytes [offset, offset + length) (widened to whole pages).
  /// Throws IoError if the range is outside the file or madvise fails.
  void advise(Advice a, std::size_t offset, std::size_t length) const {
    check_range(offset, length, "advise range");
    if (length == 0 || data_ == nullptr) return;
    const std::size_t page = detail::page_size();
    const std::size_t begin = offset / page * page;
    const std::size_t end = offset + length;  // no overflow: checked above
    void* addr = const_cast<std::byte*>(data_ + begin);
    if (::madvise(addr, end - begin, detail::madvise_flag(a)) != 0) {
      const int err = errno;
      throw IoError("[io] madvise(" + std::string(advice_name(a)) + ") failed on '" + path_ +
                    "' bytes [" + std::to_string(offset) + ", " + std::to_string(end) +
                    "): " + detail::errno_text(err));
    }
  }

  /// Bytes of [offset, offset + length) currently resident in RAM for this mapping (mincore;
  /// counted in whole pages). For tests and diagnostics: how much of a file was actually read.
  [[nodiscard]] std::size_t resident_bytes(std::size_t offset, std::size_t length) const {
    check_range(offset, length, "resident range");
    if (length == 0 || data_ == nullptr) return 0;
    const std::size_t page = detail::page_size();
    const std::size_t begin = offset / page * page;
    const std::size_t end = offset + length;
    const std::size_t n_pages = (end - begin + page - 1) / page;
    std::vector<unsigned char> vec(n_pages);
    void* addr = const_cast<std::byte*>(data_ + begin);
    if (::mincore(addr, end - begin, vec.data()) != 0) {
      const int err = errno;
      throw IoError("[io] mincore failed on '" + path_ + "': " + detail::errno_text(err));
    }
    std::size_t resident = 0;
    for (unsigned char v : vec) resident += (v & 1u) ? page : 0;
    return resident;
  }
  [[nodiscard]] std::size_t resident_bytes() const { return resident_bytes(0, size_); }

  /// Unmaps now (the object becomes empty).
  void close() noexcept {
    unmap();
    path_.clear();
  }

 private:
  [[noreturn]] void fail(const std::string& what, int err) const {
    throw IoError("[io] " + what + " '" + path_ + "': " + detail::errno_text(err));
  }

  void check_range(std::size_t offset, std::size_t length, const char* what) const {
    if (offset > size_ || length > size_ - offset) {
      throw IoError("[io] " + std::string(what) + " [" + std::to_string(offset) + ", +" +
                    std::to_string(length) + ") is outside '" + path_ + "' (" +
                    std::to_string(size_) + " bytes)");
    }
  }

  void unmap() noexcept {
    if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
    data_ = nullptr;
    size_ = 0;
  }

  std::string path_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace moe::io
