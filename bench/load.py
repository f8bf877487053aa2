"""Mixed valid and invalid traffic against the real service, with its memory and its counters.

Several ``hey`` processes run at once against one ``bentoml serve`` of the service, one per
kind of body: valid PNG images on most clients, and invalid bodies of six kinds (empty, not an
image, a truncated PNG, a decompression-bomb header, the pickle content type, broken JSON to
the batch endpoint) on the rest. Each round sends ``--requests`` requests in all. Reported per
round: throughput, p50/p99 of the valid requests, answers by status, transport errors, the
resident memory of the service's whole process group before and after, and whether the
service's Prometheus counters equal what was sent.

Targets: no 5xx and no transport error; every invalid body a 4xx; memory growth after the
first (warm-up) round under 5 MB per round; counters equal to the valid and invalid counts.

Usage: python bench/load.py [--requests 20000] [--clients 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import pickle
import re
import subprocess
import sys
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

if not __package__:  # run as ``python bench/load.py``: the repo root makes ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import HEY, log
from bench.servers import SERVICE, free_port, start_server, wait_ready, write_params

GROWTH_LIMIT_MB = 5.0
VALID_SHARE = 0.7  # of requests and of clients


@dataclass(frozen=True)
class Kind:
    """One kind of request body: where it goes, what it is, what the service must answer."""

    name: str
    endpoint: str
    content_type: str
    body: bytes
    expect: int  # the status every request of this kind must get
    reason: str | None  # the refusal reason counted, None for a valid request


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _bomb_header(width: int, height: int) -> bytes:
    """A 2x2 PNG whose header claims ``width`` x ``height`` (CRC fixed up)."""
    data = bytearray(_png(np.zeros((2, 2), np.uint8)))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def kinds(image: np.ndarray) -> list[Kind]:
    """The valid kind (``image`` as PNG) and the six invalid ones."""
    valid = _png(image)
    return [
        Kind("valid", "/classify", "image/png", valid, 200, None),
        Kind("empty", "/classify", "image/png", b"", 400, "empty_body"),
        Kind("text", "/classify", "image/png", b"not an image at all" * 20, 400, "not_an_image"),
        Kind(
            "truncated", "/classify", "image/png", valid[: len(valid) // 2], 400, "truncated_image"
        ),
        Kind(
            "bomb", "/classify", "image/png", _bomb_header(60_000, 60_000), 400, "too_many_pixels"
        ),
        Kind(
            "pickle",
            "/classify",
            "application/vnd.bentoml+pickle",
            pickle.dumps([1, 2, 3]),
            415,
            "unsupported_media_type",
        ),
        Kind(
            "bad_json", "/classify_batch", "application/json", b'{"images": [', 400, "json_invalid"
        ),
    ]


@dataclass
class Outcome:
    """What ``hey`` reported for one kind in one round."""

    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    rps: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")


def parse_hey(summary: str) -> Outcome:
    """Statuses, transport errors, requests/s and p50/p99 from hey's text summary."""
    out = Outcome()
    for code, count in re.findall(r"\[(\d{3})\]\s+(\d+) responses", summary):
        out.statuses[int(code)] += int(count)
    errors = summary.split("Error distribution:")[-1] if "Error distribution:" in summary else ""
    out.transport_errors = sum(int(n) for n in re.findall(r"^\s*\[(\d+)\]\s", errors, re.M))
    if found := re.search(r"Requests/sec:\s+([\d.]+)", summary):
        out.rps = float(found.group(1))
    for q, attr in (("50", "p50_ms"), ("99", "p99_ms")):
        if found := re.search(rf"\s{q}%+ in ([\d.]+) secs", summary):
            setattr(out, attr, 1e3 * float(found.group(1)))
    return out


def group_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total / 1e6


