"""Attribute one output: measure it against the exact conv, find the arithmetic or semantic model behind it.

How a verdict is reached (see :func:`attribute`):

1. **Precision by emulation.** For every model in
   :data:`~refconv.attribution.models.PRECISION_MODELS` the inputs (as the
   framework saw them, or the intended ones) are rounded once to the model's
   input format and convolved in float64 (products of such inputs are exact;
   the float64 sum's own error γ_n(2^-53)·Σ|x·w| is added to the bound). A
   model *fits* when every element satisfies
   |y − e_m| ≤ γ_(n+2)(u_acc)·Σ|x̂·ŵ| + u_in·|b| + ½ulp_out(y).
   Where the output format is narrower than the accumulator, each model is
   also emulated with its bias added by a separate op after the conv was
   rounded to the output format (jax, cuDNN in bfloat16), where a bias below
   half an output ulp vanishes; the closer of the two orders is kept.
2. **Statistics among fitting models.** Two fitting models m and m' whose
   emulations differ by d = e_m' − e_m are told apart by regressing
   r = y − e_m on d: β ≈ 0 means the run shows none of m's-to-m' rounding
   pattern, β ≈ 1 means it shows all of it. A model is ruled out when β (or
   1 − β) exceeds both 0.3 and 6 standard errors (heteroskedasticity-robust,
   floored by the expected accumulation noise √n·u_acc·Σ|x·w|/√3).
   The survivors are the ``candidates``.
3. **Semantic hypotheses** (:mod:`refconv.attribution.hypotheses`) are screened
   with float64 GEMMs when no model fits (against a loose bound that allows
   bfloat16 input rounding), or, when a model fits, by the same regression test
   (a semantic difference hidden below a loose precision bound still shows its
   pattern). The winner is confirmed by refitting every precision model under
   it, starting from the exact oracle of the alternative conv.
4. Anything left is "unexplained", with the elements that exceed every bound.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import FrameworkRunError, ShapeError, unknown_name
from ..formats import FORMATS, format_of_dtype, on_grid, round_to, ulp
from ..spec import ConvSpec, Padding, as_float64, prepare
from .hypotheses import Hypothesis, generate
from .models import LABEL_ORDER, PRECISION_MODELS, PRECISION_RANK, PrecisionModel
from .types import Attribution

__all__ = ["attribute", "Problem"]

_PRECISION_KNOB = re.compile(  # precision settings a degraded run's explanation quotes (see the adapters' knobs)
    r"tf32|tensor_float_32|fp32_precision|matmul_precision|fpmath|precision argument", re.IGNORECASE)
_Z = 6.0  # standard errors needed to rule a model out
_EFFECT = 0.3  # ... and the minimum effect size (fraction of the pattern)
_SIGNATURE = 4.0  # a run this many times closer (rms) to one emulation than the two differ rules the other out
_MIN_SIGNATURE = 8  # ... given at least this many elements where they differ
_U64 = 2.0**-53


def _gamma(n: int, u: float) -> float:
    """γ_n = n·u / (1 − n·u) (Higham 2002, §3.1); inf when n·u ≥ 1."""
    nu = n * u
    return nu / (1 - nu) if nu < 1 else math.inf


def _float_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, spec: ConvSpec) -> np.ndarray:
    from ..oracle._im2col import float_conv_nhwc

    with np.errstate(invalid="ignore", over="ignore"):
        y = float_conv_nhwc(x, w, spec)
        return y if b is None else y + b


def _exact_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, spec: ConvSpec) -> np.ndarray:
    from ..oracle import conv2d

    return conv2d(x, w, b, stride=spec.stride, padding=spec.pads, dilation=spec.dilation, groups=spec.groups,
                  data_format="NHWC", kernel_format="HWIO")


_FULL_LIMIT = 32768  # outputs up to this many elements are screened in full
_SAMPLE_POSITIONS = 128
_SAMPLE_CHANNELS = 64


@dataclasses.dataclass
class Sample:
    """A grid of output positions × channels (canonical NHWC) used to screen models and hypotheses cheaply.

    ``full`` samples are the whole output. Decisions taken on a sample are
    re-checked on every element for the models that survive it.

    >>> s = Sample.for_shape((1, 8, 16, 512))
    >>> s.full, s.size
    (False, 8192)
    """

    shape: tuple[int, int, int, int]
    full: bool
    pos: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    ch: np.ndarray | None = None
    limit: int = _FULL_LIMIT

    @property
    def key(self) -> tuple:
        return (self.shape, self.full, self.limit)

    @classmethod
    def for_shape(
        cls, shape: tuple[int, ...], seed: int = 0, *, limit: int = _FULL_LIMIT, positions: int = _SAMPLE_POSITIONS
    ) -> Sample:
        """Every element up to ``limit`` of them, else ≤ ``positions`` positions (half on the border) × channels
        so that about limit/4 elements are sampled."""
        shape = tuple(int(v) for v in shape)  # type: ignore[assignment]
        n, oh, ow, o = shape
        if n * oh * ow * o <= limit:
            return cls(shape, True, limit=limit)  # type: ignore[arg-type]
        rng = np.random.default_rng(seed)
        grid = np.stack(np.meshgrid(np.arange(n), np.arange(oh), np.arange(ow), indexing="ij"), -1).reshape(-1, 3)
        border = (grid[:, 1] == 0) | (grid[:, 1] == oh - 1) | (grid[:, 2] == 0) | (grid[:, 2] == ow - 1)
        if len(grid) > positions:
            b_idx, i_idx = np.flatnonzero(border), np.flatnonzero(~border)
            nb = min(len(b_idx), positions // 2)
            pick = np.concatenate([rng.choice(b_idx, nb, replace=False),
                                   rng.choice(i_idx, min(len(i_idx), positions - nb), replace=False)])
            grid = grid[np.sort(pick)]
        nq = max(1, min(o, (limit // 4) // len(grid)))
        ch = np.arange(o) if nq >= o else np.sort(rng.choice(o, nq, replace=False))
        return cls(shape, False, (grid[:, 0], grid[:, 1], grid[:, 2]), ch, limit)  # type: ignore[arg-type]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.full else len(self.pos[0]) * len(self.ch)  # type: ignore[index, arg-type]

    def take(self, a: np.ndarray) -> np.ndarray:
        """The sampled elements of a canonical NHWC output-shaped array."""
        if self.full:
            return a
        n, h, w = self.pos  # type: ignore[misc]
        return a[n, h, w][:, self.ch]

    def subset_w(self, w: np.ndarray) -> np.ndarray:
        """The kernel's sampled output channels (what :meth:`conv` needs with ``w_subset=True``)."""
        return w if self.full else np.ascontiguousarray(w[..., self.ch])

    def conv(
        self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, spec: ConvSpec, w_subset: bool = False,
        magnitude: bool = False,
    ) -> Any:
        """float64 conv at the sampled elements (the whole conv for a full sample); with ``magnitude=True``
        returns (conv, Σ|x·w| + |b|) from one gather of the input windows."""
        if self.full:
            y = _float_conv(x, w, b, spec)
            return (y, _magnitude(x, w, b, spec)) if magnitude else y
        from ..oracle._im2col import pad_nhwc, window_view

        n, oh, ow = self.pos  # type: ignore[misc]
        ch = self.ch
        og, cg, k = spec.O // spec.groups, spec.C // spec.groups, spec.n_terms
        out = np.empty((len(n), len(ch)))
        mag = np.empty_like(out) if magnitude else None
        xp = pad_nhwc(x, spec)
        groups = ch // og
        with np.errstate(invalid="ignore", over="ignore"):
            for g in np.unique(groups):
                cols = np.flatnonzero(groups == g)
                rows = window_view(xp[..., g * cg:(g + 1) * cg], spec)[n, oh, ow].reshape(len(n), k)
                wc = (w[..., cols] if w_subset else w[..., ch[cols]]).reshape(k, -1)
                out[:, cols] = rows @ wc
                if mag is not None:
                    mag[:, cols] = np.abs(rows) @ np.abs(wc)
            if b is not None:
                out += b[ch]
            if mag is None:
                return out
            mag *= 1 + 2.0**-40
            return out, (mag if b is None else mag + np.abs(b[ch]))


@dataclasses.dataclass
class _Inputs:
    """A canonical (NHWC, HWIO) input triple with its lazily computed exact conv."""

    key: str
    x: np.ndarray
    w: np.ndarray
    b: np.ndarray | None
    _exact: np.ndarray | None = None

    def exact(self, spec: ConvSpec) -> np.ndarray:
        if self._exact is None:
            self._exact = _exact_conv(self.x, self.w, self.b, spec)
        return self._exact


