"""Fakes for testing code that uses imagegen: no database, no files, no network.

============================  =====================  ========================================
Fake                          Port                   What it gives a test
============================  =====================  ========================================
``ManualClock``               ``Clock``              a UTC time you ``set()`` and ``advance()``
``SequentialIds``             ``IdGenerator``        ``gen_000001``, ``gen_000002``, …
``InMemoryUnitOfWorkFactory`` ``UnitOfWorkFactory``  repositories over dicts, real transactions,
                                                     events committed to ``.outbox``
``InMemoryBlobStorage``       ``BlobStorage``        the DAM's bytes in ``.blobs``
``ScriptedProvider``          ``ImageProvider``      scripted failures and delays, ``.requests``
``InMemoryJobQueue``          ``JobQueue``           jobs written in the caller's transaction,
                                                     leases on the clock, ``run_pending()``
``RecordingWebhookTransport`` ``WebhookTransport``   no network: ``.sent``, ``answer_next()``
============================  =====================  ========================================

Each ``InMemoryUnitOfWork`` also carries the webhook repositories (``uow.outbox``,
``uow.webhooks``) as the SQL unit of work does, so ``ManageWebhooks`` and ``DeliverWebhooks``
run in memory too (see ``imagegen.testing.fakes_webhooks``).

The repositories, the unit of work and the job queue pass the same contract tests as the SQL
adapters (``tests/contract``): tenant scoping, idempotency keys, history filters, cursor
pagination (newest first), leases and retries of jobs and webhook deliveries, and nothing
visible until ``commit()`` — leaving ``async with uow:`` without it discards every write.

Plug them into the composition root with ``override`` (dependency-injector takes plain
objects), before the first call::

    from imagegen import AsyncImageGen, ProviderUnavailable, Settings
    from imagegen.bootstrap.container import build_container
    from imagegen.testing import (
        InMemoryBlobStorage, InMemoryUnitOfWorkFactory, ManualClock, ScriptedProvider,
        SequentialIds,
    )

    async def test_a_provider_outage_costs_nothing(tmp_path: Path) -> None:
        # auto_migrate=False: no database is created; data_dir keeps stray files in tmp_path
        container = build_container(Settings(data_dir=tmp_path, auto_migrate=False))
        uow, provider = InMemoryUnitOfWorkFactory(), ScriptedProvider("local")
        container.gateways.uow.override(uow)
        container.gateways.storage.override(InMemoryBlobStorage())
        container.gateways.clock.override(ManualClock())
        container.gateways.ids.override(SequentialIds())
        container.gateways.local_provider.override(provider)  # replaces the "local" provider

        provider.fail_next(ProviderUnavailable("down for maintenance"))
        async with AsyncImageGen(container=container) as gen:
            with pytest.raises(ProviderUnavailable):
                await gen.generate("a red fox")
            assert (await gen.balance()).available == 100

        assert [e.name for e in uow.outbox] == ["generation.failed"]
        assert provider.requests[0].prompt == "a red fox"

Each fake is also usable on its own, e.g. to unit-test a use case:
``GetGeneration(uow=InMemoryUnitOfWorkFactory())``.
"""

from imagegen.testing.fakes import (
    InMemoryBlobStorage,
    InMemoryUnitOfWork,
    InMemoryUnitOfWorkFactory,
    ManualClock,
    ScriptedProvider,
    SequentialIds,
)
from imagegen.testing.fakes_jobs import InMemoryJobQueue
from imagegen.testing.fakes_webhooks import (
    InMemoryOutboxRepository,
    InMemoryWebhookRepository,
    RecordingWebhookTransport,
)

__all__ = [
    "InMemoryBlobStorage",
    "InMemoryJobQueue",
    "InMemoryOutboxRepository",
    "InMemoryUnitOfWork",
    "InMemoryUnitOfWorkFactory",
    "InMemoryWebhookRepository",
    "ManualClock",
    "RecordingWebhookTransport",
    "ScriptedProvider",
    "SequentialIds",
]
