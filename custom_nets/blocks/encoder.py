"""Encoder pieces of SegResMamba besides the CMMB: the stage downsampling and the skip MLP."""

from __future__ import annotations

import torch.nn as nn
from monai.networks.layers.factories import Conv, Norm

__all__ = ["Downsample", "SkipMLP"]


class Downsample(nn.Sequential):
    """InstanceNorm -> conv 3x3x3 (C -> C) -> InstanceNorm -> conv 2x2x2 stride 2 (C -> 2C).

    Shapes: ``(batch, C, D, H, W) -> (batch, 2C, D/2, H/2, W/2)``.
    """

    def __init__(self, spatial_dims: int, channels: int) -> None:
        conv, norm = Conv[Conv.CONV, spatial_dims], Norm[Norm.INSTANCE, spatial_dims]
        super().__init__(
            norm(channels),
            conv(channels, channels, kernel_size=3, padding=1),
            norm(channels),
            conv(channels, 2 * channels, kernel_size=2, stride=2),
        )


class SkipMLP(nn.Sequential):
    """InstanceNorm -> 1x1x1 conv (C -> 2C) -> GELU -> 1x1x1 conv (2C -> C): what the decoder gets from a stage.

    Shapes: ``(batch, C, D, H, W) -> (batch, C, D, H, W)``.
    """

    def __init__(self, spatial_dims: int, channels: int) -> None:
        conv, norm = Conv[Conv.CONV, spatial_dims], Norm[Norm.INSTANCE, spatial_dims]
        super().__init__(
            norm(channels),
            conv(channels, 2 * channels, kernel_size=1),
            nn.GELU(),
            conv(2 * channels, channels, kernel_size=1),
        )
