"""Convex feasibility as optimisation: the mean squared distance to a family of convex sets.

Zhang & Li, "Distributed optimization for over-parameterized learning" (2022), Sec. 2.3.1 and
Fig. 1/2(a): the two-disc problem ``f1(x, y) = max(sqrt(x^2 + (y - 1)^2) - 1, 0)^2`` and
``f2(x, y) = max(y, 0)^2`` are the squared distances to the disc of centre (0, 1) and radius 1
and to the half-plane ``y <= 0``, whose only common point is the origin (the paper's Assumption 1
holds, its separation Assumption 3 does not). Each "sample" is one convex set, one row of ``sets``
(shape (m, d + 1)) with its kind in ``kinds`` (m,):

- :data:`BALL`: ``(c_1..c_d, rho)`` is ``{x : ||x - c|| <= rho}``;
- :data:`HALFSPACE`: ``(a_1..a_d, b)`` is ``{x : a . x <= b}`` (``a`` need not be a unit vector).

``d(x, S)^2`` is convex with a 2-Lipschitz gradient ``2 (x - P_S(x))`` (P_S the projection), so
each local loss is convex and L-smooth as the paper's Section 2 assumes.
"""

from __future__ import annotations

import math

import numba

BALL, HALFSPACE = 0, 1


@numba.njit(cache=True)
def sq_distance(p, sets, kinds, g):
    """Mean squared distance ``(1/m) sum_k d(p, S_k)^2`` of the point ``p`` (d,) to the sets
    (see the module docstring); writes its gradient ``(2/m) sum_k (p - P_k(p))`` into ``g`` (d,)
    and returns the value. ``m = 0`` gives 0 and a zero gradient."""
    m, d1 = sets.shape
    d = d1 - 1
    if p.shape[0] != d or g.shape[0] != d or kinds.shape[0] != m:
        raise ValueError("sq_distance: p and g need d entries, sets d + 1 columns, kinds m")
    for j in range(d):
        g[j] = 0.0
    if m == 0:
        return 0.0
    inv_m = 1.0 / m
    total = 0.0
    for k in range(m):
        if kinds[k] == BALL:
            dist2 = 0.0
            for j in range(d):
                r = p[j] - sets[k, j]
                dist2 += r * r
            dist = math.sqrt(dist2)
            excess = dist - sets[k, d]
            if excess > 0.0:
                total += excess * excess
                coef = 2.0 * excess / dist * inv_m  # dist > excess >= 0: no division by zero
                for j in range(d):
                    g[j] += coef * (p[j] - sets[k, j])
        elif kinds[k] == HALFSPACE:
            s = -sets[k, d]
            na2 = 0.0
            for j in range(d):
                s += sets[k, j] * p[j]
                na2 += sets[k, j] * sets[k, j]
            if s > 0.0 and na2 > 0.0:
                total += s * s / na2
                coef = 2.0 * s / na2 * inv_m
                for j in range(d):
                    g[j] += coef * sets[k, j]
        else:
            raise ValueError("sq_distance: kinds must be BALL (0) or HALFSPACE (1)")
    return total * inv_m
