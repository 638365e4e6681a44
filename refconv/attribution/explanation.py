"""Plain sentences, with the numbers, for attributions and pairwise comparisons."""

from __future__ import annotations

import math

from .models import PRECISION_MODELS
from .types import Attribution

__all__ = ["explain_attribution", "g"]


def g(v: float, digits: int = 2) -> str:
    """Compact number text: 3 significant digits by default, "nan" for missing values.

    >>> g(0.0058123), g(48.3), g(float("nan"))
    ('5.8e-03', '48', 'nan')
    """
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    if v == 0:
        return "0"
    a = abs(v)
    if 1e-2 <= a < 1e5:
        return f"{v:.{max(0, digits - 1 - int(math.floor(math.log10(a))))}f}" if a < 10**digits else f"{v:.0f}"
    return f"{v:.{digits - 1}e}"


def _measures(a: Attribution) -> str:
    u = a.extra.get("unit_roundoff", math.nan)
    return (
        f"Max |y - exact| = {g(a.max_abs_error)} ({g(a.max_ulp)} {a.output_dtype} ulps; median {g(a.median_ulp)}); "
        f"the bound ratio |y - exact|/(u·Σ|x·w|) with u = {g(u)} ({a.requested_dtype}) peaks at "
        f"{g(a.max_bound_ratio)} (median {g(a.median_bound_ratio)}) against the deterministic bound n = "
        f"{a.n_terms} and the probabilistic √n = {g(a.probabilistic_bound)}."
    )


def explain_attribution(a: Attribution) -> str:
    """A few sentences saying what explains ``a`` and how large the error is.

    >>> import numpy as np, refconv
    >>> x, w = np.ones((1, 3, 3, 1)), np.ones((2, 2, 1, 1))
    >>> print(refconv.attribute(refconv.conv2d(x, w), x, w).explanation.split(".")[0])
    output:float64 is consistent with float64 arithmetic (float64 inputs and accumulation): verdict ok
    """
    parts = []
    if a.verdict in ("ok", "degraded"):
        model = PRECISION_MODELS.get(a.extra.get("model") or "", None)
        how = f" ({model.description})" if model else ""
        tail = "" if a.verdict == "ok" else f", although {a.requested_dtype} was requested"
        parts.append(f"{a.label} is consistent with {a.precision} arithmetic{how}: verdict {a.verdict}{tail}.")
        parts.append(_measures(a))
        if a.input_cast_error == a.input_cast_error:
            ref = a.extra.get("cast_reference", "")
            if ref.startswith("intended inputs"):
                parts.append(f"The inputs were not cast; all {g(a.arithmetic_error)} of the error is arithmetic.")
            else:
                parts.append(
                    f"Casting the inputs ({ref}) accounts for {g(a.input_cast_error)} of the "
                    f"error and the arithmetic for {g(a.arithmetic_error)}."
                )
        settings = a.extra.get("precision_settings")
        if settings:
            parts.append("The run's precision settings: " + ", ".join(f"{k} = {v!r}" for k, v in settings.items())
                         + "." + (' math="ieee" asks the framework for full float32.'
                                  if a.precision == "tf32" and a.requested_dtype == "float32" else ""))
        others = [c for c in a.candidates if c != a.precision]
        if others:
            parts.append(f"The data cannot rule out {', '.join(others)} either.")
    elif a.verdict == "mismatch":
        under = a.extra.get("precision_under_mismatch")
        parts.append(
            f"{a.label} computed a different convolution: {a.mismatch_detail} (a {a.mismatch} mismatch; verdict "
            f"mismatch)." + (f" Under that reading its arithmetic is consistent with {under}." if under else "")
        )
        if a.max_abs_error == a.max_abs_error:
            parts.append(f"Against the intended conv the max |y - exact| is {g(a.max_abs_error)} "
                         f"({g(a.max_ulp)} {a.output_dtype} ulps).")
    else:
        parts.append(
            f"{a.label}: no precision model or semantic hypothesis explains the output; verdict unexplained, a "
            f"likely bug. {a.mismatch_detail}."
        )
        if a.max_abs_error == a.max_abs_error:
            parts.append(_measures(a))
    if a.condition_number == a.condition_number:
        parts.append(f"The median condition number Σ|x·w|/|Σx·w| is {g(a.condition_number)}.")
    return " ".join(parts)
