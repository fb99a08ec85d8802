#!/usr/bin/python3
"""Fits the polynomial coefficients used by include/moe/simd/simd.hpp (exp, tanh, Phi).

Run with Debian's /usr/bin/python3 (numpy + scipy). Prints C++ initialisers; the values in
simd.hpp were produced by this script. Method: Lawson's iteratively reweighted least squares
converging to the minimax RELATIVE error on dense grids, in double, then each coefficient is
rounded to float32 and the error is re-evaluated (the tests in tests/ops check the C++ code
against double-precision references).

  exp:  e^r = 1 + r (1 + r P(r)),  r in [-ln2/2, ln2/2],  P degree 5
  tanh: tanh(a) = a + a^3 P(a^2),  a in [0, 0.55],        P degree 4
  Phi:  Phi(-a) = erfc(a / sqrt2) / 2 = t exp(-a^2/2) P(t),  t = 1 / (1 + 0.3 a),  a in [0, 13.5],
        P degree 9
"""
import math

import numpy as np
from scipy import special


def lawson(basis, target, x, iters=300):
    """Coefficients c minimising max_x |basis(x) c / target - 1| (Lawson's algorithm)."""
    b = basis(x) / target[:, None]
    f = np.ones_like(target)
    w = np.full(len(x), 1.0 / len(x))
    for _ in range(iters):
        sw = np.sqrt(w)
        c, *_ = np.linalg.lstsq(b * sw[:, None], f * sw, rcond=None)
        e = np.abs(b @ c - f)
        w = w * e
        w /= w.sum()
    return c, float(np.max(np.abs(b @ c - f)))


def poly(c, t):
    acc = np.zeros_like(t)
    for v in c[::-1]:
        acc = acc * t + float(v)
    return acc


def show(name, c32, fit_err, rounded_err):
    vals = ", ".join(f"{float(v):.9g}f" for v in c32)
    print(f"// {name}: minimax rel. error {fit_err:.3g} (double), {rounded_err:.3g} (f32 coefficients)")
    print(f"{{{vals}}}")


def main():
    # exp: P(r) = (e^r - 1 - r) / r^2, so that e^r = 1 + r (1 + r P(r)) and exp(0) == 1 exactly.
    h = math.log(2) / 2
    r = np.cos(np.linspace(0, math.pi, 20001)) * h
    r = r[np.abs(r) > 1e-9]
    tgt = np.expm1(r) / r - 1
    tgt = tgt / r
    c, err = lawson(lambda x: np.vander(x, 6, increasing=True), tgt, r)
    c32 = np.float32(c)
    full = 1 + r * (1 + r * poly(c32, r))
    show("exp P(r)", c32, err, float(np.max(np.abs(full / np.exp(r) - 1))))

    # tanh small argument: P(u) = (tanh(a) - a) / a^3, u = a^2.
    a = np.linspace(1e-4, 0.55, 20001)
    tgt = (np.tanh(a) - a) / a**3
    c, err = lawson(lambda x: np.vander(x * x, 5, increasing=True), tgt, a)
    c32 = np.float32(c)
    full = a + a**3 * poly(c32, a * a)
    show("tanh P(a^2), a < 0.55", c32, err, float(np.max(np.abs(full / np.tanh(a) - 1))))

    # Phi(-a) = erfc(a/sqrt2)/2 = t e^{-a^2/2} P(t): P(t) = erfcx(a/sqrt2) / (2 t).
    k = 0.3
    a = np.linspace(0, 13.5, 40001)
    t = 1 / (1 + k * a)
    tgt = 0.5 * special.erfcx(a / math.sqrt(2)) / t
    c, err = lawson(lambda x: np.vander(1 / (1 + k * x), 10, increasing=True), tgt, a)
    c32 = np.float32(c)
    show("Phi P(t), t = 1/(1 + 0.3 a)", c32, err, float(np.max(np.abs(poly(c32, t) / tgt - 1))))


if __name__ == "__main__":
    main()
