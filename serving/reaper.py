"""Forget the per-process gauges of dead workers, so they stop counting in ``/metrics``.

Under Prometheus multiprocess mode each worker writes its gauges to files named by its pid
(``gauge_liveall_<pid>.db``, ...), and the ``live*`` modes show a process's series until
``prometheus_client.multiprocess.mark_process_dead(pid)`` deletes those files. BentoML calls it
only on some restarts: after a ``kill -9`` the dead worker's window gauges stayed in ``/metrics``
frozen (``rankcal_window_size`` at 500 for a pid that no longer exists). Every worker therefore
reaps the files of dead pids when it starts (which removes its predecessor's) and every
:data:`REAP_INTERVAL_S` seconds after that.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

REAP_INTERVAL_S = 5.0
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]*_(\d+)\.db")


def is_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet waited for, counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        # /proc/<pid>/stat: "pid (comm) state ..."; comm may hold spaces and parentheses.
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: trust kill()
    return state not in ("Z", "X")


def reap_dead_processes(directory: Path) -> list[int]:
    """Remove the live-gauge files of every dead pid in ``directory``; return those pids."""
    from prometheus_client.multiprocess import mark_process_dead

    pids = {
        int(m.group(1))
        for f in Path(directory).iterdir()
        if (m := _LIVE_GAUGE_FILE.fullmatch(f.name))
    }
    dead = sorted(pid for pid in pids if not is_alive(pid))
    for pid in dead:
        mark_process_dead(pid, str(directory))
    if dead:
        logger.info("removed the live gauges of dead worker process(es) %s", dead)
    return dead


def start_reaper(directory: Path, interval_s: float = REAP_INTERVAL_S) -> threading.Thread:
    """Reap now, then every ``interval_s`` seconds in a daemon thread; return the thread."""

    def loop() -> None:
        while True:
            try:
                reap_dead_processes(directory)
            except OSError as err:  # a file removed by another worker meanwhile, a full disk
                logger.warning("could not reap dead workers' gauges in %s: %s", directory, err)
            time.sleep(interval_s)

    thread = threading.Thread(target=loop, name="gauge-reaper", daemon=True)
    thread.start()
    return thread
