"""``GET`` and ``POST /v1/interests``: the interests the package's interest model ranks best for
a user who has just signed up, from the sign-up fields alone.

The fields are the interest model's (its user columns and segment columns, e.g. ``country``,
``gender``, ``age``, ``signup_surface``, ``interests`` for the followed ones), checked strictly:
an unknown field, a value of the wrong type (in a query string: an integer field that is not a
plain decimal integer) or ``k`` outside ``[1, 1000]`` is a 422 naming it; a package without an
interest model answers 404. The GET form takes each field once as a query parameter (a list
field repeated: ``?interests=3&interests=7``); the POST form ``{"k": 10, "signup": {...}}``.
"""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations at run time
import re
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from pinrank.serving.interests import MAX_K, InterestRanker

from .batcher import Overloaded
from .http import SafeJSONResponse, error, json_body
from .schemas import json_body_schema, validate

if TYPE_CHECKING:
    from .app import Model, Service

DECIMAL = re.compile(r"-?[0-9]{1,19}")
NUMBER = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


class InterestOut(BaseModel):
    interest_id: int | str
    score: float = Field(description="calibrated P(engages with a pin of it in the first window)")


class InterestsOut(BaseModel):
    k: int
    segment: str = Field(description="the sign-up segment whose candidates were scored")
    known_segment: bool = Field(description="false: unseen in training, the global candidates")
    candidates: int
    replaced: dict[str, str] = Field(description="fields the model read as missing, and why")
    model_version: str
    interests: list[InterestOut]


class InterestsIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    k: int = Field(10, ge=1, le=MAX_K)
    signup: dict[str, Any] = Field(default_factory=dict, description="the sign-up fields")


_SCHEMA = {
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "string": {"type": "string", "maxLength": 256},
    "int_list": {"type": "array", "items": {"type": "integer"}},
    "vector": {"type": "array", "items": {"type": "number"}},
}


def interest_routes(service: "Service") -> APIRouter:
    """The two forms of ``/v1/interests`` (module docstring)."""
    router = APIRouter()
    ranker = service.model.scorer.interest_ranker  # the startup model's fields, for the schema
    kinds = ranker.kinds() if ranker is not None else {}
    parameters = [{"name": "k", "in": "query", "required": False,
                   "schema": {"type": "integer", "minimum": 1, "maximum": MAX_K}}]  # fmt: skip
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": _SCHEMA[kind]}
        for name, kind in kinds.items()
    ]
    missing: dict[int | str, dict[str, Any]] = {
        404: {"description": "no interest model"},
        503: {"description": "overloaded: retry after Retry-After seconds"},
    }

    @router.get(
        "/v1/interests",
        response_model=InterestsOut,
        openapi_extra={"parameters": parameters},
        responses=missing,
    )
    async def interests_get(request: Request) -> InterestsOut | JSONResponse:
        model = service.model
        ranker = model.scorer.interest_ranker
        if ranker is None:
            return error(404, "this package has no interest model (no interests section)")
        k, signup = _from_query(request, ranker)
        return await _answer(service, model, ranker, signup, k)

    @router.post(
        "/v1/interests",
        response_model=InterestsOut,
        openapi_extra=json_body_schema(InterestsIn, required=True),
        responses={**missing, 413: {}, 415: {}},
    )
    async def interests_post(
        raw: Annotated[Any, Depends(json_body)],
    ) -> InterestsOut | JSONResponse:
        body = validate(InterestsIn, raw)
        model = service.model
        ranker = model.scorer.interest_ranker
        if ranker is None:
            return error(404, "this package has no interest model (no interests section)")
        try:
            signup = ranker.check(body.signup)
        except ValueError as err:
            raise HTTPException(422, f"body.{err}") from None
        return await _answer(service, model, ranker, signup, body.k)

    return router


def _from_query(request: Request, ranker: InterestRanker) -> tuple[int, dict[str, Any]]:
    """``k`` and the sign-up fields of a query string, typed by the model's field kinds;
    HTTPException 422 naming the first bad parameter."""
    kinds = ranker.kinds()
    params = request.query_params
    unknown = sorted(set(params) - set(kinds) - {"k"})
    if unknown:
        raise HTTPException(422, f"unknown query parameters {unknown} (allowed: "
                                 f"{['k', *sorted(kinds)]})")  # fmt: skip
    signup: dict[str, Any] = {}
    for name in params:
        values = params.getlist(name)
        kind = "int" if name == "k" else kinds[name]
        if not kind.endswith("_list") and kind != "vector" and len(values) > 1:
            raise HTTPException(422, f"query.{name}: given {len(values)} times; give it once")
        try:
            signup[name] = _typed(values, kind)
        except ValueError:
            raise HTTPException(
                422, f"query.{name}: not {_WORDS[kind]}: {values[0]!r:.40}"
            ) from None
    k = signup.pop("k", 10)
    if not 1 <= k <= MAX_K:
        raise HTTPException(422, f"query.k: must be in [1, {MAX_K}] (got {k})")
    try:
        return k, ranker.check(signup)
    except ValueError as err:
        raise HTTPException(422, f"query.{err}") from None


_WORDS = {"int": "a plain decimal integer", "float": "a number", "string": "a string",
          "int_list": "plain decimal integers", "vector": "numbers"}  # fmt: skip


def _typed(values: list[str], kind: str) -> Any:
    def one(v: str, integer: bool) -> Any:
        if integer and DECIMAL.fullmatch(v):
            return int(v)
        if not integer and NUMBER.fullmatch(v):
            return float(v)
        raise ValueError(v)

    if kind == "string":
        return values[0]
    if kind in ("int", "float"):
        return one(values[0], kind == "int")
    return [one(v, kind == "int_list") for v in values]


async def _answer(
    service: "Service", model: "Model", ranker: InterestRanker, signup: dict[str, Any], k: int
) -> JSONResponse:
    """The answer, scored under the service's admission control with the feeds
    (:meth:`Service.interests_async`; 503 with ``Retry-After`` when shed)."""
    try:
        got = await service.interests_async(model, signup, k)
    except Overloaded as err:
        service.metrics.shed.labels(err.reason).inc()
        return error(503, f"overloaded ({err.reason}): retry later", headers={"Retry-After": "1"})
    codec = model.scorer.ids
    originals = codec.decode(codec.interests, got.ids)
    return SafeJSONResponse({
        "k": k, "segment": got.segment, "known_segment": got.known_segment,
        "candidates": got.candidates, "replaced": got.problems,
        "model_version": model.version,
        "interests": [{"interest_id": o, "score": float(s)}
                      for o, s in zip(originals, got.scores, strict=True)],
    })  # fmt: skip
