"""Semantic hypotheses: the conv a framework may have computed instead of the one asked for.

Each generator in :data:`HYPOTHESES` takes the canonical problem (NHWC ``x``,
HWIO ``w``, bias ``b``, and a canonical NHWC/HWIO :class:`ConvSpec`) and yields
:class:`Hypothesis` objects: an alternative spec and inputs plus a sentence
describing the difference. The key of the registry is the public mismatch
label (:data:`refconv.attribution.types.MISMATCHES`).

>>> import numpy as np
>>> from refconv.spec import ConvSpec
>>> s = ConvSpec.from_shapes((1, 8, 8, 2), (3, 3, 2, 2), (2,), stride=2, padding="SAME")
>>> hs = list(generate(s, np.ones((1, 8, 8, 2)), np.arange(36.0).reshape(3, 3, 2, 2), np.ones(2)))
>>> sorted({h.kind for h in hs})
['bias', 'dilation', 'kernel_flip', 'kernel_layout', 'padding', 'stride']
>>> next(h.detail for h in hs if h.kind == "padding" and h.spec.pads == ((1, 1), (1, 1)))
"output equals the exact conv with pads ((1,1),(1,1)) (symmetric) instead of SAME's ((0,1),(0,1))"
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator

import numpy as np

from ..errors import ShapeError
from ..spec import ConvSpec, tf_same_padding
from .types import MISMATCHES

__all__ = ["Hypothesis", "HYPOTHESES", "generate", "fmt_pads"]


@dataclasses.dataclass
class Hypothesis:
    """One alternative conv: canonical spec and inputs, with the sentence that names it."""

    kind: str
    detail: str
    spec: ConvSpec
    x: np.ndarray
    w: np.ndarray
    b: np.ndarray | None

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.detail}"


def fmt_pads(pads: tuple[tuple[int, int], tuple[int, int]]) -> str:
    """Compact pads text, e.g. ``((0,1),(0,1))``.

    >>> fmt_pads(((0, 1), (2, 2)))
    '((0,1),(2,2))'
    """
    return "((" + "),(".join(f"{a},{b}" for a, b in pads) + "))"


def _canonical(spec: ConvSpec, w_shape: tuple[int, ...] | None = None, **changes: object) -> ConvSpec | None:
    """The canonical (NHWC/HWIO) spec with some geometry changed, or None if invalid."""
    geometry = dict(stride=spec.stride, padding=spec.pads, dilation=spec.dilation, groups=spec.groups)
    geometry.update(changes)  # type: ignore[arg-type]
    try:
        return ConvSpec.from_shapes(
            spec.x_shape, w_shape or spec.w_shape, (spec.O,) if spec.has_bias else None,
            data_format="NHWC", kernel_format="HWIO", **geometry,  # type: ignore[arg-type]
        )
    except ShapeError:
        return None


def _asked(spec: ConvSpec, user_padding: object) -> str:
    if isinstance(user_padding, str):
        return f"{user_padding.upper()}'s {fmt_pads(spec.pads)}"
    return f"the requested pads {fmt_pads(spec.pads)}"


def _padding(spec: ConvSpec, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, user_padding: object):
    """Padding conventions: TF SAME, SAME_LOWER, VALID, TVM-style (stride ignored), symmetric, swapped."""
    per_axis: list[dict[tuple[int, int], str]] = []
    for a, size, k in ((0, spec.H, spec.KH), (1, spec.W, spec.KW)):
        s, d = spec.stride[a], spec.dilation[a]
        same = tf_same_padding(size, k, s, d)
        tvm = tf_same_padding(size, k, 1, d)
        half = (k - 1) * d // 2
        opts: dict[tuple[int, int], str] = {spec.pads[a]: "as asked"}
        for p, name in (
            ((half, half), "symmetric"),
            (same, "SAME"),
            (same[::-1], "SAME_LOWER"),
            ((0, 0), "VALID"),
            (((k - 1) * d - half,) * 2, "symmetric"),
            ((same[0], same[0]), "symmetric"),
            ((same[1], same[1]), "symmetric"),
            (tvm, "TVM-style SAME, stride ignored"),
            (tvm[::-1], "TVM-style SAME_LOWER, stride ignored"),
            (spec.pads[a][::-1], "before/after swapped"),
        ):
            opts.setdefault(tuple(p), name)  # type: ignore[arg-type]
        p0, p1 = spec.pads[a]
        for p in ((p0 + 1, p1), (p0 - 1, p1), (p0, p1 + 1), (p0, p1 - 1)):
            if min(p) >= 0:
                opts.setdefault(p, "one pad off by one")
        per_axis.append(opts)
    seen = {spec.pads}
    for (ph, nh), (pw, nw) in itertools.product(per_axis[0].items(), per_axis[1].items()):
        pads = (ph, pw)
        if pads in seen:
            continue
        # same style on both axes, or one axis changed and the other as asked
        if nh != nw and ph != spec.pads[0] and pw != spec.pads[1]:
            continue
        seen.add(pads)
        cs = _canonical(spec, padding=pads)
        if cs is None:
            continue
        style = nh if ph != spec.pads[0] else nw
        yield Hypothesis(
            "padding",
            f"output equals the exact conv with pads {fmt_pads(pads)} ({style}) "
            f"instead of {_asked(spec, user_padding)}",
            cs, x, w, b,
        )


_AXES = "HWIO"


def _kernel_layout(spec: ConvSpec, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, user_padding: object):
    """Kernel axes permuted (H/W swapped, I/O swapped, ...) or an OIHW/HWIO buffer read in the other layout."""
    probe = np.random.default_rng(0).integers(0, w.size, 256)
    found: list[tuple[np.ndarray, np.ndarray]] = []

    def fingerprint(a: np.ndarray) -> np.ndarray:
        return a[np.unravel_index(probe, a.shape)]  # no copy of the array, even for transposed views

    def fresh(a: np.ndarray) -> bool:
        fp = fingerprint(a)
        for f, ffp in found:
            if a.shape == f.shape and np.array_equal(fp, ffp) and np.array_equal(a, f):
                return False
        found.append((a, fp))
        return True

    fresh(w)
    for perm in itertools.permutations(range(4)):
        if perm == (0, 1, 2, 3):
            continue
        wp = w.transpose(perm)
        cs = _canonical(spec, w_shape=wp.shape)
        if cs is None or not fresh(wp):
            continue
        named = "".join(_AXES[p] for p in perm)
        detail = (
            "kernel H and W swapped" if perm == (1, 0, 2, 3) else f"kernel axes read as {named} instead of HWIO"
        )
        yield Hypothesis("kernel_layout", f"output equals the exact conv with {detail}", cs, x, wp, b)
    kh, kw, ci, o = w.shape
    for layout, perm in (("OIHW", (3, 2, 0, 1)), ("OHWI", (3, 0, 1, 2)), ("IHWO", (2, 0, 1, 3))):
        # an array stored in `layout` whose buffer was reshaped (not transposed) to HWIO, and the reverse
        shape_l = tuple(w.shape[p] for p in perm)
        inverse = tuple(np.argsort(perm))
        for wp, detail in (
            (np.ascontiguousarray(w.transpose(perm)).reshape(w.shape), f"a buffer in {layout} order reshaped to HWIO"),
            (np.ascontiguousarray(w).reshape(shape_l).transpose(inverse), f"an HWIO buffer reshaped to {layout} order"),
        ):
            if fresh(wp):
                yield Hypothesis(
                    "kernel_layout", f"output equals the exact conv with {detail} (kernel {kh}x{kw}x{ci}x{o})",
                    spec, x, wp, b,
                )


def _kernel_flip(spec: ConvSpec, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, user_padding: object):
    """True convolution: the kernel rotated by 180 degrees."""
    wf = np.ascontiguousarray(w[::-1, ::-1])
    if not np.array_equal(wf, w):
        yield Hypothesis(
            "kernel_flip",
            "output equals the exact true convolution (kernel flipped in H and W) instead of cross-correlation",
            spec, x, wf, b,
        )


def _bias(spec: ConvSpec, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, user_padding: object):
    """Bias left out, or added twice."""
    if b is None or not np.any(b):
        return
    nobias = _canonical_nobias(spec)
    yield Hypothesis("bias", "output equals the exact conv without the bias", nobias, x, w, None)
    yield Hypothesis("bias", "output equals the exact conv with the bias added twice", spec, x, w, 2 * b)


def _canonical_nobias(spec: ConvSpec) -> ConvSpec:
    return ConvSpec.from_shapes(
        spec.x_shape, spec.w_shape, None, stride=spec.stride, padding=spec.pads, dilation=spec.dilation,
        groups=spec.groups, data_format="NHWC", kernel_format="HWIO",
    )


def _geometry_off_by_one(field: str):
    def gen(spec: ConvSpec, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, user_padding: object):
        base = getattr(spec, field)
        mode = user_padding.upper() if isinstance(user_padding, str) else None
        for dh, dw in itertools.product((-1, 0, 1), repeat=2):
            if dh == dw == 0:
                continue
            new = (base[0] + dh, base[1] + dw)
            if min(new) < 1:
                continue
            paddings = [(spec.pads, "the same pads")]
            if mode in ("SAME", "SAME_UPPER", "SAME_LOWER"):
                paddings.append((mode, f"{mode} recomputed"))
            for padding, how in paddings:
                cs = _canonical(spec, **{field: new, "padding": padding})
                if cs is None:
                    continue
                yield Hypothesis(
                    field,
                    f"output equals the exact conv with {field} {new} ({how}) instead of {base}",
                    cs, x, w, b,
                )

    gen.__doc__ = f"{field.capitalize()} off by one on either axis."
    return gen


Generator = Callable[[ConvSpec, np.ndarray, np.ndarray, "np.ndarray | None", object], Iterator[Hypothesis]]

HYPOTHESES: dict[str, Generator] = {
    "padding": _padding,
    "kernel_layout": _kernel_layout,
    "kernel_flip": _kernel_flip,
    "bias": _bias,
    "stride": _geometry_off_by_one("stride"),
    "dilation": _geometry_off_by_one("dilation"),
}
assert set(HYPOTHESES) <= set(MISMATCHES)


def generate(
    spec: ConvSpec, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, user_padding: object = None
) -> Iterator[Hypothesis]:
    """Every hypothesis of every registered kind for a canonical (NHWC/HWIO) problem.

    ``user_padding`` is the padding as the user wrote it (for the wording);
    it defaults to ``spec.padding``.
    """
    up = spec.padding if user_padding is None else user_padding
    seen: set[tuple] = set()
    alive = []  # keep every array alive so that id() keys stay unique
    for gen in HYPOTHESES.values():
        for h in gen(spec, x, w, b, up):
            s = h.spec
            alive.append(h)
            key = (s.w_shape, s.stride, s.pads, s.dilation, s.has_bias, id(h.w), None if h.b is None else id(h.b))
            if key not in seen:
                seen.add(key)
                yield h
