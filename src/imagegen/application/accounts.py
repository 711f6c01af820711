"""Opening a tenant's credit account on first use, safely under concurrency."""

from __future__ import annotations

from imagegen.application.commands import GenerationPolicy
from imagegen.application.ports import Clock, IdGenerator, UnitOfWork
from imagegen.domain.billing import CreditAccount
from imagegen.domain.values import Credits


def account_id_for(tenant_id: str) -> str:
    return f"acct_{tenant_id}"


async def lock_or_open_account(
    uow: UnitOfWork, tenant_id: str, policy: GenerationPolicy, clock: Clock, ids: IdGenerator
) -> CreditAccount:
    """Lock the tenant's account, creating it with the starting credits if it does not exist.

    ``create_if_missing`` is atomic (one process wins), so the starting grant is written
    exactly once however many processes open the account at the same moment.
    """
    account_id = account_id_for(tenant_id)
    account = await uow.accounts.lock(account_id)
    if account is not None:
        return account
    now = clock.now()
    fresh = CreditAccount(
        account_id, tenant_id, balance=0, reserved=0, created_at=now, updated_at=now
    )
    if await uow.accounts.create_if_missing(fresh):
        if policy.starting_credits > 0:
            fresh.grant(
                ids.new("ent"), Credits(policy.starting_credits), now, memo="starting credits"
            )
            await uow.accounts.save(fresh)
        return fresh
    account = await uow.accounts.lock(account_id)
    assert account is not None, "an account another transaction created must be visible"
    return account
