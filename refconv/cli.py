"""The ``refconv`` command (also ``python -m refconv``): a thin layer over the library.

Subcommands:

* ``refconv frameworks`` — installed frameworks, versions, devices, precision knobs
  (:func:`refconv.frameworks.available`, :func:`refconv.frameworks.precision_knobs`).
* ``refconv compare`` — run one conv in several frameworks and attribute each run
  (:func:`refconv.frameworks.run`, :func:`refconv.explain`).
* ``refconv example seed`` — the seed notebook: PyTorch float64 against TensorFlow
  float32 at 1×16×32×256, 5×5×256→512, stride 2, SAME (:func:`seed_problem`).
* ``refconv check`` — attribute a user's saved output (:func:`refconv.attribute`).

Output is a text table (:func:`refconv.report.render_text`), ``--json``
(:func:`refconv.report.report_json`) or ``--html PATH``
(:func:`refconv.report.write_html`). Exit status: 0 when every run is "ok", 1 when
any run is degraded, mismatched, unexplained or failed, 2 on bad usage (bad
arguments, bad shapes, unknown names, unreadable files), 3 on an internal error.
Errors print as one line; ``--debug`` shows the traceback.

``import refconv.cli`` imports numpy only; frameworks, rich and matplotlib load when used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RefconvError, ShapeError, unknown_name

__all__ = [
    "main", "build_parser", "DATA_GENERATORS", "EXAMPLES", "make_inputs", "parse_padding", "shapes_from_geometry",
    "seed_problem", "seed_runs", "frameworks_document", "SEED_GEOMETRY",
    "EXIT_OK", "EXIT_NOT_OK", "EXIT_USAGE", "EXIT_INTERNAL",
]

EXIT_OK, EXIT_NOT_OK, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


# --------------------------------------------------------------------------- data


def _uniform(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.random(shape)


def _normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape)


def _signed(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, shape)


def _integers(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(-4, 5, shape).astype(np.float64)


def _ones(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return np.ones(shape)


#: ``--data`` choices: name -> ``f(rng, shape) -> float64 array`` (the registry is the source of truth).
DATA_GENERATORS: dict[str, Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]] = {
    "uniform": _uniform,  # [0, 1), like np.random.rand in the seed notebook
    "normal": _normal,  # standard normal
    "signed": _signed,  # uniform [-1, 1)
    "integers": _integers,  # small integers in [-4, 4]: exact in every format
    "ones": _ones,  # the notebook's second case
}


def make_inputs(
    x_shape: Sequence[int], w_shape: Sequence[int], b_shape: Sequence[int] | None, *, data: str = "uniform",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Seeded float64 inputs x, w, b (b None when ``b_shape`` is None), drawn in the order w, b, x.

    >>> x, w, b = make_inputs((1, 4, 4, 2), (3, 3, 2, 5), (5,), data="integers", seed=1)
    >>> x.shape, w.dtype, b.shape, bool(np.all(x == np.round(x)))
    ((1, 4, 4, 2), dtype('float64'), (5,), True)
    >>> make_inputs((1, 1, 1, 1), (1, 1, 1, 1), None, data="bogus")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    refconv.errors.UnknownNameError: unknown data 'bogus'; valid choices: 'uniform', 'normal', 'signed', ...
    """
    if data not in DATA_GENERATORS:
        raise unknown_name("data", data, list(DATA_GENERATORS))
    gen, rng = DATA_GENERATORS[data], np.random.default_rng(seed)
    w = gen(rng, tuple(w_shape))
    b = None if b_shape is None else gen(rng, tuple(b_shape))
    x = gen(rng, tuple(x_shape))
    return x, w, b


def _ints(text: str, what: str) -> list[int]:
    parts = [p for p in text.replace("x", ",").replace("×", ",").split(",") if p.strip()]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ShapeError(f"{what}={text!r}: expected comma-separated integers") from None