class Problem:
    """The intended conv, canonicalized once and shared by every run attributed against it.

    Holds the caller's spec, canonical NHWC/HWIO inputs, the exact oracle,
    Σ|x·w| + |b| and caches of rounded inputs, emulations and hypotheses.

    >>> import numpy as np
    >>> p = Problem(np.ones((1, 4, 4, 2)), np.ones((3, 3, 2, 1)), None)
    >>> p.n, p.exact.shape, float(p.magnitude.max())
    (18, (1, 2, 2, 1), 18.0)
    """

    def __init__(self, x: Any, w: Any, b: Any = None, **geometry: Any) -> None:
        self.user_padding: Padding = geometry.get("padding", "VALID")
        xf, wf, bf, spec = prepare(x, w, b, **geometry)
        self.spec = spec
        self.cspec = ConvSpec.from_shapes(
            spec.x_to_nhwc(xf).shape, spec.w_to_hwio(wf).shape, None if bf is None else bf.shape,
            stride=spec.stride, padding=spec.pads, dilation=spec.dilation, groups=spec.groups,
            data_format="NHWC", kernel_format="HWIO",
        )
        self.original = _Inputs("original", np.ascontiguousarray(spec.x_to_nhwc(xf)),
                                np.ascontiguousarray(spec.w_to_hwio(wf)), bf)
        self.n = spec.n_terms + (1 if bf is not None else 0)
        self._magnitude: np.ndarray | None = None
        self._cache: dict[tuple, Any] = {}
        self._hypotheses: list[Hypothesis] | None = None

    @property
    def exact(self) -> np.ndarray:
        """Exact conv of the intended inputs, canonical NHWC."""
        return self.original.exact(self.cspec)

    @property
    def magnitude(self) -> np.ndarray:
        """Σ|x·w| + |b| per output element (canonical NHWC)."""
        if self._magnitude is None:
            o = self.original
            self._magnitude = _magnitude(o.x, o.w, o.b, self.cspec)
        return self._magnitude

    def sample(self, shape: tuple[int, ...], screening: bool = False) -> Sample:
        """The sample used to tell precision models apart (larger) or to screen hypotheses (smaller)."""
        key = ("sample", tuple(shape), screening)
        if key not in self._cache:
            self._cache[key] = (Sample.for_shape(shape, limit=4096, positions=64) if screening
                                else Sample.for_shape(shape))
        return self._cache[key]

    def inputs_seen(self, seen: dict[str, Any] | None) -> _Inputs:
        """Canonical inputs as the framework saw them (the intended ones when ``seen`` is empty)."""
        if not seen or all(seen.get(k) is None for k in ("x", "w")):
            return self.original
        s, o = self.spec, self.original
        x = o.x if seen.get("x") is None else np.ascontiguousarray(s.x_to_nhwc(as_float64(seen["x"], "x")))
        w = o.w if seen.get("w") is None else np.ascontiguousarray(s.w_to_hwio(as_float64(seen["w"], "w")))
        b = o.b if seen.get("b") is None else as_float64(seen["b"], "b")
        if x.shape != o.x.shape or w.shape != o.w.shape or (
            (b is None) != (o.b is None) or (b is not None and o.b is not None and b.shape != o.b.shape)
        ):
            raise ShapeError(
                f"inputs_seen shapes x={x.shape} w={w.shape} b={None if b is None else b.shape} differ from the "
                f"inputs' x={o.x.shape} w={o.w.shape} b={None if o.b is None else o.b.shape} (canonical NHWC/HWIO)"
            )
        if np.array_equal(x, o.x) and np.array_equal(w, o.w) and (b is None or np.array_equal(b, o.b)):
            return o
        key = ("seen", id(seen.get("x")), id(seen.get("w")), id(seen.get("b")))
        if key not in self._cache:
            self._cache[key] = _Inputs(f"seen{len(self._cache)}", x, w, b)
        return self._cache[key]

    def hypotheses(self) -> list[Hypothesis]:
        if self._hypotheses is None:
            o = self.original
            self._hypotheses = list(generate(self.cspec, o.x, o.w, o.b, self.user_padding))
        return self._hypotheses

    def screen(self, h: Hypothesis, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """(float64 conv, Σ|x·w| + |b|) of a hypothesis at the sample, cached."""
        key = ("screen", h.key, sample.key)
        if key not in self._cache:
            self._cache[key] = sample.conv(h.x, h.w, h.b, h.spec, magnitude=True)
        return self._cache[key]

    def magnitude_for(self, inputs: _Inputs, spec: ConvSpec, sample: Sample | None) -> np.ndarray:
        """Σ|x·w| + |b| of some inputs under a spec, in full or at a sample."""
        if inputs is self.original and spec is self.cspec:
            return self.magnitude if sample is None else sample.take(self.magnitude)
        key = ("mag", inputs.key, _spec_key(spec), None if sample is None else sample.key)
        if key not in self._cache:
            if sample is None:
                self._cache[key] = _magnitude(inputs.x, inputs.w, inputs.b, spec)
            else:
                self._cache[key] = sample.conv(inputs.x, inputs.w, inputs.b, spec, magnitude=True)[1]
        return self._cache[key]

    def most_products(self, inputs: _Inputs, spec: ConvSpec) -> int:
        """The most nonzero products x·w of any output element (padding taps and zeros are not products)."""
        key = ("products", inputs.key, _spec_key(spec))
        if key not in self._cache:
            counts = _float_conv((inputs.x != 0).astype(np.float64), (inputs.w != 0).astype(np.float64), None, spec)
            self._cache[key] = int(counts.max(initial=0))
        return self._cache[key]

    def rounded(
        self, inputs: _Inputs, model: PrecisionModel, sample: Sample | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Inputs rounded once to the model's formats (only the sampled kernel channels for a sample)."""
        sub = sample is not None and not sample.full
        key = ("round", inputs.key, model.input_format, model.rounding, model.bias_format, model.via,
               sub and sample.key)
        if key not in self._cache:
            fmt, mode, via = model.input_format, model.rounding, model.via
            xkey = ("round-x", inputs.key, fmt, mode, via)
            if xkey not in self._cache:
                self._cache[xkey] = _round(inputs.x, fmt, mode, via)
            if sub:
                wkey = ("subset-w", inputs.key, sample.key)  # type: ignore[union-attr]
                if wkey not in self._cache:
                    self._cache[wkey] = sample.subset_w(inputs.w)  # type: ignore[union-attr]
                w = self._cache[wkey]
            else:
                w = inputs.w
            self._cache[key] = (
                self._cache[xkey],
                _round(w, fmt, mode, via),
                _model_bias(inputs.b, model),
            )
        return self._cache[key]

    def emulate(
        self, inputs: _Inputs, model: PrecisionModel, spec: ConvSpec, sample: Sample | None
    ) -> tuple[np.ndarray, bool]:
        """(emulation, exact?) of a model, in full (``sample=None``) or at a sample.

        The emulation is the conv of the inputs rounded once to the model's
        formats: the exact oracle for the float64 model of the intended inputs,
        a float64 GEMM otherwise (its error is added to the bound).
        """
        if model.input_format == "float64" and inputs._exact is not None:
            e = inputs._exact
            return (e if sample is None else sample.take(e)), True
        key = ("emu", inputs.key, model.input_format, model.rounding, model.bias_format, model.via,
               None if sample is None else sample.key)
        if key not in self._cache:
            if model.input_format == "float64":
                xr, wr, br = inputs.x, inputs.w, inputs.b
                sub = False
            else:
                xr, wr, br = self.rounded(inputs, model, sample)
                sub = sample is not None and not sample.full
            self._cache[key] = (
                _float_conv(xr, wr, br, spec) if sample is None else sample.conv(xr, wr, br, spec, w_subset=sub)
            )
        return self._cache[key], False


def _model_bias(b: np.ndarray | None, model: PrecisionModel) -> np.ndarray | None:
    """The bias as the model stores it (rounded like the inputs when it shares their format)."""
    if b is None or model.input_format == "float64":
        return b
    mode = model.rounding if model.bias_format == model.input_format else "nearest"
    return _round(b, model.bias_format, mode, model.via)


def _bias_after_rounding(e: np.ndarray, b: np.ndarray, out_fmt: str) -> np.ndarray:
    """An emulation with its bias added by a separate op after the conv was rounded to the output format."""
    with np.errstate(invalid="ignore", over="ignore"):
        return _round(_round(e - b, out_fmt, "nearest") + b, out_fmt, "nearest")


def _round(a: np.ndarray, fmt: str, mode: str, via: str | None = None) -> np.ndarray:
    """Round once (or through ``via`` first). numpy's float64 -> float32/float16 casts are single roundings and
    faster; ml_dtypes' float64 -> bfloat16 cast goes through float32, so bfloat16 uses :func:`round_to`."""
    if via is not None and FORMATS[via].precision > FORMATS[fmt].precision:
        a = _round(a, via, "nearest")
    if mode == "nearest" and fmt in ("float32", "float16"):
        with np.errstate(over="ignore"):
            return a.astype(np.float32 if fmt == "float32" else np.float16).astype(np.float64)
    return round_to(a, fmt, mode)


def _spec_key(spec: ConvSpec) -> tuple:
    return (spec.x_shape, spec.w_shape, spec.has_bias, spec.stride, spec.pads, spec.dilation, spec.groups)


def _magnitude(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, spec: ConvSpec) -> np.ndarray:
    """Σ|x·w| + |b| by a float64 GEMM of |x|, |w| (tiny slack for its own rounding)."""
    m = _float_conv(np.abs(x), np.abs(w), None, spec) * (1 + 2.0**-40)
    return m if b is None else m + np.abs(b)


# ---------------------------------------------------------------------------------------------
# Fitting precision models


@dataclasses.dataclass
class ModelFit:
    """How one precision model explains one output (canonical NHWC arrays)."""

    model: PrecisionModel
    emulation: np.ndarray
    bound: np.ndarray
    violations: np.ndarray  # bool, elements outside the bound
    max_ratio: float  # max |y - e| / bound
    energy: float  # Σ (r / noise scale)²
    unit: np.ndarray | None = None  # u_acc·Σ|x̂·ŵ| + output/bias rounding: one "unit" of this model's error
    bias_after_rounding: bool = False  # the emulation adds the bias after rounding the conv to the output format

    @property
    def fits(self) -> bool:
        return not self.violations.any()

    @property
    def n_violations(self) -> int:
        return int(self.violations.sum())


def _nonfinite_violations(y: np.ndarray, e: np.ndarray, out_fmt: str, overflow: np.ndarray | None = None) -> np.ndarray:
    """Elements where y or e is non-finite and the two do not agree (output overflow to ±inf is agreement; so is a
    non-finite y of a finite e where ``overflow`` says a partial sum may leave the accumulator's range: ±inf, or NaN
    from inf - inf)."""
    bad = ~(np.isfinite(y) & np.isfinite(e))
    if not bad.any():
        return bad
    top = FORMATS[out_fmt].max_value
    with np.errstate(invalid="ignore"):
        agree = (np.isnan(y) & np.isnan(e)) | (y == e) | (
            np.isinf(y) & np.isfinite(e) & (np.abs(e) >= top) & (np.sign(y) == np.sign(e))
        )
        if overflow is not None:
            agree |= ~np.isfinite(y) & np.isfinite(e) & overflow
    return bad & ~agree


def _noise_scale(mag: np.ndarray, y: np.ndarray, n: int, u_acc: float, out_fmt: str) -> np.ndarray:
    """Typical size of rounding noise per element: √n·u_acc·Σ|x·w|/√3 plus output rounding (tiny floor)."""
    s = math.sqrt(n / 3.0) * u_acc * mag + ulp(y, out_fmt) / math.sqrt(12.0)
    return np.maximum(np.where(np.isfinite(s), s, 0.0), 2.0**-1074 * 4)


def fit_model(
    y: np.ndarray, e: np.ndarray, exact_emulation: bool, mag: np.ndarray, bias: np.ndarray | None, n: int,
    model: PrecisionModel, out_fmt: str,
) -> ModelFit:
    """Deterministic-bound fit of one emulated model (Higham 2002, eq. 3.5; output rounding; bias storage)."""
    u_in = FORMATS[model.input_format].u if model.input_format != "float64" else 0.0
    acc = FORMATS[model.accumulation]
    m = mag * (1 + u_in) ** 2
    g = _gamma(n + 2, acc.u) + (0.0 if exact_emulation else _gamma(n + 1, _U64))
    with np.errstate(invalid="ignore", over="ignore"):
        slack = 0.5 * ulp(np.maximum(np.abs(y), np.abs(e)), out_fmt) + (n + 2) * acc.tiny
        if bias is not None and u_in:
            slack = slack + u_in * np.abs(bias)
        if bias is not None and FORMATS[out_fmt].precision < acc.precision:
            # the bias may be added by a separate op after the conv result was rounded to the output format
            slack = slack + 0.5 * ulp(np.abs(e - bias) * (1 + 2 * u_in) + g * m, out_fmt)
        bound = g * m + slack
        r = np.abs(y - e)
        ok = np.isfinite(y) & np.isfinite(e)
        viol = ok & ~(r <= bound)
        viol |= _nonfinite_violations(y, e, out_fmt, m >= acc.max_value)
        ratio = np.where(ok, r / bound, 0.0)
        scale = _noise_scale(mag, y, n, acc.u, out_fmt)
        energy = float(np.sum(np.where(ok, (r / scale) ** 2, 0.0)))
    return ModelFit(model, e, bound, viol, float(np.max(ratio, initial=0.0)), energy, slack + acc.u * m)


def fit_either_bias_order(
    y: np.ndarray, e: np.ndarray, exact_emulation: bool, mag: np.ndarray, bias: np.ndarray | None, n: int,
    model: PrecisionModel, out_fmt: str, after: bool | None = None, products: Callable[[], int] | None = None,
) -> ModelFit:
    """:func:`fit_model`, and where the output format is narrower than the accumulator and there is a bias,
    also of the emulation whose bias is added by a separate op after the conv was rounded to the output format
    (jax, cuDNN in bfloat16): a bias below half an output ulp then vanishes, which is rounding, not a missing
    bias. Also where it is as wide and:

    * the model accumulates in 16 bits: TensorFlow's CPU depthwise conv in float16 sums in float16, then adds the
      bias by a separate float16 op;
    * or no output has more than two nonzero products (``products()``, the most of any output, asked only here;
      default: the kernel's n - 1 terms, padding taps and zeros counted): their sum rounded, then the bias added,
      is that format's own arithmetic, up to the rounding of the products (else a float64 model whose bias follows
      the rounding would explain a float32 run of a 1x1 conv of one input channel, or of a conv whose padding
      leaves each output one or two products, better than the float32 model).

    Returns the closer of the two (fewer violations, then fewer outputs off the emulation rounded to the output
    format, then smaller energy), or the one ``after`` names.
    """
    out_p, acc_p = FORMATS[out_fmt].precision, FORMATS[model.accumulation].precision
    can_follow = bias is not None and (out_p < acc_p or (out_p == acc_p and (
        model.fallback or (n - 1 if products is None else products()) <= 2)))
    fits = []
    if not (after and can_follow):
        fits.append(fit_model(y, e, exact_emulation, mag, bias, n, model, out_fmt))
    if can_follow and after is not False:
        post = fit_model(y, _bias_after_rounding(e, _model_bias(bias, model), out_fmt), exact_emulation, mag, bias,
                         n, model, out_fmt)
        post.bias_after_rounding = True
        fits.append(post)
    if len(fits) == 1:
        return fits[0]

    def misses(f: ModelFit) -> int:  # (outputs off the emulation rounded to the output format: the energy of an
        with np.errstate(invalid="ignore", over="ignore"):  # unrounded emulation is smaller by rounding alone)
            return int(np.count_nonzero(y != _round(f.emulation, out_fmt, "nearest")))

    return min(fits, key=lambda f: (f.n_violations, misses(f), f.energy))  # (a tie keeps the bias before)


def projection(r: np.ndarray, d: np.ndarray, sigma: np.ndarray) -> tuple[float, float]:
    """Weighted regression of r on d: (β, standard error), with weights from the expected noise ``sigma``.

    The arrays are output-shaped (channels last). The standard error is the largest of:

    * the heteroskedasticity-robust one, which takes the elements as independent;
    * the one robust to any correlation within an output channel (clusters: the last axis), so that a pattern one
      or two channels carry (a per-channel rounding of the bias, a channel's systematic accumulation error) is not
      taken for one the whole output follows;
    * the spread of the residuals over every element, d = 0 included: the robust forms see only the elements
      where d is not, and a few of those may lean one way by chance when the run is noisier than ``sigma`` says;
    * what ``sigma`` itself implies (three times that below ten elements).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> d = rng.standard_normal(1000); r = 0.5 * d + 0.01 * rng.standard_normal(1000)
    >>> beta, se = projection(r, d, np.full(1000, 0.01))
    >>> round(beta, 2), bool(se < 0.01)
    (0.5, True)
    """
    channel = np.broadcast_to(np.arange(r.shape[-1]) if r.ndim > 1 else np.zeros(1, dtype=int), r.shape)
    ok = np.isfinite(r) & np.isfinite(d) & (sigma > 0)
    r, d, s, channel = r[ok], d[ok], sigma[ok], channel[ok]
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # (a sigma whose square underflows: den inf)
        wts = 1.0 / s**2
        den = float(np.sum(wts * d * d))
    if den == 0 or not math.isfinite(den):
        return math.nan, math.inf
    beta = float(np.sum(wts * d * r)) / den
    eps = r - beta * d
    score = wts * d * eps
    m = r.size
    correction = m / max(m - 1, 1)
    sandwich = math.sqrt(float(np.sum(score**2)) * correction) / den
    g = np.unique(channel[d != 0]).size
    if g > 1:  # (one cluster: its score sums to 0 by construction, no information)
        cluster = math.sqrt(float(np.sum(np.bincount(channel, weights=score) ** 2)) * g / (g - 1)) / den
        sandwich = max(sandwich, cluster)
    spread = math.sqrt(float(np.sum(wts * eps**2)) / max(m - 1, 1) / den)
    floor = (3.0 if m < 10 else 1.0) / math.sqrt(den)
    return beta, max(sandwich, spread, floor)


def _rule_out(fits: list[ModelFit], y: np.ndarray, mag: np.ndarray, n: int, out_fmt: str) -> tuple[set[str], dict]:
    """Pairwise regression tests among fitting models; returns (ruled-out names, test table)."""
    out: set[str] = set()
    table: dict[str, Any] = {}
    for i, a in enumerate(fits):
        for b in fits[i + 1:]:
            u_acc = max(FORMATS[a.model.accumulation].u, FORMATS[b.model.accumulation].u)
            r, d, beta, se = _toward(y, a, b, mag, n, out_fmt, u_acc)
            if not math.isfinite(beta):
                continue
            table[f"{a.model.name}->{b.model.name}"] = {"beta": beta, "se": se}
            if beta > max(_Z * se, _EFFECT):
                out.add(a.model.name)
            if 1 - beta > max(_Z * se, _EFFECT):
                out.add(b.model.name)
            # Input-rounding signature: under model b, y - e_a = d + noise with noise independent of d, so
            # rms(y - e_a) >= rms(d) up to chance. A run many times closer to e_a than that never saw b's
            # rounded inputs, however loose b's accumulation bound (e.g. float64 runs vs the float32 model).
            ok = np.isfinite(d) & np.isfinite(r)
            if np.count_nonzero(d[ok]) >= _MIN_SIGNATURE:
                rms_d = _rms(d[ok])
                if _rms(r[ok]) * _SIGNATURE < rms_d:
                    out.add(b.model.name)
                if _rms((r - d)[ok]) * _SIGNATURE < rms_d:
                    out.add(a.model.name)
    return out, table


def _toward(y: np.ndarray, a: ModelFit, b: ModelFit, mag: np.ndarray, n: int, out_fmt: str, u_acc: float):
    """(y - e_a, d, β, se): the regression of y - e_a on d = e_b - e_a, with the noise of accumulation at ``u_acc``
    (β ≈ 1: y follows b's emulation, β ≈ 0: a's); β is NaN where the two emulations do not differ.

    Each emulation is exact or a float64 GEMM, so d within twice a GEMM's error (with margin for the rounded inputs'
    Σ|x̂·ŵ|) is rounding a float64 run may share, not a model's pattern: it counts as 0. Where one emulation is on
    the output grid (its bias added after the output rounding) both are compared rounded to the output format:
    else y - e_a and d = e_b - e_a would share e_a's rounding residual, and β would lean toward b whatever y
    followed (a float16 run whose bias was added in float16 after its float16 sums took for bfloat16 inputs)."""
    ea, eb = a.emulation, b.emulation
    with np.errstate(invalid="ignore", over="ignore"):  # (inf - inf where outputs overflow: NaN, skipped)
        if a.bias_after_rounding != b.bias_after_rounding:
            ea, eb = _round(ea, out_fmt, "nearest"), _round(eb, out_fmt, "nearest")
        r, d = y - ea, _beyond_float64_rounding(eb - ea, eb, ea, 4 * mag, n)
        if not np.any(d[np.isfinite(d)]):
            return r, d, math.nan, math.inf
        return r, d, *projection(r, d, _noise_scale(mag, y, n, u_acc, out_fmt))


def _rms(v: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(v))))


