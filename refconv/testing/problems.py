"""Conv problems: geometry plus values from families that expose errors.

A :class:`ConvProblem` bundles x, w, b and the geometry. Geometries cover every
padding form (SAME, SAME_LOWER, VALID, int, (ph, pw), ((t, b), (l, r))),
strides, dilations, groups (including depthwise) and both layouts. Value
families (:data:`VALUE_FAMILIES`, the single source of truth) are

* ``uniform`` (signed), ``positive`` (the seed notebook's [0, 1) data), ``normal``;
* ``ill_conditioned``: channel pairs that cancel, so |y| ≪ Σ|x·w|;
* ``identity_kernel``: one tap of 1 per output channel, so y is a copy of x;
* ``large_integers``: integers above 2048 (not all representable in float16;
  products beyond float32's 24 bits);
* ``small_integers``: exact-integer data whose result every format gets exactly;
* ``mixed_magnitudes``: values scaled by 2^k, k in [-20, 20];
* ``subnormals``: a share of float32-subnormal values (tests gradual underflow / FTZ);
* ``sparse``: mostly zeros (zero and tiny outputs);
* ``large_k``: many input channels (n = KH·KW·C/groups in the hundreds).

The generator is shared by :func:`random_problems` (seeded NumPy, fast) and the
hypothesis strategies in :mod:`refconv.testing.strategies`.

>>> ps = list(random_problems(3, seed=1))
>>> len(ps), ps[0].x.dtype
(3, dtype('float32'))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from ..errors import ShapeError, unknown_name
from ..formats import round_to
from ..spec import ConvSpec

__all__ = [
    "ConvProblem", "VALUE_FAMILIES", "PADDING_FORMS", "DTYPES", "random_problems", "default_problems",
    "build_problem", "Chooser",
]

PADDING_FORMS = ("SAME", "SAME_LOWER", "VALID", "int", "pair", "explicit")
DTYPES = ("float32", "float64", "float16", "bfloat16")


@dataclasses.dataclass
class ConvProblem:
    """One conv problem: inputs in their layouts/dtype, geometry keywords, provenance.

    ``geometry`` holds exactly the keyword arguments of :func:`refconv.conv2d`
    (stride, padding, dilation, groups, data_format, kernel_format).

    >>> p = ConvProblem("tiny", np.ones((1, 3, 3, 1), np.float32), np.ones((2, 2, 1, 1), np.float32), None, {})
    >>> p.spec.output_shape, p.n_terms
    ((1, 2, 2, 1), 4)
    """

    name: str
    x: np.ndarray
    w: np.ndarray
    b: np.ndarray | None
    geometry: dict[str, Any]
    family: str = "uniform"
    dtype: str = "float32"
    seed: int | None = None

    @property
    def spec(self) -> ConvSpec:
        return ConvSpec.from_arrays(self.x, self.w, self.b, **self.geometry)

    @property
    def n_terms(self) -> int:
        return self.spec.n_terms

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (shapes, not values)."""
        return {
            "name": self.name,
            "family": self.family,
            "dtype": self.dtype,
            "seed": self.seed,
            "spec": self.spec.to_dict(),
        }


class Chooser(Protocol):
    """Where a generator gets its discrete choices (NumPy RNG or hypothesis ``draw``)."""

    def integer(self, lo: int, hi: int) -> int: ...

    def choice(self, options: Sequence[Any]) -> Any: ...


class _RngChooser:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi + 1))

    def choice(self, options: Sequence[Any]) -> Any:
        return options[int(self.rng.integers(len(options)))]


# ---- value families: (rng, x_shape NHWC, w_shape HWIO, groups, with_bias) -> (x, w, b) in float64 ----


def _signed(rng, shape):
    return rng.uniform(-1.0, 1.0, shape)


def _fam_uniform(rng, xs, ws, groups, bias):
    return _signed(rng, xs), _signed(rng, ws), _signed(rng, ws[3]) if bias else None


