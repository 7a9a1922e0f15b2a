"""Reproducible summation: sums of float64 vectors that do not depend on the order of the terms.

Local SGD (Zhang & Li 2022, Algorithm 1) averages m node models
``x_{n+1} = (1/m) sum_i x_n^{i,T_i}``, the m logical nodes spread over any number of ranks. A
floating-point sum depends on its order (each rank's partial sum, then MPI's reduction order), so
the iterates would depend on how the nodes are placed. Here every term is split EXACTLY into
``K`` integer limbs on one grid shared by all terms -- limb k is the integer ``t_k`` with
``x ~ sum_k t_k 2^(e - bits (k + 1))``, ``e`` the exponent of the largest magnitude of all terms
(``max |x| < 2^e``) -- and the limbs are summed as int64, which is exact and associative. Any
placement, rank count and reduction order then give the same integers, hence bitwise the same
result (pre-rounding to a common grid as in Demmel & Nguyen, "Fast reproducible floating-point
summation", ARITH 2013, with integer limbs instead of floating-point bins).

Accuracy: the part of each term below ``2^(e - K bits)`` is dropped (``K bits = 156`` for the
defaults: below ``1e-47 max |x|``), and :func:`combine` rounds the exact integer sum to float64
(at most about 1.5 ulp of the result). Overflow: a limb sum of N terms is below ``N 2^bits``, so
``bits <= 62 - ceil(log2 N)`` (:func:`limb_bits`).
"""

from __future__ import annotations

import math

import numba

#: Bits of the grid covered below the largest magnitude (the limbs together).
SPAN = 156


def limb_bits(n_terms: int) -> int:
    """Bits per limb for sums of ``n_terms`` terms: 52 (a double's mantissa) unless the int64 sums
    of that many limbs could overflow."""
    return min(52, 62 - max(int(n_terms) - 1, 0).bit_length())


def n_limbs(bits: int) -> int:
    """Limbs that cover :data:`SPAN` bits."""
    return -(-SPAN // bits)


@numba.njit(cache=True)
def max_abs(x):
    """``max |x|`` of a 1-D array; NaN if any entry is NaN (Inf if any is infinite)."""
    m = 0.0
    for i in range(x.shape[0]):
        a = abs(x[i])
        if a != a:
            return a
        if a > m:
            m = a
    return m


@numba.njit(cache=True)
def split_add(x, e, bits, acc):
    """Add the limbs of the finite 1-D array ``x`` to the int64 accumulator ``acc`` (K, n):
    ``acc[k, j] += t_k(x[j])`` on the grid ``2^(e - bits (k + 1))``. Needs ``max |x| < 2^e``.
    Every operation is exact (scaling by powers of two, truncation, subtracting the truncated
    part), so the limbs are a function of ``x[j]``, ``e`` and ``bits`` alone."""
    K, n = acc.shape
    if x.shape[0] != n:
        raise ValueError("split_add: x and acc must have the same number of entries")
    scale = 2.0**bits
    for j in range(n):
        v = math.ldexp(x[j], bits - e)  # |v| < 2^bits
        for k in range(K):
            t = int(v)  # truncation toward zero
            acc[k, j] += t
            v = (v - t) * scale


@numba.njit(cache=True)
def combine(acc, e, bits, divisor, out):
    """``out[j] = (sum_k acc[k, j] 2^(e - bits (k + 1))) / divisor``, rounded to float64 (the
    limbs are first carried into canonical form; ``acc`` is modified). The same integers give
    the same bits."""
    K, n = acc.shape
    if out.shape[0] != n:
        raise ValueError("combine: out and acc must have the same number of entries")
    base = 1 << bits
    inv = 2.0**-bits
    for j in range(n):
        carry = 0
        for k in range(K - 1, 0, -1):  # lowest limb first: limbs 1..K-1 into [0, 2^bits)
            v = acc[k, j] + carry
            carry = v >> bits  # floor division by 2^bits (arithmetic shift)
            acc[k, j] = v - carry * base
        top = acc[0, j] + carry
        s = 0.0
        for k in range(K - 1, 0, -1):
            s = (acc[k, j] + s) * inv  # in [0, 1)
        out[j] = math.ldexp(top + s, e - bits) / divisor
