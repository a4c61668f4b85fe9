"""The service's HTTP layer below the routes: strict parsing of what a request carries, JSON
errors that always encode, and the ASGI middleware that bounds bodies and measures every
response.

- :class:`SafeJSONResponse` writes JSON with every non-ASCII character escaped, so an error that
  echoes input (a lone surrogate ``"\\ud800"`` included) always encodes; NaN is never written.
- :func:`strict_params` refuses query parameters a route does not take, ids and counts that are
  not plain decimal integers (``7.0``, ``1_000``, ``+5``, `` 5``, ``0x10``) and repeated scalar
  query parameters (``?k=600&k=2``) before FastAPI's lenient conversion sees them; it is async,
  so it runs on the event loop instead of a threadpool hop.
- :func:`json_body` reads a JSON body itself: 415 for a missing or other Content-Type, 422 naming
  the problem for bytes that are not UTF-8 or not JSON (with the position), so the admin
  endpoint can check its token before it parses anything.
- :class:`Measure` (outermost) counts every response by route template and status and observes
  its latency, 413s, 500s and 405s included; :class:`BodyLimit` answers 413 before the app reads
  an oversized body.

What comes from the HTTP server (uvicorn and h11) rather than the API: a request that is not
HTTP, headers over the server's limits, or a connection that times out get the server's own
plain-text answer (or none: the connection is closed); everything the API says is JSON of the
shape ``{"error": {"status": ..., "message": ...}}``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.routing import Match

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]
DECIMAL = re.compile(r"(0|[1-9][0-9]{0,18})")  # no sign, no spaces, no separators, <= 19 digits


class SafeJSONResponse(JSONResponse):
    """JSON with every non-ASCII character written as a ``\\u`` escape, so any string, even a
    lone surrogate, encodes."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, default=repr).encode()


def error(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> SafeJSONResponse:
    return SafeJSONResponse(
        {"error": {"status": status, "message": message, **extra}}, status, headers=headers
    )


def strict_params(
    path: Iterable[str] = (),
    ints: Iterable[str] = (),
    lists: Iterable[str] = (),
    strings: Iterable[str] = (),
) -> Callable[[Request], Awaitable[None]]:
    """A dependency that refuses query parameters other than ``ints`` and ``lists``, path
    parameters ``path`` and query parameters ``ints`` / ``lists`` that are not plain decimal
    integers (but the lists of ``strings``: ids as the data gave them), and any query parameter
    not in ``lists`` given more than once."""
    path, ints, lists, strings = tuple(path), tuple(ints), set(lists), set(strings)
    allowed = [*ints, *sorted(lists)]

    async def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - set(allowed))
        if unknown:
            raise HTTPException(422, f"unknown query parameters {unknown} (allowed: {allowed})")
        for name in path:
            raw = request.path_params.get(name)
            if raw is not None and not DECIMAL.fullmatch(str(raw)):
                raise HTTPException(
                    422, f"path.{name}: not a plain decimal integer: {str(raw)!r:.40}"
                )
        for name in request.query_params:
            values = request.query_params.getlist(name)
            if name not in lists and len(values) > 1:
                raise HTTPException(422, f"query.{name}: given {len(values)} times; give it once")
            if name in ints or (name in lists and name not in strings):
                bad = [v for v in values if not DECIMAL.fullmatch(v)]
                if bad:
                    raise HTTPException(
                        422, f"query.{name}: not a plain decimal integer: {bad[0]!r:.40}"
                    )

    return check


async def json_body(request: Request) -> Any:
    """The request's JSON body; HTTPException 415 or 422 naming what is wrong."""
    ctype = request.headers.get("content-type")
    media = (ctype or "").split(";")[0].strip().lower()
    if media != "application/json":
        shown = f"{ctype!r:.60}" if ctype else "none"
        raise HTTPException(415, f"Content-Type must be application/json (got {shown})")
    data = await request.body()
    if not data.strip():
        raise HTTPException(422, "body: Field required (the body is empty)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise HTTPException(422, f"body: not UTF-8 (byte {err.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise HTTPException(
            422, f"body: JSON decode error: {err.msg} (line {err.lineno}, column {err.colno})"
        ) from None
    except RecursionError:
        raise HTTPException(422, "body: JSON nested too deeply") from None


def route_template(routes: Iterable[Any], scope: Scope) -> str:
    """The route template a request matches (a full match, else a path match such as a 405's),
    else ``other``: bounded label values."""
    partial = None
    for route in _flat(routes):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", "other"))
        if match == Match.PARTIAL and partial is None:
            partial = str(getattr(route, "path", "other"))
    return partial or "other"


def _flat(routes: Iterable[Any]) -> Iterable[Any]:
    """The routes, with those of included routers in place (FastAPI keeps an included router
    as one route holding ``original_router``; the service includes its routers unprefixed, so
    their templates are the full paths)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _flat(inner.routes)
        else:
            yield route


class Measure:
    """Count every response by route and status and observe its latency, whatever produced it
    (the routes, the body limit, the error handlers) and whether it raised (counted as 500)."""

    def __init__(
        self,
        app: ASGIApp,
        routes: Callable[[], Iterable[Any]],
        observe: Callable[[str, str, float], None],
    ) -> None:
        self.app, self.routes, self.observe = app, routes, observe

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), "500"

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.observe(route_template(self.routes(), scope), status, time.perf_counter() - t0)


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, declared or streamed, before the app
    parses them, and bodies not received within ``timeout_s`` with 408; the body read here is
    replayed to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 10.0) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        too_large = error(413, f"request body over {self.max_bytes} bytes")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await too_large(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        deadline = time.monotonic() + self.timeout_s
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
            except TimeoutError:
                late = error(408, f"request body not received within {self.timeout_s:g} s")
                late.headers["Connection"] = "close"
                await late(scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, sent = b"".join(chunks), False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def timed_h11(header_timeout_s: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose request line and headers are not
    complete ``header_timeout_s`` after it opened or after its last response: half-sent headers
    cannot hold a connection (uvicorn's keep-alive timeout covers only idle connections)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            timer = getattr(self, "_header_timer", None)
            if timer is not None:
                timer.cancel()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            timer = getattr(self, "_header_timer", None)
            if timer is not None:
                timer.cancel()
            self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _header_timeout(self) -> None:
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return  # closed, or a request is being read or answered
            self.logger.info("closing a connection whose request headers did not arrive in time")
            self.transport.close()

    return TimedH11Protocol
