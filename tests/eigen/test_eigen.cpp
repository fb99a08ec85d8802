// moe/eigen.hpp: Eigen matrices as moe views, no copies; a layer run on Eigen matrices equals
// the same math written as Eigen expressions (an independent reference).
#include <catch2/catch.hpp>

#include <cmath>

#include <moe/core/arena.hpp>
#include <moe/core/thread_pool.hpp>
#include <moe/eigen.hpp>
#include <moe/layers/expert.hpp>
#include <moe/layers/router.hpp>
#include <moe/ops/matmul.hpp>

namespace {

using moe::eigen::RowMatrix;

Eigen::MatrixXf random_cm(Eigen::Index r, Eigen::Index c, float scale) {
  return Eigen::MatrixXf::Random(r, c) * scale;
}

// silu(g) * u, then the down projection: the FFN written with Eigen expressions.
RowMatrix ffn_reference(const RowMatrix& x, const Eigen::MatrixXf& wg, const Eigen::MatrixXf& wu,
                        const Eigen::MatrixXf& wd) {
  const Eigen::MatrixXf g = x * wg, u = x * wu;
  const Eigen::MatrixXf h =
      g.unaryExpr([](float v) { return v / (1.0f + std::exp(-v)); }).cwiseProduct(u);
  return h * wd;
}

}  // namespace

TEST_CASE("eigen::view maps row-major matrices, maps and row blocks without copying", "[eigen]") {
  RowMatrix m = RowMatrix::Random(5, 7);
  const moe::MatrixView<float> v = moe::eigen::view(m);
  CHECK(v.data == m.data());
  CHECK(v.rows == 5);
  CHECK(v.cols == 7);
  CHECK(v.stride == 7);
  auto block = m.middleRows(1, 3);
  const moe::MatrixView<float> b = moe::eigen::view(block);
  CHECK(b.data == m.data() + 7);
  CHECK(b.rows == 3);
  RowMatrix wide = RowMatrix::Random(4, 10);
  auto cols = wide.leftCols(6);
  const moe::MatrixView<float> c = moe::eigen::view(cols);
  CHECK(c.stride == 10);
  CHECK(c.cols == 6);
  const auto back = moe::eigen::map(c);
  CHECK(back(2, 5) == wide(2, 5));
  Eigen::Map<RowMatrix, 0, Eigen::Stride<Eigen::Dynamic, 2>> strided(
      wide.data(), 2, 3, Eigen::Stride<Eigen::Dynamic, 2>(10, 2));
  CHECK_THROWS_WITH(moe::eigen::view(strided),
                    Catch::Contains("[eigen] activation has inner stride 2"));
}

TEST_CASE("eigen::weight gives column-major matrices the PyTorch layout", "[eigen]") {
  const Eigen::MatrixXf w = random_cm(6, 4, 1.0f);  // [in 6, out 4], column-major
  const moe::F32Weight cm = moe::eigen::weight(w);
  CHECK(cm.layout == moe::Layout::kOutIn);
  CHECK(cm.in == 6);
  CHECK(cm.out == 4);
  CHECK(cm.at(5, 3) == w(5, 3));
  const RowMatrix wr = w;
  const moe::F32Weight rm = moe::eigen::weight(wr);
  CHECK(rm.layout == moe::Layout::kInOut);
  CHECK(rm.at(5, 3) == w(5, 3));
  const Eigen::MatrixXf big = random_cm(10, 10, 1.0f);
  CHECK_THROWS_WITH(moe::eigen::weight(big.topLeftCorner(4, 4)),
                    Catch::Contains("outer stride 10") && Catch::Contains("contiguous"));

  moe::ThreadPool pool(2);
  const RowMatrix x = RowMatrix::Random(9, 6);
  for (const moe::F32Weight& wv : {cm, rm}) {
    RowMatrix y(9, 4);
    moe::matmul(pool, moe::eigen::view(x), wv, moe::eigen::view(y));
    CHECK((y - x * w).cwiseAbs().maxCoeff() < 1e-5f);
  }
}

