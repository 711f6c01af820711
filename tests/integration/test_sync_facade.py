"""``imagegen.ImageGen``, the synchronous facade: from plain sync code, from inside a running
event loop, from several threads, and a clean ``close()`` — on SQLite and PostgreSQL.

Every test runs on SQLite and on PostgreSQL (conftest's ``database_url``). On
PostgreSQL the module shares one migrated database and empties it before each test: creating
and migrating a database per test costs ~0.6 s.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

import imagegen
from imagegen import ImageGen, Settings

TINY = "64x64"


# --- databases ---------------------------------------------------------------------------------


# --- helpers -----------------------------------------------------------------------------------


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "imagegen-loop" and t.is_alive()]


def open_connections(settings: Settings) -> int:
    """Database connections still open (SQLite: this process's open files on the database;
    PostgreSQL: client backends on the database, polled briefly because a server backend
    leaves pg_stat_activity a moment after its client disconnects)."""
    url = make_url(settings.database_url_value())
    if url.get_backend_name() == "sqlite":
        database = os.path.realpath(str(url.database))
        held = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            held += target == database
        return held
    deadline = time.monotonic() + 3
    dsn = settings.database_url_value().replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as connection:
        while True:
            row = connection.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            ).fetchone()
            assert row is not None
            if row[0] == 0 or time.monotonic() > deadline:
                return int(row[0])
            time.sleep(0.02)


def run_the_whole_api(gen: ImageGen, export_dir: Path) -> None:
    """Every ImageGen method once, checking the answers fit together."""
    models = {(m.provider, m.model): m for m in gen.models()}
    assert models[("local", "procedural")].credits_per_image == 1
    assert {provider for provider, _ in models} == {"local", "openai", "replicate", "stability"}
    estimate = gen.estimate("a red fox", n=2, size=TINY)
    assert estimate.credits == 2

    result = gen.generate("a red fox", n=2, size=TINY, seed=3, idempotency_key="sync-1")
    assert result.status == "succeeded"
    assert result.credits_charged == estimate.credits
    assert all(image.path is not None and image.path.is_file() for image in result.images)
    assert gen.generate("a red fox", n=2, size=TINY, seed=3, idempotency_key="sync-1").replayed

    assert gen.get_generation(result.id).images == result.images
    page = gen.history(limit=1)
    assert [g.id for g in page.items] == [result.id]
    assert page.next_cursor is None

    asset = gen.save_to_dam(result.images[0], tags=["sync"], title="Sync fox")
    assert gen.get_asset(asset.id).tags == ("sync",)
    assert [a.id for a in gen.assets(tag="sync").items] == [asset.id]
    exported = gen.export_asset(asset.id, export_dir)
    assert asset.path is not None
    assert exported.read_bytes() == asset.path.read_bytes()

    granted = gen.grant_credits(10, memo="top-up")
    assert (granted.balance, granted.reserved) == (108, 0)
    assert gen.balance().available == 108
    assert gen.verify_ledger() == []
    assert gen.sweep() == 0


# --- tests -------------------------------------------------------------------------------------


def test_sync_facade_runs_the_whole_api_from_plain_sync_code(
    settings: Settings, tmp_path: Path
) -> None:
    before = len(loop_threads())
    with ImageGen(settings) as gen:
        assert gen.settings is settings or gen.settings == settings
        run_the_whole_api(gen, tmp_path / "exports")
    assert len(loop_threads()) == before
    assert open_connections(settings) == 0


async def test_sync_facade_works_inside_a_running_event_loop(
    settings: Settings, tmp_path: Path
) -> None:
    running = asyncio.get_running_loop()
    before = len(loop_threads())

    gen = ImageGen(settings)
    try:
        run_the_whole_api(gen, tmp_path / "exports")
    finally:
        gen.close()

    assert asyncio.get_running_loop() is running
    assert not running.is_closed()
    assert len(loop_threads()) == before
    assert open_connections(settings) == 0
    await asyncio.sleep(0)  # the test's own loop still works


def test_sync_facade_raises_the_typed_errors(settings: Settings) -> None:
    with ImageGen(settings) as gen:
        with pytest.raises(imagegen.InvalidPrompt):
            gen.generate("   ")
        with pytest.raises(imagegen.InvalidSize):
            gen.estimate(size="abc")
        with pytest.raises(imagegen.ProviderUnavailable):
            gen.generate("a fox [local:fail]", size=TINY)
        with pytest.raises(imagegen.AssetNotFound):
            gen.get_asset("ast_missing")
        with pytest.raises(imagegen.GenerationNotFound):
            gen.get_generation("gen_missing")
        with pytest.raises(imagegen.InvalidParameter):
            gen.grant_credits(0)
        balance = gen.balance()
        assert (balance.balance, balance.reserved) == (100, 0)
        assert [g.status for g in gen.history().items] == ["failed"]
        assert gen.verify_ledger() == []


def test_sync_facade_serves_several_threads_at_once(settings: Settings) -> None:
    with ImageGen(settings) as gen, ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: gen.generate(f"fox {i}", size=TINY), range(8)))
        assert all(r.status == "succeeded" for r in results)
        assert len({r.id for r in results}) == 8
        assert gen.balance().balance == 92
        assert gen.verify_ledger() == []


def test_sync_and_async_clients_share_one_database(settings: Settings) -> None:
    async def read(generation_id: str) -> tuple[str, int]:
        async with imagegen.AsyncImageGen(settings) as client:
            generation = await client.get_generation(generation_id)
            return generation.status, (await client.balance()).balance

    with ImageGen(settings) as gen:
        result = gen.generate("a shared fox", size=TINY)
    assert asyncio.run(read(result.id)) == ("succeeded", 99)


def test_from_env_reads_settings_from_the_environment_with_overrides(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEGEN_DATA_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("IMAGEGEN_STARTING_CREDITS", "7")
    with ImageGen.from_env(database_url=settings.database_url_value()) as gen:
        assert gen.settings.data_dir == tmp_path / "from-env"
        result = gen.generate("a fox", size=TINY)
        assert gen.balance().balance == 6
        (image,) = result.images
        assert image.path is not None
        assert image.path.is_relative_to(tmp_path / "from-env" / "assets")


def test_close_of_an_unused_facade_is_clean(sqlite_settings: Settings) -> None:
    before = len(loop_threads())
    gen = ImageGen(sqlite_settings)
    gen.close()
    assert len(loop_threads()) == before


def test_close_can_be_called_twice(sqlite_settings: Settings) -> None:
    gen = ImageGen(sqlite_settings)
    gen.generate("a fox", size=TINY)
    gen.close()
    problem = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            gen.close()
        except Exception as error:
            problem = repr(error)
        gc.collect()  # collect the coroutine a failing close() left behind, inside this block
    assert problem is None
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []
