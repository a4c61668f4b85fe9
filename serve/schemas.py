"""The service's request and response bodies (their OpenAPI schema) and how validation errors
are reported: one line per problem, located (``query.k``, ``body.item_ids.0``), JSON-safe."""

# no `from __future__ import annotations`: pydantic reads the annotations at run time
import json
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pinrank.serving.ids import MAX_ID_LENGTH

INT64_MAX = 2**63 - 1


UserId = Annotated[int, Field(ge=0, le=INT64_MAX)]
# an id as the data gave it, where the package maps string ids (pinrank.serving.ids)
OriginalId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]


class FeedItemOut(BaseModel):
    item_id: int | str
    score: float | None = Field(
        description="the calibrated probability of engagement; null where no model scored it"
    )
    popularity: int | None = Field(
        description="engaged train events, for the popular pins of a fallback feed; else null"
    )
    source: str


class FeedOut(BaseModel):
    user_id: int | str
    k: int
    path: str = Field(description="how the feed was made (pinrank.serving.scorer.PATHS)")
    fallback: str | None = Field(description="why it is not personalized; null when it is")
    replaced: dict[str, str] = Field(description="user columns replaced by their defaults")
    model_version: str
    items: list[FeedItemOut]


class ScoreOut(BaseModel):
    user_id: int | str
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


def json_body_schema(model: type[BaseModel], required: bool) -> dict[str, Any]:
    """The OpenAPI request body of a route that parses its JSON itself (:func:`json_body`)."""
    schema = {"application/json": {"schema": model.model_json_schema()}}
    return {"requestBody": {"content": schema, "required": required}}


def validate(model: type[BaseModel], raw: Any) -> Any:
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
