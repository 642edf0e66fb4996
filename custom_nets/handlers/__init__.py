"""Ignite handlers for SegResMamba bundles."""

from .energy import EnergyReport

__all__ = ["EnergyReport"]
