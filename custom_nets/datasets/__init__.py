"""Datalists for the bundles, built from the folder layouts of MSD, BraTS 2021 and BTCV, or read from a file.

Bundle configs call ``custom_nets.datasets.load_datalist(layout, dataset_dir, section, ...)``.
"""

from .datalist import SECTIONS, load_datalist, read_datalist_file
from .layouts import BRATS21_MODALITIES, LAYOUTS, DatasetLayoutError, brats21_cases, btcv_cases, msd_cases
from .splits import holdout_split, kfold_split

__all__ = [
    "BRATS21_MODALITIES",
    "DatasetLayoutError",
    "LAYOUTS",
    "SECTIONS",
    "brats21_cases",
    "btcv_cases",
    "holdout_split",
    "kfold_split",
    "load_datalist",
    "msd_cases",
    "read_datalist_file",
]
