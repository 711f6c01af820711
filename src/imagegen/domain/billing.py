"""Credit accounts, two-phase reservations and the immutable ledger.

A generation first **reserves** its estimated credits (a hold: ``available`` drops, ``balance``
does not), then either **captures** at most what it reserved (a ledger debit; the rest of the
hold is returned) or **releases** the hold. Each reservation is resolved at most once.

Invariants, for every account, after every operation:

- ``balance == sum(entry.amount for entry in ledger)`` (entries are never changed or deleted);
- ``reserved == sum(r.amount for r in active reservations)``;
- ``available == balance - reserved >= 0``.

A reservation past its ``expires_at`` still holds its credits until the sweeper releases it
(so nothing becomes spendable twice); it can be captured until then, because its owner may
still hold a valid result.
"""

from __future__ import annotations

import enum
from datetime import datetime

import attrs

from imagegen.domain.errors import (
    InsufficientCredits,
    InvalidParameter,
    RefundExceedsCapture,
    ReservationAlreadyResolved,
)
from imagegen.domain.values import Credits


class ReservationStatus(enum.StrEnum):
    ACTIVE = "active"
    CAPTURED = "captured"
    RELEASED = "released"
    EXPIRED = "expired"  # released by the sweeper because its owner never resolved it

    @property
    def is_resolved(self) -> bool:
        return self is not ReservationStatus.ACTIVE


class EntryKind(enum.StrEnum):
    GRANT = "grant"
    CAPTURE = "capture"
    ADJUSTMENT = "adjustment"  # a signed correction, with a mandatory memo
    REFUND = "refund"  # credits given back for a capture (``reference``: the capture entry)


@attrs.define(eq=False)
class Reservation:
    id: str
    account_id: str
    amount: int
    created_at: datetime
    expires_at: datetime
    reference: str | None = None
    status: ReservationStatus = ReservationStatus.ACTIVE
    captured_amount: int = 0
    resolved_at: datetime | None = None
    # Billing holds (all zero / empty for a tenant without plan or budgets): the images the
    # plan's quota covers and those beyond it, the period they count in, and the counters'
    # subjects ("quota", "user:…", "project:…") that hold this reservation.
    included_images: int = 0
    overage_images: int = 0
    period_start: datetime | None = None
    holds: tuple[str, ...] = ()

    def is_expired(self, now: datetime) -> bool:
        return self.status is ReservationStatus.ACTIVE and now >= self.expires_at


@attrs.frozen
class LedgerEntry:
    id: str
    account_id: str
    kind: EntryKind
    amount: int  # signed: grants are positive, captures negative
    balance_after: int
    created_at: datetime
    reservation_id: str | None = None
    reference: str | None = None
    memo: str | None = None


