"""Oracle speed against the float64 convs of the frameworks, measured in one run.

    python benchmarks/bench_oracle.py            # every shape (a few minutes on 2 cores)
    python benchmarks/bench_oracle.py --quick    # the seed shape only
    python benchmarks/bench_oracle.py --json out.json
    python benchmarks/bench_oracle.py --threads 1  # every library single-threaded (robust on a busy machine)

Each time is the best of ``--repeat`` rounds after a warm-up (Numba compiles on the
warm-up); the rounds interleave the columns, so a busy machine penalizes them
alike, with a 0.3 s pause before each timing so that the spin-waiting thread pool
of the library timed just before (OpenMP, OpenBLAS) does not steal the cores.
Ratios are against torch float64 on the same machine in the same run. A second table
gives the per-round ratios (each call over torch's call in the same round, seconds
apart, so that a shared host's slow and fast phases cancel): their median and a
distribution-free 95 % confidence interval of it (use ``--repeat 30`` or more).
"mpmath / position" is the exact mpmath evaluator behind ``method="mpmath"``
(``refconv.oracle.mp``) per output position; "conv2d_points / position" is the
public point API, which uses ``refconv.oracle._fastpoints`` (same exact results,
numpy TwoProduct + integer sums). "peak MiB" is the tracemalloc peak of one ``method="exact"``
call (numpy buffers; framework-free), next to inputs + weights + output.
Missing frameworks are shown as "-". ``--data normal`` draws standard normal values (sums with
cancellation, where the exact method needs its two-digit level) instead of uniform [0, 1).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

if "--threads" in sys.argv:  # must be set before numpy, numba, torch or TF start their thread pools
    _n = sys.argv[sys.argv.index("--threads") + 1]
    for _var in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                 "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ[_var] = _n
    os.environ["XLA_FLAGS"] = f"--xla_cpu_multi_thread_eigen={'false' if _n == '1' else 'true'}"
import platform
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

import refconv

SHAPES = {
    # name: (x NHWC, w HWIO, geometry)
    "seed": ((1, 16, 32, 256), (5, 5, 256, 512), dict(stride=2, padding="SAME")),
    "resnet": ((8, 56, 56, 64), (3, 3, 64, 64), dict(stride=1, padding="SAME")),
    "depthwise": ((8, 112, 112, 32), (3, 3, 1, 32), dict(padding="SAME", groups=32)),
    "pointwise1024": ((8, 14, 14, 1024), (1, 1, 1024, 1024), dict(padding="VALID")),
    "largeK": ((1, 14, 14, 512), (7, 7, 512, 512), dict(padding="SAME")),
}
MP_POSITIONS = {"seed": 8, "resnet": 32, "depthwise": 256, "pointwise1024": 16, "largeK": 2}


def round_times(fns: dict[str, Callable[[], object]], repeat: int, once: set[str]) -> dict[str, list[float]]:
    """Wall time of each function in each of ``repeat`` interleaved rounds (one warm-up call each first; the
    columns in ``once`` are timed in the first round only)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeat):
        for name, fn in fns.items():
            if r and name in once:
                continue
            time.sleep(0.3)  # let the previous library's spinning thread pool (OpenMP, OpenBLAS) go idle
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def median_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(median, low, high): the sample median and a distribution-free confidence interval for the median, the
    order statistics x_(l) and x_(n+1-l) with the largest l such that P(Binomial(n, 1/2) < l) ≤ (1 - level) / 2
    (the whole range if n is too small for the level).

    >>> median_ci([float(v) for v in range(1, 21)])
    (10.5, 6.0, 15.0)
    """
    v = sorted(values)
    n = len(v)
    tail, l = 0.0, 0
    while l < n // 2 and tail + math.comb(n, l) / 2**n <= (1 - level) / 2:
        tail += math.comb(n, l) / 2**n
        l += 1
    return float(np.median(v)), v[max(l, 1) - 1], v[n - max(l, 1)]


def framework_fns(x: np.ndarray, w: np.ndarray, b: np.ndarray, geometry: dict) -> dict[str, Callable[[], object]]:
    """float64 conv closures for each installed framework, same problem as refconv (pads resolved by refconv)."""
    spec = refconv.spec.ConvSpec.from_arrays(x, w, b, **geometry)
    (pt, pb), (pl, pr) = spec.pads
    sh, sw = spec.stride
    groups = spec.groups
    fns: dict[str, Callable[[], object]] = {}
    try:
        import torch

        xt = torch.nn.functional.pad(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), (pl, pr, pt, pb))
        wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()
        bt = torch.from_numpy(b)
        fns["torch"] = lambda: torch.nn.functional.conv2d(xt, wt, bt, stride=(sh, sw), groups=groups)
    except ImportError:
        pass
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf

        xtf = tf.constant(np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0))))
        btf = tf.constant(b)
        if groups == 1:
            wtf = tf.constant(w)
            fns["tf"] = lambda: tf.nn.bias_add(tf.nn.conv2d(xtf, wtf, (1, sh, sw, 1), "VALID"), btf).numpy()
        elif groups == spec.C and spec.O == spec.C:
            wtf = tf.constant(w.reshape(spec.KH, spec.KW, spec.C, 1))
            fns["tf"] = lambda: tf.nn.bias_add(
                tf.nn.depthwise_conv2d(xtf, wtf, (1, sh, sw, 1), "VALID"), btf).numpy()
    except ImportError:
        pass
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
        xj = jax.device_put(np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0))))
        wj, bj = jax.device_put(w), jax.device_put(b)
        conv = jax.jit(lambda a, k, c: jax.lax.conv_general_dilated(
            a, k, (sh, sw), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups) + c)
        fns["jax"] = lambda: conv(xj, wj, bj).block_until_ready()
    except ImportError:
        pass
    try:
        from onnx import TensorProto, helper
        from onnx.reference import ReferenceEvaluator

        node = helper.make_node("Conv", ["X", "W", "B"], ["Y"], pads=[pt, pl, pb, pr], strides=[sh, sw], group=groups)
        graph = helper.make_graph(
            [node], "conv",
            [helper.make_tensor_value_info(n, TensorProto.DOUBLE, None) for n in ("X", "W", "B")],
            [helper.make_tensor_value_info("Y", TensorProto.DOUBLE, None)],
        )
        sess = ReferenceEvaluator(helper.make_model(graph))
        feeds = {"X": np.ascontiguousarray(x.transpose(0, 3, 1, 2)), "W": np.ascontiguousarray(w.transpose(3, 2, 0, 1)),
                 "B": b}
        fns["onnx.ref"] = lambda: sess.run(None, feeds)
    except ImportError:
        pass
    return fns


def bench_shape(name: str, repeat: int, skip: set[str], data: str = "uniform") -> dict:
    xs, ws, geometry = SHAPES[name]
    rng = np.random.default_rng(0)
    draw = rng.random if data == "uniform" else rng.standard_normal
    x, w, b = draw(xs), draw(ws), draw(ws[-1])
    label = name if data == "uniform" else f"{name} ({data})"
    row: dict = {"shape": label, "x": xs, "w": ws, "geometry": {k: str(v) for k, v in geometry.items()}}
    fns = {fw: fn for fw, fn in framework_fns(x, w, b, geometry).items() if fw not in skip}
    if "torch" in sys.modules:
        import torch

        if os.environ.get("OMP_NUM_THREADS"):
            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    for method in ("exact", "kahan"):
        fns[method] = lambda m=method: refconv.conv2d_with_info(x, w, b, method=m, **geometry)
    times = round_times(fns, repeat, once={"onnx.ref"})
    row.update({name: min(t) for name, t in times.items()})
    if "torch" in times:  # each call against torch's in the same round (adjacent calls: the host's phase cancels)
        row["paired"] = {name: median_ci([a / b for a, b in zip(t, times["torch"])])
                         for name, t in times.items() if name != "torch" and len(t) == len(times["torch"])}
    row["rounds"], row["round_times"] = len(times["kahan"]), times
    info = refconv.conv2d_with_info(x, w, b, **geometry)
    row["fallbacks"] = info.fallbacks
    row["level2_tiles"] = info.stats.get("refined_tiles", 0)
    row["pair_checks"] = info.stats.get("pair_checks", 0)
    if "mpmath" not in skip:
        from refconv.oracle import mp
        from refconv.spec import prepare

        xf, wf, bf, spec = prepare(x, w, b, **geometry)
        shape = (spec.N, *spec.out_hw, spec.O)
        m = MP_POSITIONS[name]
        flat = np.random.default_rng(1).choice(int(np.prod(shape)), size=8 * m, replace=False)
        pts = np.stack(np.unravel_index(flat, shape), axis=1)
        t0 = time.perf_counter()
        mp.output_points_nhwc(xf, wf, bf, spec, pts[:m], None)  # the pure mpmath tier (method="mpmath")
        row["mpmath_per_pos"] = (time.perf_counter() - t0) / m
        t0 = time.perf_counter()
        refconv.conv2d_points(x, w, b, positions=pts, **geometry)  # the public point API (exact integer sums)
        row["fast_per_pos"] = (time.perf_counter() - t0) / (8 * m)
    refconv.oracle.release_workspace()  # count the scratch buffers kept between calls
    tracemalloc.start()
    y = refconv.conv2d(x, w, b, **geometry)
    row["peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    row["io_mib"] = (x.nbytes + w.nbytes + y.nbytes) / 2**20
    return row


def fmt_table(rows: list[dict]) -> str:
    cols = ["torch", "tf", "jax", "onnx.ref", "exact", "kahan"]
    head = ("| shape | torch f64 ms | TF f64 | jax f64 | onnx.reference f64 | exact | kahan | mpmath / position "
            "| conv2d_points / position | exact peak MiB (in+w+out) "
            "| exact: level-2 tiles / Dot2 re-checks / fallbacks |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        base = r.get("torch")
        cells = [r["shape"], f"{base * 1e3:.1f}" if base else "-"]
        for c in cols[1:]:
            if c not in r:
                cells.append("-")
            elif base:
                cells.append(f"{r[c] * 1e3:.1f} ms ({r[c] / base:.2f}×)")
            else:
                cells.append(f"{r[c] * 1e3:.1f} ms")
        mp = r.get("mpmath_per_pos")
        cells.append(f"{mp * 1e3:.1f} ms ({1 / mp:.0f} pos/s)" if mp else "-")
        fp = r.get("fast_per_pos")
        cells.append(f"{fp * 1e3:.2f} ms ({1 / fp:.0f} pos/s)" if fp else "-")
        cells.append(f"{r['peak_mib']:.0f} ({r['io_mib']:.0f})")
        cells.append(f"{r.get('level2_tiles', '-')} / {r.get('pair_checks', '-')} / {r['fallbacks']}")
        lines.append("| " + " | ".join(cells) + " |")
    paired = [r for r in rows if r.get("paired")]
    if paired:
        lines += ["", "Per-round ratios to torch f64 (each call over torch's call in the same round): median "
                  "[95 % confidence interval of the median]", "",
                  "| shape | rounds | TF f64 | jax f64 | exact | kahan |", "|" + "---|" * 6]
        for r in paired:
            cells = [r["shape"], str(r["rounds"])]
            for c in ("tf", "jax", "exact", "kahan"):
                m = r["paired"].get(c)
                cells.append(f"{m[0]:.2f}× [{m[1]:.2f}, {m[2]:.2f}]" if m else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import numba

    from refconv.oracle.exact import _worker_cpus

    pinned = _worker_cpus(numba.get_num_threads()) is not None
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}, "
            f"numba {numba.__version__}, NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}, "
            f"GEMM workers {'pinned' if pinned else 'not pinned'} (REFCONV_PIN_THREADS)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="seed shape only")
    ap.add_argument("--shapes", nargs="*", choices=sorted(SHAPES), help="shapes to run (default: all)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip", nargs="*", default=[], help="columns to skip: tf jax onnx.ref mpmath")
    ap.add_argument("--json", help="also write the raw rows here")
    ap.add_argument("--threads", help="thread count for every library (set before they load)")
    ap.add_argument("--data", choices=["uniform", "normal"], default="uniform",
                    help="input values: uniform [0, 1) (positive sums) or standard normal (cancelling sums)")
    args = ap.parse_args(argv)
    names = ["seed"] if args.quick else (args.shapes or list(SHAPES))
    rows = []
    for name in names:
        rows.append(bench_shape(name, args.repeat, set(args.skip), args.data))
        print(f"done {name}", flush=True)
    print(f"\nmachine: {machine()}\n")
    print(fmt_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "rows": rows}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