def scrape(url: str) -> dict[str, float]:
    """rankcal_confidence_count and each rankcal_rejected_requests_total{reason}, summed."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("rankcal_confidence_count"):
            values["valid"] += float(line.split()[-1])
        elif found := re.match(
            r'rankcal_rejected_requests_total\{reason="([a-z_]+)"\} (\S+)', line
        ):
            values[found.group(1)] += float(found.group(2))
    return dict(values)


def run_round(url: str, all_kinds: list[Kind], requests: int, clients: int) -> dict[str, Outcome]:
    """All kinds at once, one hey process each; ``requests`` and ``clients`` shared among them."""
    invalid = all_kinds[1:]
    shares = {all_kinds[0].name: VALID_SHARE}
    shares.update({k.name: (1 - VALID_SHARE) / len(invalid) for k in invalid})
    with tempfile.TemporaryDirectory() as tmp:
        running = {}
        for kind in all_kinds:
            body = Path(tmp) / kind.name
            body.write_bytes(kind.body)
            n = max(1, round(requests * shares[kind.name]))
            c = max(1, min(n, round(clients * shares[kind.name])))
            argv = [HEY, "-n", str(n), "-c", str(c), "-m", "POST", "-T", kind.content_type]
            argv += ["-D", str(body), f"{url}{kind.endpoint}"]
            running[kind.name] = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        return {name: parse_hey(p.communicate(timeout=1800)[0]) for name, p in running.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("models/model.onnx"))
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--requests", type=int, default=20_000, help="requests per round")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    if HEY is None:
        print("load: hey is not installed (make setup installs Debian's hey)", file=sys.stderr)
        return 2
    if not args.model.is_file():
        print(f"load: {args.model} is missing: run make repro first", file=sys.stderr)
        return 2
    test_images = Path("data/prepared/x_test.npy")
    image = np.load(test_images)[0] if test_images.is_file() else np.zeros((28, 28, 1), np.uint8)
    all_kinds = kinds(np.squeeze(np.asarray(image)))
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        params = write_params(args.params, Path(tmp) / "params.yaml", port=port, workers=1)
        server = start_server("service", SERVICE, args.model, params, port)
        try:
            wait_ready(server)
            rows, ok = measure(server.url, server.process.pid, all_kinds, args)
        finally:
            server.stop()
    print(render(rows, args))
    return 0 if ok else 1


def measure(
    url: str, pid: int, all_kinds: list[Kind], args: argparse.Namespace
) -> tuple[list[dict], bool]:
    """Run the rounds; return one row per round and whether every target held."""
    rows, ok = [], True
    memory = [group_rss_mb(pid)]
    for r in range(args.rounds):
        before = scrape(url)
        outcomes = run_round(url, all_kinds, args.requests, args.clients)
        after = scrape(url)
        memory.append(group_rss_mb(pid))
        row = check_round(all_kinds, outcomes, before, after)
        row.update(round=r + 1, rss_before=memory[-2], rss_after=memory[-1])
        if r > 0:
            row["growth_ok"] = memory[-1] - memory[-2] < GROWTH_LIMIT_MB
            ok &= row["growth_ok"]
        ok &= row["statuses_ok"] and row["counters_ok"] and row["transport_errors"] == 0
        log(f"round {r + 1}: {row}")
        rows.append(row)
    return rows, ok


def check_round(
    all_kinds: list[Kind], outcomes: dict[str, Outcome], before: dict, after: dict
) -> dict:
    """The round's figures and its checks: statuses as expected, counters equal to the sent."""
    valid = outcomes["valid"]
    statuses: Counter[int] = sum((o.statuses for o in outcomes.values()), Counter())
    statuses_ok = all(set(outcomes[k.name].statuses) <= {k.expect} for k in all_kinds)
    sent = {k.reason or "valid": sum(outcomes[k.name].statuses.values()) for k in all_kinds}
    grew = {key: after.get(key, 0) - before.get(key, 0) for key in sent}
    return {
        "requests": sum(statuses.values()),
        "valid_rps": valid.rps,
        "p50_ms": valid.p50_ms,
        "p99_ms": valid.p99_ms,
        "statuses": dict(sorted(statuses.items())),
        "transport_errors": sum(o.transport_errors for o in outcomes.values()),
        "statuses_ok": statuses_ok,
        "counters_ok": grew == sent,
    }


def render(rows: list[dict], args: argparse.Namespace) -> str:
    """The report as a Markdown table."""
    lines = [
        f"`python bench/load.py --requests {args.requests} --clients {args.clients} "
        f"--rounds {args.rounds}`: {args.clients} clients in all, {int(100 * VALID_SHARE)}% "
        "of requests valid PNGs, the rest six kinds of invalid bodies.",
        "",
        "| round | requests | valid req/s | p50 ms | p99 ms | statuses | transport errors "
        "| RSS before → after MB | statuses as expected | counters exact |",
        "| ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['round']} | {row['requests']} | {row['valid_rps']:.0f} | {row['p50_ms']:.1f} "
            f"| {row['p99_ms']:.1f} | {row['statuses']} | {row['transport_errors']} "
            f"| {row['rss_before']:.1f} → {row['rss_after']:.1f} | {row['statuses_ok']} "
            f"| {row['counters_ok']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
