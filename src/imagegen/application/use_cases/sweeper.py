"""The sweeper: releases reservations whose generation died with its process."""

from __future__ import annotations

import logging

from imagegen.application.billing import return_holds
from imagegen.application.ports import Clock, UnitOfWorkFactory

log = logging.getLogger("imagegen.sweeper")


class SweepExpiredReservations:
    """Release every active reservation past its expiry and fail its generation.

    Safe to run from several processes at once: each reservation is re-read under the
    account's lock and skipped if another sweeper (or its owner) resolved it meanwhile.
    """

    def __init__(self, *, uow: UnitOfWorkFactory, clock: Clock, batch_size: int = 100) -> None:
        self._uow = uow
        self._clock = clock
        self._batch_size = batch_size

    async def execute(self) -> int:
        now = self._clock.now()
        async with self._uow(read_only=True) as uow:
            candidates = list(await uow.accounts.expired_reservations(now, self._batch_size))
        released = 0
        for candidate in candidates:
            async with self._uow() as uow:
                account = await uow.accounts.lock(candidate.account_id)
                reservation = await uow.accounts.get_reservation(candidate.id)
                if account is None or reservation is None or not reservation.is_expired(now):
                    continue
                account.release(reservation, now, expired=True)
                await uow.accounts.save(account)
                await uow.accounts.save_reservation(reservation)
                await return_holds(uow, account.tenant_id, reservation)
                generation = await uow.generations.get_by_reservation(reservation.id)
                if generation is not None and not generation.status.is_terminal:
                    generation.fail(
                        "abandoned",
                        "The generation stopped before completing (its process died or timed "
                        "out); its credits were released.",
                        now,
                    )
                    uow.record(generation.events)
                    await uow.generations.save(generation)
                await uow.commit()
                released += 1
                log.info("released expired reservation %s", reservation.id)
        return released
