"""pytest plugin (entry point ``pytest11``): fixtures for testing conv kernels against refconv.

Installed with refconv, so any test suite can ask for

* ``conv_oracle``: a :class:`ConvOracle` — ``conv_oracle.conv2d(...)`` (exact
  float64 result), ``conv_oracle.assert_close(actual, x, w, b, ...)``,
  ``conv_oracle.tolerance(...)``, ``conv_oracle.problems(n)``;
* ``refconv_check``: ``refconv_check(fn, problems=None, **options)`` runs
  :func:`~refconv.testing.check_conv2d` and fails the test with the per-problem
  summary if any problem fails; it returns the report.

Example test (``data_format`` etc. as in :func:`refconv.conv2d`)::

    def test_my_kernel(conv_oracle, refconv_check):
        conv_oracle.assert_close(my_conv(x, w), x, w, padding="SAME")
        refconv_check(my_conv, problems=200, precision="float32")

The plugin imports nothing heavy at pytest start-up (refconv.testing loads in the fixtures).
"""

from __future__ import annotations

from typing import Any

import pytest

__all__ = ["ConvOracle", "conv_oracle", "refconv_check"]


class ConvOracle:
    """The refconv.testing API bundled for fixtures; every method forwards its arguments.

    >>> import numpy as np
    >>> o = ConvOracle()
    >>> float(o.conv2d(np.ones((1, 2, 2, 1)), np.ones((2, 2, 1, 1)))[0, 0, 0, 0])
    4.0
    >>> o.assert_close(np.full((1, 1, 1, 1), 4.0, np.float32), np.ones((1, 2, 2, 1)), np.ones((2, 2, 1, 1)))
    """

    def conv2d(self, x: Any, w: Any, b: Any = None, **kwargs: Any) -> Any:
        """The exact (correctly rounded, float64) cross-correlation: :func:`refconv.conv2d`."""
        from .. import conv2d

        return conv2d(x, w, b, **kwargs)

    def assert_close(self, actual: Any, x: Any, w: Any, b: Any = None, **kwargs: Any) -> None:
        """:func:`refconv.testing.assert_conv2d_close`."""
        __tracebackhide__ = True
        from .assertions import assert_conv2d_close

        assert_conv2d_close(actual, x, w, b, **kwargs)

    def tolerance(self, x: Any, w: Any, b: Any = None, **kwargs: Any) -> Any:
        """:func:`refconv.testing.conv2d_tolerance`."""
        from .tolerance import conv2d_tolerance

        return conv2d_tolerance(x, w, b, **kwargs)

    def check(self, fn: Any, problems: Any = None, **kwargs: Any) -> Any:
        """:func:`refconv.testing.check_conv2d` (returns the report, does not assert)."""
        from .check import check_conv2d

        return check_conv2d(fn, problems, **kwargs)

    def problems(self, count: int | None = None, **kwargs: Any) -> list:
        """The default corpus (``count=None``) or ``count`` seeded random problems."""
        from .problems import default_problems, random_problems

        return default_problems() if count is None else list(random_problems(count, **kwargs))


@pytest.fixture
def conv_oracle() -> ConvOracle:
    """Exact conv, tolerance and bound-derived assertions for conv kernels (see :class:`ConvOracle`)."""
    return ConvOracle()


@pytest.fixture
def refconv_check() -> Any:
    """``refconv_check(fn, problems=None, **options)``: check a kernel over a corpus; fail with the summary."""

    def run(fn: Any, problems: Any = None, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        from .check import check_conv2d

        report = check_conv2d(fn, problems, **kwargs)
        if not report.passed:
            details = "\n\n".join(f"--- {r.name}\n{r.error or r.message}" for r in report.failures[:3])
            pytest.fail(f"{report.summary()}\n\nFirst failures in full:\n{details}", pytrace=False)
        return report

    return run