def parse_padding(text: str) -> Any:
    """``--padding`` text -> a padding form of :func:`refconv.resolve_padding`.

    >>> parse_padding("same"), parse_padding("2"), parse_padding("1,2"), parse_padding("0,1,0,1")
    ('SAME', 2, (1, 2), ((0, 1), (0, 1)))
    """
    t = text.strip()
    if t and not t.replace(",", "").replace(" ", "").replace("-", "").isdigit():
        return t.upper()
    v = _ints(t, "padding")
    if len(v) == 1:
        return v[0]
    if len(v) == 2:
        return (v[0], v[1])
    if len(v) == 4:
        return ((v[0], v[1]), (v[2], v[3]))
    raise ShapeError(f"padding={text!r}: expected SAME/SAME_LOWER/VALID, p, 'ph,pw' or 'top,bottom,left,right'")


def shapes_from_geometry(
    input_shape: str, kernel: str, in_ch: int | None, out_ch: int, *, layout: str = "NHWC", groups: int = 1,
    bias: bool = True,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...] | None]:
    """x, w, b shapes from the ``compare`` flags.

    ``input_shape`` is "H,W" (N=1, C=``in_ch``), a per-sample shape "H,W,C" (NHWC)
    or "C,H,W" (NCHW) as in ``keras.Input(shape=...)``, or the full 4-D shape in
    ``layout``. ``kernel`` is "K" or "KH,KW". The kernel layout is HWIO for NHWC and
    OIHW for NCHW.

    >>> shapes_from_geometry("16,32,256", "5", None, 512)
    ((1, 16, 32, 256), (5, 5, 256, 512), (512,))
    >>> shapes_from_geometry("2,6,8,8", "3,1", None, 4, layout="NCHW", groups=2, bias=False)
    ((2, 6, 8, 8), (4, 3, 3, 1), None)
    """
    layout = layout.upper()
    if layout not in ("NHWC", "NCHW"):
        raise unknown_name("layout", layout, ["NHWC", "NCHW"])
    dims = _ints(input_shape, "input-shape")
    if len(dims) == 2:
        n, (h, w), c = 1, dims, in_ch
    elif len(dims) == 3:
        n = 1
        h, w, c = dims if layout == "NHWC" else (dims[1], dims[2], dims[0])
    elif len(dims) == 4:
        n, h, w, c = dims if layout == "NHWC" else (dims[0], dims[2], dims[3], dims[1])
    else:
        raise ShapeError(f"input-shape={input_shape!r}: expected H,W or a 3-D/4-D shape in {layout} order")
    if c is None:
        raise ShapeError(f"input-shape={input_shape!r} gives no channel count: add --in-ch")
    if in_ch is not None and in_ch != c:
        raise ShapeError(f"input-shape={input_shape!r} has C={c} but --in-ch={in_ch}")
    k = _ints(kernel, "kernel")
    if len(k) not in (1, 2):
        raise ShapeError(f"kernel={kernel!r}: expected K or KH,KW")
    kh, kw = (k[0], k[0]) if len(k) == 1 else k
    if groups <= 0 or c % groups:
        raise ShapeError(f"x channels C={c}, groups={groups}: groups must be positive and divide C")
    x_shape = (n, h, w, c) if layout == "NHWC" else (n, c, h, w)
    w_shape = (kh, kw, c // groups, out_ch) if layout == "NHWC" else (out_ch, c // groups, kh, kw)
    return x_shape, w_shape, ((out_ch,) if bias else None)


# --------------------------------------------------------------------------- seed problem

#: The seed notebook's geometry (README, docs/tutorial.md).
SEED_GEOMETRY: dict[str, Any] = {
    "x_shape": (1, 16, 32, 256),
    "w_shape": (5, 5, 256, 512),
    "b_shape": (512,),
    "stride": 2,
    "padding": "SAME",
    "data_format": "NHWC",
}


def seed_problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """The seed notebook's inputs: uniform [0, 1) float64 x, w, b and the geometry keywords.

    >>> x, w, b, geometry = seed_problem()
    >>> x.shape, w.shape, b.shape, geometry
    ((1, 16, 32, 256), (5, 5, 256, 512), (512,), {'stride': 2, 'padding': 'SAME', 'data_format': 'NHWC'})
    """
    g = SEED_GEOMETRY
    x, w, b = make_inputs(g["x_shape"], g["w_shape"], g["b_shape"], data="uniform", seed=seed)
    assert b is not None
    return x, w, b, {"stride": g["stride"], "padding": g["padding"], "data_format": g["data_format"]}


# --------------------------------------------------------------------------- framework glue


def _frameworks() -> Any:
    from . import frameworks

    return frameworks


def _run_requests(text: str | None) -> list[Any]:
    fw = _frameworks()
    if text:
        return list(fw.parse_runs(text))
    return list(fw.default_runs())


def _request_label(req: Any) -> str:
    return str(getattr(req, "label", req))


def _execute(req: Any, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geometry: dict[str, Any]) -> Any:
    """One framework run (a failure is recorded in the FrameworkRun, never raised)."""
    return _frameworks().run_many([req], x, w, b, **geometry)[0]


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str], Any]]:
    """A rich progress bar on stderr when enabled (TTY, not --json/--quiet); yields ``step(description)``."""
    if not enabled:
        yield lambda description, total=None: _NullTask()
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
                        "{task.total}"), TimeElapsedColumn(), console=Console(stderr=True), transient=True)
    with progress:
        def step(description: str, total: int | None = None) -> Any:
            return _RichTask(progress, progress.add_task(description, total=total))

        yield step


