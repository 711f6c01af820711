"""The composition root: the one place that knows which adapter implements which port.

Tests and embedding apps swap an adapter with ``container.<name>.override(fake)``.
"""

from __future__ import annotations

from datetime import timedelta

from dependency_injector import containers, providers

from imagegen.application.commands import GenerationPolicy
from imagegen.application.use_cases import (
    EstimateCost,
    ExportAsset,
    GenerateImages,
    GetAsset,
    GetBalance,
    GetGeneration,
    GrantCredits,
    LedgerReport,
    ListAssets,
    ListHistory,
    ListModels,
    SaveToDam,
    SweepExpiredReservations,
)
from imagegen.bootstrap.settings import Settings
from imagegen.infrastructure.catalog import StaticModelCatalog, local_models
from imagegen.infrastructure.imaging import PillowInspector
from imagegen.infrastructure.persistence.engine import create_engine
from imagegen.infrastructure.persistence.uow import SqlUnitOfWorkFactory
from imagegen.infrastructure.providers.local import LocalProvider
from imagegen.infrastructure.providers.registry import ProviderRegistry
from imagegen.infrastructure.storage.filesystem import FilesystemBlobStorage
from imagegen.infrastructure.system import SystemClock, UlidGenerator


def _policy(settings: Settings) -> GenerationPolicy:
    return GenerationPolicy(
        reservation_ttl=timedelta(seconds=settings.reservation_ttl_seconds),
        provider_timeout=timedelta(seconds=settings.provider_timeout_seconds),
        max_prompt_length=settings.max_prompt_length,
        starting_credits=settings.starting_credits,
    )


def _local_provider(settings: Settings) -> LocalProvider:
    return LocalProvider(latency_s=settings.local_latency_ms / 1000)


def _catalog(settings: Settings) -> StaticModelCatalog:
    return StaticModelCatalog(
        local_models(settings.local_credits_per_image), settings.default_provider
    )


class Gateways(containers.DeclarativeContainer):
    """Adapters to the outside world."""

    settings = providers.Dependency(instance_of=Settings)

    clock = providers.Singleton(SystemClock)
    ids = providers.Singleton(UlidGenerator)
    engine = providers.Singleton(create_engine, settings.provided.database_url_value.call())
    uow = providers.Singleton(SqlUnitOfWorkFactory, engine=engine, ids=ids)
    storage = providers.Singleton(FilesystemBlobStorage, root=settings.provided.assets_dir)
    inspector = providers.Singleton(PillowInspector)
    catalog = providers.Singleton(_catalog, settings)
    local_provider = providers.Singleton(_local_provider, settings)
    provider_registry = providers.Singleton(
        ProviderRegistry, providers.Dict(local=local_provider.provider)
    )


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)
    gateways = providers.Container(Gateways, settings=settings)
    policy = providers.Singleton(_policy, settings)

    generate_images = providers.Singleton(
        GenerateImages,
        uow=gateways.uow,
        catalog=gateways.catalog,
        providers=gateways.provider_registry,
        storage=gateways.storage,
        inspector=gateways.inspector,
        clock=gateways.clock,
        ids=gateways.ids,
        policy=policy,
    )
    save_to_dam = providers.Singleton(
        SaveToDam,
        uow=gateways.uow,
        storage=gateways.storage,
        clock=gateways.clock,
        ids=gateways.ids,
    )
    get_generation = providers.Singleton(GetGeneration, uow=gateways.uow)
    list_history = providers.Singleton(ListHistory, uow=gateways.uow)
    get_asset = providers.Singleton(GetAsset, uow=gateways.uow)
    list_assets = providers.Singleton(ListAssets, uow=gateways.uow)
    export_asset = providers.Singleton(ExportAsset, uow=gateways.uow, storage=gateways.storage)
    get_balance = providers.Singleton(
        GetBalance, uow=gateways.uow, clock=gateways.clock, ids=gateways.ids, policy=policy
    )
    grant_credits = providers.Singleton(
        GrantCredits, uow=gateways.uow, clock=gateways.clock, ids=gateways.ids, policy=policy
    )
    ledger_report = providers.Singleton(LedgerReport, uow=gateways.uow)
    list_models = providers.Singleton(ListModels, catalog=gateways.catalog)
    estimate_cost = providers.Singleton(EstimateCost, catalog=gateways.catalog, policy=policy)
    sweeper = providers.Singleton(SweepExpiredReservations, uow=gateways.uow, clock=gateways.clock)


def build_container(settings: Settings | None = None) -> Container:
    container = Container(settings=settings or Settings())
    return container
