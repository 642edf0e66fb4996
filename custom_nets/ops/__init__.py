"""Sequence operators behind the Mamba blocks: the selective scan and the causal depthwise conv1d."""

from .causal_conv1d import causal_conv1d
from .scan import BACKEND_ENV, resolve_backend, selective_scan

__all__ = ["BACKEND_ENV", "causal_conv1d", "resolve_backend", "selective_scan"]
