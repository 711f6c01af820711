"""The SQL ledger against a reference model, driven by hypothesis.

Each step runs in its own unit of work on a real SQLite database, exactly as the use cases
do (lock the account, apply the domain operation, save, commit) — including steps that crash
before committing and reservations that expire and are swept. After every step the stored
ledger must satisfy its invariants and agree with the model.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from imagegen.application.accounts import account_id_for
from imagegen.application.commands import GenerationPolicy
from imagegen.application.use_cases.credits import LedgerReport
from imagegen.application.use_cases.sweeper import SweepExpiredReservations
from imagegen.domain.billing import CreditAccount, ReservationStatus
from imagegen.domain.errors import InsufficientCredits
from imagegen.domain.values import Credits
from imagegen.infrastructure.persistence.engine import create_engine, upgrade_schema
from imagegen.infrastructure.persistence.uow import SqlUnitOfWorkFactory
from imagegen.infrastructure.system import UlidGenerator

TTL = timedelta(minutes=10)


class SteppingClock:
    def __init__(self) -> None:
        self.current = datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        self.current += timedelta(milliseconds=1)
        return self.current


class Database:
    """One SQLite database for the whole test; each state machine run uses its own tenant."""

    def __init__(self, path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.engine = create_engine(f"sqlite:///{path}")
        self.loop.run_until_complete(upgrade_schema(self.engine))
        self.uow = SqlUnitOfWorkFactory(self.engine, UlidGenerator())

    def close(self) -> None:
        self.loop.run_until_complete(self.engine.dispose())
        self.loop.close()


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Database:
    db = Database(tmp_path_factory.mktemp("ledger") / "ledger.db")
    yield db  # type: ignore[misc]
    db.close()


def run_machine(database: Database) -> None:
    class LedgerMachine(RuleBasedStateMachine):
        reservations = Bundle("reservations")

        def __init__(self) -> None:
            super().__init__()
            self.db = database
            self.clock = SteppingClock()
            self.ids = UlidGenerator()
            self.tenant = f"t{uuid.uuid4().hex[:12]}"
            self.account_id = account_id_for(self.tenant)
            self.model_balance = 0
            self.model_open: dict[str, int] = {}
            self.resolved: set[str] = set()
            self.policy = GenerationPolicy(starting_credits=0)
            self.run(self._open())

        def run(self, coroutine):  # type: ignore[no-untyped-def]
            return self.db.loop.run_until_complete(coroutine)

        async def _open(self) -> None:
            async with self.db.uow() as uow:
                now = self.clock.now()
                await uow.accounts.create_if_missing(
                    CreditAccount(self.account_id, self.tenant, 0, 0, now, now)
                )
                await uow.commit()

        @rule(amount=st.integers(1, 50))
        def grant(self, amount: int) -> None:
            async def step() -> None:
                async with self.db.uow() as uow:
                    account = await uow.accounts.lock(self.account_id)
                    assert account is not None
                    account.grant(self.ids.new("ent"), Credits(amount), self.clock.now())
                    await uow.accounts.save(account)
                    await uow.commit()

            self.run(step())
            self.model_balance += amount

        @rule(target=reservations, amount=st.integers(0, 40), crash=st.booleans())
        def reserve(self, amount: int, crash: bool) -> str:
            available = self.model_balance - sum(self.model_open.values())
            reservation_id = self.ids.new("res")

            async def step() -> None:
                async with self.db.uow() as uow:
                    account = await uow.accounts.lock(self.account_id)
                    assert account is not None
                    now = self.clock.now()
                    reservation = account.reserve(reservation_id, Credits(amount), now, now + TTL)
                    await uow.accounts.save(account)
                    await uow.accounts.add_reservation(reservation)
                    if not crash:  # a crash leaves the block without committing
                        await uow.commit()

            if amount > available:
                with pytest.raises(InsufficientCredits):
                    self.run(step())
                return reservation_id  # never stored: resolving it must find nothing
            self.run(step())
            if not crash:
                self.model_open[reservation_id] = amount
            return reservation_id

        @rule(reservation_id=consumes(reservations), fraction=st.floats(0, 1))
        def capture(self, reservation_id: str, fraction: float) -> None:
            async def step() -> bool:
                async with self.db.uow() as uow:
                    account = await uow.accounts.lock(self.account_id)
                    reservation = await uow.accounts.get_reservation(reservation_id)
                    if account is None or reservation is None:
                        return False
                    if reservation.status.is_resolved:
                        return False
                    amount = int(reservation.amount * fraction)
                    account.capture(
                        reservation, Credits(amount), self.clock.now(), self.ids.new("ent")
                    )
                    await uow.accounts.save(account)
                    await uow.accounts.save_reservation(reservation)
                    await uow.commit()
                    self.model_balance -= amount
                    return True

            held = self.model_open.pop(reservation_id, None)
            captured = self.run(step())
            assert captured == (held is not None)
            if captured:
                self.resolved.add(reservation_id)

        @rule(reservation_id=consumes(reservations))
        def release(self, reservation_id: str) -> None:
            async def step() -> bool:
                async with self.db.uow() as uow:
                    account = await uow.accounts.lock(self.account_id)
                    reservation = await uow.accounts.get_reservation(reservation_id)
                    if account is None or reservation is None or reservation.status.is_resolved:
                        return False
                    account.release(reservation, self.clock.now())
                    await uow.accounts.save(account)
                    await uow.accounts.save_reservation(reservation)
                    await uow.commit()
                    return True

            held = self.model_open.pop(reservation_id, None)
            assert self.run(step()) == (held is not None)

        @rule()
        def expire_everything_and_sweep(self) -> None:
            self.clock.current += TTL + timedelta(seconds=1)
            sweeper = SweepExpiredReservations(uow=self.db.uow, clock=self.clock)
            released = self.run(sweeper.execute())
            # Other runs' tenants share the database, so count only ours.
            assert released >= len(self.model_open)
            self.model_open.clear()

        @invariant()
        def stored_ledger_is_consistent_and_matches_the_model(self) -> None:
            ledger = self.run(LedgerReport(uow=self.db.uow).execute(self.tenant))
            assert ledger.violations() == []
            assert ledger.balance.balance == self.model_balance
            assert ledger.balance.reserved == sum(self.model_open.values())
            assert ledger.balance.available >= 0
            statuses = {r.id: r.status for r in ledger.reservations}
            for reservation_id in self.model_open:
                assert statuses[reservation_id] is ReservationStatus.ACTIVE
            for reservation_id in self.resolved:
                assert statuses[reservation_id] is ReservationStatus.CAPTURED

    LedgerMachine.TestCase.settings = settings(
        max_examples=25,
        stateful_step_count=15,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    LedgerMachine.TestCase().runTest()


def test_sql_ledger_keeps_its_invariants_through_any_sequence_of_operations(
    database: Database,
) -> None:
    run_machine(database)
