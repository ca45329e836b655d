"""The polynomial of the bf16 GELU kernel (kernels/activations.cuh, gelu_bf16).

gelu_bf16 evaluates Phi(-u) = erfc(u / sqrt 2) / 2, u = |x|, as 2^q(u), q a
polynomial of degree 7 fitted by least squares (Chebyshev basis, 20001
points) to log2 Phi(-u) on [0, 6], then written in powers of u for Horner's
rule. This prints its coefficients (c0 first) as the kernel holds them, and
the largest relative error of Phi(-u) with q evaluated in f32 as the kernel
does (exp2 in f64: the card's ex2.approx adds about 2^-22).

    venv/bin/python tools/gelu_fit.py
"""

import math

import numpy as np

DEGREE, U = 7, 6.0


def main():
    u = np.linspace(0.0, U, 20001)
    phi = np.array([0.5 * math.erfc(v / math.sqrt(2.0)) for v in u])
    fit = np.polynomial.chebyshev.Chebyshev.fit(u, np.log2(phi), DEGREE)
    coef = fit.convert(kind=np.polynomial.Polynomial).coef.astype(np.float32)
    uf = u.astype(np.float32)
    q = np.full_like(uf, coef[-1])
    for c in coef[-2::-1]:
        q = (q * uf + c).astype(np.float32)
    err = np.abs(np.exp2(q.astype(np.float64)) / phi - 1.0).max()
    for i, c in enumerate(coef):
        print(f"c{i} = {c.item():.9e}f")
    print(f"max relative error of Phi(-u) on [0, {U}]: {err:.2e}")


if __name__ == "__main__":
    main()
