"""The adapter base class: what every framework backend implements.

An :class:`Adapter` knows how to import its framework lazily, list devices, read
and set precision knobs, and run one convolution. The runner
(:mod:`refconv.frameworks.runner`) validates names and geometry once, times the
call and turns framework exceptions into :attr:`FrameworkRun.error`; adapters
only compute (the onnx.reference split: the base validates, subclasses compute).

Creating an adapter never imports its framework; :meth:`Adapter.load` does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import FrameworkUnavailableError
from ..spec import ConvSpec, as_float64

#: Environment variables that change conv precision in several frameworks (recorded by every adapter).
PRECISION_ENV = ("NVIDIA_TF32_OVERRIDE", "ONEDNN_DEFAULT_FPMATH_MODE")


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """One device a framework can run on: ``device`` ("cpu", "cuda:0", ...), its ``name``, and ``dtypes``.

    ``dtypes`` are the dtypes the adapter expects to have a conv kernel on that
    device (probed with a tiny conv when :func:`refconv.frameworks.available` is
    called with ``probe=True``).

    >>> DeviceInfo("cpu", "AMD EPYC", ("float64", "float32")).to_dict()["device"]
    'cpu'
    """

    device: str
    name: str
    dtypes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"device": self.device, "name": self.name, "dtypes": list(self.dtypes)}


@dataclasses.dataclass
class Computed:
    """What an adapter's :meth:`Adapter.compute` hands back to the runner.

    ``output`` is float64 in the caller's data_format; ``inputs_seen`` holds x, w, b
    (float64, caller's layouts) as the framework received them after its casts;
    ``knobs`` adds run-specific precision state (e.g. the jax ``precision=``
    argument or ORT's session providers) to the globally captured knobs.

    >>> Computed(np.zeros((1, 1, 1, 1)), "float32").notes
    []
    """

    output: np.ndarray
    output_dtype: str
    inputs_seen: dict[str, np.ndarray | None] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    knobs: dict[str, Any] = dataclasses.field(default_factory=dict)


class Adapter:
    """Base class of framework adapters (subclasses implement the framework-specific parts).

    Class attributes: ``name`` (registry key), ``module`` (top-level import name),
    ``extra`` (the ``pip install "refconv[extra]"`` extra) and ``options`` (the
    adapter-specific keyword options :func:`refconv.frameworks.run` accepts).

    >>> a = Adapter()
    >>> a.name, a.options
    ('', ())
    """

    name: str = ""
    module: str = ""
    extra: str = ""
    options: tuple[str, ...] = ()

    # ---- import -------------------------------------------------------------
    def is_installed(self) -> bool:
        """True when the framework can be imported (checked without importing it when possible)."""
        if not self.module:
            return True
        if self.module in sys.modules:
            return sys.modules[self.module] is not None
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False

    def load(self) -> Any:
        """Import and return the framework module, or raise :class:`FrameworkUnavailableError`."""
        if not self.module:
            return None
        return import_framework(self.module, self.name, self.extra)

    def version(self) -> str:
        """The framework's version string."""
        return str(getattr(self.load(), "__version__", "unknown"))

    # ---- devices and dtypes --------------------------------------------------
    def devices(self) -> list[DeviceInfo]:
        """Every device this framework can use here ("cpu" first)."""
        return [DeviceInfo("cpu", cpu_name(), self.dtypes("cpu"))]

    def accepts_any_device(self) -> bool:
        """True when ``device`` is only a label (user callables); False when it must be one of :meth:`devices`."""
        return False

    def dtypes(self, device: str) -> tuple[str, ...]:
        """Dtypes expected to have a conv kernel on ``device``."""
        return ("float64", "float32", "float16", "bfloat16")

    # ---- precision state -----------------------------------------------------
    def knobs(self, device: str) -> dict[str, Any]:
        """The current global state that decides precision and algorithm."""
        return env_knobs(PRECISION_ENV)

    @contextlib.contextmanager
    def math_mode(self, math: str, device: str, dtype: str) -> Iterator[list[str]]:
        """Set the framework's float32 precision mode for one run and restore it afterwards.

        Yields a list of notes describing what was (or could not be) set.
        """
        notes: list[str] = []
        if math != "default":
            notes.append(f"{self.name} has no math mode; math={math!r} recorded only")
        yield notes

    # ---- the computation ---------------------------------------------------------
    def compute(
        self,
        x: np.ndarray,
        w: np.ndarray,
        b: np.ndarray | None,
        spec: ConvSpec,
        *,
        device: str,
        dtype: str,
        math: str,
        options: dict[str, Any],
    ) -> Computed:
        """Run the conv (x, w, b float64 in the caller's layouts) and return a :class:`Computed`."""
        raise NotImplementedError


# ---- helpers shared by adapters ------------------------------------------------------
def import_framework(module: str, framework: str, extra: str) -> Any:
    """Import ``module`` or raise :class:`FrameworkUnavailableError` naming the extra.

    >>> import_framework("numpy", "numpy", "numpy").__name__
    'numpy'
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise FrameworkUnavailableError(
            f'framework {framework!r} is not available ({exc}); install it with: pip install "refconv[{extra}]"'
        ) from exc


def env_knobs(names: tuple[str, ...]) -> dict[str, Any]:
    """Environment variables as knobs: the value, or "unset".

    >>> env_knobs(("REFCONV_SURELY_UNSET_VARIABLE",))
    {'env.REFCONV_SURELY_UNSET_VARIABLE': 'unset'}
    """
    return {f"env.{n}": os.environ.get(n, "unset") for n in names}


def safe_read(read: Any) -> Any:
    """Call ``read()``; a failure is recorded as ``"<error: ...>"`` instead of raised.

    Some flags refuse to be read in some states (torch raises when the legacy and
    new TF32 APIs were mixed), and a knob snapshot must never abort a run.

    >>> safe_read(lambda: 1 / 0)
    '<error: ZeroDivisionError: division by zero>'
    """
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - recorded, not raised
        return f"<error: {type(exc).__name__}: {exc}>"


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """A human-readable CPU model name ("cpu" when unknown).

    >>> isinstance(cpu_name(), str)
    True
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


@functools.lru_cache(maxsize=1)
def nvidia_gpus() -> tuple[str, ...]:
    """Names of the NVIDIA GPUs ``nvidia-smi`` sees (empty without a driver).

    >>> isinstance(nvidia_gpus(), tuple)
    True
    """
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return ()
    if out.returncode != 0:
        return ()
    return tuple(line.strip() for line in out.stdout.splitlines() if line.strip())


def cuda_index(device: str) -> int:
    """The index of a "cuda:N" device name.

    >>> cuda_index("cuda:1")
    1
    """
    return int(device.split(":", 1)[1])


def to_float64_numpy(a: Any) -> np.ndarray:
    """Any framework array/tensor (any float dtype, any device) as an exact float64 numpy array.

    >>> to_float64_numpy(np.float32([1.5])).dtype
    dtype('float64')
    """
    return np.ascontiguousarray(as_float64(a, "output"))


def dtype_name(dt: Any) -> str:
    """A framework dtype as a plain name: ``torch.float32`` -> "float32", ``tf.bfloat16`` -> "bfloat16".

    >>> dtype_name(np.dtype("float16"))
    'float16'
    """
    name = getattr(dt, "name", None)
    if not isinstance(name, str):
        name = str(dt)
    return name.rsplit(".", 1)[-1]


def numpy_cast(a: np.ndarray, dtype: str) -> np.ndarray:
    """Cast a float64 numpy array to ``dtype`` with numpy / ml_dtypes (round to nearest even).

    >>> numpy_cast(np.array([1 + 2.0**-10]), "bfloat16").astype(np.float64)
    array([1.])
    """
    if dtype == "bfloat16":
        import ml_dtypes

        return a.astype(ml_dtypes.bfloat16)
    return a.astype(np.dtype(dtype))
