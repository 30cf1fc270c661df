"""The chat routes served as plain ASGI: the same endpoint functions, without FastAPI's per-request
machinery around them.

Under load the edge spent about half of its CPU per chat request in Starlette's and FastAPI's
middleware stack, routing and dependency solving (py-spy, bench/README.md), for two routes whose
dependencies are always the same three checks. ``PlainRoute`` reads and bounds the body, parses
it as FastAPI would, runs the route's checks and its endpoint directly, and answers errors with
the app's own exception handlers, so a client sees the same statuses and bodies either way. The
FastAPI routes stay registered: they document the API (OpenAPI) and serve any other method.
"""

from __future__ import annotations

import email.message
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from tenantry_auth.limits import too_large

log = logging.getLogger("tenantry.auth.plain")

_tracer = trace.get_tracer("tenantry.auth")

#: A route's dependencies, solved by hand: the request -> the endpoint's remaining arguments.
Authorize = Callable[[Request], Awaitable[tuple[Any, ...]]]
#: The endpoint as FastAPI would call it: (body, request, *what ``Authorize`` returned).
Endpoint = Callable[..., Awaitable[Response]]


class BodyTooLarge(Exception):
    """The request body is over the route's limit (answered 413, as ``BodySizeLimit`` does)."""


class PlainRoute:
    """One POST route with a JSON body, served without FastAPI's per-request machinery."""

    def __init__(
        self,
        *,
        path: str,
        body_model: type[BaseModel],
        authorize: Authorize,
        endpoint: Endpoint,
        body_limit: int,
    ) -> None:
        self.path = path
        self.body_model = body_model
        self.authorize = authorize
        self.endpoint = endpoint
        self.body_limit = body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app: EdgeApp = scope["app"]
        request = Request(scope, receive)
        context = propagate.extract(request.headers)
        name = f"POST {self.path}"
        with _tracer.start_as_current_span(name, context=context, kind=SpanKind.SERVER) as span:
            try:
                response = await self._respond(request)
            except Exception as exc:
                response = await app.handle_plain_error(request, exc)
            if span.is_recording():
                span.set_attributes(
                    {
                        "http.request.method": "POST",
                        "http.route": self.path,
                        "http.response.status_code": response.status_code,
                    }
                )
            await response(scope, receive, send)

    async def _respond(self, request: Request) -> Response:
        # FastAPI's order: the body is read and decoded, the dependencies run (401, 403), and
        # only then is the body validated (422).
        raw = await _read_body(request, self.body_limit)
        body = _decode(raw, request.headers.get("content-type"))
        authorized = await self.authorize(request)
        if body is None:
            missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
            raise RequestValidationError([missing], body=None)
        try:
            # from_attributes: the same errors as FastAPI's body validation (which sets it).
            parsed = self.body_model.model_validate(body, from_attributes=True)
        except ValidationError as exc:
            errors = [
                {**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)
            ]
            raise RequestValidationError(errors, body=body) from None
        return await self.endpoint(parsed, request, *authorized)


class EdgeApp(FastAPI):
    """The edge's FastAPI app, with its hot routes answered before the middleware stack.

    ``plain_routes`` maps a path to the ``PlainRoute`` that serves its POSTs; the app's
    lifespan, every other route and every other method go through FastAPI as usual.
    """

    plain_routes: Mapping[str, ASGIApp]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plain_routes = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = self.plain_routes.get(scope["path"])
            if route is not None:
                scope["app"] = self
                await route(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def handle_plain_error(self, request: Request, exc: Exception) -> Response:
        """The app's exception handler for ``exc`` (by its class's MRO); 500 if none applies."""
        if isinstance(exc, BodyTooLarge):
            exc = HTTPException(413, detail=str(exc))  # answered as any other 413
        for cls in type(exc).__mro__:
            handler = self.exception_handlers.get(cls)
            if handler is not None:
                response = handler(request, exc)
                return await response if inspect.isawaitable(response) else response
        # As Starlette's ServerErrorMiddleware answers (it logs through uvicorn; this logs here).
        log.exception("unhandled error", extra={"path": request.url.path})
        return PlainTextResponse("Internal Server Error", status_code=500)


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused as soon as it passes ``limit`` bytes (or declares it will)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(too_large(limit))
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise BodyTooLarge(too_large(limit))
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(raw: bytes, content_type: str | None) -> Any:
    """The body as FastAPI reads it: JSON for a JSON content type, else the bytes themselves."""
    if not raw:
        return None
    if not content_type:
        return raw
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    if message.get_content_maintype() != "application" or not (
        subtype == "json" or subtype.endswith("+json")
    ):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", exc.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
            ],
            body=exc.doc,
        ) from exc
    except UnicodeDecodeError:
        raise HTTPException(400, detail="There was an error parsing the body") from None
