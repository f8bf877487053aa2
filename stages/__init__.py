"""DVC's stage entry points: ``python -m stages.<stage>`` (dvc.yaml).

DVC runs each stage with the ``python`` it finds on PATH. In a fresh shell that is the system's,
without the project's packages, and the stage would die on its first import (``No module named
'PIL'``). Checked here, before any stage imports them, so the failure says what to do.
"""

from __future__ import annotations

import importlib.util
import sys

_NEEDED = ("PIL", "yaml", "pydantic", "torch")

_missing = [name for name in _NEEDED if importlib.util.find_spec(name) is None]
if _missing:
    sys.exit(
        f"rankcal: {sys.executable} lacks the project's packages ({', '.join(_missing)}): DVC ran "
        "the stage with the python on PATH. Run `source .venv/bin/activate` first (then `dvc exp "
        "run ...`), or use `make repro` / `make repro-photos DATA=<folder>`, which do it for you "
        "(`make setup` creates .venv)"
    )
