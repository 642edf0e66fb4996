"""The two layouts of a scan's sequences: channel-major ``(batch, channels, L)``, as Mamba blocks hand them over,
and time-major ``(batch, groups, L, channels // groups)``, in which the torch scan works, so that a run of steps is
one contiguous block and the innermost dimension of every operation is the long channel one.

Where a conversion copies, it copies one ``(batch, group)`` matrix at a time: PyTorch transposes a 2D tensor in
cache-sized tiles, and a tensor of more dimensions element by element, several times slower.
"""

from __future__ import annotations

import torch

__all__ = ["from_time_major", "to_time_major"]


def to_time_major(t: torch.Tensor, groups: int = 1, padded: int | None = None) -> torch.Tensor:
    """``(batch, channels, L)``, or ``(batch, groups, channels // groups, L)`` already grouped, -> contiguous
    ``(batch, groups, padded, channels // groups)``, zeros past ``L`` (``padded`` defaults to ``L``)."""
    if t.dim() == 3:
        t = t.reshape(t.shape[0], groups, t.shape[1] // groups, t.shape[2])
    batch, groups, channels, length = t.shape
    out = t.new_empty(batch, groups, length if padded is None else padded, channels)
    out[:, :, length:] = 0
    for b in range(batch):
        for g in range(groups):
            out[b, g, :length].copy_(t[b, g].t())
    return out


def from_time_major(t: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``(batch, groups, steps, channels)`` -> ``(batch, groups * channels, steps)``.

    Without ``out``, a view where one exists (``groups`` 1): strided, but no second copy of a tensor that may be as
    large as the backward pass's gradients. With ``out``, a ``(batch, groups, channels, L)`` view with
    ``L <= steps``, the first ``L`` steps are copied into it (the rest are padding) and ``out`` is returned."""
    batch, groups, steps, channels = t.shape
    if out is None:
        return t.transpose(2, 3).reshape(batch, groups * channels, steps)
    length = out.shape[3]
    for b in range(batch):
        for g in range(groups):
            out[b, g].copy_(t[b, g, :length].t())
    return out
