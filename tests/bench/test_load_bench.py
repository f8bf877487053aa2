"""bench/load.py in miniature: mixed valid and invalid traffic, statuses and counters exact."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from bench import load, servers
from tests.conftest import require_hey
from tests.serving import conftest as serving
from tests.serving.conftest import ROOT, ExportedModel, quadrant_images

# The serving tests' trained, exported toy model (session-scoped, built once for this module).
exported_model = serving.exported_model


def test_hey_summary_is_parsed() -> None:
    summary = """
Summary:
  Requests/sec:\t123.4567

Latency distribution:
  10%% in 0.0010 secs
  50%% in 0.0123 secs
  99%% in 0.2500 secs

Status code distribution:
  [200]\t90 responses
  [400]\t7 responses

Error distribution:
  [3]\tPost "http://127.0.0.1:1/classify": dial tcp: connection refused
""".replace("%%", "%")
    out = load.parse_hey(summary)
    assert out.statuses == {200: 90, 400: 7} and out.transport_errors == 3
    assert out.rps == pytest.approx(123.4567)
    assert (out.p50_ms, out.p99_ms) == pytest.approx((12.3, 250.0))


@pytest.mark.slow
def test_a_short_mixed_load_is_answered_as_expected_and_counted(
    exported_model: ExportedModel, tmp_path: Path
) -> None:
    require_hey()
    image = quadrant_images(1, seed=0)[0][0]
    port = servers.free_port()
    params = servers.write_params(ROOT / "params.yaml", tmp_path / "params.yaml", port=port)
    server = servers.start_server("service", servers.SERVICE, exported_model.path, params, port)
    try:
        servers.wait_ready(server)
        args = argparse.Namespace(requests=300, clients=8, rounds=2)
        rows, _ = load.measure(server.url, server.process.pid, load.kinds(np.squeeze(image)), args)
    finally:
        server.stop()
    for row in rows:
        assert row["statuses_ok"] and row["counters_ok"] and row["transport_errors"] == 0, row
        assert 500 not in row["statuses"] and row["statuses"][200] > 0
        assert row["rss_after"] > 0
    assert "| 2 |" in load.render(rows, args)
