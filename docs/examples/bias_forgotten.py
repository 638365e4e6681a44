"""A kernel that forgets the bias: refconv.testing fails it and names the bias."""

from __future__ import annotations

import numpy as np
from numpy_im2col import conv2d_im2col_f32

from refconv.testing import assert_conv2d_close


def conv2d_no_bias(x, w, b, spec):
    """Accepts a bias and silently drops it."""
    return conv2d_im2col_f32(x, w, None, spec)


def main() -> str:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 6, 4)).astype(np.float32)
    w = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    try:
        assert_conv2d_close(conv2d_no_bias, x, w, b, padding="VALID")
    except AssertionError as exc:
        print(exc)
        return str(exc)
    raise RuntimeError("the missing bias went unnoticed")


if __name__ == "__main__":
    main()
