"""The ``"compiled"`` scan backend: a Mamba direction's forward passes in C (``scan_compiled.c``), for CPU tensors
without gradients.

The fastest way to run a trained network on a CPU: each direction of a ToM layer is one pass over the sequence with
the states in vector registers, several times faster than the chunked scan in PyTorch. The kernels take strided
views as they are, and an order of the steps (``ScanOrder``): a ToM layer keeps its sequences in raster order and
runs every direction over them without reordering copies (``compiled_causal_conv1d``, ``compiled_scan``).
Inference only: ``resolve_backend`` picks it for ``"auto"`` where no gradient is being recorded; training takes
``"torch"``.
"""

from __future__ import annotations

import ctypes
import functools
import os
from concurrent.futures import ThreadPoolExecutor

import torch

from .compiled_kernel import ScanOrder, ScanStrides, SequenceStrides, StateStrides, compiled_kernels

__all__ = ["ScanOrder", "compiled_causal_conv1d", "compiled_scan", "compiled_selective_scan", "raster_order"]

WIDTH = 16  # channels per vector in the scan kernel: threads take whole groups of them


def raster_order(length: int) -> ScanOrder:
    """The steps in memory order."""
    return ScanOrder(1, length, 0, 1, 0)


def compiled_selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """``selective_scan`` (same arguments and result) by the compiled kernel, in float32; the output in ``u``'s dtype,
    laid out time-major (a ``(batch, d_inner, L)`` view of ``(batch, L, d_inner)`` memory, what a layer's output
    projection reads). The caller (``resolve_backend``) checked that the kernel builds here."""
    batch, d_inner, length = u.shape
    y = torch.empty(batch, length, d_inner).transpose(1, 2)
    last = compiled_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, raster_order(length), y,
                         return_last_state=return_last_state)
    out = y.to(u.dtype) if u.dtype != torch.float32 else y
    return (out, last) if return_last_state else out


def compiled_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, order: ScanOrder, out: torch.Tensor,
                  accumulate: bool = False, return_last_state: bool = False,
                  delta_weight: torch.Tensor | None = None) -> torch.Tensor | None:
    """The selective scan with ``selective_scan``'s arguments, its steps taken in ``order``, written into ``out``
    (``(batch, d_inner, L)`` float32, channel stride 1; ``accumulate``: added to it). Inputs other than float32 are
    converted. Returns the last state ``(batch, d_inner, d_state)`` if asked for, else ``None``.

    ``delta_weight`` ``(d_inner, rank)``: ``delta`` is the time steps' low-rank form ``(batch, rank, L)``, projected
    by it step by step inside the kernel (Mamba's ``dt_proj`` without its bias), so that the ``(batch, d_inner, L)``
    time steps are never stored.

    Raises:
        RuntimeError: a gradient would be needed (this backend has no backward pass).
        ValueError: shapes the kernel cannot take (d_state above 64, groups that do not divide d_inner).
    """
    _refuse_gradients(u, delta, A, B, C, D, z, delta_bias, delta_weight)
    batch, d_inner, _ = u.shape
    u, delta, z = (_time_major(t) for t in (u, delta, z))
    B, C = (_float32(t.unsqueeze(1) if t.dim() == 3 else t) for t in (B, C))
    A, D, delta_bias, delta_weight = (_float32(t, contiguous=True) for t in (A, D, delta_bias, delta_weight))
    d_state, rank = A.shape[1], 0 if delta_weight is None else delta_weight.shape[1]
    last = torch.empty(batch, d_inner, d_state) if return_last_state else None
    strides = ScanStrides(_sequence(u), _sequence(delta), _sequence(z), _sequence(out), _state(B), _state(C))
    arguments = [_address(u), _address(delta), _address(delta_weight), rank]
    arguments += [_address(t) for t in (A, B, C, D, z, delta_bias)]
    arguments += [int(delta_softplus), _address(out), int(accumulate), _address(last), ctypes.byref(strides),
                  ctypes.byref(order), batch, d_inner, d_state, B.shape[1]]
    if _in_parts(compiled_kernels()[0].selective_scan_forward, arguments, _ranges(d_inner, WIDTH)):
        raise ValueError(f"scan backend 'compiled' cannot take d_state={d_state} (1 to 64), groups={B.shape[1]} "
                         f"for d_inner={d_inner} or a time-step rank of {rank} (1 to 64)")
    return last


