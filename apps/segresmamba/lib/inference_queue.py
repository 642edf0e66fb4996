"""A bounded queue of inferences, run on worker threads so that the server's event loop keeps answering."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from fastapi import HTTPException

__all__ = ["InferenceQueue"]


class InferenceQueue:
    """At most ``workers`` inferences run at once and ``capacity`` are admitted (running or waiting); a request
    beyond that is answered at once with HTTP 503 and a ``Retry-After`` estimate instead of waiting unboundedly.

    MONAI Label's infer endpoint is an ``async`` function that runs the whole inference on the event loop, so one
    inference stops every other request (``/info``, the datastore, training status) until it ends; this app's
    infer endpoint hands the work to this queue instead.

    Args:
        workers: inferences running at once (each already uses every CPU core through torch's threads).
        capacity: inferences admitted at once, running and waiting.
    """

    def __init__(self, workers: int = 1, capacity: int = 4):
        if workers < 1 or capacity < workers:
            raise ValueError(f"need 1 <= workers <= capacity, got workers {workers}, capacity {capacity}")
        self.workers, self.capacity = workers, capacity
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="segresmamba-infer")
        self._slots = threading.BoundedSemaphore(capacity)
        self._lock = threading.Lock()
        self._admitted = 0
        self._durations: deque[float] = deque(maxlen=8)

    @property
    def admitted(self) -> int:
        """Inferences running or waiting now."""
        return self._admitted

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: a full queue frees one when its oldest inference ends, within about
        one recent inference time."""
        typical = sum(self._durations) / len(self._durations) if self._durations else 10.0
        return max(1, math.ceil(typical))

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` on a worker thread; HTTP 503 with ``Retry-After`` when the queue is full."""
        if not self._slots.acquire(blocking=False):
            seconds = self.retry_after()
            raise HTTPException(
                status_code=503,
                detail=f"{self.capacity} inferences are running or queued; try again in about {seconds} s",
                headers={"Retry-After": str(seconds)},
            )
        with self._lock:
            self._admitted += 1

        def timed():
            start = time.monotonic()
            try:
                return function(*args)
            finally:
                self._durations.append(time.monotonic() - start)

        future = self._executor.submit(timed)
        # The slot is freed when the work ends, not when the client stops waiting for it.
        future.add_done_callback(lambda _: self._release())
        return await asyncio.wrap_future(future)

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1
        self._slots.release()
