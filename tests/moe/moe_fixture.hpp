// The text fixtures of tests/data/moe/ (written by tools/moe_reference.py and
// tools/moe_grad_reference.py): "config key value", "scalar key value", "tensor key dims..."
// followed by the values, "#" comments.
#pragma once

#include <cstddef>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace moe_test {

struct Fixture {
  std::map<std::string, std::string> config;
  std::map<std::string, std::vector<std::size_t>> shape;
  std::map<std::string, std::vector<double>> data;

  std::size_t cfg(const std::string& k) const { return std::stoul(config.at(k)); }
  double cfgd(const std::string& k) const { return std::stod(config.at(k)); }
  const std::vector<double>& t(const std::string& k) const {
    auto it = data.find(k);
    if (it == data.end()) throw std::runtime_error("fixture has no tensor " + k);
    return it->second;
  }
  std::vector<float> f(const std::string& k) const {
    const auto& v = t(k);
    return std::vector<float>(v.begin(), v.end());  // exact: written from float32 values
  }
};

/// Reads tests/data/moe/<name>.
inline Fixture load_fixture(const std::string& name) {
  const std::string path = std::string(MOE_TEST_DATA_DIR) + "/moe/" + name;
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  Fixture fx;
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
      std::size_t n = 1, s = 0;
      while (ls >> s) {
        sh.push_back(s);
        n *= s;
      }
      std::vector<double> v(n);
      for (auto& x : v) in >> x;
      fx.data[key] = std::move(v);
      fx.shape[key] = sh;
    }
  }
  return fx;
}

}  // namespace moe_test
