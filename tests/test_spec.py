"""ConvSpec: SAME for every stride/dilation/size, layouts, replace(), to_dict()."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from refconv.errors import ShapeError
from refconv.spec import ConvSpec, prepare, resolve_padding, tf_same_padding

SIZES, KERNELS, STRIDES, DILATIONS = range(1, 13), range(1, 6), range(1, 5), range(1, 4)


def test_same_follows_tensorflows_rule_everywhere():
    """out = ceil(in/stride); total = max((out-1)·s + (k-1)·d + 1 - in, 0); smaller half before."""
    for size, k, s, d in itertools.product(SIZES, KERNELS, STRIDES, DILATIONS):
        before, after = tf_same_padding(size, k, s, d)
        out = math.ceil(size / s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        assert (before, after) == (total // 2, total - total // 2), (size, k, s, d)
        assert tf_same_padding(size, k, s, d, lower=True) == (after, before), (size, k, s, d)
        spec = ConvSpec.from_shapes((1, size, size + 1, 1), (k, 1, 1, 1), stride=s, dilation=d, padding="SAME")
        assert spec.out_hw == (out, math.ceil((size + 1) / s)), (size, k, s, d)
        lower = spec.replace(padding="SAME_LOWER")
        assert lower.out_hw == spec.out_hw and lower.pads[0] == (after, before), (size, k, s, d)


def test_same_matches_jax_padtype_to_pads():
    """An independent implementation of TF's SAME: jax.lax.padtype_to_pads (on the dilated window)."""
    lax = pytest.importorskip("jax.lax")
    for size, k, s, d in itertools.product(SIZES, KERNELS, STRIDES, DILATIONS):
        (want,) = lax.padtype_to_pads((size,), ((k - 1) * d + 1,), (s,), "SAME")
        assert tf_same_padding(size, k, s, d) == tuple(want), (size, k, s, d)
        (want_lower,) = lax.padtype_to_pads((size,), ((k - 1) * d + 1,), (s,), "SAME_LOWER")
        assert tf_same_padding(size, k, s, d, lower=True) == tuple(want_lower), (size, k, s, d)


def test_resolve_padding_forms():
    args = ((7, 8), (3, 2), (2, 1), (1, 1))
    assert resolve_padding("VALID", *args) == ((0, 0), (0, 0))
    assert resolve_padding("valid", *args) == ((0, 0), (0, 0))
    assert resolve_padding("SAME", *args) == resolve_padding("same_upper", *args) == ((1, 1), (0, 1))
    assert resolve_padding("SAME_LOWER", *args) == ((1, 1), (1, 0))
    assert resolve_padding(2, *args) == ((2, 2), (2, 2))
    assert resolve_padding(np.int64(2), *args) == ((2, 2), (2, 2))
    assert resolve_padding((1, 3), *args) == ((1, 1), (3, 3))
    assert resolve_padding(((0, 1), (2, 3)), *args) == ((0, 1), (2, 3))
    assert resolve_padding([[0, 1], [2, 3]], *args) == ((0, 1), (2, 3))
    for bad in (-1, (0, -1), ((0, 0), (0, -2)), "FULL", (1, 2, 3), ((1, 2, 3), (0, 0)), 1.5, True, None):
        with pytest.raises(ShapeError, match="padding="):
            resolve_padding(bad, *args)


@pytest.mark.parametrize("data_format,kernel_format", [("NHWC", None), ("NCHW", None), ("NHWC", "OIHW"),
                                                       ("NCHW", "HWIO")])
