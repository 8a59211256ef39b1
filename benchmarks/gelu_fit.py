"""Where the exact GELU's constants come from (vit_fast/kernels/gemm.py `gelu_erf`).

The kernels compute Phi(-a) = erfc(a / sqrt 2) / 2 for a = |x| as 2^(a * Q(a) - 1), with Q a polynomial that fits
log2(erfc(a / sqrt 2)) / a on [0, 6] (a weighted near-minimax fit: Lawson's iteration on least squares in the
Chebyshev basis, weight a, so that the error is uniform in log2(erfc) itself). The GELU is then x * Phi(x): one FMA
a degree and one ex2 an element, and no `1 + erf(x)` cancellation for negative x.

Q's degree follows the precision an epilogue stores the result in (DEGREES). bf16 takes the lowest degree whose
relative error, ln 2 times the fit's error in log2, is at most 1/32 of bf16's smallest relative half step (5), so
the store's rounding is that of the exact value but for the few values that close to a tie. fp32 keeps degree 9,
near its own rounding, and fp16 and FC1's e4m3 codes share it: the FP8 model tests hold those codes to the torch
emulation's (which rounds the exact GELU), and degree 5 flipped enough of them to fail there about 3 runs in 10.

`python -m benchmarks.gelu_fit` prints each fit's coefficients (highest degree first, as the kernel's Horner chain
uses them) and its largest error; tests/kernels/test_activations.py checks the kernels' accuracy itself.
"""
import mpmath
import numpy as np

LIMIT = 6.0
# stored format -> (explicit mantissa bits, degree of Q); gelu_erf picks by OUT_TY.fp_mantissa_width
DEGREES = {"float32 / float16 / float8 e4m3": (23, 9), "bfloat16": (7, 5)}


def fit(degree: int, limit: float = LIMIT, points: int = 6000, rounds: int = 60):
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
    for name, (bits, degree) in DEGREES.items():
        coef, worst, worst32 = fit(degree)
        budget = 2.0 ** -(min(bits, 10) + 2) / 32  # degree 9: fp16's (fp32 is held to its own rounding)
        print(f"{name}: log2 erfc(a/sqrt2) = a * Q(a) on [0, {LIMIT}], degree {degree}: largest error {worst:.2e} "
              f"({worst32:.2e} with float32 coefficients), relative {np.log(2) * worst32:.2e} "
              f"(1/32 of the half step: {budget:.2e})")
        for c in coef[::-1]:
            print(repr(float(np.float32(c))))
