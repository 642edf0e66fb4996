"""SegMamba (Xing et al., arXiv 2401.13560), written from its published description as a benchmark baseline.

This is the peer network of the SegResMamba paper, built here only to measure memory and time against it with
the same Mamba layers and scan backends: its ToM layers are ``custom_nets.blocks.TriOrientedMamba``. It is not
a product network of this project and is never trained here.

Architecture (widths 48, 96, 192, 384):
    encoder: stem conv 7x7x7 stride 2 (in -> 48); stages 1-3 start with InstanceNorm + conv 2x2x2 stride 2
    (C -> 2C). Every stage: a gated spatial conv block (GSC), then two ToM layers at the full stage resolution.
    Every stage output goes through InstanceNorm + channel MLP (``custom_nets.blocks.SkipMLP``).
    decoder (UNETR style): residual conv blocks lift the input (-> 48) and the four stage outputs
    (-> 96, 192, 384, 768); from the 768-channel bottleneck, four transposed-conv upsamplings each concatenate
    a skip and fuse it with a residual conv block; a last residual block and a 1x1x1 conv give the classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution, UnetOutBlock, UnetrBasicBlock, UnetrUpBlock

from custom_nets.blocks import SkipMLP, TriOrientedMamba

__all__ = ["GatedSpatialConv", "SegMamba"]


class GatedSpatialConv(nn.Module):
    """GSC block: ``x + conv1(conv3(conv3(x)) * conv1(x))``, each conv followed by InstanceNorm and ReLU.

    The 3x3x3 branch carries the spatial features, the 1x1x1 branch gates them element-wise, a 1x1x1 conv
    mixes the product, and a residual keeps the input.

    Shapes: ``(batch, C, D, H, W) -> (batch, C, D, H, W)``.
    """

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()

        def conv(kernel_size: int) -> Convolution:
            return Convolution(spatial_dims, channels, channels, kernel_size=kernel_size, act="RELU", norm="INSTANCE")

        self.spatial = nn.Sequential(conv(3), conv(3))
        self.gate = conv(1)
        self.mix = conv(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(self.spatial(x) * self.gate(x))


class SegMamba(nn.Module):
    """SegMamba baseline for 3D segmentation, on this project's ToM layers and scan backends.

    Args:
        in_channels: input channels.
        out_channels: output channels (classes).
        widths: encoder widths, one per stage (the paper: 48, 96, 192, 384).
        hidden_size: channels of the decoder bottleneck (the paper: 768).
        depths: ToM layers per stage (the paper: 2 each).
        d_state, d_conv, expand: Mamba settings of every ToM layer.
        scan_backend: ``"auto"``, ``"torch"`` or ``"cuda"`` (see ``custom_nets.selective_scan``).

    Shapes: ``(batch, in_channels, D, H, W) -> (batch, out_channels, D, H, W)``, D, H and W multiples of
    ``2 ** len(widths)`` (16 by default).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        widths: Sequence[int] = (48, 96, 192, 384),
        hidden_size: int = 768,
        depths: Sequence[int] = (2, 2, 2, 2),
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        if len(widths) != len(depths):
            raise ValueError(f"widths {tuple(widths)} and depths {tuple(depths)} must have the same length")
        self.in_channels = in_channels
        self.size_divisor = 2 ** len(widths)
        self.downsamples = nn.ModuleList([nn.Conv3d(in_channels, widths[0], kernel_size=7, stride=2, padding=3)])
        self.downsamples.extend(
            nn.Sequential(nn.InstanceNorm3d(c_in), nn.Conv3d(c_in, c_out, kernel_size=2, stride=2))
            for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        self.gscs = nn.ModuleList(GatedSpatialConv(3, width) for width in widths)
        self.stages = nn.ModuleList(
            nn.Sequential(
                *(
                    TriOrientedMamba(width, d_state=d_state, d_conv=d_conv, expand=expand, backend=scan_backend)
                    for _ in range(depth)
                )
            )
            for width, depth in zip(widths, depths)
        )
        self.skips = nn.ModuleList(SkipMLP(3, width) for width in widths)

        def basic(c_in: int, c_out: int) -> UnetrBasicBlock:
            return UnetrBasicBlock(3, c_in, c_out, kernel_size=3, stride=1, norm_name="instance", res_block=True)

        # lifts for the input and the stage outputs: (in, 48), (48, 96), (96, 192), (192, 384), (384, 768)
        lifted = [widths[0], *(2 * w for w in widths[:-1]), hidden_size]
        self.lifts = nn.ModuleList(basic(c_in, c_out) for c_in, c_out in zip([in_channels, *widths], lifted))
        self.ups = nn.ModuleList(
            UnetrUpBlock(3, c_in, c_out, kernel_size=3, upsample_kernel_size=2, norm_name="instance", res_block=True)
            for c_in, c_out in zip(lifted[:0:-1], lifted[-2::-1])
        )
        self.refine = basic(widths[0], widths[0])
        self.head = UnetOutBlock(3, widths[0], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SegMamba expects (batch, {self.in_channels}, D, H, W), got shape {tuple(x.shape)}"
            )
        if any(n % self.size_divisor for n in x.shape[2:]):
            raise ValueError(
                f"SegMamba needs D, H, W multiples of {self.size_divisor}, got {tuple(x.shape[2:])}"
            )
        skips = [self.lifts[0](x)]
        features = x
        for downsample, gsc, stage, skip, lift in zip(
            self.downsamples, self.gscs, self.stages, self.skips, self.lifts[1:]
        ):
            features = stage(gsc(downsample(features)))
            skips.append(lift(skip(features)))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(self.refine(y))
