"""The feed service: the embedded :class:`~pinrank.serving.scorer.FeedScorer` behind HTTP.

Endpoints (OpenAPI schema at ``/openapi.json``, browsable at ``/docs``):

=========================  ===================================================================
``GET /v1/feed/{user_id}``  the user's feed (``k``, ``interests``); never fails for a valid
                            request: an unknown user, a slow or failed store or a failed graph
                            give a labelled fallback feed (``path``, ``fallback``)
``POST /v1/score``          calibrated probabilities of explicit (user, items) pairs
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
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from pinrank.serve.batcher import SCORING, Batcher, Executor, InThread, Overloaded
from pinrank.serve.http import (
    BodyLimit,
    Measure,
    SafeJSONResponse,
    error,
    json_body,
    strict_params,
)
from pinrank.serve.metrics import Metrics
from pinrank.serve.model import Model, load_model
from pinrank.serve.workers import ScoringProcess, WorkerConfig
from pinrank.serving.scorer import Feed, FeedConfig
from pinrank.serving.signing import Trust
from pinrank.serving.store import StoreError, UserStore

INT64_MAX = 2**63 - 1
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
            (:mod:`pinrank.serve.workers`), so scoring's Python never holds the GIL the event
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
            timeout is the HTTP server's: :func:`pinrank.serve.http.timed_h11`).
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
        """Stop the scoring processes (if any)."""
        if self.batcher is not None:
            self.batcher.close()

    async def feed_async(
        self, model: Model, user_id: int, k: int, interests: list[int] | None
    ) -> Feed:
        """A feed under admission control, awaited without holding a thread while it waits;
        Overloaded when shed."""
        if self.batcher is not None:
            return await asyncio.wrap_future(self.batcher.submit(model, user_id, k, interests))
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
            return await run_in_threadpool(model.scorer.feed, user_id, k, interests)
        finally:
            self._unbatched.release()

    def reload(self, path: str | None) -> tuple[Model, Model]:
        """Swap to the package at ``path`` (default: the current one's); returns (old, new).
        Raises _Busy while another reload runs, and the load's error when it is refused."""
        if not self._reloading.acquire(blocking=False):
            raise _Busy
        try:
            old = self.model
            try:
                new = self._load(path or old.path)
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


class _Busy(Exception):
    pass


# ---------------------------------------------------------------- request and response bodies


UserId = Annotated[int, Field(ge=0, le=INT64_MAX)]


class FeedItemOut(BaseModel):
    item_id: int
    score: float
    source: str


class FeedOut(BaseModel):
    user_id: int
    k: int
    path: str = Field(description="how the feed was made (pinrank.serving.scorer.PATHS)")
    fallback: str | None = Field(description="why it is not personalized; null when it is")
    replaced: dict[str, str] = Field(description="user columns replaced by their defaults")
    model_version: str
    items: list[FeedItemOut]


class ScoreOut(BaseModel):
    user_id: int
    model_version: str
    scores: list[float] = Field(description="calibrated probabilities, in the order asked")


class ReloadIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    package: str | None = Field(None, min_length=1, description="default: the current path")


class ReloadOut(BaseModel):
    previous: dict[str, str]
    serving: dict[str, str]
    seconds: float


def _where(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in loc) or "request"


def validation_message(errors: Sequence[Any]) -> str:
    """One line per problem: ``where: what (got value)``."""
    lines = []
    for e in errors:
        got = e.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r:.60})"
        lines.append(f"{_where(e.get('loc', ()))}: {e.get('msg', 'invalid')}{shown}")
    return "; ".join(lines)


# ---------------------------------------------------------------- the app


