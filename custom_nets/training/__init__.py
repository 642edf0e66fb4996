"""Training helpers for the bundles."""

from .checkpoint_saver import AtomicCheckpointSaver, AtomicDiskSaver

__all__ = ["AtomicCheckpointSaver", "AtomicDiskSaver"]
