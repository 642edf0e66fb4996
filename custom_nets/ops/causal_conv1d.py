"""Causal depthwise conv1d followed by SiLU, as in Mamba, with the causal-conv1d CUDA kernel where it is installed."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cuda_kernels import causal_conv1d_kernel

__all__ = ["causal_conv1d"]


def causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, backend: str = "torch"
) -> torch.Tensor:
    """``silu(conv1d(x))`` where output step t sees inputs t-k+1..t only.

    Args:
        x: ``(batch, channels, L)``.
        weight: depthwise kernel, ``(channels, 1, k)`` (an ``nn.Conv1d`` weight).
        bias: ``(channels,)`` or None.
        backend: the scan backend the layer runs with (resolved, see ``resolve_backend``): with ``"cuda"``,
            causal-conv1d's kernel where it imports (it is optional beside mamba-ssm's), else ``torch``'s conv1d.
    """
    kernel = causal_conv1d_kernel()[0] if backend == "cuda" else None
    if kernel is not None:
        return kernel(x.contiguous(), weight.squeeze(1), bias, activation="silu")
    # padded on both sides and cut back: the same sums as a left-padded copy of x, without that copy
    width = weight.shape[-1]
    return F.silu(F.conv1d(x, weight, bias, padding=width - 1, groups=x.shape[1])[..., : x.shape[-1]])
