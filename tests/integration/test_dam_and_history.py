"""The DAM (assets: save, merge, list, filter, export) and the history (filters, pagination)
through ``AsyncImageGen`` with the real SQL and filesystem adapters, on SQLite and PostgreSQL.

Every test runs on SQLite and on PostgreSQL (conftest's ``database_url``). On
PostgreSQL the module shares one migrated database and empties it before each test: creating
and migrating a database per test costs ~0.6 s.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import imagegen
from imagegen import AsyncImageGen, Settings

TINY = "64x64"
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


# --- databases ---------------------------------------------------------------------------------


@pytest.fixture
async def open_client() -> AsyncIterator[Callable[..., AsyncImageGen]]:
    """Makes extra clients (other tenants) and closes them after the test."""
    made: list[AsyncImageGen] = []

    def make(settings: Settings, **kwargs: Any) -> AsyncImageGen:
        client = AsyncImageGen(settings, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


# --- helpers -----------------------------------------------------------------------------------


async def every_page(fetch: Callable[..., Any], **kwargs: Any) -> list[list[Any]]:
    """Follow ``next_cursor`` to the end; the items of each page."""
    pages: list[list[Any]] = []
    cursor = None
    while True:
        page = await fetch(cursor=cursor, **kwargs)
        pages.append(list(page.items))
        cursor = page.next_cursor
        if cursor is None:
            return pages
        assert len(pages) < 100, "pagination does not end"


def flat(pages: list[list[Any]]) -> list[Any]:
    return [item for page in pages for item in page]


def sidecar_of(path: Path | None) -> dict[str, Any]:
    assert path is not None
    record: dict[str, Any] = json.loads(path.with_suffix(".json").read_text())
    return record


# --- the DAM -----------------------------------------------------------------------------------


async def test_save_to_dam_records_tags_title_metadata_and_provenance(
    client: AsyncImageGen,
) -> None:
    result = await client.generate("a red fox in the snow", size=TINY, seed=5)
    (image,) = result.images

    asset = await client.save_to_dam(
        image,
        tags=["Winter", " fox ", "winter"],
        title="  Fox in snow ",
        metadata={"campaign": "q1", "owner": "ana"},
    )

    assert asset.id.startswith("ast_")
    assert (asset.image_id, asset.generation_id) == (image.id, result.id)
    assert asset.tags == ("winter", "fox")  # trimmed, lower-cased, de-duplicated, in order
    assert asset.title == "Fox in snow"
    assert asset.metadata == {"campaign": "q1", "owner": "ana"}
    assert (asset.sha256, asset.path) == (image.sha256, image.path)
    assert (asset.format, asset.width, asset.height) == ("png", 64, 64)
    assert asset.approval_state == "draft"
    assert asset.provenance["generation_id"] == result.id
    assert asset.provenance["digital_source_type"] == DIGITAL_SOURCE_TYPE
    assert asset.provenance["prompt"] == "a red fox in the snow"
    assert asset.provenance["seed"] == 5

    fetched = await client.get_asset(asset.id)
    assert fetched.to_dict() == asset.to_dict()
    # The sidecar next to the file describes the asset too (for tools that read files).
    described = sidecar_of(asset.path)["metadata"]["asset"]
    assert described["id"] == asset.id
    assert described["tags"] == ["winter", "fox"]
    assert described["metadata"] == {"campaign": "q1", "owner": "ana"}


async def test_save_to_dam_by_image_id_defaults_the_title_to_the_prompt(
    client: AsyncImageGen,
) -> None:
    result = await client.generate("a lighthouse at dusk", size=TINY)

    asset = await client.save_to_dam(result.images[0].id)

    assert asset.title == "a lighthouse at dusk"
    assert asset.tags == ()
    assert asset.metadata == {}


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"tags": ["no<html>"]}, id="bad-tag"),
        pytest.param({"title": "   "}, id="blank-title"),
        pytest.param({"title": "t" * 201}, id="long-title"),
        pytest.param({"metadata": {"": "x"}}, id="empty-metadata-key"),
        pytest.param({"metadata": {"k": "v" * 2049}}, id="long-metadata-value"),
    ],
)
async def test_save_to_dam_refuses_bad_fields_and_creates_no_asset(
    client: AsyncImageGen, kwargs: dict[str, Any]
) -> None:
    result = await client.generate("a red fox", size=TINY)

    with pytest.raises(imagegen.InvalidParameter):
        await client.save_to_dam(result.images[0], **kwargs)

    assert (await client.assets()).items == ()


async def test_saving_the_same_image_twice_keeps_one_asset_and_merges_tags_and_metadata(
    client: AsyncImageGen,
) -> None:
    result = await client.generate("a red fox", size=TINY)
    (image,) = result.images

    first = await client.save_to_dam(image, tags=["a", "b"], title="Fox", metadata={"k": "1"})
    second = await client.save_to_dam(image.id, tags=["B", "c"], metadata={"j": "2", "k": "3"})

    assert second.id == first.id
    assert second.tags == ("a", "b", "c")
    assert second.metadata == {"k": "3", "j": "2"}
    assert second.title == "Fox"  # kept: no new title was given
    page = await client.assets()
    assert [a.id for a in page.items] == [first.id]
    stored = await client.get_asset(first.id)
    assert (stored.tags, stored.metadata) == (second.tags, second.metadata)
    assert sidecar_of(image.path)["metadata"]["asset"]["tags"] == ["a", "b", "c"]
    assert (await client.assets(tag="c")).items[0].id == first.id


async def test_assets_filter_by_exact_tag_and_title_and_paginate_newest_first(
    client: AsyncImageGen,
) -> None:
    result = await client.generate("a red fox", n=5, size=TINY)
    saved = []
    for index, image in enumerate(result.images):
        parity = "even" if index % 2 == 0 else "odd"
        saved.append(
            await client.save_to_dam(
                image, tags=["all", parity, "a_b" if index == 0 else "axb"], title=f"fox {parity}"
            )
        )
    newest_first = [a.id for a in reversed(saved)]

    pages = await every_page(client.assets, limit=2)
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [a.id for a in flat(pages)] == newest_first

    even = flat(await every_page(client.assets, tag="EVEN", limit=1))
    assert [a.id for a in even] == [saved[4].id, saved[2].id, saved[0].id]
    assert {a.id for a in flat(await every_page(client.assets, tag="odd"))} == {
        saved[1].id,
        saved[3].id,
    }
    assert [a.id for a in (await client.assets(tag="a_b")).items] == [saved[0].id]  # "_" literal
    assert (await client.assets(tag="al")).items == ()  # tags match whole, not as substrings
    assert (await client.assets(tag="missing")).items == ()
    by_title = flat(await every_page(client.assets, text="ODD"))
    assert [a.id for a in by_title] == [saved[3].id, saved[1].id]
    odd_pages = await every_page(client.assets, tag="all", text="odd", limit=1)
    assert [a.id for a in flat(odd_pages)] == [saved[3].id, saved[1].id]


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"limit": 0}, id="limit-0"),
        pytest.param({"limit": 101}, id="limit-101"),
        pytest.param({"cursor": "not-a-cursor"}, id="bad-cursor"),
    ],
)
async def test_assets_refuse_bad_paging(client: AsyncImageGen, kwargs: dict[str, Any]) -> None:
    with pytest.raises(imagegen.InvalidParameter):
        await client.assets(**kwargs)


@pytest.mark.parametrize(("fmt", "suffix"), [("png", ".png"), ("jpeg", ".jpg"), ("webp", ".webp")])
async def test_export_asset_writes_an_identical_file_into_a_directory(
    client: AsyncImageGen, tmp_path: Path, fmt: str, suffix: str
) -> None:
    result = await client.generate("a red fox", size=TINY, format=fmt)
    asset = await client.save_to_dam(result.images[0], tags=["export"])
    target_dir = tmp_path / "exports" / "nested"

    exported = await client.export_asset(asset.id, target_dir)

    assert exported.parent == target_dir
    assert exported.name == f"{asset.id}{suffix}"
    assert asset.path is not None
    data = exported.read_bytes()
    assert data == asset.path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == asset.sha256
    with Image.open(exported) as decoded:
        assert decoded.size == (64, 64)
    assert DIGITAL_SOURCE_TYPE.encode() in data
    assert result.id.encode() in data
    assert sorted(p.name for p in target_dir.iterdir()) == [exported.name]  # no temp left

    again = await client.export_asset(asset.id, str(target_dir))  # a str works too
    assert again == exported
    assert again.read_bytes() == data


async def test_export_asset_into_a_path_that_is_a_file_raises_an_imagegen_error(
    client: AsyncImageGen, tmp_path: Path
) -> None:
    result = await client.generate("a red fox", size=TINY, tags=["x"])
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")

    with pytest.raises(imagegen.ImageGenError):
        await client.export_asset(result.assets[0].id, blocker)

    assert blocker.read_text() == "not a directory"


async def test_generate_with_tags_creates_an_asset_per_image_at_once(
    client: AsyncImageGen,
) -> None:
    result = await client.generate("a launch hero", n=2, size=TINY, tags=["Launch", "hero"])

    assert result.tags == ("launch", "hero")
    assert len(result.assets) == 2
    assert [a.image_id for a in result.assets] == [i.id for i in result.images]
    for asset in result.assets:
        assert asset.tags == ("launch", "hero")
        assert asset.generation_id == result.id
        assert (await client.get_asset(asset.id)).to_dict() == asset.to_dict()
    listed = flat(await every_page(client.assets, tag="launch"))
    assert {a.id for a in listed} == {a.id for a in result.assets}

    merged = await client.save_to_dam(result.images[0], tags=["extra"])
    assert merged.id == result.assets[0].id
    assert merged.tags == ("launch", "hero", "extra")
    assert len(flat(await every_page(client.assets))) == 2


async def test_generate_without_tags_creates_no_asset_and_a_failed_one_neither(
    client: AsyncImageGen,
) -> None:
    plain = await client.generate("a red fox", size=TINY)
    with pytest.raises(imagegen.ProviderUnavailable):
        await client.generate("a red fox [local:fail]", size=TINY, tags=["doomed"])

    assert plain.assets == ()
    assert (await client.assets()).items == ()


@pytest.mark.parametrize(
    ("call", "error"),
    [
        pytest.param(lambda c, d: c.get_asset("ast_missing"), imagegen.AssetNotFound, id="asset"),
        pytest.param(
            lambda c, d: c.export_asset("ast_missing", d), imagegen.AssetNotFound, id="export"
        ),
        pytest.param(lambda c, d: c.save_to_dam("img_missing"), imagegen.AssetNotFound, id="image"),
        pytest.param(
            lambda c, d: c.get_generation("gen_missing"), imagegen.GenerationNotFound, id="gen"
        ),
    ],
)
async def test_unknown_ids_raise_not_found(
    client: AsyncImageGen, tmp_path: Path, call: Callable[..., Any], error: type[Exception]
) -> None:
    await client.generate("a red fox", size=TINY, tags=["real"])  # something does exist
    out = tmp_path / "out"

    with pytest.raises(error) as caught:
        await call(client, out)

    assert isinstance(caught.value, imagegen.NotFound)
    assert not out.exists()
    assert len((await client.assets()).items) == 1


async def test_another_tenant_cannot_see_or_touch_generations_or_assets(
    settings: Settings, open_client: Callable[..., AsyncImageGen], tmp_path: Path
) -> None:
    alpha = open_client(settings, tenant_id="alpha")
    beta = open_client(settings, tenant_id="beta")
    result = await alpha.generate("alpha's fox", n=2, size=TINY, tags=["secret"])
    asset = result.assets[0]

    with pytest.raises(imagegen.GenerationNotFound):
        await beta.get_generation(result.id)
    with pytest.raises(imagegen.AssetNotFound):
        await beta.get_asset(asset.id)
    with pytest.raises(imagegen.AssetNotFound):
        await beta.export_asset(asset.id, tmp_path / "stolen")
    with pytest.raises(imagegen.AssetNotFound):
        await beta.save_to_dam(result.images[1], tags=["mine"])
    with pytest.raises(imagegen.AssetNotFound):
        await beta.save_to_dam(result.images[0].id, tags=["mine"])
    assert (await beta.history()).items == ()
    assert (await beta.history(text="fox")).items == ()
    assert (await beta.assets()).items == ()
    assert (await beta.assets(tag="secret")).items == ()
    assert not (tmp_path / "stolen").exists()

    # Alpha's records are untouched by beta's attempts.
    assert (await alpha.get_asset(asset.id)).tags == ("secret",)
    assert len((await alpha.assets()).items) == 2
    assert [g.id for g in (await alpha.history()).items] == [result.id]
    assert (await beta.balance()).balance == 100
    assert (await alpha.balance()).balance == 98


# --- history -----------------------------------------------------------------------------------

HISTORY_SIZE = 25


async def make_history(client: AsyncImageGen) -> list[Any]:
    """25 tiny generations, oldest first: cats and dogs, every fifth one failed."""
    made = []
    for index in range(HISTORY_SIZE):
        animal = "cat" if index % 2 == 0 else "dog"
        fail = " [local:fail]" if index % 5 == 4 else ""
        try:
            await client.generate(f"a {animal} number {index}{fail}", size=TINY)
        except imagegen.ProviderUnavailable:
            assert fail
        made.append((await client.history(limit=1)).items[0])
    assert len({g.id for g in made}) == HISTORY_SIZE
    return made


async def test_history_pages_newest_first_through_every_generation_with_a_cursor(
    client: AsyncImageGen,
) -> None:
    made = await make_history(client)
    newest_first = [g.id for g in reversed(made)]

    pages = await every_page(client.history, limit=7)

    assert [len(p) for p in pages] == [7, 7, 7, 4]
    assert [g.id for g in flat(pages)] == newest_first
    created = [g.created_at for g in flat(pages)]
    assert created == sorted(created, reverse=True)
    assert [g.id for g in flat(await every_page(client.history, limit=25))] == newest_first
    assert len(await every_page(client.history, limit=100)) == 1
    # A filter and the cursor together: still every match, once, newest first.
    cat_pages = await every_page(client.history, text="cat", status="succeeded", limit=3)
    cats = [g.id for g in made if "cat" in g.prompt and g.status == "succeeded"]
    assert [g.id for g in flat(cat_pages)] == cats[::-1]
    assert all(len(p) <= 3 for p in cat_pages)


async def test_history_filters_by_status_provider_model_text_and_date_range(
    client: AsyncImageGen,
) -> None:
    made = await make_history(client)
    ids = [g.id for g in made]

    async def listed(**filters: Any) -> list[str]:
        return [g.id for g in flat(await every_page(client.history, limit=100, **filters))]

    failed = await listed(status="failed")
    assert failed == [g.id for g in reversed(made) if "[local:fail]" in g.prompt]
    assert len(failed) == 5
    for generation in (await client.history(status="failed")).items:
        assert generation.failure_code == "provider_unavailable"
    assert len(await listed(status="SUCCEEDED")) == 20
    assert await listed(status="running") == []

    assert await listed(provider="local") == ids[::-1]
    assert await listed(provider="elsewhere") == []
    assert await listed(model="procedural") == ids[::-1]
    assert await listed(model="other-model") == []

    dogs = await listed(text="DOG")
    assert dogs == [g.id for g in reversed(made) if "dog" in g.prompt]
    number_one = await listed(text="number 1")
    assert number_one == [ids[i] for i in (19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 1)]
    assert await listed(text="%") == []  # LIKE wildcards are literal
    assert await listed(text="[local:fail]") == failed

    # From is inclusive, to is exclusive.
    window = await listed(created_from=made[10].created_at, created_to=made[20].created_at)
    assert window == ids[10:20][::-1]
    assert await listed(created_from=made[24].created_at) == [ids[24]]
    assert await listed(created_to=made[0].created_at) == []
    later = made[24].created_at + timedelta(seconds=1)
    assert await listed(created_from=later) == []
    # Any timezone works: the same instant expressed at +05:00.
    plus_five = made[10].created_at.astimezone(timezone(timedelta(hours=5)))
    assert await listed(created_from=plus_five) == ids[10:][::-1]

    combined = await listed(
        status="succeeded", text="cat", created_from=made[5].created_at, provider="local"
    )
    assert combined == [
        g.id for g in reversed(made[5:]) if "cat" in g.prompt and g.status == "succeeded"
    ]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        pytest.param({"status": "bogus"}, imagegen.InvalidParameter, id="unknown-status"),
        pytest.param({"limit": 0}, imagegen.InvalidParameter, id="limit-0"),
        pytest.param({"limit": 101}, imagegen.InvalidParameter, id="limit-101"),
        pytest.param({"cursor": "garbage!"}, imagegen.InvalidParameter, id="bad-cursor"),
        pytest.param(
            {
                "created_from": datetime(2030, 1, 2).astimezone(),
                "created_to": datetime(2030, 1, 1).astimezone(),
            },
            imagegen.InvalidParameter,
            id="range-ends-before-it-starts",
        ),
    ],
)
async def test_history_refuses_bad_filters(
    client: AsyncImageGen, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        await client.history(**kwargs)


async def test_history_with_a_naive_datetime_is_treated_as_utc_or_refused_as_invalid(
    client: AsyncImageGen,
) -> None:
    result = await client.generate("a red fox", size=TINY)
    naive_yesterday = datetime.now() - timedelta(days=1)
    try:
        page = await client.history(created_from=naive_yesterday)
    except imagegen.InvalidInput:
        return  # refusing a naive datetime is fine; any other error is not
    assert [g.id for g in page.items] == [result.id]
