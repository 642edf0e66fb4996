"""The end of a distributed bundle run (the ``finalize`` of ``multi_gpu_train.json`` and ``multi_gpu_evaluate.json``).

With the gloo backend (DDP on CPUs) a process could abort after its run had finished and written everything:
"terminate called without an active exception", SIGABRT, so ``torchrun`` reported the run as failed. A core dump of
such a process shows why: one of gloo's worker threads (``pt_gloo_runloop``) was still dropping its last work, a
barrier that held an all-gather whose tensors Python had already released; freeing those tensors takes the GIL, and
the interpreter was finalizing, so Python ended the thread, and its unwinding through a ``noexcept`` destructor
called ``std::terminate``. A worker drops a work only after the caller's ``wait`` has returned, so a loaded machine
widens that gap past the end of the interpreter. ``destroy_process_group`` does not close it: the DDP wrapper keeps
the process group, and with it the workers, alive until exit.

``end_process_group`` therefore waits, with the GIL free, until those workers are parked, before the process goes
on to exit.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

__all__ = ["end_process_group", "wait_until_threads_park"]

logger = logging.getLogger(__name__)
GLOO_WORKER_THREAD = "pt_gloo_runloop"  # the name torch's ProcessGroupGloo gives its worker threads
TASKS = Path("/proc/self/task")


def end_process_group(timeout: float = 60.0) -> None:
    """Every rank at a barrier, then ``destroy_process_group``; with gloo, then wait up to ``timeout`` seconds for
    its worker threads to park (``wait_until_threads_park``). Nothing when no process group is initialised."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    gloo = dist.get_backend() == "gloo"
    dist.barrier()
    dist.destroy_process_group()
    if gloo and not wait_until_threads_park(GLOO_WORKER_THREAD, timeout):
        logger.warning("gloo's worker threads still ran %s s after destroy_process_group", timeout)


def _thread_activity(name: str) -> dict[str, tuple[str, int]] | None:
    """State and context switches so far of this process's threads called ``name``, by thread id; ``None`` where
    ``/proc`` does not tell (not Linux)."""
    activity = {}
    try:
        tasks = list(TASKS.iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            if (task / "comm").read_text().strip() != name:
                continue
            status = dict(line.split(":", 1) for line in (task / "status").read_text().splitlines() if ":" in line)
        except OSError:  # the thread ended while being read
            continue
        switches = int(status["voluntary_ctxt_switches"]) + int(status["nonvoluntary_ctxt_switches"])
        activity[task.name] = (status["State"].split()[0], switches)
    return activity


def wait_until_threads_park(name: str, timeout: float, interval: float = 0.02) -> bool:
    """Wait until this process's threads called ``name`` are parked: asleep, and not run once during an interval of
    ``interval`` seconds in which this thread slept (the GIL free, so a thread waiting for it would have run).
    True when they are (or there are none), False after ``timeout`` seconds, or where ``/proc`` is not there."""
    deadline = time.monotonic() + timeout
    before = _thread_activity(name)
    while before is not None:
        if not before:
            return True
        time.sleep(interval)
        after = _thread_activity(name)
        if after == before and all(state == "S" for state, _ in after.values()):
            return True
        if time.monotonic() > deadline:
            return False
        before = after
    return False
