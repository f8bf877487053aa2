"""The service's own ``/`` page: the routes and where the OpenAPI description is, nothing fetched.

BentoML's index page is a Swagger UI that loads Google Tag Manager from the internet, so opening
it phones out (and fails on air-gapped networks). :class:`IndexPage` answers ``/`` with a plain
page listing :data:`ROUTES` and refuses BentoML's Swagger UI assets (``/static_content/*``), which
only that page used. ``/docs.json`` (the OpenAPI description) stays: any OpenAPI viewer, or
``curl``, reads it.
"""

from __future__ import annotations

import html
from http import HTTPStatus
from typing import Any

from starlette.responses import HTMLResponse, JSONResponse

# Every route the service answers, as documented in docs/serving.md.
ROUTES: tuple[tuple[str, str], ...] = (
    ("POST /classify", "one image file as the body: one calibrated prediction"),
    (
        "POST /classify_batch",
        'JSON {"images": N x H x W (x C)} or the array as a .npy file, at the model size: one each',
    ),
    (
        "POST /feedback",
        "delayed true labels of earlier answers, by prediction_id (with RANKCAL_FEEDBACK_KEY)",
    ),
    ("GET /readyz", "200 once the model has run a warm-up batch, 503 before"),
    ("GET /livez, GET /healthz", "200 while the process runs"),
    ("GET /metrics", "Prometheus text: bentoml_service_* and rankcal_*"),
    ("GET /docs.json", "the OpenAPI description of the POST routes"),
    ("GET /schema.json", "BentoML's description of the service"),
    ("GET /", "this page"),
)
SWAGGER_ASSETS = "/static_content/"


def index_html(service_name: str) -> str:
    """The page: a table of :data:`ROUTES`, no script, no stylesheet, no external link."""
    rows = "".join(
        f"<tr><td><code>{html.escape(route)}</code></td><td>{html.escape(what)}</td></tr>"
        for route, what in ROUTES
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(service_name)}</title></head><body>"
        f"<h1>{html.escape(service_name)}: calibrated image classification</h1>"
        f"<table>{rows}</table></body></html>"
    )


class IndexPage:
    """ASGI middleware answering ``GET``/``HEAD /`` itself and refusing ``/static_content/*``."""

    def __init__(self, app: Any, *, service_name: str) -> None:
        self.app = app
        self.page = index_html(service_name)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/" and scope["method"] in ("GET", "HEAD"):
            await HTMLResponse(self.page)(scope, receive, send)
            return
        if scope["type"] == "http" and scope["path"].startswith(SWAGGER_ASSETS):
            response = JSONResponse(
                {"error": f"{scope['path']} is not served", "reason": "not_found"},
                status_code=HTTPStatus.NOT_FOUND,
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
