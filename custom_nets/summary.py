"""Parameters and multiply-accumulates of SegResMamba, per part, with the Mamba computation counted.

MACs come from forward hooks on a network built on the meta device (no memory, no compute), at batch 1:
- convolutions: output voxels x (in_channels / groups) x kernel volume; transposed convolutions: input voxels x
  (out_channels / groups) x kernel volume; linear layers: output elements x in_features;
- each ToM direction (hooked as a whole, since its conv1d and dt projection are functional calls): causal conv1d
  L x d_inner x d_conv, dt projection L x dt_rank x d_inner, and the selective scan L x d_inner x (3 d_state + 2)
  (per step and channel: decay a*h, input B*(dt*u) and readout C*h per state, plus dt*u and D*u).
Normalisations, activations, interpolation and element-wise sums are not counted, as in common hook-based
counters. ``hook_visible`` repeats the count without the ToM directions' own work, which is what such counters
(e.g. the one behind the paper's figures) report.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict

import torch
import torch.nn as nn

from .blocks import DirectionalScan
from .networks import SegResMamba

__all__ = ["PAPER_SETTINGS", "count", "part_of", "summary_table"]

# name: (in_channels, out_channels, input size, the paper's MACs in G)
PAPER_SETTINGS = {
    "spleen": (1, 2, 96, 137.84),
    "brats": (4, 3, 128, 340.52),
    "btcv": (1, 14, 128, 336.45),
}


def part_of(name: str) -> str:
    """The part a parameter or module belongs to: stem, stageN.cmmb, stageN.tom_half, stageN.tom_full,
    stageN.downsample, stageN.skip_mlp, decoderN, head."""
    pieces = name.split(".")
    kind = pieces[0]
    if kind == "stages":
        block = pieces[2] if len(pieces) > 2 else ""
        return f"stage{pieces[1]}." + (block if block.startswith("tom_") else "cmmb")
    if kind == "downsamples":
        return f"stage{int(pieces[1]) + 1}.downsample"
    if kind == "skips":
        return f"stage{pieces[1]}.skip_mlp"
    if kind == "decoder":
        return f"decoder{pieces[1]}"
    return kind


def _conv_macs(module: nn.Module, inputs, output) -> int:
    kernel = math.prod(module.kernel_size)
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return inputs[0].numel() * module.out_channels // module.groups * kernel
    return output.numel() * module.in_channels // module.groups * kernel


def _scan_macs(module: DirectionalScan, inputs, output) -> int:
    batch, d_inner, length = inputs[0].shape
    d_conv = module.conv1d.kernel_size[0]
    return batch * length * d_inner * (d_conv + module.dt_rank + 3 * module.d_state + 2)


def count(net: nn.Module, input_shape: tuple[int, ...]) -> dict[str, dict[str, int]]:
    """Per part: ``params``, ``macs`` (everything) and ``hook_visible`` MACs, for one input of ``input_shape``.

    ``net`` may live on any device; it is copied to the meta device for the count.
    """
    params: dict[str, int] = defaultdict(int)
    for name, parameter in net.named_parameters():
        params[part_of(name)] += parameter.numel()
    meta = net if next(net.parameters()).is_meta else copy.deepcopy(net).to("meta")
    macs: dict[str, int] = defaultdict(int)
    visible: dict[str, int] = defaultdict(int)
    handles = []
    for name, module in meta.named_modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear, DirectionalScan)):
            part = part_of(name)

            def hook(module, inputs, output, part=part):
                if isinstance(module, DirectionalScan):
                    macs[part] += _scan_macs(module, inputs, output)
                    return
                n = _conv_macs(module, inputs, output) if isinstance(module, nn.modules.conv._ConvNd) else (
                    output.numel() * module.in_features
                )
                macs[part] += n
                if ".scans." not in name:  # not inside a ToM direction
                    visible[part] += n

            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            meta(torch.empty(input_shape, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return {part: {"params": params[part], "macs": macs[part], "hook_visible": visible[part]} for part in params}


def summary_table(settings: dict = PAPER_SETTINGS, **network_kwargs) -> str:
    """A markdown table per setting: parameters and GMACs per part, totals, and the paper's figure."""
    lines = []
    for name, (in_channels, out_channels, size, paper_gmacs) in settings.items():
        with torch.device("meta"):
            net = SegResMamba(in_channels=in_channels, out_channels=out_channels, **network_kwargs)
        rows = count(net, (1, in_channels, size, size, size))
        lines += [
            f"### {name}: {in_channels} -> {out_channels} channels, {size}^3, batch 1",
            "",
            "| part | parameters | GMACs | GMACs seen by hooks |",
            "|---|---:|---:|---:|",
        ]
        for part, row in rows.items():
            lines.append(f"| {part} | {row['params']:,} | {row['macs'] / 1e9:.2f} | {row['hook_visible'] / 1e9:.2f} |")
        total = {key: sum(row[key] for row in rows.values()) for key in ("params", "macs", "hook_visible")}
        lines += [
            f"| **total** | **{total['params']:,}** | **{total['macs'] / 1e9:.2f}** | **{total['hook_visible'] / 1e9:.2f}** |",
            "",
            f"Paper: {paper_gmacs} GMACs.",
            "",
        ]
    return "\n".join(lines)
