"""A plain step-by-step selective scan: the reference the tests (and the scan benchmark) measure against."""

import torch
import torch.nn.functional as F


def selective_scan_stepwise(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """One step at a time over L, in the inputs' dtype; B and C as (batch, [groups,] d_state, L)."""
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    batch, d_inner, length = u.shape
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    per_group = d_inner // B.shape[1]
    B = B.repeat_interleave(per_group, dim=1)  # (batch, d_inner, d_state, L)
    C = C.repeat_interleave(per_group, dim=1)
    h = u.new_zeros(batch, d_inner, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * B[..., t]
        ys.append((h * C[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return y, h
