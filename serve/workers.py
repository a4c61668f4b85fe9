"""Feed scoring in worker processes (``--scoring processes``, the service's default).

Why: conforming user rows, blending and diversity are Python. Scored in threads of the service's
process, they hold the GIL that the event loop needs for every request, so under load a health
check waits for it (``/healthz`` p99 above 100 ms at 128 clients on 2 cores). In a process of its
own each scorer has its own interpreter, and the service's process keeps its GIL for HTTP and
admission control.

A :class:`ScoringProcess` is one child process (started with ``spawn``: the parent runs threads
and ONNX Runtime, which ``fork`` would copy mid-state) that opens its own user store (the
store pickles as a recipe: a file path or a Redis URL, :meth:`UserStore.__reduce__`) and loads
each package it is asked for itself, under the service's trust policy, checking that it finds
the version the service verified. It keeps the two newest models, so requests that started
before a reload finish on the model they started with. Messages go over one pipe, one at a time:

- ``("load", path, version)``: load and probe (the service calls it for every process before a
  reload swaps the new model in, so no request waits for a load);
- ``("feed", path, version, user_ids, k, interests)``: the batch's feeds;
- ``("interests", path, version, signups, k)``: the batch's ``/v1/interests`` answers.

A process started again after a failure is sent ``load`` first (under the load's own time
limit, not the batch's).

A process that dies (killed, out of memory, a crash in native code) or does not answer within
``timeout_s`` fails the batch it held with :class:`WorkerLost` (503 with ``Retry-After``) and is
started again at once.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from .batcher import WORKER_NICENESS, WorkerLost

if TYPE_CHECKING:
    from pinrank.serving.feed import Feed, FeedConfig
    from pinrank.serving.interests import InterestResult
    from pinrank.serving.scorer import FeedScorer
    from pinrank.serving.store import UserStore

    from .model import Model

log = logging.getLogger("pinrank.serve")
KEEP_MODELS = 2  # the current model and the one before it (requests still finishing on it)


@dataclass(frozen=True)
class WorkerConfig:
    """What a scoring process needs to load packages as the service does (plain data)."""

    trust: dict[str, Any]  # Trust.to_dict()
    threads: int
    feed: FeedConfig
    timeout_s: float = 30.0  # a batch not answered within this long: WorkerLost
    load_timeout_s: float = 600.0  # a package load (digests, sessions, probe)


def _serve(conn: Connection, store: UserStore, config: WorkerConfig) -> None:
    """The child's loop: answer each message with ``("ok", value)`` or ``("error", text)``."""
    from pinrank.serving.signing import Trust

    from .model import load_model

    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, 0, WORKER_NICENESS)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    trust = Trust.from_dict(config.trust)
    models: OrderedDict[str, FeedScorer] = OrderedDict()

    def scorer(path: str, version: str) -> FeedScorer:
        if version not in models:
            model = load_model(path, store, trust, config.threads, config.feed)
            if model.version != version:  # the folder changed since the service checked it
                raise ValueError(
                    f"{path} is version {model.version} here, the service verified {version}"
                )
            models[version] = model.scorer
            while len(models) > KEEP_MODELS:
                models.popitem(last=False)
        models.move_to_end(version)
        return models[version]

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the service is gone
            return
        try:
            if message[0] == "load":
                scorer(*message[1:3])
                answer: tuple[str, Any] = ("ok", None)
            elif message[0] == "feed":
                _, path, version, user_ids, k, interests = message
                answer = ("ok", scorer(path, version).feed_many(user_ids, k, interests))
            elif message[0] == "interests":
                _, path, version, signups, k = message
                ranker = scorer(path, version).interest_ranker
                if ranker is None:
                    raise ValueError(f"{path} has no interest model")
                answer = ("ok", ranker.rank_many(signups, k))
            else:
                answer = ("error", f"unknown message {message[0]!r}")
        except Exception as err:
            answer = ("error", f"{type(err).__name__}: {err}")
        conn.send(answer)


class ScoringProcess:
    """One scoring process and the pipe to it (module docstring); an :class:`Executor`.

    Args:
        store: the user store; it is pickled into the child, which opens its own.
        config: trust policy, threads per graph, feed assembly, the answer timeout.
        name: the process's name (logs, ``ps``).
        on_restart: called with the cause (``died`` or ``timeout``) whenever the process is
            replaced.
    """

    def __init__(
        self,
        store: UserStore,
        config: WorkerConfig,
        name: str = "pinrank-scorer",
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        self.store, self.config, self.name = store, config, name
        self.on_restart = on_restart
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()  # one message in flight: dispatcher and reloads share it
        self._start()

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        self.process = self._context.Process(
            target=_serve, args=(child, self.store, self.config), name=self.name, daemon=True
        )
        self.process.start()
        child.close()
        self.conn = parent
        self._loaded: set[str] = set()  # versions this process has loaded

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def call(self, message: tuple[Any, ...], timeout_s: float) -> Any:
        """Send one message and wait for its answer; WorkerLost (after a restart) when the
        process died or did not answer within ``timeout_s``, RuntimeError with the child's
        error."""
        with self._lock:
            try:
                self.conn.send(message)
                if not self.conn.poll(timeout_s):
                    self._restart("timeout")
                    raise WorkerLost(f"{self.name} gave no answer in {timeout_s} s")
                status, value = self.conn.recv()
            except (EOFError, OSError) as err:
                self._restart("died")
                raise WorkerLost(f"{self.name} died ({type(err).__name__})") from err
        if status != "ok":
            raise RuntimeError(f"{self.name}: {value}")
        return value

    def _restart(self, cause: str) -> None:
        code = self.process.exitcode
        log.error("scoring process %s (pid %s) %s (exit code %s): restarting",
                  self.name, self.pid, cause, code)  # fmt: skip
        self.close()
        self._start()
        if self.on_restart is not None:
            self.on_restart(cause)

    def feed_many(
        self, model: Model, user_ids: list[int], k: int, interests: list[list[int] | None]
    ) -> list[Feed]:
        if model.version not in self._loaded:  # a restarted process: load under the load limit
            self.prepare(model)
        message = ("feed", model.path, model.version, user_ids, k, interests)
        return self.call(message, self.config.timeout_s)

    def interests_many(
        self, model: Model, signups: list[dict[str, Any]], k: int
    ) -> list[InterestResult]:
        if model.version not in self._loaded:
            self.prepare(model)
        message = ("interests", model.path, model.version, signups, k)
        return self.call(message, self.config.timeout_s)

    def prepare(self, model: Model) -> None:
        self.call(("load", model.path, model.version), self.config.load_timeout_s)
        self._loaded.add(model.version)

    def close(self) -> None:
        """Stop the process (a few seconds' grace, then SIGKILL)."""
        with contextlib.suppress(OSError):
            self.conn.close()
        self.process.join(timeout=0.1)
        if self.process.is_alive():
            self.process.terminate()
            deadline = time.monotonic() + 5
            while self.process.is_alive() and time.monotonic() < deadline:
                self.process.join(timeout=0.1)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
