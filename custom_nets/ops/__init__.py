"""Sequence operators behind the Mamba blocks: the selective scan (``selective_scan`` and its backends) and the
causal depthwise conv1d."""

from .causal_conv1d import causal_conv1d
from .scan import BACKEND_ENV, BACKENDS, resolve_backend, selective_scan
from .scan_ref import selective_scan_ref

__all__ = ["BACKEND_ENV", "BACKENDS", "causal_conv1d", "resolve_backend", "selective_scan", "selective_scan_ref"]
