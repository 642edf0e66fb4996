"""Convolution-Mamba Mixed Block (CMMB), the paper's Algorithm 1."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution

from .tom import TriOrientedMamba

__all__ = ["ConvMambaMixedBlock", "TOM_POSITIONS"]

# "half": ToM after the first 3x3x3 conv, at half the stage resolution (8x shorter sequences);
# "full": ToM on the block output, at the full stage resolution.
TOM_POSITIONS = ("half", "full")


class ConvMambaMixedBlock(nn.Module):
    """CMMB: local convolutions around a bottleneck at half resolution, global context from ToM.

    ``F1 = conv5 stride 2; F2 = conv3; F3 = ToM(F2); F4 = conv3; F5 = convT5 stride 2; out = ToM(F5 + x)``,
    each conv followed by InstanceNorm and ReLU.

    Args:
        spatial_dims: 3.
        channels: C, kept through the block.
        tom_positions: which ToM layers run, a subset of ``("half", "full")``; a position left out is an identity.
        tom_kwargs: passed to each ``TriOrientedMamba`` (d_state, d_conv, expand, residual, backend ...).

    Shapes: ``(batch, C, D, H, W) -> (batch, C, D, H, W)``, D, H, W even.
    """

    def __init__(
        self, spatial_dims: int, channels: int, tom_positions: Sequence[str] = TOM_POSITIONS, **tom_kwargs
    ) -> None:
        super().__init__()
        unknown = set(tom_positions) - set(TOM_POSITIONS)
        if unknown:
            raise ValueError(f"unknown ToM position(s) {sorted(unknown)}; choose from {TOM_POSITIONS}")

        def conv(kernel_size: int, strides: int = 1, transposed: bool = False) -> Convolution:
            return Convolution(
                spatial_dims, channels, channels, strides=strides, kernel_size=kernel_size, act="RELU",
                norm="INSTANCE", is_transposed=transposed, output_padding=strides - 1 if transposed else None,
            )

        def tom(position: str) -> nn.Module:
            return TriOrientedMamba(channels, **tom_kwargs) if position in tom_positions else nn.Identity()

        self.down = conv(5, strides=2)
        self.conv_in = conv(3)
        self.tom_half = tom("half")
        self.conv_out = conv(3)
        self.up = conv(5, strides=2, transposed=True)
        self.tom_full = tom("full")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = self.up(self.conv_out(self.tom_half(self.conv_in(self.down(x)))))
        return self.tom_full(mixed + x)
