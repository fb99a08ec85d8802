// Reader of the text fixtures that tools/*.py write (tests/data/**.txt):
//
//   # comment
//   config <key> <value>
//   scalar <name> <value>
//   tensor <name> <dim0> <dim1> ...     followed by the values, whitespace-separated
//
// Values are written with enough digits to round-trip (float32 inputs exactly).
#pragma once

#include <cstddef>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace moe_test {

struct TextFixture {
  std::map<std::string, std::string> config;
  std::map<std::string, std::vector<std::size_t>> shape;
  std::map<std::string, std::vector<double>> data;

  [[nodiscard]] bool has(const std::string& k) const { return data.count(k) != 0; }
  [[nodiscard]] std::size_t cfg(const std::string& k) const { return std::stoul(config.at(k)); }
  [[nodiscard]] double cfgd(const std::string& k) const { return std::stod(config.at(k)); }
  [[nodiscard]] const std::vector<double>& t(const std::string& k) const {
    auto it = data.find(k);
    if (it == data.end()) throw std::runtime_error("fixture has no tensor " + k);
    return it->second;
  }
  [[nodiscard]] double s(const std::string& k) const { return t(k).at(0); }
  [[nodiscard]] std::vector<float> f(const std::string& k) const {
    const auto& v = t(k);
    return std::vector<float>(v.begin(), v.end());
  }
};

/// Reads `path` (throws std::runtime_error naming it when it cannot).
inline TextFixture load_text_fixture(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open fixture " + path);
  TextFixture fx;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ls(line);
    std::string kind, key;
    ls >> kind >> key;
    if (kind == "config") {
      ls >> fx.config[key];
    } else if (kind == "scalar") {
      double v = 0;
      ls >> v;
      fx.data[key] = {v};
      fx.shape[key] = {};
    } else if (kind == "tensor") {
      std::vector<std::size_t> sh;
      std::size_t n = 1, d = 0;
      while (ls >> d) {
        sh.push_back(d);
        n *= d;
      }
      std::vector<double> v(n);
      for (auto& x : v) {
        if (!(in >> x))
          throw std::runtime_error("fixture " + path + ": tensor " + key + " is short");
      }
      fx.data[key] = std::move(v);
      fx.shape[key] = sh;
    } else {
      throw std::runtime_error("fixture " + path + ": unknown line kind '" + kind + "'");
    }
  }
  return fx;
}

}  // namespace moe_test
