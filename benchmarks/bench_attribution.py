"""Time attribution on the seed notebook shape (1×16×32×256 * 5×5×256→512, stride 2, SAME, uniform data).

Prints the exact oracle alone, then one attribution per kind of run, each on a fresh
:class:`refconv.attribution.Problem` (so every run pays its emulations, its hypothesis screening and, for the first,
the oracle), and an ``explain`` of two runs sharing one Problem.

    python benchmarks/bench_attribution.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import refconv
from refconv.attribution import Problem, attribute, explain, round_to


def _best(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x, w, b = rng.random((1, 16, 32, 256)), rng.random((5, 5, 256, 512)), rng.random(512)
    geo = dict(stride=2, padding="SAME")
    refconv.conv2d(np.ones((1, 3, 3, 1)), np.ones((2, 2, 1, 1)))  # compile/warm the oracle
    print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}")
    t, _ = _best(lambda: refconv.conv2d(x, w, b, **geo), args.repeat)
    print(f"exact oracle alone:                      {t:7.2f} s")

    f = lambda a: a.astype(np.float32).astype(np.float64)  # noqa: E731
    y32 = refconv.conv2d(f(x), f(w), f(b), **geo).astype(np.float32)
    y32 += (np.random.default_rng(1).standard_normal(y32.shape) * 2e-5).astype(np.float32)  # accumulation-like noise
    ytf = refconv.conv2d(round_to(x, "tf32"), round_to(w, "tf32"), f(b), **geo).astype(np.float32)
    ypad = refconv.conv2d(x, w, b, stride=2, padding=((1, 1), (1, 1))).astype(np.float32)
    cases = {"float32 run": y32, "TF32 run (degraded)": ytf, "padding mismatch": ypad}
    for name, y in cases.items():
        def one(y=y):
            return attribute(y, x, w, b, **geo, problem=Problem(x, w, b, **geo))

        t, a = _best(one, args.repeat)
        print(f"attribute, {name:24s}      {t:7.2f} s  -> {a.precision}, {a.mismatch}, {a.verdict}")
    t, rep = _best(lambda: explain(x, w, b, runs=[("f32", y32), ("tf32", ytf)], **geo), args.repeat)
    print(f"explain, two runs (one oracle):          {t:7.2f} s  -> {[a.verdict for a in rep.attributions]}")


if __name__ == "__main__":
    main()
