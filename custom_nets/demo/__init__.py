"""Runnable demonstrations on the sample case shipped with the project (``data/``, installed with the package)."""

from __future__ import annotations

from pathlib import Path

from ..bundle import shipped_folder

__all__ = ["sample_case"]

SAMPLE_FOLDER = "totalseg_ct_abdomen"
SAMPLE_CT = "example_ct.nii.gz"
SAMPLE_LABEL = "example_ct_seg_total_v1.nii.gz"  # TotalSegmentator's label map: 1 is the spleen


def sample_case() -> tuple[Path, Path]:
    """The shipped abdominal CT and its TotalSegmentator label map, ``(image, label)``.

    Raises:
        FileNotFoundError: the sample data cannot be found (``SEGRESMAMBA_DATA`` names another folder, or the
            installation lacks it).
    """
    folder = shipped_folder("data") / SAMPLE_FOLDER
    image, label = folder / SAMPLE_CT, folder / SAMPLE_LABEL
    missing = [str(p) for p in (image, label) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"the demo's sample case is missing: {', '.join(missing)}")
    return image, label
