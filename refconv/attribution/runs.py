"""Several runs of one conv: attribute each, then say which side of every pair is wrong."""

from __future__ import annotations

import dataclasses
import itertools
import math
import platform
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..errors import RefconvError
from ..formats import format_of_dtype
from ..frameworks.base import FrameworkRun
from ..spec import Padding, as_float64
from .attribute import Problem, attribute
from .explanation import g
from .types import Attribution, PairComparison, Report

__all__ = ["explain", "compare_pair", "LabeledRun"]


@dataclasses.dataclass
class LabeledRun(FrameworkRun):
    """A :class:`FrameworkRun` for an output computed elsewhere, shown under the caller's label.

    >>> import numpy as np
    >>> r = LabeledRun("mine", "", "cpu", "", "float32", "default", np.zeros((1, 1, 1, 1)), custom_label="my kernel")
    >>> r.label, r.ok
    ('my kernel', True)
    """

    custom_label: str = ""

    @property
    def label(self) -> str:
        return self.custom_label or super().label


def _as_run(item: Any, index: int, spec) -> FrameworkRun:
    """Accepted forms: FrameworkRun, (label, array[, dtype]), {"label", "output", "dtype", "inputs_seen"}, array."""
    if isinstance(item, FrameworkRun):
        return item
    label, arr, dtype, seen = f"run{index}", item, None, {}
    if isinstance(item, dict):
        label = item.get("label", label)
        arr, dtype, seen = item["output"], item.get("dtype"), item.get("inputs_seen") or {}
    elif isinstance(item, tuple) and len(item) in (2, 3) and isinstance(item[0], str):
        label, arr = item[0], item[1]
        dtype = item[2] if len(item) == 3 else None
    out_fmt = format_of_dtype(getattr(arr, "dtype", None))
    dtype = dtype or out_fmt or "float64"
    math_mode = "tf32" if str(dtype).lower() == "tf32" else "default"
    return LabeledRun(
        framework=label, version="", device="", device_name="", dtype="float32" if math_mode == "tf32" else dtype,
        math=math_mode, output=as_float64(arr, label), inputs_seen=seen, spec=spec, output_dtype=out_fmt,
        custom_label=label,
    )


def _collect_runs(runs: Any, x: Any, w: Any, b: Any, geometry: dict[str, Any], spec) -> list[FrameworkRun]:
    from .. import frameworks

    if isinstance(runs, str):
        return frameworks.run_many(runs, x, w, b, **geometry)
    out: list[FrameworkRun] = []
    for i, item in enumerate(runs):
        if isinstance(item, (str, frameworks.RunRequest)):
            out.extend(frameworks.run_many([item], x, w, b, **geometry))
        else:
            out.append(_as_run(item, i, spec))
    return out


def explain(
    x: Any,
    w: Any,
    b: Any = None,
    *,
    runs: Iterable[Any] | str,
    stride: int | tuple[int, int] = 1,
    padding: Padding = "VALID",
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    data_format: str = "NHWC",
    kernel_format: str | None = None,
) -> Report:
    """Attribute several runs of one conv and compare every pair.

    ``runs`` items may be :class:`~refconv.frameworks.FrameworkRun` objects,
    run requests ("torch:cpu:float32" strings, or one comma-separated string,
    or :class:`~refconv.frameworks.RunRequest`, executed with
    :func:`refconv.frameworks.run_many`), ``(label, array[, dtype])`` tuples or
    ``{"label", "output", "dtype", "inputs_seen"}`` dicts. Geometry keywords are
    those of :func:`refconv.conv2d`. A failed run is kept with attribution None.

    >>> import numpy as np, refconv
    >>> rng = np.random.default_rng(1)
    >>> x, w = rng.random((1, 5, 5, 3)), rng.random((3, 3, 3, 2))
    >>> y32 = refconv.conv2d(x.astype(np.float32), w.astype(np.float32)).astype(np.float32)
    >>> rep = explain(x, w, runs=[("exact", refconv.conv2d(x, w)), ("f32", y32)])
    >>> [a.verdict for a in rep.attributions], rep.pairs[0].wrong
    (['ok', 'ok'], 'neither')
    """
    geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, data_format=data_format,
                    kernel_format=kernel_format)
    t0 = time.perf_counter()
    prob = Problem(x, w, b, **geometry)
    _ = prob.exact
    oracle_s = time.perf_counter() - t0
    run_list = _collect_runs(runs, x, w, b, geometry, prob.spec)
    atts: list[Attribution | None] = []
    for r in run_list:
        if not r.ok:
            atts.append(None)
            continue
        try:
            atts.append(attribute(r, x, w, b, **geometry, problem=prob))
        except (RefconvError, ValueError) as exc:
            r.notes.append(f"attribution failed: {exc}")
            atts.append(None)
    pairs = []
    for (ra, aa), (rb, ab) in itertools.combinations(zip(run_list, atts), 2):
        if aa is not None and ab is not None:
            pairs.append(compare_pair(aa, ab, ra.output, rb.output, prob))
    env = {"python": platform.python_version(), "platform": platform.platform(), "numpy": np.__version__}
    for r in run_list:
        if r.version:
            env[r.framework] = r.version
    from .. import __version__

    env["refconv"] = __version__
    oracle = {"method": "exact", "elapsed_s": oracle_s,
              "description": "correctly rounded (float64 nearest the exact sum)"}
    return Report(prob.spec.to_dict(), run_list, atts, pairs, env, oracle)