TEST_CASE("a GatedFfn and a Router run on Eigen matrices and match Eigen expressions", "[eigen]") {
  const Eigen::Index d = 16, f = 24, t = 11;
  const Eigen::MatrixXf wg = random_cm(d, f, 0.3f), wu = random_cm(d, f, 0.3f),
                        wd = random_cm(f, d, 0.3f);
  const RowMatrix x = RowMatrix::Random(t, d);
  const moe::GatedFfn<moe::F32Weight, moe::Activation::kSilu> ffn(
      moe::eigen::weight(wg), moe::eigen::weight(wu), moe::eigen::weight(wd));
  moe::ThreadPool pool(2);
  moe::Arena arena(ffn.workspace_bytes(static_cast<std::size_t>(t)));
  const RowMatrix y = moe::eigen::forward(ffn, pool, x, arena);
  const RowMatrix ref = ffn_reference(x, wg, wu, wd);
  CHECK((y - ref).cwiseAbs().maxCoeff() < 1e-4f * (1.0f + ref.cwiseAbs().maxCoeff()));

  const Eigen::MatrixXf gate = random_cm(d, 4, 1.0f);
  const moe::Router<moe::F32Weight> router(moe::eigen::weight(gate));
  moe::Arena ra(router.workspace_bytes(static_cast<std::size_t>(t)));
  const moe::RouterOutput out = router.alloc_output(ra, static_cast<std::size_t>(t));
  router.route(pool, moe::eigen::view(x), out, ra);
  const RowMatrix logits = x * gate;
  CHECK((moe::eigen::map(out.logits) - logits).cwiseAbs().maxCoeff() < 1e-5f);
}

TEST_CASE("gradients land in Eigen matrices through eigen::weight_grad", "[eigen]") {
  const Eigen::Index d = 8, f = 12, t = 5;
  const Eigen::MatrixXf wg = random_cm(d, f, 0.3f), wu = random_cm(d, f, 0.3f),
                        wd = random_cm(f, d, 0.3f);
  Eigen::MatrixXf gwg = Eigen::MatrixXf::Zero(d, f), gwu = gwg, gwd = Eigen::MatrixXf::Zero(f, d);
  const RowMatrix x = RowMatrix::Random(t, d), dy = RowMatrix::Random(t, d);
  using Ffn = moe::GatedFfn<moe::F32Weight, moe::Activation::kSilu>;
  const Ffn ffn(moe::eigen::weight(wg), moe::eigen::weight(wu), moe::eigen::weight(wd));
  moe::ThreadPool pool(1);
  moe::Arena scratch(ffn.training_workspace_bytes(5)), tape(ffn.tape_bytes(5));
  RowMatrix y(t, d), dx = RowMatrix::Zero(t, d);
  Ffn::Saved saved;
  ffn.forward_train(pool, moe::eigen::view(x), moe::eigen::view(y), scratch, tape, saved);
  ffn.backward(
      pool, moe::eigen::view(x), saved, moe::eigen::view(dy), moe::eigen::view(dx),
      {moe::eigen::weight_grad(gwg), moe::eigen::weight_grad(gwu), moe::eigen::weight_grad(gwd)},
      scratch);
  // dL/dWd = h^T dy with h = silu(x Wg) * (x Wu), as an Eigen expression.
  const Eigen::MatrixXf g = x * wg, u = x * wu;
  const Eigen::MatrixXf h =
      g.unaryExpr([](float v) { return v / (1.0f + std::exp(-v)); }).cwiseProduct(u);
  const Eigen::MatrixXf ref = h.transpose() * dy;
  CHECK((gwd - ref).cwiseAbs().maxCoeff() < 1e-4f * (1.0f + ref.cwiseAbs().maxCoeff()));
  CHECK(gwg.cwiseAbs().maxCoeff() > 0.0f);
}