def compiled_causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, order: ScanOrder,
                           out: torch.Tensor) -> torch.Tensor:
    """``causal_conv1d`` (``silu(conv1d(x))``, causal in ``order``) into ``out``; ``x``, ``out``: ``(batch, channels,
    L)``, ``out`` float32 with a channel stride of 1; ``weight``: ``(channels, 1, k)``. Returns ``out``.

    Raises:
        RuntimeError: a gradient would be needed. ValueError: a kernel wider than 16.
    """
    _refuse_gradients(x, weight, bias)
    batch, channels, _ = x.shape
    x = _time_major(x)
    weight, bias = _float32(weight.reshape(channels, -1), contiguous=True), _float32(bias, contiguous=True)
    x_strides, out_strides = _sequence(x), _sequence(out)
    arguments = [x.data_ptr(), ctypes.byref(x_strides), weight.data_ptr(), _address(bias), weight.shape[1],
                 out.data_ptr(), ctypes.byref(out_strides), ctypes.byref(order), batch, channels]
    steps = order.outer * order.inner
    failed = _in_parts(compiled_kernels()[0].causal_conv1d_silu_forward, arguments, _ranges(steps, 1))
    if failed == 2:
        raise MemoryError("scan backend 'compiled': no memory for the conv1d's weights")
    if failed:
        raise ValueError(f"scan backend 'compiled' takes conv1d kernels of 1 to 16 steps, got {weight.shape[1]}")
    return out


def _refuse_gradients(*tensors: torch.Tensor | None) -> None:
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError("scan backend 'compiled' runs the forward pass only: use it without gradients "
                           "(torch.no_grad or torch.inference_mode), or the 'torch' backend for training")


def _float32(t: torch.Tensor | None, contiguous: bool = False) -> torch.Tensor | None:
    if t is None:
        return None
    t = t.float()
    return t.contiguous() if contiguous else t


def _time_major(t: torch.Tensor | None) -> torch.Tensor | None:
    """``(batch, channels, L)`` in float32 with a channel stride of 1 (what the kernels read), copied only if needed."""
    t = _float32(t)
    return t if t is None or t.stride(1) == 1 else t.transpose(1, 2).contiguous().transpose(1, 2)


def _address(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _sequence(t: torch.Tensor | None) -> SequenceStrides:
    """A ``(batch, channels, L)`` tensor's strides as the kernels' ``(batch, time)``; its channel stride must be 1."""
    if t is None:
        return SequenceStrides(0, 0)
    if t.stride(1) != 1 and t.shape[1] > 1:
        raise ValueError(f"the compiled kernels write time-major sequences (channel stride 1), got {t.stride()}")
    return SequenceStrides(t.stride(0), t.stride(2))


def _state(t: torch.Tensor) -> StateStrides:
    """``(batch, groups, N, L)`` strides as the kernel's ``(batch, group, time, state)``."""
    return StateStrides(t.stride(0), t.stride(1), t.stride(3), t.stride(2))


def _in_parts(function, arguments: list, parts: list[tuple[int, int]]) -> int:
    """Run a kernel on each ``[first, last)`` part, side by side on threads (ctypes lets go of the GIL during each
    call); the largest failure code of the parts (0: none failed)."""
    if len(parts) == 1:
        return function(*arguments, *parts[0])
    pool = _pool(len(parts), os.getpid())
    return max(pool.map(lambda part: function(*arguments, *part), parts))


def _ranges(size: int, unit: int) -> list[tuple[int, int]]:
    """``[first, last)`` ranges of ``range(size)``, one per torch thread, in whole multiples of ``unit`` (the
    scan's vectors of channels)."""
    units = -(-size // unit)
    threads = max(1, min(torch.get_num_threads(), units))
    bounds = [min(size, round(units * i / threads) * unit) for i in range(threads + 1)]
    return [(first, last) for first, last in zip(bounds, bounds[1:]) if last > first]


@functools.lru_cache(maxsize=None)
def _pool(threads: int, pid: int) -> ThreadPoolExecutor:
    """Threads for the kernels, per process: a child forked after they started (a DataLoader worker) has none of
    them, and makes its own."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="segresmamba-scan")
