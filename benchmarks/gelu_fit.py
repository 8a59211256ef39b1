"""Where the exact GELU's constants come from (vit_fast/kernels/gemm.py `gelu_erf`).

The kernels compute Phi(-a) = erfc(a / sqrt 2) / 2 for a = |x| as 2^(a * Q(a) - 1), with Q a degree-9 polynomial
that fits log2(erfc(a / sqrt 2)) / a on [0, 6] (a weighted near-minimax fit: Lawson's iteration on least squares in
the Chebyshev basis, weight a, so that the error is uniform in log2(erfc) itself). The GELU is then x * Phi(x):
10 FMAs and one ex2 an element, and no `1 + erf(x)` cancellation for negative x.

`python -m benchmarks.gelu_fit` prints the coefficients (highest degree first, as the kernel's Horner chain uses
them) and the fit's largest error in log2; tests/kernels/test_activations.py checks the kernel's accuracy itself.
"""
import mpmath
import numpy as np

DEGREE, LIMIT = 9, 6.0


def fit(degree: int = DEGREE, limit: float = LIMIT, points: int = 6000, rounds: int = 60):
    """-> (coefficients of Q, lowest degree first, float64; largest |a * Q(a) - log2 erfc(a / sqrt 2)| on the grid
    with them; the same with the coefficients rounded to float32, as the kernel holds them)."""
    mpmath.mp.dps = 40
    a = np.linspace(1e-6, limit, points)
    target = np.array([float(mpmath.log(mpmath.erfc(mpmath.mpf(v) / mpmath.sqrt(2)), 2)) for v in a]) / a
    basis = np.polynomial.chebyshev.chebvander(a / limit * 2 - 1, degree)
    weight = a.copy()
    for _ in range(rounds):
        coef, *_ = np.linalg.lstsq(basis * weight[:, None], target * weight, rcond=None)
        error = np.abs(basis @ coef - target) * a
        weight = weight * np.sqrt(error / error.max()) + 1e-4 * weight
    in_t = np.polynomial.Polynomial(np.polynomial.chebyshev.cheb2poly(coef))
    in_a = in_t(np.polynomial.Polynomial([-1.0, 2.0 / limit])).coef
    rounded = np.polynomial.polynomial.polyval(a, in_a.astype(np.float32).astype(np.float64))
    return in_a, float(error.max()), float((np.abs(rounded - target) * a).max())


if __name__ == "__main__":
    coef, worst, worst32 = fit()
    print(f"log2 erfc(a/sqrt2) = a * Q(a) on [0, {LIMIT}], degree {DEGREE}: largest error {worst:.2e} "
          f"({worst32:.2e} with float32 coefficients)")
    for c in coef[::-1]:
        print(repr(float(np.float32(c))))
