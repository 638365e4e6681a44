"""``assert_conv2d_close``: one assertion that accepts honest rounding and names real bugs.

The tolerance is derived per element from the claimed precision's error model
(:mod:`refconv.testing.tolerance`), never a fixed atol. On failure the message
counts the elements beyond tolerance, lists the worst ones (value, exact value,
ULPs, bound ratio) and explains the fault, preferring the labels of
:func:`refconv.attribute` and falling back on :mod:`refconv.testing.diagnosis`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from ..formats import get_format, ulp
from ..spec import ConvSpec, Padding, as_float64, prepare
from .diagnosis import Finding, diagnose, precision_signature
from .precision import precision_name
from .tolerance import BOUNDS, Tolerance, nhwc_spec, tolerance_nhwc

__all__ = ["assert_conv2d_close", "compare_conv2d", "ConvComparison", "call_kernel"]

_GEOMETRY_DEFAULTS = {
    "stride": 1, "padding": "VALID", "dilation": 1, "groups": 1, "data_format": "NHWC", "kernel_format": None,
}


@dataclasses.dataclass
class ConvComparison:
    """Outcome of comparing one conv output with the exact result under a tolerance model.

    ``passed`` is the verdict; ``message`` is the full failure text (empty when
    passed); ``findings`` are the diagnosis (refconv.testing's own), and
    ``attribution`` the :class:`~refconv.attribution.Attribution` when it ran.
    ``worst`` lists the worst elements as dicts (index in the caller's layout).

    >>> import numpy as np
    >>> x, w = np.ones((1, 3, 3, 1), np.float32), np.ones((2, 2, 1, 1), np.float32)
    >>> c = compare_conv2d(np.full((1, 2, 2, 1), 4.0), x, w)
    >>> c.passed, c.n_fail, c.to_dict()["n_total"]
    (True, 0, 4)
    """

    passed: bool
    n_fail: int
    n_total: int
    max_abs_error: float
    max_tol_ratio: float
    worst: list[dict[str, Any]]
    findings: list[Finding]
    message: str
    model: str
    label: str = "actual"
    shape_mismatch: bool = False
    attribution: Any = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "passed": self.passed,
            "label": self.label,
            "n_fail": self.n_fail,
            "n_total": self.n_total,
            "max_abs_error": _num(self.max_abs_error),
            "max_tol_ratio": _num(self.max_tol_ratio),
            "worst": [{k: _num(v) for k, v in d.items()} for d in self.worst],
            "findings": [f.to_dict() for f in self.findings],
            "model": self.model,
            "shape_mismatch": self.shape_mismatch,
            "attribution": None if self.attribution is None else _att_dict(self.attribution),
            "notes": list(self.notes),
            "message": self.message,
        }


def _num(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if np.isfinite(v) else str(v)
    if isinstance(v, tuple):
        return list(v)
    return v


def _att_dict(att: Any) -> Any:
    try:
        return att.to_dict()
    except Exception:
        return str(att)


def call_kernel(fn: Callable[..., Any], x: Any, w: Any, b: Any, spec: ConvSpec) -> Any:
    """Call a user kernel as ``fn(x, w, b, spec)``, ``fn(x, w)`` or ``fn(x, w, b)``, by its signature.

    Four or more positional parameters (or a ``spec`` keyword) get the spec;
    exactly two get ``fn(x, w)`` (a given bias is then reported missing);
    otherwise ``fn(x, w, b)``.

    The inputs are passed exactly as the caller gave them (same arrays, same
    layouts); ``spec`` is the validated :class:`~refconv.spec.ConvSpec` carrying
    stride, pads, dilation, groups and layouts.

    >>> call_kernel(lambda x, w, b: x + w, 1, 2, None, None)
    3
    """
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return fn(x, w, b, spec)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind == p.VAR_POSITIONAL for p in params) or len(positional) >= 4:
        return fn(x, w, b, spec)
    if any(p.name == "spec" for p in params) or any(p.kind == p.VAR_KEYWORD for p in params):
        return fn(x, w, b, spec=spec)
    if len(positional) == 2:  # a bias-less kernel fn(x, w): a given bias is then reported missing
        return fn(x, w)
    return fn(x, w, b)


def _resolve_actual(actual: Any, x: Any, w: Any, b: Any, spec: ConvSpec) -> tuple[np.ndarray | None, str, list[str]]:
    from ..frameworks.base import FrameworkRun

    notes: list[str] = []
    label = "the output"
    if isinstance(actual, FrameworkRun):
        label = actual.label
        if not actual.ok:
            return None, label, [f"framework run {label} failed: {actual.error}"]
        notes.extend(actual.notes)
        return as_float64(actual.output, "actual"), label, notes
    if callable(actual) and not hasattr(actual, "shape"):
        label = getattr(actual, "__name__", "kernel")
        return as_float64(call_kernel(actual, x, w, b, spec), "actual"), label, notes
    return as_float64(actual, "actual"), label, notes


def _user_tolerance(t: Tolerance, spec: ConvSpec, rtol: float | None, atol: float | None, tol: Any) -> Tolerance:
    abs_exact = np.where(np.isfinite(t.exact_nhwc), np.abs(t.exact_nhwc), 0.0)
    if tol is not None:
        arr = np.broadcast_to(as_float64(np.asarray(tol), "tol"), spec.output_shape)
        new, desc = spec.y_to_nhwc(np.array(arr)), "user per-element tolerance array"
    else:
        new = (atol or 0.0) + (rtol or 0.0) * abs_exact
        desc = f"user tolerance atol={atol or 0.0:g} + rtol={rtol or 0.0:g}*|exact|"
    return dataclasses.replace(t, tol_nhwc=new, overflow_nhwc=np.zeros_like(t.overflow_nhwc), description=desc,
                               user_override=desc)


def _attribute(actual: np.ndarray, x: Any, w: Any, b: Any, geometry: dict, precision: str,
               inputs_seen: dict | None) -> tuple[Any, str | None]:
    """Run refconv.attribute if it exists; never let it break the assertion."""
    try:
        from ..attribution import attribute  # type: ignore[attr-defined]
    except ImportError as exc:
        return None, f"attribution unavailable ({exc})"
    kwargs: dict[str, Any] = dict(geometry, dtype=precision)
    if inputs_seen:
        kwargs["inputs_seen"] = inputs_seen
    try:
        return attribute(actual, x, w, b, **kwargs), None
    except Exception as exc:  # attribution is advisory here
        return None, f"attribution did not run ({type(exc).__name__}: {exc})"


def _fmt_index(i: tuple) -> str:
    return "(" + ", ".join(str(int(v)) for v in i) + ")"


def _worst(a_nhwc, t: Tolerance, err, ratio, spec: ConvSpec, k: int) -> list[dict[str, Any]]:
    flat = np.where(np.isnan(ratio), np.inf, ratio).ravel()
    order = np.argsort(-flat, kind="stable")[:k]
    fout = get_format(t.output)
    uacc = get_format(t.accumulation).u
    rows = []
    for f in order:
        idx = np.unravel_index(f, a_nhwc.shape)
        ex = t.exact_nhwc[idx]
        e = err[idx]
        ulps = e / ulp(np.array([ex]), fout)[0] if np.isfinite(ex) else float("nan")
        scale = uacc * t.magnitude_nhwc[idx]
        caller = idx if spec.data_format == "NHWC" else (idx[0], idx[3], idx[1], idx[2])
        rows.append({
            "index": tuple(int(v) for v in caller),
            "actual": float(a_nhwc[idx]),
            "exact": float(ex),
            "abs_error": float(e),
            "ulps": float(ulps),
            "bound_ratio": float(e / scale) if scale > 0 else (0.0 if e == 0 else float("inf")),
            "tolerance": float(t.tol_nhwc[idx]),
            "tol_ratio": float(ratio[idx]),
        })
    return rows


def compare_conv2d(
    actual: Any,
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
    precision: str = "float32",
    accumulation: str | None = None,
    bound: str = "deterministic",
    rtol: float | None = None,
    atol: float | None = None,
    tol: Any = None,
    explain: bool = True,
    max_positions: int = 5,
    tolerance: Tolerance | None = None,
    detect_precision: bool = True,
) -> ConvComparison:
    """Non-raising core of :func:`assert_conv2d_close`: returns a :class:`ConvComparison`.

    Same arguments as :func:`assert_conv2d_close`, plus ``explain=False`` to skip
    attribution and diagnosis on failure (faster, message without explanation)
    and ``tolerance``: a :class:`~refconv.testing.Tolerance` from
    :func:`~refconv.testing.conv2d_tolerance` for the same inputs and model, to
    reuse when checking several outputs of one problem.

    >>> import numpy as np
    >>> x, w = np.ones((1, 3, 3, 1), np.float32), np.ones((2, 2, 1, 1), np.float32)
    >>> c = compare_conv2d(np.full((1, 2, 2, 1), 4.5), x, w)
    >>> c.passed, c.n_fail
    (False, 4)
    """
    geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, data_format=data_format,
                    kernel_format=kernel_format)
    from ..frameworks.base import FrameworkRun

    inputs_seen = None
    if isinstance(actual, FrameworkRun):
        if actual.spec is not None and all(geometry[k] == v for k, v in _GEOMETRY_DEFAULTS.items()):
            s = actual.spec
            geometry = dict(stride=s.stride, padding=s.padding, dilation=s.dilation, groups=s.groups,
                            data_format=s.data_format, kernel_format=s.kernel_format)
        inputs_seen = {k: v for k, v in actual.inputs_seen.items() if v is not None} or None
    precision = precision_name(precision)
    if accumulation is not None:
        accumulation = get_format(accumulation).name
    if bound not in BOUNDS:
        from ..errors import unknown_name

        raise unknown_name("bound", bound, tuple(BOUNDS))
    xf, wf, bf, spec = prepare(x, w, b, **geometry)
    a, label, notes = _resolve_actual(actual, x, w, b, spec)
    sn = nhwc_spec(spec)
    xn, wn = spec.x_to_nhwc(xf), spec.w_to_hwio(wf)
    if a is None:
        msg = f"conv2d: {label} produced no output to compare. " + " ".join(notes)
        return ConvComparison(False, -1, int(np.prod(spec.output_shape)), float("nan"), float("inf"), [], [], msg,
                              "", label, notes=notes)
    if tolerance is not None and tolerance.spec.output_shape in (spec.output_shape, sn.output_shape):
        t = tolerance
    else:
        t = tolerance_nhwc(xn, wn, bf, sn, precision=precision, accumulation=accumulation, bound=bound)
    if rtol is not None or atol is not None or tol is not None:
        t = _user_tolerance(t, spec, rtol, atol, tol)
    model = t.description
    header = f"conv2d: {label} does not match the exact cross-correlation"

    if a.shape != spec.output_shape:
        return _shape_mismatch(a, xn, wn, bf, spec, sn, t, label, header, notes, precision, accumulation, bound)

    an = spec.y_to_nhwc(a)
    ex = t.exact_nhwc
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(an - ex)
        same_nonfinite = (np.isnan(an) & np.isnan(ex)) | (np.isinf(ex) & (an == ex))
        ok = same_nonfinite | (np.isfinite(ex) & (err <= t.tol_nhwc)) | (np.isfinite(ex) & t.overflow_nhwc)
        ratio = np.where(ok & ~np.isfinite(err), 0.0, err / np.where(t.tol_nhwc > 0, t.tol_nhwc, np.inf))
        ratio = np.where((~ok) & ~(ratio > 1), np.inf, ratio)  # failing elements always rank above passing ones
        ratio = np.where(ok & (err == 0), 0.0, ratio)
    failing = ~ok
    nfail, total = int(failing.sum()), int(failing.size)
    max_err = float(np.max(np.where(np.isfinite(err), err, 0.0), initial=0.0))
    if np.any(failing & ~np.isfinite(err)):
        max_err = float("nan") if np.any(failing & np.isnan(err)) else float("inf")
    max_ratio = float(np.max(np.where(np.isnan(ratio), np.inf, ratio), initial=0.0))
    if nfail == 0:
        sig = None
        if detect_precision and t.user_override is None:
            sig = precision_signature(an, xn, wn, bf, sn, ex, precision=precision, accumulation=accumulation,
                                      bound=bound)
        if sig is None:
            return ConvComparison(True, 0, total, max_err, max_ratio, [], [], "", model, label, notes=notes)
        lines = [
            f"{header}: its error has the signature of a lower input precision than {precision}",
            f"All {total} elements are within the per-element tolerance (max error/tolerance {max_ratio:.4g}), "
            "but the inputs were evidently rounded below the claimed precision",
            f"Tolerance model: {model}",
            f"Diagnosis ({sig.kind}): {sig.statement}",
            f"Spec: {spec.describe()}",
            *[f"Note: {n}" for n in notes],
            "Pass detect_precision=False to accept any output within the bound.",
        ]
        return ConvComparison(False, 0, total, max_err, max_ratio, [], [sig], "\n".join(lines), model, label,
                              notes=notes)

    worst = _worst(an, t, err, ratio, spec, max_positions)
    lines = [
        f"{header} within its tolerance",
        f"Mismatched elements: {nfail} / {total} ({100.0 * nfail / total:.3g}%) exceed the per-element tolerance",
        f"Tolerance model: {model}",
        f"Max |actual - exact|: {max_err:.6g}; max error/tolerance: {max_ratio:.4g}",
        f"Worst elements ({spec.data_format} index: actual, exact, |error|, ulps in {t.output}, bound ratio "
        f"|error|/(u*sum|x*w|) vs n={t.n_terms}, error/tolerance):",
    ]
    for r in worst:
        lines.append(
            f"  {_fmt_index(r['index'])}: actual={r['actual']:.9g} exact={r['exact']:.9g} |error|={r['abs_error']:.3g}"
            f" ulps={r['ulps']:.4g} bound_ratio={r['bound_ratio']:.4g} error/tol={r['tol_ratio']:.4g}"
        )
    findings: list[Finding] = []
    att = None
    if explain:
        findings = diagnose(an, xn, wn, bf, sn, precision=precision, accumulation=accumulation, bound=bound,
                            failing=failing, padding_label=repr(spec.padding), excess=ratio,
                            data_format=spec.data_format)
        att, why = _attribute(actual if inputs_seen is not None else a, x, w, b, geometry, precision, inputs_seen)
        lines.extend(_explanation_lines(att, why, findings))
        if any(f.kind == "arithmetic" for f in findings) and t.user_override is None:
            lines.append(_excess_note(t, precision, err, failing))
    lines.append(f"Spec: {spec.describe()}")
    lines.extend(f"Note: {n}" for n in notes)
    return ConvComparison(False, nfail, total, max_err, max_ratio, worst, findings, "\n".join(lines), model, label,
                          attribution=att, notes=notes)


def _excess_note(t: Tolerance, precision: str, err: np.ndarray, failing: np.ndarray) -> str:
    uacc = get_format(t.accumulation).u
    with np.errstate(invalid="ignore", divide="ignore"):
        br = err / (uacc * t.magnitude_nhwc)
    worst = float(np.nanmax(np.where(failing & np.isfinite(br), br, 0.0)))
    return (f"Bound check: the worst error is {worst:.4g} x u*sum|x*w|, beyond the plain {precision} "
            f"{t.bound} bound of ~{t.gamma / uacc:.4g} x u*sum|x*w| for n={t.n_terms} terms")


def _explanation_lines(att: Any, why: str | None, findings: list[Finding]) -> list[str]:
    lines = []
    att_names_fault = False
    if att is not None:
        mismatch = getattr(att, "mismatch", None)
        expl = getattr(att, "explanation", "") or ""
        att_names_fault = bool(mismatch and mismatch != "unexplained") or getattr(att, "verdict", "") == "mismatch"
        if expl:
            lines.append(f"Explanation (refconv.attribute): {expl}")
    elif why:
        lines.append(f"Note: {why}")
    if findings:
        prefix = "Also consistent with" if att_names_fault else "Diagnosis"
        for f in findings:
            lines.append(f"{prefix} ({f.kind}): {f.statement}")
    elif not att_names_fault:
        lines.append("Diagnosis: no tested fault class (padding, kernel orientation/layout, bias, precision, "
                     "isolated corruption) explains the output")
    return lines


def _shape_mismatch(a, xn, wn, bf, spec, sn, t, label, header, notes, precision, accumulation, bound):
    lines = [f"{header}: output shape {a.shape} differs from the expected {spec.output_shape} "
             f"({spec.data_format})"]
    findings: list[Finding] = []
    if a.ndim == 4:
        other = "NCHW" if spec.data_format == "NHWC" else "NHWC"
        perm = (0, 3, 1, 2) if spec.data_format == "NHWC" else (0, 2, 3, 1)
        if tuple(np.array(spec.output_shape)[list(perm)]) == a.shape:
            an = a.transpose(0, 2, 3, 1) if other == "NCHW" else a
            if np.all(np.abs(an - t.exact_nhwc) <= t.tol_nhwc):
                findings.append(Finding("layout", f"output is in {other} layout, but data_format={spec.data_format!r}"))
        if not findings:
            an = spec.y_to_nhwc(a)
            if an.shape[0] == sn.N and an.shape[3] == sn.O:
                findings = diagnose(an, xn, wn, bf, sn, precision=precision, accumulation=accumulation, bound=bound,
                                    padding_label=repr(spec.padding))
    lines.extend(f"Diagnosis ({f.kind}): {f.statement}" for f in findings)
    lines.append(f"Spec: {spec.describe()}")
    return ConvComparison(False, int(np.prod(spec.output_shape)), int(np.prod(spec.output_shape)), float("nan"),
                          float("inf"), [], findings, "\n".join(lines), t.description, label, shape_mismatch=True,
                          notes=notes)


def assert_conv2d_close(
    actual: Any,
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
    precision: str = "float32",
    accumulation: str | None = None,
    bound: str = "deterministic",
    rtol: float | None = None,
    atol: float | None = None,
    tol: Any = None,
    explain: bool = True,
    max_positions: int = 5,
    detect_precision: bool = True,
) -> None:
    """Assert that a conv output is within the error bound of ``precision`` of the exact result.

    ``actual`` is an array (any float dtype, torch/TF tensors too) in
    ``data_format``; a :class:`~refconv.frameworks.FrameworkRun` (its output;
    its spec's geometry is used when no geometry is passed); or a callable,
    called as ``fn(x, w, b, spec)`` when it takes four positional arguments (or
    a ``spec`` keyword), ``fn(x, w)`` when it takes two, and ``fn(x, w, b)``
    otherwise, with the inputs exactly as given here and the validated
    :class:`~refconv.spec.ConvSpec`. ``precision`` is case-insensitive and
    accepts aliases ("fp32", "fp16", "half", "bf16", "TF32") and NumPy dtypes.
    The reference is the exact cross-correlation (correctly rounded, float64)
    with the given geometry; layouts as in :func:`refconv.conv2d`.

    The per-element tolerance is input rounding + accumulation bound + output
    rounding for ``precision`` (see :mod:`refconv.testing.tolerance`);
    ``accumulation`` overrides the accumulation format; ``bound`` is
    "deterministic" (rigorous) or "probabilistic" (λ√n·u, tighter, for random
    data). ``rtol``/``atol`` (numpy-style, relative to |exact|) or ``tol`` (a
    per-element array broadcastable to the output) replace the model entirely.

    With ``detect_precision=True`` (default) an output within the bound still
    fails when its error carries the signature of inputs rounded below the
    claimed precision (TF32/float16/bfloat16 passed off as float32): at large n
    the worst-case bound is loose enough to hide them (see
    :func:`~refconv.testing.diagnosis.precision_signature`).
    ``explain=False`` skips the diagnosis and attribution (faster failures);
    ``max_positions`` is how many worst elements to list.

    Passes silently; otherwise raises ``AssertionError`` with how many elements
    exceed the bound, the worst ones (value, exact, ULPs, bound ratio) and an
    explanation of the fault (padding, kernel flip/layout, bias, precision,
    corrupted elements, or excess arithmetic error). Its frames are hidden from
    pytest tracebacks.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x, w = rng.random((1, 6, 6, 2), dtype=np.float32), rng.random((3, 3, 2, 4), dtype=np.float32)
    >>> import refconv
    >>> y32 = refconv.conv2d(x, w, padding="SAME").astype(np.float32)
    >>> assert_conv2d_close(y32, x, w, padding="SAME")                 # honest float32 passes
    >>> y_lower = refconv.conv2d(x, w, padding="SAME_LOWER", stride=2)
    >>> try:
    ...     assert_conv2d_close(y_lower, x, w, padding="SAME", stride=2)
    ... except AssertionError as e:
    ...     print(str(e).splitlines()[1]); print("SAME_LOWER" in str(e))
    Mismatched elements: 36 / 36 (100%) exceed the per-element tolerance
    True
    """
    __tracebackhide__ = True
    c = compare_conv2d(
        actual, x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups, data_format=data_format,
        kernel_format=kernel_format, precision=precision, accumulation=accumulation, bound=bound, rtol=rtol,
        atol=atol, tol=tol, explain=explain, max_positions=max_positions, detect_precision=detect_precision,
    )
    if not c.passed:
        raise AssertionError(c.message)