def _fam_positive(rng, xs, ws, groups, bias):
    return rng.random(xs), rng.random(ws), rng.random(ws[3]) if bias else None


def _fam_normal(rng, xs, ws, groups, bias):
    return rng.normal(size=xs), rng.normal(size=ws), rng.normal(size=ws[3]) if bias else None


def _fam_ill_conditioned(rng, xs, ws, groups, bias):
    x = rng.normal(size=xs) * 2.0 ** rng.integers(0, 12, xs)
    w = rng.normal(size=ws)
    cg = ws[2]
    for c in range(0, cg - 1, 2):  # channel pairs whose products nearly cancel
        w[:, :, c + 1, :] = -w[:, :, c, :]
        for g in range(groups):
            x[..., g * cg + c + 1] = x[..., g * cg + c] * (1 + rng.normal(size=xs[:3]) * 2.0**-12)
    if cg == 1 and ws[0] * ws[1] > 1:  # cancel across taps instead
        w.reshape(-1, ws[3])[1::2] = -w.reshape(-1, ws[3])[0:-1:2]
    return x, w, rng.normal(size=ws[3]) * 1e-3 if bias else None


def _fam_identity(rng, xs, ws, groups, bias):
    x = _signed(rng, xs)
    w = np.zeros(ws)
    kh, kw = rng.integers(ws[0]), rng.integers(ws[1])
    for o in range(ws[3]):
        w[kh, kw, o % ws[2], o] = 1.0
    return x, w, np.zeros(ws[3]) if bias else None


def _fam_large_integers(rng, xs, ws, groups, bias):
    sign = lambda s: rng.choice([-1.0, 1.0], s)  # noqa: E731
    x = rng.integers(2049, 2**14, xs) * sign(xs)
    w = rng.integers(2049, 2**14, ws) * sign(ws)
    return x, w, (rng.integers(2049, 2**14, ws[3]) * sign(ws[3])) if bias else None


def _fam_small_integers(rng, xs, ws, groups, bias):
    x, w = rng.integers(-8, 9, xs).astype(float), rng.integers(-8, 9, ws).astype(float)
    return x, w, rng.integers(-8, 9, ws[3]).astype(float) if bias else None


def _fam_mixed(rng, xs, ws, groups, bias):
    x = _signed(rng, xs) * 2.0 ** rng.integers(-20, 21, xs)
    w = _signed(rng, ws) * 2.0 ** rng.integers(-20, 21, ws)
    return x, w, _signed(rng, ws[3]) * 2.0 ** rng.integers(-20, 21, ws[3]) if bias else None


def _fam_subnormals(rng, xs, ws, groups, bias):
    x = _signed(rng, xs)
    tiny = rng.random(xs) < 0.5
    x[tiny] *= 2.0 ** rng.integers(-148, -126, int(tiny.sum()))  # float32 subnormal range
    w = _signed(rng, ws) * 2.0 ** rng.integers(-4, 5, ws)
    return x, w, _signed(rng, ws[3]) * 2.0**-130 if bias else None


def _fam_sparse(rng, xs, ws, groups, bias):
    x = _signed(rng, xs) * (rng.random(xs) < 0.15)
    w = _signed(rng, ws) * (rng.random(ws) < 0.3)
    return x, w, np.zeros(ws[3]) if bias else None


VALUE_FAMILIES: dict[str, Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray | None]]] = {
    "uniform": _fam_uniform,
    "positive": _fam_positive,
    "normal": _fam_normal,
    "ill_conditioned": _fam_ill_conditioned,
    "identity_kernel": _fam_identity,
    "large_integers": _fam_large_integers,
    "small_integers": _fam_small_integers,
    "mixed_magnitudes": _fam_mixed,
    "subnormals": _fam_subnormals,
    "sparse": _fam_sparse,
    "large_k": _fam_uniform,  # values as uniform; the geometry has many channels
}


