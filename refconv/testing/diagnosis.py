"""Lightweight fault diagnosis for a conv output that missed its tolerance.

Each hypothesis builds an alternative reference (another padding, a flipped or
transposed kernel, no bias, inputs rounded to a lower precision, ...) with the
cheap float64 im2col conv and asks whether the actual output fits *that*
reference within the same error model. The first structural hypothesis that
explains every element wins; precision hypotheses are all reported, since TF32
and float16 rounding are often indistinguishable. Failing that, a handful of
bad elements is reported as corruption (a single element only slightly over its
tolerance only where it stands out from the others' errors), and widespread excess
error as arithmetic that is less accurate than the claimed precision.

The hypothesis families are registered in :data:`HYPOTHESES` (the single source
of truth for what the diagnosis can name).

>>> import numpy as np
>>> from refconv.spec import ConvSpec
>>> x, w = np.arange(25.0).reshape(1, 5, 5, 1), np.arange(9.0).reshape(3, 3, 1, 1)
>>> s = ConvSpec.from_shapes(x.shape, w.shape, padding="SAME", stride=2)
>>> wrong = ConvSpec.from_shapes(x.shape, w.shape, padding="SAME_LOWER", stride=2)
>>> from refconv.oracle._im2col import float_conv_nhwc
>>> f = diagnose(float_conv_nhwc(x, w[::-1, ::-1], s), x, w, None, s)
>>> f[0].kind, "flipped" in f[0].statement
('kernel_flip', True)
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..formats import FORMATS, on_grid, round_to
from ..spec import ConvSpec, resolve_padding
from .precision import get_precision
from .tolerance import tolerance_nhwc

__all__ = ["Finding", "diagnose", "precision_signature", "HYPOTHESES", "SIGNATURE_RATIO", "SIGNATURE_MIN_ELEMENTS"]

_MAX_PADDING_VARIANTS = 64
SIGNATURE_RATIO = 0.25
SIGNATURE_MIN_ELEMENTS = 8
_SIGNATURE_PIXELS = 256


@dataclasses.dataclass
class Finding:
    """One diagnosis: the fault class (``kind``), a sentence, and how well it fits.

    ``fraction`` is the share of output elements the hypothesis explains within
    tolerance (1.0 = every element).
    """

    kind: str
    statement: str
    fraction: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _Alt:
    kind: str
    statement: str
    x: np.ndarray
    w: np.ndarray
    b: np.ndarray | None
    spec: ConvSpec
    precision: str | None = None  # model for the alternative; None = the requested one
    input_rounding: bool = True
    accumulation: str | None = None
    output: str | None = None
    ref: np.ndarray | None = None  # precomputed reference (NHWC)


def _float_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, spec: ConvSpec) -> np.ndarray:
    from ..oracle._im2col import float_conv_nhwc

    y = float_conv_nhwc(x, w, spec)
    return y if b is None else y + b


def _fraction_fitting(actual: np.ndarray, alt: _Alt, ctx: dict[str, Any], *, plausible: bool = False) -> float:
    """Share of elements within the alternative's tolerance (0.0 for an output rounded to a format the actual
    values are not all representable in).

    ``plausible=True`` (for loose models: lower output or accumulation precision)
    also demands that the errors look like that model's rounding: their median
    must reach 0.05/√m of its tolerance (honest rounding sits near 1/√m), else a
    loose model would "explain" any small error. Returns 0.0 when implausible.
    """
    if actual.shape != alt.spec.output_shape or (alt.output is not None and not on_grid(actual, alt.output)):
        return 0.0
    if actual.size > _QUICK_REJECT_SIZE and alt.ref is None and _quick_reject(actual, alt, ctx):
        return 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        if ctx["precision"] == "float64" and alt.ref is None:
            from ..oracle import conv2d

            ref = conv2d(alt.x, alt.w, alt.b, padding=alt.spec.pads, stride=alt.spec.stride,
                         dilation=alt.spec.dilation, groups=alt.spec.groups)
        else:
            ref = alt.ref if alt.ref is not None else _float_ref(alt.x, alt.w, alt.b, alt.spec)
        t = tolerance_nhwc(
            alt.x, alt.w, alt.b, alt.spec, precision=alt.precision or ctx["precision"],
            accumulation=alt.accumulation if alt.accumulation is not None else ctx["accumulation"],
            bound=ctx["bound"], exact_nhwc=ref, input_rounding=alt.input_rounding, output=alt.output,
        )
        err = np.abs(actual - ref)
        ok = (err <= t.tol_nhwc) | (np.isnan(actual) & np.isnan(ref)) | ((actual == ref) & np.isinf(ref))
        if plausible and ok.all():
            ratio = (err / t.tol_nhwc)[np.isfinite(err) & (t.tol_nhwc > 0) & np.isfinite(t.tol_nhwc)]
            m = alt.spec.n_terms + (alt.b is not None)
            if ratio.size == 0 or np.median(ratio) < 0.05 / np.sqrt(m):
                return 0.0
    return float(np.mean(ok))


# ---- hypothesis generators: each yields alternatives for the same inputs -------------------------


def _pads_name(pads: tuple, spec: ConvSpec) -> str:
    hw, k = (spec.H, spec.W), (spec.KH, spec.KW)
    for mode in ("SAME", "SAME_LOWER", "VALID"):
        if resolve_padding(mode, hw, k, spec.stride, spec.dilation) == pads:
            return f"padding={mode!r} (pads {pads})"
    (t, b_), (left, r) = pads
    if t == b_ and left == r:
        return f"symmetric padding={(t, left) if t != left else t!r} (pads {pads})"
    return f"explicit pads {pads}"


def _axis_pad_options(size: int, k: int, s: int, d: int, out: int) -> list[tuple[int, int]]:
    keff = (k - 1) * d + 1
    lo = max((out - 1) * s + keff - size, 0)
    opts = []
    for total in range(lo, lo + s):
        if (size + total - keff) // s + 1 != out:
            continue
        opts.extend((p0, total - p0) for p0 in range(total + 1) if max(p0, total - p0) <= keff)
    return opts


def _padding_alts(x, w, b, spec: ConvSpec, out_shape: tuple, label: str | None = None) -> Iterator[_Alt]:
    hw, k = (spec.H, spec.W), (spec.KH, spec.KW)
    want = f"padding={label or repr(spec.padding)} (pads {spec.pads})"
    seen = {spec.pads}
    named = [resolve_padding(m, hw, k, spec.stride, spec.dilation) for m in ("SAME", "SAME_LOWER", "VALID")]
    sym = [((k[a] - 1) * spec.dilation[a]) // 2 for a in range(2)]
    named.append(((sym[0], sym[0]), (sym[1], sym[1])))
    oh, ow = out_shape[1], out_shape[2]
    per_axis = [
        _axis_pad_options(hw[a], k[a], spec.stride[a], spec.dilation[a], (oh, ow)[a]) for a in range(2)
    ]
    rest = sorted(
        itertools.product(*per_axis),
        key=lambda p: sum(abs(p[a][0] - spec.pads[a][0]) + abs(p[a][1] - spec.pads[a][1]) for a in range(2)),
    )
    count = 0
    for pads in itertools.chain(named, rest):
        pads = tuple(tuple(int(v) for v in p) for p in pads)
        if pads in seen:
            continue
        seen.add(pads)
        try:
            alt_spec = spec.replace(padding=pads)
        except Exception:
            continue
        if alt_spec.output_shape != out_shape:
            continue
        count += 1
        if count > _MAX_PADDING_VARIANTS:
            return
        yield _Alt("padding", f"padding mismatch: output matches {_pads_name(pads, spec)} instead of {want}",
                   x, w, b, alt_spec)
    if any(v for p in spec.pads for v in p) and spec.output_shape == out_shape:
        (t, b_), (left, r) = spec.pads
        valid = spec.replace(padding="VALID", x_shape=(spec.N, spec.H + t + b_, spec.W + left + r, spec.C))
        for mode, what in (("edge", "edge values (replicate padding)"), ("reflect", "reflected values")):
            try:
                xp = np.pad(x, ((0, 0), (t, b_), (left, r), (0, 0)), mode=mode)
            except ValueError:
                continue
            yield _Alt("padding", f"padding mismatch: the border is padded with {what} instead of zeros ({want})",
                       xp, w, b, valid)


def _kernel_alts(x, w, b, spec: ConvSpec, out_shape: tuple, label: str | None = None) -> Iterator[_Alt]:
    yield _Alt("kernel_flip", "kernel flipped (rotated 180 degrees in H and W): the kernel computes true "
               "convolution instead of cross-correlation", x, w[::-1, ::-1], b, spec)
    if spec.KH == spec.KW:
        yield _Alt("kernel_layout", "kernel H/W axes swapped (kernel transposed: w[kh, kw] used as w[kw, kh]); "
                   "check the kernel layout", x, w.transpose(1, 0, 2, 3), b, spec)
        yield _Alt("kernel_layout", "kernel H/W axes swapped and flipped (kernel transposed and rotated); check "
                   "the kernel layout", x, w.transpose(1, 0, 2, 3)[::-1, ::-1], b, spec)
    else:
        try:
            swapped = spec.replace(w_shape=(spec.KW, spec.KH, w.shape[2], w.shape[3]))
        except Exception:
            swapped = None
        if swapped is not None and swapped.output_shape == out_shape:
            yield _Alt("kernel_layout", "kernel H/W axes swapped (kernel transposed: a KHxKW kernel used as KWxKH); "
                       "check the kernel layout", x, w.transpose(1, 0, 2, 3), b, swapped)
    if spec.KH > 1:
        yield _Alt("kernel_flip", "kernel flipped along H only (rows reversed)", x, w[::-1], b, spec)
    if spec.KW > 1:
        yield _Alt("kernel_flip", "kernel flipped along W only (columns reversed)", x, w[:, ::-1], b, spec)
    if spec.groups == 1 and w.shape[2] == w.shape[3] and w.shape[2] > 1:
        yield _Alt("kernel_layout", "kernel input/output channel axes swapped (w[..., i, o] used as w[..., o, i]); "
                   "check the kernel layout (HWIO vs HWOI/OIHW)", x, w.transpose(0, 1, 3, 2), b, spec)


def _bias_alts(x, w, b, spec: ConvSpec, out_shape: tuple, label: str | None = None) -> Iterator[_Alt]:
    if b is None or not np.any(b):
        return
    nb = spec.replace()
    nb = ConvSpec.from_shapes(nb.x_shape, nb.w_shape, None, stride=nb.stride, padding=nb.pads,
                              dilation=nb.dilation, groups=nb.groups)
    yield _Alt("bias", "bias missing: the output matches the convolution without the bias (bias not added)",
               x, w, None, nb)
    yield _Alt("bias", "bias added twice", x, w, 2 * b, spec)
    yield _Alt("bias", "bias subtracted instead of added (wrong sign)", x, w, -b, spec)


def _precision_alts(x, w, b, spec: ConvSpec, out_shape: tuple, requested: str) -> Iterator[_Alt]:
    model = get_precision(requested)
    p_in = FORMATS[model.inputs].precision
    for cand, mode in (("tf32", "nearest"), ("tf32", "truncate"), ("float16", "nearest"), ("bfloat16", "nearest"),
                       ("float32", "nearest")):
        truncate = mode == "truncate"
        if FORMATS[cand].precision >= p_in:
            continue
        rx, rw = round_to(x, cand, mode=mode), round_to(w, cand, mode=mode)
        how = "truncated to" if truncate else "rounded to"
        # tensor cores add the bias in float32 (epilogue); a low-precision run rounds it too: try both
        yield _Alt("precision", f"inputs {how} {cand}", rx, rw, b, spec, input_rounding=False)
        rb = None if b is None else round_to(b, cand, mode=mode)
        if b is not None and not np.array_equal(rb, b):
            yield _Alt("precision", f"inputs {how} {cand}", rx, rw, rb, spec, input_rounding=False)
        if not truncate and FORMATS[cand].precision < FORMATS[model.output].precision and cand != "tf32":
            # a whole low-precision run: inputs, bias and output in cand, float32 accumulation
            yield _Alt("precision", f"inputs and output rounded to {cand}", rx, rw, rb, spec, input_rounding=False,
                       output=cand)
    for cand in ("float16", "bfloat16", "float32"):
        if FORMATS[cand].precision >= FORMATS[model.output].precision:
            continue
        yield _Alt("precision", f"output rounded to {cand}", x, w, b, spec, output=cand)
    for cand in ("float16", "bfloat16", "float32"):
        if FORMATS[cand].precision >= FORMATS[model.accumulation].precision:
            continue
        yield _Alt("precision", f"accumulation in {cand}", x, w, b, spec, precision=requested, accumulation=cand)


HYPOTHESES: dict[str, Callable[..., Iterator[_Alt]]] = {
    "padding": _padding_alts,
    "kernel": _kernel_alts,
    "bias": _bias_alts,
}


def _precision_statement(fits: list[_Alt], requested: str, x: np.ndarray, w: np.ndarray) -> str:
    names = [a.statement for a in fits]
    in_tf32 = any(s.startswith("inputs") and "tf32" in s for s in names)
    in_f16 = any(s == "inputs rounded to float16" for s in names)
    if in_tf32 and in_f16:
        return (f"consistent with TF32 or float16 input rounding (10 mantissa bits), not {requested}: the two are "
                "indistinguishable here because every input lies within float16's normal range")
    first = names[0]
    acc = [n.split()[-1] for n in names if n.startswith("accumulation in")]
    if acc and first.startswith("accumulation"):
        return (f"consistent with accumulation (or other intermediate rounding) in "
                f"{' or '.join(acc)}, not the {get_precision(requested).accumulation} accumulation that "
                f"precision={requested!r} assumes; pass accumulation={acc[0]!r} if that is intended")
    if first.startswith("inputs") and "tf32" in first:
        return f"consistent with TF32 ({first}: 10 mantissa bits, e.g. tensor-core math), not {requested}"
    if first.startswith("inputs"):
        fmt = first.split()[-1]
        return f"consistent with {fmt} inputs ({first}), not {requested}"
    return f"consistent with {first}, not {requested}"


CORRUPTION_MIN_EXCESS = 4.0


def _is_tight(alt: _Alt) -> bool:
    """Rounded inputs under the claimed model (tight), as opposed to a looser output/accumulation model."""
    return alt.statement.startswith("inputs") and alt.output is None and alt.accumulation is None


def _corruption(failing: np.ndarray | None, excess: np.ndarray | None = None,
                data_format: str = "NHWC", *, single_only: bool = False) -> Finding | None:
    """A few isolated failing elements among many good ones: corruption, not a systematic fault.

    At most max(1, 1%) of the elements may fail, and (when ``excess`` = error/tolerance
    is given) each by at least :data:`CORRUPTION_MIN_EXCESS`: a value written wrong,
    not rounding slightly beyond the model. With ``single_only`` (the last resort, after the
    precision hypotheses) one failing element, however slightly: corrupted if it stands out
    (its excess at least that factor times the next worst element's), else the worst of errors
    that all come near the bound ("arithmetic"), which the finding then says.
    """
    if failing is None or not failing.any():
        return None
    nfail, size = int(failing.sum()), failing.size
    if nfail > max(1, size // 100) or nfail == size or (single_only and (nfail > 1 or size < 4)):
        return None
    perm = (0, 1, 2, 3) if data_format == "NHWC" else (0, 3, 1, 2)
    idx = [tuple(int(p[k]) for k in perm) for p in np.argwhere(failing)[:5]]
    least = np.inf if excess is None else float(np.nan_to_num(excess[failing], nan=np.inf).min())
    if least < CORRUPTION_MIN_EXCESS:
        if not single_only:
            return None
        rest = float(np.nan_to_num(excess[~failing], nan=0.0).max(initial=0.0))
        if least < CORRUPTION_MIN_EXCESS * rest:
            return Finding("arithmetic", f"a single element, at {data_format} index {idx[0]}, exceeds its tolerance, "
                           f"by a factor of {least:.3g}, and the next worst element reaches {rest:.2g} of its own: "
                           "the worst of errors that all come near the bound, not an isolated wrong value; "
                           "rounding slightly beyond the claimed precision's bound (another summation order or a "
                           "lower intermediate precision)", 1 - 1 / size)
    if nfail == 1:
        return Finding("corrupted", f"single corrupted element at {data_format} index {idx[0]}; every other element "
                       "is within tolerance", 1 - 1 / size)
    return Finding("corrupted", f"{nfail} isolated corrupted elements (e.g. at {data_format} {idx}); every other "
                   "element is within tolerance", 1 - nfail / size)


def diagnose(
    actual_nhwc: np.ndarray,
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    spec: ConvSpec,
    *,
    precision: str = "float32",
    accumulation: str | None = None,
    bound: str = "deterministic",
    failing: np.ndarray | None = None,
    padding_label: str | None = None,
    excess: np.ndarray | None = None,
    data_format: str = "NHWC",
) -> list[Finding]:
    """Name the fault class behind a failing output (NHWC ``actual``, NHWC x, HWIO w, NHWC spec).

    Returns findings, most specific first (empty when nothing fits). Kinds:
    "padding", "kernel_flip", "kernel_layout", "bias", "precision", "corrupted",
    "arithmetic". ``failing`` (bool, NHWC) marks the elements that exceeded the
    tolerance under the requested model and ``excess`` their error/tolerance;
    they enable the corruption diagnosis, whose indices are given in
    ``data_format`` (the caller's layout).
    ``padding_label`` is how the caller wrote the padding (e.g. "'SAME'"), for
    the messages. Several structural findings mean the output cannot tell them
    apart (e.g. a flip along an axis with a single contributing tap looks like a
    shift of the padding). See the module docstring for an example.
    """
    ctx = {"precision": precision, "accumulation": accumulation, "bound": bound}
    out_shape = tuple(actual_nhwc.shape)
    found: list[Finding] = []
    for gen in HYPOTHESES.values():
        for alt in gen(x, w, b, spec, out_shape, padding_label):
            if _fraction_fitting(actual_nhwc, alt, ctx) == 1.0:
                found.append(Finding(alt.kind, alt.statement))
                if alt.kind == "padding":  # further padding variants that fit say the same thing
                    break
    if found or out_shape != spec.output_shape:
        return found
    alts = list(_precision_alts(x, w, b, spec, out_shape, precision))
    tight = [a for a in alts if _is_tight(a)]  # rounded inputs, everything else as claimed
    fits = [a for a in tight if _fraction_fitting(actual_nhwc, a, ctx) == 1.0]
    if fits:
        return [Finding("precision", _precision_statement(fits, precision, x, w))]
    corrupted = _corruption(failing, excess, data_format)
    if corrupted is not None:
        return [corrupted]
    fits = [a for a in alts if not _is_tight(a) and _fraction_fitting(actual_nhwc, a, ctx, plausible=True) == 1.0]
    if fits:
        return [Finding("precision", _precision_statement(fits, precision, x, w))]
    single = _corruption(failing, excess, data_format, single_only=True)  # one bad element, however slightly
    if single is not None:
        return [single]
    if failing is not None and failing.any():
        nfail, size = int(failing.sum()), failing.size
        return [Finding(
            "arithmetic",
            f"errors exceed the {precision} bound at {nfail} of {size} elements without matching any tested semantic "
            "fault (padding, kernel orientation/layout, bias, lower input/output/accumulation precision). The "
            "arithmetic is less accurate than the claimed precision: consistent with an algorithm whose transforms "
            "amplify rounding error (Winograd or FFT convolution; Barabasz et al., arXiv:1803.10986) or with "
            "lower-precision intermediates",
            1 - nfail / size,
        )]
    return []


def precision_signature(
    actual_nhwc: np.ndarray,
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    spec: ConvSpec,
    exact_nhwc: np.ndarray,
    *,
    precision: str = "float32",
    accumulation: str | None = None,
    bound: str = "deterministic",
) -> Finding | None:
    """Catch lower-precision inputs that hide under a loose worst-case bound (large n).

    Let D = exact(round_c(x), round_c(w)) - exact(x, w) be the effect of rounding
    the inputs to a lower format c (TF32, float16, bfloat16; float32 when
    float64 is claimed), e0 = actual - exact and e1 = actual - exact(rounded).
    An honest kernel's rounding errors are independent of D, so
    ‖e1‖ = ‖e0 + D‖ ≳ ‖e0‖. A kernel that rounded its inputs to c has
    ‖e1‖ ≪ ‖e0‖. The output is flagged when ‖e1‖₂ ≤ :data:`SIGNATURE_RATIO`·‖e0‖₂
    over at least :data:`SIGNATURE_MIN_ELEMENTS` elements where D ≠ 0 (so a
    chance alignment of a few honest errors with -D cannot trigger it) *and* the
    rounded-input reference explains every element within the bound.

    >>> rng = np.random.default_rng(0)
    >>> x, w = rng.random((1, 6, 6, 64)), rng.random((3, 3, 64, 4))
    >>> s = ConvSpec.from_shapes(x.shape, w.shape)
    >>> from refconv.oracle._im2col import float_conv_nhwc
    >>> exact = float_conv_nhwc(x, w, s)
    >>> tf32 = float_conv_nhwc(round_to(x, "tf32"), round_to(w, "tf32"), s).astype(np.float32)
    >>> precision_signature(tf32.astype(float), x, w, None, s, exact).kind
    'precision'
    >>> precision_signature(exact.astype(np.float32).astype(float), x, w, None, s, exact) is None
    True
    """
    if actual_nhwc.shape != exact_nhwc.shape:
        return None
    ctx = {"precision": precision, "accumulation": accumulation, "bound": bound}
    fits, ratios = [], []
    flushable = _flush_mask(x, w, spec, precision)
    # the statistic on a sample of output pixels (all channels): cheap even for large convs
    n_, oh, ow = actual_nhwc.shape[:3]
    rng = np.random.default_rng(0)
    pix = rng.choice(n_ * oh * ow, size=min(n_ * oh * ow, _SIGNATURE_PIXELS), replace=False)
    idx = np.unravel_index(np.sort(pix), (n_, oh, ow))
    a_s, e_s, keep = actual_nhwc[idx], exact_nhwc[idx], ~flushable[idx]
    base = _conv_at(x, w, None, spec, idx)
    alts = [a for a in _precision_alts(x, w, b, spec, actual_nhwc.shape, precision) if _is_tight(a)]
    cache: dict[tuple[int, int], np.ndarray] = {}  # alts stay alive in the list, so ids are stable
    exact_s = base + (0.0 if b is None else b)
    with np.errstate(invalid="ignore", over="ignore"):
        for alt in alts:
            key = (id(alt.x), id(alt.w))
            if key not in cache:
                same = [k for k, a in zip(cache, _unique_alts(alts, cache))
                        if np.array_equal(a.x, alt.x) and np.array_equal(a.w, alt.w)]
                cache[key] = cache[same[0]] if same else _conv_at(alt.x, alt.w, None, spec, idx)
            ref = cache[key] + (0.0 if alt.b is None else alt.b)
            d = ref - exact_s
            mask = (d != 0) & np.isfinite(d) & np.isfinite(a_s) & keep
            if int(mask.sum()) < SIGNATURE_MIN_ELEMENTS:
                continue
            e0 = np.linalg.norm((a_s - e_s)[mask])
            e1 = np.linalg.norm((a_s - ref)[mask])
            if e1 <= SIGNATURE_RATIO * e0 and _fraction_fitting(actual_nhwc, alt, ctx) == 1.0:
                fits.append(alt)
                ratios.append(e1 / e0 if e0 else 0.0)
    if not fits:
        return None
    closer = "exactly equal" if min(ratios) == 0 else f"{1 / min(ratios):.3g}x closer (rms)"
    return Finding(
        "precision",
        f"{_precision_statement(fits, precision, x, w)}. Every element is within the worst-case {precision} bound "
        f"(loose for n={spec.n_terms} terms), but the output is {closer} to the exact conv of the rounded inputs "
        f"than to the exact conv; honest {precision} rounding errors are independent of that input rounding and "
        "cannot do this",
    )


_QUICK_REJECT_SIZE = 4096


def _quick_reject(actual: np.ndarray, alt: _Alt, ctx: dict[str, Any]) -> bool:
    """On 64 sampled pixels, is the actual output far (8x a generous tolerance) from this alternative?

    Only ever rejects: a hypothesis that survives is checked on every element.
    """
    model = get_precision(alt.precision or ctx["precision"])
    u_acc = FORMATS[alt.accumulation or ctx["accumulation"] or model.accumulation].u
    u_in, u_out = FORMATS[model.inputs].u, FORMATS[alt.output or model.output].u
    n_, oh, ow = actual.shape[:3]
    pix = np.random.default_rng(1).choice(n_ * oh * ow, size=min(n_ * oh * ow, 64), replace=False)
    idx = np.unravel_index(pix, (n_, oh, ow))
    with np.errstate(invalid="ignore", over="ignore"):
        ref = _conv_at(alt.x, alt.w, alt.b, alt.spec, idx)
        mag = _conv_at(np.abs(alt.x), np.abs(alt.w), None if alt.b is None else np.abs(alt.b), alt.spec, idx)
        m = alt.spec.n_terms + 2
        tol = 8 * ((m * u_acc + 3 * u_in) * mag + 2 * u_out * np.abs(ref)) + 1e-300
        err = np.abs(actual[idx] - ref)
        return bool(np.any(np.isfinite(err) & np.isfinite(tol) & (err > tol)))


def _unique_alts(alts: list[_Alt], cache: dict[tuple[int, int], np.ndarray]) -> list[_Alt]:
    """The alternatives whose (x, w) objects are the cache's keys, in the cache's order."""
    by_id = {(id(a.x), id(a.w)): a for a in alts}
    return [by_id[k] for k in cache]


def _conv_at(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, spec: ConvSpec, idx: tuple) -> np.ndarray:
    """float64 conv at output pixels ``idx`` = (n, i, j) arrays, all channels: (P, O)."""
    from ..oracle._im2col import group_slices, pad_nhwc, window_view

    rows = window_view(pad_nhwc(x, spec), spec)[idx]  # (P, KH, KW, C)
    out = np.empty((rows.shape[0], spec.O))
    for _, cs, os_ in group_slices(spec):
        out[:, os_] = rows[..., cs].reshape(rows.shape[0], -1) @ w[..., os_].reshape(-1, os_.stop - os_.start)
    return out if b is None else out + b


def _flush_mask(x: np.ndarray, w: np.ndarray, spec: ConvSpec, precision: str) -> np.ndarray:
    """Output elements touched by inputs in the claimed format's subnormal range (which FTZ/DAZ may flush)."""
    from ..oracle._im2col import float_conv_nhwc

    tiny = FORMATS[get_precision(precision).inputs].min_normal
    sx = (np.abs(x) < tiny) & (x != 0)
    sw = (np.abs(w) < tiny) & (w != 0)
    shape = spec.output_shape
    if not (sx.any() or sw.any()):
        return np.zeros(shape, dtype=bool)
    hit = float_conv_nhwc(sx.astype(np.float64), (w != 0).astype(np.float64), spec)
    hit += float_conv_nhwc((x != 0).astype(np.float64), sw.astype(np.float64), spec)
    return hit > 0
