"""Print a preset params file as ``dvc exp run`` arguments (``-S section.key=value`` each).

The preset is validated first, so a broken preset stops here with the offending key named.
``--require-gpu`` stops (exit 2, one line) on a machine where torch sees no CUDA device, unless
``FORCE=1`` is set: the paper's recipe is 200 ResNet-50 epochs, days on a CPU.
``--set section.key=value`` (repeatable) replaces a preset's value first, e.g. the photo
folder of ``presets/photos.yaml``; a folder dataset whose root is no folder stops here too.
``--only-set`` prints the ``--set`` keys alone, after checking the whole file with them: what
``make exp`` runs on ``params.yaml``, so DVC changes no other key.
Usage: args=$(python -m stages.preset [--require-gpu] [--only-set] [--set data.root=DIR] PRESET)
&& dvc exp run $args
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import FOLDER, SECTIONS, ConfigError, load_section, read_params


def override_value(value: Any) -> str:
    """``value`` in the override grammar ``dvc exp run -S`` parses (Hydra's): JSON scalars,
    lists, and dicts with bare keys (``{weight:0.1}``; Hydra refuses JSON's quoted keys)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    return json.dumps(value)


def preset_args(path: str, overrides: Sequence[str] = ()) -> list[str]:
    """``-S`` arguments that set every key of the preset at ``path``.

    Args:
        path: The preset, a complete params file.
        overrides: ``section.key=value`` settings (value in YAML) that replace the preset's
            before it is checked, e.g. ``data.root=/srv/photos``.

    Raises:
        ConfigError: If an override is malformed or names an unknown key, the result does not
            validate, or a folder dataset's root is not a folder.
    """
    params = read_params(path)
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not (sep and dot and section in params and name in params[section]):
            raise ConfigError(f"--set {item!r}: expected section.key=value with a key of {path}")
        params[section][name] = yaml.safe_load(value)
    data = params.get("data", {})
    if data.get("dataset") == FOLDER and not Path(str(data.get("root"))).is_dir():
        raise ConfigError(
            f"data.root {data.get('root')!r} is not a folder: give the folder of your images, "
            'one sub-folder per class (README, "Train on your own images")'
        )
    args = []
    for section in SECTIONS:
        load_section(params, section)
        for key, value in params[section].items():
            # compact JSON is valid YAML and has no spaces, so the shell keeps it one word
            arg = f"{section}.{key}={override_value(value)}"
            if any(c.isspace() for c in arg):  # the make targets split the output into words
                raise ConfigError(f"{arg}: a value with white space cannot be passed on; rename it")
            args += ["-S", arg]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    require_gpu, only_set = "--require-gpu" in argv, "--only-set" in argv
    argv = [a for a in argv if a not in ("--require-gpu", "--only-set")]
    overrides = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--set"]
    argv = [a for i, a in enumerate(argv) if a != "--set" and (i == 0 or argv[i - 1] != "--set")]
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        args = preset_args(argv[0], overrides)
        if only_set:
            if not overrides:
                raise ConfigError("--only-set needs at least one --set section.key=value")
            keys = {item.partition("=")[0] for item in overrides}
            pairs = zip(args[::2], args[1::2], strict=True)
            args = [word for pair in pairs if pair[1].partition("=")[0] in keys for word in pair]
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
