"""A Prometheus configuration for this machine that scrapes the port the service listens on.

``serving/prometheus/prometheus.yml`` is the sample (port 3000, the default ``serve.port``);
``make prometheus`` writes a copy with the port of ``params.yaml``'s ``serve`` section and the
rule files as absolute paths, so Prometheus started from anywhere scrapes ``make serve``.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

SAMPLE = Path(__file__).parent / "prometheus" / "prometheus.yml"


def scrape_config(port: int, sample: Path = SAMPLE) -> dict[str, Any]:
    """The sample configuration with every target on ``port`` and its rule files absolute.

    Args:
        port: The service's port (``serve.port``).
        sample: The sample configuration; its rule files are relative to it.

    Returns:
        The configuration, ready to dump.
    """
    config = copy.deepcopy(yaml.safe_load(sample.read_text()))
    config["rule_files"] = [str((sample.parent / f).resolve()) for f in config["rule_files"]]
    for job in config["scrape_configs"]:
        for group in job["static_configs"]:
            group["targets"] = [f"{t.rsplit(':', 1)[0]}:{port}" for t in group["targets"]]
    return config


def main(argv: list[str] | None = None) -> int:
    """``python -m serving.prometheus_config PARAMS OUT``: write the configuration for PARAMS."""
    from pipeline.config import ConfigError, load_section, read_params

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m serving.prometheus_config PARAMS OUT", file=sys.stderr)
        return 2
    try:
        port = load_section(read_params(args[0]), "serve").port
    except (ConfigError, OSError) as err:
        print(f"prometheus_config: {err}", file=sys.stderr)
        return 2
    out = Path(args[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        f"# Written by `make prometheus` from {SAMPLE.name} for serve.port {port}.\n"
        + yaml.safe_dump(scrape_config(port), sort_keys=False)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