class _NullTask:
    def describe(self, description: str) -> None:
        pass

    def advance(self) -> None:
        pass


class _RichTask:
    def __init__(self, progress: Any, task: Any) -> None:
        self.progress, self.task = progress, task

    def describe(self, description: str) -> None:
        self.progress.update(self.task, description=description)

    def advance(self) -> None:
        self.progress.update(self.task, advance=1)


def _show_progress(args: argparse.Namespace) -> bool:
    return not (args.json or args.quiet) and sys.stderr.isatty()


def _compare(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, geometry: dict[str, Any], requests: list[Any],
             args: argparse.Namespace) -> Any:
    """Run every request (with progress) and attribute them all in one :func:`refconv.explain` call."""
    from .attribution import explain

    runs = []
    with _progress(_show_progress(args)) as step:
        task = step("running", total=len(requests))
        for req in requests:
            task.describe(f"running {_request_label(req)}")
            runs.append(_execute(req, x, w, b, geometry))
            task.advance()
        att_task = step(f"attributing {len(runs)} run(s) against the exact oracle", total=1)
        t0 = time.perf_counter()
        report = explain(x, w, b, **geometry, runs=runs)
        att_task.advance()
    report.environment.setdefault("refconv_elapsed_s", {})
    report.environment["refconv_elapsed_s"]["explain"] = time.perf_counter() - t0
    return report


def _emit(report: Any, args: argparse.Namespace, *, title: str, answer: str | None = None, **extra: Any) -> int:
    from . import report as rep

    if args.html:
        path = rep.write_html(report, args.html, title=title, answer=answer)
        if not args.json:
            print(f"HTML report written to {path}", file=sys.stderr)
    if args.json:
        doc_extra = dict(extra)
        if answer is not None:
            doc_extra["answer"] = answer
        print(rep.report_json(report, **doc_extra))
    else:
        print(rep.render_text(report, answer=answer))
    return rep.exit_status(report)


# --------------------------------------------------------------------------- subcommands


def _geometry(args: argparse.Namespace) -> dict[str, Any]:
    g: dict[str, Any] = {
        "stride": _pair_arg(args.stride, "stride"),
        "padding": parse_padding(args.padding),
        "dilation": _pair_arg(args.dilation, "dilation"),
        "groups": args.groups,
        "data_format": args.layout.upper(),
    }
    if getattr(args, "kernel_layout", None):
        g["kernel_format"] = args.kernel_layout.upper()
    return g


def _pair_arg(text: str, what: str) -> int | tuple[int, int]:
    v = _ints(text, what)
    if len(v) == 1:
        return v[0]
    if len(v) == 2:
        return (v[0], v[1])
    raise ShapeError(f"{what}={text!r}: expected one integer or two (h,w)")


