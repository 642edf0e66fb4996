"""The selective scan of Mamba (S6): one public function, ``selective_scan``, and the backends it dispatches to.

Semantics are those of mamba-ssm's ``selective_scan_fn``::

    dt  = softplus(delta + delta_bias)          (bias and softplus optional)
    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t = <C_t, h_t> + D * u_t
    out = y * silu(z)                           (D and z optional)

Backends (``BACKENDS``, each a function with ``selective_scan``'s arguments and result):
    ``"torch"``: a chunked parallel scan in plain PyTorch, CPU and CUDA (``scan_chunked``; on CPU its forward
    pass is ``scan_cpu``). Keeps one state per segment for backward. Tuning: ``max_chunk``, ``segment_elements``,
    ``block_elements``.
    ``"cuda"``: mamba-ssm's fused kernel (``scan_cuda``), for CUDA tensors when it is installed.
    ``"compiled"``: the forward pass in C (``scan_compiled``), compiled on this machine on first use
    (``compiled_kernel``), for CPU tensors without gradients: inference.
    ``"static"``: control flow that depends on shapes only, for tracing exporters such as ONNX (``scan_static``).
    Tuning: ``chunk``, ``chunk_elements``.
    ``"reference"``: the recurrence one step at a time (``scan_ref``), what the others are tested against.
    ``"auto"`` is ``"cuda"`` where it can run; on CPU, ``"compiled"`` where no gradient is being recorded and the
    kernel builds, else ``"torch"``; the environment variable
    ``SEGRESMAMBA_SCAN_BACKEND`` (a backend name) replaces ``"auto"`` wherever it is asked for.
"""

from __future__ import annotations

import os

import torch

from .compiled_kernel import compiled_kernels
from .cuda_kernels import selective_scan_kernel
from .scan_chunked import chunked_selective_scan
from .scan_compiled import compiled_selective_scan
from .scan_cuda import cuda_selective_scan
from .scan_ref import selective_scan_ref
from .scan_static import static_selective_scan

__all__ = ["BACKEND_ENV", "BACKENDS", "resolve_backend", "selective_scan"]

BACKEND_ENV = "SEGRESMAMBA_SCAN_BACKEND"
BACKENDS = {
    "torch": chunked_selective_scan,
    "cuda": cuda_selective_scan,
    "compiled": compiled_selective_scan,
    "static": static_selective_scan,
    "reference": selective_scan_ref,
}


def resolve_backend(backend: str, u: torch.Tensor) -> str:
    """The backend that runs for ``backend`` (a name of ``BACKENDS`` or ``"auto"``) on tensors like ``u``.

    The one place that decides: ``"auto"`` becomes the environment variable's backend if it is set, else ``"cuda"``
    for CUDA tensors where mamba-ssm's kernel imports, ``"compiled"`` for CPU tensors of at most float32 precision
    when no gradient is being recorded (``torch.is_grad_enabled()`` is false) and the kernel builds, else
    ``"torch"``; a backend that cannot run here is an error, never a silent fallback.

    Raises:
        ValueError: ``backend`` (or the environment variable) names no backend.
        RuntimeError: ``"cuda"`` was asked for where it cannot run (CPU tensors, kernel not importable).
    """
    names = ("auto", *BACKENDS)
    if backend not in names:
        raise ValueError(f"scan backend must be one of {names}, got {backend!r}")
    if backend == "auto":
        forced = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
        if forced not in names:
            raise ValueError(f"{BACKEND_ENV} must be one of {names}, got {forced!r}")
        backend = forced
    if backend == "auto":
        if u.is_cuda:
            return "cuda" if selective_scan_kernel()[0] is not None else "torch"
        inference = u.device.type == "cpu" and not torch.is_grad_enabled() and u.dtype != torch.float64
        return "compiled" if inference and compiled_kernels()[0] is not None else "torch"
    if backend == "cuda":
        if not u.is_cuda:
            raise RuntimeError(f"scan backend 'cuda' needs CUDA tensors, got tensors on {u.device}")
        kernel, reason = selective_scan_kernel()
        if kernel is None:
            raise RuntimeError(
                "scan backend 'cuda' needs mamba-ssm's compiled kernel (pip install '.[cuda]'), "
                f"which did not import: {reason}"
            )
    if backend == "compiled":
        if u.device.type != "cpu":
            raise RuntimeError(f"scan backend 'compiled' needs CPU tensors, got tensors on {u.device}")
        kernel, reason = compiled_kernels()
        if kernel is None:
            raise RuntimeError(f"scan backend 'compiled' could not be built here: {reason}")
    return backend


def selective_scan(
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
    backend: str = "auto",
    **backend_options,
):
    """Selective scan with mamba-ssm's ``selective_scan_fn`` signature.

    Args:
        u: input, ``(batch, d_inner, L)``.
        delta: time steps before bias and softplus, ``(batch, d_inner, L)``.
        A: state matrix (real, normally negative), ``(d_inner, d_state)``.
        B: input matrix, ``(batch, d_state, L)`` or grouped ``(batch, groups, d_state, L)``.
        C: output matrix, same layouts as ``B``.
        D: skip weight, ``(d_inner,)``.
        z: gate, ``(batch, d_inner, L)``; the output is multiplied by ``silu(z)``.
        delta_bias: added to ``delta``, ``(d_inner,)``.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the state after the last step, ``(batch, d_inner, d_state)``.
        backend: ``"auto"`` or a name of ``BACKENDS`` (see the module docstring and ``resolve_backend``).
        backend_options: tuning arguments of that backend, e.g. ``max_chunk`` of ``"torch"``.

    Returns:
        ``(batch, d_inner, L)`` in ``u``'s dtype, and the last state if asked for.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    if u.device.type == "meta":  # shape propagation only (model summaries)
        out = torch.empty_like(u)
        return (out, u.new_empty(u.shape[0], A.shape[0], A.shape[1])) if return_last_state else out
    scan = BACKENDS[resolve_backend(backend, u)]
    return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, **backend_options)


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, d_inner, L), got shape {tuple(u.shape)}")
    batch, d_inner, length = u.shape
    if A.dim() != 2 or A.shape[0] != d_inner:
        raise ValueError(f"A must be (d_inner={d_inner}, d_state), got shape {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("complex A is not supported")
    d_state = A.shape[1]
    expected = {"delta": (batch, d_inner, length), "z": (batch, d_inner, length), "D": (d_inner,),
                "delta_bias": (d_inner,)}
    for name, tensor in (("delta", delta), ("z", z), ("D", D), ("delta_bias", delta_bias)):
        if tensor is not None and tuple(tensor.shape) != expected[name]:
            raise ValueError(f"{name} must have shape {expected[name]}, got {tuple(tensor.shape)}")
    for name, tensor in (("B", B), ("C", C)):
        grouped = tensor.dim() == 4
        if tensor.dim() not in (3, 4) or tensor.shape[0] != batch or tensor.shape[-2:] != (d_state, length):
            raise ValueError(
                f"{name} must be (batch={batch}, d_state={d_state}, L={length}) or "
                f"(batch, groups, d_state, L), got shape {tuple(tensor.shape)}"
            )
        if grouped and d_inner % tensor.shape[1]:
            raise ValueError(f"{name} has {tensor.shape[1]} groups, which do not divide d_inner={d_inner}")
