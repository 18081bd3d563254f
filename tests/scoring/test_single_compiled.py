"""The single path's generated projection and nearest-centre code: the same bits as the loops."""

from __future__ import annotations

import math
import random

from scoring.single import _nearest_centre, _projection


def _project_loop(b, w, c):
    p = list(b)
    for ci, row in zip(c, w, strict=True):
        for k, wk in enumerate(row):
            p[k] += ci * wk
    return p


def _nearest_loop(centers, p):
    best, best_d2 = 0, math.inf
    for s, center in enumerate(centers):
        d2 = 0.0
        for pk, ck in zip(p, center, strict=True):
            diff = pk - ck
            d2 += diff * diff
        if d2 < best_d2:
            best, best_d2 = s, d2
    return best, best_d2


def _same(a, b):
    return all(
        (x == y and math.copysign(1, x) == math.copysign(1, y)) or (x != x and y != y)
        for x, y in zip(a, b, strict=True)
    )


def test_generated_code_gives_the_loops_bits():
    rng = random.Random(3)
    specials = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, 5e-324]
    for trial in range(300):
        n, m, k = rng.randint(0, 9), rng.randint(1, 4), rng.randint(1, 6)

        def value():
            return (
                rng.choice(specials)
                if rng.random() < 0.05
                else rng.uniform(-1e3, 1e3) * 10 ** rng.randint(-8, 8)
            )

        b = [value() for _ in range(m)]
        w = [[value() for _ in range(m)] for _ in range(n)]
        centers = [[value() for _ in range(m)] for _ in range(k)]
        if trial % 5 == 0 and k > 1:
            centers[1] = list(centers[0])  # a tie: the first centre wins
        c = [value() for _ in range(n)]
        p = _projection(b, w)(*c)
        assert _same(p, _project_loop(b, w, c)), (b, w, c)
        got, want = _nearest_centre(centers)(*p), _nearest_loop(centers, p)
        assert got[0] == want[0] and _same([got[1]], [want[1]]), (centers, p)