def _load_inputs(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("x", "w") if k not in z.files]
        if missing:
            raise ShapeError(f"{path}: missing array(s) {missing}; expected keys x, w and optionally b, "
                             f"found {z.files}")
        return z["x"], z["w"], (z["b"] if "b" in z.files else None)


def frameworks_document(infos: Any = None) -> list[dict[str, Any]]:
    """What ``refconv frameworks --json`` prints: every registered framework, installed or not, with its
    version, devices (name, dtypes) and the precision knobs of each device.

    ``infos`` defaults to ``refconv.frameworks.available(include_missing=True)``
    (which imports every installed framework).

    >>> from refconv.frameworks import FrameworkInfo
    >>> frameworks_document([FrameworkInfo("torch", False, extra="torch")])[0]["install"]
    'pip install "refconv[torch]"'
    """
    fw = _frameworks()
    out = []
    for info in fw.available(include_missing=True) if infos is None else infos:
        d = info.to_dict()
        for dev in d["devices"]:
            dev["precision_knobs"] = fw.precision_knobs(info.name, dev["device"]).get(info.name, {})
        out.append(d)
    return out


def _cmd_frameworks(args: argparse.Namespace) -> int:
    doc = frameworks_document()
    if args.json:
        print(json.dumps({"frameworks": doc}, indent=2, default=str))
        return EXIT_OK
    for info in doc:
        if not info["installed"]:
            why = f" ({info['error']})" if info.get("error") else ""
            print(f"{info['name']}: not installed{why}; install with: {info['install']}")
            continue
        print(f"{info['name']} {info['version']}")
        for dev in info["devices"]:
            print(f"  {dev['device']} ({dev['name']}): {', '.join(dev['dtypes'])}")
            for name, value in _flatten(dev.get("precision_knobs", {})):
                print(f"      {name} = {value}")
    return EXIT_OK


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(d, dict):
        out = []
        for k, v in d.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, d)]


def _cmd_compare(args: argparse.Namespace) -> int:
    geometry = _geometry(args)
    if args.inputs:
        x, w, b = _load_inputs(args.inputs)
    else:
        x_shape, w_shape, b_shape = shapes_from_geometry(args.input_shape, args.kernel, args.in_ch, args.out_ch,
                                                         layout=args.layout, groups=args.groups, bias=not args.no_bias)
        x, w, b = make_inputs(x_shape, w_shape, b_shape, data=args.data, seed=args.seed)
    from .spec import ConvSpec

    ConvSpec.from_arrays(x, w, b, **geometry)  # validate before any framework import
    requests = _run_requests(args.runs)
    if args.save_inputs:
        np.savez(args.save_inputs, **({"x": x, "w": w} if b is None else {"x": x, "w": w, "b": b}))
    report = _compare(x, w, b, geometry, requests, args)
    return _emit(report, args, title="refconv compare")


def seed_runs(available: Any = None) -> list[str]:
    """Run labels of the seed example: torch float64 and TensorFlow float32 on the CPU and on every GPU.

    ``available`` is a list like :func:`refconv.frameworks.available`'s; when None,
    only the torch and TensorFlow adapters are queried (JAX and ONNX Runtime are
    not imported).

    >>> from refconv.frameworks import DeviceInfo, FrameworkInfo
    >>> seed_runs([FrameworkInfo("torch", True, "2", [DeviceInfo("cpu", "x"), DeviceInfo("cuda:0", "H200")])])
    ['torch:cpu:float64', 'tensorflow:cpu:float32', 'torch:cuda:0:float64']
    """
    wanted = (("torch", "float64"), ("tensorflow", "float32"))
    if available is None:
        available = []
        fw = _frameworks()
        for name, _ in wanted:
            adapter = fw.get_adapter(name)
            if not adapter.is_installed():
                continue  # the CPU run then fails with the extra to install
            try:
                adapter.load()
                available.append(fw.FrameworkInfo(name, True, adapter.version(), adapter.devices()))
            except Exception:  # noqa: BLE001 - a broken install shows up as a failed CPU run
                continue
    out = [f"{name}:cpu:{dtype}" for name, dtype in wanted]
    infos = {i.name: i for i in available}
    for name, dtype in wanted:
        for dev in getattr(infos.get(name), "devices", []):
            if dev.device != "cpu":
                out.append(f"{name}:{dev.device}:{dtype}")
    return out


