"""Credits: balance, grants, and the ledger as a report."""

from __future__ import annotations

import attrs

from imagegen.application.accounts import account_id_for, lock_or_open_account
from imagegen.application.commands import DEFAULT_TENANT, GenerationPolicy, GrantCreditsCommand
from imagegen.application.ports import Clock, IdGenerator, UnitOfWorkFactory
from imagegen.domain.billing import CreditAccount, LedgerEntry, Reservation
from imagegen.domain.errors import InvalidParameter
from imagegen.domain.values import Credits

MAX_GRANT = 10**12


@attrs.frozen
class Balance:
    tenant_id: str
    balance: int
    reserved: int

    @property
    def available(self) -> int:
        return self.balance - self.reserved

    @classmethod
    def of(cls, account: CreditAccount) -> Balance:
        return cls(account.tenant_id, account.balance, account.reserved)


class GetBalance:
    def __init__(
        self, *, uow: UnitOfWorkFactory, clock: Clock, ids: IdGenerator, policy: GenerationPolicy
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._ids = ids
        self._policy = policy

    async def execute(self, tenant_id: str = DEFAULT_TENANT) -> Balance:
        async with self._uow(read_only=True) as uow:
            account = await uow.accounts.get(account_id_for(tenant_id))
        if account is not None:
            return Balance.of(account)
        # First use: open the account (with its starting credits) so the balance is real.
        async with self._uow() as uow:
            account = await lock_or_open_account(
                uow, tenant_id, self._policy, self._clock, self._ids
            )
            await uow.commit()
        return Balance.of(account)


class GrantCredits:
    def __init__(
        self, *, uow: UnitOfWorkFactory, clock: Clock, ids: IdGenerator, policy: GenerationPolicy
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._ids = ids
        self._policy = policy

    async def execute(self, command: GrantCreditsCommand) -> Balance:
        if isinstance(command.amount, bool) or not 1 <= command.amount <= MAX_GRANT:
            raise InvalidParameter(f"A grant is a whole number from 1 to {MAX_GRANT}.")
        async with self._uow() as uow:
            account = await lock_or_open_account(
                uow, command.tenant_id, self._policy, self._clock, self._ids
            )
            account.grant(
                self._ids.new("ent"), Credits(command.amount), self._clock.now(), memo=command.memo
            )
            await uow.accounts.save(account)
            await uow.commit()
        return Balance.of(account)


@attrs.frozen
class Ledger:
    balance: Balance
    entries: tuple[LedgerEntry, ...]
    reservations: tuple[Reservation, ...]

    def violations(self) -> list[str]:
        """Every broken ledger invariant, in words (empty when the ledger is consistent)."""
        problems = []
        total = sum(entry.amount for entry in self.entries)
        if total != self.balance.balance:
            problems.append(f"balance {self.balance.balance} != sum of entries {total}")
        running = 0
        for entry in self.entries:
            running += entry.amount
            if entry.balance_after != running:
                problems.append(
                    f"entry {entry.id}: balance_after {entry.balance_after} != "
                    f"running sum {running}"
                )
        held = sum(r.amount for r in self.reservations if not r.status.is_resolved)
        if held != self.balance.reserved:
            problems.append(f"reserved {self.balance.reserved} != open reservations {held}")
        if self.balance.available < 0:
            problems.append(f"available credits are negative: {self.balance.available}")
        captures = {e.reservation_id: e for e in self.entries if e.reservation_id}
        for reservation in self.reservations:
            debit = captures.get(reservation.id)
            debited = -debit.amount if debit is not None else 0
            if debited != reservation.captured_amount:
                problems.append(
                    f"reservation {reservation.id}: captured "
                    f"{reservation.captured_amount} but debited {debited}"
                )
            if reservation.captured_amount > reservation.amount:
                problems.append(f"reservation {reservation.id}: captured more than it held")
        return problems


class LedgerReport:
    def __init__(self, *, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    async def execute(self, tenant_id: str = DEFAULT_TENANT) -> Ledger:
        async with self._uow(read_only=True) as uow:
            account = await uow.accounts.get(account_id_for(tenant_id))
            if account is None:
                return Ledger(Balance(tenant_id, 0, 0), (), ())
            entries = await uow.accounts.entries(account.id)
            reservations = await uow.accounts.reservations(account.id)
        return Ledger(Balance.of(account), tuple(entries), tuple(reservations))
