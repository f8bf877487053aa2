"""The servers under test: ``bentoml serve`` subprocesses, started side by side and always stopped.

The service with adaptive batching on and off and the minimal service, each on a free port with
a copy of the params file, in a process group of its own; stopping one terminates the group and
kills whatever workers linger (found with psutil).
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from bench.loadgen import Case, log
from pipeline.config import read_params

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "serving.service:ImageClassifier"
FLOOR = "bench.minimal_service:MinimalClassifier"
ON, OFF, MINIMAL = "service, batching on", "service, batching off", "minimal"
READY_TIMEOUT_S = 180.0  # a busy 2-core machine needs tens of seconds to start three servers


@dataclass
class Server:
    """A ``bentoml serve`` subprocess in its own process group, with its log file."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's output."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Terminate the server's process group and its workers; kill whatever lingers.

        BentoML's arbiter starts each worker in a process group of its own, so the workers are
        collected first and killed separately if the arbiter did not stop them.
        """
        workers: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            workers = psutil.Process(self.process.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        for worker in psutil.wait_procs(workers, timeout=5)[1]:
            with contextlib.suppress(psutil.Error):
                worker.kill()


PORT_ATTEMPTS = 3  # starts of a server whose port was taken before it bound it


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_params(source: Path, dest: Path, **serve: Any) -> Path:
    """A copy of the params file ``source`` with ``serve`` keys overridden."""
    params = copy.deepcopy(read_params(source))
    params["serve"].update(serve)
    with dest.open("w") as fh:
        yaml.safe_dump(params, fh)
    return dest


def start_server(name: str, target: str, model: Path, params: Path, port: int) -> Server:
    """``bentoml serve target`` with the model, params and a BentoML home beside ``params``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENTOML_", "PROMETHEUS_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
        RANKCAL_MODEL=str(model.resolve()),
        RANKCAL_PARAMS=str(params.resolve()),
        BENTOML_DO_NOT_TRACK="true",
        BENTOML_HOME=str(params.parent / "bentoml_home"),
    )
    argv = [str(Path(sys.executable).parent / "bentoml"), "serve", target]
    log_path = params.parent / "server.log"
    with log_path.open("wb") as sink:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Server(name, f"http://127.0.0.1:{port}", process, log_path)


def wait_ready(server: Server, timeout: float = READY_TIMEOUT_S) -> None:
    """Wait for ``/readyz`` to answer 200.

    Raises:
        RuntimeError: If the server exits or is not ready in ``timeout`` seconds (with its log).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{server.name} not ready after {timeout:.0f} s:\n{server.log_tail()}")


@contextlib.contextmanager
def running_servers(
    model: Path, params: Path, workers: int, folder: Path
) -> Iterator[dict[str, Server]]:
    """The service with batching on and off and the minimal service, all ready; stopped on exit
    (exceptions and Ctrl-C included)."""
    specs = {ON: (SERVICE, True), OFF: (SERVICE, False), MINIMAL: (FLOOR, False)}

    def start(i: int, name: str) -> Server:
        target, batching = specs[name]
        (folder / str(i)).mkdir(exist_ok=True)
        port = free_port()
        copied = write_params(
            params, folder / str(i) / "params.yaml", port=port, workers=workers, batching=batching
        )
        return start_server(name, target, model, copied, port)

    with contextlib.ExitStack() as stack:
        servers = {}
        for i, name in enumerate(specs):
            servers[name] = start(i, name)
            stack.callback(lambda n=name: servers[n].stop())
        for i, name in enumerate(specs):
            # A free port can be taken between choosing it and binding it: the servers start
            # together, and each BentoML arbiter binds ports of its own (seen in CI: "Address
            # already in use"). Such a start is retried on another port.
            for attempt in range(PORT_ATTEMPTS):
                try:
                    wait_ready(servers[name])
                    break
                except RuntimeError as err:
                    if "Address already in use" not in str(err) or attempt + 1 == PORT_ATTEMPTS:
                        raise
                    servers[name].stop()
                    servers[name] = start(i, name)
            log(f"{servers[name].name} ready at {servers[name].url}")
        yield servers


def served_provider(url: str) -> str:
    """The ONNX Runtime provider the service runs on, from ``rankcal_model_info`` in /metrics."""
    found = re.search(
        r'rankcal_model_info\{[^}]*provider="([^"]+)"', httpx.get(f"{url}/metrics").text
    )
    return found.group(1) if found else "unknown"


def probe(case: Case) -> None:
    """Send one request of ``case``.

    Raises:
        RuntimeError: If it is not answered 200 (a broken set-up, not a slow one).
    """
    response = httpx.post(case.url + case.endpoint, content=case.bodies[0], headers=case.headers)
    if response.status_code != 200:
        raise RuntimeError(
            f"{case.server} {case.endpoint} answered {response.status_code}: {response.text}"
        )
