"""Client-controlled request text where BentoML's outer middlewares use it: the request metrics'
``endpoint`` label and the access log.

BentoML 1.4 places two middlewares outside any a service adds, so the service's guard cannot
vet what they read:

- its traffic metrics label every request with the raw path, and keep each series until the
  process ends: 8,000 GETs to distinct unknown paths grew ``/metrics`` from 345 KB to 29.6 MB
  and a scrape to 10-12 s, past Prometheus' default timeout;
- its access log writes the percent-decoded path verbatim (``%0A`` forges a log line, a
  100 KB path makes a 100 KB line) and decodes the request's ``Content-Type`` as UTF-8, so a
  byte that is no UTF-8 raises while the answer is sent: headers go out, no body, a traceback.

:func:`install` replaces both classes in BentoML's modules, where its app factory looks them up
when a worker builds its app, with subclasses that hand their parent a copy of the request's
scope holding a bounded path (the label: the route's path, or :data:`OTHER`; the log line: an
escaped and truncated path) and a decodable content type, and that hand the application the
scope the client sent. What the service answers is unchanged; only what is counted and logged.
The classes' locations are private to BentoML: ``tests/serving/test_outer_middleware.py``
fails if an upgrade moves them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# The endpoint label of every path that is no route of the service (not a path: no slash).
OTHER = "other"
# Routes BentoML itself serves besides the service's APIs (the metrics middleware knows the
# APIs' own, server_context.service_routes), and the folders it serves files from.
FIXED_ROUTES = frozenset(
    {"/", "/docs.json", "/schema.json", "/metrics", "/livez", "/healthz", "/readyz"}
)
FILE_PREFIXES = ("/static_content/", "/assets/")
# Longest path and content type the access log writes, in characters after escaping.
MAX_LOGGED_CHARS = 200
_SCOPE = "rankcal.client_scope"


def endpoint_label(path: str, routes: frozenset[str] | set[str]) -> str:
    """The metrics label of a request for ``path``: the route, a file folder, or :data:`OTHER`.

    Args:
        path: The request's path, as the client sent it (percent-decoded).
        routes: The service's API routes.
    """
    if path in routes or path in FIXED_ROUTES:
        return path
    for prefix in FILE_PREFIXES:
        if path.startswith(prefix):
            return prefix
    return OTHER


def loggable(text: str) -> str:
    """``text`` with every character outside printable ASCII escaped (``\\n``, ``\\x00``,
    ``\\u00e9``), cut to :data:`MAX_LOGGED_CHARS` with the original length said."""
    escaped = text.encode("unicode_escape").decode("ascii")
    if len(escaped) <= MAX_LOGGED_CHARS:
        return escaped
    return f"{escaped[:MAX_LOGGED_CHARS]}...({len(text)} chars)"


def _loggable_header(value: bytes) -> bytes:
    return loggable(value.decode("utf-8", "backslashreplace")).encode("ascii")


class _ClientScope:
    """The application under an outer middleware, handed the scope the client sent."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.app(scope.get(_SCOPE, scope), receive, send)


def _shown(scope: dict[str, Any], path: str, **headers: bytes) -> dict[str, Any]:
    """A copy of ``scope`` with ``path`` and the named headers replaced, for the middleware."""
    replaced = {name.replace("_", "-").encode(): value for name, value in headers.items()}
    return {
        **scope,
        "path": path,
        "headers": [(k, replaced.get(k, v)) for k, v in scope.get("headers", [])],
        _SCOPE: scope.get(_SCOPE, scope),
    }


def _bounded(parent: type, show: Callable[[dict[str, Any]], dict[str, Any]], doc: str) -> type:
    """A subclass of BentoML's middleware ``parent`` that sees ``show(scope)`` of each HTTP
    request while the application it wraps sees the scope the client sent."""

    class Bounded(parent):  # type: ignore[misc, valid-type]
        bounded = True

        def __init__(self, app: Any, **options: Any) -> None:
            super().__init__(_ClientScope(app), **options)

        async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
            await super().__call__(show(scope) if scope["type"] == "http" else scope, receive, send)

    Bounded.__name__ = Bounded.__qualname__ = f"Bounded{parent.__name__}"
    Bounded.__doc__ = doc
    return Bounded


def install() -> None:
    """Replace BentoML's traffic-metrics and access-log middlewares with the bounded ones.

    Idempotent; call it before BentoML builds the app (at the service module's import).
    """
    from bentoml._internal.context import server_context
    from bentoml._internal.server.http import access, instruments

    if getattr(instruments.RunnerTrafficMetricsMiddleware, "bounded", False):
        return

    def labelled(scope: dict[str, Any]) -> dict[str, Any]:
        routes = frozenset(server_context.service_routes)
        return _shown(scope, endpoint_label(scope["path"], routes))

    def logged(scope: dict[str, Any]) -> dict[str, Any]:
        content_type = dict(scope.get("headers", [])).get(b"content-type", b"")
        return _shown(scope, loggable(scope["path"]), content_type=_loggable_header(content_type))

    instruments.RunnerTrafficMetricsMiddleware = _bounded(  # type: ignore[misc]
        instruments.RunnerTrafficMetricsMiddleware,
        labelled,
        "BentoML's request metrics, labelled by route: unknown paths share one label.",
    )
    access.AccessLogMiddleware = _bounded(  # type: ignore[misc]
        access.AccessLogMiddleware,
        logged,
        "BentoML's access log, with the client's path and content type escaped and cut.",
    )
