"""Print a preset params file as ``dvc exp run`` arguments (``-S section.key=value`` each).

The preset is validated first, so a broken preset stops here with the offending key named.
Usage: dvc exp run $(python -m stages.preset presets/cifar10_resnet50.yaml)
"""

from __future__ import annotations

import json
import sys

from pipeline.config import SECTIONS, ConfigError, load_section, read_params


def preset_args(path: str) -> list[str]:
    """``-S`` arguments that set every key of the preset at ``path``."""
    params = read_params(path)
    args = []
    for section in SECTIONS:
        load_section(params, section)
        for key, value in params[section].items():
            # compact JSON is valid YAML and has no spaces, so the shell keeps it one word
            args += ["-S", f"{section}.{key}={json.dumps(value, separators=(',', ':'))}"]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(" ".join(preset_args(argv[0])))
    except ConfigError as err:
        print(f"preset: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
