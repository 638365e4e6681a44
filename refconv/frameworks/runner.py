"""Run one conv in a framework (:func:`run`), or many (:func:`run_many`), and list what is installed.

Usage errors (unknown framework, device, dtype or math names; bad shapes; a
missing framework in :func:`run`) raise. Anything that goes wrong *inside* a
framework (no kernel for the dtype, out of memory, a user callable raising) is
caught into :attr:`FrameworkRun.error`, and :func:`run_many` never aborts.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ..errors import (
    FrameworkRunError,
    FrameworkUnavailableError,
    RefconvError,
    ShapeError,
    UnknownNameError,
    unknown_name,
)
from ..spec import ConvSpec, Padding, prepare
from ._adapter import Adapter, DeviceInfo
from .base import DTYPES, MATH_MODES, FrameworkRun
from .registry import FRAMEWORKS, get_adapter

__all__ = [
    "run",
    "run_many",
    "RunRequest",
    "parse_runs",
    "default_runs",
    "available",
    "FrameworkInfo",
    "precision_knobs",
]

_DTYPE_ALIASES = {
    "fp64": "float64", "f64": "float64", "double": "float64",
    "fp32": "float32", "f32": "float32", "float": "float32",
    "fp16": "float16", "f16": "float16", "half": "float16",
    "bf16": "bfloat16",
}  # fmt: skip


def _dtype(dtype: str) -> str:
    d = _DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if d not in DTYPES:
        raise unknown_name("dtype", dtype, DTYPES)
    return d


def _math(math: str) -> str:
    if math not in MATH_MODES:
        raise unknown_name("math mode", math, MATH_MODES)
    return math


def _device(adapter: Adapter, device: str) -> tuple[str, str]:
    """Normalize ("cuda" -> "cuda:0", "gpu:1" -> "cuda:1") and validate; returns (device, device_name)."""
    dev = str(device).lower()
    if dev in ("cuda", "gpu"):
        dev = "cuda:0"
    elif dev.startswith("gpu:"):
        dev = "cuda:" + dev[4:]
    if adapter.accepts_any_device():
        return dev, dev
    devices = adapter.devices()
    for d in devices:
        if d.device == dev:
            return dev, d.name
    raise unknown_name(f"device for {adapter.name}", device, [d.device for d in devices])


def run(
    framework: str | Callable[..., Any],
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
    device: str = "cpu",
    dtype: str = "float32",
    math: str = "default",
    **options: Any,
) -> FrameworkRun:
    """Run one 2-D cross-correlation in ``framework`` and record what it really did.

    ``framework`` is a registered name (see :data:`FRAMEWORKS`) or a callable
    ``fn(x, w, b, spec) -> array`` (see :class:`~refconv.frameworks.registry.CallableAdapter`).
    x, w, b are any exact-to-float64 arrays in the caller's layouts; the
    framework casts them to ``dtype`` ("float64", "float32", "float16",
    "bfloat16"). ``math`` is "default" (leave and record the framework's
    float32 precision mode), "ieee" (TF32 off, jax HIGHEST) or "tf32" (TF32 on);
    it is restored after the run. ``options`` are adapter-specific (each
    adapter's ``options`` lists them).

    Returns a :class:`FrameworkRun`: ``output`` float64 in ``data_format`` (None
    with ``error`` set when the framework failed), ``inputs_seen`` after the
    framework's casts, ``precision_knobs``, ``output_dtype``, ``notes``.
    Raises only for usage errors: unknown names (:class:`UnknownNameError`), bad
    geometry (:class:`ShapeError`), a framework that is not installed
    (:class:`FrameworkUnavailableError`).

    Importing this module imports no framework; a run imports only its own.

    >>> import numpy as np
    >>> r = run(lambda x, w, b, spec: np.zeros(spec.output_shape, np.float32), np.ones((1, 4, 4, 1)),
    ...         np.ones((3, 3, 1, 1)), padding="SAME", dtype="float32")
    >>> r.ok, r.output.shape, r.output_dtype
    (True, (1, 4, 4, 1), 'float32')
    """
    adapter = get_adapter(framework)
    dtype, math = _dtype(dtype), _math(math)
    xf, wf, bf, spec = prepare(
        x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
        data_format=data_format, kernel_format=kernel_format,
    )  # fmt: skip
    return _run_prepared(adapter, xf, wf, bf, spec, device=device, dtype=dtype, math=math, options=options)


def _run_prepared(
    adapter: Adapter,
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    spec: ConvSpec,
    *,
    device: str,
    dtype: str,
    math: str,
    options: dict[str, Any],
) -> FrameworkRun:
    unknown = sorted(set(options) - set(adapter.options))
    if unknown:
        raise unknown_name(f"option for {adapter.name}", unknown[0], adapter.options or ("(none)",))
    adapter.load()  # FrameworkUnavailableError names the extra
    version = adapter.version()
    device, device_name = _device(adapter, device)
    result = FrameworkRun(adapter.name, version, device, device_name, dtype, math, None, spec=spec)
    t0 = time.perf_counter()
    try:
        with adapter.math_mode(math, device, dtype) as notes:
            result.notes.extend(notes)
            try:
                result.precision_knobs = adapter.knobs(device)
            except Exception as exc:  # noqa: BLE001 - a knob snapshot never aborts a run
                result.precision_knobs = {"error": _error_message(exc)}
            t0 = time.perf_counter()
            computed = adapter.compute(x, w, b, spec, device=device, dtype=dtype, math=math, options=options)
            result.elapsed_s = time.perf_counter() - t0
        result.precision_knobs.update(computed.knobs)
        # TF32 exists only on NVIDIA GPUs (compute capability >= 8); None = the adapter could not tell.
        result.precision_knobs.setdefault("tf32_hardware", False if device == "cpu" else None)
        result.notes.extend(computed.notes)
        result.inputs_seen = computed.inputs_seen
        result.output_dtype = computed.output_dtype
        if computed.output.shape != spec.output_shape:
            raise FrameworkRunError(
                f"{adapter.name} returned shape {computed.output.shape}, expected {spec.output_shape} "
                f"({spec.describe()})"
            )
        result.output = computed.output
    except Exception as exc:  # noqa: BLE001 - a framework failure is a result, not a crash
        result.elapsed_s = result.elapsed_s or time.perf_counter() - t0
        result.output = None
        result.error = _error_message(exc)
    return result


def _error_message(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    # Framework messages can be huge (TF op traces); keep the head and name the type.
    body = text if len(text) <= 2000 else first[:2000] + " ..."
    return f"{type(exc).__name__}: {body}" if not isinstance(exc, RefconvError) else body


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """One requested run: framework, device, dtype and math mode.

    >>> RunRequest("tensorflow", "cpu", "float32", "tf32").label
    'tensorflow:cpu:float32:tf32'
    """

    framework: str
    device: str = "cpu"
    dtype: str = "float32"
    math: str = "default"

    @property
    def label(self) -> str:
        """Same form as :attr:`FrameworkRun.label`."""
        base = f"{self.framework}:{self.device}:{self.dtype}"
        return base if self.math == "default" else f"{base}:{self.math}"


def parse_runs(text: str | Sequence[str]) -> list[RunRequest]:
    """Parse "framework[:device][:dtype][:math]" items, comma separated.

    Devices are "cpu", "cuda", "cuda:N" (or "gpu", "gpu:N"); dtype aliases such as
    "fp32", "bf16", "half" are accepted. Defaults: cpu, float32, default math.
    Unknown frameworks or tokens raise :class:`~refconv.errors.UnknownNameError`.

    >>> [r.label for r in parse_runs("torch:cpu:float64, tensorflow:cpu:float32:tf32, jax:cuda:1:bf16")]
    ['torch:cpu:float64', 'tensorflow:cpu:float32:tf32', 'jax:cuda:1:bfloat16']
    """
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text)]
    requests = []
    for item in items:
        if not item:
            continue
        tokens = item.split(":")
        fw, rest = tokens[0], tokens[1:]
        if fw not in FRAMEWORKS:
            raise unknown_name("framework", fw, list(FRAMEWORKS))
        device, dtype, math = "cpu", "float32", "default"
        i = 0
        while i < len(rest):
            tok = rest[i].lower()
            if tok in ("cpu", "cuda", "gpu"):
                device = "cpu" if tok == "cpu" else "cuda:0"
                if tok != "cpu" and i + 1 < len(rest) and rest[i + 1].isdigit():
                    device = f"cuda:{int(rest[i + 1])}"
                    i += 1
            elif tok in MATH_MODES:
                math = tok
            elif tok in DTYPES or tok in _DTYPE_ALIASES:
                dtype = _dtype(tok)
            else:
                raise unknown_name(
                    f"token in run {item!r}", rest[i], ["cpu", "cuda", "cuda:N", *DTYPES, *_DTYPE_ALIASES, *MATH_MODES]
                )
            i += 1
        requests.append(RunRequest(fw, device, dtype, math))
    return requests


@dataclasses.dataclass
class FrameworkInfo:
    """One registered framework: installed or not, its version and devices (with dtypes).

    >>> FrameworkInfo("torch", False, extra="torch").to_dict()["install"]
    'pip install "refconv[torch]"'
    """

    name: str
    installed: bool
    version: str | None = None
    devices: list[DeviceInfo] = dataclasses.field(default_factory=list)
    extra: str = ""
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "installed": self.installed,
            "version": self.version,
            "devices": [d.to_dict() for d in self.devices],
            "install": f'pip install "refconv[{self.extra}]"' if self.extra else None,
            "error": self.error,
        }


def available(
    frameworks: Sequence[str] | None = None, *, include_missing: bool = False, probe: bool = False
) -> list[FrameworkInfo]:
    """The registered frameworks that can be imported here, with versions and devices.

    Importing a framework that is installed but broken is recorded in
    ``error``, never raised. ``include_missing=True`` also lists frameworks that
    are not installed (with the extra to install). ``probe=True`` keeps only the
    dtypes for which a tiny conv really runs on each device.
    ``frameworks`` limits the listing to some registered names (default: all).
    This imports every listed framework that is installed.

    >>> from refconv.frameworks import register, unregister
    >>> register("doc_oracle", lambda x, w, b, spec: np.zeros(spec.output_shape, x.dtype))
    >>> [(i.name, i.devices[0].device) for i in available(["doc_oracle"], probe=True)]
    [('doc_oracle', 'cpu')]
    >>> available(["doc_oracle"], probe=True)[0].devices[0].dtypes
    ('float64', 'float32', 'float16', 'bfloat16')
    >>> unregister("doc_oracle")
    """
    out = []
    for name in FRAMEWORKS if frameworks is None else frameworks:
        adapter = get_adapter(name)
        info = FrameworkInfo(name, adapter.is_installed(), extra=adapter.extra)
        if info.installed:
            try:
                adapter.load()
                info.version = adapter.version()
                info.devices = adapter.devices()
                if probe:
                    info.devices = [dataclasses.replace(d, dtypes=_probe(adapter, d)) for d in info.devices]
            except FrameworkUnavailableError as exc:  # found on the path but not importable
                info.installed, info.error = False, _error_message(exc)
            except Exception as exc:  # noqa: BLE001 - a broken install is reported, not raised
                info.error = _error_message(exc)
        if info.installed or include_missing:
            out.append(info)
    return out


def _probe(adapter: Adapter, device: DeviceInfo) -> tuple[str, ...]:
    x, w = np.ones((1, 2, 2, 1)), np.ones((1, 1, 1, 1))
    spec = ConvSpec.from_shapes(x.shape, w.shape)
    ok = []
    for dt in DTYPES:
        r = _run_prepared(adapter, x, w, None, spec, device=device.device, dtype=dt, math="default", options={})
        if r.ok:
            ok.append(dt)
    return tuple(ok)


def precision_knobs(framework: str | None = None, device: str = "cpu") -> dict[str, dict[str, Any]]:
    """The current global precision state of each installed framework (or one), as ``{name: knobs}``.

    >>> from refconv.frameworks import register, unregister
    >>> register("doc_knobs", lambda x, w, b, spec: np.zeros(spec.output_shape))
    >>> sorted(precision_knobs("doc_knobs")["doc_knobs"])
    ['env.NVIDIA_TF32_OVERRIDE', 'env.ONEDNN_DEFAULT_FPMATH_MODE']
    >>> unregister("doc_knobs")
    """
    names = list(FRAMEWORKS) if framework is None else [framework]
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        adapter = get_adapter(name)
        if not adapter.is_installed():
            continue
        try:
            adapter.load()
            out[name] = adapter.knobs(device)
        except Exception as exc:  # noqa: BLE001
            out[name] = {"error": _error_message(exc)}
    return out


def default_runs(
    frameworks: Sequence[str] | None = None, *, dtypes: Sequence[str] = ("float32", "float64")
) -> list[RunRequest]:
    """Every installed framework on every device, in float32 plus float64 where the device supports it.

    ``frameworks`` limits it to some registered names (default: all; that imports them).

    >>> from refconv.frameworks import register, unregister
    >>> register("doc_zero", lambda x, w, b, spec: 0 * x[:, :1, :1, :1])
    >>> [r.label for r in default_runs(["doc_zero"])]
    ['doc_zero:cpu:float32', 'doc_zero:cpu:float64']
    >>> unregister("doc_zero")
    """
    reqs = []
    for info in available(frameworks):
        for dev in info.devices:
            reqs.extend(RunRequest(info.name, dev.device, dt) for dt in dtypes if dt in dev.dtypes)
    return reqs


def run_many(
    requests: Iterable[RunRequest | str] | str,
    x: Any,
    w: Any,
    b: Any = None,
    *,
    options: dict[str, dict[str, Any]] | None = None,
    **geometry: Any,
) -> list[FrameworkRun]:
    """Run every request on the same problem; a failing or missing framework is recorded, never raised.

    ``requests`` are :class:`RunRequest` objects or "framework:device:dtype[:math]"
    strings; ``options`` maps a framework name to its adapter options. Bad
    geometry still raises :class:`ShapeError` once, before anything runs.

    >>> import numpy as np
    >>> runs = run_many([RunRequest("no_such_framework_registered")], np.ones((1, 2, 2, 1)), np.ones((1, 1, 1, 1)))
    >>> runs[0].ok, runs[0].error.startswith("unknown framework")
    (False, True)
    """
    if isinstance(requests, str):
        requests = [t.strip() for t in requests.split(",") if t.strip()]
    xf, wf, bf, spec = prepare(x, w, b, **geometry)
    options = options or {}
    results = []
    for req in requests:
        if isinstance(req, str):
            try:
                req = parse_runs(req)[0]
            except UnknownNameError as exc:
                fw_name = req.split(":")[0]
                results.append(
                    FrameworkRun(fw_name, "unknown", "cpu", "cpu", "float32", "default", None, spec=spec,
                                 error=_error_message(exc), notes=[f"could not parse run {req!r}"])
                )  # fmt: skip
                continue
        try:
            adapter = get_adapter(req.framework)
            dtype, math = _dtype(req.dtype), _math(req.math)
            results.append(
                _run_prepared(
                    adapter,
                    xf,
                    wf,
                    bf,
                    spec,
                    device=req.device,
                    dtype=dtype,
                    math=math,
                    options=dict(options.get(req.framework, {})),
                )  # fmt: skip
            )
        except Exception as exc:  # noqa: BLE001 - recorded so the others still run
            if isinstance(exc, ShapeError):
                raise
            results.append(
                FrameworkRun(
                    str(req.framework),
                    _version_or_missing(req.framework),
                    req.device,
                    req.device,
                    req.dtype,
                    req.math,
                    None,
                    spec=spec,
                    error=_error_message(exc),
                )  # fmt: skip
            )
    return results


def _version_or_missing(framework: str) -> str:
    try:
        adapter = get_adapter(framework)
        return adapter.version() if adapter.is_installed() else "not installed"
    except Exception:  # noqa: BLE001
        return "unknown"
