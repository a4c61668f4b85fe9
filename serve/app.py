"""The feed service: the embedded :class:`~pinrank.serving.scorer.FeedScorer` behind HTTP.

Endpoints (OpenAPI schema at ``/openapi.json``, browsable at ``/docs``):

=========================  ===================================================================
``GET /v1/feed/{user_id}``  the user's feed (``k``, ``interests``); never fails for a valid
                            request: an unknown user, a slow or failed store or a failed graph
                            give a labelled fallback feed (``path``, ``fallback``)
``POST /v1/score``          calibrated probabilities of explicit (user, items) pairs
``GET|POST /v1/interests``  a new user's top interests from sign-up fields (the package's
                            interest model; 404 without one): :mod:`serve.interests`
``GET /healthz``            the process answers
``GET /readyz``             a model is loaded (503 before); reports the store's state, which
                            does not gate readiness: a store outage degrades feeds, not the
                            service
``GET /metrics``            Prometheus: requests and latency by endpoint, feed paths, fallbacks
                            by reason, reloads, the model version
``POST /admin/reload``      bearer token: load a package (default: the current path again),
                            verify it (digests, every graph on a probe user) and swap it in
=========================  ===================================================================

Model lifecycle: a request reads the current model once and uses it to the end, so a reload
never changes the model under a request in flight; the swap is one reference assignment, made
only after the new package loaded and passed its probe. A refused package leaves the old one
serving (422, with the reason). Reloads run one at a time (409 while one runs).

Bad input is a 4xx whose ``error.message`` says what is wrong: wrong types, unknown fields or
query parameters, ``k`` or list lengths out of range, ids outside ``[0, 2**63)``, NaN, items not
in the catalogue (404), bodies over ``max_body_bytes`` (413). The service never imports torch.
"""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations at run time,
# and they close over `settings`
import asyncio
import contextlib
import gc
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from pinrank.serving.feed import Feed, FeedConfig
from pinrank.serving.signing import Trust
from pinrank.serving.store import UserStore

from .batcher import SCORING, Batcher, Executor, InThread, Overloaded, interest_ranker
from .follow import Follow, Follower
from .http import (
    BodyLimit,
    Measure,
    SafeJSONResponse,
    error,
)
from .interests import interest_routes
from .metrics import Metrics
from .model import Model, load_model
from .routes import Busy, admin_routes, feed_routes, ops_routes
from .schemas import (
    jsonable,
    validation_message,
)
from .workers import ScoringProcess, WorkerConfig

T = TypeVar("T")
log = logging.getLogger("pinrank.serve")


@dataclass(frozen=True)
class Settings:
    """How the service runs.

    Args:
        package: the model package served at start.
        trust: which signing keys are trusted and where packages may lie
            (:class:`~pinrank.serving.signing.Trust`; the default trusts no key, so every package
            is refused). Without roots, the folder holding ``package`` is the one model root:
            a reload may name only packages under it.
        admin_token: the bearer token of ``/admin/*`` (``None``: admin endpoints refuse all).
        feed: how feeds are assembled.
        threads: ONNX Runtime intra-op threads per graph (1 suits many concurrent requests).
        max_k: the largest ``k`` a feed request may ask for.
        max_items: the most items one ``/v1/score`` request may score.
        max_interests: the most ``interests`` a feed request may pass.
        max_body_bytes: larger request bodies get 413 before they are parsed.
        batch_max: feed requests waiting together are scored as one batch of at most this many
            (:meth:`FeedScorer.feed_many`: the graphs run once for all); 1 scores each alone.
        batch_wait_ms: how long a worker waits for more requests before scoring what it has.
        batch_workers: how many batches are scored at once (2 use both cores of a 2-core
            machine): processes or threads, by ``scoring``.
        scoring: ``processes``: batches are scored in worker processes
            (:mod:`serve.workers`), so scoring's Python never holds the GIL the event
            loop answers requests with; each process holds its own copy of the model and of an
            in-memory user store (a memory-mapped Arrow store shares its pages).
            ``threads``: in threads of this process (one copy; tests, small machines).
        score_timeout_s: ``processes``: a batch not scored within this long fails with 503
            (``worker_lost``) and its process is restarted.
        max_queue: admission control: feed requests waiting to be scored beyond this many are
            answered 503 with ``Retry-After`` at once (``queue_full``).
        queue_deadline_ms: a feed request that waited this long without being scored is
            answered 503 with ``Retry-After`` (``deadline``), so admitted requests keep a bounded
            latency under overload instead of every request slowing down.
        body_timeout_s: a request body not received within this long gets 408 (the header
            timeout is the HTTP server's: :func:`serve.http.timed_h11`).
        follow: a registry alias the service follows (:mod:`serve.follow`): polled, and the
            package it points at swapped in when it moves. ``package`` is then its fetched copy.
    """

    package: Path
    trust: Trust = field(default_factory=Trust)
    admin_token: str | None = None
    feed: FeedConfig = field(default_factory=FeedConfig)
    threads: int = 1
    max_k: int = 500
    max_items: int = 1000
    max_interests: int = 100
    max_body_bytes: int = 64 * 1024
    batch_max: int = 32
    batch_wait_ms: float = 2.0
    batch_workers: int = 2
    max_queue: int = 64
    queue_deadline_ms: float = 500.0
    body_timeout_s: float = 10.0
    scoring: str = "threads"
    score_timeout_s: float = 30.0
    follow: Follow | None = None

    def __post_init__(self) -> None:
        if self.scoring not in SCORING:
            raise ValueError(f"scoring must be one of {SCORING}, got {self.scoring!r}")


