"""mpmath conv at any precision, with exact summation.

Products are formed exactly (``mpf_mul`` at prec=0) and summed exactly
(``mpf_sum`` at prec=0, which keeps every bit for spans below 10^6 bits), then
rounded once: to ``dps`` digits for mpf results, or straight from the exact sum
to float64 (never exact -> dps -> float64, which would round twice).
mpmath's own ``fdot``/``fsum`` are not used: they drop terms far below the
running sum (NUMERICS.md).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..spec import ConvSpec
from ._exactsum import round_to_float64


def _libmp():
    import mpmath.libmp as libmp

    return libmp


def output_points_nhwc(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    spec: ConvSpec,
    points: np.ndarray,
    dps: int | None,
) -> list[Any]:
    """Exact sums at NHWC output indices ``points`` (M, 4): mpf at ``dps`` or float64 if dps is None."""
    libmp = _libmp()
    import mpmath

    from_float, mpf_mul, mpf_sum = libmp.from_float, libmp.mpf_mul, libmp.mpf_sum
    cg, og = spec.C // spec.groups, spec.O // spec.groups
    (pt, _), (pl, _) = spec.pads
    out: list[Any] = []
    wcache: dict[int, list] = {}
    for n, i, j, oc in np.asarray(points, dtype=np.int64).tolist():
        g = oc // og
        if oc not in wcache:
            wcache[oc] = [[[from_float(float(v)) for v in row] for row in plane] for plane in w[:, :, :, oc]]
        wm = wcache[oc]
        terms = []
        for a in range(spec.KH):
            r = i * spec.stride[0] + a * spec.dilation[0] - pt
            if not 0 <= r < spec.H:
                continue  # padding taps are absent terms
            for bb in range(spec.KW):
                c = j * spec.stride[1] + bb * spec.dilation[1] - pl
                if not 0 <= c < spec.W:
                    continue
                xs = x[n, r, c, g * cg : (g + 1) * cg].tolist()
                terms.extend(mpf_mul(from_float(xv), wv) for xv, wv in zip(xs, wm[a][bb]))
        if b is not None:
            terms.append(from_float(float(b[oc])))
        total = mpf_sum(terms, 0)
        if dps is None:
            out.append(_mpf_to_float64(total, libmp))
        else:
            prec = max(2, int(math.ceil(dps * 3.3219280948873626)) + 1)
            out.append(mpmath.mp.make_mpf(libmp.normalize(*total, prec, libmp.round_nearest) if total[1] else total))
    return out


def _mpf_to_float64(v: tuple, libmp) -> float:
    sign, man, exp, _ = v
    if not man:
        if v == libmp.fzero:
            return 0.0
        return {libmp.finf: math.inf, libmp.fninf: -math.inf}.get(v, math.nan)
    return round_to_float64(-man if sign else man, exp)


def conv2d_mpmath_nhwc(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, spec: ConvSpec, dps: int | None = None
) -> np.ndarray:
    """Every output element, correctly rounded to float64 (dps=None) or as mpf at dps (object array)."""
    oh, ow = spec.out_hw
    shape = (spec.N, oh, ow, spec.O)
    points = np.stack(np.unravel_index(np.arange(int(np.prod(shape))), shape), axis=1)
    vals = output_points_nhwc(x, w, b, spec, points, dps)
    if dps is None:
        return np.array(vals, dtype=np.float64).reshape(shape)
    arr = np.empty(len(vals), dtype=object)
    arr[:] = vals
    return arr.reshape(shape)
