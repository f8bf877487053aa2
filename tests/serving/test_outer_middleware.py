"""serving/outer_middleware.py: clients cannot grow /metrics, forge log lines or break answers
through the request text BentoML's outer middlewares read."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from serving.outer_middleware import MAX_LOGGED_CHARS, OTHER, endpoint_label, loggable
from tests.serving.conftest import ExportedModel, png_bytes, quadrant_images, serving


def test_labels_are_routes_file_folders_or_other() -> None:
    routes = {"/classify", "/classify_batch"}
    assert endpoint_label("/classify", routes) == "/classify"
    assert endpoint_label("/livez", routes) == "/livez"
    assert endpoint_label("/static_content/x.css", routes) == "/static_content/"
    assert endpoint_label("/classify/", routes) == OTHER
    assert endpoint_label("/wp-admin/x%0A", routes) == OTHER


def test_logged_text_is_escaped_and_cut() -> None:
    assert loggable("/classify") == "/classify"
    assert loggable("/a\nINFO forged") == "/a\\nINFO forged"
    assert loggable("/\x00\u00e9") == "/\\x00\\xe9"
    long = loggable("/" + "a" * 100_000)
    assert long == "/" + "a" * (MAX_LOGGED_CHARS - 1) + "...(100001 chars)"


def test_bentoml_still_builds_its_app_from_the_classes_we_replace() -> None:
    """The app factory imports both classes from their modules when a worker builds its app;
    an upgrade that moves them must fail here, not leave /metrics unbounded in production."""
    from _bentoml_impl.server import app
    from bentoml._internal.server.http import access, instruments

    from serving import outer_middleware

    outer_middleware.install()
    outer_middleware.install()  # idempotent: one subclass, not a subclass of a subclass
    source = Path(app.__file__).read_text()
    assert "from bentoml._internal.server.http.instruments import (" in source
    assert "from bentoml._internal.server.http.access import AccessLogMiddleware" in source
    for cls in (instruments.RunnerTrafficMetricsMiddleware, access.AccessLogMiddleware):
        assert cls.bounded and not getattr(cls.__mro__[1], "bounded", False)


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_distinct_paths_forged_lines_and_undecodable_types_change_nothing(
    exported_model: ExportedModel, tmp_path: Path
) -> None:
    with serving(exported_model.path, tmp_path, workers=1) as service:
        port = int(service.url.rsplit(":", 1)[1])
        with httpx.Client(base_url=service.url, timeout=20) as client:
            client.get("/no-such-path")
            before = client.get("/metrics").text
            # Thousands of distinct unknown paths: /metrics keeps its size (one label, counts).
            for i in range(3000):
                assert client.get(f"/probe/{i}").status_code == 404
            after = client.get("/metrics").text
            assert f'endpoint="{OTHER}"' in after and "/probe/" not in after
            # Routes keep their own label.
            image = png_bytes(quadrant_images(1)[0][0])
            sent = client.post("/classify", content=image, headers={"Content-Type": "image/png"})
            assert sent.status_code == 200
            assert 'endpoint="/classify"' in client.get("/metrics").text
            assert abs(len(after) - len(before)) < 200, (len(before), len(after))
            # A forged line and a 100 KB path: one escaped, bounded line each.
            assert client.get("/x%0A2026-12-08T00:00:00 [INFO] forged").status_code == 404
        long_path = b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        assert raw_request(port, long_path).startswith(b"HTTP/1.1 4")
        # A Content-Type byte that is no UTF-8: a whole answer, with its body.
        body = png_bytes(quadrant_images(1)[0][0])
        for content_type in (b"\xffimage/png", b"image/png\xff"):
            head = b"POST /classify HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            head += b"Content-Type: " + content_type + b"\r\n"
            head += b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
            answer = raw_request(port, head + body)
            _, _, payload = answer.partition(b"\r\n\r\n")
            assert payload.startswith(b"{") and payload.endswith(b"}"), answer[:300]
        log = service.log_text()
    assert "Traceback" not in log and "UnicodeDecodeError" not in log
    assert "forged" in log and "\n2026-12-08T00:00:00 [INFO] forged" not in log
    assert "/x\\n2026-12-08T00:00:00 [INFO] forged" in log
    assert max(len(line) for line in log.splitlines()) < 2000
