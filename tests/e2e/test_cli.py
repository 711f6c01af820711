"""The real ``imagegen`` command, run as a separate process against a real data directory.

Every case goes through the console script (argument parsing, the library, SQLite or
PostgreSQL, the DAM on disk) and checks what a user or a script sees: stdout, stderr, the exit
code. Starting the command costs ~0.7 s, so read-only checks share one populated data dir
(``library``) and independent commands run side by side (``imagegen_many``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_runner import Run, imagegen, imagegen_many
from PIL import Image

# --- running the command -----------------------------------------------------------------------


def environment(data_dir: Path, **settings: str | int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_")}
    env["IMAGEGEN_DATA_DIR"] = str(data_dir)
    env["COLUMNS"] = "200"
    env.update({f"IMAGEGEN_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def assert_one_line_error(run: Run, code: int) -> None:
    assert run.code == code, f"imagegen {' '.join(run.args)}: exit {run.code}, {run.stderr!r}"
    lines = run.stderr.splitlines()
    assert len(lines) == 1, f"stderr should be one line: {run.stderr!r}"
    assert lines[0].startswith("error: ")
    assert "Traceback" not in run.stderr
    assert run.stdout == ""


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- a populated library, shared by the read-only tests ----------------------------------------

STARTING = 100
FOX = (
    "generate", "a red fox in the snow", "--n", "2", "--size", "64x64", "--seed", "42",
    "--format", "png", "--negative-prompt", "blurry, text", "--tag", "Fox", "--tag", "winter",
    "--json",
)  # fmt: skip
SEA = ("generate", "a wide teal sea", "--aspect-ratio", "16:9", "--format", "jpeg", "--json")
LEMON = (
    "generate", "a golden lemon tree", "--seed", "7", "--size", "64x64", "--format", "webp",
    "--json",
)  # fmt: skip
FAIL = ("generate", "a storm [local:fail]", "--size", "64x64", "--json")
# Square brackets are rich markup: a prompt like this must still be printed verbatim.
BRACKETS_PROMPT = "a [/red] fox in [bold]bold[/bold] brackets"
BRACKETS = ("generate", BRACKETS_PROMPT, "--size", "64x64", "--tag", "brackets", "--json")


@dataclass(frozen=True)
class Library:
    env: dict[str, str]
    data_dir: Path
    fox: Run
    sea: Run
    lemons: tuple[Run, Run]
    failure: Run
    balance: Run
    history: Run
    verify: Run
    sweep: Run
    brackets: Run

    @property
    def succeeded(self) -> list[dict[str, Any]]:
        return [r.json() for r in (self.fox, self.sea, *self.lemons, self.brackets)]

    @property
    def generations(self) -> list[dict[str, Any]]:
        """Every generation, newest first, as ``history --json`` listed it."""
        items: list[dict[str, Any]] = self.history.json()["items"]
        return items


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Library:
    """Five successful generations and a failed one, made side by side, then the state."""
    data_dir = tmp_path_factory.mktemp("library") / "data"
    env = environment(data_dir, starting_credits=STARTING)
    imagegen(env, "db", "upgrade")  # the writers below then race for the lock, not to migrate
    fox, sea, lemon1, lemon2, failure, brackets = imagegen_many(
        env, FOX, SEA, LEMON, LEMON, FAIL, BRACKETS
    )
    balance, history, verify, sweep = imagegen_many(
        env,
        ("credits", "balance", "--json"),
        ("history", "--limit", "100", "--json"),
        ("credits", "verify"),
        ("sweep", "--json"),
    )
    return Library(
        env,
        data_dir,
        fox,
        sea,
        (lemon1, lemon2),
        failure,
        balance,
        history,
        verify,
        sweep,
        brackets,
    )


def ids(run: Run) -> list[str]:
    return [g["id"] for g in run.json()["items"]]


# --- generate ----------------------------------------------------------------------------------


def test_generate_json_prints_one_object_with_id_status_credits_and_images(
    library: Library,
) -> None:
    result = library.fox.json()  # exactly one line holding one JSON object

    assert result["id"].startswith("gen_")
    assert result["status"] == "succeeded"
    assert result["credits_charged"] == 2
    assert library.fox.stderr == ""
    assert len(result["images"]) == 2
    for image in result["images"]:
        assert {"id", "path", "width", "height", "format", "sha256"} <= image.keys()
        assert image["id"].startswith("img_")


def test_generated_image_paths_are_absolute_files_in_the_dam_matching_their_sha256(
    library: Library,
) -> None:
    assets_dir = (library.data_dir / "assets").resolve()
    for generation in library.succeeded:
        for image in generation["images"]:
            path = Path(image["path"])
            assert path.is_absolute()
            assert path.is_file()
            assert path.is_relative_to(assets_dir)
            assert sha256_of(path) == image["sha256"]
            with Image.open(path) as decoded:
                decoded.load()
                assert decoded.size == (image["width"], image["height"])


def test_generate_honours_n_size_seed_format_negative_prompt_and_tags(library: Library) -> None:
    result = library.fox.json()

    chosen = {k: result[k] for k in ("n", "size", "seed", "format", "negative_prompt")}
    assert chosen == {
        "n": 2,
        "size": "64x64",
        "seed": 42,
        "format": "png",
        "negative_prompt": "blurry, text",
    }
    assert [i["seed"] for i in result["images"]] == [42, 43]
    for image in result["images"]:
        assert (image["width"], image["height"], image["format"]) == (64, 64, "png")
        with Image.open(image["path"]) as decoded:
            assert decoded.format == "PNG"
    assert result["tags"] == ["fox", "winter"]  # normalised: lower-case
    assert len(result["assets"]) == 2
    assert {a["image_id"] for a in result["assets"]} == {i["id"] for i in result["images"]}
    assert all(a["tags"] == ["fox", "winter"] for a in result["assets"])


def test_generate_honours_aspect_ratio_and_jpeg_format(library: Library) -> None:
    result = library.sea.json()
    (image,) = result["images"]

    assert image["format"] == "jpeg"
    assert abs(image["width"] / image["height"] - 16 / 9) < 0.01
    assert result["size"] == f"{image['width']}x{image['height']}"
    with Image.open(image["path"]) as decoded:
        assert decoded.format == "JPEG"
        assert decoded.size == (image["width"], image["height"])


def test_same_seed_prompt_size_and_format_give_identical_pixels(library: Library) -> None:
    first, second = (run.json()["images"][0] for run in library.lemons)

    # The files differ (each embeds its own generation's provenance), the pixels do not.
    assert first["sha256"] != second["sha256"]
    with Image.open(first["path"]) as a, Image.open(second["path"]) as b:
        assert a.format == b.format == "WEBP"
        assert a.size == b.size == (64, 64)
        assert a.mode == b.mode
        assert a.tobytes() == b.tobytes()


def test_provider_failure_exits_4_records_a_failed_generation_and_charges_nothing(
    library: Library,
) -> None:
    assert_one_line_error(library.failure, 4)

    failed = [g for g in library.generations if g["status"] == "failed"]
    assert len(failed) == 1
    assert failed[0]["prompt"] == "a storm [local:fail]"
    assert failed[0]["credits_charged"] == 0
    assert failed[0]["failure_code"] == "provider_unavailable"
    assert failed[0]["images"] == []
    # Nothing reserved or charged for it: the balance is the start minus the successes.
    charged = sum(g["credits_charged"] for g in library.succeeded)
    assert library.balance.json()["balance"] == STARTING - charged
    assert library.balance.json()["reserved"] == 0


# --- credits -----------------------------------------------------------------------------------


def test_credits_balance_json_reflects_what_was_charged(library: Library) -> None:
    charged = sum(g["credits_charged"] for g in library.succeeded)

    assert charged == 6
    assert library.balance.json() == {
        "tenant_id": "default",
        "balance": STARTING - charged,
        "reserved": 0,
        "available": STARTING - charged,
    }


def test_credits_verify_finds_the_ledger_consistent(library: Library) -> None:
    assert library.verify.code == 0, library.verify.stderr
    assert "consistent" in library.verify.stdout


def test_credits_grant_adds_to_the_balance_and_keeps_the_ledger_consistent(
    cli_env: dict[str, str],
) -> None:
    cli_env["IMAGEGEN_STARTING_CREDITS"] = "10"

    granted = imagegen(cli_env, "credits", "grant", "5", "--memo", "e2e", "--json").json()
    balance, verify = imagegen_many(
        cli_env, ("credits", "balance", "--json"), ("credits", "verify", "--json")
    )

    assert granted["balance"] == granted["available"] == 15
    assert balance.json()["balance"] == 15
    assert verify.json() == {"ok": True, "violations": []}


# --- history and show --------------------------------------------------------------------------


def test_history_json_lists_every_generation_newest_first(library: Library) -> None:
    generations = library.generations
    made = {g["id"] for g in library.succeeded}

    assert library.history.json()["next_cursor"] is None
    assert len(generations) == 6
    assert made < {g["id"] for g in generations}  # plus the failed one
    created = [g["created_at"] for g in generations]
    assert created == sorted(created, reverse=True)


def test_history_filters_by_status_text_provider_model_and_dates(library: Library) -> None:
    everything = [g["id"] for g in library.generations]
    middle = library.generations[2]["created_at"]
    failed, text, model, since, until, future = imagegen_many(
        library.env,
        ("history", "--status", "failed", "--json"),
        ("history", "--text", "lemon", "--json"),
        ("history", "--provider", "local", "--model", "procedural", "--json"),
        ("history", "--from", middle, "--json"),
        ("history", "--to", middle, "--json"),
        ("history", "--from", "2999-01-01", "--json"),
    )

    assert [g["status"] for g in failed.json()["items"]] == ["failed"]
    assert sorted(ids(text)) == sorted(r.json()["id"] for r in library.lemons)
    assert ids(model) == everything
    # --from is inclusive, --to exclusive: together they split the history in two.
    assert ids(since) == [g["id"] for g in library.generations if g["created_at"] >= middle]
    assert ids(since) + ids(until) == everything
    assert ids(future) == []


def test_history_cursor_pages_through_every_generation_once(library: Library) -> None:
    seen: list[str] = []
    cursor: list[str] = []
    for _ in range(5):
        page = imagegen(library.env, "history", "--limit", "2", *cursor, "--json").json()
        assert len(page["items"]) <= 2
        seen += [g["id"] for g in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = ["--cursor", page["next_cursor"]]

    assert seen == [g["id"] for g in library.generations]


def test_show_json_returns_the_generation_as_generate_printed_it(library: Library) -> None:
    fox = library.fox.json()
    result = imagegen(library.env, "show", fox["id"], "--json").json()

    assert result["id"] == fox["id"]
    assert result["status"] == "succeeded"
    assert result["images"] == fox["images"]


# --- human-readable output ---------------------------------------------------------------------


@dataclass(frozen=True)
class PlainOutput:
    show: Run
    history: Run
    assets_list: Run
    assets_show: Run


@pytest.fixture(scope="module")
def plain(library: Library) -> PlainOutput:
    """The human-readable (non-JSON) listings of a library holding BRACKETS_PROMPT."""
    generated = library.brackets.json()
    runs = imagegen_many(
        library.env,
        ("show", generated["id"]),
        ("history",),
        ("assets", "list", "--tag", "brackets"),
        ("assets", "show", generated["assets"][0]["id"]),
    )
    return PlainOutput(*runs)


def test_json_output_keeps_a_prompt_with_square_brackets_verbatim(library: Library) -> None:
    generated = library.brackets.json()

    assert generated["prompt"] == BRACKETS_PROMPT
    assert generated["assets"][0]["title"] == BRACKETS_PROMPT


def test_show_prints_the_generation_and_a_prompt_with_square_brackets_verbatim(
    library: Library, plain: PlainOutput
) -> None:
    assert plain.show.code == 0, plain.show.stderr
    assert library.brackets.json()["id"] in plain.show.stdout
    assert "succeeded" in plain.show.stdout
    assert BRACKETS_PROMPT in plain.show.stdout


def test_history_table_prints_a_prompt_with_square_brackets_verbatim(plain: PlainOutput) -> None:
    assert plain.history.code == 0, plain.history.stderr[-300:]
    assert BRACKETS_PROMPT in plain.history.stdout


def test_assets_list_prints_a_title_with_square_brackets_verbatim(plain: PlainOutput) -> None:
    assert plain.assets_list.code == 0, plain.assets_list.stderr[-300:]
    assert BRACKETS_PROMPT in plain.assets_list.stdout


def test_assets_show_prints_a_title_with_square_brackets_verbatim(plain: PlainOutput) -> None:
    assert plain.assets_show.code == 0, plain.assets_show.stderr[-300:]
    assert BRACKETS_PROMPT in plain.assets_show.stdout


# --- the DAM -----------------------------------------------------------------------------------


def test_assets_save_list_show_and_export_round_trip(library: Library, tmp_path: Path) -> None:
    fox, sea = library.fox.json(), library.sea.json()
    (image,) = sea["images"]

    saved = imagegen(
        library.env, "assets", "save", image["id"], "--tag", "saved", "--title", "Sea",
        "--json",
    ).json()  # fmt: skip
    by_generate, listed, shown, exported = imagegen_many(
        library.env,
        ("assets", "list", "--tag", "fox", "--json"),
        ("assets", "list", "--tag", "saved", "--json"),
        ("assets", "show", saved["id"], "--json"),
        ("assets", "export", saved["id"], "--to", str(tmp_path / "out"), "--json"),
    )

    assert sorted(ids(by_generate)) == sorted(a["id"] for a in fox["assets"])
    assert saved["id"].startswith("ast_")
    assert (saved["image_id"], saved["generation_id"]) == (image["id"], sea["id"])
    assert saved["tags"] == ["saved"]
    assert saved["title"] == "Sea"
    assert ids(listed) == [saved["id"]]
    asset = shown.json()
    assert asset["sha256"] == image["sha256"]
    assert asset["provenance"]["generation_id"] == sea["id"]
    assert asset["provenance"]["prompt"] == "a wide teal sea"
    target = Path(exported.json()["path"])
    assert target.parent == (tmp_path / "out").resolve()
    assert sha256_of(target) == image["sha256"]


# --- catalogue, maintenance --------------------------------------------------------------------


def test_models_and_estimate_json_agree_on_the_price(cli_env: dict[str, str]) -> None:
    models, estimate = imagegen_many(
        cli_env,
        ("models", "--json"),
        ("estimate", "--n", "3", "--size", "64x64", "--format", "webp", "--json"),
    )

    catalogue = {(m["provider"], m["model"]): m for m in models.json()["models"]}
    local = catalogue[("local", "procedural")]
    assert "png" in local["formats"]
    quote = estimate.json()
    assert (quote["provider"], quote["model"]) == ("local", "procedural")
    assert (quote["n"], quote["size"], quote["format"]) == (3, "64x64", "webp")
    assert quote["credits"] == 3 * local["credits_per_image"]


def test_db_upgrade_migrates_once_then_reports_up_to_date(cli_env: dict[str, str]) -> None:
    first = imagegen(cli_env, "db", "upgrade")
    second = imagegen(cli_env, "db", "upgrade")

    assert first.code == 0, first.stderr
    assert "upgraded from empty" in first.stdout
    assert second.code == 0, second.stderr
    assert "up to date" in second.stdout


def test_sweep_json_releases_nothing_when_no_generation_is_stuck(library: Library) -> None:
    assert library.sweep.json() == {"released": 0}


def test_version_prints_the_package_version(cli_env: dict[str, str]) -> None:
    from imagegen import __version__

    run = imagegen(cli_env, "--version")

    assert run.code == 0
    assert run.stdout.strip() == f"imagegen {__version__}"


# --- errors and exit codes ---------------------------------------------------------------------

INVALID_GENERATIONS = {
    "empty-prompt": ("generate", "", "--size", "64x64"),
    "size-not-wxh": ("generate", "a fox", "--size", "abc"),
    "size-zero": ("generate", "a fox", "--size", "0x0"),
    "n-zero": ("generate", "a fox", "--size", "64x64", "--n", "0"),
    "n-above-max": ("generate", "a fox", "--size", "64x64", "--n", "11"),
    "unknown-provider": ("generate", "a fox", "--provider", "nope"),
    "unknown-model": ("generate", "a fox", "--model", "nope"),
    "unsupported-format": ("generate", "a fox", "--size", "64x64", "--format", "gif"),
}
INVALID_OTHERS = {
    "show-unknown-generation": ("show", "gen_doesnotexist", "--json"),
    "history-from-not-a-date": ("history", "--from", "notadate", "--json"),
    "history-unknown-status": ("history", "--status", "nope", "--json"),
    "assets-show-unknown": ("assets", "show", "ast_doesnotexist"),
}
INVALID = {**INVALID_GENERATIONS, **INVALID_OTHERS}


# An account holding 1 credit; asking for 2 images is refused with exit 3.
SHORT_OF_CREDITS = ("generate", "a fox", "--n", "2", "--size", "64x64", "--json")


@dataclass(frozen=True)
class Rejections:
    before: dict[str, Any]
    runs: dict[str, Run]
    after: dict[str, Any]
    history: dict[str, Any]


@pytest.fixture(scope="module")
def rejections(tmp_path_factory: pytest.TempPathFactory) -> Rejections:
    """Every refused command, run side by side on one data dir whose account holds 1 credit."""
    env = environment(tmp_path_factory.mktemp("rejections") / "data", starting_credits=1)
    before = imagegen(env, "credits", "balance", "--json").json()
    commands = {**INVALID, "short-of-credits": SHORT_OF_CREDITS}
    runs = dict(zip(commands, imagegen_many(env, *commands.values()), strict=True))
    after, history = imagegen_many(env, ("credits", "balance", "--json"), ("history", "--json"))
    return Rejections(before, runs, after.json(), history.json())


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_input_or_unknown_id_exits_2_with_one_error_line(
    rejections: Rejections, case: str
) -> None:
    assert_one_line_error(rejections.runs[case], 2)


def test_insufficient_credits_exits_3_with_one_error_line(rejections: Rejections) -> None:
    run = rejections.runs["short-of-credits"]

    assert_one_line_error(run, 3)
    assert "credits" in run.stderr


def test_refused_generations_record_reserve_and_charge_nothing(rejections: Rejections) -> None:
    assert rejections.before == {
        "tenant_id": "default",
        "balance": 1,
        "reserved": 0,
        "available": 1,
    }
    assert rejections.after == rejections.before
    assert rejections.history == {"items": [], "next_cursor": None}


def test_invalid_setting_is_one_error_line_naming_the_variable(cli_env: dict[str, str]) -> None:
    cli_env["IMAGEGEN_STARTING_CREDITS"] = "lots"

    runs = imagegen_many(
        cli_env, ("models", "--json"), ("db", "upgrade"), ("credits", "balance", "--json")
    )

    for run in runs:
        assert_one_line_error(run, 1)
        assert "IMAGEGEN_STARTING_CREDITS" in run.stderr


# --- the same on PostgreSQL ------------------------------------------------------------------


@pytest.mark.postgres
def test_main_commands_work_on_postgresql(cli_env: dict[str, str], postgres_url: str) -> None:
    env = {**cli_env, "IMAGEGEN_DATABASE_URL": postgres_url, "IMAGEGEN_STARTING_CREDITS": "10"}
    upgrade = imagegen(env, "db", "upgrade")
    generated, failure, invalid = imagegen_many(
        env,
        ("generate", "a red fox", "--n", "2", "--size", "64x64", "--tag", "pg", "--json"),
        FAIL,
        ("generate", "a fox", "--size", "64x64", "--n", "0"),
    )
    result = generated.json()
    balance, history, shown, assets, verify = imagegen_many(
        env,
        ("credits", "balance", "--json"),
        ("history", "--json"),
        ("show", result["id"], "--json"),
        ("assets", "list", "--tag", "pg", "--json"),
        ("credits", "verify"),
    )

    assert "postgresql" in upgrade.stdout
    assert "upgraded from empty" in upgrade.stdout
    assert result["status"] == "succeeded"
    assert result["credits_charged"] == 2
    for image in result["images"]:
        assert sha256_of(Path(image["path"])) == image["sha256"]
    assert_one_line_error(failure, 4)
    assert_one_line_error(invalid, 2)
    assert balance.json() == {"tenant_id": "default", "balance": 8, "reserved": 0, "available": 8}
    by_status = {g["status"]: g for g in history.json()["items"]}
    assert sorted(by_status) == ["failed", "succeeded"]
    assert by_status["succeeded"]["id"] == result["id"]
    assert by_status["failed"]["failure_code"] == "provider_unavailable"
    assert shown.json()["images"] == result["images"]
    assert len(assets.json()["items"]) == 2
    assert verify.code == 0, verify.stderr
