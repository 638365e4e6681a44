"""Exact dot products in Python integers, rounded once to float64.

This is the certified fallback of ``method="exact"``: slow (pure Python over the
K terms) but exact for every finite input, whatever the exponent span.
"""

from __future__ import annotations

import math

import numpy as np


def int_mantissas(v: np.ndarray) -> tuple[list[int], list[int]]:
    """Split float64 values exactly as m * 2**e with integer m (|m| < 2**53)."""
    m, e = np.frexp(v)
    return (m * 2.0**53).astype(np.int64).tolist(), (e.astype(np.int64) - 53).tolist()


def round_to_float64(n: int, e: int) -> float:
    """The float64 nearest to n * 2**e (ties to even), ±inf beyond the range.

    CPython's int -> float conversion and int/int true division are correctly
    rounded (subnormals included), so the value is rounded exactly once.

    >>> round_to_float64(3, -1), round_to_float64(2**53 + 1, 0), round_to_float64(-1, 1024)
    (1.5, 9007199254740992.0, -inf)
    """
    if n == 0:
        return 0.0
    n = int(n)  # mpmath's mantissas may be gmpy2 mpz: mpz / int is a 53-bit mpfr, which rounds twice below 2^-1022
    try:
        return float(n << e) if e >= 0 else n / (1 << -e)
    except OverflowError:  # beyond the range; math.copysign(inf, n) would itself overflow converting n
        return math.inf if n > 0 else -math.inf


def exact_dot_int(a: np.ndarray, b: np.ndarray, extra: float = 0.0) -> tuple[int, int]:
    """Σ a_k·b_k + extra exactly, as (n, e) with value n * 2**e. Inputs must be finite."""
    nz = (a != 0) & (b != 0)
    ma, ea = int_mantissas(a[nz])
    mb, eb = int_mantissas(b[nz])
    terms = [(x * y, p + q) for x, p, y, q in zip(ma, ea, mb, eb)]
    if extra != 0.0:
        (me,), (ee,) = int_mantissas(np.array([extra]))
        terms.append((me, ee))
    if not terms:
        return 0, 0
    e0 = min(e for _, e in terms)
    return sum(m << (e - e0) for m, e in terms), e0


def exact_dot(a: np.ndarray, b: np.ndarray, extra: float = 0.0) -> float:
    """Correctly rounded float64 of Σ a_k·b_k + extra (finite inputs).

    >>> exact_dot(np.array([1e300, 1.0, -1e300]), np.array([1.0, 1.0, 1.0]))
    1.0
    """
    return round_to_float64(*exact_dot_int(a, b, extra))
