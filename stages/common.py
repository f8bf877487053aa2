"""What every stage entry point shares: argument parsing of the params file and logging."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from pipeline.config import read_params


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the ``--params`` option every stage takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")
    return p


def setup(args: argparse.Namespace) -> dict[str, Any]:
    """Configure logging and read the params file named on the command line."""
    logging.basicConfig(
        level=os.environ.get("RANKCAL_LOG", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return read_params(args.params)
