"""refconv.report: text table, JSON document, HTML with embedded figures.

Built on Attribution objects assembled here from the real oracle and a float32
numpy conv, so these tests do not depend on the attribution engine.
"""

from __future__ import annotations

import base64
import html.parser
import json

import numpy as np
import pytest

import refconv
from refconv.attribution import VERDICTS, Attribution, PairComparison, Report
from refconv.frameworks import FrameworkRun
from refconv.report import (
    exit_status,
    render_html,
    render_table,
    render_text,
    report_document,
    report_json,
    seed_answer,
    write_html,
)
from refconv.report.figures import UNIT_ROUNDOFF

GEOMETRY = {"stride": 2, "padding": "SAME", "data_format": "NHWC"}


def _float32_conv(x, w, b, spec):
    """Plain float32 im2col conv (NHWC/HWIO), the 'framework' under test."""
    xs = spec.x_to_nhwc(x).astype(np.float32)
    (t, bo), (le, r) = spec.pads
    xp = np.pad(xs, ((0, 0), (t, bo), (le, r), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (spec.KH, spec.KW), axis=(1, 2))
    win = win[:, :: spec.stride[0], :: spec.stride[1]][:, : spec.out_hw[0], : spec.out_hw[1]]
    y = np.einsum("nhwcij,ijco->nhwo", win, w.astype(np.float32), dtype=np.float32)
    return y + b.astype(np.float32)


def _attribution(label, y, exact, mag, n, dtype, *, verdict="ok", precision=None, spec=None):
    err = y.astype(np.float64) - exact
    u = UNIT_ROUNDOFF[dtype]
    spacing = np.spacing(np.abs(exact).astype(dtype)).astype(np.float64)
    ulp = np.abs(err) / spacing
    ratio = np.abs(err) / (u * mag)
    return Attribution(
        label=label, requested_dtype=dtype, output_dtype=dtype, precision=precision or dtype, candidates=[dtype],
        mismatch=None, mismatch_detail=None, verdict=verdict, n_terms=n,
        max_abs_error=float(np.abs(err).max()), median_abs_error=float(np.median(np.abs(err))),
        max_rel_error=float((np.abs(err) / np.abs(exact)).max()), median_rel_error=0.0,
        max_ulp=float(ulp.max()), p99_ulp=float(np.percentile(ulp, 99)), median_ulp=float(np.median(ulp)),
        max_bound_ratio=float(ratio.max()), median_bound_ratio=float(np.median(ratio)),
        p99_bound_ratio=float(np.percentile(ratio, 99)), deterministic_bound=float(n),
        probabilistic_bound=float(np.sqrt(n)), condition_number=1.0, input_cast_error=0.0,
        arithmetic_error=float(np.abs(err).max()),
        worst_positions=[{"index": [0, 1, 2, 3], "y": 1.5, "exact": 1.25, "ulp": 3.0}],
        explanation=f"{label} is within the {dtype} bound.", suggested_tolerance={"rtol": 1e-5, "atol": 0.0},
        spec=spec or {}, exact=exact, error=err, magnitude=mag, ulp=ulp, bound_ratio=ratio,
    )


def synthetic_report() -> Report:
    """torch float64 (exact), a float32 numpy conv posing as TensorFlow, and a failed run."""
    rng = np.random.default_rng(3)
    x, w, b = rng.random((1, 9, 11, 6)), rng.random((3, 3, 6, 5)), rng.random(5)
    spec = refconv.ConvSpec.from_arrays(x, w, b, **GEOMETRY)
    exact = refconv.conv2d(x, w, b, **GEOMETRY)
    from refconv.oracle._im2col import float_conv_nhwc

    mag = float_conv_nhwc(np.abs(x), np.abs(w), spec) + np.abs(b)
    y32 = _float32_conv(x, w, b, spec)
    y64 = exact.copy()
    runs = [
        FrameworkRun("torch", "2", "cpu", "cpu", "float64", "default", y64, spec=spec, output_dtype="float64"),
        FrameworkRun("tensorflow", "2", "cpu", "cpu", "float32", "default", y32.astype(np.float64), spec=spec,
                     output_dtype="float32"),
        FrameworkRun("onnxruntime", "1", "cpu", "cpu", "float64", "default", None, error="no float64 Conv\nmore"),
    ]
    atts = [
        _attribution("torch:cpu:float64", y64, exact, mag, spec.n_terms, "float64", spec=spec.to_dict()),
        _attribution("tensorflow:cpu:float32", y32, exact, mag, spec.n_terms, "float32", spec=spec.to_dict()),
        None,
    ]
    pair = PairComparison("torch:cpu:float64", "tensorflow:cpu:float32",
                          float(np.abs(y64 - y32).max()), 0.0, 1.0, "b",
                          "tensorflow:cpu:float32 carries the whole difference.")
    return Report(spec=spec.to_dict(), runs=runs, attributions=atts, pairs=[pair],
                  environment={"python": "3.11"}, oracle={"method": "exact", "elapsed_s": 0.01})


@pytest.fixture(scope="module")
def report() -> Report:
    return synthetic_report()


def test_table_has_one_row_per_run_and_the_failure(report):
    table = render_table(report)
    lines = table.splitlines()
    assert len(lines) == 2 + len(report.runs), table
    for label in ("torch:cpu:float64", "tensorflow:cpu:float32", "onnxruntime:cpu:float64"):
        assert any(line.startswith(label) for line in lines), (label, table)
    assert lines[-1].endswith("FAILED (see below)"), lines[-1]
    text = render_text(report)
    assert "onnxruntime:cpu:float64: no float64 Conv more" in text, "the failure message follows, on one line"


def test_text_has_pairs_explanations_and_answer(report):
    text = render_text(report, answer=seed_answer(report))
    for needle in ("Pairwise:", "carries the whole difference", "Explanations:", "within the float32 bound",
                   "suggested tolerance: rtol=1.00e-05", "Failed runs:", "Answer:", "Neither side has a bug"):
        assert needle in text, (needle, text)


def test_json_document_structure(report):
    doc = json.loads(report_json(report))
    assert set(doc) >= {"runs", "pairs", "spec", "environment", "oracle"}, doc.keys()
    assert len(doc["runs"]) == 3
    for rec in doc["runs"]:
        for key in ("framework", "device", "dtype", "precision", "mismatch", "verdict", "max_abs_error", "max_ulp",
                    "explanation", "label", "ok"):
            assert key in rec, (key, rec)
    tf = doc["runs"][1]
    assert (tf["framework"], tf["dtype"], tf["precision"], tf["verdict"], tf["ok"]) == (
        "tensorflow", "float32", "float32", "ok", True), tf
    np.testing.assert_allclose(tf["max_abs_error"], report.attributions[1].max_abs_error, rtol=0,
                               err_msg="JSON carries the attribution's number")
    failed = doc["runs"][2]
    assert failed["ok"] is False and failed["verdict"] is None and "no float64 Conv" in failed["explanation"], failed
    assert doc["pairs"][0]["wrong"] == "b", doc["pairs"]
    assert doc["spec"]["n_terms"] == 54, doc["spec"]


def test_report_document_extra_keys(report):
    doc = report_document(report, answer="x")
    assert doc["answer"] == "x", doc.keys()


@pytest.mark.parametrize("verdict", VERDICTS)
def test_exit_status_follows_verdicts(report, verdict):
    atts = [a for a in report.attributions if a is not None]
    import dataclasses

    changed = [dataclasses.replace(atts[0], verdict=verdict), atts[1]]
    r = Report(spec=report.spec, runs=report.runs[:2], attributions=changed, pairs=[])
    assert exit_status(r) == (0 if verdict == "ok" else 1), verdict
    assert exit_status(report) == 1, "a failed run is not ok"


class _Collector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.tags, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)


