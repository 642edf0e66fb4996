"""The end of a distributed run: waiting for named threads to park (``custom_nets.bundle.distributed``). The DDP
runs themselves are in test_bundles.py."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import custom_nets.bundle.distributed as distributed
from custom_nets.bundle.distributed import wait_until_threads_park

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads are read from Linux's /proc")
PR_SET_NAME = 15


def named_thread(name: str, busy_seconds: float, stop: threading.Event) -> threading.Thread:
    """A thread that names itself ``name`` for the kernel, computes for ``busy_seconds`` (``inf``: until ``stop``),
    then waits for ``stop``."""
    def body():
        ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode(), 0, 0, 0)
        ready.set()
        end = time.monotonic() + busy_seconds
        while time.monotonic() < end and not stop.is_set():
            sum(range(1000))
        stop.wait()

    ready = threading.Event()
    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    ready.wait()
    return thread


def test_waits_while_the_named_thread_runs_and_returns_once_it_parks():
    stop = threading.Event()
    thread = named_thread("test_busy_then", 0.5, stop)
    started = time.monotonic()
    try:
        assert wait_until_threads_park("test_busy_then", timeout=20)
        assert time.monotonic() - started >= 0.4  # not before its work was done
    finally:
        stop.set()
        thread.join()


def test_gives_up_after_the_timeout_on_a_thread_that_never_parks():
    stop = threading.Event()
    thread = named_thread("test_always", float("inf"), stop)
    started = time.monotonic()
    try:
        assert not wait_until_threads_park("test_always", timeout=0.5)
        assert 0.5 <= time.monotonic() - started < 5
    finally:
        stop.set()
        thread.join()


def test_no_such_threads_is_parked_at_once():
    started = time.monotonic()
    assert wait_until_threads_park("no_such_thread", timeout=10)
    assert time.monotonic() - started < 1


RANK_SCRIPT = '''
import importlib.util, os, sys
import torch, torch.distributed as dist

os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # both ranks and the competitor on one core
dist.init_process_group("gloo")
dist.barrier()
for task in os.listdir("/proc/self/task"):  # gloo's workers at the lowest priority: they lag behind the main thread
    if open(f"/proc/self/task/{task}/comm").read().strip() == "pt_gloo_runloop":
        os.setpriority(os.PRIO_PROCESS, int(task), 19)
network = torch.nn.parallel.DistributedDataParallel(torch.nn.Conv3d(2, 2, 3))  # keeps the process group alive
with torch.no_grad():
    network(torch.randn(1, 2, 8, 8, 8))
for _ in range(3):  # tensors Python releases while gloo's workers may still hold them
    gathered = [torch.empty(4) for _ in range(2)]
    dist.all_gather(gathered, torch.full((4,), float(dist.get_rank())))
# the module alone, by its path: the package would import MONAI in each rank
spec = importlib.util.spec_from_file_location("distributed", sys.argv[1])
distributed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(distributed)
distributed.end_process_group()
'''


def test_a_ddp_run_on_gloo_ends_without_abort_while_its_workers_lag(tmp_path):
    """The abort this module prevents, provoked: gloo's workers at the lowest priority beside a busy process on the
    ranks' one core. Without ``end_process_group``'s wait, 4 runs in 5 of this aborted (SIGABRT, "terminate called
    without an active exception") when it was written; with it, none in 10."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    core = min(os.sched_getaffinity(0))
    busy = f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile 1: pass"
    competitor = subprocess.Popen([sys.executable, "-c", busy])
    try:
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        done = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(script), distributed.__file__],
                              cwd=tmp_path, capture_output=True, text=True, timeout=240,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        competitor.kill()
        competitor.wait()
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "terminate called" not in output, output[-4000:]