class Service:
    """The state behind the app: the store, the current model, the reload lock, the batcher and
    metrics."""

    def __init__(self, settings: Settings, store: UserStore) -> None:
        self.settings, self.store, self.metrics = settings, store, Metrics()
        trust = settings.trust
        self.trust = (
            trust if trust.roots else trust.with_roots([Path(settings.package).resolve().parent])
        )
        self.model = self._load(settings.package)
        self.id_kinds = id_kinds(self.model)  # which ids are strings: fixed for the routes
        self.metrics.serving(self.model)
        self._reloading = threading.Lock()
        self.batcher: Batcher | None = None
        if settings.batch_max > 1 or settings.scoring == "processes":
            self.batcher = Batcher(
                self.metrics,
                settings.batch_max,
                settings.batch_wait_ms / 1e3,
                self._executors(),
                settings.max_queue,
                settings.queue_deadline_ms / 1e3,
            )
            self._prepare(self.model)
        self._unbatched = threading.BoundedSemaphore(settings.batch_workers)
        self._waiting = 0
        follow = settings.follow
        self.follower = Follower(self, follow, settings.trust) if follow is not None else None

    def _load(self, path: str | Path) -> Model:
        s = self.settings
        return load_model(path, self.store, self.trust, s.threads, s.feed)

    def _executors(self) -> list[Executor]:
        s = self.settings
        if s.scoring == "threads":
            return [InThread() for _ in range(s.batch_workers)]
        config = WorkerConfig(self.trust.to_dict(), s.threads, s.feed, s.score_timeout_s)

        def restarted(cause: str) -> None:
            self.metrics.restarts.labels(cause).inc()

        return [
            ScoringProcess(self.store, config, f"pinrank-scorer-{i}", restarted)
            for i in range(s.batch_workers)
        ]

    def _prepare(self, model: Model) -> None:
        """Every executor loads ``model`` (in parallel); raises the first failure."""
        assert self.batcher is not None
        executors = self.batcher.executors
        with ThreadPoolExecutor(len(executors)) as pool:
            for done in [pool.submit(e.prepare, model) for e in executors]:
                done.result()

    def close(self) -> None:
        """Stop following the registry and the scoring processes (if any)."""
        if self.follower is not None:
            self.follower.stop()
        if self.batcher is not None:
            self.batcher.close()

    async def feed_async(
        self, model: Model, user_id: int, k: int, interests: list[int] | None
    ) -> Feed:
        """A feed under admission control, awaited without holding a thread while it waits;
        Overloaded when shed."""
        if self.batcher is not None:
            return await asyncio.wrap_future(self.batcher.submit(model, user_id, k, interests))
        return await self.in_thread(model.scorer.feed, user_id, k, interests)

    async def interests_async(self, model: Model, signup: dict[str, Any], k: int) -> Any:
        """``/v1/interests``'s answer (an InterestResult) under admission control: batched with
        the feeds where they are, else in a thread; Overloaded when shed."""
        if self.batcher is not None:
            return await asyncio.wrap_future(self.batcher.submit_interests(model, signup, k))
        return await self.in_thread(interest_ranker(model).rank, signup, k)

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a thread under admission control: at most ``batch_workers`` at once
        (more threads than cores only trade the GIL and the caches back and forth: with 8
        clients on 2 cores ``/v1/interests`` answered fewer requests a second than with 4),
        at most ``max_queue`` waiting, each at most ``queue_deadline_ms``; Overloaded when
        shed. Unbatched feeds and ``/v1/interests`` are scored this way."""
        if self._waiting >= self.settings.max_queue:
            raise Overloaded("queue_full")
        self._waiting += 1  # the event loop's thread alone changes it
        try:
            got = await run_in_threadpool(
                self._unbatched.acquire, timeout=self.settings.queue_deadline_ms / 1e3
            )
        finally:
            self._waiting -= 1
        if not got:
            raise Overloaded("deadline")
        try:
            return await run_in_threadpool(fn, *args)
        finally:
            self._unbatched.release()

    def reload(self, path: str | None) -> tuple[Model, Model]:
        """Swap to the package at ``path`` (default: the current one's); returns (old, new).
        Raises Busy while another reload runs, and the load's error when it is refused."""
        if not self._reloading.acquire(blocking=False):
            raise Busy
        try:
            old = self.model
            try:
                new = self._load(path or old.path)
                if id_kinds(new) != self.id_kinds:
                    raise ValueError(
                        f"{new.path}: its string ids {sorted(id_kinds(new))} differ from the "
                        f"served package's {sorted(self.id_kinds)}: restart the service for it"
                    )
                if self.batcher is not None:
                    self._prepare(new)  # scoring processes load it before it is served
            except Exception:
                self.metrics.reloads.labels("refused").inc()
                raise
            self.model = new  # one assignment: requests that read `old` keep it
            self.metrics.serving(new)
            self.metrics.reloads.labels("ok").inc()
            gc.freeze()  # the new model's objects too (settle_heap)
            log.info("reloaded %s (%s) -> %s (%s)", old.path, old.version, new.path, new.version)
            return old, new
        finally:
            self._reloading.release()


def id_kinds(model: Model) -> frozenset[str]:
    """The request fields whose ids are strings the model maps: ``user_id``, ``item_id``,
    ``interests`` (:mod:`pinrank.serving.ids`)."""
    ids = model.scorer.ids
    named = {"user_id": "user_id", "item_id": "item_id", "interests": ids.interests}
    return frozenset(field for field, ns in named.items() if ids.maps(ns))


def settle_heap() -> None:
    """Collect once, then move every object alive (modules, the package, the user store) out
    of the cyclic garbage collector's reach (:func:`gc.freeze`), before serving starts.

    Without it each full collection under load walks the 100k+ objects loaded at start: a
    60-120 ms stall of every thread holding the GIL, the tail of every latency (``/healthz``
    p99 above 100 ms at 128 clients). A reload freezes the new model's objects too, without a
    collection (a full one there stalls requests in flight); the replaced model is freed by
    reference counting when its last request ends (tested: it holds no reference cycle).
    """
    gc.collect()
    gc.freeze()


# ---------------------------------------------------------------- the app


def create_app(settings: Settings, store: UserStore) -> FastAPI:
    """The ASGI app; loads and probes ``settings.package`` first (raises if it is refused)."""
    service = Service(settings, store)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settle_heap()  # the server's own modules are imported by now
        if service.follower is not None:
            service.follower.start()
        yield
        service.close()

    app = FastAPI(
        lifespan=lifespan,
        title="pinrank feed service",
        version="1",
        description=(__doc__ or "").split("\n\n")[0],
        default_response_class=SafeJSONResponse,
        redirect_slashes=False,  # a redirect's Location would be built from the Host header
    )
    app.state.service = service

    routers = (feed_routes(service), interest_routes(service), ops_routes(service),
               admin_routes(service))  # fmt: skip
    for router in routers:
        app.include_router(router)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = jsonable(exc.errors())
        return error(422, validation_message(errors), details=errors)

    @app.exception_handler(StarletteHTTPException)  # FastAPI's, and the router's 404 / 405
    async def httperror(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = error(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:  # a bug, logged
        log.exception("unhandled error on %s", request.url.path)
        return error(500, f"internal error: {type(exc).__name__}")

    app.add_middleware(
        BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s
    )
    # outermost: counts the body limit's 413s, the handlers' 4xx and unhandled 500s alike
    app.add_middleware(Measure, routes=lambda: app.router.routes, observe=service.metrics.observe)
    return app
