"""Unit tests for credit accounts, two-phase reservations and the ledger (domain.billing)."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    rule,
)

from imagegen.domain.billing import (
    CreditAccount,
    EntryKind,
    LedgerEntry,
    Reservation,
    ReservationStatus,
)
from imagegen.domain.errors import (
    BillingError,
    InsufficientCredits,
    InvalidParameter,
    ReservationAlreadyResolved,
)
from imagegen.domain.values import Credits

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(seconds=1)
T2 = T0 + timedelta(seconds=2)
TTL = timedelta(minutes=15)


def make_account(balance: int = 0, account_id: str = "acct_1") -> CreditAccount:
    account = CreditAccount(
        id=account_id, tenant_id="tenant_1", balance=0, reserved=0, created_at=T0, updated_at=T0
    )
    if balance:
        account.grant(f"{account_id}_opening", Credits(balance), T0, memo="opening balance")
    return account


def reserve(
    account: CreditAccount, amount: int, reservation_id: str = "res_1", now: datetime = T1
) -> Reservation:
    return account.reserve(reservation_id, Credits(amount), now, now + TTL, reference="gen_1")


def state_of(account: CreditAccount, *reservations: Reservation) -> tuple[Any, ...]:
    """Everything an operation could change, to check that a refused one changed nothing."""
    return (
        account.balance,
        account.reserved,
        account.updated_at,
        list(account.new_entries),
        [(r.status, r.captured_amount, r.resolved_at) for r in reservations],
    )


# --------------------------------------------------------------------------------------------
# grant
# --------------------------------------------------------------------------------------------


def test_grant_adds_to_the_balance_and_writes_a_grant_entry() -> None:
    account = make_account()

    entry = account.grant("e1", Credits(100), T1, memo="welcome")

    assert (account.balance, account.reserved, account.available) == (100, 0, 100)
    assert account.new_entries == [entry]
    assert entry == LedgerEntry(
        id="e1",
        account_id="acct_1",
        kind=EntryKind.GRANT,
        amount=100,
        balance_after=100,
        created_at=T1,
        memo="welcome",
    )
    assert account.updated_at == T1


def test_a_zero_grant_is_refused_and_writes_nothing() -> None:
    account = make_account(50)
    before = state_of(account)

    with pytest.raises(InvalidParameter):
        account.grant("e2", Credits(0), T1)

    assert state_of(account) == before


def test_successive_grants_carry_the_running_balance() -> None:
    account = make_account()

    first = account.grant("e1", Credits(30), T1)
    second = account.grant("e2", Credits(12), T2)

    assert (first.balance_after, second.balance_after) == (30, 42)


# --------------------------------------------------------------------------------------------
# reserve
# --------------------------------------------------------------------------------------------


def test_reserve_holds_credits_without_touching_the_balance_or_the_ledger() -> None:
    account = make_account(100)
    entries_before = list(account.new_entries)

    reservation = reserve(account, 30)

    assert (account.balance, account.reserved, account.available) == (100, 30, 70)
    assert account.new_entries == entries_before
    assert account.updated_at == T1
    assert reservation.account_id == "acct_1"
    assert reservation.amount == 30
    assert reservation.status is ReservationStatus.ACTIVE
    assert (reservation.created_at, reservation.expires_at) == (T1, T1 + TTL)
    assert reservation.reference == "gen_1"
    assert reservation.captured_amount == 0
    assert reservation.resolved_at is None


def test_reserve_can_take_exactly_what_is_available() -> None:
    account = make_account(100)
    reserve(account, 60, "res_1")

    reserve(account, 40, "res_2")

    assert account.available == 0


def test_reserving_more_than_available_raises_and_leaves_the_account_unchanged() -> None:
    account = make_account(100)
    held = reserve(account, 60, "res_1")
    before = state_of(account, held)

    with pytest.raises(InsufficientCredits) as caught:
        reserve(account, 41, "res_2", now=T2)

    assert caught.value.details == {"needed": 41, "available": 40}
    assert state_of(account, held) == before


def test_insufficient_credits_is_a_billing_error() -> None:
    with pytest.raises(BillingError):
        reserve(make_account(0), 1)


@pytest.mark.parametrize("expires_in", [timedelta(0), timedelta(seconds=-1)])
def test_a_reservation_must_expire_after_it_is_made(expires_in: timedelta) -> None:
    account = make_account(100)
    before = state_of(account)

    with pytest.raises(InvalidParameter):
        account.reserve("res_1", Credits(10), T1, T1 + expires_in)

    assert state_of(account) == before


# --------------------------------------------------------------------------------------------
# capture
# --------------------------------------------------------------------------------------------


def test_capture_debits_the_amount_and_returns_the_unused_part_of_the_hold() -> None:
    account = make_account(100)
    reservation = reserve(account, 30)

    entry = account.capture(reservation, Credits(20), T2, "e_capture")

    assert (account.balance, account.reserved, account.available) == (80, 0, 80)
    assert entry == LedgerEntry(
        id="e_capture",
        account_id="acct_1",
        kind=EntryKind.CAPTURE,
        amount=-20,
        balance_after=80,
        created_at=T2,
        reservation_id="res_1",
        reference="gen_1",
    )
    assert account.new_entries[-1] == entry
    assert reservation.status is ReservationStatus.CAPTURED
    assert reservation.captured_amount == 20
    assert reservation.resolved_at == T2
    assert account.updated_at == T2


def test_capture_of_the_whole_hold_debits_all_of_it() -> None:
    account = make_account(100)
    reservation = reserve(account, 30)

    account.capture(reservation, Credits(30), T2, "e_capture")

    assert (account.balance, account.reserved, account.available) == (70, 0, 70)


def test_capture_only_releases_its_own_hold() -> None:
    account = make_account(100)
    first = reserve(account, 30, "res_1")
    reserve(account, 50, "res_2")

    account.capture(first, Credits(10), T2, "e_capture")

    assert (account.balance, account.reserved, account.available) == (90, 50, 40)


def test_capturing_more_than_reserved_raises_and_leaves_the_reservation_open() -> None:
    account = make_account(100)
    reservation = reserve(account, 30)
    before = state_of(account, reservation)

    with pytest.raises(InvalidParameter):
        account.capture(reservation, Credits(31), T2, "e_capture")

    assert state_of(account, reservation) == before
    account.capture(reservation, Credits(30), T2, "e_capture")  # still capturable
    assert account.balance == 70


def test_a_zero_capture_writes_no_entry_and_releases_the_hold() -> None:
    account = make_account(100)
    reservation = reserve(account, 30)
    entries_before = list(account.new_entries)

    entry = account.capture(reservation, Credits(0), T2, "e_capture")

    assert entry is None
    assert account.new_entries == entries_before
    assert (account.balance, account.reserved, account.available) == (100, 0, 100)
    assert reservation.status is ReservationStatus.CAPTURED
    assert reservation.captured_amount == 0


def test_an_expired_reservation_can_still_be_captured_until_it_is_swept() -> None:
    account = make_account(100)
    reservation = reserve(account, 30)
    late = reservation.expires_at + timedelta(minutes=1)
    assert reservation.is_expired(late)

    account.capture(reservation, Credits(30), late, "e_capture")

    assert account.balance == 70
    assert reservation.status is ReservationStatus.CAPTURED


# --------------------------------------------------------------------------------------------
# release
# --------------------------------------------------------------------------------------------


def test_release_returns_the_whole_hold_and_writes_no_entry() -> None:
    account = make_account(100)
    reservation = reserve(account, 30)
    entries_before = list(account.new_entries)

    account.release(reservation, T2)

    assert (account.balance, account.reserved, account.available) == (100, 0, 100)
    assert account.new_entries == entries_before
    assert reservation.status is ReservationStatus.RELEASED
    assert reservation.resolved_at == T2
    assert reservation.captured_amount == 0
    assert account.updated_at == T2


def test_release_by_the_sweeper_marks_the_reservation_expired() -> None:
    account = make_account(100)
    reservation = reserve(account, 30)

    account.release(reservation, T2, expired=True)

    assert reservation.status is ReservationStatus.EXPIRED
    assert account.available == 100


# --------------------------------------------------------------------------------------------
# resolving twice, and other accounts' reservations
# --------------------------------------------------------------------------------------------


def _capture(account: CreditAccount, reservation: Reservation) -> None:
    account.capture(reservation, Credits(5), T2, "e_again")


def _release(account: CreditAccount, reservation: Reservation) -> None:
    account.release(reservation, T2)


def _expire(account: CreditAccount, reservation: Reservation) -> None:
    account.release(reservation, T2, expired=True)


RESOLVERS = {"capture": _capture, "release": _release, "expire": _expire}


@pytest.mark.parametrize(("first", "second"), list(itertools.product(RESOLVERS, RESOLVERS)))
def test_resolving_a_reservation_twice_raises_already_resolved_and_changes_nothing(
    first: str, second: str
) -> None:
    account = make_account(100)
    reservation = reserve(account, 30)
    RESOLVERS[first](account, reservation)
    before = state_of(account, reservation)
    status = reservation.status

    with pytest.raises(ReservationAlreadyResolved) as caught:
        RESOLVERS[second](account, reservation)

    assert caught.value.details == {"reservation_id": "res_1", "status": status.value}
    assert state_of(account, reservation) == before


@pytest.mark.parametrize("resolver", list(RESOLVERS))
def test_a_reservation_of_another_account_is_refused(resolver: str) -> None:
    ours, theirs = make_account(100, "acct_1"), make_account(100, "acct_2")
    foreign = reserve(theirs, 30)
    before = (state_of(ours), state_of(theirs, foreign))

    with pytest.raises(InvalidParameter) as caught:
        RESOLVERS[resolver](ours, foreign)

    assert caught.value.details == {"reservation_id": "res_1"}
    assert (state_of(ours), state_of(theirs, foreign)) == before
    assert foreign.status is ReservationStatus.ACTIVE


# --------------------------------------------------------------------------------------------
# expiry
# --------------------------------------------------------------------------------------------


def test_a_reservation_is_not_expired_before_its_deadline() -> None:
    reservation = reserve(make_account(100), 10)

    assert not reservation.is_expired(reservation.expires_at - timedelta(microseconds=1))


@pytest.mark.parametrize("after", [timedelta(0), timedelta(hours=1)])
def test_a_reservation_is_expired_from_its_deadline_on(after: timedelta) -> None:
    reservation = reserve(make_account(100), 10)

    assert reservation.is_expired(reservation.expires_at + after)


@pytest.mark.parametrize("resolver", list(RESOLVERS))
def test_a_resolved_reservation_is_never_expired(resolver: str) -> None:
    account = make_account(100)
    reservation = reserve(account, 10)
    RESOLVERS[resolver](account, reservation)

    assert not reservation.is_expired(reservation.expires_at + timedelta(days=1))


def test_only_active_reservations_are_unresolved() -> None:
    assert [s for s in ReservationStatus if not s.is_resolved] == [ReservationStatus.ACTIVE]


# --------------------------------------------------------------------------------------------
# A stateful test against a reference model
# --------------------------------------------------------------------------------------------


class CreditAccountMachine(RuleBasedStateMachine):
    """Drive one CreditAccount with random operations and compare it with plain ints/dicts."""

    open_reservations = Bundle("open_reservations")
    resolved_reservations = Bundle("resolved_reservations")

    def __init__(self) -> None:
        super().__init__()
        self.account = make_account()
        self.clock = T0
        self.ids = itertools.count()
        # the reference model
        self.model_balance = 0
        self.model_open: dict[str, int] = {}
        self.model_resolutions: Counter[str] = Counter()
        self.model_entry_amounts: list[int] = []
        self.every_reservation: dict[str, Reservation] = {}

    # helpers

    def _now(self) -> datetime:
        self.clock += timedelta(seconds=1)
        return self.clock

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self.ids)}"

    def _snapshot(self) -> tuple[Any, ...]:
        return state_of(self.account, *self.every_reservation.values())

    @property
    def model_available(self) -> int:
        return self.model_balance - sum(self.model_open.values())

    # rules

    @rule(amount=st.integers(1, 500))
    def grant(self, amount: int) -> None:
        entry = self.account.grant(self._id("grant"), Credits(amount), self._now())

        self.model_balance += amount
        self.model_entry_amounts.append(amount)
        assert entry.kind is EntryKind.GRANT
        assert entry.amount == amount

    @rule(target=open_reservations, amount=st.integers(0, 600))
    def reserve(self, amount: int) -> Any:
        now = self._now()
        reservation_id = self._id("res")
        if amount > self.model_available:
            before = self._snapshot()
            with pytest.raises(InsufficientCredits):
                self.account.reserve(reservation_id, Credits(amount), now, now + TTL)
            assert self._snapshot() == before
            return multiple()
        reservation = self.account.reserve(reservation_id, Credits(amount), now, now + TTL)
        self.model_open[reservation.id] = amount
        self.every_reservation[reservation.id] = reservation
        assert reservation.amount == amount
        return reservation

    @rule(target=resolved_reservations, reservation=consumes(open_reservations), data=st.data())
    def capture(self, reservation: Reservation, data: st.DataObject) -> Reservation:
        amount = data.draw(st.integers(0, reservation.amount), label="captured")
        entry = self.account.capture(reservation, Credits(amount), self._now(), self._id("cap"))

        del self.model_open[reservation.id]
        self.model_resolutions[reservation.id] += 1
        if amount == 0:
            assert entry is None
        else:
            assert entry is not None
            assert (entry.kind, entry.amount, entry.reservation_id) == (
                EntryKind.CAPTURE,
                -amount,
                reservation.id,
            )
            self.model_balance -= amount
            self.model_entry_amounts.append(-amount)
        assert reservation.status is ReservationStatus.CAPTURED
        assert reservation.captured_amount == amount
        return reservation

    @rule(
        target=resolved_reservations,
        reservation=consumes(open_reservations),
        expired=st.booleans(),
    )
    def release(self, reservation: Reservation, expired: bool) -> Reservation:
        self.account.release(reservation, self._now(), expired=expired)

        del self.model_open[reservation.id]
        self.model_resolutions[reservation.id] += 1
        expected = ReservationStatus.EXPIRED if expired else ReservationStatus.RELEASED
        assert reservation.status is expected
        return reservation

    @rule(reservation=open_reservations, extra=st.integers(1, 100))
    def capture_more_than_reserved(self, reservation: Reservation, extra: int) -> None:
        before = self._snapshot()

        with pytest.raises(InvalidParameter):
            self.account.capture(
                reservation, Credits(reservation.amount + extra), self._now(), self._id("cap")
            )

        assert self._snapshot() == before

    @rule(
        reservation=resolved_reservations,
        how=st.sampled_from(["capture", "release", "expire"]),
        data=st.data(),
    )
    def resolve_again(self, reservation: Reservation, how: str, data: st.DataObject) -> None:
        before = self._snapshot()
        now = self._now()

        if how == "capture":
            amount = Credits(data.draw(st.integers(0, reservation.amount), label="captured"))
            entry_id = self._id("cap")

            def again() -> None:
                self.account.capture(reservation, amount, now, entry_id)
        else:

            def again() -> None:
                self.account.release(reservation, now, expired=how == "expire")

        with pytest.raises(ReservationAlreadyResolved):
            again()

        assert self._snapshot() == before

    # invariants

    @invariant()
    def available_is_never_negative(self) -> None:
        assert self.account.available >= 0
        assert self.account.available == self.model_available

    @invariant()
    def balance_is_the_sum_of_every_entry_ever_appended(self) -> None:
        assert self.account.balance == self.model_balance
        assert [e.amount for e in self.account.new_entries] == self.model_entry_amounts
        assert self.account.balance == sum(e.amount for e in self.account.new_entries)

    @invariant()
    def reserved_is_the_sum_of_open_reservations(self) -> None:
        assert self.account.reserved == sum(self.model_open.values())
        open_ids = {
            r.id for r in self.every_reservation.values() if r.status is ReservationStatus.ACTIVE
        }
        assert open_ids == set(self.model_open)

    @invariant()
    def each_reservation_is_resolved_at_most_once(self) -> None:
        assert all(count <= 1 for count in self.model_resolutions.values())
        captures = Counter(
            e.reservation_id for e in self.account.new_entries if e.kind is EntryKind.CAPTURE
        )
        assert all(count <= 1 for count in captures.values())
        for reservation_id, reservation in self.every_reservation.items():
            resolved = self.model_resolutions[reservation_id] == 1
            assert reservation.status.is_resolved == resolved
            assert (reservation.resolved_at is not None) == resolved

    @invariant()
    def balance_after_is_the_running_sum(self) -> None:
        running = 0
        for entry in self.account.new_entries:
            running += entry.amount
            assert entry.balance_after == running


CreditAccountMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30)
TestCreditAccountAgainstAReferenceModel = CreditAccountMachine.TestCase
