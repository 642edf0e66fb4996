"""The ``"reference"`` scan backend: the recurrence one step at a time, as written in the definition.

Slow (one small operation per step, and autograd keeps every state), but with nothing to get wrong: the tests and
the scan benchmark measure the other backends against it, in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["selective_scan_ref"]


def selective_scan_ref(
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
    """``selective_scan``'s semantics over L one step at a time, computed in the inputs' dtype.

    Shapes: ``u, delta, z`` ``(batch, d_inner, L)``; ``A`` ``(d_inner, N)``; ``B, C`` ``(batch, N, L)`` or
    ``(batch, groups, N, L)``; ``D, delta_bias`` ``(d_inner,)``. Returns ``(batch, d_inner, L)``, and the state after
    the last step ``(batch, d_inner, N)`` if asked for.
    """
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    batch, d_inner, length = u.shape
    # (batch, d_inner, d_state, L): each group's B and C shared by its d_inner // groups channels
    B, C = (t.unsqueeze(1) if t.dim() == 3 else t for t in (B, C))
    B, C = (t.repeat_interleave(d_inner // t.shape[1], dim=1) for t in (B, C))
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
    return (y, h) if return_last_state else y
