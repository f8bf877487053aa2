"""BentoML's request timeout without a timer per finished request (serving/request_timeout.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from bentoml._internal.server.http import traffic

from serving import request_timeout
from serving.request_timeout import CancellingTimeoutMiddleware

SCOPE = {"type": "http", "method": "GET", "path": "/", "headers": []}


async def answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def call(app: Any, scope: dict[str, Any] = SCOPE) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def timers_left(middleware: type, requests: int) -> int:
    """Timers still scheduled on the loop after ``requests`` answered requests."""

    async def run() -> int:
        app = middleware(answer, timeout=60.0)
        for _ in range(requests):
            sent = await call(app)
            assert sent[0]["status"] == 200
        loop = asyncio.get_running_loop()
        return sum(not handle.cancelled() for handle in loop._scheduled)  # type: ignore[attr-defined]

    return asyncio.run(run())


def test_bentoml_own_middleware_leaves_a_timer_per_request() -> None:
    """What the replacement is for: if BentoML fixes this, this test says so."""
    request_timeout.install()
    assert timers_left(traffic._rankcal_original, 200) == 200


def test_no_timer_outlives_its_request() -> None:
    assert timers_left(CancellingTimeoutMiddleware, 200) == 0


def test_a_slow_request_gets_the_services_503_with_a_reason() -> None:
    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await asyncio.sleep(5)

    sent = asyncio.run(call(CancellingTimeoutMiddleware(slow, timeout=0.05)))
    assert sent[0]["status"] == 503
    assert json.loads(sent[1]["body"]) == {"error": "no answer within 0.05 s", "reason": "timeout"}


def test_a_failing_handler_fails_at_once_not_after_the_timeout() -> None:
    async def broken(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    async def run() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(RuntimeError, match="boom"):
            await call(CancellingTimeoutMiddleware(broken, timeout=30.0))
        return loop.time() - start

    assert asyncio.run(run()) < 5


def test_lifespan_passes_through() -> None:
    sent = asyncio.run(call(CancellingTimeoutMiddleware(answer, timeout=1.0), {"type": "lifespan"}))
    assert sent[0]["status"] == 200


def test_install_replaces_the_class_bentoml_builds_its_stack_from() -> None:
    from bentoml._internal.server.base_app import BaseAppFactory

    class App(BaseAppFactory):
        name = "probe"

    request_timeout.install()
    app = App(timeout=10.0)
    assert [m.cls for m in app.middlewares] == [CancellingTimeoutMiddleware]