@dataclasses.dataclass
class PrecisionFit:
    """Every model's fit at the sample, the survivors (re-checked on every element) and the pairwise tests."""

    fits: list[ModelFit]  # at the sample
    survivors: list[ModelFit]  # full-size fits of the models nothing ruled out
    tests: dict[str, Any]
    full_fits: dict[str, ModelFit]
    sample: Sample

    @property
    def candidates(self) -> list[str]:
        labels = {f.model.label for f in self.survivors}
        return [lab for lab in LABEL_ORDER if lab in labels]

    def best(self) -> ModelFit:
        """Sample-level fit with the fewest violations, then the smallest worst ratio."""
        return min(self.fits, key=lambda f: (f.n_violations, f.max_ratio))

    def for_label(self, label: str) -> ModelFit | None:
        return next((f for f in self.survivors if f.model.label == label), None)


def fit_precisions(
    prob: Problem, inputs: _Inputs, spec: ConvSpec, y: np.ndarray, out_fmt: str, *, fallback: bool = False
) -> PrecisionFit:
    """Fit every (non-fallback, or fallback) model at the sample, pairwise-test those that fit,
    then re-check the survivors on every element."""
    sample = prob.sample(spec.output_shape)
    ys = sample.take(y)
    mag_s = prob.magnitude_for(inputs, spec, sample)
    bias_s = None if inputs.b is None else (inputs.b if sample.full else inputs.b[sample.ch])
    n = spec.n_terms + spec.has_bias
    fits = []
    for model in PRECISION_MODELS.values():
        if model.fallback != fallback:
            continue
        e, exact = prob.emulate(inputs, model, spec, sample)
        fits.append(fit_either_bias_order(ys, e, exact, mag_s, bias_s, n, model, out_fmt,
                                          products=lambda: prob.most_products(inputs, spec)))
    fitting = [f for f in fits if f.fits]
    ruled, tests = (set(), {})
    if len(fitting) > 1:
        with np.errstate(invalid="ignore", over="ignore"):  # (inf - inf where outputs overflow: NaN, skipped)
            ruled, tests = _rule_out(fitting, ys, mag_s, n, out_fmt)
    alive = [f for f in fitting if f.model.name not in ruled]
    if fitting and not alive:  # contradictory pairwise tests: keep the closest model
        alive = [min(fitting, key=lambda f: f.energy)]
    full_fits: dict[str, ModelFit] = {}
    survivors = []
    # re-check on every element, per label in order of sample energy, until one model of the label holds
    for label in LABEL_ORDER:
        for f in sorted((f for f in alive if f.model.label == label), key=lambda f: f.energy):
            full = f if sample.full else full_fit(prob, inputs, spec, y, out_fmt, f.model, f.bias_after_rounding)
            full_fits[f.model.name] = full
            if full.fits:
                survivors.append(full)
                if not sample.full:
                    break
    return PrecisionFit(fits, survivors, tests, full_fits, sample)


