"""Overfit sanity check: a small SegResMamba learns one organ on a crop of the shipped CT.

The first experiment of the paper's summary: if the network, its scans and its gradients are wired correctly,
it fits a single crop almost perfectly within a few hundred steps. The label is TotalSegmentator's (model-made),
so the Dice reached is agreement with that label on the training crop, not a measure of accuracy.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from tqdm import tqdm

from ..networks import SegResMamba
from . import sample_case

__all__ = ["load_crop", "overfit"]

HU_WINDOW = (-57.0, 164.0)  # the MSD spleen window of MONAI's spleen bundle


def load_crop(
    image_path: Path, label_path: Path, label_value: int, size: int | Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """A crop of ``size`` (one size for a cube, or three) centred on the organ: image scaled from the HU window to
    [0, 1], binary label.

    Returns ``(1, 1, *sizes)`` float image and ``(1, 1, *sizes)`` long label.
    """
    sizes = (size,) * 3 if isinstance(size, int) else tuple(size)
    image = np.asarray(nib.load(str(image_path)).dataobj, dtype=np.float32)
    label = np.rint(np.asarray(nib.load(str(label_path)).dataobj)).astype(np.int64) == label_value
    if image.shape != label.shape:
        raise ValueError(f"image {image.shape} and label {label.shape} differ in shape")
    voxels = np.argwhere(label)
    if len(voxels) == 0:
        raise ValueError(f"label value {label_value} does not occur in {label_path}")
    centre = (voxels.min(0) + voxels.max(0)) // 2
    starts = [int(np.clip(c - s // 2, 0, max(n - s, 0))) for c, n, s in zip(centre, image.shape, sizes)]
    window = tuple(slice(start, start + s) for start, s in zip(starts, sizes))
    low, high = HU_WINDOW
    image = np.clip((image[window] - low) / (high - low), 0.0, 1.0)
    return torch.from_numpy(image)[None, None], torch.from_numpy(label[window].astype(np.int64))[None, None]


def dice(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Dice of two binary masks."""
    intersection = (prediction & target).sum().item()
    total = prediction.sum().item() + target.sum().item()
    return 2.0 * intersection / total if total else 1.0


def overfit(
    image: str | Path | None = None,
    label: str | Path | None = None,
    label_value: int = 1,
    crop: int | Sequence[int] = 64,
    feature_size: int = 8,
    min_size: int = 64,
    steps: int = 150,
    learning_rate: float = 3e-3,
    target_dice: float = 0.97,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Train a small SegResMamba on one crop until its Dice on the crop reaches ``target_dice`` or ``steps`` end.

    ``image`` and ``label`` default to the shipped sample case (``sample_case()``). ``crop`` is one size (a cube) or
    three; ``min_size`` is the network's (``SegResMamba``): 32 lets it take a 64 x 32 x 32 crop as it is.

    Returns a dict with the Dice reached, the steps taken and the seconds spent.
    """
    if image is None or label is None:
        image, label = sample_case()
    torch.manual_seed(seed)
    x, y = load_crop(Path(image), Path(label), label_value, crop)
    net = SegResMamba(in_channels=1, out_channels=2, feature_size=feature_size, min_size=min_size)
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    start, reached, step = time.perf_counter(), 0.0, 0
    bar = tqdm(range(1, steps + 1), desc="overfit", unit="step", disable=not progress)
    for step in bar:
        net.train()
        logits = net(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        reached = dice(logits.argmax(1, keepdim=True).bool(), y.bool())  # on the training step's own output
        bar.set_postfix(loss=f"{loss.item():.3f}", dice=f"{reached:.3f}")
        if reached >= target_dice:
            break
    net.eval()
    with torch.no_grad():
        reached = dice(net(x).argmax(1, keepdim=True).bool(), y.bool())
    return {"dice": reached, "steps": step, "seconds": time.perf_counter() - start, "crop": crop}
