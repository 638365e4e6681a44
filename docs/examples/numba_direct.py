"""A Numba direct-loop float32 conv kernel, validated with refconv.testing.

Every product and every partial sum is float32 (sequential accumulation over
KH, KW, C/groups); no ``fastmath``. Run: ``python docs/examples/numba_direct.py``.
"""

from __future__ import annotations

import numba
import numpy as np

from refconv.testing import assert_conv2d_close


@numba.njit(cache=True)
def _direct_f32(xp, w, sh, sw, dh, dw, groups, oh, ow):
    n_, _, _, c = xp.shape
    kh_, kw_, cg, o_ = w.shape
    og = o_ // groups
    y = np.zeros((n_, oh, ow, o_), np.float32)
    for n in range(n_):
        for i in range(oh):
            for j in range(ow):
                for o in range(o_):
                    g = o // og
                    acc = np.float32(0.0)
                    for kh in range(kh_):
                        for kw in range(kw_):
                            for ci in range(cg):
                                acc += xp[n, i * sh + kh * dh, j * sw + kw * dw, g * cg + ci] * w[kh, kw, ci, o]
                    y[n, i, j, o] = acc
    return y


def conv2d_numba_f32(x, w, b, spec):
    """Direct-loop float32 cross-correlation; layouts from ``spec``; returns float32 in spec.data_format."""
    x = np.ascontiguousarray(spec.x_to_nhwc(np.asarray(x, np.float32)))
    w = np.ascontiguousarray(spec.w_to_hwio(np.asarray(w, np.float32)))
    (t, bt), (l, r) = spec.pads
    xp = np.pad(x, ((0, 0), (t, bt), (l, r), (0, 0)))
    oh, ow = spec.out_hw
    y = _direct_f32(xp, w, spec.stride[0], spec.stride[1], spec.dilation[0], spec.dilation[1], spec.groups, oh, ow)
    if b is not None:
        y += np.asarray(b, np.float32)
    return spec.y_from_nhwc(y)


def main() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 10, 12, 6)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 8)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    assert_conv2d_close(conv2d_numba_f32, x, w, b, padding="SAME", dilation=2, groups=2, precision="float32")
    print("numba direct-loop float32 kernel: within the float32 bound")


if __name__ == "__main__":
    main()
