"""Tiny dataset trees in the MSD, BraTS 2021 and BTCV layouts, for the bundle tests.

Volumes are small random images with a few box-shaped "organs", so that every class is present and the
foreground crop keeps the whole volume.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (36, 32, 28)
# what a fast bundle may change of its full bundle's configs: 3 mm, a narrow network and what follows from them
FAST_SETTINGS = {"feature_size", "patch_size", "pixdim", "learning_rate", "num_samples", "finetune"}


def _save(array: np.ndarray, path: Path, spacing: float = 2.0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([spacing, spacing, spacing, 1.0])), str(path))
    return str(path)


def _label_boxes(rng: np.random.Generator, num_labels: int, values: list[int] | None = None) -> np.ndarray:
    """An int label volume with ``num_labels`` boxes of values ``values`` (default 1..num_labels)."""
    label = np.zeros(SHAPE, dtype=np.uint8)
    values = values or list(range(1, num_labels + 1))
    for value in values:
        corner = [int(rng.integers(2, n - 10)) for n in SHAPE]
        label[tuple(slice(c, c + 6) for c in corner)] = value
    return label


def _ct(rng: np.random.Generator, label: np.ndarray) -> np.ndarray:
    """CT-like intensities: soft tissue around 40 HU plus noise, organs brighter; a 1-voxel air border."""
    image = rng.normal(40, 30, SHAPE) + 60.0 * (label > 0)
    image[0], image[-1] = -1000, -1000
    return image.astype(np.int16)


def make_msd_tree(root: Path, num_labelled: int = 3, num_test: int = 1, seed: int = 0) -> Path:
    """``root/dataset.json``, ``imagesTr``, ``labelsTr``, ``imagesTs`` (spleen-like, labels 0/1)."""
    rng = np.random.default_rng(seed)
    training, test = [], []
    for index in range(num_labelled + num_test):
        name = f"spleen_{index}.nii.gz"
        label = _label_boxes(rng, 1)
        if index < num_labelled:
            _save(_ct(rng, label), root / "imagesTr" / name)
            _save(label, root / "labelsTr" / name)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            _save(_ct(rng, label), root / "imagesTs" / name)
            test.append(f"./imagesTs/{name}")
    description = {"name": "Spleen", "numTraining": len(training), "training": training, "test": test}
    (root / "dataset.json").write_text(json.dumps(description, indent=2))
    return root


def make_brats_tree(root: Path, num_cases: int = 3, seed: int = 0) -> Path:
    """``root/BraTS2021_XXXXX/BraTS2021_XXXXX_{flair,t1,t1ce,t2,seg}.nii.gz`` with labels 0, 1, 2, 4."""
    rng = np.random.default_rng(seed)
    for index in range(num_cases):
        case = f"BraTS2021_{index:05d}"
        label = _label_boxes(rng, 3, values=[2, 1, 4])
        brain = np.zeros(SHAPE, dtype=bool)
        brain[2:-2, 2:-2, 2:-2] = True
        for modality in ("flair", "t1", "t1ce", "t2"):
            image = (rng.normal(300, 50, SHAPE) + 200.0 * (label > 0)) * brain
            _save(image.astype(np.float32), root / case / f"{case}_{modality}.nii.gz", spacing=1.0)
        _save(label, root / case / f"{case}_seg.nii.gz", spacing=1.0)
    return root


def make_btcv_tree(root: Path, num_cases: int = 3, seed: int = 0) -> Path:
    """``root/img/imgXXXX.nii.gz`` and ``root/label/labelXXXX.nii.gz`` with the 13 organ labels."""
    rng = np.random.default_rng(seed)
    for index in range(1, num_cases + 1):
        label = _label_boxes(rng, 13)
        _save(_ct(rng, label), root / "img" / f"img{index:04d}.nii.gz")
        _save(label, root / "label" / f"label{index:04d}.nii.gz")
    return root
