"""BraTS label values and regions: a BraTS bundle predicts three overlapping regions, annotators paint labels."""

from __future__ import annotations

__all__ = ["BRATS_LABELS", "BRATS_REGIONS", "predicts_brats_regions", "regions_to_labels"]

# BraTS label values (2021 convention): what annotators paint and what the bundle's training converts to regions.
BRATS_LABELS = {"necrotic tumour core": 1, "peritumoral edema": 2, "enhancing tumour": 4}
# the output channels of a BraTS bundle, as its metadata names them
BRATS_REGIONS = ("tumour core (TC)", "whole tumour (WT)", "enhancing tumour (ET)")


def predicts_brats_regions(output_channels: dict[int, str]) -> bool:
    """Whether a bundle's output channels (``Bundle.output_channels``) are the BraTS regions TC, WT, ET."""
    return tuple(output_channels[i] for i in sorted(output_channels)) == BRATS_REGIONS


def regions_to_labels(regions):
    """Binary TC, WT, ET regions -> the BraTS label map: ET 4, TC without ET 1, WT without TC 2, else 0.

    Works on numpy arrays and torch tensors alike.

    Shapes:
        regions: ``(3, X, Y, Z)``; returns ``(X, Y, Z)`` integers.
    """
    tc, wt, et = (regions[i] > 0 for i in range(3))
    return (
        BRATS_LABELS["enhancing tumour"] * et
        + BRATS_LABELS["necrotic tumour core"] * (tc & ~et)
        + BRATS_LABELS["peritumoral edema"] * (wt & ~tc & ~et)
    )
