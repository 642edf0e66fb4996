"""The networks and tasks the benchmark compares, each configured as its reference configures it.

Tasks are the paper's settings (batch 1): Spleen 1 -> 2 at 96^3, BTCV 1 -> 14 and BraTS 4 -> 3 at 128^3.

Networks (MONAI ones as the MONAI Model Zoo bundles configure them):
    segresmamba: ``custom_nets.SegResMamba`` with its defaults (feature size 48, sum skips, ToM at both positions).
    segresmamba_concat / _no_tom / _tom_half / _tom_full / _checkpointing: the paper's ablations, one change each.
    segresmamba_tom_recompute: ToM layers recomputed in backward (``tom_recompute=True``), the memory option.
    segresmamba_bf16: CPU inference under bfloat16 autocast where the CPU has it (``cpu_bfloat16=True``).
    swinunetr: ``swin_unetr_btcv_segmentation``: SwinUNETR(feature_size=48, use_checkpoint=True) (MONAI >= 1.5
        dropped its ``img_size`` argument).
    swinunetr_no_checkpoint: the same without activation checkpointing (reference only).
    segresnet: ``brats_mri_segmentation``: SegResNet(blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1),
        init_filters=16, dropout_prob=0.2).
    unet: ``spleen_ct_segmentation``: UNet(channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
        num_res_units=2, norm="batch").
    unetr: no Model Zoo bundle ships UNETR; MONAI's BTCV tutorial (unetr_btcv_segmentation_3d): feature_size=16,
        hidden_size=768, mlp_dim=3072, num_heads=12, proj_type="perceptron", norm_name="instance",
        res_block=True, dropout_rate=0.0, img_size = the training patch.
    segmamba: ``benchmarks.baselines.SegMamba`` (widths 48..384, bottleneck 768).
Networks with Mamba layers take a scan backend (``"torch"`` or ``"cuda"``); the others ignore it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

__all__ = ["MAMBA_NETWORKS", "NETWORKS", "TASKS", "Task", "build_network", "count_parameters"]


@dataclass(frozen=True)
class Task:
    """A dataset setting of the paper: channels in and out, training patch edge, and the loss activation."""

    name: str
    in_channels: int
    out_channels: int
    patch: int
    sigmoid: bool = False  # BraTS: one sigmoid per overlapping region; the others: softmax over classes


TASKS = {
    "spleen": Task("spleen", 1, 2, 96),
    "btcv": Task("btcv", 1, 14, 128),
    "brats": Task("brats", 4, 3, 128, sigmoid=True),
}


def _segresmamba(**overrides) -> Callable[..., nn.Module]:
    def build(in_channels: int, out_channels: int, patch: int, scan_backend: str) -> nn.Module:
        from custom_nets import SegResMamba

        return SegResMamba(
            in_channels=in_channels, out_channels=out_channels, scan_backend=scan_backend, **overrides
        )

    return build


def _segmamba(in_channels: int, out_channels: int, patch: int, scan_backend: str) -> nn.Module:
    from benchmarks.baselines import SegMamba

    return SegMamba(in_channels, out_channels, scan_backend=scan_backend)


def _swinunetr(use_checkpoint: bool) -> Callable[..., nn.Module]:
    def build(in_channels: int, out_channels: int, patch: int, scan_backend: str) -> nn.Module:
        from monai.networks.nets import SwinUNETR

        return SwinUNETR(
            in_channels=in_channels, out_channels=out_channels, feature_size=48, use_checkpoint=use_checkpoint,
            spatial_dims=3,
        )

    return build


def _segresnet(in_channels: int, out_channels: int, patch: int, scan_backend: str) -> nn.Module:
    from monai.networks.nets import SegResNet

    return SegResNet(
        spatial_dims=3, in_channels=in_channels, out_channels=out_channels, init_filters=16,
        blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), dropout_prob=0.2,
    )


def _unet(in_channels: int, out_channels: int, patch: int, scan_backend: str) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=3, in_channels=in_channels, out_channels=out_channels, channels=(16, 32, 64, 128, 256),
        strides=(2, 2, 2, 2), num_res_units=2, norm="batch",
    )


def _unetr(in_channels: int, out_channels: int, patch: int, scan_backend: str) -> nn.Module:
    from monai.networks.nets import UNETR

    return UNETR(
        in_channels=in_channels, out_channels=out_channels, img_size=(patch,) * 3, feature_size=16,
        hidden_size=768, mlp_dim=3072, num_heads=12, proj_type="perceptron", norm_name="instance",
        res_block=True, dropout_rate=0.0,
    )


# name -> builder(in_channels, out_channels, patch, scan_backend)
NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "segresmamba": _segresmamba(),
    "segresmamba_concat": _segresmamba(skip_fusion="concat"),
    "segresmamba_no_tom": _segresmamba(use_tom=False),
    "segresmamba_tom_half": _segresmamba(tom_positions=("half",)),
    "segresmamba_tom_full": _segresmamba(tom_positions=("full",)),
    "segresmamba_checkpointing": _segresmamba(checkpointing=True),
    "segresmamba_tom_recompute": _segresmamba(tom_recompute=True),
    "segresmamba_bf16": _segresmamba(cpu_bfloat16=True),
    "segmamba": _segmamba,
    "swinunetr": _swinunetr(use_checkpoint=True),
    "swinunetr_no_checkpoint": _swinunetr(use_checkpoint=False),
    "segresnet": _segresnet,
    "unet": _unet,
    "unetr": _unetr,
}
# Networks whose figures depend on the scan backend.
MAMBA_NETWORKS = tuple(name for name in NETWORKS if name.startswith(("segresmamba", "segmamba")))


def build_network(name: str, task: Task, patch: int | None = None, scan_backend: str = "torch") -> nn.Module:
    """The network ``name`` for ``task``; ``patch`` overrides the task's patch edge (UNETR is built for it)."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose from {sorted(NETWORKS)}")
    return NETWORKS[name](task.in_channels, task.out_channels, patch or task.patch, scan_backend)


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())
