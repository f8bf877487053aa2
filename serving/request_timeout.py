"""BentoML's request timeout, without the timer it leaves behind for every request.

BentoML 1.4's ``TimeoutMiddleware`` (``bentoml/_internal/server/http/traffic.py``) starts a
``loop.call_later(timeout, ...)`` timer per request and never cancels it. Each timer holds the
request's context (its OpenTelemetry span, futures, the ASGI callables) until it fires, ``timeout``
seconds later: at 700 requests/s and our 40 s, about 28,000 requests' worth of objects at any
time. That was the service's memory growth over the first tens of thousands of requests
(+110 MB) and, through Python's full garbage collections over those objects (70 to 160 ms each,
collecting nothing), its p99 latency tail under load (``docs/benchmarks.md``). The timeout
cannot be switched off (BentoML's configuration requires a positive ``traffic.timeout``), so
:func:`install` replaces the class BentoML builds its middleware from with
:class:`CancellingTimeoutMiddleware`: the same behaviour, with the timer cancelled when the
request ends.
"""

from __future__ import annotations

import asyncio
from typing import Any

from serving.guard import error_response, record_rejection


class CancellingTimeoutMiddleware:
    """ASGI middleware: a 503 if the response has not started within ``timeout`` seconds.

    As BentoML's ``TimeoutMiddleware``, with three differences: the timer is cancelled as soon
    as the request is done; a request whose handler fails before answering ends at once (with
    the handler's exception) instead of waiting for the timer; and its answer is the service's
    refusal, ``{"error", "reason": "timeout"}`` with 503 and counted, not a 504 without a reason
    (the guard's own timeout, ``serve.timeout_s``, comes 10 s earlier; this one fires only when
    the event loop was held past both).
    """

    def __init__(self, app: Any, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()

        def release(_: Any = None) -> None:
            if not started.done():
                started.set_result(None)

        async def tracking_send(message: dict[str, Any]) -> None:
            release()
            await send(message)

        timer = loop.call_later(self.timeout, _expire, started)
        task = asyncio.ensure_future(self.app(scope, receive, tracking_send))
        task.add_done_callback(release)
        try:
            try:
                await started
            except TimeoutError:
                if task.cancel():
                    message = f"no answer within {self.timeout:g} s"
                    record_rejection("timeout")
                    await error_response(503, message, "timeout")(scope, receive, send)
                return
            except asyncio.CancelledError:  # the server dropped the request: so does its handler
                task.cancel()
                raise
            await task
        finally:
            timer.cancel()


def _expire(started: asyncio.Future[None]) -> None:
    if not started.done():
        started.set_exception(TimeoutError())


def install() -> None:
    """Make BentoML build its timeout middleware from :class:`CancellingTimeoutMiddleware`.

    Call before BentoML builds the app (importing the service module is early enough): BentoML
    imports the class from its module when it assembles the middleware stack.
    """
    from bentoml._internal.server.http import traffic

    if traffic.TimeoutMiddleware is not CancellingTimeoutMiddleware:
        traffic._rankcal_original = traffic.TimeoutMiddleware  # type: ignore[attr-defined]
        traffic.TimeoutMiddleware = CancellingTimeoutMiddleware  # type: ignore[misc,assignment]
