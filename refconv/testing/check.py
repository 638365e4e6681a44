"""``check_conv2d``: run a user kernel over a corpus of conv problems and report per problem."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import Any

from .assertions import call_kernel, compare_conv2d
from .problems import ConvProblem, default_problems, random_problems

__all__ = ["check_conv2d", "CheckReport", "ProblemResult"]


@dataclasses.dataclass
class ProblemResult:
    """The verdict on one problem: passed, how badly it failed, and why.

    ``error`` is set when the kernel raised instead of returning; ``findings``
    are the diagnosis (fault classes) as dicts; ``message`` the full assertion text.
    """

    name: str
    family: str
    dtype: str
    spec: dict[str, Any]
    passed: bool
    n_fail: int
    n_total: int
    max_abs_error: float
    max_tol_ratio: float
    findings: list[dict[str, Any]]
    message: str
    error: str | None = None
    elapsed_s: float = 0.0

    @property
    def reason(self) -> str:
        """One line: "ok", the kernel's exception, or the first diagnosis."""
        if self.passed:
            return "ok"
        if self.error:
            return self.error
        if self.findings:
            return f"{self.findings[0]['kind']}: {self.findings[0]['statement']}"
        return self.message.splitlines()[1] if "\n" in self.message else self.message

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("max_abs_error", "max_tol_ratio"):
            v = d[k]
            d[k] = v if v == v and abs(v) != float("inf") else str(v)
        d["reason"] = self.reason
        return d


@dataclasses.dataclass
class CheckReport:
    """All problems one kernel was checked on, under one precision model.

    >>> import numpy as np, refconv
    >>> exact32 = lambda x, w, b, spec: refconv.conv2d(x, w, b, padding=spec.pads, stride=spec.stride,
    ...     dilation=spec.dilation, groups=spec.groups, data_format=spec.data_format,
    ...     kernel_format=spec.kernel_format).astype(np.float32)
    >>> rep = check_conv2d(exact32, problems=4)
    >>> rep.passed, rep.n_passed, len(rep.to_dict()["results"])
    (True, 4, 4)
    """

    kernel: str
    precision: str
    bound: str
    results: list[ProblemResult]
    elapsed_s: float = 0.0

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def n_passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def failures(self) -> list[ProblemResult]:
        return [r for r in self.results if not r.passed]

    def summary(self) -> str:
        """A short text table: one line per failing problem, then the totals."""
        lines = [f"check_conv2d({self.kernel}) at precision={self.precision} ({self.bound} bound): "
                 f"{self.n_passed}/{len(self.results)} problems passed in {self.elapsed_s:.2f} s"]
        for r in self.failures:
            lines.append(f"  FAIL {r.name} [{r.family}, {r.dtype}]: {r.reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "precision": self.precision,
            "bound": self.bound,
            "passed": self.passed,
            "n_passed": self.n_passed,
            "n_problems": len(self.results),
            "elapsed_s": self.elapsed_s,
            "results": [r.to_dict() for r in self.results],
        }


def _as_problems(problems: Any, dtype: str, seed: int) -> Iterable[ConvProblem]:
    if problems is None:
        return default_problems(dtype)
    if isinstance(problems, int):
        return random_problems(problems, seed=seed, dtype=dtype)
    if isinstance(problems, ConvProblem):
        return [problems]
    return problems


def check_conv2d(
    fn: Callable[..., Any],
    problems: Iterable[ConvProblem] | int | None = None,
    *,
    precision: str = "float32",
    accumulation: str | None = None,
    bound: str = "deterministic",
    dtype: str = "float32",
    seed: int = 0,
    explain: bool = True,
    detect_precision: bool = True,
) -> CheckReport:
    """Run kernel ``fn`` on every problem; judge each output as :func:`~refconv.testing.assert_conv2d_close` does.

    ``fn`` is called like :func:`~refconv.testing.assertions.call_kernel`:
    ``fn(x, w, b, spec)`` or ``fn(x, w, b)``, with each problem's arrays (in
    its layouts and ``dtype``). ``problems`` is an iterable of
    :class:`~refconv.testing.problems.ConvProblem`, an int (that many random
    problems from ``seed``) or None (the default corpus: every value family,
    padding form and layout). A kernel that raises fails that problem with the
    exception as its reason; the run never aborts. Returns a :class:`CheckReport`.
    """
    t0 = time.perf_counter()
    results = []
    for p in _as_problems(problems, dtype, seed):
        t1 = time.perf_counter()
        spec = p.spec
        try:
            y = call_kernel(fn, p.x, p.w, p.b, spec)
        except Exception as exc:
            results.append(ProblemResult(p.name, p.family, p.dtype, spec.to_dict(), False, -1, 0, float("nan"),
                                         float("inf"), [], "", error=f"kernel raised {type(exc).__name__}: {exc}",
                                         elapsed_s=time.perf_counter() - t1))
            continue
        try:
            c = compare_conv2d(y, p.x, p.w, p.b, **p.geometry, precision=precision, accumulation=accumulation,
                               bound=bound, explain=explain, detect_precision=detect_precision)
        except Exception as exc:  # e.g. an output refconv cannot convert exactly
            results.append(ProblemResult(p.name, p.family, p.dtype, spec.to_dict(), False, -1, 0, float("nan"),
                                         float("inf"), [], "", error=f"output rejected: {type(exc).__name__}: {exc}",
                                         elapsed_s=time.perf_counter() - t1))
            continue
        results.append(ProblemResult(
            p.name, p.family, p.dtype, spec.to_dict(), c.passed, c.n_fail, c.n_total, c.max_abs_error,
            c.max_tol_ratio, [f.to_dict() for f in c.findings], c.message, elapsed_s=time.perf_counter() - t1,
        ))
    name = getattr(fn, "__name__", type(fn).__name__)
    return CheckReport(name, precision, bound, results, time.perf_counter() - t0)
