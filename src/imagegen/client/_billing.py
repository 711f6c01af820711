"""The billing verbs of the Python API (plans, subscriptions, budgets, usage reports, refunds,
adjustments, verification), shared by ``AsyncImageGen`` and ``ImageGen``.

They return the application's frozen values: ``Plan``, ``Subscription``, ``Budget``,
``UsageReportResult`` (``.rows``, ``.total``, ``.to_csv()``, ``.to_json()``), ``RefundOutcome``
and ``BillingCheck`` (``.ok``, ``.violations``).
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from imagegen.application.commands import (
    AdjustCommand,
    RefundCommand,
    SetBudgetCommand,
    SubscribeCommand,
    UsageReportCommand,
)
from imagegen.application.use_cases.billing import (
    BillingCheck,
    RefundOutcome,
    UsageReportResult,
)
from imagegen.application.use_cases.metering import MeteringSummary
from imagegen.client._results import BalanceResult
from imagegen.domain.errors import ConfigurationError
from imagegen.domain.plans import Budget, Counter, Plan, Subscription

if TYPE_CHECKING:
    from imagegen.bootstrap.container import Container
    from imagegen.client._async import AsyncImageGen

T = TypeVar("T")


class AsyncBilling:
    _container: Container
    tenant_id: str

    async def _start(self) -> None:
        raise NotImplementedError

    def plans(self) -> list[Plan]:
        """Every plan a tenant can subscribe to (the shipped ones and IMAGEGEN_PLANS_FILE's)."""
        return list(self._container.list_plans().execute())

    async def subscribe(self, plan: str, *, customer_id: str | None = None) -> Subscription:
        """Put this tenant on ``plan`` at once (``"none"`` cancels); ``customer_id`` is the
        usage meter's customer (Stripe ``cus_…``)."""
        await self._start()
        return await self._container.subscribe().execute(
            SubscribeCommand(plan_id=plan, meter_customer_id=customer_id, tenant_id=self.tenant_id)
        )

    async def subscription(self) -> Subscription | None:
        await self._start()
        return await self._container.get_subscription().execute(self.tenant_id)

    async def set_budget(
        self,
        *,
        user: str | None = None,
        project: str | None = None,
        credits: int | None = None,
        images: int | None = None,
    ) -> Budget:
        """Cap what one user or one project may spend per month (credits and/or images)."""
        await self._start()
        return await self._container.set_budget().execute(
            SetBudgetCommand(
                user=user,
                project=project,
                limit_credits=credits,
                limit_images=images,
                tenant_id=self.tenant_id,
            )
        )

    async def budgets(self) -> list[tuple[Budget, Counter]]:
        """Each budget with what its user or project used and holds this month."""
        await self._start()
        return await self._container.list_budgets().execute(self.tenant_id)

    async def remove_budget(self, *, user: str | None = None, project: str | None = None) -> bool:
        await self._start()
        return await self._container.remove_budget().execute(
            user=user, project=project, tenant_id=self.tenant_id
        )

    async def usage_report(
        self,
        period: str | None = None,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        by: Sequence[str] = (),
    ) -> UsageReportResult:
        """Usage of a month (``"2026-11"``) or ``[start, end)``, grouped ``by`` any of user,
        project, provider, model, operation, day; credits, revenue, provider cost, margin.
        With neither a period nor dates: the current month (UTC)."""
        await self._start()
        if period is None and start is None and end is None:
            period = self._container.gateways.clock().now().strftime("%Y-%m")
        return await self._container.usage_report().execute(
            UsageReportCommand(
                period=period, start=start, end=end, by=tuple(by), tenant_id=self.tenant_id
            )
        )

    async def refund(
        self,
        generation_id: str,
        *,
        reason: str,
        credits: int | None = None,
        restore_quota: bool = False,
    ) -> RefundOutcome:
        """Refund all (default) or ``credits`` of a generation's charge: a new linked entry."""
        await self._start()
        return await self._container.refund().execute(
            RefundCommand(
                generation_id=generation_id,
                reason=reason,
                credits=credits,
                restore_quota=restore_quota,
                tenant_id=self.tenant_id,
            )
        )

    async def adjust(self, credits: int, *, memo: str) -> BalanceResult:
        """A signed correction of this tenant's credits (never below 0 available)."""
        await self._start()
        _, balance = await self._container.adjust().execute(
            AdjustCommand(credits=credits, memo=memo, tenant_id=self.tenant_id)
        )
        return BalanceResult.of(balance)

    async def verify_billing(self, *, all_tenants: bool = False) -> BillingCheck:
        """Check every billing invariant of this tenant (or of all of them)."""
        await self._start()
        return await self._container.verify_billing().execute(
            None if all_tenants else self.tenant_id
        )

    async def report_usage(self) -> MeteringSummary:
        """Send every usage event not yet metered to the Stripe meter (at least once; Stripe
        counts each event id once). Needs ``imagegen[stripe]`` and IMAGEGEN_STRIPE_API_KEY."""
        if self._container.settings().stripe_api_key is None:
            raise ConfigurationError(
                "Metering needs a Stripe key: set IMAGEGEN_STRIPE_API_KEY (or STRIPE_API_KEY)."
            )
        await self._start()
        try:
            return await self._container.report_usage().execute()
        finally:
            await self._container.gateways.stripe_meter().aclose()


class SyncBilling:
    _async: AsyncImageGen

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        raise NotImplementedError

    def plans(self) -> list[Plan]:
        return self._async.plans()

    def subscribe(self, plan: str, *, customer_id: str | None = None) -> Subscription:
        return self._run(self._async.subscribe(plan, customer_id=customer_id))

    def subscription(self) -> Subscription | None:
        return self._run(self._async.subscription())

    def set_budget(
        self,
        *,
        user: str | None = None,
        project: str | None = None,
        credits: int | None = None,
        images: int | None = None,
    ) -> Budget:
        return self._run(
            self._async.set_budget(user=user, project=project, credits=credits, images=images)
        )

    def budgets(self) -> list[tuple[Budget, Counter]]:
        return self._run(self._async.budgets())

    def remove_budget(self, *, user: str | None = None, project: str | None = None) -> bool:
        return self._run(self._async.remove_budget(user=user, project=project))

    def usage_report(
        self,
        period: str | None = None,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        by: Sequence[str] = (),
    ) -> UsageReportResult:
        return self._run(self._async.usage_report(period, start=start, end=end, by=by))

    def refund(
        self,
        generation_id: str,
        *,
        reason: str,
        credits: int | None = None,
        restore_quota: bool = False,
    ) -> RefundOutcome:
        return self._run(
            self._async.refund(
                generation_id, reason=reason, credits=credits, restore_quota=restore_quota
            )
        )

    def adjust(self, credits: int, *, memo: str) -> BalanceResult:
        return self._run(self._async.adjust(credits, memo=memo))

    def verify_billing(self, *, all_tenants: bool = False) -> BillingCheck:
        return self._run(self._async.verify_billing(all_tenants=all_tenants))

    def report_usage(self) -> MeteringSummary:
        return self._run(self._async.report_usage())
