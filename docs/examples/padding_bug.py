"""A kernel with a classic padding bug: SAME's odd extra pad put before instead of after.

TensorFlow's SAME pads ``total // 2`` before and the rest after (bottom/right);
this kernel does the opposite (ONNX's SAME_LOWER). At stride 1 with odd kernels
the two agree, so the bug hides; at stride 2 on even sizes it shows.
"""

from __future__ import annotations

import numpy as np
from numpy_im2col import conv2d_im2col_f32

from refconv.spec import tf_same_padding
from refconv.testing import assert_conv2d_close


def conv2d_same_buggy(x, w, b, spec):
    """Meant to implement padding="SAME"; puts the extra pad at the top/left."""
    wrong = tuple(
        tf_same_padding(size, k, s, d, lower=True)  # the bug: lower=True
        for size, k, s, d in ((spec.H, spec.KH, spec.stride[0], spec.dilation[0]),
                              (spec.W, spec.KW, spec.stride[1], spec.dilation[1]))
    )
    return conv2d_im2col_f32(x, w, b, spec.replace(padding=wrong))


def main() -> str:
    rng = np.random.default_rng(2)
    x = rng.random((1, 8, 8, 3), dtype=np.float32)
    w = rng.random((3, 3, 3, 4), dtype=np.float32)
    assert_conv2d_close(conv2d_same_buggy, x, w, padding="SAME", stride=1)  # stride 1: the bug hides
    try:
        assert_conv2d_close(conv2d_same_buggy, x, w, padding="SAME", stride=2)
    except AssertionError as exc:
        print(exc)
        return str(exc)
    raise RuntimeError("the padding bug went unnoticed")


if __name__ == "__main__":
    main()
