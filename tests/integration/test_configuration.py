"""Settings come from IMAGEGEN_* variables; bad database settings fail clearly, without
leaking the password."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagegen import AsyncImageGen, ConfigurationError, Settings


def test_settings_read_imagegen_environment_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("IMAGEGEN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("IMAGEGEN_STARTING_CREDITS", "7")
    monkeypatch.setenv("IMAGEGEN_LOCAL_CREDITS_PER_IMAGE", "3")
    settings = Settings()
    assert settings.data_dir == tmp_path
    assert settings.starting_credits == 7
    assert settings.local_credits_per_image == 3
    assert settings.database_url_value() == f"sqlite:///{tmp_path / 'imagegen.db'}"
    assert settings.assets_dir == tmp_path / "assets"


def test_the_database_url_is_secret_in_reprs(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="postgresql://u:hunter2@h/db")  # type: ignore[arg-type]
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.model_dump())


async def test_an_unreachable_database_is_a_configuration_error_without_the_password(
    tmp_path: Path,
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url="postgresql+psycopg://bob:hunter2@127.0.0.1:1/nowhere",  # type: ignore[arg-type]
    )
    gen = AsyncImageGen(settings)
    with pytest.raises(ConfigurationError) as caught:
        await gen.balance()
    assert "hunter2" not in str(caught.value)
    assert "bob:***@127.0.0.1:1/nowhere" in str(caught.value)
    await gen.aclose()


@pytest.mark.parametrize("url", ["mysql://root@localhost/db", "not a url at all"])
def test_an_unsupported_database_url_is_refused_when_the_client_is_built(
    tmp_path: Path, url: str
) -> None:
    with pytest.raises(ConfigurationError):
        AsyncImageGen(Settings(data_dir=tmp_path, database_url=url)).container.gateways.engine()  # type: ignore[arg-type]
