"""Present a :class:`~refconv.attribution.Report`: text table, JSON document, self-contained HTML.

Everything the ``refconv`` command prints comes from these functions, so it can
be reproduced from Python:

* :func:`render_text` — one table row per run (max abs error, max ULP, bound
  ratio, precision, mismatch, verdict), then the pairwise conclusions and the
  explanation sentences.
* :func:`report_document` — the ``--json`` document ``{"runs", "pairs", "spec",
  "environment", "oracle"}``; each run has at least ``framework``, ``device``,
  ``dtype``, ``precision``, ``mismatch``, ``verdict``, ``max_abs_error``,
  ``max_ulp`` and ``explanation``.
* :func:`render_html` / :func:`write_html` — one HTML file with inline PNG figures
  (:mod:`refconv.report.figures`); readable without a server.
* :func:`exit_status` — 0 when every run is "ok", 1 otherwise.
* :func:`seed_answer` — the plain answer to the seed notebook's question.

``import refconv.report`` imports numpy only; matplotlib loads when a figure is drawn.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "RUN_FIELDS",
    "render_text",
    "render_table",
    "report_document",
    "report_json",
    "render_html",
    "write_html",
    "exit_status",
    "run_label",
    "seed_answer",
]

_MAX_TEXT_PAIRS = 6

#: Keys every run record of :func:`report_document` carries (None where unknown).
RUN_FIELDS = ("framework", "device", "dtype", "precision", "mismatch", "verdict", "max_abs_error", "max_ulp",
              "explanation")


def _fmt(v: Any, digits: int = 3) -> str:
    """Short number formatting for tables: 5.8e-03, 48, —."""
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return "nan"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    if f == 0:
        return "0"
    if f == int(f) and abs(f) < 1e6:
        return str(int(f))
    if 1e-2 <= abs(f) < 1e4:
        return f"{f:.{digits}g}"
    return f"{f:.{digits - 1}e}"


def run_label(run: Any) -> str:
    """Label of a run: ``FrameworkRun.label`` or ``str(run)``.

    >>> from refconv.frameworks import FrameworkRun
    >>> run_label(FrameworkRun("torch", "2", "cpu", "cpu", "float64", "default", None))
    'torch:cpu:float64'
    """
    return str(getattr(run, "label", run))


def _rows(report: Any) -> list[tuple[Any, Any]]:
    return list(zip(report.runs, report.attributions))


def render_table(report: Any) -> str:
    """Fixed-width table, one row per run.

    The bound-ratio column is max |y − exact| / (u·Σ|x·w|) against the
    deterministic bound ≈ n (typical honest rounding gives about √n).

    >>> from refconv.attribution import Report
    >>> print(render_table(Report(spec={}, runs=[], attributions=[], pairs=[])))
    run  max abs error  max ULP  bound ratio / n  precision  mismatch  verdict
    """
    header = ("run", "max abs error", "max ULP", "bound ratio / n", "precision", "mismatch", "verdict")
    rows = []
    for run, att in _rows(report):
        if att is None:
            rows.append((run_label(run), "—", "—", "—", "—", "—", "FAILED (see below)"))
            continue
        rows.append((
            att.label or run_label(run),
            _fmt(att.max_abs_error),
            _fmt(att.max_ulp),
            f"{_fmt(att.max_bound_ratio)} / {_fmt(att.deterministic_bound)}",
            att.precision or "—",
            att.mismatch or "—",
            att.verdict,
        ))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    if rows:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_text(report: Any, *, answer: str | None = None) -> str:
    """The full text report: spec line, table, pairwise conclusions, explanations.

    >>> from refconv.attribution import Report
    >>> print(render_text(Report(spec={"x_shape": [1, 4, 4, 1]}, runs=[], attributions=[], pairs=[])))
    conv: x_shape=[1, 4, 4, 1]
    <BLANKLINE>
    run  max abs error  max ULP  bound ratio / n  precision  mismatch  verdict
    """
    out = []
    spec = report.spec or {}
    if spec:
        keys = ("x_shape", "w_shape", "has_bias", "stride", "padding", "pads", "dilation", "groups", "data_format",
                "output_shape", "n_terms")
        out.append("conv: " + ", ".join(f"{k}={spec[k]}" for k in keys if k in spec))
    oracle = report.oracle or {}
    if oracle:
        out.append("oracle: " + ", ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in oracle.items()
                                          if not isinstance(v, (dict, list))))
    out.append("")
    out.append(render_table(report))
    if report.pairs:
        out += ["", "Pairwise:"]
        shown, rest = list(report.pairs), []
        if len(shown) > _MAX_TEXT_PAIRS:  # many runs: state the pairs with a wrong side, summarize the others
            shown = [p for p in report.pairs if p.wrong != "neither"]
            rest = [p for p in report.pairs if p.wrong == "neither"]
        out += [_wrap(p.statement, "  - ", "    ") for p in shown]
        if rest:
            gap = max(p.max_abs_diff for p in rest)
            out.append(f"  - {len(rest)} more pairs: neither side is wrong (largest gap {_fmt(gap)}); --json and "
                       "--html list every pair")
    explained = [(run, att) for run, att in _rows(report) if att is not None and att.explanation]
    if explained:
        out += ["", "Explanations:"]
        for run, att in explained:
            out.append(_wrap(f"{att.label or run_label(run)}: {att.explanation}", "  ", "    "))
            tol = _tolerance_text(att.suggested_tolerance)
            if tol:
                out.append(_wrap(f"suggested tolerance: {tol}", "      ", "        "))
    failed = [run for run, att in _rows(report) if att is None]
    if failed:
        out += ["", "Failed runs:"]
        out += [_wrap(f"{run_label(r)}: {_one_line(_failure(r))}", "  ", "    ") for r in failed]
    if answer:
        out += ["", "Answer:", *(_wrap(line, "  ", "    ") for line in answer.splitlines())]
    return "\n".join(out)


def _tolerance_text(tol: dict[str, Any] | None) -> str:
    """Short form of a suggested tolerance: the formula when given, then the numbers."""
    if not tol:
        return ""
    skip = {"formula", "model", "precision"}
    nums = ", ".join(f"{k}={_fmt(v)}" for k, v in tol.items() if k not in skip and not isinstance(v, (dict, list)))
    formula = tol.get("formula")
    return f"{formula} with {nums}" if formula else nums


def report_document(report: Any, **extra: Any) -> dict[str, Any]:
    """The JSON-ready document ``{"runs", "pairs", "spec", "environment", "oracle", ...extra}``.

    Built on ``Report.to_dict()``; every run record additionally carries
    :data:`RUN_FIELDS` (None where a run failed) and ``ok``.

    >>> from refconv.attribution import Report
    >>> sorted(report_document(Report(spec={}, runs=[], attributions=[], pairs=[])))
    ['environment', 'oracle', 'pairs', 'runs', 'spec']
    """
    doc = report.to_dict()
    for rec, (run, att) in zip(doc["runs"], _rows(report)):
        for key in RUN_FIELDS:
            rec.setdefault(key, getattr(run, key, None))
        rec.setdefault("label", run_label(run))
        rec["ok"] = att is not None and att.verdict == "ok"
        if att is None and rec.get("explanation") is None:
            rec["explanation"] = f"run failed: {_failure(run)}"
    doc.update(extra)
    return doc


_TEXT_WIDTH = 110


def _wrap(text: str, first: str, rest: str) -> str:
    """Wrap one paragraph for the terminal (long words such as labels are never split)."""
    import textwrap

    return textwrap.fill(text, width=_TEXT_WIDTH, initial_indent=first, subsequent_indent=rest,
                         break_long_words=False, break_on_hyphens=False)


def _failure(run: Any) -> str:
    """Why a run has no attribution: its error, or the note the attribution left."""
    if getattr(run, "error", None):
        return str(run.error)
    notes = [n for n in getattr(run, "notes", []) or [] if "attribution failed" in str(n)]
    return str(notes[-1]) if notes else "no attribution"


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (set, tuple)):
        return list(v)
    return str(v)


def report_json(report: Any, *, indent: int | None = 2, **extra: Any) -> str:
    """:func:`report_document` as a JSON string (non-finite floats become strings).

    >>> from refconv.attribution import Report
    >>> report_json(Report(spec={}, runs=[], attributions=[], pairs=[]), indent=None)
    '{"runs": [], "pairs": [], "spec": {}, "environment": {}, "oracle": {}}'
    """
    doc = report_document(report, **extra)
    return json.dumps(_finite(doc), indent=indent, default=_json_default)


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def exit_status(report: Any) -> int:
    """0 when every run was attributed "ok", else 1 (degraded, mismatch, unexplained or failed).

    >>> from refconv.attribution import Report
    >>> exit_status(Report(spec={}, runs=[], attributions=[], pairs=[]))
    0
    """
    return 0 if all(att is not None and att.verdict == "ok" for att in report.attributions) else 1


def _att_by_label(report: Any) -> dict[str, Any]:
    return {(att.label or run_label(run)): att for run, att in _rows(report) if att is not None}


def seed_answer(report: Any, prefer: tuple[str, str] | None = None) -> str:
    """Plain answer to the seed notebook's question, composed from the report's numbers.

    Takes the pair ``prefer`` (two run labels) when the report has it, else the
    widest-disagreeing pair; says which side carries the difference,
    whether each side is within its precision's bound, and what tolerance the
    lower precision actually promises for this conv.

    >>> from refconv.attribution import Report
    >>> seed_answer(Report(spec={}, runs=[], attributions=[], pairs=[]))
    'No two runs could be compared.'
    """
    atts = _att_by_label(report)
    if not report.pairs:
        return "No two runs could be compared."
    preferred = [p for p in report.pairs if prefer is not None and {p.a, p.b} == set(prefer)]
    pair = preferred[0] if preferred else max(
        report.pairs, key=lambda p: p.max_abs_diff if np.isfinite(p.max_abs_diff) else np.inf)
    statement = pair.statement[:1].upper() + pair.statement[1:]
    lines = [f"{pair.a} and {pair.b} differ by up to {_fmt(pair.max_abs_diff)}. {statement.rstrip('.')}."]
    sides = [atts[k] for k in (pair.a, pair.b) if k in atts]
    for att in sides:
        lines.append(
            f"- {att.label}: verdict {att.verdict}, precision {att.precision or '—'}; max |y − exact| "
            f"{_fmt(att.max_abs_error)} = {_fmt(att.max_ulp)} ULPs of {att.output_dtype}; bound ratio "
            f"{_fmt(att.max_bound_ratio)} against √n = {_fmt(att.probabilistic_bound)} (typical) and n = "
            f"{_fmt(att.deterministic_bound)} (rigorous)."
        )
    if sides and all(a.verdict == "ok" for a in sides):
        worse = max(sides, key=lambda a: a.max_abs_error)
        lines.append(f"Neither side has a bug: the gap is ordinary {worse.precision} rounding in {worse.label}.")
        bounds = _absolute_bounds(worse)
        if bounds is not None:
            det, prob, mag = bounds
            lines.append(
                f"For this conv (n = {worse.n_terms} terms per output, Σ|x·w| up to {_fmt(mag)}), {worse.precision} "
                f"arithmetic may err by up to γ_n·Σ|x·w| = {_fmt(det)} and typically by about √n·u·Σ|x·w| = "
                f"{_fmt(prob)}; a fixed threshold below that (such as 1e-3) tests nothing about correctness."
            )
        lines.append(
            "Compare such runs with a bound-derived tolerance, e.g. refconv.testing.assert_conv2d_close(y, x, w, b, "
            f"<geometry>, precision={worse.precision!r})."
        )
    else:
        for att in sides:
            if att.verdict != "ok":
                detail = f" ({att.mismatch_detail})" if att.mismatch_detail else ""
                lines.append(f"{att.label} is {att.verdict}{detail}: {att.explanation}")
    return "\n".join(lines)


def _absolute_bounds(att: Any) -> tuple[float, float, float] | None:
    """(γ_n·max Σ|x·w|, √n·u·max Σ|x·w|, max Σ|x·w|) in the attribution's precision, or None."""
    from .figures import UNIT_ROUNDOFF

    u = UNIT_ROUNDOFF.get(str(att.precision or att.requested_dtype))
    if u is None or att.magnitude is None:
        return None
    mag = np.asarray(att.magnitude, dtype=np.float64)
    mag = mag[np.isfinite(mag)]
    if not mag.size:
        return None
    m, n = float(mag.max()), max(int(att.n_terms), 1)
    gamma = n * u / (1 - n * u) if n * u < 1 else math.inf
    return gamma * m, math.sqrt(n) * u * m, m


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1150px;color:#222;
padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:left}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.v-ok{background:#e3f5e1}.v-degraded{background:#fff3cd}.v-mismatch,.v-unexplained,.v-failed{background:#f8d7da}
.answer{background:#eef4fb;border-left:4px solid #2b6cb0;padding:.6em 1em;white-space:pre-wrap}
figure{margin:.6em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#555}
.figs{display:flex;flex-wrap:wrap;gap:1em}.figs figure{flex:1 1 480px}code,pre{background:#f6f6f6;padding:0 .2em}
pre{padding:.6em;overflow-x:auto}
"""


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _figure(png: bytes, alt: str, caption: str) -> str:
    return f"<figure>{_img(png, alt)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _kv_value(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (float, np.floating)):
        return _fmt(v, 4)
    if isinstance(v, dict):
        return ", ".join(f"{k}={_kv_value(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
        return ", ".join(v)
    return json.dumps(v, default=_json_default)


def _kv_table(d: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_kv_value(v))}</td></tr>" for k, v in d.items()
    )
    return f"<table>{rows}</table>"


def _figures_for(att: Any) -> list[str]:
    from . import figures

    out = []
    if att.error is not None:
        out.append(_figure(figures.error_heatmap_png(att), f"error heatmap {att.label}",
                           "Max |y − exact| over batch and channels at each output position. Borders point at "
                           "padding, isolated dots at corrupted pixels."))
    if att.ulp is not None:
        out.append(_figure(figures.ulp_histogram_png(att), f"ULP histogram {att.label}",
                           "ULP errors with the deterministic (≈ n·u·Σ|x·w|) and probabilistic (≈ √n·u·Σ|x·w|) "
                           "bounds, converted to ULPs."))
    if att.error is not None and att.magnitude is not None:
        out.append(_figure(figures.error_scatter_png(att), f"error scatter {att.label}",
                           "|y − exact| against Σ|x·w| per element, with the bound lines."))
    return out


def render_html(report: Any, *, title: str = "refconv report", answer: str | None = None,
                figures: bool = True) -> str:
    """A self-contained HTML page: summary table, answer, pairs, one section per run with figures.

    Figures are PNGs embedded as base64 ``data:`` URIs, so the file needs no server
    and no other files. ``figures=False`` skips matplotlib entirely.

    >>> from refconv.attribution import Report
    >>> page = render_html(Report(spec={"n_terms": 9}, runs=[], attributions=[], pairs=[]))
    >>> page.startswith("<!DOCTYPE html>"), "n_terms" in page
    (True, True)
    """
    esc = html.escape
    atts = _att_by_label(report)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>Generated {esc(datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))} by "
        "refconv. Errors are measured against the correctly rounded exact cross-correlation of the intended "
        "inputs.</p>",
    ]
    if answer:
        parts += ["<h2>Answer</h2>", f'<div class="answer">{esc(answer)}</div>']
    parts += ["<h2>Runs</h2>", "<table><tr><th>run</th><th>max abs error</th><th>max ULP</th><th>p99 ULP</th>"
              "<th>bound ratio (max)</th><th>√n</th><th>n</th><th>precision</th><th>candidates</th><th>mismatch</th>"
              "<th>verdict</th></tr>"]
    for run, att in _rows(report):
        if att is None:
            parts.append(f'<tr class="v-failed"><td>{esc(run_label(run))}</td><td colspan="10">failed: '
                         f"{esc(_failure(run))}</td></tr>")
            continue
        cells = [_fmt(att.max_abs_error), _fmt(att.max_ulp), _fmt(att.p99_ulp), _fmt(att.max_bound_ratio),
                 _fmt(att.probabilistic_bound), _fmt(att.deterministic_bound)]
        parts.append(
            f'<tr class="v-{esc(att.verdict)}"><td>{esc(att.label)}</td>'
            + "".join(f'<td class="num">{esc(c)}</td>' for c in cells)
            + f"<td>{esc(att.precision or '—')}</td><td>{esc(', '.join(att.candidates or []))}</td>"
            f"<td>{esc(att.mismatch or '—')}</td><td>{esc(att.verdict)}</td></tr>"
        )
    parts.append("</table>")
    if report.pairs:
        parts.append("<h2>Pairwise conclusions</h2>")
        for p in report.pairs:
            parts.append(f"<h3>{esc(p.a)} vs {esc(p.b)}</h3><p>{esc(p.statement)}</p>")
            parts.append(f"<p>max |a − b| = {esc(_fmt(p.max_abs_diff))}; share of the difference carried by "
                         f"{esc(p.a)}: {esc(_fmt(p.share_a))}, by {esc(p.b)}: {esc(_fmt(p.share_b))}; wrong: "
                         f"<b>{esc(p.wrong)}</b>.</p>")
            a, b = atts.get(p.a), atts.get(p.b)
            if figures and a is not None and b is not None and a.error is not None and b.error is not None:
                from .figures import pair_distributions_png

                parts.append(_figure(pair_distributions_png(a, b), f"pair {p.a} vs {p.b}",
                                     "The two runs' errors against the exact result, side by side."))
    for run, att in _rows(report):
        parts.append(f"<h2>Run {esc(run_label(run) if att is None else att.label)}</h2>")
        if att is None:
            parts.append(f"<p>The run failed: <code>{esc(_failure(run))}</code></p>")
            continue
        parts.append(f"<p>{esc(att.explanation)}</p>")
        if att.mismatch_detail:
            parts.append(f"<p><b>Mismatch:</b> {esc(att.mismatch_detail)}</p>")
        summary = {k: getattr(att, k) for k in (
            "requested_dtype", "output_dtype", "precision", "candidates", "verdict", "n_terms", "max_abs_error",
            "median_abs_error", "max_rel_error", "max_ulp", "p99_ulp", "median_ulp", "max_bound_ratio",
            "p99_bound_ratio", "median_bound_ratio", "deterministic_bound", "probabilistic_bound",
            "condition_number", "input_cast_error", "arithmetic_error", "suggested_tolerance")}
        knobs = getattr(run, "precision_knobs", None)
        if knobs:
            summary["precision_knobs"] = knobs
        parts.append(_kv_table({k: _finite(_py_value(v)) for k, v in summary.items()}))
        if att.worst_positions:
            keys = list(att.worst_positions[0].keys())
            parts.append("<p>Worst positions:</p><table><tr>" + "".join(f"<th>{esc(str(k))}</th>" for k in keys)
                         + "</tr>")
            for pos in att.worst_positions[:10]:
                parts.append("<tr>" + "".join(f"<td>{esc(_cell(pos.get(k)))}</td>" for k in keys) + "</tr>")
            parts.append("</table>")
        if figures:
            parts.append('<div class="figs">' + "".join(_figures_for(att)) + "</div>")
    parts.append("<h2>Spec</h2>" + _kv_table(_finite(_py_value(report.spec or {}))))
    if report.oracle:
        parts.append("<h2>Oracle</h2>" + _kv_table(_finite(_py_value(report.oracle))))
    if report.environment:
        parts.append("<h2>Environment</h2>" + _kv_table(_finite(_py_value(report.environment))))
    parts.append("</body></html>")
    return "\n".join(parts)


def _py_value(v: Any) -> Any:
    return json.loads(json.dumps(_finite(v) if not isinstance(v, np.generic) else v.item(), default=_json_default))


def _cell(v: Any) -> str:
    return f"{float(v):.10g}" if isinstance(v, (float, np.floating)) else str(v)


def write_html(report: Any, path: str | Path, **options: Any) -> Path:
    """Write :func:`render_html` to ``path`` (UTF-8) and return the path.

    >>> import tempfile, os
    >>> from refconv.attribution import Report
    >>> p = write_html(Report(spec={}, runs=[], attributions=[], pairs=[]), os.path.join(tempfile.mkdtemp(), "r.html"))
    >>> p.read_text(encoding="utf-8").count("<html")
    1
    """
    path = Path(path)
    path.write_text(render_html(report, **options), encoding="utf-8")
    return path
