"""Matplotlib figures of an :class:`~refconv.attribution.Attribution`'s per-element arrays.

Every function returns PNG bytes (Agg backend, nothing is shown). matplotlib is
imported on first call, never by ``import refconv`` or ``import refconv.report``.

* :func:`error_heatmap_png` — max |error| over batch and channels at each output
  position: padding mistakes show up as borders, corrupted pixels as dots.
* :func:`ulp_histogram_png` — ULP errors with the deterministic (≈ n) and
  probabilistic (≈ √n) bounds marked, converted to ULPs.
* :func:`error_scatter_png` — |error| against Σ|x·w| per element with the bound lines.
* :func:`pair_distributions_png` — two runs' error distributions side by side.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

__all__ = [
    "UNIT_ROUNDOFF",
    "error_heatmap_png",
    "ulp_histogram_png",
    "error_scatter_png",
    "pair_distributions_png",
    "channel_axis",
]

#: Unit roundoff u of each precision label (NUMERICS.md).
UNIT_ROUNDOFF: dict[str, float] = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "tf32": 2.0**-11,
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
}

_SCATTER_MAX_POINTS = 20000
_DPI = 90


def _pyplot() -> Any:
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def channel_axis(att: Any) -> int:
    """Channel axis of the attribution's output arrays (from its spec's data_format).

    >>> from types import SimpleNamespace
    >>> channel_axis(SimpleNamespace(spec={"data_format": "NCHW"})), channel_axis(SimpleNamespace(spec={}))
    (1, 3)
    """
    fmt = (getattr(att, "spec", None) or {}).get("data_format", "NHWC")
    return 1 if str(fmt).upper() == "NCHW" else 3


def _position_map(att: Any, values: np.ndarray) -> np.ndarray:
    """Reduce a 4-D output-shaped array to H×W by max over batch and channels (NaN-aware)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 4:
        return np.atleast_2d(v)
    v = np.moveaxis(v, channel_axis(att), 3)
    v = np.where(np.isnan(v), np.inf, v)
    return v.max(axis=(0, 3))


def _title(att: Any) -> str:
    prec = att.precision if att.precision is not None else "—"
    extra = f", mismatch={att.mismatch}" if att.mismatch else ""
    return f"{att.label}: verdict={att.verdict}, precision={prec}{extra}"


def _finite_positive(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).ravel()
    return a[np.isfinite(a) & (a > 0)]


def error_heatmap_png(att: Any) -> bytes:
    """PNG heatmap of max |error| over batch and channels at each output position.

    >>> import numpy as np; from types import SimpleNamespace
    >>> att = SimpleNamespace(label="demo", verdict="ok", precision="float32", mismatch=None,
    ...                       spec={"data_format": "NHWC"}, error=np.zeros((1, 4, 5, 2)))
    >>> error_heatmap_png(att)[:4]
    b'\\x89PNG'
    """
    plt = _pyplot()
    err = np.abs(np.asarray(att.error, dtype=np.float64))
    m = _position_map(att, err)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    finite = m[np.isfinite(m)]
    vmax = float(finite.max()) if finite.size else 1.0
    im = ax.imshow(np.where(np.isfinite(m), m, vmax), cmap="magma", aspect="auto", interpolation="nearest",
                   vmin=0.0, vmax=vmax if vmax > 0 else 1.0)
    fig.colorbar(im, ax=ax, label="max |y − exact| over N, C")
    ax.set_xlabel("output column")
    ax.set_ylabel("output row")
    ax.set_title(_title(att), fontsize=9)
    return _png(fig)


def _ulp_per_ratio(att: Any) -> float | None:
    """Median of ulp / bound_ratio = u·Σ|x·w| / ulp(exact): converts bound-ratio units to ULPs."""
    if att.ulp is None or att.bound_ratio is None:
        return None
    ulp = np.asarray(att.ulp, dtype=np.float64).ravel()
    ratio = np.asarray(att.bound_ratio, dtype=np.float64).ravel()
    ok = np.isfinite(ulp) & np.isfinite(ratio) & (ulp > 0) & (ratio > 0)
    if not ok.any():
        return None
    return float(np.median(ulp[ok] / ratio[ok]))


