"""The service's front door: content type, body size and one JSON shape for every refusal.

BentoML 1.4 answers some refusals itself (pydantic 400s, its own pickle 415, the batcher's 503),
with bodies of several shapes; this ASGI middleware refuses what must never reach BentoML's
parsers and rewrites every 4xx (and 503) into ``{"error", "reason"}``, counting each refusal once.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException
from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from serving.images import InputError

logger = logging.getLogger(__name__)

PICKLE = "application/vnd.bentoml+pickle"
_REASON = re.compile(r"[a-z][a-z0-9_]{0,39}")


def error_response(status: int, error: str, reason: str) -> JSONResponse:
    """The JSON body every refusal answers with."""
    return JSONResponse({"error": error, "reason": reason}, status_code=status)


def record_rejection(reason: str) -> None:
    """Count a refusal in this worker's metrics (a no-op before the service instance exists)."""
    try:
        service = bentoml.get_current_service()
    except BentoMLException:
        logger.warning("refused a request (%s) before the service was ready", reason)
        return
    service.metrics.record_rejection(reason if _REASON.fullmatch(reason) else "invalid_input")


@dataclass(frozen=True)
class BodyStep:
    """Work the guard does on a route's body before the endpoint sees it.

    Attributes:
        run: Turns the body into what the endpoint reads; raises :class:`InputError` to refuse.
        cheap: Whether ``run`` is cheap enough for this body to run on the event loop.
    """

    run: Callable[[bytes], bytes]
    cheap: Callable[[bytes], bool]


class _ClientGoneError(Exception):
    pass


class RequestGuard:
    """ASGI middleware for the prediction ``routes``: content type, body size, uniform errors.

    ``routes`` maps each guarded path to the content types (fnmatch patterns) it accepts.

    Refuses pickle and other unsupported content types (415), bodies over ``max_bytes`` (413,
    from ``Content-Length`` or while reading) and empty bodies (400) before BentoML parses
    anything; refuses a request beyond ``max_concurrency`` in flight on this worker (429) and
    ends one that takes longer than ``timeout_s`` (503); rewrites every 4xx (and the adaptive
    batcher's 503) into ``{"error", "reason"}``; and records each refusal once.

    The concurrency limit and timeout are here rather than in BentoML's ``traffic`` settings
    because BentoML's middleware sits outside this one: its 429 and 504 would bypass the
    contract (no ``reason``) and the refusal counter.
    """

    def __init__(
        self,
        app: Any,
        *,
        max_bytes: int,
        routes: dict[str, tuple[str, ...]],
        prepare: dict[str, BodyStep] | None = None,
        max_parallel: int = 1,
        max_concurrency: int = 64,
        timeout_s: float = 30.0,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.routes = routes
        self.prepare = prepare or {}
        self.max_parallel = max_parallel
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self._slots: asyncio.Semaphore | None = None  # made in the server's event loop
        self._in_flight = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path not in self.routes:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            # Starlette's own 405 is plain text, outside the {"error", "reason"} contract.
            wrong = InputError(
                f"{scope['method']} {path} is not allowed: send the input with POST",
                reason="method_not_allowed",
                status=HTTPStatus.METHOD_NOT_ALLOWED,
            )
            await _refuse(wrong, path, scope, receive, send, headers={"Allow": "POST"})
            return
        if self._in_flight >= self.max_concurrency:
            busy = InputError(
                f"{self.max_concurrency} requests already in flight on this worker "
                "(serve.max_concurrency): retry later",
                reason="too_many_requests",
                status=HTTPStatus.TOO_MANY_REQUESTS,
            )
            await _refuse(busy, path, scope, receive, send)
            return
        self._in_flight += 1
        started = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            # A decode already running in a thread finishes on its own after a timeout: its
            # cost stays bounded by serve.max_image_pixels.
            await asyncio.wait_for(self._serve(path, scope, receive, tracking_send), self.timeout_s)
        except TimeoutError:
            if not started:  # past the start, the client gets what was sent, then the close
                late = InputError(
                    f"the request took more than {self.timeout_s:g} s (serve.timeout_s)",
                    reason="timeout",
                    status=HTTPStatus.SERVICE_UNAVAILABLE,
                )
                await _refuse(late, path, scope, receive, send)
        except Exception:
            # A bug of ours: the client gets a 500 it can read at once, not a hung connection.
            if started:
                raise
            logger.exception("error while handling %s", path)
            await error_response(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                "internal error of the service (see its log)",
                "internal_error",
            )(scope, receive, send)
        finally:
            self._in_flight -= 1

    async def _serve(self, path: str, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = Headers(scope=scope)
        try:
            _check_content_type(headers.get("content-type"), self.routes[path])
            body = await self._read_body(receive, headers.get("content-length"))
            if path in self.prepare:
                body = await self._prepare(self.prepare[path], body)
                scope = _with_content_length(scope, len(body))
        except _ClientGoneError:
            return
        except InputError as err:
            await _refuse(err, path, scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), _ErrorRewriter(send))

    async def _prepare(self, step: BodyStep, body: bytes) -> bytes:
        """Run ``step`` (e.g. decoding an image): inline when it is cheap for this body, else in
        a thread, at most ``max_parallel`` at once, so the event loop keeps answering health
        checks and other requests meanwhile and the memory of decodes in flight is bounded."""
        if step.cheap(body):
            return step.run(body)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_parallel)
        async with self._slots:
            # to_thread copies the context: BentoML's current service is visible there.
            return await asyncio.to_thread(step.run, body)

    async def _read_body(self, receive: Any, declared: str | None) -> bytes:
        too_large = InputError(
            f"request body over {self.max_bytes} bytes (serve.max_request_bytes)",
            reason="too_large",
            status=HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        )
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGoneError
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if size == 0:
            raise InputError("the request body is empty", reason="empty_body")
        return b"".join(chunks)


