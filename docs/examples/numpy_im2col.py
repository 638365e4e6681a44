"""A plain NumPy im2col float32 conv kernel, validated with refconv.testing.

Run as a script (``python docs/examples/numpy_im2col.py``) or through the test
suite. The kernel is cross-correlation in NHWC/HWIO with explicit pads; every
product and sum is float32 (NumPy's float32 matmul).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from refconv.testing import assert_conv2d_close


def conv2d_im2col_f32(x, w, b, spec):
    """float32 im2col + GEMM conv; x, w in the spec's layouts, result in its data_format (float32)."""
    x = spec.x_to_nhwc(np.asarray(x, np.float32))
    w = spec.w_to_hwio(np.asarray(w, np.float32))
    (t, bt), (l, r) = spec.pads
    xp = np.pad(x, ((0, 0), (t, bt), (l, r), (0, 0)))
    dh, dw = spec.dilation
    kh_eff, kw_eff = (spec.KH - 1) * dh + 1, (spec.KW - 1) * dw + 1
    win = sliding_window_view(xp, (kh_eff, kw_eff), axis=(1, 2))[:, :: spec.stride[0], :: spec.stride[1], :, ::dh, ::dw]
    oh, ow = spec.out_hw
    win = win[:, :oh, :ow]  # (N, OH, OW, C, KH, KW)
    cg, og = spec.C // spec.groups, spec.O // spec.groups
    y = np.empty((spec.N, oh, ow, spec.O), np.float32)
    for g in range(spec.groups):
        cols = win[:, :, :, g * cg:(g + 1) * cg].transpose(0, 1, 2, 4, 5, 3).reshape(-1, spec.KH * spec.KW * cg)
        wm = w[:, :, :, g * og:(g + 1) * og].reshape(-1, og)
        y[..., g * og:(g + 1) * og] = (cols @ wm).reshape(spec.N, oh, ow, og)
    if b is not None:
        y += np.asarray(b, np.float32)
    return spec.y_from_nhwc(y)


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((2, 9, 11, 8), dtype=np.float32)
    w = rng.random((3, 3, 8, 16), dtype=np.float32)
    b = rng.random(16, dtype=np.float32)
    assert_conv2d_close(conv2d_im2col_f32, x, w, b, stride=2, padding="SAME", precision="float32")
    print("numpy im2col float32 kernel: within the float32 bound")


if __name__ == "__main__":
    main()
