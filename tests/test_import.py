"""`import refconv` must stay cheap: numpy only."""

import subprocess
import sys

HEAVY = ("numba", "mpmath", "torch", "tensorflow", "jax", "onnx", "onnxruntime", "matplotlib", "scipy")


def test_import_refconv_imports_numpy_only():
    code = (
        "import sys, refconv, refconv.spec, refconv.errors, refconv.oracle\n"
        f"heavy = [m for m in sys.modules if m.split('.')[0] in {HEAVY!r}]\n"
        "print(','.join(sorted(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import refconv pulled in heavy modules: {out}"