def _with_16bit_accumulation(
    prob: Problem, inputs: _Inputs, spec: ConvSpec, y: np.ndarray, out_fmt: str, requested: str, pfit: PrecisionFit
) -> PrecisionFit:
    """``pfit``, or where it would call a 16-bit run "degraded" (only coarser models fit), ``pfit`` with the
    requested format's 16-bit-accumulation model among the survivors too, if that model fits and no survivor's
    emulation explains the run better (:func:`_follows`): then the requested precision is not ruled out.

    TensorFlow's CPU depthwise conv in float16 accumulates in float16: the models of float16 inputs with float32
    accumulation miss narrowly, and a bfloat16 model, whose bound is eight times looser, may fit by chance. A run
    that did see bfloat16 inputs follows their rounding's pattern, within float32 accumulation's small noise."""
    if not _degraded(requested, pfit, out_fmt):
        return pfit
    fb = fit_precisions(prob, inputs, spec, y, out_fmt, fallback=True)
    own = next((f for f in fb.fits if f.fits and f.model.label == requested), None)
    full = next((f for f in fb.survivors if f.model.label == requested), None)
    if own is None or full is None:
        return pfit
    ys, mag = pfit.sample.take(y), prob.magnitude_for(inputs, spec, pfit.sample)
    by_name = {f.model.name: f for f in pfit.fits}
    n = spec.n_terms + spec.has_bias
    if any(_follows(ys, by_name[s.model.name], own, mag, n, out_fmt) for s in pfit.survivors):
        return pfit
    return PrecisionFit(pfit.fits + fb.fits, [full, *pfit.survivors], pfit.tests, {**pfit.full_fits, **fb.full_fits},
                        pfit.sample)