def ulp_histogram_png(att: Any) -> bytes:
    """PNG histogram of the ULP errors, with the deterministic and probabilistic bounds marked.

    The bounds are γ_n·Σ|x·w| ≈ n·u·Σ|x·w| and √n·u·Σ|x·w| (Higham 2002 §3.1;
    Higham & Mary 2019), converted to ULPs of the output with the median factor
    ``ulp / bound_ratio`` over elements.

    >>> import numpy as np; from types import SimpleNamespace
    >>> att = SimpleNamespace(label="demo", verdict="ok", precision="float32", mismatch=None, spec={},
    ...                       ulp=np.arange(6.0), bound_ratio=np.arange(6.0) / 2, deterministic_bound=9.0,
    ...                       probabilistic_bound=3.0, max_ulp=5.0)
    >>> ulp_histogram_png(att)[:4]
    b'\\x89PNG'
    """
    plt = _pyplot()
    ulp = np.asarray(att.ulp, dtype=np.float64).ravel()
    fin = ulp[np.isfinite(ulp)]
    pos = fin[fin > 0]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    factor = _ulp_per_ratio(att)
    marks = []
    if factor is not None:
        p_ulp, d_ulp = att.probabilistic_bound * factor, att.deterministic_bound * factor
        marks = [
            (p_ulp, f"probabilistic ≈ √n·u·Σ|x·w| ({p_ulp:.3g} ulp)", "tab:orange"),
            (d_ulp, f"deterministic ≈ n·u·Σ|x·w| ({d_ulp:.3g} ulp)", "tab:red"),
        ]
    # log x: ULP errors span decades, and the bounds sit one to three decades above typical errors
    hi = max([float(pos.max()) if pos.size else 1.0] + [m[0] for m in marks if np.isfinite(m[0])]) * 1.3
    lo = max(float(pos.min()) if pos.size else hi * 1e-3, hi * 1e-6) / 1.3
    ax.hist(pos, bins=np.geomspace(lo, hi, 61), color="tab:blue", alpha=0.85)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    if pos.size:
        ax.set_yscale("log")
    for value, text, color in marks:
        ax.axvline(value, color=color, linestyle="--", label=text)
    hidden = []
    if fin.size > pos.size:
        hidden.append(f"{fin.size - pos.size} exact")
    if fin.size < ulp.size:
        hidden.append(f"{ulp.size - fin.size} non-finite")
    if hidden:
        ax.plot([], [], " ", label=" and ".join(hidden) + " elements not shown")
    ax.set_xlabel(f"|y − exact| in ULPs of {getattr(att, 'output_dtype', '') or 'the output dtype'} (log scale)")
    ax.set_ylabel("elements")
    ax.set_title(_title(att), fontsize=9)
    if marks or hidden:
        ax.legend(fontsize=7, loc="upper right")
    return _png(fig)