def _cmd_example(args: argparse.Namespace) -> int:
    if args.name != "seed":
        raise unknown_name("example", args.name, list(EXAMPLES))
    return EXAMPLES[args.name](args)


def _example_seed(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    x, w, b, geometry = seed_problem(args.seed)
    requests = _run_requests(args.runs) if args.runs else _run_requests(",".join(seed_runs()))
    report = _compare(x, w, b, geometry, requests, args)
    from .report import seed_answer

    answer = seed_answer(report, prefer=("torch:cpu:float64", "tensorflow:cpu:float32"))
    report.environment.setdefault("refconv_elapsed_s", {})["example_seed"] = time.perf_counter() - t0
    return _emit(report, args, title="refconv example seed: why do PyTorch and TensorFlow disagree?", answer=answer)


#: ``refconv example NAME`` choices.
EXAMPLES: dict[str, Callable[[argparse.Namespace], int]] = {"seed": _example_seed}


def _cmd_check(args: argparse.Namespace) -> int:
    from .attribution import Report, attribute
    from .frameworks import FrameworkRun
    from .spec import ConvSpec, as_float64

    x, w, b = _load_inputs(args.inputs)
    y = np.load(args.output, allow_pickle=False)
    geometry = _geometry(args)
    if args.spec:
        spec_doc = json.loads(Path(args.spec).read_text())
        for key in ("stride", "dilation"):
            if key in spec_doc:
                geometry[key] = tuple(spec_doc[key])
        for key in ("groups", "data_format", "kernel_format"):
            if key in spec_doc:
                geometry[key] = spec_doc[key]
        if "padding" in spec_doc:
            p = spec_doc["padding"]
            geometry["padding"] = p if isinstance(p, (str, int)) else tuple(
                tuple(q) if isinstance(q, list) else q for q in p)
    spec = ConvSpec.from_arrays(x, w, b, **geometry)
    if tuple(np.shape(y)) != tuple(spec.output_shape):
        raise ShapeError(f"{args.output}: y.shape={tuple(np.shape(y))} but the conv of x.shape={spec.x_shape}, "
                         f"w.shape={spec.w_shape} with {spec.describe()} has output shape {spec.output_shape}")
    dtype = args.dtype or str(y.dtype)
    with _progress(_show_progress(args)) as step:
        task = step("attributing", total=1)
        att = attribute(y, x, w, b, **geometry, label=args.name, **({"dtype": args.dtype} if args.dtype else {}))
        task.advance()
    run = FrameworkRun(args.name, "", "unknown", "unknown", dtype, "default", as_float64(y, "y"), spec=spec,
                       output_dtype=str(y.dtype))
    report = Report(spec=spec.to_dict(), runs=[run], attributions=[att], pairs=[])
    return _emit(report, args, title=f"refconv check {args.output}")


# --------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _add_output(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print the JSON document instead of the table")
    g.add_argument("--html", metavar="PATH", help="also write a self-contained HTML report with figures")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")


def _add_conv_geometry(p: argparse.ArgumentParser, *, shapes: bool) -> None:
    g = p.add_argument_group("geometry")
    if shapes:
        g.add_argument("--input-shape", default="16,16", metavar="SHAPE",
                       help="H,W | per-sample H,W,C (C,H,W for NCHW) | full N,H,W,C in --layout order (default 16,16)")
        g.add_argument("--kernel", default="3", metavar="K", help="kernel size K or KH,KW (default 3)")
        g.add_argument("--in-ch", type=int, default=None, help="input channels C (default 8 with a 2-D --input-shape)")
        g.add_argument("--out-ch", type=int, default=8, help="output channels O (default 8)")
        g.add_argument("--no-bias", action="store_true", help="no bias term")
    g.add_argument("--stride", default="1", help="S or SH,SW (default 1)")
    g.add_argument("--padding", default="VALID",
                   help="SAME (TensorFlow: extra pad bottom/right) | SAME_LOWER | VALID | P | PH,PW | T,B,L,R")
    g.add_argument("--dilation", default="1", help="D or DH,DW (default 1)")
    g.add_argument("--groups", type=int, default=1, help="groups (C for depthwise)")
    g.add_argument("--layout", default="NHWC", type=str.upper, choices=["NHWC", "NCHW"],
                   help="data layout; the kernel is HWIO for NHWC, OIHW for NCHW unless --kernel-layout")
    if not shapes:
        g.add_argument("--kernel-layout", default=None, type=str.upper, help="kernel layout (HWIO, OIHW, ...)")


def _add_runs(p: argparse.ArgumentParser, default_help: str) -> None:
    p.add_argument("--runs", default=None, metavar="LIST",
                   help="comma-separated framework:device:dtype[:math], e.g. torch:cpu:float64,tensorflow:cpu:float32 "
                        f"({default_help})")


def build_parser() -> argparse.ArgumentParser:
    """The ``refconv`` argument parser.

    >>> build_parser().parse_args(["compare", "--runs", "torch:cpu:float64", "--json"]).runs
    'torch:cpu:float64'
    """
    parser = _Parser(prog="refconv", description="Ground truth for 2-D convolution: compare frameworks against the "
                     "correctly rounded oracle and say which side is wrong, and why.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"refconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("frameworks", help="installed frameworks, versions, devices and precision knobs")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    p.set_defaults(func=_cmd_frameworks, quiet=True, html=None)

    p = sub.add_parser("compare", help="run one conv in several frameworks and attribute each run")
    _add_conv_geometry(p, shapes=True)
    d = p.add_argument_group("data")
    d.add_argument("--data", default="uniform", choices=list(DATA_GENERATORS), help="distribution (default uniform)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d.add_argument("--inputs", metavar="NPZ", help=".npz with arrays x, w and optionally b (overrides the shape flags)")
    d.add_argument("--save-inputs", metavar="NPZ", help="write the inputs used to this .npz")
    _add_runs(p, "default: every installed framework on every device, float32 plus float64 where supported")
    _add_output(p)
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("example", help="worked examples; 'seed' answers the seed notebook's question")
    p.add_argument("name", choices=list(EXAMPLES), help="example name")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _add_runs(p, "default: torch float64 and tensorflow float32, on the CPU and every GPU")
    _add_output(p)
    p.set_defaults(func=_cmd_example)

    p = sub.add_parser("check", help="attribute your own saved output against the oracle")
    p.add_argument("output", help=".npy with the output y to judge (in --layout)")
    p.add_argument("--inputs", required=True, metavar="NPZ", help=".npz with arrays x, w and optionally b")
    p.add_argument("--spec", metavar="JSON", help="geometry as JSON (ConvSpec.to_dict() keys); overrides the flags")
    p.add_argument("--dtype", default=None, help="precision the output was computed in (default: y's dtype)")
    p.add_argument("--name", default="user", help="name of the run in the report (default user)")
    _add_conv_geometry(p, shapes=False)
    _add_output(p)
    p.set_defaults(func=_cmd_check)
    return parser


def _fill_defaults(args: argparse.Namespace) -> None:
    if getattr(args, "command", None) == "compare" and args.in_ch is None and not args.inputs:
        dims = _ints(args.input_shape, "input-shape")
        if len(dims) == 2:
            args.in_ch = 8


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``refconv`` and ``python -m refconv``; returns the exit status.

    >>> main(["example", "nope"])
    2
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        _fill_defaults(args)
        return int(args.func(args))
    except (RefconvError, OSError, json.JSONDecodeError) as exc:
        if debug:
            traceback.print_exc()
        print(f"refconv {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("refconv: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line unless --debug
        if debug:
            traceback.print_exc()
        print(f"refconv {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
