"""Test your own code against imagegen without a database, files or a provider:
swap the adapters for the fakes in ``imagegen.testing``.

Run: python examples/testing_with_fakes.py   (prints "ok" and writes nothing to disk)
"""

import asyncio
import tempfile

from imagegen import AsyncImageGen, ProviderUnavailable, Settings
from imagegen.bootstrap.container import build_container
from imagegen.testing import (
    InMemoryBlobStorage,
    InMemoryUnitOfWorkFactory,
    ManualClock,
    ScriptedProvider,
    SequentialIds,
)


async def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        container = build_container(Settings(data_dir=scratch, auto_migrate=False))
        uow, storage, provider = (
            InMemoryUnitOfWorkFactory(),
            InMemoryBlobStorage(),
            ScriptedProvider("local"),
        )
        container.gateways.uow.override(uow)
        container.gateways.storage.override(storage)
        container.gateways.clock.override(ManualClock())
        container.gateways.ids.override(SequentialIds())
        container.gateways.local_provider.override(provider)  # answers for "local"

        async with AsyncImageGen(container=container) as gen:
            result = await gen.generate("a red fox", n=2, size="64x64")
            assert result.id == "gen_000001"
            assert result.credits_charged == 2
            assert len(storage.blobs) == 2

            provider.fail_next(ProviderUnavailable("down for maintenance"))
            try:
                await gen.generate("a blue fox")
                raise AssertionError("the scripted outage did not reach the caller")
            except ProviderUnavailable as error:
                print("provider failed as scripted:", error)
            balance = await gen.balance()
            assert balance.available == 98  # the failure cost nothing
            assert balance.reserved == 0

        assert [event.name for event in uow.outbox] == ["generation.succeeded", "generation.failed"]
        assert [request.prompt for request in provider.requests] == ["a red fox", "a blue fox"]
        print("ok")


asyncio.run(main())
