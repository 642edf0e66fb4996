"""The ``"cuda"`` scan backend: mamba-ssm's fused kernel (``selective_scan_cuda``), for CUDA tensors."""

from __future__ import annotations

import torch

from .cuda_kernels import selective_scan_kernel

__all__ = ["cuda_selective_scan"]


def cuda_selective_scan(
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
    """``selective_scan`` (same arguments and result) by mamba-ssm's kernel. As in mamba-ssm, no gradient flows
    back through the returned last state. The caller (``resolve_backend``) checked that the kernel runs here."""
    return _CudaSelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


class _CudaSelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        kernel = selective_scan_kernel()[0]
        ctx.ungroup = B.dim() == 3, C.dim() == 3
        B, C = (t.unsqueeze(1) if t.dim() == 3 else t for t in (B, C))  # the kernel takes (batch, groups, N, L)
        u, delta, B, C = (t.contiguous() for t in (u, delta, B, C))
        D, z = (None if t is None else t.contiguous() for t in (D, z))
        out, checkpoints, *rest = kernel.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        ctx.delta_softplus = delta_softplus
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, checkpoints, out if z is not None else None)
        result = rest[0] if z is not None else out
        if return_last_state:
            return result, checkpoints[:, :, -1, 1::2]  # the kernel keeps (re, im) pairs per state
        return result

    @staticmethod
    def backward(ctx, grad_out, *unused):
        u, delta, A, B, C, D, z, delta_bias, checkpoints, out = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, ddelta_bias, *rest = selective_scan_kernel()[0].bwd(
            u, delta, A, B, C, D, z, delta_bias, grad_out.contiguous(), checkpoints, out, None,
            ctx.delta_softplus, False,
        )
        dB = dB.squeeze(1) if ctx.ungroup[0] else dB
        dC = dC.squeeze(1) if ctx.ungroup[1] else dC
        return (
            du, ddelta, dA, dB, dC,
            dD if D is not None else None,
            rest[0] if z is not None else None,
            ddelta_bias if delta_bias is not None else None,
            None, None,
        )
