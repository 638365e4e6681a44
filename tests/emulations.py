"""Emulations of framework kernels shared by the tests (what a framework's CPU kernel computes, bit for bit)."""

from __future__ import annotations

import numpy as np

from refconv.formats import round_to
from refconv.oracle._im2col import pad_nhwc, window_view
from refconv.spec import ConvSpec


def depthwise_summed_in(x, w, b, geo, fmt, bias_last=False):
    """A depthwise conv (NHWC, HWIO) of inputs rounded to fmt, each product and partial sum rounded to fmt, the
    bias first (or, ``bias_last``, added to the rounded sum by a separate op)."""
    spec = ConvSpec.from_shapes(x.shape, w.shape, b.shape, **geo)
    xr, wr, br = (round_to(v, fmt) for v in (x, w, b))
    win = window_view(pad_nhwc(xr, spec), spec)  # (N, OH, OW, KH, KW, C); one input channel per group
    y = np.zeros(spec.output_shape) if bias_last else np.broadcast_to(br, spec.output_shape).copy()
    with np.errstate(over="ignore", invalid="ignore"):  # (sums past the format's range: ±inf, then inf - inf)
        for i in range(w.shape[0]):
            for j in range(w.shape[1]):
                y = round_to(y + round_to(win[..., i, j, :] * wr[i, j, 0], fmt), fmt)
        return round_to(y + br, fmt) if bias_last else y
