"""The HTTP server under the service: uvicorn with its C event loop and HTTP parser.

BentoML's worker builds ``uvicorn.Config`` with the default ``loop="auto"`` and ``http="auto"``,
which pick uvloop and httptools only when they are installed (they are the project's
dependencies for the rates in docs/benchmarks.md); a plain install would fall back to asyncio's
loop and the pure-Python h11 parser without a word.
"""

from __future__ import annotations

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _app(scope, receive, send):  # pragma: no cover - never called
    raise AssertionError


def test_uvicorn_auto_picks_httptools() -> None:
    config = uvicorn.Config(app=_app)
    config.load()
    assert config.http_protocol_class is HttpToolsProtocol


def test_uvicorn_auto_picks_uvloop() -> None:
    import uvloop

    factory = uvicorn.Config(app=_app).get_loop_factory()
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
