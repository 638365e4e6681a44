"""Hypothesis strategies for conv problems (this module imports hypothesis; nothing else in refconv does).

* :func:`conv_problems` — a :class:`~refconv.testing.problems.ConvProblem`:
  geometry with every padding form (SAME, SAME_LOWER, VALID, int, (ph, pw),
  ((t, b), (l, r))), strides, dilations, groups (depthwise too), NHWC/NCHW and
  HWIO/OIHW layouts, values from a family of
  :data:`~refconv.testing.problems.VALUE_FAMILIES` (ill-conditioned sums,
  identity kernels, integers above 2048, mixed magnitudes, subnormals, large K, ...);
* :func:`geometries` — just the geometry keywords and shapes;
* :func:`dtypes`, :func:`value_families`, :func:`paddings`.

Discrete choices (shapes, geometry, family) are drawn by hypothesis and shrink;
the values come from a NumPy generator seeded by a drawn integer, so a failing
example is reproducible from its seed.

>>> from hypothesis import given, settings
>>> @settings(max_examples=5, deadline=None)
... @given(conv_problems(families=["small_integers"]))
... def test_exact_integers(p):
...     import refconv, numpy as np
...     y = refconv.conv2d(p.x, p.w, p.b, **p.geometry)
...     np.testing.assert_array_equal(y, np.round(y), err_msg="integer data gives integer sums")
>>> test_exact_integers()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from .problems import DTYPES, PADDING_FORMS, VALUE_FAMILIES, ConvProblem, _geometry, build_problem

__all__ = ["conv_problems", "geometries", "dtypes", "value_families", "paddings"]


class _DrawChooser:
    def __init__(self, draw: Any) -> None:
        self.draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def choice(self, options: Sequence[Any]) -> Any:
        return self.draw(st.sampled_from(list(options)))


def dtypes() -> st.SearchStrategy[str]:
    """Input dtypes refconv can convert exactly ("float32", "float64", "float16", "bfloat16").

    >>> from hypothesis import find
    >>> find(dtypes(), lambda d: d != 'float32') in DTYPES
    True
    """
    return st.sampled_from(DTYPES)


def value_families() -> st.SearchStrategy[str]:
    """Names of :data:`~refconv.testing.problems.VALUE_FAMILIES`.

    >>> from hypothesis import find
    >>> find(value_families(), lambda f: True) in VALUE_FAMILIES
    True
    """
    return st.sampled_from(list(VALUE_FAMILIES))


def paddings() -> st.SearchStrategy[str]:
    """Names of the padding forms the geometries draw from (:data:`~refconv.testing.problems.PADDING_FORMS`).

    >>> from hypothesis import find
    >>> find(paddings(), lambda f: True) in PADDING_FORMS
    True
    """
    return st.sampled_from(PADDING_FORMS)


@st.composite
def geometries(draw: Any, *, family: str = "uniform", max_hw: int = 8, max_channels: int = 4,
               max_k: int = 4) -> tuple[dict[str, Any], tuple[int, ...], tuple[int, ...]]:
    """(geometry keywords, x shape in NHWC, w shape in HWIO) of a valid conv.

    The keywords are those of :func:`refconv.conv2d`; the shapes are canonical
    (transpose them for NCHW/OIHW as ``geometry`` says).

    >>> from hypothesis import find
    >>> g, xs, ws = find(geometries(), lambda g: g[0]["groups"] > 1)
    >>> sorted(g)
    ['data_format', 'dilation', 'groups', 'kernel_format', 'padding', 'stride']
    """
    return _geometry(_DrawChooser(draw), family, max_hw, max_channels, max_k)


@st.composite
def conv_problems(
    draw: Any,
    *,
    dtype: str | None = "float32",
    families: Sequence[str] | None = None,
    max_hw: int = 8,
    max_channels: int = 4,
    max_k: int = 4,
    bias: bool | None = None,
) -> ConvProblem:
    """A :class:`~refconv.testing.problems.ConvProblem` (x, w, b, geometry, family, dtype, seed).

    ``dtype=None`` draws the dtype too; ``families`` restricts the value
    families; ``bias=None`` draws whether there is a bias.

    >>> from hypothesis import find
    >>> p = find(conv_problems(families=["identity_kernel"]), lambda p: p.b is not None)
    >>> p.family, p.x.dtype.name
    ('identity_kernel', 'float32')
    """
    seed = draw(st.integers(0, 2**32 - 1))
    return build_problem(_DrawChooser(draw), seed, dtype=dtype, families=families, max_hw=max_hw,
                         max_channels=max_channels, max_k=max_k, bias=bias)
