"""Dead workers' live gauges are removed (serving/reaper.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from serving.reaper import is_alive, reap_dead_processes


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_liveness_of_this_a_dead_and_a_zombie_process() -> None:
    assert is_alive(os.getpid())
    assert not is_alive(dead_pid())
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
        assert not is_alive(zombie.pid)
    finally:
        zombie.wait()


def test_only_dead_processes_live_gauge_files_are_removed(tmp_path: Path) -> None:
    me, gone = os.getpid(), dead_pid()
    names = [
        f"gauge_liveall_{me}.db",
        f"gauge_livemax_{me}.db",
        f"gauge_liveall_{gone}.db",
        f"gauge_livemax_{gone}.db",
        f"counter_{gone}.db",  # counters of dead workers keep counting: their totals stay
        f"gauge_all_{gone}.db",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert reap_dead_processes(tmp_path) == [gone]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(n for n in names if not n.startswith("gauge_live") or str(me) in n)