def create_app(settings: Settings, store: UserStore) -> FastAPI:
    """The ASGI app; loads and probes ``settings.package`` first (raises if it is refused)."""
    service = Service(settings, store)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settle_heap()  # the server's own modules are imported by now
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

    class ScoreIn(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        user_id: UserId
        item_ids: list[UserId] = Field(min_length=1, max_length=settings.max_items)

    async def admin(request: Request) -> None:
        if settings.admin_token is None:
            raise HTTPException(403, "admin endpoints are disabled: no admin token configured")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(
                401, "admin endpoints need 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip
        if not hmac.compare_digest(token.encode(), settings.admin_token.encode()):
            raise HTTPException(403, "wrong admin token")

    feed_query = [
        Depends(strict_params(path=["user_id"], ints=["k"], lists=["interests"])),
    ]
    interests_query = Query(
        max_length=settings.max_interests, description="repeat: ?interests=3&interests=7"
    )

    @app.get(
        "/v1/feed/{user_id}",
        response_model=FeedOut,
        dependencies=feed_query,
        responses={503: {"description": "overloaded: retry after Retry-After seconds"}},
    )
    async def feed(
        user_id: Annotated[int, PathParam(ge=0, le=INT64_MAX)],
        k: Annotated[int, Query(ge=1, le=settings.max_k)] = 50,
        interests: Annotated[list[UserId] | None, interests_query] = None,
    ) -> FeedOut | JSONResponse:
        model = service.model  # this request's model, whatever reloads happen meanwhile
        try:
            f = await service.feed_async(model, user_id, k, interests)
        except Overloaded as err:
            service.metrics.shed.labels(err.reason).inc()
            return error(
                503, f"overloaded ({err.reason}): retry later", headers={"Retry-After": "1"}
            )
        service.metrics.paths.labels(f.path).inc()
        if f.fallback is not None:
            service.metrics.fallbacks.labels(f.fallback).inc()
        # FeedOut's fields, written directly: pydantic's response validation of 50 items per
        # request costs the event loop more than the JSON itself (the schema stays FeedOut's)
        items = [{"item_id": i.item_id, "score": i.score, "source": i.source} for i in f.items]
        return SafeJSONResponse({
            "user_id": user_id, "k": k, "path": f.path, "fallback": f.fallback,
            "replaced": f.replaced, "model_version": model.version, "items": items,
        })  # fmt: skip

    @app.post(
        "/v1/score",
        response_model=ScoreOut,
        dependencies=[Depends(strict_params())],
        openapi_extra=_json_body_schema(ScoreIn, required=True),
        responses={413: {}, 415: {}},
    )
    def score(raw: Annotated[Any, Depends(json_body)]) -> ScoreOut | JSONResponse:
        body = _validate(ScoreIn, raw)
        model = service.model
        ids = np.array(body.item_ids, np.int64)
        unknown = ids[model.scorer.catalogue.rows(ids) < 0]
        if unknown.size:
            return error(404, f"items not in the catalogue: {unknown[:20].tolist()}")
        try:
            scores = model.scorer.score(body.user_id, ids)
        except StoreError as err:
            return error(503, f"user store {err.reason}: {err}", reason=f"store_{err.reason}")
        return ScoreOut(user_id=body.user_id, model_version=model.version, scores=scores.tolist())

    plain = [Depends(strict_params())]

    @app.api_route("/healthz", methods=["GET", "HEAD"], dependencies=plain)
    async def healthz() -> dict[str, str]:  # on the event loop: never queued behind feeds
        return {"status": "ok"}

    @app.api_route("/readyz", methods=["GET", "HEAD"], dependencies=plain)
    def readyz() -> JSONResponse:
        model = service.model
        try:
            service.store.ping()
            store = "ok"
        except StoreError as err:
            store = f"{err.reason}: {err}"
        body = {"ready": True, "model_version": model.version, "signer": model.signer}
        return SafeJSONResponse(body | {"store": store}, 200)  # no filesystem path: public

    @app.get("/metrics", dependencies=plain)
    def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/admin/reload",
        response_model=ReloadOut,
        dependencies=[Depends(admin), Depends(strict_params())],
        openapi_extra=_json_body_schema(ReloadIn, required=False),
        responses={401: {}, 403: {}, 409: {}, 413: {}, 415: {}, 422: {}},
    )
    async def reload(request: Request) -> ReloadOut | JSONResponse:
        # the token is checked (a dependency) before any byte of the body is parsed
        has_body = (
            request.headers.get("content-length", "0") != "0" or "content-type" in request.headers
        )
        body = _validate(ReloadIn, await json_body(request)) if has_body else None
        return await run_in_threadpool(_reload, body)

    def _reload(body: ReloadIn | None) -> ReloadOut | JSONResponse:
        t0 = time.perf_counter()
        try:
            old, new = service.reload(body.package if body else None)
        except _Busy:
            return error(409, "a reload is already running")
        except Exception as err:
            log.warning("reload refused: %s", err)
            return error(422, f"package refused, still serving the old one: {err}")
        return ReloadOut(
            previous={"version": old.version, "path": old.path},
            serving={"version": new.version, "path": new.path, "created_at": new.created_at},
            seconds=round(time.perf_counter() - t0, 3),
        )

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


def _json_body_schema(model: type[BaseModel], required: bool) -> dict[str, Any]:
    """The OpenAPI request body of a route that parses its JSON itself (:func:`json_body`)."""
    schema = {"application/json": {"schema": model.model_json_schema()}}
    return {"requestBody": {"content": schema, "required": required}}


def _validate(model: type[BaseModel], raw: Any) -> Any:
    """``raw`` as ``model`` (strict); RequestValidationError located under ``body``."""
    try:
        return model.model_validate(raw, strict=True)
    except ValidationError as err:
        errors = [e | {"loc": ("body", *e["loc"])} for e in err.errors()]
        raise RequestValidationError(errors) from None


def jsonable(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic's error list made JSON-safe (NaN and exceptions as text)."""
    out = []
    for e in errors:
        e = {k: v for k, v in e.items() if k in ("type", "loc", "msg", "input")}
        e["loc"] = list(e.get("loc", ()))
        if "input" in e:
            try:
                json.dumps(e["input"], allow_nan=False)
            except (TypeError, ValueError):
                e["input"] = repr(e["input"])
        out.append(e)
    return out
