"""SegResMamba (arXiv 2503.07766): CNN-Mamba encoder, light sum-skip decoder."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..blocks import TOM_POSITIONS, ConvMambaMixedBlock, DecoderStage, Downsample, SkipMLP

__all__ = ["SegResMamba", "cpu_has_bfloat16"]


@functools.lru_cache(maxsize=None)
def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX, as oneDNN sees it): elsewhere bfloat16 is
    emulated, slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class SegResMamba(nn.Module):
    """SegResMamba for 3D segmentation.

    Encoder: stem conv 7x7x7 stride 2 -> CMMB (stage 0, width F); stages 1-3: ``Downsample`` (width x2, size /2)
    -> CMMB. Every stage output goes through a ``SkipMLP``. Decoder: from the deepest MLP output, three
    ``DecoderStage`` (halve channels, trilinear x2, fuse the skip, residual block), then a transposed conv
    (kernel 2, stride 2) to ``out_channels`` at the input resolution. Widths are F x (1, 2, 4, 8).

    Any input size works: the network pads each spatial dimension at its end with zeros up to a multiple of 32
    (the deepest CMMB works at 1/32 of the input) and to at least ``min_size``, then crops the output back: the
    output always has the input's spatial size. ToM scans follow the real (padded) size of every feature map.

    Args:
        spatial_dims: must be 3.
        in_channels: input channels (image modalities).
        out_channels: output channels (classes, or one per sigmoid region).
        feature_size: F, width of the first stage; a multiple of ``norm_groups``.
        skip_fusion: ``"sum"`` (the paper) or ``"concat"``.
        use_tom: False removes every ToM layer (the paper's "without ToM" ablation).
        tom_positions: ToM layers that run inside each CMMB, a subset of ``("half", "full")``.
        tom_residual: residual connection around each ToM layer.
        d_state, d_conv, expand: Mamba settings (16, 4, 2 in the paper).
        scan_backend: ``"auto"``, ``"torch"``, ``"cuda"``, ``"static"`` or ``"reference"`` (see
            ``custom_nets.ops.scan``).
        checkpointing: recompute each encoder stage in the backward pass instead of keeping its activations.
        norm_groups: GroupNorm groups in the decoder.
        min_size: smallest padded size of each spatial dimension, a multiple of 32. The default, 64, gives the
            instance norms at 1/32 at least two voxels in every dimension. With 32, a dimension that small leaves
            them one voxel across, and an input padded to 32^3 is refused (an instance norm of one voxel fails).
        tom_recompute: each ToM layer keeps only its input for the backward pass and recomputes the rest there
            (less memory, one more forward pass of the ToM layers; same results).
        cpu_bfloat16: inference on CPU (no gradients) runs under bfloat16 autocast where the CPU has bfloat16
            instructions (``cpu_has_bfloat16``; elsewhere float32): convolutions and projections in bfloat16, norms
            and the scans' recurrences in float32; the output has the input's dtype. Training is unaffected.

    Shapes: ``(batch, in_channels, D, H, W) -> (batch, out_channels, D, H, W)``.
    """

    size_divisor = 32

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        feature_size: int = 48,
        skip_fusion: str = "sum",
        use_tom: bool = True,
        tom_positions: Sequence[str] = TOM_POSITIONS,
        tom_residual: bool = True,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        scan_backend: str = "auto",
        checkpointing: bool = False,
        norm_groups: int = 8,
        min_size: int = 64,
        tom_recompute: bool = False,
        cpu_bfloat16: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims != 3:
            raise ValueError(f"SegResMamba is a 3D network: spatial_dims must be 3, got {spatial_dims}")
        if feature_size % norm_groups:
            raise ValueError(f"feature_size ({feature_size}) must be a multiple of norm_groups ({norm_groups})")
        if min_size < self.size_divisor or min_size % self.size_divisor:
            raise ValueError(f"min_size must be a positive multiple of {self.size_divisor}, got {min_size}")
        self.min_size = min_size
        self.in_channels, self.out_channels = in_channels, out_channels
        self.checkpointing, self.cpu_bfloat16 = checkpointing, cpu_bfloat16
        widths = [feature_size * 2**i for i in range(4)]
        tom_kwargs = dict(
            tom_positions=tuple(tom_positions) if use_tom else (), residual=tom_residual, d_state=d_state,
            d_conv=d_conv, expand=expand, backend=scan_backend, recompute=tom_recompute,
        )
        self.stem = nn.Conv3d(in_channels, widths[0], kernel_size=7, stride=2, padding=3)
        self.downsamples = nn.ModuleList([Downsample(3, width) for width in widths[:-1]])
        self.stages = nn.ModuleList([ConvMambaMixedBlock(3, width, **tom_kwargs) for width in widths])
        self.skips = nn.ModuleList([SkipMLP(3, width) for width in widths])
        self.decoder = nn.ModuleList(
            [DecoderStage(3, width, skip_fusion, norm_groups) for width in reversed(widths[1:])]
        )
        self.head = nn.ConvTranspose3d(widths[0], out_channels, kernel_size=2, stride=2)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5:
            raise ValueError(
                f"SegResMamba expects a 5D tensor (batch, {self.in_channels}, D, H, W), got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"SegResMamba expects {self.in_channels} input channel(s), got {x.shape[1]} (shape {tuple(x.shape)})"
            )

    def _run_stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        stage = self.stages[index]
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(stage, x, use_reentrant=False)
        return stage(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if self.cpu_bfloat16 and x.device.type == "cpu" and not torch.is_grad_enabled() and cpu_has_bfloat16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self._forward(x).to(x.dtype)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        padding = [max(self.min_size, n + (-n) % self.size_divisor) - n for n in size]
        if all(n + extra == self.size_divisor for n, extra in zip(size, padding)):
            raise ValueError(
                f"an input of spatial size {tuple(size)} pads to {self.size_divisor}^3 with min_size={self.min_size}: "
                f"its deepest feature map would be one voxel, too small for instance norm; use a larger min_size"
            )
        if any(padding):
            x = F.pad(x, [p for extra in reversed(padding) for p in (0, extra)])
        features = self._run_stage(0, self.stem(x))
        skips = [self.skips[0](features)]
        for index, downsample in enumerate(self.downsamples, start=1):
            features = self._run_stage(index, downsample(features))
            skips.append(self.skips[index](features))
        y = skips.pop()
        for stage in self.decoder:
            y = stage(y, skips.pop())
        y = self.head(y)
        return y[(..., *(slice(0, n) for n in size))]
