"""Worker threads that run the most urgent model job first.

Every call's sentences share one TTS voice. First come, first served lets a
call whose agent is halfway through a reply wait behind another call's whole
answer, and its caller hears a gap. Here each job carries a deadline (the
monotonic time its result is needed: now for a first sentence someone is
waiting on, the end of what is already playing for the next one) and free
workers always take the earliest deadline. Ties keep their order.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["DeadlineWorkers"]

_T = TypeVar("_T")


class DeadlineWorkers:
    """A fixed pool of threads taking jobs earliest deadline first."""

    def __init__(self, workers: int, name: str) -> None:
        self._jobs: list[tuple[float, int, Future[Any], Callable[[], Any]]] = []
        self._order = itertools.count()
        self._ready = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, deadline: float, job: Callable[[], _T]) -> Future[_T]:
        future: Future[_T] = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the workers are shut down")
            heapq.heappush(self._jobs, (deadline, next(self._order), future, job))
            self._ready.notify()
        return future

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._jobs and not self._closed:
                    self._ready.wait()
                if not self._jobs:
                    return
                _, _, future, job = heapq.heappop(self._jobs)
            if not future.set_running_or_notify_cancel():
                continue  # its caller gave up (a barge-in) before it started
            try:
                future.set_result(job())
            except BaseException as exc:
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Cancel what has not started, let what has finish, stop the threads."""
        with self._ready:
            self._closed = True
            pending, self._jobs = self._jobs, []
            self._ready.notify_all()
        for _, _, future, _ in pending:
            future.cancel()
        for thread in self._threads:
            thread.join()
