"""GPU check: how far each framework's GPU conv is from the exact result, and is TF32 on by default?

Runs the seed geometry (1x16x32x256 * 5x5x256x512, stride 2, SAME) and a
ResNet-style 3x3 conv (8x56x56x64 * 3x3x64x64, stride 1, SAME) on every
installed framework's CUDA devices, in float32 with math "default", "ieee" and
"tf32", in bfloat16 and in float16; prints the max ULP error against the exact
oracle for each run and writes a JSON file.

ULP here = |y - exact| / ulp_dtype(exact), with ulp of the run's output dtype
(float32: 2**-23 * 2**floor(log2|exact|), ...). Two columns: against the exact
result of the float64 inputs (total error) and against the exact result of the
inputs the framework saw after its cast (arithmetic only).

Each run is also attributed (refconv.attribute: the precision that explains it,
and the verdict). TF32 verdict per framework: the precision attributed to the
float32 "default" run (tf32 -> TF32 on by default, float32 -> off).

Without a GPU it still runs: GPU rows are skipped and, unless --no-cpu, the
float32 "default" CPU rows are measured for comparison.

Usage: python benchmarks/gpu_check.py [--out gpu_check.json] [--no-cpu] [--small]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time

import numpy as np

import refconv
from refconv import frameworks as fw
from refconv.attribution import Problem

GEOMETRIES = {
    "seed_5x5_s2_same": dict(x=(1, 16, 32, 256), w=(5, 5, 256, 512), stride=2, padding="SAME"),
    "resnet_3x3_s1_same": dict(x=(8, 56, 56, 64), w=(3, 3, 64, 64), stride=1, padding="SAME"),
}
SMALL = {
    "seed_5x5_s2_same": dict(x=(1, 8, 16, 64), w=(5, 5, 64, 32), stride=2, padding="SAME"),
    "resnet_3x3_s1_same": dict(x=(2, 14, 14, 32), w=(3, 3, 32, 32), stride=1, padding="SAME"),
}
GPU_RUNS = [("float32", "default"), ("float32", "ieee"), ("float32", "tf32"), ("bfloat16", "default"),
            ("float16", "default")]  # fmt: skip
PRECISION_BITS = {"float64": 53, "float32": 24, "float16": 11, "bfloat16": 8}
MIN_EXP = {"float64": -1022, "float32": -126, "float16": -14, "bfloat16": -126}


def ulp(values: np.ndarray, dtype: str) -> np.ndarray:
    """Spacing of ``dtype`` numbers at |values| (subnormal spacing below the normal range)."""
    p = PRECISION_BITS.get(dtype, 53)
    _, e = np.frexp(np.abs(values))  # |v| = m * 2**e, m in [0.5, 1)
    e = np.maximum(e - 1, MIN_EXP.get(dtype, -1022))
    return np.ldexp(1.0, e - (p - 1))


def max_ulp(y: np.ndarray, exact: np.ndarray, dtype: str) -> float:
    finite = np.isfinite(exact)
    if not finite.any():
        return float("nan")
    return float(np.max(np.abs(y[finite] - exact[finite]) / ulp(exact[finite], dtype)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU float32 comparison rows")
    ap.add_argument("--small", action="store_true", help="smaller shapes (smoke test)")
    ap.add_argument("--frameworks", default=None, help="comma-separated subset of the registry")
    args = ap.parse_args(argv)

    names = args.frameworks.split(",") if args.frameworks else None
    infos = fw.available(names)
    targets = []  # (framework, device, device_name, dtype, math)
    for info in infos:
        for dev in info.devices:
            if dev.device.startswith("cuda"):
                targets += [(info.name, dev.device, dev.name, dt, m) for dt, m in GPU_RUNS]
            elif not args.no_cpu:
                targets.append((info.name, dev.device, dev.name, "float32", "default"))
    gpus = sorted({(t[1], t[2]) for t in targets if t[1].startswith("cuda")})
    print(f"refconv {refconv.__version__}, python {platform.python_version()}")
    for info in infos:
        print(f"  {info.name} {info.version}: {', '.join(d.device + ' (' + d.name + ')' for d in info.devices)}")
    if not gpus:
        print("no GPU found: GPU rows skipped" + ("" if args.no_cpu else "; measuring CPU float32 rows only"))

    geometries = SMALL if args.small else GEOMETRIES
    if not targets:
        geometries = {}  # nothing to measure: skip the oracle, still write the (empty) JSON
    rows = []
    rng = np.random.default_rng(0)
    for gname, g in geometries.items():
        x = rng.uniform(0, 1, g["x"])  # the seed notebook's data: uniform [0, 1)
        w = rng.uniform(0, 1, g["w"])
        b = rng.uniform(0, 1, g["w"][-1])
        geometry = dict(stride=g["stride"], padding=g["padding"])
        t0 = time.perf_counter()
        problem = Problem(x, w, b, **geometry)  # (NHWC data: its canonical exact conv is the output's layout)
        exact = problem.exact  # computed once, for the ulp columns and every run's attribution
        print(f"\n{gname}: x{g['x']} w{g['w']} {geometry}; exact oracle {time.perf_counter() - t0:.2f}s")
        exact_seen_cache: dict[bytes, np.ndarray] = {}
        print(f"  {'run':42s} {'out dtype':>9s} {'max ulp':>10s} {'arith ulp':>10s} {'max |err|':>10s} {'time s':>8s} "
              f"{'precision':>9s}  verdict")
        for framework, device, device_name, dtype, math in targets:
            run = fw.run(framework, x, w, b, device=device, dtype=dtype, math=math, **geometry)
            row = dict(geometry=gname, label=run.label, framework=framework, version=run.version, device=device,
                       device_name=device_name, dtype=dtype, math=math, ok=run.ok, error=run.error,
                       output_dtype=run.output_dtype, elapsed_s=run.elapsed_s, notes=run.notes,
                       precision_knobs=run.to_dict()["precision_knobs"])  # fmt: skip
            if run.ok:
                digest = hashlib.sha1()
                for k in ("x", "w", "b"):
                    digest.update(np.ascontiguousarray(run.inputs_seen[k]).tobytes())
                key = digest.digest()
                if key not in exact_seen_cache:
                    xs, ws, bs = (run.inputs_seen[k] for k in ("x", "w", "b"))
                    exact_seen_cache[key] = refconv.conv2d(xs, ws, bs, **geometry)
                od = run.output_dtype or dtype
                row.update(
                    max_ulp=max_ulp(run.output, exact, od),
                    max_ulp_arith=max_ulp(run.output, exact_seen_cache[key], od),
                    max_abs_err=float(np.max(np.abs(run.output - exact))),
                )
                att = refconv.attribute(run, x, w, b, problem=problem)
                row.update(precision=att.precision, verdict=att.verdict, mismatch=att.mismatch)
                print(f"  {run.label:42s} {od:>9s} {row['max_ulp']:10.1f} {row['max_ulp_arith']:10.1f} "
                      f"{row['max_abs_err']:10.3e} {run.elapsed_s:8.3f} {att.precision or '-':>9s}  "
                      f"{att.verdict}{' (' + att.mismatch + ')' if att.mismatch else ''}")  # fmt: skip
            else:
                print(f"  {run.label:42s} FAILED: {(run.error or '')[:100]}")
            rows.append(row)

    verdicts = {}
    for gname in geometries:
        for framework, device in sorted({(r["framework"], r["device"]) for r in rows if r["device"] != "cpu"}):
            by_math = {r["math"]: r for r in rows if r["geometry"] == gname and r["framework"] == framework
                       and r["device"] == device and r["dtype"] == "float32" and r["ok"]}  # fmt: skip
            d = by_math.get("default", {}).get("precision")
            dd, t, i = (by_math.get(m, {}).get("max_ulp_arith", float("nan")) for m in ("default", "tf32", "ieee"))
            ulps = f"arithmetic ulp: default {dd:.1f}, ieee {i:.1f}, tf32 {t:.1f}"
            if d == "tf32":
                verdict = f"ON by default (the default run is attributed to TF32; {ulps})"
            elif d == "float32":
                verdict = f"off by default (the default run is attributed to float32; {ulps})"
            else:
                verdict = f"unknown (default run: precision {d}, or it failed)"
            verdicts[f"{framework}:{device}:{gname}"] = verdict
    if verdicts:
        print("\nTF32 by default (float32, arithmetic-only ulp):")
        for k, v in verdicts.items():
            print(f"  {k:55s} {v}")
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(dict(gpus=[{"device": d, "name": n} for d, n in gpus],
                       frameworks=[i.to_dict() for i in infos], rows=rows, tf32_default=verdicts),
                  fh, indent=1, default=str)  # fmt: skip
    print(f"\nwrote {args.out} ({len(rows)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
