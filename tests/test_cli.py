"""The ``refconv`` command, run through subprocess (and in-process where no framework is involved).

Parts that need the attribution engine (``refconv.explain``/``refconv.attribute``)
skip with a reason when it is not importable.
"""

from __future__ import annotations

import html.parser
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import refconv
from refconv.cli import DATA_GENERATORS, EXIT_NOT_OK, EXIT_OK, EXIT_USAGE, main

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "NO_COLOR": "1"}


def _has(module: str, name: str) -> bool:
    try:
        return hasattr(__import__(module, fromlist=[name]), name)
    except ImportError:
        return False


def _installed(name: str) -> bool:
    from importlib.util import find_spec

    return find_spec(name) is not None


needs_explain = pytest.mark.skipif(not _has("refconv.attribution", "explain"),
                                   reason="refconv.explain (attribution issue) is not available yet")
needs_attribute = pytest.mark.skipif(not _has("refconv.attribution", "attribute"),
                                     reason="refconv.attribute (attribution issue) is not available yet")
needs_torch_tf = pytest.mark.skipif(not (_installed("torch") and _installed("tensorflow")),
                                    reason="torch and tensorflow are needed for the CLI comparisons")


def refconv_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "refconv", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


# --------------------------------------------------------------------------- usage errors (exit 2)


def test_unknown_framework_lists_the_registered_ones():
    proc = refconv_cli("compare", "--runs", "pytorch:cpu:float32", "--input-shape", "5,5", "--in-ch", "2")
    assert proc.returncode == EXIT_USAGE, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"one-line error expected, got:\n{proc.stderr}"
    from refconv.frameworks import FRAMEWORKS

    for name in FRAMEWORKS:
        assert repr(name) in lines[0], (name, lines[0])
    assert "unknown framework 'pytorch'" in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_bad_shape_is_the_specs_error_in_one_line():
    proc = refconv_cli("compare", "--input-shape", "4,4", "--in-ch", "3", "--kernel", "7", "--runs",
                       "torch:cpu:float64")
    assert proc.returncode == EXIT_USAGE, proc
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert "x.shape=(1, 4, 4, 3) w.shape=(7, 7, 3, 8)" in err and "empty output" in err, err


def test_debug_shows_the_traceback():
    proc = refconv_cli("--debug", "compare", "--input-shape", "4,4", "--in-ch", "3", "--kernel", "7")
    assert proc.returncode == EXIT_USAGE, proc
    assert "Traceback" in proc.stderr and "ShapeError" in proc.stderr, proc.stderr


@pytest.mark.parametrize("argv, needle", [
    (["compare", "--padding"], "expected one argument"),
    (["compare", "--data", "bogus"], "invalid choice: 'bogus'"),
    (["compare", "--input-shape", "4,4,4,4,4"], "input-shape='4,4,4,4,4'"),
    (["compare", "--input-shape", "8,8,3", "--in-ch", "4"], "has C=3 but --in-ch=4"),
    (["compare", "--padding", "1,2,3", "--input-shape", "8,8"], "padding='1,2,3'"),
    (["compare", "--groups", "3", "--input-shape", "8,8", "--in-ch", "4"], "groups=3"),
    (["example", "nope"], "invalid choice: 'nope'"),
    (["check", "missing.npy", "--inputs", "missing.npz"], "No such file"),
    ([], "usage:"),
])
def test_usage_errors_exit_2_with_one_line(argv, needle, capsys):
    assert main(argv) == EXIT_USAGE, argv
    err = capsys.readouterr().err
    assert needle in err, (needle, err)
    if argv:
        assert len(err.strip().splitlines()) == 1, err


def test_python_dash_m_and_help():
    proc = refconv_cli("--help")
    assert proc.returncode == 0, proc.stderr
    for cmd in ("frameworks", "compare", "example", "check"):
        assert cmd in proc.stdout, cmd
    proc = refconv_cli("compare", "--help")
    for name in DATA_GENERATORS:
        assert name in proc.stdout, f"--data choices come from DATA_GENERATORS: {name}"


# --------------------------------------------------------------------------- frameworks


