"""Model jobs run earliest deadline first; cancelled ones never start."""

from __future__ import annotations

import threading

import pytest

from pipelines.scheduling import DeadlineWorkers


def test_waiting_jobs_run_by_deadline_then_in_order() -> None:
    """With the one worker busy, queued jobs come out by deadline, ties in order."""
    workers = DeadlineWorkers(1, "test")
    gate, ran = threading.Event(), []
    first = workers.submit(0.0, gate.wait)
    jobs = [
        workers.submit(deadline, lambda name=name: ran.append(name))
        for deadline, name in [
            (5.0, "late"),
            (1.0, "soon"),
            (1.0, "soon too"),
            (3.0, "mid"),
        ]
    ]
    jobs[0].cancel()  # a barge-in gave up on this one before it started
    gate.set()
    for job in jobs[1:]:
        job.result(timeout=5)
    assert first.result(timeout=5) is True
    assert ran == ["soon", "soon too", "mid"]
    workers.shutdown()


def test_errors_reach_the_caller_and_shutdown_refuses_new_work() -> None:
    """A failing job's exception is its future's; after shutdown nothing is taken."""
    workers = DeadlineWorkers(2, "test")

    def boom() -> None:
        raise ValueError("bad sentence")

    with pytest.raises(ValueError, match="bad sentence"):
        workers.submit(0.0, boom).result(timeout=5)
    workers.shutdown()
    with pytest.raises(RuntimeError):
        workers.submit(0.0, lambda: None)