def _check_content_type(header: str | None, accepted: tuple[str, ...]) -> None:
    if header is None:
        return
    media_type = header.split(";")[0].strip().lower()
    if media_type == PICKLE:
        raise InputError(
            f"{PICKLE} is refused: unpickling can run code on the server",
            reason="unsupported_media_type",
            status=HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        )
    if not any(fnmatch.fnmatchcase(media_type, pattern) for pattern in accepted):
        raise InputError(
            f"content type {media_type!r} is not accepted here; send {' or '.join(accepted)}",
            reason="unsupported_media_type",
            status=HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        )


async def _refuse(
    err: InputError,
    path: str,
    scope: dict[str, Any],
    receive: Any,
    send: Any,
    headers: dict[str, str] | None = None,
) -> None:
    """Answer ``err`` as ``{"error", "reason"}``, count it, and log one line (never the body)."""
    record_rejection(err.reason)
    logger.info("refused %s [%s]: %s", path, scope["method"], err.reason)
    response = error_response(err.status, str(err), err.reason)
    response.headers.update(headers or {})
    await response(scope, receive, send)


def _with_content_length(scope: dict[str, Any], length: int) -> dict[str, Any]:
    """``scope`` with its Content-Length header set to ``length`` (the body was replaced)."""
    headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(length).encode())]}


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return await receive()  # only ever http.disconnect from here on
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class _ErrorRewriter:
    """Wraps ``send``: buffers 4xx/503 responses and re-sends them as ``{"error", "reason"}``."""

    def __init__(self, send: Any) -> None:
        self.send = send
        self.start: dict[str, Any] | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and _is_refusal(message["status"]):
            self.start = message
            return
        if message["type"] != "http.response.body" or self.start is None:
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        status = self.start["status"]
        body = b"".join(self.chunks)
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        error, reason = _describe_parsed(status, body, parsed)
        record_rejection(reason)
        payload = json.dumps({"error": error, "reason": reason, **_details(parsed)}).encode()
        kept = [
            (k, v)
            for k, v in self.start.get("headers", [])
            if k.lower() not in (b"content-length", b"content-type")
        ]
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    *kept,
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await self.send({"type": "http.response.body", "body": payload, "more_body": False})


def _is_refusal(status: int) -> bool:
    return 400 <= status < 500 or status == HTTPStatus.SERVICE_UNAVAILABLE


def _describe(status: int, body: bytes) -> tuple[str, str]:
    """Message and reason of an error body from our endpoints, pydantic or BentoML."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    return _describe_parsed(status, body, parsed)


def _describe_parsed(status: int, body: bytes, payload: Any) -> tuple[str, str]:
    """:func:`_describe` of a body already parsed as JSON (``None`` if it is no JSON)."""
    if status == HTTPStatus.SERVICE_UNAVAILABLE:
        return "overloaded: the batch could not be served within serve.max_latency_ms", "overloaded"
    if isinstance(payload, list) and payload:
        payload = payload[0]  # BentoML 1.4.40 wraps a BentoMLException's body in a list
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = f"HTTP {status}"
    fallback = re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")  # e.g. method_not_allowed
    if not isinstance(payload, dict):
        return body.decode(errors="replace") or phrase, fallback
    detail = payload.get("detail")
    if isinstance(detail, list) and detail and all(isinstance(d, dict) for d in detail):
        # A pydantic ValidationError: the first error's type is the reason.
        messages = [_validation_message(d) for d in detail]
        return "; ".join(messages), str(detail[0].get("type", fallback))
    return str(payload.get("error", payload)), str(payload.get("reason", fallback))


def _details(payload: Any) -> dict[str, Any]:
    """What our own refusals add to ``{"error", "reason"}`` (``/feedback``'s per-item
    ``refused`` list), kept; other bodies (``payload`` is the parsed JSON) add nothing."""
    if not isinstance(payload, dict) or not {"error", "reason"} <= payload.keys():
        return {}
    return {k: v for k, v in payload.items() if k not in ("error", "reason")}


def _validation_message(error: dict[str, Any]) -> str:
    loc = [str(part) for part in error.get("loc", ()) if part != "root"]
    message = str(error.get("msg", "invalid input")).removeprefix("Value error, ")
    return f"{'.'.join(loc)}: {message}" if loc else message