def test_frameworks_json_lists_installed_frameworks_with_knobs():
    proc = refconv_cli("frameworks", "--json")
    assert proc.returncode == EXIT_OK, proc.stderr
    doc = json.loads(proc.stdout)
    from refconv.frameworks import FRAMEWORKS

    by_name = {f["name"]: f for f in doc["frameworks"]}
    assert set(by_name) == set(FRAMEWORKS), f"every registered framework is listed: {sorted(by_name)}"
    for name, info in by_name.items():
        if not info["installed"]:
            assert "refconv[" in info["install"], info
            continue
        assert info["version"], info
        cpu = [d for d in info["devices"] if d["device"] == "cpu"]
        assert cpu and cpu[0]["dtypes"], f"{name} lists the cpu device and its dtypes"
        assert isinstance(cpu[0]["precision_knobs"], dict) and cpu[0]["precision_knobs"], name
    if "tensorflow" in by_name and by_name["tensorflow"]["installed"]:
        knobs = by_name["tensorflow"]["devices"][0]["precision_knobs"]
        assert any("ONEDNN" in k for k in knobs), knobs


# --------------------------------------------------------------------------- compare (needs explain)


@pytest.fixture(scope="module")
def compare_small(tmp_path_factory):
    if not _has("refconv.attribution", "explain"):
        pytest.skip("refconv.explain (attribution issue) is not available yet")
    if not (_installed("torch") and _installed("tensorflow")):
        pytest.skip("torch and tensorflow are needed")
    tmp = tmp_path_factory.mktemp("cli")
    html_path, npz = tmp / "report.html", tmp / "inputs.npz"
    proc = refconv_cli("compare", "--input-shape", "9,11", "--in-ch", "6", "--out-ch", "5", "--kernel", "3",
                       "--stride", "2", "--padding", "SAME", "--data", "normal", "--seed", "4",
                       "--runs", "torch:cpu:float32,tensorflow:cpu:float64",
                       "--json", "--html", str(html_path), "--save-inputs", str(npz))
    return proc, html_path, npz


def test_compare_json_structure_and_values(compare_small):
    proc, _, npz = compare_small
    assert proc.returncode == EXIT_OK, proc.stderr
    assert proc.stderr.strip() == "", f"--json is quiet on stderr: {proc.stderr!r}"
    doc = json.loads(proc.stdout)
    assert {"runs", "pairs", "spec", "environment"} <= set(doc), doc.keys()
    assert [r["label"] for r in doc["runs"]] == ["torch:cpu:float32", "tensorflow:cpu:float64"]
    for rec in doc["runs"]:
        for key in ("framework", "device", "dtype", "precision", "mismatch", "verdict", "max_abs_error", "max_ulp",
                    "explanation"):
            assert key in rec, (key, rec)
        assert rec["verdict"] == "ok" and rec["mismatch"] is None, rec
        assert rec["precision"] == rec["dtype"], rec
        assert isinstance(rec["explanation"], str) and rec["explanation"], rec
    spec = doc["spec"]
    assert spec["x_shape"] == [1, 9, 11, 6] and spec["w_shape"] == [3, 3, 6, 5], spec
    assert spec["output_shape"] == [1, 5, 6, 5] and spec["n_terms"] == 54, spec
    # the values are recomputable: the float32 run's error against the oracle
    with np.load(npz) as z:
        x, w, b = z["x"], z["w"], z["b"]
    exact = refconv.conv2d(x, w, b, stride=2, padding="SAME")
    from refconv.oracle._im2col import float_conv_nhwc

    spec = refconv.ConvSpec.from_arrays(x, w, b, stride=2, padding="SAME")
    mag = float_conv_nhwc(np.abs(x), np.abs(w), spec) + np.abs(b)
    err32 = doc["runs"][0]["max_abs_error"]
    bound = 55 * 2.0**-24 / (1 - 55 * 2.0**-24) * float(mag.max()) + float(np.spacing(np.float32(np.abs(exact).max())))
    assert 0 < err32 <= bound, f"float32 error {err32} within the deterministic bound {bound}"
    assert doc["runs"][1]["max_abs_error"] < 1e-12, doc["runs"][1]
    assert doc["runs"][0]["version"] and doc["runs"][0]["version"] == doc["environment"].get("torch"), \
        "the run and the environment record the framework version"
    assert len(doc["pairs"]) >= 1, doc["pairs"]


def test_compare_html_parses_and_embeds_images(compare_small):
    proc, html_path, _ = compare_small
    assert proc.returncode == EXIT_OK and html_path.exists(), proc.stderr
    collector = _Images()
    collector.feed(html_path.read_text(encoding="utf-8"))
    assert len(collector.images) == 2 * 3 + 1, f"3 figures per run and 1 per pair: {len(collector.images)}"
    assert all(src.startswith("data:image/png;base64,") for src in collector.images), "images are inline"


class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs).get("src", ""))


# --------------------------------------------------------------------------- example seed


