"""The datalists the bundles train, validate and infer on: from a dataset folder's own layout, or from a file."""

from __future__ import annotations

import json
from pathlib import Path

from .layouts import LAYOUTS, DatasetLayoutError
from .splits import holdout_split, kfold_split

__all__ = ["SECTIONS", "load_datalist", "read_datalist_file"]

SECTIONS = ("training", "validation", "test")


def load_datalist(
    layout: str,
    dataset_dir: str | Path | None,
    section: str,
    datalist_file: str | Path | None = None,
    num_val_cases: int | None = None,
    fold: int | None = None,
    num_folds: int = 5,
    seed: int = 0,
) -> list[dict]:
    """One section of a dataset as a MONAI datalist (``[{"image": ..., "label": ...}, ...]``).

    Args:
        layout: ``"msd"``, ``"brats21"`` or ``"btcv"`` (see ``custom_nets.datasets.layouts``).
        dataset_dir: the dataset folder, in ``layout``'s layout. Not read when ``datalist_file`` is given.
        section: ``"training"`` or ``"validation"`` (labelled cases, split by ``num_val_cases`` or by
            ``fold``/``num_folds``/``seed``), or ``"test"`` (images to segment; no label needed).
        datalist_file: a JSON file with the sections as keys, as MONAI's ``load_decathlon_datalist`` reads;
            relative paths in it are relative to the file's folder. Overrides ``dataset_dir``.
        num_val_cases: hold-out split, the last ``num_val_cases`` cases validate (see ``holdout_split``).
        fold, num_folds, seed: k-fold split (see ``kfold_split``). Give this or ``num_val_cases``, not both.

    Raises:
        DatasetLayoutError: the folder or file is missing, incomplete, or the split cannot be made.
    """
    if section not in SECTIONS:
        raise DatasetLayoutError(f"section must be one of {SECTIONS}, got {section!r}")
    if datalist_file not in (None, ""):
        return read_datalist_file(datalist_file, section)
    if layout not in LAYOUTS:
        raise DatasetLayoutError(f"unknown dataset layout {layout!r}; choose from {sorted(LAYOUTS)}")
    if dataset_dir in (None, ""):
        raise DatasetLayoutError("no dataset folder given: set dataset_dir (or datalist_file)")
    if section == "test":
        return LAYOUTS[layout](dataset_dir, labelled=False)
    if (num_val_cases is None) == (fold is None):
        raise DatasetLayoutError("give either num_val_cases (hold-out split) or fold (k-fold split), not both")
    cases = LAYOUTS[layout](dataset_dir, labelled=True)
    if fold is not None:
        train, val = kfold_split(cases, int(fold), int(num_folds), int(seed))
    else:
        train, val = holdout_split(cases, int(num_val_cases))
    return train if section == "training" else val


def read_datalist_file(datalist_file: str | Path, section: str) -> list[dict]:
    """``section`` of a datalist JSON file, paths made absolute and checked; labelled sections need labels."""
    path = Path(datalist_file)
    if not path.is_file():
        raise DatasetLayoutError(f"datalist file {path} does not exist")
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetLayoutError(f"datalist file {path} is not a readable JSON file: {error}") from None
    if not isinstance(content, dict) or not isinstance(content.get(section), list) or not content[section]:
        keys = sorted(content) if isinstance(content, dict) else []
        raise DatasetLayoutError(f"datalist file {path} has no non-empty '{section}' list (its keys: {keys})")

    def resolve(item: object) -> str:
        if not isinstance(item, str):
            raise DatasetLayoutError(f"datalist file {path}: paths must be strings, got {item!r}")
        file = path.parent / item
        if not file.is_file():
            raise DatasetLayoutError(f"missing file {file} (listed in '{section}' of datalist file {path})")
        return str(file)

    cases = []
    for entry in content[section]:
        entry = {"image": entry} if isinstance(entry, (str, list)) else entry
        if not isinstance(entry, dict) or "image" not in entry:
            raise DatasetLayoutError(f"datalist file {path}: every '{section}' entry needs an 'image', got {entry!r}")
        if section != "test" and "label" not in entry:
            raise DatasetLayoutError(f"datalist file {path}: '{section}' entry without a 'label': {entry!r}")
        case = dict(entry)
        for key in ("image", "label") if "label" in entry else ("image",):
            case[key] = [resolve(p) for p in entry[key]] if isinstance(entry[key], list) else resolve(entry[key])
        cases.append(case)
    return cases
