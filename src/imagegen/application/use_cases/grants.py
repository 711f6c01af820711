"""Granting credits exactly once per idempotency key.

``GrantCredits`` adds credits each time it runs; a client retrying a grant whose answer it
lost would add them twice. ``GrantCreditsOnce`` records the key with the grant in the same
transaction, under the account's lock: replaying the key returns the first answer and adds
nothing; the same key with another amount or memo is an ``IdempotencyConflict``.
"""

from __future__ import annotations

import hashlib
import re

import attrs

from imagegen.application.access_ports import AccessUnitOfWorkFactory, IdempotencyRecord
from imagegen.application.accounts import lock_or_open_account
from imagegen.application.commands import GenerationPolicy, GrantCreditsCommand
from imagegen.application.ports import Clock, IdGenerator
from imagegen.application.use_cases.credits import MAX_GRANT, Balance
from imagegen.domain.errors import IdempotencyConflict, InvalidParameter
from imagegen.domain.values import Credits

SCOPE = "credits.grant"
_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")


@attrs.frozen
class GrantOutcome:
    balance: Balance
    replayed: bool = False


class GrantCreditsOnce:
    def __init__(
        self,
        *,
        uow: AccessUnitOfWorkFactory,
        clock: Clock,
        ids: IdGenerator,
        policy: GenerationPolicy,
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._ids = ids
        self._policy = policy

    async def execute(
        self, command: GrantCreditsCommand, idempotency_key: str | None = None
    ) -> GrantOutcome:
        if isinstance(command.amount, bool) or not 1 <= command.amount <= MAX_GRANT:
            raise InvalidParameter(f"A grant is a whole number from 1 to {MAX_GRANT}.")
        if idempotency_key is not None and not _KEY_RE.match(idempotency_key):
            raise InvalidParameter("An idempotency key is 1-255 printable ASCII characters.")
        fingerprint = hashlib.sha256(f"{command.amount}|{command.memo or ''}".encode()).hexdigest()
        async with self._uow() as uow:
            account = await lock_or_open_account(
                uow, command.tenant_id, self._policy, self._clock, self._ids
            )
            if idempotency_key is not None:
                done = await uow.idempotency.get(command.tenant_id, SCOPE, idempotency_key)
                if done is not None:
                    if done.fingerprint != fingerprint:
                        raise IdempotencyConflict(
                            "This idempotency key was already used for a different grant.",
                            idempotency_key=idempotency_key,
                        )
                    await uow.commit()  # may have opened the account
                    answer = done.response
                    return GrantOutcome(
                        Balance(command.tenant_id, answer["balance"], answer["reserved"]),
                        replayed=True,
                    )
            now = self._clock.now()
            account.grant(self._ids.new("ent"), Credits(command.amount), now, memo=command.memo)
            await uow.accounts.save(account)
            balance = Balance.of(account)
            if idempotency_key is not None:
                await uow.idempotency.add(
                    IdempotencyRecord(
                        tenant_id=command.tenant_id,
                        scope=SCOPE,
                        key=idempotency_key,
                        fingerprint=fingerprint,
                        response={"balance": balance.balance, "reserved": balance.reserved},
                        created_at=now,
                    )
                )
            await uow.commit()
        return GrantOutcome(balance)
