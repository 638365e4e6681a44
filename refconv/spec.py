"""Conv geometry: a frozen, validated :class:`ConvSpec`.

Every other stage (oracle, framework adapters, attribution) takes a spec that was
validated here once. Conventions:

* the operation is cross-correlation, as in every framework;
* ``data_format`` is "NHWC" (default) or "NCHW"; ``kernel_format`` is "HWIO" or
  "OIHW" and follows ``data_format`` when omitted;
* padding is explicit: "SAME" (TensorFlow: out = ceil(in/stride), extra pad at
  bottom/right), "SAME_LOWER" (extra pad at top/left), "VALID", an int
  (symmetric), ``(ph, pw)`` (symmetric per axis) or ``((top, bottom), (left, right))``.

Example:
    >>> from refconv.spec import ConvSpec
    >>> s = ConvSpec.from_shapes((1, 16, 32, 256), (5, 5, 256, 512), stride=2, padding="SAME")
    >>> s.pads, s.output_shape
    (((1, 2), (1, 2)), (1, 8, 16, 512))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import DTypeError, ShapeError

__all__ = [
    "ConvSpec",
    "Padding",
    "resolve_padding",
    "tf_same_padding",
    "as_float64",
    "DATA_FORMATS",
    "KERNEL_FORMATS",
]

DATA_FORMATS = ("NHWC", "NCHW")
KERNEL_FORMATS = ("HWIO", "OIHW")
PADDING_MODES = ("SAME", "SAME_LOWER", "VALID")
_PADDING_FORMS = f"expected one of {', '.join(PADDING_MODES)}, an int, (ph, pw) or ((top, bottom), (left, right))"

Pads = tuple[tuple[int, int], tuple[int, int]]
Padding = str | int | tuple[int, int] | Pads


def tf_same_padding(size: int, kernel: int, stride: int, dilation: int, *, lower: bool = False) -> tuple[int, int]:
    """TensorFlow's SAME padding of one spatial axis, as (before, after).

    out = ceil(size / stride); total = max((out - 1)*stride + (kernel - 1)*dilation + 1 - size, 0).
    The smaller half goes before (TF, ONNX SAME_UPPER); ``lower=True`` puts the
    extra pad before instead (ONNX SAME_LOWER).

    >>> tf_same_padding(32, 5, 2, 1), tf_same_padding(32, 5, 2, 1, lower=True)
    ((1, 2), (2, 1))
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    small, big = total // 2, total - total // 2
    return (big, small) if lower else (small, big)


def _pair(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, (Sequence, np.ndarray)) and len(value) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        return int(value[0]), int(value[1])
    raise ShapeError(f"{name}={value!r}: expected an int or an (h, w) pair of ints")


