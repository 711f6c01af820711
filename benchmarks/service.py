"""Section 6: the HTTP service. Synchronous generations (local provider, 64x64 PNG, n = 1)
through ``imagegen serve`` on PostgreSQL (SQLite when no server answers), over loopback:

- throughput: requests/s with ``CONCURRENCY`` requests in flight, and their p50 / p95;
- overhead: one request at a time through HTTP, against the same generation through the
  use case alone (``AsyncImageGen.generate`` in this process, same database): the
  difference is what the service adds (HTTP, JSON, API key lookup, the guard).

The load generator runs on the same two cores as the server, so it is kept cheap: plain
asyncio streams over keep-alive HTTP/1.1 connections, each request pre-encoded (about 0.2 ms
of CPU per request, where an httpx client costs several times that). Its connections are
opened one at a time, so that every ``serve`` worker accepts its share (opened all at once,
one worker's accept loop takes most of them and the other idles).

CPU per generation: the CPU time (user + system, from /proc) of the server's processes, of
PostgreSQL's and of the load generator over the timed run, divided by the requests served. Its
sum bounds the throughput the machine can reach: cores x 1000 / (CPU ms per generation).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

TARGET_RPS: Final = 300.0  # the goal, on 2 cores
TARGET_OVERHEAD_P95_MS: Final = 20.0
CONCURRENCY: Final = 32
TENANTS: Final = 8  # one tenant's generations queue on its credit account's lock
BODY: Final = {"prompt": "a red fox in the snow at sunset", "size": "64x64"}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50": _pct(ms, 0.50),
        "p95": _pct(ms, 0.95),
        "p99": _pct(ms, 0.99),
        "mean": statistics.fmean(ms),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _imagegen(env: dict[str, str], *args: str) -> dict[str, Any]:
    command = [str(Path(sys.executable).parent / "imagegen"), *args, "--json"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=60)
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def _requests(port: int, keys: Sequence[str]) -> list[bytes]:
    body = json.dumps(BODY).encode()
    return [
        (
            f"POST /v1/generations HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for key in keys
    ]


async def _connection(
    port: int, requests: Sequence[bytes], turns: Iterator[int], latencies: list[float]
) -> None:
    """One keep-alive connection: send a request, read the whole response, repeat."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i in turns:
            started = time.perf_counter()
            writer.write(requests[i % len(requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            status = int(head[9:12])
            if status != 201:
                raise RuntimeError(f"{status}: {body[:200]!r}")
    finally:
        writer.close()


async def _load(
    port: int, keys: Sequence[str], total: int, concurrency: int
) -> tuple[float, list[float]]:
    """``total`` generations, ``concurrency`` at a time, the keys (tenants) taking turns."""
    latencies: list[float] = []
    turns = iter(range(total))
    requests = _requests(port, keys)
    started = time.perf_counter()
    connections = []
    for _ in range(concurrency):
        connections.append(asyncio.create_task(_connection(port, requests, turns, latencies)))
        await asyncio.sleep(0.005)  # one at a time: each worker accepts its share
    await asyncio.gather(*connections)
    return time.perf_counter() - started, latencies


_TICKS: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """User + system CPU of one process (all its threads), from /proc; with ``reaped``, plus
    that of its children that exited and were waited for. 0 when it is gone."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICKS


def _descendants(pid: int) -> list[int]:
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            listed = children.read_text().split()
        except OSError:
            continue
        for child in listed:
            found.append(int(child))
            found.extend(_descendants(int(child)))
    return found


def _postmasters() -> list[int]:
    """PostgreSQL's main processes: named postgres, with a parent that is not."""
    names = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            names[int(proc.name)] = (proc / "comm").read_text().strip()
        except OSError:
            continue
    found = []
    for pid, name in names.items():
        fields = _stat(pid) if name.startswith("postgres") else None
        if fields is not None and not names.get(int(fields[1]), "").startswith("postgres"):
            found.append(pid)
    return found


def _tree_cpu_seconds(root: int) -> float:
    """CPU of a process tree, counting children that exited meanwhile (PostgreSQL ends a
    backend when a pooled connection closes; its CPU moves to the postmaster's reaped
    children's)."""
    return _cpu_seconds(root, reaped=True) + sum(map(_cpu_seconds, _descendants(root)))


class _CpuMeter:
    """CPU seconds spent by the server, PostgreSQL and this process between start and stop."""

    def __init__(self, server: int) -> None:
        self._server = server
        self._postmasters = _postmasters()
        self._start = self._read()

    def _read(self) -> dict[str, float]:
        return {
            "server": _tree_cpu_seconds(self._server),
            "postgres": sum(map(_tree_cpu_seconds, self._postmasters)),
            "load generator": time.process_time(),
        }

    def per_request_ms(self, requests: int) -> dict[str, float]:
        end = self._read()
        return {k: (end[k] - self._start[k]) * 1000 / requests for k in end}


async def _paired(url: str, key: str, settings: Any, total: int) -> dict[str, list[float]]:
    """One request through HTTP, then the same generation through the use case in this
    process, ``total`` times: both see the same load on the machine at the same moment."""
    import httpx

    from imagegen.client import AsyncImageGen

    http: list[float] = []
    direct: list[float] = []
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client,
        AsyncImageGen(settings, tenant_id="bench-direct") as gen,
    ):
        for i in range(total + 10):  # the first 10 pairs warm up
            started = time.perf_counter()
            response = await client.post("/v1/generations", json=BODY)
            middle = time.perf_counter()
            await gen.generate(BODY["prompt"], size=BODY["size"])
            ended = time.perf_counter()
            if response.status_code != 201:
                raise RuntimeError(f"{response.status_code}: {response.text[:200]}")
            if i >= 10:
                http.append(middle - started)
                direct.append(ended - middle)
    return {
        "http": http,
        "direct": direct,
        "overhead": [h - d for h, d in zip(http, direct, strict=True)],
    }


def run_section(
    quick: bool, tmp_root: Path, database_url: str | None, backend: str, workers: Sequence[int]
) -> dict[str, Any]:
    from imagegen.bootstrap.settings import Settings

    total = 300 if quick else 1000
    sequential = 100 if quick else 300
    data_dir = tmp_root / "http"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_")}
    env.update(
        IMAGEGEN_DATA_DIR=str(data_dir),
        IMAGEGEN_STARTING_CREDITS=str(10**9),
        **({"IMAGEGEN_DATABASE_URL": database_url} if database_url else {}),
    )
    keys = []
    for n in range(TENANTS):
        tenant = _imagegen(env, "tenants", "create", f"bench-{n}")
        issued = _imagegen(env, "keys", "create", "--tenant", tenant["id"], "--role", "creator")
        keys.append(issued["key"])
    result: dict[str, Any] = {
        "backend": backend,
        "concurrency": CONCURRENCY,
        "requests": total,
        "targets": {"rps": TARGET_RPS, "overhead_p95_ms": TARGET_OVERHEAD_P95_MS},
        "cpus": os.cpu_count(),
        "runs": [],
    }
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,  # type: ignore[arg-type]
        starting_credits=10**9,
    )
    for count in workers:
        port = _free_port()
        server = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "imagegen"),
                "serve",
                "--port",
                str(port),
                "--workers",
                str(count),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_until_up(url, server)
            log(f"{count} worker(s): warm-up, then {total} requests, {CONCURRENCY} in flight ...")
            asyncio.run(_load(port, keys, 50 * count, CONCURRENCY))
            elapsed, latencies = asyncio.run(_load(port, keys[:1], total, CONCURRENCY))
            log(f"{count} worker(s): {total} requests over {TENANTS} tenants ...")
            meter = _CpuMeter(server.pid) if sys.platform == "linux" else None
            spread, spread_latencies = asyncio.run(_load(port, keys, total, CONCURRENCY))
            cpu = meter.per_request_ms(total) if meter is not None else None
            log(f"{count} worker(s): {sequential} requests one at a time, each paired ...")
            paired = asyncio.run(_paired(url, keys[0], settings, sequential))
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        result["runs"].append(
            {
                "workers": count,
                "rps": total / elapsed,
                "latency_ms": _summary_ms(latencies),
                "tenants_rps": total / spread,
                "tenants_latency_ms": _summary_ms(spread_latencies),
                "cpu_ms_per_request": cpu,
                "sequential_ms": _summary_ms(paired["http"]),
                "direct_ms": _summary_ms(paired["direct"]),
                "overhead_ms": _summary_ms(paired["overhead"]),
            }
        )
    return result