def test_html_parses_and_embeds_pngs(report, tmp_path):
    path = write_html(report, tmp_path / "report.html", title="t", answer="the answer")
    page = path.read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(page)
    parser.close()
    # 3 figures per attributed run (2) + 1 pair figure
    assert len(parser.images) == 7, [i.get("alt") for i in parser.images]
    for img in parser.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,"), src[:40]
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n", img.get("alt")
        assert img.get("alt"), "every image has alt text"
    assert "http://" not in page and "https://" not in page, "self-contained: no external resources"
    text = " ".join(parser.text)
    for needle in ("the answer", "tensorflow:cpu:float32", "carries the whole difference", "no float64 Conv"):
        assert needle in text, needle


def test_html_without_figures_skips_matplotlib(report):
    page = render_html(report, figures=False)
    assert "<img" not in page and "tensorflow:cpu:float32" in page, "figures=False renders tables only"


def test_report_import_is_light():
    import subprocess
    import sys

    code = "import sys, refconv.report, refconv.cli; print(sorted(m for m in ('matplotlib', 'torch', 'tensorflow', " \
           "'jax', 'rich', 'numba') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"heavy modules imported by refconv.report/refconv.cli: {out}"


def test_seed_answer_prefers_the_named_pair(report):
    import dataclasses

    wide = PairComparison("x", "y", 1e9, 0.5, 0.5, "both", "a much wider pair")
    r = dataclasses.replace(report, pairs=[*report.pairs, wide])
    assert seed_answer(r).startswith("x and y differ"), "without a preference the widest pair is answered"
    answer = seed_answer(r, prefer=("tensorflow:cpu:float32", "torch:cpu:float64"))
    assert answer.startswith("torch:cpu:float64 and tensorflow:cpu:float32 differ"), answer
    assert "γ_n·Σ|x·w|" in answer and "√n·u·Σ|x·w|" in answer, "the answer states both bounds in absolute terms"


