"""Print a preset params file as ``dvc exp run`` arguments (``-S section.key=value`` each).

The preset is validated first, so a broken preset stops here with the offending key named.
``--require-gpu`` stops (exit 2, one line) on a machine where torch sees no CUDA device, unless
``FORCE=1`` is set: the paper's recipe is 200 ResNet-50 epochs, days on a CPU.
Usage: args=$(python -m stages.preset [--require-gpu] presets/cifar10_resnet50.yaml) &&
dvc exp run $args
"""

from __future__ import annotations

import json
import os
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
    argv = list(sys.argv[1:] if argv is None else argv)
    require_gpu = "--require-gpu" in argv
    argv = [a for a in argv if a != "--require-gpu"]
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        args = preset_args(argv[0])
    except ConfigError as err:
        print(f"preset: {err}", file=sys.stderr)
        return 2
    if require_gpu and os.environ.get("FORCE") != "1":
        import torch  # only here: printing arguments needs no torch

        if not torch.cuda.is_available():
            print(
                f"preset: {argv[0]} trains for days without a GPU and torch sees none here; "
                "run it on a CUDA machine, or set FORCE=1 to start anyway",
                file=sys.stderr,
            )
            return 2
    print(" ".join(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
