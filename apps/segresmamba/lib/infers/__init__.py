from .bundle_segmentation import BundleSegmentation

__all__ = ["BundleSegmentation"]
