"""Case lists read from the folder layouts in which the public datasets are distributed.

Each reader takes the dataset folder and returns its cases, sorted by case name, as MONAI datalist items:
``{"image": path, "label": path}`` (``"image"`` is a list of paths for multi-modal data). With
``labelled=False`` the readers list the images to segment instead, and a label is not required.

Layouts:
    ``msd``: Medical Segmentation Decathlon, ``dataset.json`` with ``training`` (image/label pairs under
    ``imagesTr/``, ``labelsTr/``) and ``test`` (images under ``imagesTs/``).
    ``brats21``: BraTS 2021, one folder per case, ``BraTS2021_00000/BraTS2021_00000_{flair,t1,t1ce,t2,seg}.nii.gz``.
    ``btcv``: BTCV (Synapse multi-organ), ``img/img0001.nii.gz`` with ``label/label0001.nii.gz``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

__all__ = ["BRATS21_MODALITIES", "DatasetLayoutError", "LAYOUTS", "brats21_cases", "btcv_cases", "msd_cases"]

# Channel order of the BraTS 2021 bundle's input.
BRATS21_MODALITIES = ("flair", "t1", "t1ce", "t2")

LAYOUT_HELP = {
    "msd": "the Medical Segmentation Decathlon layout: dataset.json, imagesTr/, labelsTr/ (and imagesTs/)",
    "brats21": "the BraTS 2021 layout: one folder per case, <case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz",
    "btcv": "the BTCV layout: img/imgXXXX.nii.gz with label/labelXXXX.nii.gz",
}


class DatasetLayoutError(ValueError):
    """A dataset folder or datalist is missing, incomplete, or not in the expected layout."""


def _require_dir(path: Path, layout: str) -> Path:
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a folder"
        raise DatasetLayoutError(f"dataset folder {path} {what}; expected {LAYOUT_HELP[layout]}")
    return path


def _require_file(path: Path, layout: str, needed_by: str) -> str:
    if not path.is_file():
        raise DatasetLayoutError(f"missing file {path} (needed by {needed_by}); expected {LAYOUT_HELP[layout]}")
    return str(path)


def msd_cases(dataset_dir: str | Path, labelled: bool = True) -> list[dict]:
    """Cases listed by a Decathlon ``dataset.json``: its ``training`` pairs, or with ``labelled=False`` its ``test``
    images."""
    root = _require_dir(Path(dataset_dir), "msd")
    index = root / "dataset.json"
    _require_file(index, "msd", "the MSD layout")
    try:
        description = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetLayoutError(f"{index} is not a readable JSON file: {error}") from None
    section = "training" if labelled else "test"
    entries = description.get(section) if isinstance(description, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DatasetLayoutError(f"{index} has no '{section}' list of cases; expected {LAYOUT_HELP['msd']}")
    cases = []
    for entry in entries:
        if labelled:
            if not isinstance(entry, dict) or not {"image", "label"} <= entry.keys():
                raise DatasetLayoutError(f"{index}: every 'training' entry needs 'image' and 'label', got {entry!r}")
            cases.append({key: _require_file(root / entry[key], "msd", str(index)) for key in ("image", "label")})
        else:
            image = entry["image"] if isinstance(entry, dict) else entry
            cases.append({"image": _require_file(root / image, "msd", str(index))})
    return sorted(cases, key=lambda case: case["image"])


def brats21_cases(dataset_dir: str | Path, labelled: bool = True) -> list[dict]:
    """BraTS 2021 case folders: image = the four modalities in ``BRATS21_MODALITIES`` order, label = ``_seg``.

    A case folder is a sub-folder ``X`` holding any ``X_<suffix>.nii.gz`` file; every case folder must be complete.
    """
    root = _require_dir(Path(dataset_dir), "brats21")
    suffixes = BRATS21_MODALITIES + (("seg",) if labelled else ())
    case_dirs = sorted(
        d for d in root.iterdir() if d.is_dir() and any(d.glob(f"{d.name}_*.nii.gz"))
    )
    if not case_dirs:
        raise DatasetLayoutError(f"no BraTS case folders in {root}; expected {LAYOUT_HELP['brats21']}")
    cases = []
    for case_dir in case_dirs:
        paths = {s: _require_file(case_dir / f"{case_dir.name}_{s}.nii.gz", "brats21", f"case {case_dir.name}")
                 for s in suffixes}
        case = {"image": [paths[m] for m in BRATS21_MODALITIES]}
        if labelled:
            case["label"] = paths["seg"]
        cases.append(case)
    return cases


def btcv_cases(dataset_dir: str | Path, labelled: bool = True) -> list[dict]:
    """BTCV pairs ``img/imgXXXX.nii.gz`` - ``label/labelXXXX.nii.gz``; with ``labelled=False`` the images alone."""
    root = _require_dir(Path(dataset_dir), "btcv")
    image_dir = root / "img"
    if not image_dir.is_dir():
        raise DatasetLayoutError(f"no img/ folder in {root}; expected {LAYOUT_HELP['btcv']}")
    images = sorted(image_dir.glob("img*.nii.gz"))
    if not images:
        raise DatasetLayoutError(f"no img*.nii.gz files in {image_dir}; expected {LAYOUT_HELP['btcv']}")
    cases = [{"image": str(image)} for image in images]
    if labelled:
        label_dir = root / "label"
        for case, image in zip(cases, images):
            label = label_dir / ("label" + image.name[len("img"):])
            case["label"] = _require_file(label, "btcv", f"image {image.name}")
        suffixes = {p.name[len("img"):] for p in images}
        unpaired = {p.name[len("label"):] for p in label_dir.glob("label*.nii.gz")} - suffixes
        if unpaired:
            first = label_dir / f"label{sorted(unpaired)[0]}"
            raise DatasetLayoutError(f"label {first} has no image img{sorted(unpaired)[0]} in {image_dir}")
    return cases


LAYOUTS: dict[str, Callable[..., list[dict]]] = {"msd": msd_cases, "brats21": brats21_cases, "btcv": btcv_cases}