def test_layouts_and_canonical_sizes(data_format, kernel_format):
    n, h, w, c, kh, kw, o, g = 2, 7, 9, 6, 3, 2, 4, 2
    xs = (n, h, w, c) if data_format == "NHWC" else (n, c, h, w)
    kf = kernel_format or ("HWIO" if data_format == "NHWC" else "OIHW")
    ws = (kh, kw, c // g, o) if kf == "HWIO" else (o, c // g, kh, kw)
    spec = ConvSpec.from_shapes(xs, ws, (o,), stride=(2, 1), padding="SAME", groups=g, data_format=data_format,
                                kernel_format=kernel_format)
    assert (spec.N, spec.H, spec.W, spec.C, spec.KH, spec.KW, spec.O) == (n, h, w, c, kh, kw, o)
    assert spec.kernel_format == kf and spec.has_bias and spec.n_terms == kh * kw * c // g
    assert spec.out_hw == (4, 9)
    assert spec.output_shape == ((n, 4, 9, o) if data_format == "NHWC" else (n, o, 4, 9))
    rng = np.random.default_rng(0)
    x, wt, y = rng.random(xs), rng.random(ws), rng.random(spec.output_shape)
    assert spec.x_to_nhwc(x).shape == (n, h, w, c) and spec.w_to_hwio(wt).shape == (kh, kw, c // g, o)
    np.testing.assert_array_equal(spec.y_from_nhwc(spec.y_to_nhwc(y)), y, err_msg="y layout round trip")
    if data_format == "NCHW":
        np.testing.assert_array_equal(spec.x_to_nhwc(x)[1, 3, 5, 2], x[1, 2, 3, 5], err_msg="x transpose")
    if kf == "OIHW":
        np.testing.assert_array_equal(spec.w_to_hwio(wt)[2, 1, 0, 3], wt[3, 0, 2, 1], err_msg="w transpose")


def test_spec_is_frozen_hashable_and_normalized():
    a = ConvSpec.from_shapes((1, 5, 5, 2), (3, 3, 2, 1), padding=[[np.int64(1), 0], [0, 1]], stride=[2, 2])
    b = ConvSpec.from_shapes((1, 5, 5, 2), (3, 3, 2, 1), padding=((1, 0), (0, 1)), stride=2)
    assert a == b and hash(a) == hash(b), "equal geometry must give equal, hashable specs"
    assert type(a.padding[0][0]) is int
    assert ConvSpec.from_shapes((1, 5, 5, 2), (3, 3, 2, 1), padding="same").padding == "SAME"
    assert ConvSpec.from_shapes((1, 5, 5, 2), (3, 3, 2, 1), stride=np.array([2, 1])).stride == (2, 1)
    with pytest.raises(AttributeError):
        a.groups = 2  # type: ignore[misc]


def test_replace_keeps_the_padding_form_and_revalidates():
    s = ConvSpec.from_shapes((1, 6, 6, 2), (3, 3, 2, 4), (4,), padding="SAME")
    assert s.replace() == s
    s2 = s.replace(stride=2)
    assert s2.padding == "SAME"
    assert s2.pads == (tf_same_padding(6, 3, 2, 1), tf_same_padding(6, 3, 2, 1)) == ((0, 1), (0, 1))
    assert s2.output_shape == (1, 3, 3, 4) and s2.has_bias
    assert s.replace(padding="VALID").output_shape == (1, 4, 4, 4)
    assert s.replace(pads=((0, 1), (2, 0))).pads == ((0, 1), (2, 0))
    assert s.replace(x_shape=(1, 9, 9, 2)).output_shape == (1, 9, 9, 4), "SAME re-resolved for the new shape"
    assert s.replace(dilation=2).pads == ((2, 2), (2, 2))
    assert not s.replace(has_bias=False).has_bias
    nchw = s.replace(data_format="NCHW")
    assert nchw.x_shape == (1, 2, 6, 6) and nchw.w_shape == (3, 3, 2, 4) and nchw.kernel_format == "HWIO"
    assert nchw.output_shape == (1, 4, 6, 6)
    oihw = s.replace(kernel_format="OIHW")
    assert oihw.w_shape == (4, 2, 3, 3) and oihw.n_terms == s.n_terms
    with pytest.raises(ShapeError, match="groups"):
        s.replace(groups=2)  # w's input channels (2) no longer equal C/groups (1)
    with pytest.raises(ShapeError, match="stride"):
        s.replace(stride=0)
    with pytest.raises(ShapeError, match="unknown field"):
        s.replace(strides=2)
    with pytest.raises(ShapeError, match="not both"):
        s.replace(padding="SAME", pads=((0, 0), (0, 0)))


def test_to_dict_is_json_ready_and_rebuilds_the_spec():
    for padding in ("SAME_LOWER", 1, (np.int64(1), 2), ((0, 1), (2, 0)), "valid"):
        s = ConvSpec.from_shapes((2, 3, 7, 8), (4, 3, 3, 2), (4,), padding=padding, stride=(2, 1), dilation=(1, 2),
                                 data_format="NCHW")
        d = json.loads(json.dumps(s.to_dict()))
        assert d["output_shape"] == list(s.output_shape) and d["n_terms"] == s.n_terms == 18
        assert d["pads"] == [list(p) for p in s.pads]
        rebuilt = ConvSpec.from_shapes(d["x_shape"], d["w_shape"], (4,) if d["has_bias"] else None,
                                       stride=tuple(d["stride"]), dilation=tuple(d["dilation"]), groups=d["groups"],
                                       padding=d["padding"] if isinstance(d["padding"], (str, int)) else
                                       tuple(tuple(p) if isinstance(p, list) else p for p in d["padding"]),
                                       data_format=d["data_format"], kernel_format=d["kernel_format"])
        assert rebuilt == s, f"to_dict does not round-trip for padding={padding!r}"
        text = s.describe()
        assert "x(2, 3, 7, 8) NCHW" in text and f"pads={s.pads}" in text and "+ b" in text


def test_from_arrays_and_prepare_read_foreign_shapes():
    x = [[[[1.0, 2.0]] * 3] * 3]  # (1, 3, 3, 2) nested lists
    w = np.ones((2, 2, 2, 1))
    assert ConvSpec.from_arrays(x, w).output_shape == (1, 2, 2, 1)
    xf, wf, bf, spec = prepare(x, w, [0.5], padding="SAME")
    assert xf.dtype == wf.dtype == bf.dtype == np.float64 and spec.has_bias and spec.output_shape == (1, 3, 3, 1)


def test_output_never_empty_for_same_and_empty_detected_for_valid():
    for size, k, s, d in itertools.product(range(1, 6), range(1, 5), range(1, 4), range(1, 3)):
        spec = ConvSpec.from_shapes((1, size, size, 1), (k, k, 1, 1), stride=s, dilation=d, padding="SAME")
        assert min(spec.out_hw) >= 1
        span = (k - 1) * d + 1
        if span > size:
            with pytest.raises(ShapeError, match="empty output"):
                ConvSpec.from_shapes((1, size, size, 1), (k, k, 1, 1), stride=s, dilation=d)
        else:
            assert ConvSpec.from_shapes((1, size, size, 1), (k, k, 1, 1), stride=s, dilation=d).out_hw[0] == (
                (size - span) // s + 1)