def test_many_pairs_are_summarized_in_text(report):
    import dataclasses

    neither = [PairComparison(f"r{i}", f"s{i}", 1e-6 * (i + 1), 0.5, 0.5, "neither", f"pair {i} is fine")
               for i in range(8)]
    wrong = PairComparison("bad", "good", 1.0, 1.0, 0.0, "a", "bad carries the difference")
    text = render_text(dataclasses.replace(report, pairs=[*neither, wrong]))
    assert "bad carries the difference" in text, "pairs with a wrong side are always stated"
    assert "pair 3 is fine" not in text, "the 'neither' pairs are summarized when there are many"
    assert "8 more pairs: neither side is wrong (largest gap 8.00e-06)" in text, text


def test_figures_survive_nan_inf_zero_and_tiny_outputs(report):
    import dataclasses

    from refconv.report.figures import error_heatmap_png, error_scatter_png, ulp_histogram_png

    att = report.attributions[1]
    err = att.error.copy()
    err.flat[0], err.flat[1] = np.nan, np.inf
    ulp = att.ulp.copy()
    ulp.flat[0] = np.inf
    odd = dataclasses.replace(att, error=err, ulp=ulp, verdict="unexplained")
    zero = dataclasses.replace(att, error=np.zeros((1, 1, 1, 1)), ulp=np.zeros(1), bound_ratio=np.zeros(1),
                               magnitude=np.ones((1, 1, 1, 1)), exact=np.ones((1, 1, 1, 1)))
    for a in (odd, zero):
        for fig in (error_heatmap_png, ulp_histogram_png, error_scatter_png):
            assert fig(a)[:4] == b"\x89PNG", (fig.__name__, a.verdict)
    page = render_html(dataclasses.replace(report, attributions=[report.attributions[0], odd, None]), figures=False)
    assert '<tr class="v-unexplained">' in page, "the unexplained run is flagged in the summary table"
