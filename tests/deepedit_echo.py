"""A stand-in for a trained DeepEdit network, for the label-app tests: its organ logit is a fixed function of the
click guidance, so the tests can tell where clicks land without minutes of training."""

from __future__ import annotations

import torch
from torch import nn


class ClickEcho(nn.Module):
    """``(B, 1 + L, ...)`` image + guidance channels (DeepEdit order: the labels, background last) -> ``(B, L, ...)``
    logits: background 0, each organ ``scale * (its guidance - background guidance) - 1``. A voxel is called an organ
    where that organ's click signal (a Gaussian peaking at 1 on the click) exceeds the background's by more than
    ``1 / scale``: nothing without clicks, a blob around a foreground click, a hole around a background click.

    Args:
        in_channels: 1 + number of labels, background included.
        out_channels: number of labels, background included.
        scale: logit per unit of guidance (a parameter, so that training changes it).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 2, scale: float = 4.0, **kwargs):
        super().__init__()
        if in_channels != out_channels + 1:
            raise ValueError(f"in_channels {in_channels} must be out_channels {out_channels} + 1")
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        organs, background = x[:, 1:-1], x[:, -1:]
        logits = self.scale * (organs - background) - 1.0
        return torch.cat([torch.zeros_like(background), logits], dim=1)