def error_scatter_png(att: Any, *, unit_roundoff: float | None = None, seed: int = 0) -> bytes:
    """PNG scatter of |error| against Σ|x·w| per element (log–log), with the bound lines.

    Lines: n·u·Σ|x·w| (deterministic) and √n·u·Σ|x·w| (probabilistic) with u the
    unit roundoff of the requested dtype (or ``unit_roundoff``); when the detected
    precision differs, its deterministic line is drawn too. At most 20 000
    elements are plotted (a seeded random subset).

    >>> import numpy as np; from types import SimpleNamespace
    >>> att = SimpleNamespace(label="demo", verdict="ok", precision="float32", mismatch=None, spec={},
    ...                       requested_dtype="float32", n_terms=9, error=np.full(8, 1e-6),
    ...                       magnitude=np.linspace(1, 8, 8))
    >>> error_scatter_png(att)[:4]
    b'\\x89PNG'
    """
    plt = _pyplot()
    err = np.abs(np.asarray(att.error, dtype=np.float64)).ravel()
    mag = np.asarray(att.magnitude, dtype=np.float64).ravel()
    keep = np.isfinite(err) & np.isfinite(mag) & (mag > 0)
    err, mag = err[keep], mag[keep]
    if err.size > _SCATTER_MAX_POINTS:
        idx = np.random.default_rng(seed).choice(err.size, _SCATTER_MAX_POINTS, replace=False)
        err, mag = err[idx], mag[idx]
    zero = err == 0
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    n = max(int(getattr(att, "n_terms", 1) or 1), 1)
    u = unit_roundoff if unit_roundoff is not None else UNIT_ROUNDOFF.get(str(att.requested_dtype), 2.0**-24)
    pos_err = err[~zero]
    floor = float(pos_err.min()) / 4 if pos_err.size else u
    ax.scatter(mag[~zero], pos_err, s=2, alpha=0.35, color="tab:blue", rasterized=True,
               label=f"elements ({zero.sum()} exact, drawn at the floor)" if zero.any() else "elements")
    if zero.any():
        ax.scatter(mag[zero], np.full(int(zero.sum()), floor), s=2, alpha=0.35, color="tab:gray", rasterized=True)
    if mag.size:
        xs = np.geomspace(float(mag.min()), float(mag.max()) if mag.max() > mag.min() else float(mag.min()) * 2, 50)
        ax.plot(xs, n * u * xs, color="tab:red", linestyle="--", label=f"n·u·Σ|x·w| (n={n}, u={u:.3g})")
        ax.plot(xs, math.sqrt(n) * u * xs, color="tab:orange", linestyle="--", label="√n·u·Σ|x·w|")
        prec = att.precision
        if prec in UNIT_ROUNDOFF and UNIT_ROUNDOFF[prec] != u:
            up = UNIT_ROUNDOFF[prec]
            ax.plot(xs, n * up * xs, color="tab:purple", linestyle=":", label=f"n·u·Σ|x·w| for {prec} (u={up:.3g})")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("Σ|x·w| (magnitude of the terms)")
    ax.set_ylabel("|y − exact|")
    ax.set_title(_title(att), fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def pair_distributions_png(att_a: Any, att_b: Any, *, statement: str | None = None) -> bytes:
    """PNG of two runs' signed error distributions side by side (each on its own scale), plus both on log10|error|.

    >>> import numpy as np; from types import SimpleNamespace
    >>> a = SimpleNamespace(label="a", error=np.linspace(-1e-3, 1e-3, 50))
    >>> b = SimpleNamespace(label="b", error=np.zeros(50))
    >>> pair_distributions_png(a, b)[:4]
    b'\\x89PNG'
    """
    plt = _pyplot()
    ea = np.asarray(att_a.error, dtype=np.float64).ravel()
    eb = np.asarray(att_b.error, dtype=np.float64).ravel()
    ea, eb = ea[np.isfinite(ea)], eb[np.isfinite(eb)]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, e, att, color in ((axes[0], ea, att_a, "tab:blue"), (axes[1], eb, att_b, "tab:green")):
        lim = float(np.abs(e).max(initial=0.0)) or 1.0
        ax.hist(e, bins=np.linspace(-lim * 1.05, lim * 1.05, 61), color=color, alpha=0.85)
        ax.set_yscale("log")
        ax.set_title(f"{att.label}\nmax |error| {np.abs(e).max(initial=0.0):.3g}", fontsize=8)
        ax.set_xlabel("y − exact (own scale)")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
    axes[0].set_ylabel("elements")
    ax = axes[2]
    for e, att, color in ((ea, att_a, "tab:blue"), (eb, att_b, "tab:green")):
        nz = np.abs(e[e != 0])
        if nz.size:
            ax.hist(np.log10(nz), bins=60, alpha=0.6, color=color, label=f"{att.label} ({(e == 0).sum()} exact)")
    ax.set_xlabel("log10 |y − exact|")
    ax.set_title("both, log scale", fontsize=8)
    ax.legend(fontsize=7)
    if statement:
        fig.suptitle(statement, fontsize=8, wrap=True)
    fig.tight_layout()
    return _png(fig)
