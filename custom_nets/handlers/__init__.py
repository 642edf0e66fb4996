"""Ignite handlers for SegResMamba bundles."""

from .checkpoint_saver import AtomicCheckpointSaver, AtomicDiskSaver
from .curves import TrainingCurves
from .energy import EnergyReport
from .step_in_backward import StepInBackward
from .training_checkpoint import TrainingCheckpoint, parse_flag, training_progress

__all__ = ["AtomicCheckpointSaver", "AtomicDiskSaver", "EnergyReport", "StepInBackward", "TrainingCheckpoint",
           "TrainingCurves", "parse_flag", "training_progress"]
