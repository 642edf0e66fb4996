"""Causal depthwise conv1d followed by SiLU, as in Mamba, with the causal-conv1d CUDA kernel when it runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cuda_kernels import causal_conv1d_kernel

__all__ = ["causal_conv1d"]


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, use_kernel: bool) -> torch.Tensor:
    """``silu(conv1d(x))`` where output step t sees inputs t-k+1..t only.

    Args:
        x: ``(batch, channels, L)``.
        weight: depthwise kernel, ``(channels, 1, k)`` (an ``nn.Conv1d`` weight).
        bias: ``(channels,)`` or None.
        use_kernel: use causal-conv1d's CUDA kernel (the caller checked that it can run).
    """
    if use_kernel:
        kernel = causal_conv1d_kernel()[0]
        if kernel is None:
            raise RuntimeError(f"causal-conv1d's CUDA kernel did not import: {causal_conv1d_kernel()[1]}")
        return kernel(x.contiguous(), weight.squeeze(1), bias, activation="silu")
    width = weight.shape[-1]
    return F.silu(F.conv1d(F.pad(x, (width - 1, 0)), weight, bias, groups=x.shape[1]))
