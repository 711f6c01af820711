"""Unit tests for the Generation aggregate's lifecycle (imagegen.domain.generation)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegen.domain.errors import InvalidStateTransition
from imagegen.domain.generation import (
    ALLOWED_TRANSITIONS,
    GeneratedImage,
    Generation,
    GenerationParameters,
    GenerationStatus,
)
from imagegen.domain.values import ImageFormat, ImageSize, Seed

S = GenerationStatus
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
LATER = T0 + timedelta(seconds=30)

# The lifecycle as documented: queued → running → succeeded | failed | canceled, and queued
# may also fail or be canceled directly. Written out here so a change to the table is noticed.
EXPECTED_EDGES = {
    (S.QUEUED, S.RUNNING),
    (S.QUEUED, S.FAILED),
    (S.QUEUED, S.CANCELED),
    (S.RUNNING, S.SUCCEEDED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.CANCELED),
}


def make_generation(status: GenerationStatus = S.QUEUED) -> Generation:
    return Generation(
        id="gen_1",
        tenant_id="tenant_1",
        principal_id="user_1",
        provider="test",
        model="model",
        prompt="a lighthouse at dusk",
        parameters=GenerationParameters(
            n=1, size=ImageSize(1024, 1024), format=ImageFormat.PNG, seed=Seed(1)
        ),
        created_at=T0,
        updated_at=T0,
        status=status,
    )


def make_image(index: int = 0) -> GeneratedImage:
    return GeneratedImage(
        id=f"img_{index}",
        generation_id="gen_1",
        index=index,
        storage_key=f"tenant_1/gen_1/{index}.png",
        sha256="0" * 64,
        format=ImageFormat.PNG,
        width=1024,
        height=1024,
        byte_size=1234,
        seed=Seed(1).offset(index),
        created_at=T0,
    )


# The public method that moves a generation to each target status.
ACTIONS: dict[GenerationStatus, Callable[[Generation, datetime], None]] = {
    S.RUNNING: lambda g, now: g.start(now),
    S.SUCCEEDED: lambda g, now: g.succeed([make_image()], 10, now),
    S.FAILED: lambda g, now: g.fail("provider_unavailable", "timed out", now),
    S.CANCELED: lambda g, now: g.cancel(now),
}


# --------------------------------------------------------------------------------------------
# The transition table itself
# --------------------------------------------------------------------------------------------


def test_the_table_covers_every_status() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(GenerationStatus)


@pytest.mark.parametrize(("source", "target"), list(itertools.product(S, S)))
def test_the_table_allows_exactly_the_documented_edges(
    source: GenerationStatus, target: GenerationStatus
) -> None:
    assert (target in ALLOWED_TRANSITIONS[source]) == ((source, target) in EXPECTED_EDGES)


@pytest.mark.parametrize("status", list(S))
def test_terminal_statuses_have_no_exits_and_others_do(status: GenerationStatus) -> None:
    assert status.is_terminal == (ALLOWED_TRANSITIONS[status] == frozenset())
    assert status.is_terminal == (status in {S.SUCCEEDED, S.FAILED, S.CANCELED})


def test_nothing_leads_back_to_queued() -> None:
    assert all(S.QUEUED not in targets for targets in ALLOWED_TRANSITIONS.values())


# --------------------------------------------------------------------------------------------
# The aggregate honours the table: every (status, action) pair
# --------------------------------------------------------------------------------------------

PAIRS = list(itertools.product(S, ACTIONS))


@pytest.mark.parametrize(
    ("source", "target"),
    [pair for pair in PAIRS if pair[1] in ALLOWED_TRANSITIONS[pair[0]]],
)
def test_an_allowed_transition_moves_the_status_and_stamps_the_time(
    source: GenerationStatus, target: GenerationStatus
) -> None:
    generation = make_generation(source)

    ACTIONS[target](generation, LATER)

    assert generation.status is target
    assert generation.updated_at == LATER


@pytest.mark.parametrize(
    ("source", "target"),
    [pair for pair in PAIRS if pair[1] not in ALLOWED_TRANSITIONS[pair[0]]],
)
def test_an_illegal_transition_raises_and_changes_nothing(
    source: GenerationStatus, target: GenerationStatus
) -> None:
    generation = make_generation(source)

    with pytest.raises(InvalidStateTransition) as caught:
        ACTIONS[target](generation, LATER)

    assert caught.value.details == {
        "generation_id": "gen_1",
        "current": source.value,
        "target": target.value,
    }
    assert generation.status is source
    assert generation.updated_at == T0
    assert generation.events == []
    assert generation.images == []
    assert generation.failure_code is None


def test_the_happy_path_runs_queued_running_succeeded() -> None:
    generation = make_generation()

    generation.start(T0 + timedelta(seconds=1))
    generation.succeed([make_image(0), make_image(1)], 20, LATER, provider_cost_usd="0.08")

    assert generation.status is S.SUCCEEDED
    assert [image.id for image in generation.images] == ["img_0", "img_1"]
    assert generation.credits_charged == 20
    assert generation.provider_cost_usd == "0.08"
    assert generation.updated_at == LATER


def test_starting_records_no_event() -> None:
    generation = make_generation()

    generation.start(LATER)

    assert generation.events == []


# --------------------------------------------------------------------------------------------
# succeed / fail / cancel: details and events
# --------------------------------------------------------------------------------------------


def test_succeed_without_images_raises_and_leaves_the_generation_running() -> None:
    generation = make_generation(S.RUNNING)

    with pytest.raises(InvalidStateTransition):
        generation.succeed([], 10, LATER)

    assert generation.status is S.RUNNING
    assert generation.credits_charged == 0
    assert generation.events == []
    assert generation.updated_at == T0


def test_succeed_records_a_generation_succeeded_event() -> None:
    generation = make_generation(S.RUNNING)

    generation.succeed([make_image(0), make_image(1)], 20, LATER)

    [event] = generation.events
    assert event.name == "generation.succeeded"
    assert event.aggregate_id == "gen_1"
    assert event.occurred_at == LATER
    assert event.data == {
        "tenant_id": "tenant_1",
        "images": ["img_0", "img_1"],
        "credits_charged": 20,
    }


def test_succeed_keeps_its_own_copy_of_the_image_list() -> None:
    generation = make_generation(S.RUNNING)
    images = [make_image(0)]

    generation.succeed(images, 10, LATER)
    images.append(make_image(1))

    assert len(generation.images) == 1


@pytest.mark.parametrize("source", [S.QUEUED, S.RUNNING])
def test_fail_records_the_failure_and_a_generation_failed_event(
    source: GenerationStatus,
) -> None:
    generation = make_generation(source)

    generation.fail("rate_limited", "slow down", LATER)

    assert generation.status is S.FAILED
    assert (generation.failure_code, generation.failure_message) == ("rate_limited", "slow down")
    [event] = generation.events
    assert event.name == "generation.failed"
    assert event.aggregate_id == "gen_1"
    assert event.occurred_at == LATER
    assert event.data == {"tenant_id": "tenant_1", "code": "rate_limited", "message": "slow down"}


@pytest.mark.parametrize("source", [S.QUEUED, S.RUNNING])
def test_cancel_records_a_generation_canceled_event(source: GenerationStatus) -> None:
    generation = make_generation(source)

    generation.cancel(LATER)

    assert generation.status is S.CANCELED
    [event] = generation.events
    assert event.name == "generation.canceled"
    assert event.aggregate_id == "gen_1"
    assert event.occurred_at == LATER
    assert event.data == {"tenant_id": "tenant_1"}


def test_record_provider_job_stores_the_job_id_without_changing_status() -> None:
    generation = make_generation(S.RUNNING)

    generation.record_provider_job("job_abc", LATER)

    assert generation.provider_job_id == "job_abc"
    assert generation.status is S.RUNNING
    assert generation.updated_at == LATER


# --------------------------------------------------------------------------------------------
# Random sequences of transitions
# --------------------------------------------------------------------------------------------

EVENT_NAMES = {
    S.SUCCEEDED: "generation.succeeded",
    S.FAILED: "generation.failed",
    S.CANCELED: "generation.canceled",
}


@settings(max_examples=200)
@given(st.lists(st.sampled_from(list(ACTIONS)), max_size=12))
def test_random_transition_sequences_follow_the_table_and_never_leave_a_terminal_state(
    attempts: list[GenerationStatus],
) -> None:
    generation = make_generation()
    reached_terminal: GenerationStatus | None = None

    for step, target in enumerate(attempts, start=1):
        before = generation.status
        now = T0 + timedelta(seconds=step)
        allowed = target in ALLOWED_TRANSITIONS[before]
        if allowed:
            ACTIONS[target](generation, now)
            assert generation.status is target
        else:
            with pytest.raises(InvalidStateTransition):
                ACTIONS[target](generation, now)
            assert generation.status is before
        if reached_terminal is not None:
            assert generation.status is reached_terminal
        elif generation.status.is_terminal:
            reached_terminal = generation.status

    # exactly one event, for the terminal status, once one is reached; none before
    if reached_terminal is None:
        assert generation.events == []
    else:
        assert [event.name for event in generation.events] == [EVENT_NAMES[reached_terminal]]