@needs_explain
@needs_torch_tf
@pytest.mark.slow
def test_example_seed_json_labels():
    proc = refconv_cli("example", "seed", "--json", timeout=600)
    assert proc.returncode == EXIT_OK, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    runs = {r["label"]: r for r in doc["runs"]}
    tf, pt = runs["tensorflow:cpu:float32"], runs["torch:cpu:float64"]
    assert (tf["verdict"], tf["precision"]) == ("ok", "float32"), tf
    assert (pt["verdict"], pt["precision"]) == ("ok", "float64"), pt
    assert doc["spec"]["x_shape"] == [1, 16, 32, 256] and doc["spec"]["w_shape"] == [5, 5, 256, 512], doc["spec"]
    assert doc["spec"]["stride"] == [2, 2] and doc["spec"]["pads"] == [[1, 2], [1, 2]], doc["spec"]
    assert 1e-5 < tf["max_abs_error"] < 0.63, "float32 error is real and inside γ_n·Σ|x·w| ≈ 0.63"
    assert pt["max_abs_error"] < 1e-9, pt
    assert "tensorflow" in doc["answer"] and "float32" in doc["answer"], doc["answer"]


# --------------------------------------------------------------------------- check (needs attribute)


@pytest.fixture(scope="module")
def check_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("check")
    rng = np.random.default_rng(7)
    x, w, b = rng.random((1, 10, 9, 4)), rng.standard_normal((3, 3, 4, 6)), rng.random(6)
    np.savez(tmp / "in.npz", x=x, w=w, b=b)
    x32, w32, b32 = (a.astype(np.float32) for a in (x, w, b))
    good = refconv.conv2d(x32, w32, b32, padding="SAME").astype(np.float32)  # float32, correctly rounded
    np.save(tmp / "good.npy", good)
    flipped = refconv.conv2d(x32, w32[::-1, ::-1], b32, padding="SAME").astype(np.float32)  # true convolution
    np.save(tmp / "bad.npy", flipped)
    (tmp / "spec.json").write_text(json.dumps(refconv.ConvSpec.from_arrays(x, w, b, padding="SAME").to_dict()))
    return tmp


@needs_attribute
def test_check_ok_exits_0(check_files, capsys):
    status = main(["check", str(check_files / "good.npy"), "--inputs", str(check_files / "in.npz"),
                   "--padding", "SAME", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert status == EXIT_OK, doc
    assert doc["runs"][0]["verdict"] == "ok" and doc["runs"][0]["dtype"] == "float32", doc["runs"][0]


@needs_attribute
def test_check_with_spec_file_finds_the_kernel_flip(check_files, capsys):
    status = main(["check", str(check_files / "bad.npy"), "--inputs", str(check_files / "in.npz"),
                   "--spec", str(check_files / "spec.json"), "--name", "mykernel"])
    out = capsys.readouterr().out
    assert status == EXIT_NOT_OK, out
    row = next(line for line in out.splitlines() if line.startswith("mykernel"))
    assert row.split()[-1] == "mismatch" and "kernel_flip" in row.split(), row
    assert "Explanations:" in out, out


def test_check_shape_mismatch_is_a_usage_error(check_files, capsys):
    status = main(["check", str(check_files / "good.npy"), "--inputs", str(check_files / "in.npz"),
                   "--padding", "VALID"])
    err = capsys.readouterr().err
    assert status == EXIT_USAGE, err
    assert "y.shape=(1, 10, 9, 6)" in err and "(1, 8, 7, 6)" in err, err


# --------------------------------------------------------------------------- progress bar


def test_progress_is_quiet_for_json_quiet_and_non_tty():
    import argparse

    from refconv.cli import _show_progress

    assert not _show_progress(argparse.Namespace(json=True, quiet=False)), "--json is quiet"
    assert not _show_progress(argparse.Namespace(json=False, quiet=True)), "--quiet is quiet"
    # under pytest stderr is captured, not a terminal
    assert not _show_progress(argparse.Namespace(json=False, quiet=False)), "no progress bar when not on a TTY"


@needs_attribute
@pytest.mark.skipif(not __import__("shutil").which("script"), reason="util-linux 'script' (a pseudo-terminal) missing")
def test_progress_bar_shows_on_a_terminal(check_files):
    cmd = (f"{sys.executable} -m refconv check {check_files / 'good.npy'} --inputs {check_files / 'in.npz'} "
           "--padding SAME")
    proc = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == EXIT_OK, proc.stdout[-2000:]
    assert "attributing" in proc.stdout, "rich progress is drawn on a terminal"
    assert "user" in proc.stdout and "ok" in proc.stdout, proc.stdout[-2000:]
