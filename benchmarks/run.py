#!/usr/bin/env python
"""imagegen benchmarks: library overhead per generation, import time, where the time goes, and
32 images on emulated providers with 300 ms latency and a concurrency cap of 8.

    python benchmarks/run.py                 # everything (~2 minutes on 2 cores)
    python benchmarks/run.py --quick         # fewer iterations (~70 s)
    python benchmarks/run.py --only core     # sections 1-3 (~1 minute; --quick ~30 s)
    python benchmarks/run.py --only providers  # section 4, provider calls (~40 s; --quick ~35 s)
    python benchmarks/run.py --only billing  # section 5, reservations + captures per second
    python benchmarks/run.py --only http     # section 6, the HTTP service (~1 minute)
    python benchmarks/run.py --no-postgres   # SQLite only
    python benchmarks/run.py --postgres-url postgresql://user@host:5432/some_db
    python benchmarks/run.py --json          # machine-readable results on stdout

The script re-runs itself with the repository's ``.venv/bin/python`` when the interpreter it
was started with cannot import imagegen. Every figure is measured in this one run, side by
side (scenarios are interleaved); see benchmarks/README.md for the method.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import gc
import importlib
import json
import os
import platform
import pstats
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, TypeVar

if TYPE_CHECKING:
    from imagegen.application.ports import (
        ImageInfo,
        ImageProvider,
        ProviderRequest,
        ProviderResult,
        StoredBlob,
    )
    from imagegen.client import AsyncImageGen
    from imagegen.domain.asset import Provenance

REPO: Final = Path(__file__).resolve().parent.parent
VENV: Final = REPO / ".venv"

TARGET_OVERHEAD_P50_MS: Final = 10.0  # per image, on SQLite (the target)
TARGET_IMPORT_MS: Final = 150.0  # `import imagegen`
SECTIONS: Final = ("core", "providers", "billing", "http")  # --only
DEFAULT_ADMIN_URL: Final = "postgresql://postgres@127.0.0.1:5432/test"
PROMPT: Final = "a red fox in the snow at sunset"
SMALL, LARGE = "64x64", "1024x1024"

T = TypeVar("T")


def log(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the report (or the JSON)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    small: int  # 64x64 generations per backend, headline pass
    large: int  # 1024x1024 generations per backend, headline pass
    warmup: int  # untimed generations per size, after the first (migrating) call
    breakdown_small: int  # instrumented pass
    breakdown_large: int
    profile: int  # 64x64 on SQLite under cProfile
    import_runs: int  # fresh interpreters per import variant

    @classmethod
    def of(cls, quick: bool) -> Plan:
        if quick:
            return cls(60, 12, 3, 40, 8, 40, 7)
        return cls(200, 40, 5, 100, 20, 100, 15)


@dataclass(frozen=True)
class Backend:
    name: str  # "SQLite" / "PostgreSQL"
    database_url: str | None  # None: the embedded default, SQLite in the data dir


# --- statistics --------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """Milliseconds."""

    n: int
    mean: float
    p50: float
    p95: float
    p99: float
    min: float
    max: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Summary:
        ms = [s * 1000 for s in seconds]
        return cls(
            n=len(ms),
            mean=statistics.fmean(ms),
            p50=percentile(ms, 50),
            p95=percentile(ms, 95),
            p99=percentile(ms, 99),
            min=min(ms),
            max=max(ms),
        )


# --- instrumentation: thin wrappers around the container's adapters -----------------------------


class PhaseClock:
    """Per generation: wall seconds and event-loop-thread CPU seconds of named phases, and the
    SQL statements each phase sent."""

    def __init__(self) -> None:
        self._wall: dict[str, float] = defaultdict(float)
        self._cpu: dict[str, float] = defaultdict(float)
        self._sql: dict[str, int] = defaultdict(int)
        self.active: list[str] = []  # innermost phase last
        self._lock = threading.Lock()

    def add(self, name: str, wall: float, cpu: float) -> None:
        with self._lock:
            self._wall[name] += wall
            self._cpu[name] += cpu

    def count_sql(self, *_args: Any) -> None:
        self._sql[self.active[-1] if self.active else "outside"] += 1

    def take(self) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
        with self._lock:
            taken = dict(self._wall), dict(self._cpu), dict(self._sql)
            self._wall.clear()
            self._cpu.clear()
            self._sql.clear()
        return taken


class TimingProvider:
    """``ImageProvider`` wrapper: records, per call, the time spent inside the real provider."""

    def __init__(self, inner: ImageProvider, clock: PhaseClock | None = None) -> None:
        self._inner = inner
        self._clock = clock
        self.calls: list[float] = []
        self.cpu: list[float] = []  # event-loop-thread CPU during each call (the thread hop)

    @property
    def name(self) -> str:
        return self._inner.name

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        cpu0 = time.thread_time()
        start = time.perf_counter()
        try:
            return await self._inner.generate(request)
        finally:
            elapsed, cpu = time.perf_counter() - start, time.thread_time() - cpu0
            self.calls.append(elapsed)
            self.cpu.append(cpu)
            if self._clock is not None:
                self._clock.add("provider", elapsed, cpu)


class TimingInspector:
    """``ImageInspector`` wrapper (called in a worker thread): decode + validation time."""

    def __init__(self, inner: Any, clock: PhaseClock) -> None:
        self._inner = inner
        self._clock = clock

    def inspect(self, data: bytes) -> ImageInfo:
        start = time.perf_counter()
        try:
            info: ImageInfo = self._inner.inspect(data)
            return info
        finally:
            self._clock.add("inspect", time.perf_counter() - start, 0.0)


class TimingStorage:
    """``BlobStorage`` wrapper: times ``put`` (XMP, SHA-256, fsync'd writes); delegates the rest."""

    def __init__(self, inner: Any, clock: PhaseClock) -> None:
        self._inner = inner
        self._clock = clock

    async def put(self, data: bytes, info: ImageInfo, provenance: Provenance) -> StoredBlob:
        cpu0 = time.thread_time()
        start = time.perf_counter()
        try:
            blob: StoredBlob = await self._inner.put(data, info, provenance)
            return blob
        finally:
            self._clock.add("put", time.perf_counter() - start, time.thread_time() - cpu0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class PhaseProfiler:
    """One ``cProfile.Profile`` per phase on the event-loop thread; the innermost running phase
    owns the samples. Generations run one at a time, so what the loop does while a phase's
    coroutine is suspended (callbacks, waiting for worker threads) belongs to that phase."""

    def __init__(self) -> None:
        self.profiles: dict[str, cProfile.Profile] = {}
        self._stack: list[str] = []

    def enter(self, name: str) -> None:
        if self._stack:
            self.profiles[self._stack[-1]].disable()
        self._stack.append(name)
        self.profiles.setdefault(name, cProfile.Profile()).enable()

    def exit(self) -> None:
        self.profiles[self._stack.pop()].disable()
        if self._stack:
            self.profiles[self._stack[-1]].enable()


def _wrap_phase(
    fn: Callable[..., Awaitable[T]], name: str, clock: PhaseClock, profiler: PhaseProfiler | None
) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def timed(*args: Any, **kwargs: Any) -> T:
        if profiler is not None:
            profiler.enter(name)
        clock.active.append(name)
        cpu0 = time.thread_time()
        start = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            clock.add(name, time.perf_counter() - start, time.thread_time() - cpu0)
            clock.active.pop()
            if profiler is not None:
                profiler.exit()

    return timed


# "_run": the provider calls (split, concurrent, with fallbacks), called "_call_provider" before.
# Each call's images are decoded and stored inside "_run" (while the other calls run).
USE_CASE_PHASES: Final = ("execute", "_reserve", "_run", "_complete")


@dataclass
class Harness:
    backend: str
    client: AsyncImageGen
    provider: TimingProvider
    clock: PhaseClock | None


def build_harness(
    backend: Backend,
    data_dir: Path,
    *,
    instrument: bool,
    profiler: PhaseProfiler | None = None,
) -> Harness:
    """An ``AsyncImageGen`` on default settings (plus ``data_dir`` and the database URL) whose
    provider is wrapped by a timer; with ``instrument``, also the inspector, the storage and
    the use case's phases, and SQL statements are counted."""
    from dependency_injector import providers
    from sqlalchemy import event

    from imagegen import AsyncImageGen, Settings
    from imagegen.bootstrap.container import build_container

    options: dict[str, Any] = {"data_dir": data_dir}
    if backend.database_url is not None:
        options["database_url"] = backend.database_url
    container = build_container(Settings(**options))
    gateways = container.gateways
    clock = PhaseClock() if instrument else None
    timer = TimingProvider(gateways.local_provider(), clock)
    gateways.local_provider.override(providers.Object(timer))
    if gateways.provider_registry().get("local") is not timer:
        raise RuntimeError("the provider override did not reach the provider registry")
    client = AsyncImageGen(container=container)
    if clock is not None:
        gateways.inspector.override(providers.Object(TimingInspector(gateways.inspector(), clock)))
        gateways.storage.override(providers.Object(TimingStorage(gateways.storage(), clock)))
        use_case = container.generate_images()
        for phase in USE_CASE_PHASES:
            setattr(use_case, phase, _wrap_phase(getattr(use_case, phase), phase, clock, profiler))
        event.listen(gateways.engine().sync_engine, "before_cursor_execute", clock.count_sql)
        if profiler is not None:
            # generate() minus execute() is the client's own share: give it its own profile.
            client.generate = _wrap_phase(  # type: ignore[method-assign,assignment]
                client.generate, "client", PhaseClock(), profiler
            )
    return Harness(backend.name, client, timer, clock)


# --- the generation loop -----------------------------------------------------------------------


@dataclass
class Samples:
    wall: list[float] = field(default_factory=list)
    provider: list[float] = field(default_factory=list)
    loop_cpu: list[float] = field(default_factory=list)  # event-loop CPU outside the provider
    phases_wall: list[dict[str, float]] = field(default_factory=list)
    phases_cpu: list[dict[str, float]] = field(default_factory=list)
    sql: list[dict[str, int]] = field(default_factory=list)

    @property
    def overhead(self) -> list[float]:
        return [w - p for w, p in zip(self.wall, self.provider, strict=True)]


async def generate_once(harness: Harness, size: str, seed: int, samples: Samples) -> None:
    before = len(harness.provider.calls)
    cpu0 = time.thread_time()
    start = time.perf_counter()
    await harness.client.generate(PROMPT, size=size, n=1, format="png", seed=seed)
    wall = time.perf_counter() - start
    cpu = time.thread_time() - cpu0
    calls = harness.provider.calls[before:]
    if len(calls) != 1:
        raise RuntimeError(f"expected one provider call per generation, saw {len(calls)}")
    samples.wall.append(wall)
    samples.provider.append(calls[0])
    samples.loop_cpu.append(cpu - harness.provider.cpu[-1])
    if harness.clock is not None:
        phase_wall, phase_cpu, sql = harness.clock.take()
        phase_wall["total"], phase_cpu["total"] = wall, cpu
        samples.phases_wall.append(phase_wall)
        samples.phases_cpu.append(phase_cpu)
        samples.sql.append(sql)


# The SQLite driver's connection threads: imagegen's own driver, or aiosqlite's (older code).
DRIVER_THREAD_NAMES: Final = ("imagegen-sqlite", "_connection_worker_thread")


def driver_threads_cpu() -> float:
    """CPU seconds used so far by the SQLite driver's connection threads (where SQLite runs)."""
    total = 0.0
    for thread in threading.enumerate():
        named = any(name in thread.name for name in DRIVER_THREAD_NAMES)
        if named and thread.ident is not None:
            with contextlib.suppress(OSError, AttributeError):
                total += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    return total


@dataclass
class PassResult:
    samples: dict[tuple[str, str], Samples]
    sqlite_driver_cpu_ms: float | None  # per SQLite generation, timed part only


async def run_pass(
    backends: Sequence[Backend],
    sizes: dict[str, int],
    tmp_root: Path,
    warmup: int,
    *,
    instrument: bool,
    profiler: PhaseProfiler | None = None,
    after_warmup: Callable[[], None] | None = None,
) -> PassResult:
    """Generate ``sizes[size]`` images of each size on each backend, interleaved evenly (so
    drift and other load on the machine hit every scenario alike). Each backend gets its own
    client and a fresh data dir; returns samples per (backend, size)."""
    harnesses: list[Harness] = []
    try:
        for backend in backends:
            data_dir = Path(tempfile.mkdtemp(prefix="data_", dir=tmp_root))
            harness = build_harness(backend, data_dir, instrument=instrument, profiler=profiler)
            harnesses.append(harness)
            discard = Samples()
            # The first call migrates the schema and opens the account (100 starting credits);
            # then credits for the run, then untimed generations of every size.
            await generate_once(harness, SMALL, 900_000, discard)
            await harness.client.grant_credits(1_000_000, memo="benchmark")
            for size in sizes:
                for i in range(warmup):
                    await generate_once(harness, size, 910_000 + i, discard)
            if harness.clock is not None:
                harness.clock.take()
        if after_warmup is not None:
            after_warmup()
        driver_cpu = driver_threads_cpu()
        schedule = sorted(
            ((i + 0.5) / count, b, size, i)
            for b in range(len(harnesses))
            for size, count in sizes.items()
            for i in range(count)
        )
        results = {(h.backend, size): Samples() for h in harnesses for size in sizes}
        gc.collect()
        for _position, b, size, i in schedule:
            harness = harnesses[b]
            await generate_once(harness, size, i, results[(harness.backend, size)])
        driver_cpu = driver_threads_cpu() - driver_cpu
        sqlite_runs = sum(count for size, count in sizes.items() if ("SQLite", size) in results)
        return PassResult(
            results, driver_cpu * 1000 / sqlite_runs if sqlite_runs and driver_cpu else None
        )
    finally:
        for harness in harnesses:
            await harness.client.aclose()


# --- PostgreSQL scratch database ---------------------------------------------------------------


def _libpq_url(url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def _mask(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<postgres url>"


def postgres_problem(admin_url: str) -> str | None:
    try:
        import psycopg

        with psycopg.connect(_libpq_url(admin_url), connect_timeout=3) as connection:
            connection.execute("SELECT 1")
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        return f"cannot connect to {_mask(admin_url)} ({type(exc).__name__}: {first_line})"
    return None


@contextlib.contextmanager
def postgres_scratch_database(admin_url: str) -> Iterator[tuple[str, str, str]]:
    """Create ``imagegen_bench_<random>`` on the server of ``admin_url`` (autocommit) and drop
    it afterwards, whatever happens. Yields (SQLAlchemy URL, database name, server version)."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = _libpq_url(admin_url)
    name = f"imagegen_bench_{secrets.token_hex(6)}"
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as connection:
        row = connection.execute("SHOW server_version").fetchone()
        version = str(row[0]).split()[0] if row else "?"
        connection.execute(f'CREATE DATABASE "{name}"')
    log(f"created scratch database {name}")
    try:
        url = make_url(admin).set(drivername="postgresql+psycopg", database=name)
        yield url.render_as_string(hide_password=False), name, version
    finally:
        try:
            with psycopg.connect(admin, autocommit=True, connect_timeout=5) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            log(f"dropped scratch database {name}")
        except Exception as exc:
            log(f"WARNING: could not drop scratch database {name}: {exc}")


# --- 2. import time ----------------------------------------------------------------------------

IMPORT_VARIANTS: Final = {
    "baseline": "pass",
    "import imagegen": "import imagegen",
    "from imagegen import ImageGen": "from imagegen import ImageGen",
}
ImportRow = tuple[int, float, float, str]  # depth, self us, cumulative us, module


def parse_importtime(stderr: str) -> list[ImportRow]:
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:") :].split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue  # the header line
        raw = parts[2]
        depth = (len(raw) - len(raw.lstrip(" ")) - 1) // 2
        rows.append((depth, float(parts[0]), float(parts[1]), raw.strip()))
    return rows


def imagegen_import_us(rows: list[ImportRow]) -> float:
    """All that importing imagegen caused: its top-level entries with their subtrees."""
    return sum(cum for depth, _s, cum, name in rows if depth == 0 and _root(name) == "imagegen")


def packages_self_us(rows: list[ImportRow]) -> dict[str, float]:
    """Self time by top-level package, within the subtrees imagegen's imports started."""
    totals: dict[str, float] = defaultdict(float)
    inside = False
    # A module is printed after its children: walking backwards, a depth-0 line opens a
    # subtree, and every deeper line that follows (until the next depth 0) belongs to it.
    for depth, self_us, _cum, name in reversed(rows):
        if depth == 0:
            inside = _root(name) == "imagegen"
        if inside:
            totals[_root(name)] += self_us
    return dict(totals)


def _root(module: str) -> str:
    return module.split(".", 1)[0]


def measure_imports(runs: int) -> dict[str, Any]:
    python = sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    wall: dict[str, list[float]] = defaultdict(list)
    itime: dict[str, list[float]] = defaultdict(list)
    packages: dict[str, list[dict[str, float]]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="imagegen_bench_imports_") as cwd:

        def run(args: list[str]) -> str:
            done = subprocess.run(
                [python, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(f"python {' '.join(args)} failed: {done.stderr[-500:]}")
            return done.stderr

        for code in IMPORT_VARIANTS.values():  # untimed: byte-compile, warm the page cache
            run(["-c", code])
        for _ in range(runs):  # round-robin: drift hits every variant alike
            for variant, code in IMPORT_VARIANTS.items():
                start = time.perf_counter()
                run(["-c", code])
                wall[variant].append(time.perf_counter() - start)
                if variant != "baseline":
                    rows = parse_importtime(run(["-X", "importtime", "-c", code]))
                    itime[variant].append(imagegen_import_us(rows) / 1000)
                    packages[variant].append(
                        {k: v / 1000 for k, v in packages_self_us(rows).items()}
                    )
    heaviest: dict[str, dict[str, float]] = {}
    for variant, per_run in packages.items():
        names = {name for one in per_run for name in one}
        medians = {n: statistics.median(one.get(n, 0.0) for one in per_run) for n in names}
        top = sorted(medians.items(), key=lambda item: -item[1])[:7]
        heaviest[variant] = {n: round(ms, 2) for n, ms in top}
    return {
        "runs": runs,
        "wall_ms": {v: statistics.median(s) * 1000 for v, s in wall.items()},
        "importtime_ms": {v: statistics.median(s) for v, s in itime.items()},
        "heaviest_packages_ms": heaviest,
    }


# --- 3. breakdown ------------------------------------------------------------------------------

# (key, label): rows that add up to the overhead (wall - provider) of each generation.
BREAKDOWN_ROWS: Final = (
    ("reserve", "reserve txn (_reserve)"),
    ("complete", "capture txn (_complete)"),
    ("put", "DAM write (storage.put: XMP, SHA-256, fsync, rename)"),
    ("inspect", "decode + validate (PillowInspector.inspect)"),
    ("call_rest", "_run rest: calls, hand-offs, provenance (provider, decode, write excluded)"),
    ("plan", "plan (parse, negotiate, fingerprint)"),
    ("client", "client (_start, command, GenerationResult)"),
)
OVERHEAD_LABEL: Final = "= overhead (wall - provider)"


def derive_phases(wall: dict[str, float], cpu: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Per generation: row key -> (wall seconds, event-loop-thread CPU seconds)."""

    def get(name: str) -> tuple[float, float]:
        return wall.get(name, 0.0), cpu.get(name, 0.0)

    def minus(a: tuple[float, float], *others: tuple[float, float]) -> tuple[float, float]:
        return a[0] - sum(o[0] for o in others), a[1] - sum(o[1] for o in others)

    total, execute, provider = get("total"), get("execute"), get("provider")
    reserve, call, complete = (get(n) for n in ("_reserve", "_run", "_complete"))
    inspect, put = get("inspect"), get("put")
    return {
        "reserve": reserve,
        "complete": complete,
        "put": put,
        "inspect": (inspect[0], 0.0),  # runs in a worker thread
        "call_rest": minus(call, provider, inspect, put),
        "plan": minus(execute, reserve, call, complete),
        "client": minus(total, execute),
        "overhead": minus(total, provider),
    }


SQL_PHASE: Final = {"reserve": "_reserve", "complete": "_complete"}


def summarize_breakdown(samples: Samples) -> list[dict[str, Any]]:
    derived = [
        derive_phases(w, c) for w, c in zip(samples.phases_wall, samples.phases_cpu, strict=True)
    ]
    overhead_mean = statistics.fmean(d["overhead"][0] for d in derived) * 1000
    rows = []
    for key, label in (*BREAKDOWN_ROWS, ("overhead", OVERHEAD_LABEL)):
        walls = [d[key][0] * 1000 for d in derived]
        mean = statistics.fmean(walls)
        if key == "overhead":
            sql = statistics.fmean(sum(s.values()) for s in samples.sql)
        else:
            sql = statistics.fmean(s.get(SQL_PHASE.get(key, "-"), 0) for s in samples.sql)
        rows.append(
            {
                "key": key,
                "label": label,
                "mean_ms": mean,
                "p50_ms": percentile(walls, 50),
                "share": mean / overhead_mean if overhead_mean else 0.0,
                "loop_cpu_ms": statistics.fmean(d[key][1] * 1000 for d in derived),
                "sql_statements": sql,
            }
        )
    return rows


# --- cProfile pass (64x64 on SQLite) -----------------------------------------------------------


class ThreadProfiles:
    """cProfile in every thread started while active (executor workers, the SQLite driver's thread):
    ``threading.setprofile`` installs a hook in each new thread; its first event starts a
    ``cProfile.Profile``, which replaces the hook for that thread."""

    def __init__(self) -> None:
        self.profiles: list[tuple[str, cProfile.Profile]] = []
        self._lock = threading.Lock()

    def _hook(self, _frame: Any, _event: str, _arg: Any) -> None:
        profile = cProfile.Profile()
        with self._lock:
            self.profiles.append((threading.current_thread().name, profile))
        profile.enable()

    def __enter__(self) -> ThreadProfiles:
        threading.setprofile(self._hook)
        return self

    def __exit__(self, *_exc: object) -> None:
        threading.setprofile(None)


StatKey = tuple[str, int, str]


def _stats(profile: cProfile.Profile) -> dict[StatKey, tuple[Any, ...]]:
    profile.create_stats()
    stats: dict[StatKey, tuple[Any, ...]] = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    return stats


IDLE: Final = frozenset(
    {
        "<method 'poll' of 'select.epoll' objects>",
        "<method 'get' of '_queue.SimpleQueue' objects>",
        "<method 'acquire' of '_thread.lock' objects>",
    }
)


def _where(key: StatKey) -> str:
    filename, line, func = key
    if filename == "~":
        return func
    path = filename.replace("\\", "/")
    for marker in ("/site-packages/", "/src/"):
        if marker in path:
            return f"{path.split(marker, 1)[1]}:{line}({func})"
    if "/lib/python" in path:
        path = path.split("/lib/python", 1)[1].split("/", 1)[-1]
    return f"{path}:{line}({func})"


def _package(key: StatKey) -> str:
    filename, _line, func = key
    if func in IDLE:
        return "idle: waiting for worker threads"
    if filename == "~":
        if "greenlet" in func:
            return "greenlet"
        return "C builtins"
    path = filename.replace("\\", "/")
    if "/site-packages/" in path:
        return _root(path.split("/site-packages/", 1)[1]).split("/")[0].removesuffix(".py")
    if "/src/imagegen/" in path:
        return "imagegen"
    if "/lib/python" in path:
        module = path.split("/lib/python", 1)[1].split("/", 1)[-1].split("/")[0]
        return f"stdlib {module.removesuffix('.py')}"
    return "other (benchmark harness)"


PROFILE_PHASES: Final = (
    ("_complete", "capture txn (_complete)"),
    ("_reserve", "reserve txn (_reserve)"),
    ("_run", "_run: provider calls (loop side; the provider's thread excluded)"),
    ("execute", "plan (execute minus its phases)"),
    ("client", "client (generate minus execute)"),
)

WORKER_BUCKETS: Final = (
    # (file suffix or "~", function, label, use cumulative time)
    ("storage/filesystem.py", "_put", "DAM write, total (FilesystemBlobStorage._put)", True),
    ("~", "<built-in method posix.fsync>", "  of which fsync() (2 files + 2 directories)", False),
    ("storage/filesystem.py", "_fsync_dir", "  of which directory fsyncs (_fsync_dir)", True),
    ("storage/xmp.py", "embed_xmp", "  of which XMP embed (embed_xmp)", True),
    ("~", "<built-in function openssl_sha256>", "  of which SHA-256", False),
    ("imaging.py", "inspect", "decode + validate (PillowInspector.inspect)", True),
    ("providers/local.py", "render", "(provider render, excluded from the overhead)", True),
)


def run_profile(tmp_root: Path, iterations: int) -> dict[str, Any]:
    profiler = PhaseProfiler()
    threads = ThreadProfiles()

    def forget_warmup() -> None:
        # Migrations and first-use costs ran during the warm-up; keep the steady state only.
        profiler.profiles.clear()  # no phase is running between generations
        for _name, profile in threads.profiles:
            profile.clear()

    with threads:
        # A fresh event loop: its executor threads (and the SQLite driver's) start under the hook.
        samples = asyncio.run(
            run_pass(
                [Backend("SQLite", None)],
                {SMALL: iterations},
                tmp_root,
                3,
                instrument=True,
                profiler=profiler,
                after_warmup=forget_warmup,
            )
        ).samples[("SQLite", SMALL)]

    per_gen = 1000 / iterations  # seconds in total -> ms per generation
    per_phase = {name: _stats(p) for name, p in profiler.profiles.items()}
    phase_ms = {
        name: sum(v[2] for v in stats.values()) * per_gen for name, stats in per_phase.items()
    }
    total = sum(phase_ms.get(name, 0.0) for name, _ in PROFILE_PHASES)
    phases = []
    for name, label in PROFILE_PHASES:
        stats = per_phase.get(name, {})
        packages: dict[str, float] = defaultdict(float)
        for key, value in stats.items():
            packages[_package(key)] += value[2] * per_gen
        busy = [(k, v) for k, v in stats.items() if k[2] not in IDLE]
        top = sorted(busy, key=lambda kv: -kv[1][2])[:5]
        repo = sorted(
            (
                (k, v)
                for k, v in stats.items()
                if "/persistence/" in k[0] and k[2] not in ("__init__", "<lambda>")
            ),
            key=lambda kv: -kv[1][3],
        )[:6]
        phases.append(
            {
                "name": label,
                "ms_per_gen": phase_ms.get(name, 0.0),
                "share": phase_ms.get(name, 0.0) / total if total else 0.0,
                "by_package": sorted(packages.items(), key=lambda kv: -kv[1])[:6],
                "top_tottime": [(_where(k), v[2] * per_gen) for k, v in top],
                "persistence_cumtime": [(_where(k), v[3] * per_gen) for k, v in repo],
            }
        )

    worker: dict[str, float] = defaultdict(float)
    for _thread, profile in threads.profiles:
        for (filename, _line, func), value in _stats(profile).items():
            for suffix, wanted, label, cumulative in WORKER_BUCKETS:
                if func == wanted and (filename == suffix or filename.endswith(suffix)):
                    worker[label] += value[3 if cumulative else 2] * per_gen
    return {
        "iterations": iterations,
        "wall_overhead_ms": statistics.fmean(samples.overhead) * 1000,
        "phases": phases,
        "worker": [(label, worker.get(label, 0.0)) for _s, _f, label, _c in WORKER_BUCKETS],
    }


# --- environment -------------------------------------------------------------------------------


def _filesystem_of(path: Path) -> str:
    resolved = str(path.resolve())
    best, found = "", "unknown filesystem"
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1]
                inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, found = mount, f"{parts[2]} on {parts[0]}"
    except OSError:
        pass
    return found


def fsync_probe(directory: Path, rounds: int = 20) -> dict[str, float]:
    """Raw latency (p50 ms) of what the DAM write does twice per image: write a small file and
    fsync it, rename it, fsync the directory. Explains the DAM write row; varies with disk load."""
    file_ms, dir_ms = [], []
    fd_dir = os.open(directory, os.O_RDONLY)
    try:
        for i in range(rounds):
            temp, final = directory / f".probe{i}.part", directory / f"probe{i}"
            start = time.perf_counter()
            with open(temp, "wb") as handle:
                handle.write(os.urandom(4096))
                handle.flush()
                os.fsync(handle.fileno())
            file_ms.append((time.perf_counter() - start) * 1000)
            os.replace(temp, final)
            start = time.perf_counter()
            os.fsync(fd_dir)
            dir_ms.append((time.perf_counter() - start) * 1000)
            final.unlink()
    finally:
        os.close(fd_dir)
    return {
        "file_write_fsync_p50_ms": percentile(file_ms, 50),
        "dir_fsync_p50_ms": percentile(dir_ms, 50),
    }


def environment(tmp_root: Path) -> dict[str, Any]:
    import PIL
    import sqlalchemy

    env: dict[str, Any] = {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": f"{platform.system()} {platform.machine()}",
        "cpus": os.cpu_count() or 1,
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sqlalchemy.__version__,
        "pillow": PIL.__version__,
        "temp_dir": str(tmp_root),
        "filesystem": _filesystem_of(tmp_root),
        "load_average_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "imagegen_env": sorted(k for k in os.environ if k.startswith("IMAGEGEN_")),
        "fsync_start": fsync_probe(tmp_root),
    }
    return env


# --- verdicts and ratios -----------------------------------------------------------------------


def conclude(result: dict[str, Any]) -> None:
    by = {(r["backend"], r["size"]): r for r in result["overhead"]}
    verdicts, ratios = result["verdicts"], result["ratios"]
    for size in (SMALL, LARGE):
        if (row := by.get(("SQLite", size))) is not None:
            p50 = row["overhead"]["p50"]
            verdict = "PASS" if p50 <= TARGET_OVERHEAD_P50_MS else "FAIL"
            verdicts["overhead"].append(
                f"Target: p50 overhead <= {TARGET_OVERHEAD_P50_MS:g} ms per image on SQLite. "
                f"{size}: {p50:.2f} ms -> {verdict}"
            )
    for size in (SMALL, LARGE):
        sq, pg = by.get(("SQLite", size)), by.get(("PostgreSQL", size))
        if sq and pg:
            ratios.append(
                f"PostgreSQL / SQLite overhead p50, {size}: "
                f"{pg['overhead']['p50'] / sq['overhead']['p50']:.2f}x"
            )
    for backend in ("SQLite", "PostgreSQL"):
        small, large = by.get((backend, SMALL)), by.get((backend, LARGE))
        if small and large:
            s, g = small["overhead"]["p50"], large["overhead"]["p50"]
            ratios.append(
                f"{backend} overhead p50, {LARGE} / {SMALL}: {g / s:.2f}x "
                f"(+{g - s:.2f} ms for 256x the pixels)"
            )
    for row in result["overhead"]:
        ratios.append(
            f"{row['backend']} {row['size']}: overhead / provider time (p50) = "
            f"{row['overhead']['p50'] / row['provider']['p50']:.2f}x"
        )
    imports = result["imports"]
    itime = imports["importtime_ms"]["import imagegen"]
    delta = imports["wall_ms"]["import imagegen"] - imports["wall_ms"]["baseline"]
    verdict = "PASS" if itime <= TARGET_IMPORT_MS else "FAIL"
    verdicts["imports"].append(
        f"Target: `import imagegen` <= {TARGET_IMPORT_MS:g} ms. {itime:.1f} ms by -X importtime, "
        f"{delta:.1f} ms wall over a bare interpreter -> {verdict}"
    )
    lazy = imports["importtime_ms"]["from imagegen import ImageGen"]
    verdicts["imports"].append(
        f"First use, `from imagegen import ImageGen`: {lazy:.1f} ms "
        f"({lazy / itime:.0f}x `import imagegen`; outside the target)"
    )


# --- report ------------------------------------------------------------------------------------


def render_report(result: dict[str, Any]) -> str:
    out: list[str] = []
    add = out.append
    env = result["environment"]
    rule = "=" * 104
    add(rule)
    sections = " + ".join(result.get("sections", SECTIONS))
    add(f"imagegen benchmarks ({'quick' if result['quick'] else 'full'} run: {sections})")
    add(
        f"  {env['python']}, {env['platform']}, {env['cpus']} CPUs; SQLite {env['sqlite']}, "
        f"SQLAlchemy {env['sqlalchemy']}, Pillow {env['pillow']}"
    )
    add(f"  temp data dirs: {env['temp_dir']} ({env['filesystem']})")
    for name, info in result["backends"].items():
        add(f"  {name}: {info}")
    load0, load1 = env.get("load_average_start"), env.get("load_average_end")
    if load0 is not None and load1 is not None:
        note = ""
        if max(load0, load1) > 0.5 * env["cpus"]:
            note = "  <- other processes compete for the CPU: absolute times are noisy"
        add(f"  1-min load average: {load0:.2f} at start, {load1:.2f} at end{note}")
    f0, f1 = env["fsync_start"], env.get("fsync_end") or env["fsync_start"]
    add(
        f"  raw disk latency (p50): write 4 KiB + fsync {f0['file_write_fsync_p50_ms']:.2f} ms, "
        f"directory fsync {f0['dir_fsync_p50_ms']:.2f} ms at start; "
        f"{f1['file_write_fsync_p50_ms']:.2f} / {f1['dir_fsync_p50_ms']:.2f} ms at end"
    )
    if env["imagegen_env"]:
        add(f"  NOTE: IMAGEGEN_* variables are set: {', '.join(env['imagegen_env'])}")
    add(rule)
    if "overhead" in result:
        out += render_core(result)
    if "providers" in result:
        add("")
        out += _provider_benchmark().render_section(result["providers"], number=4)
    if "billing" in result:
        add("")
        out += _sibling("billing").render_section(result["billing"], number=5)
    if "http" in result:
        add("")
        out += _service_benchmark().render_section(result["http"], number=6)
    add("")
    add(f"Total benchmark time: {result['elapsed_s']:.0f} s")
    return "\n".join(out)


def render_core(result: dict[str, Any]) -> list[str]:
    """Sections 1-3: overhead per generation, import time, where the overhead goes."""
    out: list[str] = []
    add = out.append
    add("")
    add("1. Library overhead per generation (n=1, PNG, local provider)")
    add("   overhead = wall time of AsyncImageGen.generate() - time spent inside")
    add("   LocalProvider.generate(), both measured per call; backends and sizes interleaved (ms).")
    add("   CPU p50: the overhead's CPU time on the event-loop thread alone, which waiting and")
    add("   other load barely affect: a floor for the overhead on an idle machine.")
    add("")
    header = (
        f"   {'backend':<11}{'size':<10}{'n':>4} | {'wall p50':>8} {'provider':>8} |"
        f" {'p50':>7} {'p95':>7} {'p99':>7} {'mean':>7} | {'% of wall':>9} | {'CPU p50':>7}"
    )
    add(header)
    add("   " + "-" * (len(header) - 3))
    for row in result["overhead"]:
        o, w, p, cpu = row["overhead"], row["wall"], row["provider"], row["loop_cpu"]
        add(
            f"   {row['backend']:<11}{row['size']:<10}{o['n']:>4} | {w['p50']:8.2f}"
            f" {p['p50']:8.2f} | {o['p50']:7.2f} {o['p95']:7.2f} {o['p99']:7.2f}"
            f" {o['mean']:7.2f} | {100 * o['mean'] / w['mean']:8.1f}% | {cpu['p50']:7.2f}"
        )
    for skipped in result["skipped"]:
        add(f"   {skipped}")
    add("")
    for verdict in result["verdicts"]["overhead"]:
        add(f"   {verdict}")
    if result["ratios"]:
        add("   Ratios (same run):")
        for line in result["ratios"]:
            add(f"     {line}")

    imports = result["imports"]
    add("")
    add(f"2. Import time (median of {imports['runs']} fresh interpreters per statement, ms)")
    add("")
    base = imports["wall_ms"]["baseline"]
    add(f"   {'statement':<34}{'-X importtime':>14}{'wall':>9}{'wall - baseline':>17}")
    add(f"   {'python -c pass (baseline)':<34}{'':>14}{base:9.1f}{'':>17}")
    for variant in ("import imagegen", "from imagegen import ImageGen"):
        wall = imports["wall_ms"][variant]
        add(
            f"   {variant:<34}{imports['importtime_ms'][variant]:14.1f}{wall:9.1f}"
            f"{wall - base:17.1f}"
        )
    add("")
    for verdict in result["verdicts"]["imports"]:
        add(f"   {verdict}")
    add("   Heaviest packages (median self time, ms):")
    for variant, heaviest in imports["heaviest_packages_ms"].items():
        listed = ", ".join(f"{name} {ms:.1f}" for name, ms in heaviest.items())
        add(f"     {variant}: {listed}")

    add("")
    add("3. Where the overhead goes")
    breakdown = result["breakdown"]
    if breakdown:
        columns = list(breakdown)
        add("   a) Instrumented pass (separate from 1; timers around the use case's phases, the")
        add("      inspector and the storage; scenarios interleaved). Mean ms per generation and")
        add("      [share of the mean overhead]; the rows add up to the overhead.")
        add("")
        head = f"   {'phase':<54}" + "".join(
            f"{c.replace('PostgreSQL', 'PG'):>18}" for c in columns
        )
        add(head)
        add("   " + "-" * (len(head) - 3))
        for key, label in (*BREAKDOWN_ROWS, ("overhead", OVERHEAD_LABEL)):
            cells = []
            for column in columns:
                row = next(r for r in breakdown[column] if r["key"] == key)
                cells.append(f"{row['mean_ms']:7.2f} [{100 * row['share']:5.1f}%]")
            add(f"   {label:<54}" + "".join(f"{c:>18}" for c in cells))
        first = columns[0]
        add("")
        add(f"   b) {first}: wall time vs CPU time of the event-loop thread (ms, mean); the")
        add("      difference is waiting for worker threads (SQLite driver, fsync, decoding).")
        add(f"      {'':<54}{'wall':>7}{'loop CPU':>10}{'waiting':>9}{'SQL stmts':>11}")
        for row in breakdown[first]:
            sql = f"{row['sql_statements']:.0f}" if row["sql_statements"] else ""
            add(
                f"      {row['label']:<54}{row['mean_ms']:7.2f}{row['loop_cpu_ms']:10.2f}"
                f"{row['mean_ms'] - row['loop_cpu_ms']:9.2f}{sql:>11}"
            )
        add("      (SQL stmts: statements sent per generation, COMMIT not counted)")
        driver = result.get("sqlite_driver_cpu_ms")
        if driver is not None:
            add("      CPU of the SQLite driver's connection thread (SQLite itself + the driver):")
            add(f"      {driver:.2f} ms per SQLite generation.")
    profile = result.get("profile")
    if profile:
        add("")
        add(
            f"   c) cProfile, SQLite {SMALL}, {profile['iterations']} generations, aggregated by"
            " use-case phase."
        )
        add(
            "      ms per generation under the profiler (which slows Python code, so use the"
            f" shares);\n      mean wall overhead during this run: "
            f"{profile['wall_overhead_ms']:.2f} ms."
        )
        for phase in sorted(profile["phases"], key=lambda p: -p["ms_per_gen"]):
            add("")
            add(
                f"      {phase['name']:<66}{phase['ms_per_gen']:7.2f}  {100 * phase['share']:5.1f}%"
            )
            packages = ", ".join(f"{name} {ms:.2f}" for name, ms in phase["by_package"] if ms > 0)
            add(f"        by package: {packages}")
            if phase["ms_per_gen"] > 1:
                add("        top functions (own time):")
                for where, ms in phase["top_tottime"][:3]:
                    add(f"          {ms:6.2f}  {where[:88]}")
                if phase["persistence_cumtime"]:
                    add("        persistence calls (cumulative, approximate under greenlets):")
                    for where, ms in phase["persistence_cumtime"]:
                        add(f"          {ms:6.2f}  {where[:88]}")
        add("")
        add("      Worker threads (cProfile in each thread), ms per generation:")
        for label, ms in profile["worker"]:
            add(f"        {label:<70}{ms:7.2f}")
    return out


# --- main --------------------------------------------------------------------------------------


def _ensure_imagegen() -> None:
    try:
        import imagegen  # noqa: F401
    except ModuleNotFoundError:
        python = VENV / "bin" / "python"
        if python.exists() and Path(sys.prefix).resolve() != VENV.resolve():
            log(f"imagegen is not importable by {sys.executable}; re-running with {python}")
            os.execv(python, [str(python), *sys.argv])
        sys.exit("imagegen is not installed: run `pip install -e '.[dev]'` in the repository root")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark imagegen: overhead per generation, import time, breakdown, "
        "and provider calls (32 images, 300 ms latency, concurrency cap 8)."
    )
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("IMAGEGEN_BENCH_POSTGRES_URL")
        or os.environ.get("IMAGEGEN_TEST_POSTGRES_URL")
        or DEFAULT_ADMIN_URL,
        help="any existing database on the server: a scratch database imagegen_bench_<random> "
        "is created next to it and dropped afterwards (default: $IMAGEGEN_BENCH_POSTGRES_URL, "
        f"$IMAGEGEN_TEST_POSTGRES_URL or {DEFAULT_ADMIN_URL})",
    )
    parser.add_argument("--no-postgres", action="store_true", help="benchmark SQLite only")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--only",
        choices=SECTIONS,
        default=None,
        help="run one section: core (overhead per generation, import time, breakdown), "
        "providers (32 images on emulated providers with 300 ms latency), billing "
        "(reservations + captures per second, SQLite and PostgreSQL) or http "
        "(generations/s and latency through imagegen serve); default: all",
    )
    parser.add_argument(
        "--tmpdir", type=Path, default=None, help="parent of the temp data dirs (default: $TMPDIR)"
    )
    return parser.parse_args(argv)


def run_core(args: argparse.Namespace, plan: Plan, result: dict[str, Any]) -> None:
    """Sections 1-3: overhead per generation, import time, breakdown (fills ``result``)."""
    result.update(
        {
            "plan": asdict(plan),
            "targets": {"overhead_p50_ms": TARGET_OVERHEAD_P50_MS, "import_ms": TARGET_IMPORT_MS},
            "backends": {},
            "overhead": [],
            "skipped": [],
            "breakdown": {},
            "ratios": [],
            "verdicts": {"overhead": [], "imports": []},
        }
    )
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(
            tempfile.TemporaryDirectory(prefix="imagegen_bench_", dir=args.tmpdir)
        )
        tmp_root = Path(tmp)
        result["environment"] = environment(tmp_root)
        backends = [Backend("SQLite", None)]
        result["backends"]["SQLite"] = "embedded default (fresh data dir; WAL, synchronous=NORMAL)"
        if args.no_postgres:
            result["backends"]["PostgreSQL"] = "SKIPPED (--no-postgres)"
            result["skipped"].append("PostgreSQL: skipped (--no-postgres)")
        elif (problem := postgres_problem(args.postgres_url)) is not None:
            result["backends"]["PostgreSQL"] = f"SKIPPED: {problem}"
            result["skipped"].append(f"PostgreSQL: skipped: {problem}")
            log(f"PostgreSQL skipped: {problem}")
        else:
            url, name, version = stack.enter_context(postgres_scratch_database(args.postgres_url))
            server = _mask(args.postgres_url).rsplit("/", 1)[0]
            result["backends"]["PostgreSQL"] = (
                f"{version} at {server}, scratch database {name} (dropped afterwards)"
            )
            backends.append(Backend("PostgreSQL", url))

        names = " + ".join(b.name for b in backends)
        log(f"headline pass: {names}, {plan.small} x {SMALL} + {plan.large} x {LARGE} each ...")
        measured = asyncio.run(
            run_pass(backends, {SMALL: plan.small, LARGE: plan.large}, tmp_root, plan.warmup,
                     instrument=False)
        )  # fmt: skip
        for (backend, size), samples in measured.samples.items():
            result["overhead"].append(
                {
                    "backend": backend,
                    "size": size,
                    "wall": asdict(Summary.of(samples.wall)),
                    "provider": asdict(Summary.of(samples.provider)),
                    "overhead": asdict(Summary.of(samples.overhead)),
                    "loop_cpu": asdict(Summary.of(samples.loop_cpu)),
                }
            )

        sizes = {SMALL: plan.breakdown_small, LARGE: plan.breakdown_large}
        log(f"instrumented pass: {' + '.join(f'{n} x {s}' for s, n in sizes.items())} each ...")
        measured = asyncio.run(run_pass(backends, sizes, tmp_root, plan.warmup, instrument=True))
        for (backend, size), samples in measured.samples.items():
            result["breakdown"][f"{backend} {size}"] = summarize_breakdown(samples)
        result["sqlite_driver_cpu_ms"] = measured.sqlite_driver_cpu_ms

        log(f"cProfile pass: {plan.profile} x {SMALL} on SQLite ...")
        result["profile"] = run_profile(tmp_root, plan.profile)

    log(f"import time: {plan.import_runs} fresh interpreters per statement ...")
    result["imports"] = measure_imports(plan.import_runs)
    conclude(result)


def _sibling(name: str) -> ModuleType:
    """benchmarks/<name>.py, whether this file runs as a script or as ``benchmarks.run``."""
    if __package__:
        return importlib.import_module(f"{__package__}.{name}")
    return importlib.import_module(name)  # the script's own directory is on sys.path


def _provider_benchmark() -> ModuleType:
    return _sibling("providers")


def _service_benchmark() -> ModuleType:
    return _sibling("service")


def run_http(args: argparse.Namespace) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        tmp = Path(
            stack.enter_context(
                tempfile.TemporaryDirectory(prefix="imagegen_bench_", dir=args.tmpdir)
            )
        )
        url, backend = None, "SQLite"
        if not args.no_postgres and postgres_problem(args.postgres_url) is None:
            url, _name, version = stack.enter_context(postgres_scratch_database(args.postgres_url))
            backend = f"PostgreSQL {version}"
        return _service_benchmark().run_section(args.quick, tmp, url, backend, workers=(1, 2))


def _billing_postgres_url(args: argparse.Namespace) -> str | None:
    if args.no_postgres:
        return None
    problem = postgres_problem(args.postgres_url)
    if problem is not None:
        log(f"billing: PostgreSQL skipped: {problem}")
        return None
    return _libpq_url(args.postgres_url)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _ensure_imagegen()
    sections = SECTIONS if args.only is None else (args.only,)
    started = time.perf_counter()
    result: dict[str, Any] = {"quick": args.quick, "sections": list(sections)}
    if "core" in sections:
        run_core(args, Plan.of(args.quick), result)
    else:
        with tempfile.TemporaryDirectory(prefix="imagegen_bench_", dir=args.tmpdir) as tmp:
            result["environment"] = environment(Path(tmp))
            result["backends"] = {}
    if "providers" in sections:
        log("provider calls: 32 images on emulated providers (300 ms latency, cap 8) ...")
        result["providers"] = _provider_benchmark().run_section(args.quick, args.tmpdir)
    if "billing" in sections:
        log("billing: reservations + captures per second, SQLite and PostgreSQL ...")
        result["billing"] = _sibling("billing").run_section(
            args.quick, args.tmpdir, _billing_postgres_url(args)
        )
    if "http" in sections:
        log("HTTP service: synchronous generations through imagegen serve ...")
        result["http"] = run_http(args)
    result["environment"]["load_average_end"] = (
        os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    )
    with tempfile.TemporaryDirectory(prefix="imagegen_bench_", dir=args.tmpdir) as tmp:
        result["environment"]["fsync_end"] = fsync_probe(Path(tmp))
    result["elapsed_s"] = time.perf_counter() - started
    print(json.dumps(result, indent=2) if args.json else render_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
