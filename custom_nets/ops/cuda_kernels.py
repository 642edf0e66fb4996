"""Lazy access to the compiled CUDA kernels of ``mamba-ssm`` and ``causal-conv1d``.

Both packages ship CUDA code only. ``import mamba_ssm`` fails without its compiled extension and its package
``__init__`` pulls many heavy dependencies, so this module imports only the compiled extension
``selective_scan_cuda`` (its ``fwd``/``bwd`` signature is stable since mamba-ssm 1.0.1) and the small
``causal_conv1d`` interface, once, on first use, and never at import time.
"""

from __future__ import annotations

import functools
from types import ModuleType

__all__ = ["causal_conv1d_kernel", "cuda_scan_available", "selective_scan_kernel"]


@functools.lru_cache(maxsize=None)
def _import(name: str) -> tuple[ModuleType | None, str]:
    try:
        import importlib

        return importlib.import_module(name), ""
    except Exception as error:  # an ABI mismatch raises ImportError("... undefined symbol ...")
        return None, f"{type(error).__name__}: {error}"


def selective_scan_kernel() -> tuple[ModuleType | None, str]:
    """``(selective_scan_cuda, "")`` when mamba-ssm's extension imports, else ``(None, reason)``."""
    return _import("selective_scan_cuda")


def causal_conv1d_kernel() -> tuple[object | None, str]:
    """``(causal_conv1d_fn, "")`` when causal-conv1d imports, else ``(None, reason)``."""
    module, reason = _import("causal_conv1d")
    return (getattr(module, "causal_conv1d_fn", None), reason) if module is not None else (None, reason)


def cuda_scan_available() -> bool:
    """Whether the ``"cuda"`` scan backend can run here: a CUDA device and mamba-ssm's compiled kernel."""
    import torch

    return torch.cuda.is_available() and selective_scan_kernel()[0] is not None
