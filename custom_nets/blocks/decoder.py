"""The light decoder of SegResMamba: halve channels, upsample without weights, fuse the skip, refine."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv

__all__ = ["DecoderStage", "PreActResBlock", "SKIP_FUSIONS"]

SKIP_FUSIONS = ("sum", "concat")


class PreActResBlock(nn.Module):
    """``x + conv3(relu(gn(conv3(relu(gn(x))))))``: pre-activation residual block.

    Shapes: ``(batch, C, D, H, W) -> (batch, C, D, H, W)``; C divisible by ``norm_groups``.
    """

    def __init__(self, spatial_dims: int, channels: int, norm_groups: int = 8) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.body = nn.Sequential(
            nn.GroupNorm(norm_groups, channels),
            nn.ReLU(inplace=True),
            conv(channels, channels, kernel_size=3, padding=1),
            nn.GroupNorm(norm_groups, channels),
            nn.ReLU(inplace=True),
            conv(channels, channels, kernel_size=3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class DecoderStage(nn.Module):
    """1x1x1 conv (C -> C/2, no bias) -> trilinear x2 -> fuse the skip -> ``PreActResBlock``.

    Args:
        spatial_dims: 3.
        in_channels: C; the skip and the output have C/2 channels.
        fusion: ``"sum"`` adds the skip (the paper's decoder); ``"concat"`` concatenates it and fuses the C
            channels back to C/2 with a 1x1x1 conv (the conventional decoder the paper compares with).
        norm_groups: GroupNorm groups of the residual block.

    Shapes: ``(batch, C, D, H, W)``, skip ``(batch, C/2, 2D, 2H, 2W)`` -> ``(batch, C/2, 2D, 2H, 2W)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, fusion: str = "sum", norm_groups: int = 8) -> None:
        super().__init__()
        if fusion not in SKIP_FUSIONS:
            raise ValueError(f"skip fusion must be one of {SKIP_FUSIONS}, got {fusion!r}")
        conv = Conv[Conv.CONV, spatial_dims]
        out_channels = in_channels // 2
        self.fusion = fusion
        self.reduce = conv(in_channels, out_channels, kernel_size=1, bias=False)
        self.fuse = conv(2 * out_channels, out_channels, kernel_size=1) if fusion == "concat" else None
        self.refine = PreActResBlock(spatial_dims, out_channels, norm_groups)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.reduce(x), scale_factor=2, mode="trilinear", align_corners=False)
        x = x + skip if self.fuse is None else self.fuse(torch.cat([x, skip], dim=1))
        return self.refine(x)
