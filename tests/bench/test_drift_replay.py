"""bench/drift_replay.py's offline part on the serving tests' toy model (the live part is the
serving tests' business: tests/serving/test_prometheus_server.py)."""

from __future__ import annotations

from bench.drift_replay import offline_false_alarms
from tests.serving.conftest import ExportedModel, quadrant_images
from tests.serving.conftest import exported_model as exported_model  # the fixture


def test_clean_draws_rarely_reach_the_validity_threshold(exported_model: ExportedModel) -> None:
    images, _ = quadrant_images(1500, seed=5)  # like the toy's reference images, other draws
    rows = offline_false_alarms(exported_model.path, images, draws=50)
    assert [row.split("|")[1].strip() for row in rows] == ["100", "200", "500"]
    shares = [float(cell.strip().rstrip("%")) for row in rows for cell in row.split("|")[2::2][:2]]
    assert all(0 <= share <= 100 for share in shares)
    # at 500 images clean traffic never looks drifted, with or without the feature norm
    last = rows[-1].split("|")
    assert float(last[2].strip().rstrip("%")) == 0.0 and float(last[4].strip().rstrip("%")) == 0.0