@attrs.define(eq=False)
class CreditAccount:
    id: str
    tenant_id: str
    balance: int
    reserved: int
    created_at: datetime
    updated_at: datetime
    # Loaded with the account's lock, so a tenant without a plan or budgets pays nothing more:
    # the plan of its active subscription, and whether any budget exists.
    plan_id: str | None = None
    has_budgets: bool = False
    new_entries: list[LedgerEntry] = attrs.field(factory=list, repr=False)

    @property
    def available(self) -> int:
        return self.balance - self.reserved

    def _append(
        self,
        entry_id: str,
        kind: EntryKind,
        amount: int,
        now: datetime,
        *,
        reservation_id: str | None = None,
        reference: str | None = None,
        memo: str | None = None,
    ) -> LedgerEntry:
        self.balance += amount
        self.updated_at = now
        entry = LedgerEntry(
            id=entry_id,
            account_id=self.id,
            kind=kind,
            amount=amount,
            balance_after=self.balance,
            created_at=now,
            reservation_id=reservation_id,
            reference=reference,
            memo=memo,
        )
        self.new_entries.append(entry)
        return entry

    def grant(
        self, entry_id: str, amount: Credits, now: datetime, memo: str | None = None
    ) -> LedgerEntry:
        if amount.amount == 0:
            raise InvalidParameter("A grant must be at least 1 credit.")
        return self._append(entry_id, EntryKind.GRANT, amount.amount, now, memo=memo)

    def refund(
        self,
        entry_id: str,
        amount: Credits,
        now: datetime,
        *,
        capture_entry_id: str,
        refundable: int,
        memo: str,
    ) -> LedgerEntry:
        """Give back ``amount`` credits of the capture ``capture_entry_id``, of which
        ``refundable`` credits were not refunded yet (refunds never exceed the capture)."""
        if not 1 <= amount.amount <= refundable:
            raise RefundExceedsCapture(
                f"A refund of this capture is 1 to {refundable} credits; "
                f"{amount.amount} were asked for.",
                entry_id=capture_entry_id,
                refundable=refundable,
            )
        return self._append(
            entry_id, EntryKind.REFUND, amount.amount, now, reference=capture_entry_id, memo=memo
        )

    def adjust(self, entry_id: str, amount: int, now: datetime, memo: str) -> LedgerEntry:
        """A signed correction; it can never make the available credits negative."""
        if isinstance(amount, bool) or amount == 0:
            raise InvalidParameter("An adjustment is a non-zero whole number of credits.")
        if not memo.strip():
            raise InvalidParameter("An adjustment needs a memo saying why.")
        if self.available + amount < 0:
            raise InsufficientCredits(
                f"An adjustment of {amount} would leave {self.available + amount} credits "
                "available; the balance can never be overdrawn.",
                needed=-amount,
                available=self.available,
            )
        return self._append(entry_id, EntryKind.ADJUSTMENT, amount, now, memo=memo.strip())

    def reserve(
        self,
        reservation_id: str,
        amount: Credits,
        now: datetime,
        expires_at: datetime,
        reference: str | None = None,
    ) -> Reservation:
        if amount.amount > self.available:
            raise InsufficientCredits(
                f"This needs {amount.amount} credits but only {self.available} are available.",
                needed=amount.amount,
                available=self.available,
            )
        if expires_at <= now:
            raise InvalidParameter("A reservation must expire after it is made.")
        self.reserved += amount.amount
        self.updated_at = now
        return Reservation(
            id=reservation_id,
            account_id=self.id,
            amount=amount.amount,
            created_at=now,
            expires_at=expires_at,
            reference=reference,
        )

    def _resolve(self, reservation: Reservation, status: ReservationStatus, now: datetime) -> None:
        if reservation.account_id != self.id:
            raise InvalidParameter(
                f"Reservation {reservation.id} belongs to another account.",
                reservation_id=reservation.id,
            )
        if reservation.status.is_resolved:
            raise ReservationAlreadyResolved(
                f"Reservation {reservation.id} is already {reservation.status.value}.",
                reservation_id=reservation.id,
                status=reservation.status.value,
            )
        reservation.status = status
        reservation.resolved_at = now
        self.reserved -= reservation.amount
        self.updated_at = now

    def capture(
        self, reservation: Reservation, amount: Credits, now: datetime, entry_id: str
    ) -> LedgerEntry | None:
        """Debit ``amount`` (at most what was reserved) and return the rest of the hold."""
        if amount.amount > reservation.amount and not reservation.status.is_resolved:
            raise InvalidParameter(
                f"Cannot capture {amount.amount} credits from a reservation of "
                f"{reservation.amount}.",
                reservation_id=reservation.id,
            )
        self._resolve(reservation, ReservationStatus.CAPTURED, now)
        reservation.captured_amount = amount.amount
        if amount.amount == 0:
            return None
        return self._append(
            entry_id,
            EntryKind.CAPTURE,
            -amount.amount,
            now,
            reservation_id=reservation.id,
            reference=reservation.reference,
        )

    def release(self, reservation: Reservation, now: datetime, *, expired: bool = False) -> None:
        status = ReservationStatus.EXPIRED if expired else ReservationStatus.RELEASED
        self._resolve(reservation, status, now)
