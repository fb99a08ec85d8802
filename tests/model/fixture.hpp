// Reader of the fixtures written by tools/decoder_reference.py (tests/data/model/<name>.{txt,bin}).
#pragma once

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <moe/core/bf16.hpp>
#include <moe/core/buffer.hpp>

namespace moe_test {

class Fixture {
 public:
  struct Entry {
    std::string dtype;
    std::size_t offset = 0;
    std::vector<std::size_t> shape;
    [[nodiscard]] std::size_t count() const {
      std::size_t n = 1;
      for (auto s : shape) n *= s;
      return n;
    }
  };

  explicit Fixture(const std::string& name) {
    const std::string base = std::string(MOE_TEST_DATA_DIR) + "/model/" + name;
    std::ifstream txt(base + ".txt");
    if (!txt) throw std::runtime_error("cannot open " + base + ".txt");
    std::string line;
    while (std::getline(txt, line)) {
      if (line.empty() || line[0] == '#') continue;
      std::istringstream in(line);
      std::string kind, key;
      in >> kind >> key;
      if (kind == "config") {
        in >> config_[key];
      } else if (kind == "tensor") {
        Entry e;
        in >> e.dtype >> e.offset;
        std::size_t d = 0;
        while (in >> d) e.shape.push_back(d);
        tensors_[key] = e;
      }
    }
    std::ifstream bin(base + ".bin", std::ios::binary | std::ios::ate);
    if (!bin) throw std::runtime_error("cannot open " + base + ".bin");
    const auto size = static_cast<std::size_t>(bin.tellg());
    bin.seekg(0);
    blob_ = moe::Buffer<std::uint8_t>(size);
    bin.read(reinterpret_cast<char*>(blob_.data()), static_cast<std::streamsize>(size));
  }

  [[nodiscard]] const std::string& config(const std::string& key) const {
    auto it = config_.find(key);
    if (it == config_.end()) throw std::runtime_error("fixture has no config " + key);
    return it->second;
  }
  [[nodiscard]] std::size_t size(const std::string& key) const { return std::stoul(config(key)); }
  [[nodiscard]] double real(const std::string& key) const { return std::stod(config(key)); }
  [[nodiscard]] bool flag(const std::string& key) const { return config(key) == "true"; }

  [[nodiscard]] const Entry& entry(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) throw std::runtime_error("fixture has no tensor " + name);
    return it->second;
  }
  [[nodiscard]] const std::vector<std::size_t>& shape(const std::string& name) const {
    return entry(name).shape;
  }
  /// Pointer to tensor `name`, checked against the expected dtype.
  template <class T>
  [[nodiscard]] const T* data(const std::string& name) const {
    const Entry& e = entry(name);
    const char* want = std::is_same_v<T, float>          ? "f32"
                       : std::is_same_v<T, double>       ? "f64"
                       : std::is_same_v<T, std::int32_t> ? "i32"
                       : std::is_same_v<T, std::int8_t>  ? "i8"
                       : std::is_same_v<T, moe::bf16>    ? "bf16"
                                                         : "?";
    if (e.dtype != want) throw std::runtime_error("tensor " + name + " is " + e.dtype);
    return reinterpret_cast<const T*>(blob_.data() + e.offset);
  }

 private:
  std::map<std::string, std::string> config_;
  std::map<std::string, Entry> tensors_;
  moe::Buffer<std::uint8_t> blob_;
};

}  // namespace moe_test
