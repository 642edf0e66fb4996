"""Where a network's training memory and forward time go, module by module.

Both profiles attribute to the innermost running module whose qualified name has at most ``depth`` parts
(``stages.0.tom_full`` is 3 parts), so the figures of different modules never overlap and add up to the total.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

__all__ = ["forward_seconds_per_module", "part_of", "roll_up", "saved_tensor_bytes_per_module"]

OUTSIDE = "(outside the network)"


def part_of(name: str) -> str:
    """The top-level part of a module or parameter name, with its index in a module list:
    ``stages.0.tom_full`` -> ``stages.0``, ``stem.weight`` -> ``stem``."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and parts[1].isdigit() else parts[0]


def roll_up(per_module: dict[str, float]) -> dict[str, float]:
    """Sum per-module figures by ``part_of``, largest first."""
    parts: dict[str, float] = defaultdict(float)
    for name, value in per_module.items():
        parts[name if name == OUTSIDE else part_of(name)] += value
    return dict(sorted(parts.items(), key=lambda kv: -kv[1]))


@contextmanager
def _module_stack(
    network: nn.Module, depth: int, on_enter: Callable[[str], None], on_leave: Callable[[str], None]
) -> Iterator[None]:
    def pre_hook(name: str) -> Callable:
        def hook(module, args) -> None:
            on_enter(name)

        return hook

    def hook(name: str) -> Callable:
        def hook(module, args, output) -> None:  # returns None: the output stays as it is
            on_leave(name)

        return hook

    handles = []
    for name, module in network.named_modules():
        if name and name.count(".") < depth:
            handles.append(module.register_forward_pre_hook(pre_hook(name)))
            handles.append(module.register_forward_hook(hook(name)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def saved_tensor_bytes_per_module(
    network: nn.Module, forward: Callable[[], torch.Tensor], depth: int = 3
) -> dict[str, int]:
    """Bytes that autograd keeps for the backward pass, by the module that saved them.

    Runs ``forward()`` (which calls ``network``, and may add a loss) under
    ``torch.autograd.graph.saved_tensors_hooks``. A storage is counted once, by its first saver; parameters are
    left out (they are not activations); saves made outside the network (the loss) go to
    ``"(outside the network)"``. Activation checkpointing hides its own saves, which is what it stores. Tensors
    that an autograd function keeps as attributes instead of through ``save_for_backward`` are not seen.
    The graph is dropped afterwards (no backward pass).
    """
    parameter_storages = {p.untyped_storage().data_ptr() for p in network.parameters()}
    stack: list[str] = []
    first_saver: dict[int, tuple[str, int]] = {}
    # Saved tensors stay alive here while forward() runs, so that no storage address is reused and miscounted.
    # The graph holds indices, not tensors: a pack hook that returns a saved *output* itself makes a reference
    # cycle through the autograd graph that Python's garbage collector cannot free (seen: 4 GiB kept).
    kept: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> int:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in parameter_storages and pointer not in first_saver:
            first_saver[pointer] = (stack[-1] if stack else OUTSIDE, storage.nbytes())
        kept.append(tensor.detach())
        return len(kept) - 1

    try:
        with _module_stack(network, depth, stack.append, lambda name: stack.pop()):
            with torch.autograd.graph.saved_tensors_hooks(pack, kept.__getitem__):
                output = forward()
        del output
    finally:
        kept.clear()
    per_module: dict[str, int] = defaultdict(int)
    for name, nbytes in first_saver.values():
        per_module[name] += nbytes
    return dict(sorted(per_module.items(), key=lambda kv: -kv[1]))


def forward_seconds_per_module(
    network: nn.Module, forward: Callable[[], object], depth: int = 3, device: torch.device | None = None
) -> dict[str, float]:
    """Exclusive forward time per module: its own time minus that of its profiled children.

    On CUDA every module boundary synchronises the device (slower overall, but each module gets its own
    kernels' time). Time outside every profiled module goes to ``"(outside the network)"``.
    """

    def sync() -> None:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    frames: list[list] = []  # [name, start, children's time]
    exclusive: dict[str, float] = defaultdict(float)

    def enter(name: str) -> None:
        sync()
        frames.append([name, time.perf_counter(), 0.0])

    def leave(name: str) -> None:
        sync()
        _, start, children = frames.pop()
        elapsed = time.perf_counter() - start
        exclusive[name] += elapsed - children
        if frames:
            frames[-1][2] += elapsed

    with _module_stack(network, depth, enter, leave):
        sync()
        start = time.perf_counter()
        forward()
        sync()
        total = time.perf_counter() - start
    exclusive[OUTSIDE] += total - sum(exclusive.values())
    return dict(sorted(exclusive.items(), key=lambda kv: -kv[1]))


def rss_peaks_per_phase(
    network: nn.Module, step: Callable[[Callable[[str], None]], None], depth: int = 2
) -> list[dict]:
    """The peak RSS of every phase of one training step, in the order the phases ran.

    A phase is the stretch between two events: a module of at most ``depth`` name parts starting or ending its
    forward pass, or its backward pass (module backward hooks), or a named point that ``step`` marks itself
    (``step(mark)`` calls ``mark("loss")`` and so on). At every event the RSS high-water mark since the previous
    event is read and then reset (``/proc/self/clear_refs``), so each phase gets its own peak; the RSS at the event
    is what stays alive past it. Run in a process with ``MALLOC_MMAP_THRESHOLD_=65536`` (``benchmarks.memory``):
    then RSS follows the live tensors. A phase's ``transient`` is how far its peak rose above the larger of the
    RSS at its two ends: memory taken and given back inside it (workspaces, recompute buffers, copies).

    Returns a list of ``{"phase", "peak", "end", "transient"}`` (bytes, relative to the RSS before the step).
    """
    from .memory import CpuPeakMeter, rss_bytes

    meter = CpuPeakMeter()
    events: list[tuple[str, int, int]] = []  # (event that ends the phase, peak during it, RSS at the event)

    def mark(event: str) -> None:
        peak = meter.stop() + meter.baseline
        now = rss_bytes()
        events.append((event, peak, now))
        meter.start()

    handles = []
    for name, module in network.named_modules():
        if not name or name.count(".") >= depth:
            continue
        handles += [
            module.register_forward_pre_hook(lambda m, args, name=name: mark(f"forward {name} start")),
            module.register_forward_hook(lambda m, args, out, name=name: mark(f"forward {name} end")),
            module.register_full_backward_pre_hook(lambda m, grad, name=name: mark(f"backward {name} start")),
            module.register_full_backward_hook(lambda m, gin, gout, name=name: mark(f"backward {name} end")),
        ]
    try:
        meter.start()
        baseline = meter.baseline
        step(mark)
        mark("step end")
    finally:
        for handle in handles:
            handle.remove()
    phases, previous_end = [], 0
    for event, peak, end in events:
        peak, end = peak - baseline, end - baseline
        phases.append({"phase": event, "peak": peak, "end": end, "transient": max(0, peak - max(previous_end, end))})
        previous_end = end
    return phases
