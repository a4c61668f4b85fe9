"""Feed requests scored in batches under admission control, by threads or by worker processes.

:class:`Batcher` queues each feed request as a job; one dispatcher thread per executor takes up
to ``max_batch`` jobs at a time, groups them by model and ``k`` and hands each group to its
executor, which scores it with one :meth:`~pinrank.serving.scorer.FeedScorer.feed_many`.
``/v1/interests`` requests share the queue, its limits and the executors: grouped apart, each
group is one :meth:`~pinrank.serving.interests.InterestRanker.rank_many`. Two kinds of executor
(:class:`Executor`):

- :class:`InThread` scores in the dispatcher thread itself: the graphs release the GIL, but
  conforming rows, blending and diversity are Python, and under load they hold the GIL the
  event loop needs to answer anything (``/healthz`` included);
- :class:`~serve.workers.ScoringProcess` scores in a process of its own, so the
  service's process keeps its GIL for HTTP and admission control.

Admission control: a job is refused at once when ``max_queue`` jobs wait (``queue_full``), and
answered unscored when it waited ``deadline_s`` (``deadline``); both raise :class:`Overloaded`,
answered 503 with ``Retry-After``. A batch lost with its scoring process (killed, crashed or
past its timeout) fails with :class:`WorkerLost` (an :class:`Overloaded`: also a 503) and the
process is restarted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pinrank.serving.feed import Feed
    from pinrank.serving.interests import InterestRanker, InterestResult

    from .metrics import Metrics
    from .model import Model

SCORING = ("processes", "threads")  # where batches are scored (Settings.scoring)
WORKER_NICENESS = 5  # scoring yields the CPU to the event loop (Linux: per thread or process)
log = logging.getLogger("pinrank.serve")


class Overloaded(Exception):
    """A feed request answered 503: ``queue_full`` or ``deadline`` (admission control), or
    ``worker_lost`` (:class:`WorkerLost`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WorkerLost(Overloaded):
    """The scoring process of this request's batch died or overran its timeout."""

    def __init__(self, detail: str) -> None:
        super().__init__("worker_lost")
        self.detail = detail


class Executor(Protocol):
    """Where a dispatcher thread's batches are scored."""

    def feed_many(
        self, model: Model, user_ids: list[int], k: int, interests: list[list[int] | None]
    ) -> list[Feed]:
        """One feed per user, as :meth:`FeedScorer.feed_many` gives them for ``model``."""
        ...

    def interests_many(
        self, model: Model, signups: list[dict[str, Any]], k: int
    ) -> list[InterestResult]:
        """One answer per sign-up, as :meth:`InterestRanker.rank_many` of ``model`` gives them
        (the model has an interest section)."""
        ...

    def prepare(self, model: Model) -> None:
        """Get ready to score ``model`` (before a reload serves it); raises when it cannot."""
        ...

    def close(self) -> None: ...


class InThread:
    """Scores in the calling thread with the service's own loaded model."""

    def feed_many(
        self, model: Model, user_ids: list[int], k: int, interests: list[list[int] | None]
    ) -> list[Feed]:
        return model.scorer.feed_many(user_ids, k, interests)

    def interests_many(
        self, model: Model, signups: list[dict[str, Any]], k: int
    ) -> list[InterestResult]:
        return interest_ranker(model).rank_many(signups, k)

    def prepare(self, model: Model) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Job:
    """A feed request (``signup`` None) or an interests request (``user_id`` 0)."""

    model: Model
    user_id: int
    k: int
    interests: list[int] | None
    signup: dict[str, Any] | None = None
    result: Future[Any] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)


def interest_ranker(model: Model) -> InterestRanker:
    """The model's interest ranker; ValueError when its package has none."""
    ranker = model.scorer.interest_ranker
    if ranker is None:
        raise ValueError(f"{model.path} has no interest model")
    return ranker


