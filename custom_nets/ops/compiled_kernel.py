"""The CPU kernels in C (``scan_compiled.c``: a Mamba direction's causal conv1d and selective scan): compiled with
this machine's C compiler on first use, cached, and loaded with ctypes.

It is compiled here, not shipped, so that it can use every vector instruction of the CPU that runs it
(``-march=native``) and so that ``pip install`` needs no compiler. The library is kept in a cache folder
(``SEGRESMAMBA_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/segresmamba`` or ``~/.cache/segresmamba``) under a name that
hashes the source, the flags, the compiler and the CPU, and is written atomically, so that processes compiling at
once never load half a file. Where that folder cannot be written, it is compiled into a temporary folder that is
removed as soon as the library is loaded. Where there is no compiler or the build fails, ``compiled_kernels`` says
why and the scan runs in PyTorch (``resolve_backend``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["CACHE_ENV", "ScanOrder", "ScanStrides", "SequenceStrides", "StateStrides", "compiled_kernels"]

SOURCE = Path(__file__).with_name("scan_compiled.c")
CACHE_ENV = "SEGRESMAMBA_KERNEL_CACHE"
FLAGS = ("-O3", "-ffast-math", "-march=native", "-fopenmp-simd", "-fPIC", "-shared")
BUILD_SECONDS = 120


class SequenceStrides(ctypes.Structure):
    """Strides in elements of a ``(batch, L, channels)`` sequence whose channel stride is 1."""

    _fields_ = [("batch", ctypes.c_int64), ("time", ctypes.c_int64)]


class StateStrides(ctypes.Structure):
    """Strides in elements of B or C, ``(batch, groups, L, N)``."""

    _fields_ = [("batch", ctypes.c_int64), ("group", ctypes.c_int64), ("time", ctypes.c_int64),
                ("state", ctypes.c_int64)]


class ScanStrides(ctypes.Structure):
    """The strides of every sequence the kernel reads or writes (``ScanStrides`` of ``scan_compiled.c``)."""

    _fields_ = [("u", SequenceStrides), ("delta", SequenceStrides), ("z", SequenceStrides), ("y", SequenceStrides),
                ("B", StateStrides), ("C", StateStrides)]


class ScanOrder(ctypes.Structure):
    """The order of the steps in memory: step ``t`` is the token at ``offset + (t // inner) * outer_stride +
    (t % inner) * inner_stride`` (``ScanOrder`` of ``scan_compiled.c``)."""

    _fields_ = [("outer", ctypes.c_int64), ("inner", ctypes.c_int64), ("outer_stride", ctypes.c_int64),
                ("inner_stride", ctypes.c_int64), ("offset", ctypes.c_int64)]


@functools.lru_cache(maxsize=None)
def compiled_kernels() -> tuple[ctypes.CDLL | None, str]:
    """``(library, "")``, the kernels' library with the argument types of ``selective_scan_forward`` and
    ``causal_conv1d_silu_forward`` set, or ``(None, reason)`` where it cannot be built or loaded here. Built once
    per process, on the first call."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return None, "no C compiler found (cc, gcc or $CC)"
    try:
        library = _load(compiler)
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"{type(error).__name__}: {str(error).strip()[:2000]}"
    pointer, size, flag = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    order = ctypes.POINTER(ScanOrder)
    library.selective_scan_forward.argtypes = (
        [pointer, pointer, pointer, size] + [pointer] * 6
        + [flag, pointer, flag, pointer, ctypes.POINTER(ScanStrides), order] + [size] * 6
    )
    sequence = ctypes.POINTER(SequenceStrides)
    library.causal_conv1d_silu_forward.argtypes = (
        [pointer, sequence, pointer, pointer, size, pointer, sequence, order] + [size] * 4
    )
    for function in (library.selective_scan_forward, library.causal_conv1d_silu_forward):
        function.restype = ctypes.c_int
    return library, ""


def _load(compiler: str) -> ctypes.CDLL:
    name = f"scan_compiled-{_build_key(compiler)}.so"
    cache = _cache_folder()
    if cache is not None:
        library = cache / name
        if not library.exists():
            from ..io.atomic import atomic_output

            with atomic_output(library, suffix=".so") as temporary:
                _compile(compiler, temporary)
        return ctypes.CDLL(str(library))
    with tempfile.TemporaryDirectory(prefix="segresmamba-kernel-") as folder:
        library = Path(folder) / name
        _compile(compiler, library)
        return ctypes.CDLL(str(library))  # stays mapped once its file is gone


def _compile(compiler: str, out: Path) -> None:
    result = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(out), "-lm"], capture_output=True, text=True,
                            timeout=BUILD_SECONDS)
    if result.returncode != 0:
        raise OSError(f"{compiler} failed to build {SOURCE.name}: {result.stderr}")


def _build_key(compiler: str) -> str:
    """What the library depends on: the source, the flags, the compiler and (for ``-march=native``) the CPU."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(" ".join((compiler, *FLAGS, platform.machine(), _cpu_features())).encode())
    return digest.hexdigest()[:16]


def _cpu_features() -> str:
    """The first CPU's model name and instruction set flags (Linux), else what ``platform`` knows."""
    found = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    break
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    found.append(line.strip())
    except OSError:
        pass
    return " ".join(found) or platform.processor()


def _cache_folder() -> Path | None:
    """The cache folder, created if needed, or ``None`` where it cannot be written."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        folder = Path(configured)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        folder = Path(base) / "segresmamba"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK | os.X_OK) else None