def _normalize_padding(padding: Padding) -> Padding:
    """The user's padding form with plain Python types: upper-case mode names, int tuples (hashable, JSON-able)."""
    if isinstance(padding, str):
        return padding.upper()
    if _is_int(padding):
        return int(padding)  # type: ignore[arg-type]
    if all(_is_int(v) for v in padding):  # type: ignore[union-attr]
        return int(padding[0]), int(padding[1])  # type: ignore[index]
    return tuple((int(p[0]), int(p[1])) for p in padding)  # type: ignore[return-value, union-attr, index]


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def resolve_padding(
    padding: Padding,
    in_hw: tuple[int, int],
    kernel_hw: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> Pads:
    """Resolve any padding form to explicit ``((top, bottom), (left, right))`` pads.

    >>> resolve_padding("SAME", (7, 8), (3, 3), (2, 2), (1, 1))
    ((1, 1), (0, 1))
    >>> resolve_padding(((0, 1), (2, 3)), (7, 8), (3, 3), (1, 1), (1, 1))
    ((0, 1), (2, 3))
    """
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "SAME_UPPER":
            mode = "SAME"
        if mode == "VALID":
            return (0, 0), (0, 0)
        if mode in ("SAME", "SAME_LOWER"):
            lower = mode == "SAME_LOWER"
            return tuple(  # type: ignore[return-value]
                tf_same_padding(in_hw[a], kernel_hw[a], stride[a], dilation[a], lower=lower) for a in range(2)
            )
        raise ShapeError(f"padding={padding!r}: {_PADDING_FORMS}")
    if _is_int(padding):
        p = int(padding)  # type: ignore[arg-type]
        pads: Pads = ((p, p), (p, p))
    elif isinstance(padding, Sequence) and len(padding) == 2 and all(_is_int(v) for v in padding):
        pads = ((int(padding[0]), int(padding[0])), (int(padding[1]), int(padding[1])))  # type: ignore[arg-type]
    elif (
        isinstance(padding, Sequence)
        and len(padding) == 2
        and all(isinstance(p, Sequence) and len(p) == 2 and all(_is_int(v) for v in p) for p in padding)
    ):
        pads = tuple((int(p[0]), int(p[1])) for p in padding)  # type: ignore[assignment, union-attr, index]
    else:
        raise ShapeError(
            f"padding={padding!r}: {_PADDING_FORMS}"
        )
    if any(v < 0 for p in pads for v in p):
        raise ShapeError(f"padding={padding!r}: pads must be non-negative, got {pads}")
    return pads


def as_float64(a: Any, name: str) -> np.ndarray:
    """Convert an array-like to float64 *exactly*, or raise :class:`DTypeError`.

    float16, bfloat16 (ml_dtypes), float32, float64, bool and integers up to 2**53
    in magnitude convert exactly. Complex, object and string arrays are rejected,
    and so are integers that float64 cannot hold exactly.

    >>> as_float64(np.arange(3, dtype=np.int32), "x").dtype
    dtype('float64')
    """
    arr = a
    if not isinstance(arr, np.ndarray):
        if hasattr(arr, "detach"):  # torch tensors
            arr = arr.detach().cpu()
            if str(arr.dtype) == "torch.bfloat16":
                arr = arr.float()
        elif hasattr(arr, "numpy") and callable(arr.numpy):  # tf tensors
            arr = arr.numpy()
        arr = np.asarray(arr)
    dt = arr.dtype
    if dt == np.float64:
        return arr
    if dt.kind == "c":
        raise DTypeError(f"{name}.dtype={dt}: complex inputs are not supported; pass the real part explicitly")
    if dt.kind in "f":
        if dt.itemsize > 8:
            out = arr.astype(np.float64)
            if not np.array_equal(out.astype(dt), arr, equal_nan=True):
                raise DTypeError(f"{name}.dtype={dt}: values do not fit float64 exactly")
            return out
        return arr.astype(np.float64)
    if dt.kind == "b":
        return arr.astype(np.float64)
    if dt.kind in "iu":
        out = arr.astype(np.float64)
        if arr.size and int(np.max(np.abs(arr.astype(object) if dt.itemsize >= 8 else arr))) > 2**53:
            big = arr.astype(object)
            if any(int(v) != int(f) for v, f in zip(big.ravel(), out.ravel())):
                raise DTypeError(
                    f"{name}.dtype={dt}: integers above 2**53 in magnitude do not convert to float64 exactly"
                )
        return out
    if dt.kind == "V" and dt.itemsize == 2 and dt.name in ("bfloat16",):
        return arr.astype(np.float32).astype(np.float64)
    if dt.kind == "V" and dt.name.startswith("float8"):
        return arr.astype(np.float32).astype(np.float64)
    raise DTypeError(
        f"{name}.dtype={dt}: expected a real numeric array (float16, bfloat16, float32, float64, integer or bool)"
    )


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """Validated geometry of one 2-D cross-correlation.

    Build it with :meth:`from_shapes` or :meth:`from_arrays`; direct construction
    skips validation. Shapes are stored as given (in ``data_format`` /
    ``kernel_format``); the canonical sizes are N, H, W, C (input), KH, KW, O.

    >>> s = ConvSpec.from_shapes((2, 3, 7, 7), (4, 3, 3, 3), padding=1, data_format="NCHW")
    >>> s.kernel_format, s.output_shape, s.n_terms
    ('OIHW', (2, 4, 7, 7), 27)
    """

    x_shape: tuple[int, int, int, int]
    w_shape: tuple[int, int, int, int]
    has_bias: bool
    stride: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    padding: Padding
    pads: Pads
    data_format: str
    kernel_format: str

    # ---- construction -------------------------------------------------
    @classmethod
    def from_shapes(
        cls,
        x_shape: Sequence[int],
        w_shape: Sequence[int],
        b_shape: Sequence[int] | None = None,
        *,
        stride: int | tuple[int, int] = 1,
        padding: Padding = "VALID",
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        data_format: str = "NHWC",
        kernel_format: str | None = None,
    ) -> ConvSpec:
        """Validate shapes and geometry; raise :class:`ShapeError` naming every value."""
        xs, ws = tuple(int(v) for v in x_shape), tuple(int(v) for v in w_shape)
        ctx = f"x.shape={xs} w.shape={ws}"
        if not isinstance(data_format, str) or data_format.upper() not in DATA_FORMATS:
            raise ShapeError(f"data_format={data_format!r}: expected one of {DATA_FORMATS}")
        data_format = data_format.upper()
        if kernel_format is None:
            kernel_format = "HWIO" if data_format == "NHWC" else "OIHW"
        if not isinstance(kernel_format, str) or kernel_format.upper() not in KERNEL_FORMATS:
            raise ShapeError(f"kernel_format={kernel_format!r}: expected one of {KERNEL_FORMATS}")
        kernel_format = kernel_format.upper()
        if len(xs) != 4:
            raise ShapeError(f"{ctx}: x must be 4-D in {data_format} layout, got {len(xs)}-D")
        if len(ws) != 4:
            raise ShapeError(f"{ctx}: w must be 4-D in {kernel_format} layout, got {len(ws)}-D")
        st, dl = _pair(stride, "stride"), _pair(dilation, "dilation")
        if min(st) <= 0:
            raise ShapeError(f"{ctx} stride={stride!r}: stride must be positive")
        if min(dl) <= 0:
            raise ShapeError(f"{ctx} dilation={dilation!r}: dilation must be positive")
        if not _is_int(groups) or groups <= 0:
            raise ShapeError(f"{ctx} groups={groups!r}: groups must be a positive int")
        groups = int(groups)
        n, h, w, c = xs if data_format == "NHWC" else (xs[0], xs[2], xs[3], xs[1])
        kh, kw, ci, o = ws if kernel_format == "HWIO" else (ws[2], ws[3], ws[1], ws[0])
        if min(xs) <= 0 or min(ws) <= 0:
            raise ShapeError(f"{ctx}: every dimension must be positive (empty arrays have no convolution)")
        gctx = f"{ctx} groups={groups}"
        if c % groups:
            raise ShapeError(f"{gctx}: groups ({groups}) must divide the input channels C ({c})")
        if o % groups:
            raise ShapeError(f"{gctx}: groups ({groups}) must divide the output channels O ({o})")
        if ci != c // groups:
            raise ShapeError(f"{gctx}: w's input channels ({ci}) must equal C/groups ({c // groups})")
        if b_shape is not None and tuple(b_shape) != (o,):
            raise ShapeError(f"{ctx} b.shape={tuple(b_shape)}: bias must have shape (O,) = ({o},)")
        pads = resolve_padding(padding, (h, w), (kh, kw), st, dl)
        padding = _normalize_padding(padding)
        spec = cls(xs, ws, b_shape is not None, st, dl, groups, padding, pads, data_format, kernel_format)  # type: ignore[arg-type]
        oh, ow = spec.out_hw
        if oh <= 0 or ow <= 0:
            raise ShapeError(
                f"{ctx} stride={st} dilation={dl} pads={pads}: empty output {(oh, ow)}; the dilated kernel "
                f"({(kh - 1) * dl[0] + 1}, {(kw - 1) * dl[1] + 1}) is larger than the padded input "
                f"({h + pads[0][0] + pads[0][1]}, {w + pads[1][0] + pads[1][1]})"
            )
        return spec

    @classmethod
    def from_arrays(cls, x: Any, w: Any, b: Any = None, **geometry: Any) -> ConvSpec:
        """Like :meth:`from_shapes`, reading the shapes of array-likes."""
        shape = lambda a: np.shape(a) if not hasattr(a, "shape") else tuple(a.shape)  # noqa: E731
        return cls.from_shapes(shape(x), shape(w), None if b is None else shape(b), **geometry)

    # ---- canonical sizes ---------------------------------------------
    @property
    def N(self) -> int:
        return self.x_shape[0]

    @property
    def H(self) -> int:
        return self.x_shape[1] if self.data_format == "NHWC" else self.x_shape[2]

    @property
    def W(self) -> int:
        return self.x_shape[2] if self.data_format == "NHWC" else self.x_shape[3]

    @property
    def C(self) -> int:
        return self.x_shape[3] if self.data_format == "NHWC" else self.x_shape[1]

    @property
    def KH(self) -> int:
        return self.w_shape[0] if self.kernel_format == "HWIO" else self.w_shape[2]

    @property
    def KW(self) -> int:
        return self.w_shape[1] if self.kernel_format == "HWIO" else self.w_shape[3]

    @property
    def O(self) -> int:  # noqa: E743
        return self.w_shape[3] if self.kernel_format == "HWIO" else self.w_shape[0]

    @property
    def out_hw(self) -> tuple[int, int]:
        """Output (height, width)."""
        dims = []
        for size, k, s, d, (p0, p1) in zip((self.H, self.W), (self.KH, self.KW), self.stride, self.dilation, self.pads):
            dims.append((size + p0 + p1 - (k - 1) * d - 1) // s + 1)
        return dims[0], dims[1]

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        """Output shape in ``data_format``."""
        oh, ow = self.out_hw
        return (self.N, oh, ow, self.O) if self.data_format == "NHWC" else (self.N, self.O, oh, ow)

    @property
    def n_terms(self) -> int:
        """Products per output element: KH*KW*C/groups (bias not counted)."""
        return self.KH * self.KW * (self.C // self.groups)

    # ---- derived specs and layout helpers ----------------------------
    def replace(self, **changes: Any) -> ConvSpec:
        """A re-validated spec with some geometry changed; everything not named is kept.

        Padding keeps its *form*: a "SAME" spec stays "SAME" and is re-resolved for
        a new stride, dilation or shape (pass ``padding=`` or ``pads=`` to change
        it). Changing ``data_format`` or ``kernel_format`` without new shapes
        describes the same convolution in the other layout (shapes are permuted).

        >>> s = ConvSpec.from_shapes((1, 6, 6, 1), (3, 3, 1, 1), padding="SAME")
        >>> s.replace(padding="VALID").output_shape, s.replace(stride=2).pads
        ((1, 4, 4, 1), ((0, 1), (0, 1)))
        >>> s.replace(data_format="NCHW").x_shape
        (1, 1, 6, 6)
        """
        if "pads" in changes:
            if "padding" in changes:
                raise ShapeError("replace: give padding= or pads=, not both")
            changes["padding"] = changes.pop("pads")
        kw: dict[str, Any] = dict(
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            data_format=self.data_format,
            kernel_format=self.kernel_format,
        )
        unknown = set(changes) - set(kw) - {"x_shape", "w_shape", "has_bias"}
        if unknown:
            valid = sorted([*kw, "has_bias", "pads", "w_shape", "x_shape"])
            raise ShapeError(f"replace: unknown field(s) {sorted(unknown)}; valid: {valid}")
        kw.update(changes)
        x_shape, w_shape = kw.pop("x_shape", None), kw.pop("w_shape", None)
        has_bias = kw.pop("has_bias", self.has_bias)
        if x_shape is None:
            n, h, w, c = self.N, self.H, self.W, self.C
            x_shape = (n, h, w, c) if str(kw["data_format"]).upper() == "NHWC" else (n, c, h, w)
        if w_shape is None:
            kh, kw_, ci, o = self.KH, self.KW, self.C // self.groups, self.O
            w_shape = (kh, kw_, ci, o) if str(kw["kernel_format"]).upper() == "HWIO" else (o, ci, kh, kw_)
        o_new = w_shape[3] if str(kw["kernel_format"]).upper() == "HWIO" else w_shape[0]
        return ConvSpec.from_shapes(x_shape, w_shape, (o_new,) if has_bias else None, **kw)

    def x_to_nhwc(self, x: np.ndarray) -> np.ndarray:
        return x if self.data_format == "NHWC" else x.transpose(0, 2, 3, 1)

    def w_to_hwio(self, w: np.ndarray) -> np.ndarray:
        return w if self.kernel_format == "HWIO" else w.transpose(2, 3, 1, 0)

    def y_from_nhwc(self, y: np.ndarray) -> np.ndarray:
        return y if self.data_format == "NHWC" else y.transpose(0, 3, 1, 2)

    def y_to_nhwc(self, y: np.ndarray) -> np.ndarray:
        return y if self.data_format == "NHWC" else y.transpose(0, 2, 3, 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description of the geometry."""
        return {
            "x_shape": list(self.x_shape),
            "w_shape": list(self.w_shape),
            "has_bias": self.has_bias,
            "stride": list(self.stride),
            "dilation": list(self.dilation),
            "groups": self.groups,
            "padding": self.padding if isinstance(self.padding, (str, int)) else _listify(self.padding),
            "pads": _listify(self.pads),
            "data_format": self.data_format,
            "kernel_format": self.kernel_format,
            "output_shape": list(self.output_shape),
            "n_terms": self.n_terms,
        }

    def describe(self) -> str:
        """One line, e.g. for reports."""
        return (
            f"x{self.x_shape} {self.data_format} * w{self.w_shape} {self.kernel_format}"
            f"{' + b' if self.has_bias else ''}, stride={self.stride}, padding={self.padding!r} -> pads={self.pads}, "
            f"dilation={self.dilation}, groups={self.groups} -> y{self.output_shape}"
        )


def _listify(v: Any) -> Any:
    return [_listify(e) for e in v] if isinstance(v, (tuple, list)) else v


def prepare(
    x: Any,
    w: Any,
    b: Any = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: Padding = "VALID",
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    data_format: str = "NHWC",
    kernel_format: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, ConvSpec]:
    """Validate once at the boundary: exact float64 arrays plus their spec."""
    xf, wf = as_float64(x, "x"), as_float64(w, "w")
    bf = None if b is None else as_float64(b, "b")
    spec = ConvSpec.from_shapes(
        xf.shape,
        wf.shape,
        None if bf is None else bf.shape,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        data_format=data_format,
        kernel_format=kernel_format,
    )
    return xf, wf, bf, spec