def _cast(a: np.ndarray | None, dtype: str) -> np.ndarray | None:
    if a is None:
        return None
    if dtype == "float16":  # keep families finite in float16's narrow range
        a = np.clip(a, -16384.0, 16384.0)
    if dtype == "bfloat16":
        import ml_dtypes

        return round_to(a, "bfloat16").astype(ml_dtypes.bfloat16)
    if dtype == "float16":
        return round_to(a, "float16").astype(np.float16)
    return a.astype(dtype)


def _geometry(ch: Chooser, family: str, max_hw: int, max_channels: int, max_k: int) -> tuple[dict, tuple, tuple]:
    """Draw a valid geometry: (geometry kwargs, x shape NHWC, w shape HWIO)."""
    gkind = ch.choice(("plain", "plain", "grouped", "depthwise"))
    if family == "large_k":
        groups, cg, og = 1, ch.integer(16, 64), ch.integer(1, 3)
    elif gkind == "grouped":
        groups, cg, og = ch.integer(2, 3), ch.integer(1, 3), ch.integer(1, 2)
    elif gkind == "depthwise":
        groups, cg, og = ch.integer(1, max(1, max_channels // 2)), 1, ch.integer(1, 2)
    else:
        groups, cg, og = 1, ch.integer(1, max_channels), ch.integer(1, max_channels)
    kh, kw = ch.integer(1, max_k), ch.integer(1, max_k)
    stride = (ch.integer(1, 3), ch.integer(1, 3))
    dilation = (ch.choice((1, 1, 2)), ch.choice((1, 1, 2)))
    keff = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    form = ch.choice(PADDING_FORMS)
    if form in ("SAME", "SAME_LOWER", "VALID"):
        padding: Any = form
        pads = ((0, 0), (0, 0))
    elif form == "int":
        p = ch.integer(0, min(keff) - 1)
        padding, pads = p, ((p, p), (p, p))
    elif form == "pair":
        ph, pw = ch.integer(0, keff[0] - 1), ch.integer(0, keff[1] - 1)
        padding, pads = (ph, pw), ((ph, ph), (pw, pw))
    else:
        pads = tuple((ch.integer(0, keff[a] - 1), ch.integer(0, keff[a] - 1)) for a in range(2))
        padding = pads
    if form in ("SAME", "SAME_LOWER"):
        lo = [1, 1]  # SAME never empties the output
    else:
        lo = [max(1, keff[a] - pads[a][0] - pads[a][1]) for a in range(2)]
    hi = max_hw if family != "large_k" else min(max_hw, 5)  # many channels: keep the image small
    h, w_ = ch.integer(lo[0], max(lo[0], hi)), ch.integer(lo[1], max(lo[1], hi))
    n = ch.integer(1, 2)
    c, o = groups * cg, groups * og
    data_format = ch.choice(("NHWC", "NCHW"))
    kernel_format = ch.choice((None, "HWIO", "OIHW"))
    geometry = dict(stride=stride if stride[0] != stride[1] else stride[0], padding=padding,
                    dilation=dilation if dilation[0] != dilation[1] else dilation[0], groups=groups,
                    data_format=data_format, kernel_format=kernel_format)
    return geometry, (n, h, w_, c), (kh, kw, cg, o)


def build_problem(
    ch: Chooser,
    seed: int,
    *,
    dtype: str | None = "float32",
    families: Sequence[str] | None = None,
    max_hw: int = 8,
    max_channels: int = 4,
    max_k: int = 4,
    bias: bool | None = None,
) -> ConvProblem:
    """Build one problem: discrete choices from ``ch``, values from a NumPy RNG seeded with ``seed``.

    ``dtype=None`` draws one of :data:`DTYPES`; ``families`` restricts the value
    families (names of :data:`VALUE_FAMILIES`); ``bias=None`` draws it.

    >>> p = build_problem(_RngChooser(np.random.default_rng(0)), 0, families=["identity_kernel"])
    >>> p.family, p.x.dtype
    ('identity_kernel', dtype('float32'))
    """
    fams = list(families) if families is not None else list(VALUE_FAMILIES)
    for f in fams:
        if f not in VALUE_FAMILIES:
            raise unknown_name("value family", f, tuple(VALUE_FAMILIES))
    family = ch.choice(fams)
    dtype = dtype if dtype is not None else ch.choice(DTYPES)
    if dtype not in DTYPES:
        raise unknown_name("dtype", dtype, DTYPES)
    with_bias = bias if bias is not None else bool(ch.choice((False, True)))
    geometry, xs, ws = _geometry(ch, family, max_hw, max_channels, max_k)
    rng = np.random.default_rng(seed)
    x, w, b = VALUE_FAMILIES[family](rng, xs, ws, geometry["groups"], with_bias)
    if geometry["data_format"] == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    kf = geometry["kernel_format"] or ("HWIO" if geometry["data_format"] == "NHWC" else "OIHW")
    if kf == "OIHW":
        w = w.transpose(3, 2, 0, 1)
    x, w, b = _cast(np.ascontiguousarray(x), dtype), _cast(np.ascontiguousarray(w), dtype), _cast(b, dtype)
    p = ConvProblem(f"{family}-{seed}", x, w, b, geometry, family, dtype, seed)
    try:
        _ = p.spec
    except ShapeError as exc:  # a generator bug, not a user error
        raise AssertionError(f"generated an invalid problem {geometry} x{xs} w{ws}: {exc}") from exc
    return p


def random_problems(
    count: int,
    seed: int = 0,
    *,
    dtype: str | None = "float32",
    families: Sequence[str] | None = None,
    max_hw: int = 8,
    max_channels: int = 4,
    max_k: int = 4,
) -> Iterator[ConvProblem]:
    """``count`` random problems from a seeded NumPy generator (same distribution as the strategies).

    >>> [p.family for p in random_problems(2, seed=3, families=["sparse"])]
    ['sparse', 'sparse']
    """
    rng = np.random.default_rng(seed)
    ch = _RngChooser(rng)
    for _ in range(count):
        yield build_problem(ch, int(rng.integers(2**32)), dtype=dtype, families=families, max_hw=max_hw,
                            max_channels=max_channels, max_k=max_k)


def default_problems(dtype: str = "float32") -> list[ConvProblem]:
    """The default corpus of :func:`~refconv.testing.check_conv2d`: every value family and padding form.

    Deterministic (fixed seeds): two problems per family, plus one per padding
    form, stride/dilation and layout.

    >>> ps = default_problems()
    >>> sorted({p.family for p in ps}) == sorted(VALUE_FAMILIES)
    True
    """
    out = []
    for i, fam in enumerate(VALUE_FAMILIES):
        out.extend(random_problems(2, seed=1000 + i, dtype=dtype, families=[fam]))
    rng = np.random.default_rng(7)
    for form in PADDING_FORMS:
        for df in ("NHWC", "NCHW"):
            ch = _FixedPadding(_RngChooser(rng), form, df)
            out.append(build_problem(ch, int(rng.integers(2**32)), dtype=dtype, families=["uniform"], bias=True))
    for p in out:
        p.name = f"{p.name}-{p.geometry['data_format']}-{_padding_label(p.geometry['padding'])}"
    return out


def _padding_label(padding: Any) -> str:
    return padding if isinstance(padding, str) else str(padding).replace(" ", "")


class _FixedPadding:
    """A chooser that forces the padding form and data format (for the default corpus)."""

    def __init__(self, inner: _RngChooser, form: str, data_format: str) -> None:
        self.inner, self.form, self.df = inner, form, data_format

    def integer(self, lo: int, hi: int) -> int:
        return self.inner.integer(lo, hi)

    def choice(self, options: Sequence[Any]) -> Any:
        if tuple(options) == PADDING_FORMS:
            return self.form
        if tuple(options) == ("NHWC", "NCHW"):
            return self.df
        return self.inner.choice(options)