def _wait_until_up(url: str, server: subprocess.Popen[bytes]) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"imagegen serve exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/openapi.json", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("imagegen serve did not start within 60 s")


def render_section(result: dict[str, Any], number: int = 5) -> list[str]:
    out: list[str] = []
    add = out.append
    add(
        f"{number}. HTTP service: synchronous generations (local, 64x64 PNG) on {result['backend']}"
    )
    add(
        f"   {result['requests']} POST /v1/generations, {result['concurrency']} in flight, "
        "load generator on the same machine"
    )
    add(f"   {'workers':<9}{'tenants':<9}{'req/s':>7}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}")
    for run in result["runs"]:
        for tenants, rps, lat in (
            (1, run["rps"], run["latency_ms"]),
            (TENANTS, run["tenants_rps"], run["tenants_latency_ms"]),
        ):
            add(
                f"   {run['workers']:<9}{tenants:<9}{rps:>7.0f}{lat['p50']:>9.1f}"
                f"{lat['p95']:>9.1f}{lat['p99']:>9.1f}"
            )
    cores = result.get("cpus") or 2
    for run in result["runs"]:
        cpu = run.get("cpu_ms_per_request")
        if cpu:
            parts = ", ".join(f"{name} {ms:.1f}" for name, ms in cpu.items())
            total_ms = sum(cpu.values())
            add(
                f"   CPU per generation, {run['workers']} worker(s), {TENANTS} tenants: "
                f"{total_ms:.1f} ms ({parts}) -> at most {cores * 1000 / total_ms:.0f}/s "
                f"on {cores} cores"
            )
    add(
        "   one request at a time, each followed by the same generation through the use case "
        "alone (AsyncImageGen.generate, this process, same database):"
    )
    for run in result["runs"]:
        seq, direct, over = run["sequential_ms"], run["direct_ms"], run["overhead_ms"]
        add(
            f"     {run['workers']} worker(s): HTTP p50 {seq['p50']:.1f} / p95 {seq['p95']:.1f} ms;"
            f" use case p50 {direct['p50']:.1f} / p95 {direct['p95']:.1f} ms;"
            f" overhead (paired) p50 {over['p50']:.1f} / p95 {over['p95']:.1f} ms"
        )
    best = max(max(run["rps"], run["tenants_rps"]) for run in result["runs"])
    overhead = min(run["overhead_ms"]["p95"] for run in result["runs"])
    targets = result["targets"]
    add(
        f"   target >= {targets['rps']:.0f} generations/s: "
        f"{'met' if best >= targets['rps'] else 'NOT MET'} ({best:.0f}); "
        f"target p95 overhead <= {targets['overhead_p95_ms']:.0f} ms: "
        f"{'met' if overhead <= targets['overhead_p95_ms'] else 'NOT MET'} ({overhead:.1f} ms)"
    )
    return out