def _follows(y: np.ndarray, b: ModelFit, a: ModelFit, mag: np.ndarray, n: int, out_fmt: str) -> bool:
    """Whether y follows b's emulation rather than a's (:func:`_toward`), with the noise b's own accumulation gives
    (:func:`_rule_out` takes the larger of the two models' noise)."""
    *_, beta, se = _toward(y, a, b, mag, n, out_fmt, FORMATS[b.model.accumulation].u)
    return math.isfinite(beta) and beta > max(_Z * se, _EFFECT)


def full_fit(
    prob: Problem, inputs: _Inputs, spec: ConvSpec, y: np.ndarray, out_fmt: str, model: PrecisionModel,
    bias_after_rounding: bool = False,
) -> ModelFit:
    """The fit of one model on every element (bias added before or after the output rounding, as at the sample)."""
    e, exact = prob.emulate(inputs, model, spec, None)
    mag = prob.magnitude_for(inputs, spec, None)
    return fit_either_bias_order(y, e, exact, mag, inputs.b, spec.n_terms + spec.has_bias, model, out_fmt,
                                 after=bias_after_rounding, products=lambda: prob.most_products(inputs, spec))


def choose_precision(requested: str, candidates: list[str]) -> tuple[str | None, str]:
    """(precision, verdict) from the requested precision and the surviving labels.

    The requested precision wins when the data cannot rule it out; otherwise the
    least precise candidate at least as precise as requested ("ok"), else the
    most precise candidate ("degraded").

    >>> choose_precision("float32", ["float32", "tf32", "float16"]), choose_precision("float32", ["tf32", "float16"])
    (('float32', 'ok'), ('tf32', 'degraded'))
    """
    if not candidates:
        return None, "unexplained"
    if requested in candidates:
        return requested, "ok"
    rq = PRECISION_RANK.get(requested, 0)
    better = [c for c in candidates if PRECISION_RANK[c] <= rq]
    if better:
        return better[-1], "ok"
    return candidates[0], "degraded"


# ---------------------------------------------------------------------------------------------
# Semantic hypotheses


@dataclasses.dataclass
class _HypothesisResult:
    hypothesis: Hypothesis
    fit: PrecisionFit
    screen_ratio: float


def _loose_bound(mag: np.ndarray, bias: np.ndarray | None, y: np.ndarray, e: np.ndarray, n: int, out_fmt: str,
                 fallback: bool = False):
    """A bound every non-fallback model satisfies: coarsest input rounding plus float32 accumulation (``fallback``:
    every model, the 16-bit-accumulation ones of the output's format too)."""
    u_in = max(FORMATS[m.input_format].u for m in PRECISION_MODELS.values() if fallback or not m.fallback)
    acc = FORMATS[out_fmt if fallback else "float32"]
    g = 2 * u_in + u_in**2 + _gamma(n + 2, acc.u) + _gamma(n + 1, _U64)
    with np.errstate(invalid="ignore", over="ignore"):  # (with the models' underflow slack: never 0, so 0/0 is no NaN)
        b = g * mag + 0.5 * ulp(np.maximum(np.abs(y), np.abs(e)), out_fmt) + (n + 2) * acc.tiny
        return b if bias is None else b + u_in * np.abs(bias)


def _confirm(prob: Problem, h: Hypothesis, y: np.ndarray, seen: _Inputs, out_fmt: str, ratio: float,
             fallback: bool = False):
    """Refit the precision models (or the fallback ones) under a hypothesis (its float64 model on the exact
    oracle)."""
    key = ("confirm", h.key, seen.key)
    if key not in prob._cache:
        if seen is prob.original:
            base = _Inputs(f"hyp:{h.key}", h.x, h.w, h.b)
        else:
            base = _Inputs(f"hyp:{h.key}:{seen.key}", seen.x, _apply_same(h, prob, seen), _bias_like(h, prob, seen))
        base.exact(h.spec)
        prob._cache[key] = base
    fit = fit_precisions(prob, prob._cache[key], h.spec, y, out_fmt, fallback=fallback)
    return _HypothesisResult(h, fit, ratio)


def _apply_same(h: Hypothesis, prob: Problem, seen: _Inputs) -> np.ndarray:
    """The hypothesis' kernel transformation applied to the kernel the framework saw."""
    o = prob.original.w
    if h.w is o:
        return seen.w
    if h.kind == "kernel_flip":
        return np.ascontiguousarray(seen.w[::-1, ::-1])
    # find the element permutation by sending indices through the same transformation
    idx = np.arange(o.size, dtype=np.float64).reshape(o.shape)
    for hh in generate(prob.cspec, prob.original.x, idx, None, prob.user_padding):
        if hh.kind == h.kind and hh.detail == h.detail:
            return seen.w.ravel()[hh.w.astype(np.int64).ravel()].reshape(hh.w.shape)
    return h.w


def _bias_like(h: Hypothesis, prob: Problem, seen: _Inputs) -> np.ndarray | None:
    if h.b is None or seen.b is None:
        return h.b
    if prob.original.b is not None and h.b is not prob.original.b:
        return 2 * seen.b  # the only bias rewrite is "added twice"
    return seen.b


def _comparable(prob: Problem, y: np.ndarray) -> list[Hypothesis]:
    return [h for h in prob.hypotheses() if h.spec.output_shape == y.shape]


def _hypotheses_when_nothing_fits(prob: Problem, y: np.ndarray, seen: _Inputs, out_fmt: str, fallback: bool = False):
    """Of the hypotheses whose screen is within the loose bound of the ordinary models (with ``fallback``: of every
    model, 16-bit accumulation included), the best three in turn; the first under which a model (a fallback
    model) fits."""
    ranked = []
    sample = prob.sample(y.shape, screening=True)
    ys = sample.take(y)
    for h in _comparable(prob, y):
        e, mag = prob.screen(h, sample)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.abs(ys - e) / _loose_bound(mag, None if h.b is None else h.b[sample.ch] if not sample.full
                                                  else h.b, ys, e, h.spec.n_terms + h.spec.has_bias, out_fmt,
                                                  fallback)
        fin = np.isfinite(ys) & np.isfinite(e)
        if not fin.any():
            continue
        worst = float(np.max(np.where(fin, ratio, 0.0)))
        # (with ``fallback``, partial sums in the 16-bit output format may overflow where Σ|x·w| passes its range)
        overflow = mag >= FORMATS[out_fmt].max_value if fallback else None
        if worst <= 1 and not _nonfinite_violations(ys, e, out_fmt, overflow).any():
            ranked.append((float(np.sum(np.where(fin, ratio, 0.0) ** 2)), worst, h))
    ranked.sort(key=lambda t: t[0])
    for _, worst, h in ranked[:3]:
        res = _confirm(prob, h, y, seen, out_fmt, worst, fallback)
        if res.fit.survivors:
            return res
    return None


