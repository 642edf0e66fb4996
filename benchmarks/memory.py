"""Peak-memory meters: process RSS on CPU, the caching allocator on CUDA.

CPU: the figure is the *peak RSS increase*: the RSS high-water mark (``VmHWM``) during the measured work minus
the RSS just before it. The high-water mark is reset first through ``/proc/self/clear_refs`` (Linux >= 4.0), so
an earlier peak (imports, building the network) cannot hide the measured one. Run each measurement in a fresh
process with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors go back to the OS instead of staying in
glibc's heap.

CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``: everything allocated on the device
(weights, optimizer state, activations, workspaces), the figure the paper reports.
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch

__all__ = ["CpuPeakMeter", "CudaPeakMeter", "peak_meter", "rss_bytes"]

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def rss_bytes() -> int:
    """The resident set size of this process now."""
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS missing from /proc/self/status")


def _maxrss_bytes() -> int:
    """The peak RSS of this process's memory (VmHWM), which ``clear_refs`` resets.

    Not ``getrusage``'s ``ru_maxrss``: it also holds the peak of the process image before ``exec`` (a child of a
    large process starts with its parent's RSS as its peak) and of exited threads, and ``clear_refs`` leaves it.
    """
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class CpuPeakMeter:
    """``start()`` then ``stop()``: the process's peak RSS increase over the RSS at ``start()``, in bytes."""

    measure = "peak RSS increase"

    def __init__(self) -> None:
        self.baseline = 0
        self.reset_ok = False

    def start(self) -> None:
        try:
            _CLEAR_REFS.write_text("5")  # "5": reset the peak RSS (VmHWM) to the current RSS
            self.reset_ok = True
        except OSError:
            self.reset_ok = False
        self.baseline = rss_bytes()
        if not self.reset_ok and _maxrss_bytes() > self.baseline:
            raise RuntimeError(
                "cannot reset the RSS high-water mark (/proc/self/clear_refs) and an earlier peak is above the "
                "current RSS: the measured peak would be hidden"
            )

    def stop(self) -> int:
        return max(0, _maxrss_bytes() - self.baseline)


class CudaPeakMeter:
    """``start()`` then ``stop()``: ``torch.cuda.max_memory_allocated`` since ``start()``, in bytes."""

    measure = "torch.cuda.max_memory_allocated"

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline = 0

    def start(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        self.baseline = torch.cuda.memory_allocated(self.device)

    def stop(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)


def peak_meter(device: torch.device) -> CpuPeakMeter | CudaPeakMeter:
    return CudaPeakMeter(device) if device.type == "cuda" else CpuPeakMeter()