class Batcher:
    """Feed requests that arrive together are scored together (module docstring).

    Args:
        metrics: where batch sizes are observed.
        max_batch: the most jobs scored as one batch.
        max_wait_s: how long a dispatcher waits for more jobs before scoring what it has.
        executors: one dispatcher thread each.
        max_queue: jobs waiting beyond this many are refused (``queue_full``).
        deadline_s: a job not taken within this long is answered ``deadline``.
    """

    def __init__(
        self,
        metrics: Metrics,
        max_batch: int,
        max_wait_s: float,
        executors: Sequence[Executor],
        max_queue: int = 64,
        deadline_s: float = 0.5,
    ) -> None:
        workers = len(executors)
        if max_batch < 1 or workers < 1 or max_wait_s < 0 or max_queue < 1 or deadline_s <= 0:
            raise ValueError(
                f"bad batching: {max_batch=}, {workers=}, {max_wait_s=}, {max_queue=}, "
                f"{deadline_s=}"
            )
        self.metrics, self.max_batch, self.max_wait_s = metrics, max_batch, max_wait_s
        self.max_queue, self.deadline_s = max_queue, deadline_s
        self.executors = list(executors)
        self.jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        for i, executor in enumerate(self.executors):
            threading.Thread(
                target=self._work, args=(executor,), name=f"pinrank-batch-{i}", daemon=True
            ).start()

    def submit(
        self, model: Model, user_id: int, k: int, interests: list[int] | None
    ) -> Future[Feed]:
        """Queue a feed request; Overloaded at once when ``max_queue`` requests wait already."""
        return self._put(Job(model, user_id, k, interests))

    def submit_interests(
        self, model: Model, signup: dict[str, Any], k: int
    ) -> Future[InterestResult]:
        """Queue an interests request (the same queue, limits and executors as feeds)."""
        return self._put(Job(model, 0, k, None, signup))

    def _put(self, job: Job) -> Future[Any]:
        if self.jobs.qsize() >= self.max_queue:
            raise Overloaded("queue_full")
        self.jobs.put(job)
        return job.result

    def close(self) -> None:
        for executor in self.executors:
            executor.close()

    def _work(self, executor: Executor) -> None:
        if isinstance(executor, InThread):  # its Python runs in this thread
            with contextlib.suppress(OSError, AttributeError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)
        while True:
            jobs = self._fresh([self.jobs.get()])
            deadline = time.monotonic() + self.max_wait_s
            while len(jobs) < self.max_batch:
                try:
                    more = self.jobs.get(timeout=max(deadline - time.monotonic(), 1e-6))
                except queue.Empty:
                    break
                jobs += self._fresh([more])
            if not jobs:
                continue
            try:
                self._score(executor, jobs)
            except Exception as err:  # every waiting request must still get an answer,
                if not isinstance(err, WorkerLost):  # and the dispatcher must live on
                    log.exception("feed batch failed")  # a bug
                for j in jobs:
                    if not j.result.done():
                        j.result.set_exception(err)

    def _fresh(self, jobs: list[Job]) -> list[Job]:
        """The jobs still within their deadline; the others are answered Overloaded unscored."""
        now, kept = time.monotonic(), []
        for j in jobs:
            if now - j.queued_at > self.deadline_s:
                j.result.set_exception(Overloaded("deadline"))
            else:
                kept.append(j)
        return kept

    def _score(self, executor: Executor, jobs: list[Job]) -> None:
        self.metrics.batch.observe(len(jobs))
        groups: dict[tuple[bool, int, int], list[Job]] = {}
        for job in jobs:
            groups.setdefault((job.signup is None, id(job.model), job.k), []).append(job)
        for (feeds, _, k), group in groups.items():
            model = group[0].model
            if feeds:
                users, wanted = [j.user_id for j in group], [j.interests for j in group]
                answers: Sequence[Any] = executor.feed_many(model, users, k, wanted)
            else:
                signups = [j.signup or {} for j in group]
                answers = executor.interests_many(model, signups, k)
            for j, answer in zip(group, answers, strict=True):
                j.result.set_result(answer)