def _hypotheses_when_a_model_fits(prob: Problem, y: np.ndarray, seen: _Inputs, out_fmt: str, pfit: PrecisionFit,
                                  requested: str | None = None):
    """A semantic difference below a loose precision bound: the regression test against the closest model, and,
    where only models coarser than the ``requested`` precision fit (a "degraded" run), against the closest model of
    the requested precision too: a few elements moved by a semantic difference make the requested model fail where
    a coarser model's bound absorbs them, and that model's noise hides their pattern."""
    sample = prob.sample(y.shape, screening=True)
    ys = sample.take(y)
    # (a 16-bit-accumulation fallback, whose loose bound makes its energy small, only when nothing else survives: its
    # noise would hide a semantic pattern that a float32-accumulation survivor's reveals)
    baselines = [min([f for f in pfit.survivors if not f.model.fallback] or pfit.survivors, key=lambda f: f.energy)]
    if requested is not None and _degraded(requested, pfit, out_fmt):
        own = [f for f in pfit.fits if f.model.label == requested and not f.model.fallback]
        if own:
            baselines.append(min(own, key=lambda f: f.energy))
    mag_s = sample.take(prob.magnitude)
    exact_s = sample.take(prob.exact)
    residuals = []
    for base in baselines:
        e_base, _ = prob.emulate(seen, base.model, prob.cspec, sample)
        if base.bias_after_rounding:
            b_s = _model_bias(seen.b, base.model)
            e_base = _bias_after_rounding(e_base, b_s if sample.full else b_s[sample.ch], out_fmt)
        sigma = _noise_scale(mag_s, ys, prob.n, FORMATS[base.model.accumulation].u, out_fmt)
        with np.errstate(invalid="ignore"):  # (inf - inf where outputs overflow: NaN, skipped)
            residuals.append((ys - e_base, sigma))
    hits = []
    for h in _comparable(prob, y):
        e, mag_h = prob.screen(h, sample)
        with np.errstate(invalid="ignore", over="ignore"):  # (inf - inf where outputs overflow: NaN, skipped)
            d = _beyond_float64_rounding(e - exact_s, e, exact_s, mag_h, h.spec.n_terms + h.spec.has_bias)
            if not np.any(d[np.isfinite(d)]):
                continue
            for r, sigma in residuals:
                beta, se = projection(r, d, sigma)
                if math.isfinite(beta) and beta > _Z * se and abs(1 - beta) < _EFFECT:
                    hits.append((abs(1 - beta), h))
                    break
    hits.sort(key=lambda t: t[0])
    # With only 16-bit-accumulation survivors, the pattern is confirmed with them (TensorFlow's float16 depthwise conv
    # without its bias, whose float16-accumulation model's loose bound took the missing bias for rounding). The first
    # confirmed hypothesis is taken, unless a later one of the three is confirmed at the requested precision where the
    # first is not (a pads change that moved one column, and a stride change that moved it less: TF32, not float32).
    for fallback in (False, True) if all(f.model.fallback for f in pfit.survivors) else (False,):
        confirmed = []
        for _, h in hits[:3]:
            res = _confirm(prob, h, y, seen, out_fmt, math.nan, fallback)
            if res.fit.survivors:
                confirmed.append(res)
                if requested is None or not _degraded(requested, res.fit, out_fmt):
                    return res
        if confirmed:
            return confirmed[0]
    return None


def _beyond_float64_rounding(d: np.ndarray, e: np.ndarray, exact: np.ndarray, mag: np.ndarray, n: int) -> np.ndarray:
    """d = e - exact with the entries that e's float64 rounding could explain set to 0: a hypothesis' screen against
    the oracle, or two models' emulations (each exact or a float64 GEMM: the caller passes twice the error).

    e is a float64 GEMM of n terms (|e - conv| ≤ γ_n·(Σ|x·w| + |b|) = γ_n·mag, Higham 2002 eq. 3.5) and ``exact``
    is correctly rounded, so |d| ≤ γ_n·mag + ulp says nothing about the hypothesis. A hypothesis that leaves the conv
    unchanged (a pad no window reads, a dilation along a kernel axis of size 1) differs from the oracle only by that
    rounding, and a float64 framework that sums in the screen's order rounds the same way: regressed on such a d, its
    residual would "match" the hypothesis.

    >>> import numpy as np
    >>> _beyond_float64_rounding(np.array([1e-16, 1e-3]), np.ones(2), np.ones(2), np.ones(2), 4).tolist()
    [0.0, 0.001]
    """
    noise = _gamma(n, _U64) * mag + ulp(np.maximum(np.abs(e), np.abs(exact)), "float64")
    return np.where((np.abs(d) > noise) | ~np.isfinite(d), d, 0.0)


# ---------------------------------------------------------------------------------------------
# Public entry point


def _requested_and_output(y: Any, dtype: str | None, run: Any, exact: np.ndarray) -> tuple[str, str, np.ndarray]:
    """(requested precision label, output format, float64 output) from the argument forms accepted; ``exact``: the
    exact conv, whose own grid the output's values do not reveal as a coarser one."""
    raw = run.output if run is not None else y
    out_name = format_of_dtype(run.output_dtype) if run is not None and run.output_dtype else None
    if out_name is None and getattr(raw, "dtype", None) is not None:
        found = format_of_dtype(raw.dtype)
        out_name = found if found != "float64" else None
    arr = as_float64(raw, "y")
    if run is not None:
        req = "tf32" if getattr(run, "math", "default") == "tf32" else run.dtype
        req = dtype or req
    else:
        req = dtype
    if req is not None:
        req_label = "tf32" if str(req).lower() == "tf32" else format_of_dtype(req)
        if req_label is None:
            raise unknown_name("dtype", req, LABEL_ORDER)
    else:
        req_label = out_name or _grid_of(arr)
    if out_name is None:
        # a float64 array: it sits on the requested grid if the run rounded its output there
        want = "float32" if req_label == "tf32" else req_label
        out_name = next((f for f in (want, "float32") if on_grid(arr, f)), "float64")
    # an output cast up after the fact (bfloat16 values in a float32 array): its real grid is the coarser one,
    # unless the exact conv lies on that grid too (an identity kernel on float32 data): then the values tell nothing.
    # Only values in the output format's normal range are evidence: its subnormals have fewer bits (float16's
    # below 2^-16 all sit on the bfloat16 grid).
    coarser = _grid_of(arr[np.abs(arr) >= FORMATS[out_name].min_normal])
    if FORMATS[coarser].precision < FORMATS[out_name].precision and not on_grid(exact, coarser):
        out_name = coarser
    return req_label, out_name, arr


def _grid_of(arr: np.ndarray) -> str:
    """The format a float64 array was evidently rounded to: the coarsest of bfloat16, float16, float32 whose grid
    holds every value while some value needs its full precision (so small-integer data stays "float64")."""
    fin = arr[np.isfinite(arr)].ravel()
    if fin.size < 16:
        return "float64"
    integers = bool(np.all(fin == np.round(fin)))
    top = float(np.max(np.abs(fin)))
    for name in ("bfloat16", "float16", "float32"):
        f = FORMATS[name]
        if integers and top < 2.0**f.precision:
            continue  # small integers sit on every grid: no evidence of rounding
        coarser = dataclasses.replace(f, name=f"{name}-1", precision=f.precision - 1)
        if on_grid(fin, f) and not on_grid(fin, coarser):
            return name
    return "float64"


def _positions(flat_idx: np.ndarray, spec: ConvSpec, cshape: tuple[int, ...]) -> list[list[int]]:
    pos = np.stack(np.unravel_index(flat_idx, cshape), axis=1)
    if spec.data_format == "NCHW":
        pos = pos[:, [0, 3, 1, 2]]
    return pos.tolist()


