"""Impulse tests (onnx.reference style): a single 1 slid over every input position, kernel weights 2**k.

Each batch element holds one impulse, so every output value is either 0 or the
weight of the one tap that met the impulse: it names exactly which tap
contributed. The expectation is built by *scattering* each impulse to the
outputs that can see it, independently of the oracle's gather formula.
"""

from __future__ import annotations

import numpy as np
import pytest

import refconv
from refconv.spec import ConvSpec

GEOMETRIES = [  # (H, W, KH, KW, C, O, groups, stride, dilation, padding)
    (5, 5, 3, 3, 1, 1, 1, 1, 1, "VALID"),
    (5, 6, 3, 3, 1, 1, 1, 2, 1, "SAME"),
    (6, 5, 3, 2, 1, 1, 1, 2, 1, "SAME_LOWER"),
    (7, 7, 3, 3, 1, 1, 1, 1, 2, "SAME"),
    (8, 7, 2, 3, 1, 2, 1, (3, 2), (2, 1), ((2, 0), (1, 3))),
    (6, 6, 3, 3, 2, 2, 1, 3, 1, 1),
    (5, 7, 2, 2, 4, 4, 2, (2, 3), (1, 2), (1, 2)),
    (6, 6, 3, 3, 3, 3, 3, 2, 2, "SAME"),  # depthwise
    (4, 9, 1, 4, 2, 4, 2, 1, (1, 2), "SAME_LOWER"),
]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def impulse_problem(h, wd, kh, kw, c, o, groups, stride, dilation, padding):
    """x: N = H·W·C impulses (NHWC); w[a, b, k, oc] = 2**(tap index) · (oc + 1): every tap has its own weight."""
    cg = c // groups
    x = np.zeros((h * wd * c, h, wd, c))
    for n, (r, col, ch) in enumerate(np.ndindex(h, wd, c)):
        x[n, r, col, ch] = 1.0
    taps = np.arange(kh * kw * cg).reshape(kh, kw, cg)
    w = np.ldexp(1.0, taps)[..., None] * (np.arange(o) + 1.0)
    return x, w


def scatter_expectation(h, wd, kh, kw, c, o, groups, stride, dilation, pads):
    """For each impulse (r, col, ch), every tap (a, b) and output position it reaches: add that tap's weight."""
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    (pt, pb), (pl, pr) = pads
    oh, ow = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    cg, og = c // groups, o // groups
    y = np.zeros((h * wd * c, oh, ow, o))
    for n, (r, col, ch) in enumerate(np.ndindex(h, wd, c)):
        g, k = divmod(ch, cg)
        for a in range(kh):
            num_i = r + pt - a * dh  # output row i reads input row i·sh + a·dh − pt
            if num_i % sh or not 0 <= num_i // sh < oh:
                continue
            for b in range(kw):
                num_j = col + pl - b * dw
                if num_j % sw or not 0 <= num_j // sw < ow:
                    continue
                for oc in range(g * og, (g + 1) * og):
                    y[n, num_i // sh, num_j // sw, oc] += 2.0 ** ((a * kw + b) * cg + k) * (oc + 1)
    return y


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[str(g) for g in GEOMETRIES])
@pytest.mark.parametrize("method", sorted(refconv.METHODS))
def test_impulse_names_the_contributing_tap(geometry, method):
    h, wd, kh, kw, c, o, groups, stride, dilation, padding = geometry
    x, w = impulse_problem(*geometry)
    kwargs = dict(stride=stride, dilation=dilation, groups=groups, padding=padding)
    spec = ConvSpec.from_shapes(x.shape, w.shape, **kwargs)
    want = scatter_expectation(h, wd, kh, kw, c, o, groups, stride, dilation, spec.pads)
    got = refconv.conv2d(x, w, method=method, **kwargs)
    np.testing.assert_array_equal(got, want, err_msg=f"{method}: impulse response for {geometry}")
    # the same problem in NCHW/OIHW must give the transposed answer
    got_nchw = refconv.conv2d(x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), method=method,
                              data_format="NCHW", **kwargs)
    np.testing.assert_array_equal(got_nchw, want.transpose(0, 3, 1, 2), err_msg=f"{method}: NCHW impulse response")


def test_every_tap_is_seen_exactly_once_without_padding():
    """VALID, stride 1: summing the responses to all impulses counts every tap once per output position."""
    x, w = impulse_problem(6, 6, 3, 3, 1, 1, 1, 1, 1, "VALID")
    y = refconv.conv2d(x, w)
    np.testing.assert_array_equal(y.sum(axis=0)[..., 0], np.full((4, 4), float(w.sum())),
                                  err_msg="each output must see each of the 9 taps once")


def test_impulse_at_a_position_padding_cannot_reach_is_invisible():
    """Stride 3 with VALID skips the last rows/columns: impulses there must not show up anywhere."""
    x, w = impulse_problem(7, 7, 2, 2, 1, 1, 1, 3, 1, "VALID")  # outputs read rows/cols 0-1 and 3-4 only
    y = refconv.conv2d(x, w, stride=3)
    seen = y.reshape(7, 7, -1).any(axis=2)
    want = np.zeros((7, 7), dtype=bool)
    want[np.ix_([0, 1, 3, 4], [0, 1, 3, 4])] = True
    np.testing.assert_array_equal(seen, want, err_msg="which input positions influence the output")
