"""Ignite handlers for SegResMamba bundles."""

from .checkpoint_saver import AtomicCheckpointSaver, AtomicDiskSaver
from .energy import EnergyReport

__all__ = ["AtomicCheckpointSaver", "AtomicDiskSaver", "EnergyReport"]