def attribute(
    y: Any,
    x: Any,
    w: Any,
    b: Any = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: Padding = "VALID",
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    data_format: str = "NHWC",
    kernel_format: str | None = None,
    dtype: str | None = None,
    inputs_seen: dict[str, Any] | None = None,
    label: str | None = None,
    problem: Problem | None = None,
) -> Attribution:
    """Measure an output against the exact conv and say which model explains it.

    ``y`` is the output to judge (any array in ``data_format``, or a
    :class:`~refconv.frameworks.FrameworkRun`, whose ``inputs_seen``, dtype,
    output dtype and label are used). ``x``, ``w``, ``b`` are the inputs the user
    meant; the geometry keywords are those of :func:`refconv.conv2d`
    (cross-correlation; NHWC/HWIO by default). ``dtype`` is the precision that was
    requested ("float64", "float32", "tf32", "bfloat16", "float16"); it defaults
    to y's dtype (for a float64 array: the float32/float16/bfloat16 grid its values
    evidently sit on, else float64). ``inputs_seen`` ({"x", "w", "b"}, caller's layouts) are the
    inputs after the framework's casts; the input-cast error is measured against
    them and the precision models round them. ``problem`` reuses a
    :class:`Problem` (oracle and caches) across runs of the same conv.

    Returns an :class:`~refconv.attribution.Attribution`. ``precision`` is None
    when the verdict is "mismatch" or "unexplained" (then ``extra`` holds the
    precision under the mismatch, or of the elements that are not outliers).
    ``condition_number`` is the median of Σ|x·w| / |Σx·w| (max and p99 in ``extra``).

    >>> import numpy as np, refconv
    >>> rng = np.random.default_rng(0)
    >>> x, w = rng.random((1, 6, 6, 4)), rng.random((3, 3, 4, 5))
    >>> y32 = refconv.conv2d(x.astype(np.float32), w.astype(np.float32)).astype(np.float32)
    >>> a = attribute(y32, x, w)
    >>> a.precision, a.verdict, a.mismatch
    ('float32', 'ok', None)
    >>> a = attribute(refconv.conv2d(x, w, stride=2, padding=1), x, w, stride=2, padding="SAME")
    >>> a.verdict, a.mismatch
    ('mismatch', 'padding')
    """
    run = y if (hasattr(y, "output") and hasattr(y, "inputs_seen") and hasattr(y, "framework")) else None
    if run is not None and run.output is None:
        raise FrameworkRunError(f"run {run.label} has no output to attribute (error: {run.error})")
    geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, data_format=data_format,
                    kernel_format=kernel_format)
    if run is not None and run.spec is not None and geometry == _DEFAULTS:
        s = run.spec
        geometry = dict(stride=s.stride, padding=s.padding, dilation=s.dilation, groups=s.groups,
                        data_format=s.data_format, kernel_format=s.kernel_format)
    prob = problem if problem is not None else Problem(x, w, b, **geometry)
    spec, cspec = prob.spec, prob.cspec
    if inputs_seen is None and run is not None and run.inputs_seen:
        inputs_seen = run.inputs_seen
    seen = prob.inputs_seen(inputs_seen)
    requested, out_fmt, yf = _requested_and_output(y, dtype, run, prob.exact)
    if label is None:
        label = run.label if run is not None else f"output:{requested}"

    n = prob.n
    exact = prob.exact
    mag = prob.magnitude
    shape_ok = yf.shape == spec.output_shape
    yc = np.ascontiguousarray(spec.y_to_nhwc(yf)) if shape_ok else _canonical_y(yf, spec)

    precision: str | None = None
    mismatch: str | None = None
    detail: str | None = None
    extra: dict[str, Any] = {"requested": requested, "output_format": out_fmt}
    pfit: PrecisionFit | None = None
    hres: _HypothesisResult | None = None
    if shape_ok:
        pfit = fit_precisions(prob, seen, cspec, yc, out_fmt)
        if out_fmt in ("float16", "bfloat16"):
            pfit = _with_16bit_accumulation(prob, seen, cspec, yc, out_fmt, requested, pfit)
        extra["sampled_elements"] = pfit.sample.size
        extra["model_fits"] = {f.model.name: {"fits": f.fits, "max_bound_ratio": f.max_ratio,
                                              "violations": f.n_violations} for f in pfit.fits}
        extra["pairwise_tests"] = pfit.tests
    outliers = None
    if pfit is not None and pfit.survivors:
        hres = _hypotheses_when_a_model_fits(prob, yc, seen, out_fmt, pfit, requested)
        if hres is None:
            precision, verdict = choose_precision(requested, _by_output(pfit, out_fmt))
            fit = pfit.for_label(precision) if precision else None
            outliers = None if fit is None else _statistical_outliers(yc, fit, prob, cspec, out_fmt)
            if outliers is not None:
                extra["precision_elsewhere"] = precision
                extra["outlier_test"] = "beyond 8·√n·u_acc·Σ|x·w| and 50x the median standardized error"
                precision, verdict, detail = None, "unexplained", _outlier_detail(outliers, fit, yc, spec, cspec)
    else:
        hres = _hypotheses_when_nothing_fits(prob, yc, seen, out_fmt)
        if hres is None and out_fmt in ("float16", "bfloat16"):
            # accumulation in the output's 16-bit format (TensorFlow's CPU depthwise conv in bfloat16); the chosen
            # model's accumulation goes to extra["accumulation"] below
            fb = fit_precisions(prob, seen, cspec, yc, out_fmt, fallback=True) if shape_ok else None
            if fb is not None and fb.survivors:  # (whose loose bound may take a semantic difference for rounding)
                hres = _hypotheses_when_a_model_fits(prob, yc, seen, out_fmt, fb)
                if hres is None:
                    pfit = fb
                    precision, verdict = choose_precision(requested, _by_output(fb, out_fmt))
            else:  # a semantic mismatch in a run that also accumulates in 16 bits
                hres = _hypotheses_when_nothing_fits(prob, yc, seen, out_fmt, fallback=True)
    if hres is not None:
        mismatch, detail, verdict = hres.hypothesis.kind, hres.hypothesis.detail, "mismatch"
        hp, _ = choose_precision(requested, _by_output(hres.fit, out_fmt))
        extra["precision_under_mismatch"] = hp
        extra["candidates_under_mismatch"] = _by_output(hres.fit, out_fmt)
        candidates: list[str] = []
    elif precision is None:
        verdict, mismatch = "unexplained", "unexplained"
        candidates = []
    else:
        candidates = _by_output(pfit, out_fmt)  # type: ignore[arg-type]

    chosen: ModelFit | None = None
    if precision is not None and pfit is not None:
        chosen = pfit.for_label(precision)
        extra.setdefault("accumulation", chosen.model.accumulation if chosen else None)
        extra["model"] = chosen.model.name if chosen else None
    if verdict == "unexplained" and outliers is not None:
        mismatch = "unexplained"
    elif verdict == "unexplained":
        if pfit is not None:
            bestfit = pfit.best()
            bestfit = pfit.full_fits.get(bestfit.model.name) or full_fit(
                prob, seen, cspec, yc, out_fmt, bestfit.model, bestfit.bias_after_rounding)
            outliers = bestfit.violations
            extra["precision_elsewhere"] = bestfit.model.label
            detail = _outlier_detail(outliers, bestfit, yc, spec, cspec)
        elif not np.isfinite(yf).any():
            detail = (f"output shape {tuple(yf.shape)} differs from the expected {spec.output_shape}, and every output "
                      f"is ±inf or NaN: no finite value to test the semantic hypotheses of that shape on")
        else:
            detail = (f"output shape {tuple(yf.shape)} differs from the expected {spec.output_shape} and no "
                      f"semantic hypothesis produces it")

    return _assemble(
        label=label, requested=requested, out_fmt=out_fmt, precision=precision, candidates=candidates,
        mismatch=mismatch, detail=detail, verdict=verdict, prob=prob, seen=seen, yc=yc if shape_ok else None,
        exact=exact, mag=mag, n=n, extra=extra, chosen=chosen, pfit=pfit, hres=hres, outliers=outliers,
        run=run, shape=yf.shape,
    )


_DEFAULTS = dict(stride=1, padding="VALID", dilation=1, groups=1, data_format="NHWC", kernel_format=None)


def _canonical_y(yf: np.ndarray, spec: ConvSpec) -> np.ndarray:
    if yf.ndim != 4:
        raise ShapeError(f"y.shape={yf.shape}: expected a 4-D output in {spec.data_format} layout")
    return np.ascontiguousarray(spec.y_to_nhwc(yf))


def _degraded(requested: str, fit: PrecisionFit, out_fmt: str) -> bool:
    """Whether ``fit`` would call a run that asked for ``requested`` "degraded" (only coarser models fit)."""
    return choose_precision(requested, _by_output(fit, out_fmt))[1] == "degraded"


def _by_output(fit: PrecisionFit, out_fmt: str) -> list[str]:
    """The candidates the output's own grid allows.

    Precision cannot exceed the output grid (bfloat16 values returned for a float32 request are bfloat16
    arithmetic whatever the inputs were), and an accumulator coarser than the output grid cannot have produced
    it (float64 values off the float32 grid were not accumulated in float32). Falls back to every candidate.
    """
    floor = PRECISION_RANK.get(out_fmt, 0)
    out_p = FORMATS[out_fmt].precision
    labels = {f.model.label for f in fit.survivors
              if PRECISION_RANK[f.model.label] >= floor and FORMATS[f.model.accumulation].precision >= out_p}
    kept = [lab for lab in LABEL_ORDER if lab in labels]
    return kept or fit.candidates


def _statistical_outliers(yc: np.ndarray, fit: ModelFit, prob: Problem, spec: ConvSpec, out_fmt: str):
    """Isolated elements far outside the accumulation noise the rest of the output shows, or None.

    The deterministic bound γ_n·Σ|x·w| grows like n, so at large n a corrupted element can hide below it.
    Rounding errors of an honest run stay within λ·√n·u·Σ|x·w| with overwhelming probability (Higham & Mary,
    SIAM J. Sci. Comput. 41(5), 2019; λ = 8 here) and are spread over all elements; an element beyond that
    *and* 50 times the median standardized error is an outlier.
    """
    n = spec.n_terms + spec.has_bias
    scale = fit.unit
    if scale is None or scale.shape != yc.shape:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.abs(yc - fit.emulation) / np.where(scale > 0, scale, np.inf)
    fin = np.isfinite(z)
    if fin.sum() < 8:
        return None
    med = float(np.median(z[fin]))
    flag = fin & (z > 8 * math.sqrt(n)) & (z > 50 * max(med, 1e-300))
    return flag if flag.any() else None


