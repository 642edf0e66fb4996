from .bundle_segmentation import BundleSegmentation
from .deepedit import DeepEditSegmentation

__all__ = ["BundleSegmentation", "DeepEditSegmentation"]
