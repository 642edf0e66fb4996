from .bundle_finetune import BundleFineTune

__all__ = ["BundleFineTune"]