def _outlier_detail(viol: np.ndarray, fit: ModelFit, yc: np.ndarray, spec: ConvSpec, cspec: ConvSpec) -> str:
    idx = np.flatnonzero(viol)
    k = idx.size
    if k == 0:
        return "no model explains the output"
    pos = np.stack(np.unravel_index(idx, viol.shape), axis=1)
    where = []
    for axis, name in ((0, "batch item"), (1, "row"), (2, "column"), (3, "channel")):
        vals = np.unique(pos[:, axis])
        if vals.size == 1 and viol.shape[axis] > 1:
            where.append(f"{name} {int(vals[0])}")
    ratio = np.abs(yc - fit.emulation) / fit.bound
    worst = idx[np.argmax(ratio.ravel()[idx])]
    wpos = _positions(np.array([worst]), spec, viol.shape)[0]
    frac = k / viol.size
    loc = f" (all in {', '.join(where)})" if where and k > 1 else ""
    others = (f"consistent with {fit.model.label}" if np.isfinite(yc[~viol]).any() else
              "±inf or NaN where the conv as asked overflows too (every output is ±inf or NaN: no finite value to "
              "tell a model or a semantic difference by)")
    return (
        f"{k} of {viol.size} elements ({frac:.2%}) exceed every model's bound{loc}; the worst, at {tuple(wpos)}, "
        f"is {float(ratio.ravel()[worst]):.3g}x the {fit.model.label} bound; the other elements are {others}"
        if k < viol.size else
        f"all elements exceed every model's bound; the worst, at {tuple(wpos)}, is "
        f"{float(ratio.ravel()[worst]):.3g}x the {fit.model.label} bound"
    )


def _assemble(*, label, requested, out_fmt, precision, candidates, mismatch, detail, verdict, prob: Problem, seen,
              yc, exact, mag, n, extra, chosen, pfit, hres, outliers, run, shape) -> Attribution:
    spec, cspec = prob.spec, prob.cspec
    u_req = FORMATS[requested].u
    nan = math.nan
    out = {}
    if yc is not None:
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            err = yc - exact
            aerr = np.abs(err)
            fin = np.isfinite(aerr)
            nz = fin & (exact != 0)
            rel = aerr[nz] / np.abs(exact[nz])
            ulps = aerr / ulp(exact, out_fmt)
            ratio = aerr / (u_req * mag)
            ratio = np.where(mag > 0, ratio, np.where(aerr > 0, np.inf, 0.0))
            cond = mag[nz] / np.abs(exact[nz])
        fa = aerr[fin]

        def q(a, p):  # (between a finite value and inf, linear interpolation meets inf - inf: the percentile is inf)
            if not a.size:
                return nan
            with np.errstate(invalid="ignore"):
                v = float(np.percentile(a, p))
            return v if not math.isnan(v) else float(np.percentile(a, p, method="higher"))

        out = dict(
            max_abs_error=float(fa.max()) if fa.size else nan, median_abs_error=q(fa, 50),
            max_rel_error=float(rel.max()) if rel.size else nan, median_rel_error=q(rel, 50),
            max_ulp=float(ulps[fin].max()) if fa.size else nan, p99_ulp=q(ulps[fin], 99), median_ulp=q(ulps[fin], 50),
            max_bound_ratio=float(ratio[fin].max()) if fa.size else nan, median_bound_ratio=q(ratio[fin], 50),
            p99_bound_ratio=q(ratio[fin], 99), condition_number=q(cond, 50),
        )
        extra["condition_number_max"] = float(cond.max()) if cond.size else nan
        extra["condition_number_p99"] = q(cond, 99)
        extra["nonfinite_mismatches"] = int((~fin & ~(np.isnan(yc) & np.isnan(exact)) & (yc != exact)).sum())
        extra["within_probabilistic_bound"] = float(np.mean(ratio[fin] <= math.sqrt(n))) if fa.size else nan
        # input cast vs arithmetic: the conv of the inputs as seen (or as rounded to the precision found), by a
        # float64 GEMM of those inputs (its error, ≤ γ_n(2^-53)·Σ|x·w|, is far below any cast error it shows)
        f64 = PRECISION_MODELS["float64"]
        if seen is not prob.original:
            e_seen = prob.emulate(seen, f64, cspec, None)[0]
            extra["cast_reference"] = "inputs_seen"
        else:
            m = chosen.model if chosen is not None else next(
                (mm for mm in PRECISION_MODELS.values() if mm.label == requested and not mm.fallback), f64)
            if m.input_format == "float64":
                e_seen = exact
                extra["cast_reference"] = "intended inputs (no cast)"
            else:
                e_seen = prob.emulate(seen, m, cspec, None)[0]
                extra["cast_reference"] = f"inputs rounded to {m.input_format} ({m.rounding})"
        with np.errstate(invalid="ignore"):
            ce, ae = np.abs(e_seen - exact), np.abs(yc - e_seen)
        input_cast_error = float(np.max(ce[np.isfinite(ce)], initial=0.0))
        arithmetic_error = float(np.max(ae[np.isfinite(ae)], initial=0.0))
        order = np.argsort(-np.where(fin, ratio, -1.0).ravel(), kind="stable")
        if outliers is not None and outliers.any():
            order = np.flatnonzero(outliers)[np.argsort(-aerr.ravel()[np.flatnonzero(outliers)], kind="stable")]
        top = order[:5]
        worst = []
        for i, pos in zip(top, _positions(top, spec, yc.shape)):
            worst.append({
                "index": pos, "y": float(yc.ravel()[i]), "exact": float(exact.ravel()[i]),
                "abs_error": float(aerr.ravel()[i]), "ulp": float(ulps.ravel()[i]),
                "bound_ratio": float(ratio.ravel()[i]), "magnitude": float(mag.ravel()[i]),
            })
        arrays = dict(exact=spec.y_from_nhwc(exact), error=spec.y_from_nhwc(err), magnitude=spec.y_from_nhwc(mag),
                      ulp=spec.y_from_nhwc(ulps), bound_ratio=spec.y_from_nhwc(ratio))
    else:
        out = {k: nan for k in ("max_abs_error", "median_abs_error", "max_rel_error", "median_rel_error", "max_ulp",
                                "p99_ulp", "median_ulp", "max_bound_ratio", "median_bound_ratio", "p99_bound_ratio",
                                "condition_number")}
        input_cast_error = arithmetic_error = nan
        worst = []
        arrays = dict(exact=spec.y_from_nhwc(exact), magnitude=spec.y_from_nhwc(mag))
        extra["output_shape"] = list(shape)
    tol = _tolerance(precision or extra.get("precision_under_mismatch") or requested, chosen, mag, n, out_fmt,
                     prob.original.b, yc)
    if verdict == "degraded" and run is not None and getattr(run, "precision_knobs", None):
        # the settings that can explain a lower precision than requested (TF32 flags, oneDNN fpmath, jax precision)
        extra["precision_settings"] = {
            k: v for k, v in run.precision_knobs.items()
            if _PRECISION_KNOB.search(k) and v not in (None, "none", "unset") and not str(v).startswith("<error")}
    a = Attribution(
        label=label, requested_dtype=requested, output_dtype=out_fmt, precision=precision, candidates=candidates,
        mismatch=mismatch, mismatch_detail=detail, verdict=verdict, n_terms=n, **out,
        deterministic_bound=float(n), probabilistic_bound=math.sqrt(n),
        input_cast_error=input_cast_error, arithmetic_error=arithmetic_error, worst_positions=worst,
        explanation="", suggested_tolerance=tol, spec=spec.to_dict(), extra=extra, **arrays,
    )
    a.extra["unit_roundoff"] = u_req
    from .explanation import explain_attribution

    a.explanation = explain_attribution(a)
    return a


def _tolerance(label: str, chosen: ModelFit | None, mag: np.ndarray, n: int, out_fmt: str, b, yc) -> dict[str, Any]:
    """A per-element bound that accepts this precision honestly, and a scalar atol covering it."""
    model = chosen.model if chosen is not None else next(
        (m for m in PRECISION_MODELS.values() if m.label == label and not m.fallback), PRECISION_MODELS["float64"])
    u_in = FORMATS[model.input_format].u if model.input_format != "float64" else 0.0
    acc = FORMATS[model.accumulation].u
    coef = 2 * u_in + u_in**2 + _gamma(n + 2, acc)
    prob_coef = 2 * u_in + math.sqrt(n) * acc
    with np.errstate(invalid="ignore", over="ignore"):
        per = coef * mag + (0.0 if yc is None else 0.5 * ulp(yc, out_fmt))
    fin = per[np.isfinite(per)]
    return {
        "precision": model.label,
        "model": model.name,
        "formula": "|y - exact| <= coefficient * sum|x*w| + 0.5 * ulp_out(y)",
        "coefficient": coef,
        "probabilistic_coefficient": prob_coef,
        "atol": float(fin.max()) if fin.size else 0.0,
        "rtol": 0.0,
    }
