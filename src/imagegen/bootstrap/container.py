"""The composition root: the one place that knows which adapter implements which port.

Tests and embedding apps swap an adapter with ``container.<name>.override(fake)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from dependency_injector import containers, providers
from sqlalchemy.ext.asyncio import AsyncEngine

from imagegen.application.commands import GenerationPolicy
from imagegen.application.fallback import FallbackChain
from imagegen.application.ports import ImageProvider, JobQueue, UsageMeter
from imagegen.application.use_cases import (
    Adjust,
    EstimateCost,
    ExportAsset,
    GenerateImages,
    GetAsset,
    GetBalance,
    GetGeneration,
    GetSubscription,
    GrantCredits,
    LedgerReport,
    ListAssets,
    ListBudgets,
    ListHistory,
    ListModels,
    ListPlans,
    Refund,
    RemoveBudget,
    SaveToDam,
    SetBudget,
    Subscribe,
    SweepExpiredReservations,
    UsageReport,
    VerifyBilling,
)
from imagegen.application.use_cases.jobs import (
    AbandonJob,
    CancelGeneration,
    RunGenerationJob,
    SubmitGeneration,
)
from imagegen.application.use_cases.metering import ReportUsage
from imagegen.application.use_cases.providers import CheckProviders
from imagegen.bootstrap.settings import Settings
from imagegen.domain.errors import ConfigurationError
from imagegen.domain.plans import parse_thresholds
from imagegen.infrastructure.billing.plans import load_plans
from imagegen.infrastructure.catalog import StaticModelCatalog, load_catalog
from imagegen.infrastructure.imaging import PillowInspector
from imagegen.infrastructure.jobs.sql_queue import SqlJobQueue
from imagegen.infrastructure.persistence.engine import create_engine
from imagegen.infrastructure.persistence.uow import SqlUnitOfWorkFactory
from imagegen.infrastructure.providers.local import LocalProvider
from imagegen.infrastructure.providers.plugins import ProviderPlugin, discover_plugins
from imagegen.infrastructure.providers.registry import ProviderRegistry
from imagegen.infrastructure.providers.resilience import ResiliencePolicy
from imagegen.infrastructure.storage.filesystem import FilesystemBlobStorage
from imagegen.infrastructure.system import SystemClock, UlidGenerator

if TYPE_CHECKING:
    from imagegen.infrastructure.billing.stripe_meter import StripeUsageMeter


def _policy(settings: Settings) -> GenerationPolicy:
    return GenerationPolicy(
        reservation_ttl=timedelta(seconds=settings.reservation_ttl_seconds),
        provider_timeout=timedelta(seconds=settings.provider_timeout_seconds),
        max_prompt_length=settings.max_prompt_length,
        starting_credits=settings.starting_credits,
        usd_per_credit=settings.usd_per_credit,
        alert_thresholds=parse_thresholds(settings.alert_thresholds),
    )


def _local_provider(settings: Settings) -> LocalProvider:
    return LocalProvider(latency_s=settings.local_latency_ms / 1000)


# Remote adapters are imported when first built: their SDKs load only for apps that use them.
def _openai_provider(settings: Settings) -> ImageProvider:
    from imagegen.infrastructure.providers.openai import OpenAIProvider

    return OpenAIProvider(
        api_key=settings.openai_api_key,
        base_url=settings.openai_base_url,
        timeout_s=settings.provider_request_timeout_seconds,
    )


def _replicate_provider(settings: Settings) -> ImageProvider:
    from imagegen.infrastructure.providers.replicate import ReplicateProvider

    return ReplicateProvider(
        api_token=settings.replicate_api_token,
        base_url=settings.replicate_base_url,
        timeout_s=settings.provider_request_timeout_seconds,
        deadline_s=settings.provider_timeout_seconds,
    )


def _stability_provider(settings: Settings) -> ImageProvider:
    from imagegen.infrastructure.providers.stability import StabilityProvider

    return StabilityProvider(
        api_key=settings.stability_api_key,
        base_url=settings.stability_base_url,
        timeout_s=settings.provider_request_timeout_seconds,
    )


def _stripe_meter(settings: Settings, clock: SystemClock) -> StripeUsageMeter:
    from imagegen.infrastructure.billing.stripe_meter import StripeUsageMeter

    return StripeUsageMeter(
        api_key=settings.stripe_api_key,
        event_name=settings.stripe_meter_event_name,
        api_base=settings.stripe_api_base,
        timeout_s=settings.stripe_timeout_seconds,
        clock=clock,
    )


def _usage_meter(settings: Settings, meter: StripeUsageMeter) -> UsageMeter:
    from imagegen.infrastructure.billing.resilience import RetryingUsageMeter

    return RetryingUsageMeter(meter, max_attempts=settings.stripe_max_attempts)


def _job_queue(settings: Settings, engine: AsyncEngine, clock: SystemClock) -> JobQueue:
    if settings.job_queue == "procrastinate":  # its package loads only when configured
        try:
            from imagegen.infrastructure.jobs.procrastinate_queue import (
                ProcrastinateJobQueue,
                make_app,
            )
        except ImportError:
            raise ConfigurationError(
                "IMAGEGEN_JOB_QUEUE=procrastinate needs: pip install 'imagegen[jobs]'"
            ) from None
        return ProcrastinateJobQueue(make_app(settings.database_url_value()))
    return SqlJobQueue(engine=engine, clock=clock)


def _resilience(settings: Settings) -> ResiliencePolicy:
    return ResiliencePolicy(
        max_attempts=settings.provider_max_attempts,
        base_delay_s=settings.provider_retry_base_delay_seconds,
        max_delay_s=settings.provider_retry_max_delay_seconds,
        max_retry_after_s=settings.provider_max_retry_after_seconds,
        attempt_timeout_s=settings.provider_request_timeout_seconds,
        concurrency=settings.provider_concurrency,
        rate_per_second=settings.provider_rate_per_second,
        failure_threshold=settings.circuit_failure_threshold,
        reset_timeout_s=settings.circuit_reset_seconds,
    )


def _catalog(settings: Settings, plugins: list[ProviderPlugin]) -> StaticModelCatalog:
    catalog = load_catalog(
        settings.catalog_file,
        local_credits_per_image=settings.local_credits_per_image,
        default_provider=settings.default_provider,
    )
    if not plugins:
        return catalog
    extra = [spec for plugin in plugins for spec in plugin.models()]
    return StaticModelCatalog([*catalog.all(), *extra], settings.default_provider, catalog.defaults)


def _registry(
    settings: Settings,
    built_in: dict[str, Callable[[], ImageProvider]],
    plugins: list[ProviderPlugin],
    policy: ResiliencePolicy,
) -> ProviderRegistry:
    factories = dict(built_in)
    for plugin in plugins:
        factories[plugin.name] = functools.partial(plugin.create, settings)
    return ProviderRegistry(factories, policy)


class Gateways(containers.DeclarativeContainer):
    """Adapters to the outside world."""

    settings = providers.Dependency(instance_of=Settings)

    clock = providers.Singleton(SystemClock)
    ids = providers.Singleton(UlidGenerator)
    engine = providers.Singleton(create_engine, settings.provided.database_url_value.call())
    uow = providers.Singleton(SqlUnitOfWorkFactory, engine=engine, ids=ids)
    storage = providers.Singleton(FilesystemBlobStorage, root=settings.provided.assets_dir)
    inspector = providers.Singleton(PillowInspector)
    plugins = providers.Singleton(discover_plugins)
    catalog = providers.Singleton(_catalog, settings, plugins)
    local_provider = providers.Singleton(_local_provider, settings)
    openai_provider = providers.Singleton(_openai_provider, settings)
    replicate_provider = providers.Singleton(_replicate_provider, settings)
    stability_provider = providers.Singleton(_stability_provider, settings)
    resilience = providers.Singleton(_resilience, settings)
    provider_registry = providers.Singleton(
        _registry,
        settings,
        providers.Dict(
            local=local_provider.provider,
            openai=openai_provider.provider,
            replicate=replicate_provider.provider,
            stability=stability_provider.provider,
        ),
        plugins,
        resilience,
    )
    fallbacks = providers.Singleton(FallbackChain, settings.provided.fallbacks)
    plans = providers.Singleton(load_plans, settings.provided.plans_file)
    # Built only by ``billing meter-sync`` (its SDK loads then); Stripe never gates a generation.
    stripe_meter = providers.Singleton(_stripe_meter, settings, clock)
    usage_meter = providers.Singleton(_usage_meter, settings, stripe_meter)
    job_queue = providers.Singleton(_job_queue, settings, engine, clock)


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
        fallbacks=gateways.fallbacks,
        plans=gateways.plans,
    )
    # --- background jobs (see bootstrap.jobs for the runner) -------------------------------
    submit_generation = providers.Singleton(
        SubmitGeneration,
        generate=generate_images,
        queue=gateways.job_queue,
        clock=gateways.clock,
        ids=gateways.ids,
        max_attempts=settings.provided.job_max_attempts,
    )
    cancel_generation = providers.Singleton(
        CancelGeneration, uow=gateways.uow, clock=gateways.clock, queue=gateways.job_queue
    )
    run_generation_job = providers.Singleton(RunGenerationJob, generate=generate_images)
    abandon_job = providers.Singleton(AbandonJob, uow=gateways.uow, clock=gateways.clock)
    check_providers = providers.Singleton(CheckProviders, providers=gateways.provider_registry)
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

    # --- billing ----------------------------------------------------------------------------
    list_plans = providers.Singleton(ListPlans, plans=gateways.plans)
    subscribe = providers.Singleton(
        Subscribe,
        uow=gateways.uow,
        plans=gateways.plans,
        clock=gateways.clock,
        ids=gateways.ids,
        policy=policy,
    )
    get_subscription = providers.Singleton(GetSubscription, uow=gateways.uow)
    set_budget = providers.Singleton(
        SetBudget, uow=gateways.uow, clock=gateways.clock, ids=gateways.ids, policy=policy
    )
    list_budgets = providers.Singleton(ListBudgets, uow=gateways.uow, clock=gateways.clock)
    remove_budget = providers.Singleton(RemoveBudget, uow=gateways.uow)
    refund = providers.Singleton(Refund, uow=gateways.uow, clock=gateways.clock, ids=gateways.ids)
    adjust = providers.Singleton(
        Adjust, uow=gateways.uow, clock=gateways.clock, ids=gateways.ids, policy=policy
    )
    usage_report = providers.Singleton(UsageReport, uow=gateways.uow, policy=policy)
    verify_billing = providers.Singleton(VerifyBilling, uow=gateways.uow)
    report_usage = providers.Singleton(
        ReportUsage,
        uow=gateways.uow,
        meter=gateways.usage_meter,
        clock=gateways.clock,
        batch_size=settings.provided.meter_batch_size,
    )


def build_container(settings: Settings | None = None) -> Container:
    container = Container(settings=settings or Settings())
    return container
