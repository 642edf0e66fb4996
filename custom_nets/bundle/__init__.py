"""MONAI bundles: where the project's bundles and sample data are, a bundle's metadata and configs, and its inference
pipeline. The command line, the MONAI Label app and the demo all use this one model of a bundle."""

from .bundle import WEIGHTS, Bundle, bundle_search_dirs, checked_overrides, find_bundle, find_bundles
from .folders import ENVIRONMENT_VARIABLES, bundles_folder, shipped_folder
from .inference import InferencePipeline, Prediction, load_state_dict, probability_activation, resolve_device
from .tta import FLIPS, flip_averaged

__all__ = [
    "FLIPS",
    "Prediction",
    "flip_averaged",
    "load_state_dict",
    "probability_activation",
    "ENVIRONMENT_VARIABLES",
    "WEIGHTS",
    "Bundle",
    "InferencePipeline",
    "bundle_search_dirs",
    "bundles_folder",
    "checked_overrides",
    "find_bundle",
    "find_bundles",
    "resolve_device",
    "shipped_folder",
]