def _fault(a: Attribution) -> str:
    if a.verdict == "mismatch":
        return a.mismatch_detail or a.mismatch or "semantic mismatch"
    if a.verdict == "unexplained":
        return a.mismatch_detail or "no model explains it"
    return f"its arithmetic is consistent only with {a.precision}, but {a.requested_dtype} was requested"


def _rounding(a: Attribution) -> str:
    return (
        f"{a.precision} rounding in {a.label} ({g(a.max_ulp)} {a.output_dtype} ulp, bound ratio "
        f"{g(a.max_bound_ratio)}, within the {a.precision} bound n·u·Σ|x·w| with n = {a.n_terms})"
    )


def compare_pair(a: Attribution, b: Attribution, ya: np.ndarray, yb: np.ndarray, problem: Problem) -> PairComparison:
    """How much of |y_a − y_b| each side's deviation from the exact conv accounts for, and who is wrong.

    ``share_a`` = Σ|y_a − exact| / (Σ|y_a − exact| + Σ|y_b − exact|) over the
    elements where both are finite (|y_a − y_b| ≤ |ε_a| + |ε_b| element-wise).
    A side is wrong when its verdict is "mismatch", "unexplained" or "degraded".
    """
    spec = problem.spec
    wrong_a = a.verdict != "ok"
    wrong_b = b.verdict != "ok"
    verdicts = {(True, True): "both", (True, False): "a", (False, True): "b", (False, False): "neither"}
    wrong = verdicts[(wrong_a, wrong_b)]
    if ya.shape != yb.shape:
        statement = f"the outputs have different shapes {ya.shape} and {yb.shape}; "
        max_diff, share_a, share_b = math.nan, math.nan, math.nan
    else:
        with np.errstate(invalid="ignore"):
            diff = np.abs(ya - yb)
        fin = np.isfinite(diff)
        max_diff = float(diff[fin].max()) if fin.any() else math.nan
        if ya.shape == spec.output_shape:
            exact = spec.y_from_nhwc(problem.exact)
            with np.errstate(invalid="ignore"):
                ea, eb = np.abs(ya - exact), np.abs(yb - exact)
            ok = np.isfinite(ea) & np.isfinite(eb)
            sa, sb = float(ea[ok].sum()), float(eb[ok].sum())
            share_a, share_b = (sa / (sa + sb), sb / (sa + sb)) if sa + sb > 0 else (0.0, 0.0)
        else:
            share_a = share_b = math.nan
        statement = ""
    gap = f"the {g(max_diff)} gap" if max_diff == max_diff else "the difference"
    if wrong == "neither":
        if max_diff == 0:
            statement += f"neither is wrong: {a.label} and {b.label} agree exactly"
        else:
            big, small = (a, b) if not share_b > share_a else (b, a)
            statement += f"neither is wrong: {gap} is {_rounding(big)}"
            if small.max_abs_error > 0:
                statement += f"; {small.label} is {small.precision} ok with max error {g(small.max_abs_error)}"
            else:
                statement += f"; {small.label} is exact"
    elif max_diff == 0:  # the same output judged against different requests: only the request can differ
        said = [f"{r.label} is {r.verdict} ({_fault(r)})" if r.verdict != "ok" else
                f"{r.label} is ok ({r.precision} arithmetic, {r.requested_dtype} requested)" for r in (a, b)]
        how = "both are wrong and agree exactly" if wrong == "both" else (
            f"{a.label} and {b.label} agree exactly, so only what was requested differs")
        statement += f"{how}: " + "; ".join(said)
    elif wrong == "both":
        statement += (f"both are wrong: {a.label} ({a.verdict}: {_fault(a)}) and {b.label} ({b.verdict}: "
                      f"{_fault(b)})")
    else:
        bad, good, share = (a, b, share_a) if wrong == "a" else (b, a, share_b)
        carried = f"; it carries {share:.0%} of {gap}" if share == share else ""
        statement += (f"{bad.label} is wrong ({bad.verdict}: {_fault(bad)}){carried}; {good.label} is "
                      f"{good.precision} ok (max error {g(good.max_abs_error)})")
    return PairComparison(a.label, b.label, max_diff, share_a, share_b, wrong, statement)
