"""The service's routes, in three routers over one :class:`~serve.app.Service`: feeds
and pair scores (``/v1``), operations (health, readiness, metrics) and admin (reload, behind a
bearer token). Route parameters take their bounds from the service's settings."""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations at run time,
# and they close over the settings
import hmac
import logging
import time
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from pinrank.serving.ids import MAX_ID_LENGTH
from pinrank.serving.store import StoreError

from .batcher import Overloaded
from .http import SafeJSONResponse, error, json_body, strict_params
from .schemas import (
    INT64_MAX,
    FeedOut,
    OriginalId,
    ReloadIn,
    ReloadOut,
    ScoreOut,
    UserId,
    json_body_schema,
    validate,
)

if TYPE_CHECKING:
    from .app import Service

log = logging.getLogger("pinrank.serve")


class Busy(Exception):
    """A reload is already running."""


def feed_routes(service: "Service") -> APIRouter:
    """``GET /v1/feed/{user_id}`` and ``POST /v1/score``."""
    router = APIRouter()
    # ids as the data gave them: strings where the startup package maps them (a reload must
    # keep the same kinds: Service.reload), else integers, strictly checked
    mapped = service.id_kinds
    user_type = OriginalId if "user_id" in mapped else UserId
    item_type = OriginalId if "item_id" in mapped else UserId
    interest_type = OriginalId if "interests" in mapped else UserId
    user_path = (
        Annotated[str, PathParam(min_length=1, max_length=MAX_ID_LENGTH)]
        if "user_id" in mapped
        else Annotated[int, PathParam(ge=0, le=INT64_MAX)]
    )

    class ScoreIn(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        user_id: user_type  # type: ignore[valid-type]
        item_ids: list[item_type] = Field(  # type: ignore[valid-type]
            min_length=1, max_length=service.settings.max_items
        )

    feed_query = [
        Depends(
            strict_params(
                path=[] if "user_id" in mapped else ["user_id"],
                ints=["k"],
                lists=["interests"],
                strings=["interests"] if "interests" in mapped else [],
            )
        ),
    ]
    interests_query = Query(
        max_length=service.settings.max_interests, description="repeat: ?interests=3&interests=7"
    )

    @router.get(
        "/v1/feed/{user_id}",
        response_model=FeedOut,
        dependencies=feed_query,
        responses={503: {"description": "overloaded: retry after Retry-After seconds"}},
    )
    async def feed(
        user_id: user_path,  # type: ignore[valid-type]
        k: Annotated[int, Query(ge=1, le=service.settings.max_k)] = 50,
        interests: Annotated[list[interest_type] | None, interests_query] = None,  # type: ignore[valid-type]
    ) -> FeedOut | JSONResponse:
        model = service.model  # this request's model, whatever reloads happen meanwhile
        ids = model.scorer.ids
        uid = ids.encode_one("user_id", user_id)
        wanted = None if interests is None else ids.encode(ids.interests, interests).tolist()
        try:
            f = await service.feed_async(model, uid, k, wanted)
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
        originals = ids.decode("item_id", f.item_ids)
        items = [
            {"item_id": o, "score": i.score, "popularity": i.popularity, "source": i.source}
            for o, i in zip(originals, f.items, strict=True)
        ]
        return SafeJSONResponse({
            "user_id": user_id, "k": k, "path": f.path, "fallback": f.fallback,
            "replaced": f.replaced, "model_version": model.version, "items": items,
        })  # fmt: skip

    @router.post(
        "/v1/score",
        response_model=ScoreOut,
        dependencies=[Depends(strict_params())],
        openapi_extra=json_body_schema(ScoreIn, required=True),
        responses={413: {}, 415: {}},
    )
    def score(raw: Annotated[Any, Depends(json_body)]) -> ScoreOut | JSONResponse:
        body = validate(ScoreIn, raw)
        model = service.model
        codec = model.scorer.ids
        ids = codec.encode("item_id", body.item_ids)
        missing = model.scorer.catalogue.rows(ids) < 0
        unknown = [o for o, m in zip(body.item_ids, missing, strict=True) if m]
        if unknown:
            return error(404, f"items not in the catalogue: {unknown[:20]}")
        try:
            scores = model.scorer.score(codec.encode_one("user_id", body.user_id), ids)
        except StoreError as err:
            return error(503, f"user store {err.reason}: {err}", reason=f"store_{err.reason}")
        return ScoreOut(user_id=body.user_id, model_version=model.version, scores=scores.tolist())

    return router


def ops_routes(service: "Service") -> APIRouter:
    """``/healthz``, ``/readyz`` (GET and HEAD) and ``/metrics``."""
    router = APIRouter()

    plain = [Depends(strict_params())]

    @router.api_route("/healthz", methods=["GET", "HEAD"], dependencies=plain)
    async def healthz() -> dict[str, str]:  # on the event loop: never queued behind feeds
        return {"status": "ok"}

    @router.api_route("/readyz", methods=["GET", "HEAD"], dependencies=plain)
    def readyz() -> JSONResponse:
        model = service.model
        try:
            service.store.ping()
            store = "ok"
        except StoreError as err:
            store = f"{err.reason}: {err}"
        body = {"ready": True, "model_version": model.version, "signer": model.signer}
        return SafeJSONResponse(body | {"store": store}, 200)  # no filesystem path: public

    @router.get("/metrics", dependencies=plain)
    def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def admin_routes(service: "Service") -> APIRouter:
    """``POST /admin/reload``, behind ``Authorization: Bearer <admin token>``."""
    router = APIRouter()

    async def admin(request: Request) -> None:
        if service.settings.admin_token is None:
            raise HTTPException(403, "admin endpoints are disabled: no admin token configured")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(
                401, "admin endpoints need 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip
        if not hmac.compare_digest(token.encode(), service.settings.admin_token.encode()):
            raise HTTPException(403, "wrong admin token")

    @router.post(
        "/admin/reload",
        response_model=ReloadOut,
        dependencies=[Depends(admin), Depends(strict_params())],
        openapi_extra=json_body_schema(ReloadIn, required=False),
        responses={401: {}, 403: {}, 409: {}, 413: {}, 415: {}, 422: {}},
    )
    async def reload(request: Request) -> ReloadOut | JSONResponse:
        # the token is checked (a dependency) before any byte of the body is parsed
        has_body = (
            request.headers.get("content-length", "0") != "0" or "content-type" in request.headers
        )
        body = validate(ReloadIn, await json_body(request)) if has_body else None
        return await run_in_threadpool(_reload, body)

    def _reload(body: ReloadIn | None) -> ReloadOut | JSONResponse:
        t0 = time.perf_counter()
        try:
            old, new = service.reload(body.package if body else None)
        except Busy:
            return error(409, "a reload is already running")
        except Exception as err:
            log.warning("reload refused: %s", err)
            return error(422, f"package refused, still serving the old one: {err}")
        return ReloadOut(
            previous={"version": old.version, "path": old.path},
            serving={"version": new.version, "path": new.path, "created_at": new.created_at},
            seconds=round(time.perf_counter() - t0, 3),
        )

    return router
