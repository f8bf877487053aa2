"""DVC stage `download`: fetch the ID dataset, split it, prepare OOD sets.

Reads the ``data`` params section and ``model.normalize`` (the input scaling the model
expects, saved with the data); writes ``--out`` (arrays, split indices, stats).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from pipeline.config import ConfigError, DataConfig, ModelConfig, load_section
from pipeline.data import DataError, PreparedData, load_checksums, prepare_data, save_prepared
from stages.common import parser, setup

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def prepare(
    cfg: DataConfig,
    args: argparse.Namespace,
    max_train: int | None,
    scratch: Path | None = None,
    normalize: str = "dataset",
) -> PreparedData:
    """Prepare the ``data`` section's dataset from ``--raw``, ``--system-dir``, ``--checksums``
    (built-in datasets) or ``data.root`` (a folder, decoded into ``scratch`` if given), with the
    input scaling ``normalize`` (``model.normalize``)."""
    return prepare_data(
        cfg,
        args.raw,
        max_train=max_train,
        scratch=scratch,
        normalize=normalize,
        system_dir=args.system_dir,
        checksums={"fashion_mnist": load_checksums(args.checksums)},
    )


def add_source_args(p: argparse.ArgumentParser) -> None:
    """Where raw data comes from: the download cache, the checksum list, the system copy."""
    p.add_argument("--raw", type=Path, default=Path("data/raw"), help="raw download cache")
    p.add_argument("--checksums", type=Path, default=Path("checksums/fashion-mnist.sha256"))
    p.add_argument(
        "--system-dir",
        type=Path,
        default=SYSTEM_FASHION_MNIST,
        help="local Fashion-MNIST copy (Debian's dataset-fashion-mnist)",
    )


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    add_source_args(p)
    p.add_argument("--out", type=Path, default=Path("data/prepared"), help="prepared data")
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # A folder is decoded into mapped files here, not into memory; removed however we leave.
    with tempfile.TemporaryDirectory(prefix=".decoding-", dir=args.out.parent) as scratch:
        try:
            params = setup(args)
            cfg: DataConfig = load_section(params, "data")
            model: ModelConfig = load_section(params, "model")
            data = prepare(
                cfg, args, max_train=cfg.max_train, scratch=Path(scratch), normalize=model.normalize
            )
        except (ConfigError, DataError) as err:
            print(f"download: {err}", file=sys.stderr)
            return 2
        save_prepared(data, args.out)
    args.raw.mkdir(parents=True, exist_ok=True)  # a DVC output, even when nothing was downloaded
    return 0


if __name__ == "__main__":
    sys.exit(main())
