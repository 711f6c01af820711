"""The real ``imagegen`` command against the provider emulators, each in its own process.

``imagegen emulate openai|replicate|stability`` runs as a subprocess on a free port (as a user
would run it); the library reaches it through ``IMAGEGEN_*_API_KEY`` / ``*_BASE_URL`` only.
Checked end to end: generating on each provider is charged what ``imagegen estimate`` said,
``imagegen providers health`` is ok for all, ``imagegen edit`` inpaints a DAM asset with a mask
on Stability, and a wrong key exits 4 without ever printing the key.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_runner import COMMAND, imagegen, imagegen_many
from PIL import Image

pytestmark = pytest.mark.slow


KEYS = {
    "openai": "sk-proj-cli-OpenaiSecret0123456789",
    "replicate": "r8_cli_ReplicateSecret0123456789",
    "stability": "sk-cli-StabilitySecret0123456789",
}
WRONG_KEYS = {
    "openai": "sk-proj-WRONG-openai-Zq8Rt5Vx2Lm9",
    "replicate": "r8_WRONG_replicate_Hy7Kp3Wd6Nb1",
    "stability": "sk-WRONG-stability-Jc4Fs8Gu1Ye5",
}
KEY_VARIABLE = {
    "openai": "IMAGEGEN_OPENAI_API_KEY",
    "replicate": "IMAGEGEN_REPLICATE_API_TOKEN",
    "stability": "IMAGEGEN_STABILITY_API_KEY",
}
MODELS = {
    "openai": "gpt-image-2",
    "replicate": "black-forest-labs/flux-schnell",
    "stability": "stable-image-core",
}
COMPOSITE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"


# --- running things ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop(process: subprocess.Popen[Any]) -> None:
    """SIGTERM (uvicorn shuts down), then SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait(timeout=10)


def wait_until_answering(base_url: str, process: subprocess.Popen[Any], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, f"the emulator exited: {log.read_text()}"
        try:
            if httpx.get(f"{base_url}/_emulator/requests", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"the emulator at {base_url} never answered"
        time.sleep(0.05)


# --- the emulators, one process each -----------------------------------------------------------


@pytest.fixture(scope="module")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """``imagegen emulate <provider>`` for each provider; yields their base URLs and stops
    every process at the end, whatever happened."""
    logs = tmp_path_factory.mktemp("emulators")
    processes: list[subprocess.Popen[bytes]] = []
    urls: dict[str, str] = {}
    handles = []
    try:
        started = []
        for provider, key in KEYS.items():
            port = free_port()
            log = logs / f"{provider}.log"
            handle = log.open("wb")
            handles.append(handle)
            process = subprocess.Popen(
                [*COMMAND, "emulate", provider, "--port", str(port), "--api-key", key],
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            processes.append(process)
            urls[provider] = f"http://127.0.0.1:{port}"
            started.append((provider, process, log))
        for provider, process, log in started:
            wait_until_answering(urls[provider], process, log)
        yield urls
    finally:
        for process in processes:
            stop(process)
        for handle in handles:
            handle.close()
    assert all(p.poll() is not None for p in processes)  # all stopped


@pytest.fixture
def env(cli_env: dict[str, str], emulators: dict[str, str]) -> dict[str, str]:
    environment = dict(cli_env)
    for name in ("OPENAI_API_KEY", "REPLICATE_API_TOKEN", "STABILITY_API_KEY"):
        environment.pop(name, None)
    environment.update(
        IMAGEGEN_OPENAI_API_KEY=KEYS["openai"],
        IMAGEGEN_OPENAI_BASE_URL=f"{emulators['openai']}/v1",
        IMAGEGEN_REPLICATE_API_TOKEN=KEYS["replicate"],
        IMAGEGEN_REPLICATE_BASE_URL=emulators["replicate"],
        IMAGEGEN_STABILITY_API_KEY=KEYS["stability"],
        IMAGEGEN_STABILITY_BASE_URL=emulators["stability"],
        IMAGEGEN_PROVIDER_RETRY_BASE_DELAY_SECONDS="0.01",
        IMAGEGEN_PROVIDER_MAX_ATTEMPTS="2",
    )
    return environment


def recorded(base_url: str) -> list[dict[str, Any]]:
    data = httpx.get(f"{base_url}/_emulator/requests", timeout=5).json()
    requests: list[dict[str, Any]] = data["requests"] if isinstance(data, dict) else data
    return requests


def mask_file(path: Path, size: tuple[int, int]) -> Path:
    image = Image.new("RGBA", size, (0, 0, 0, 255))
    width, height = size
    image.paste((0, 0, 0, 0), (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    image.save(path, "PNG")
    return path


# --- generating ----------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", list(MODELS))
def test_generate_against_the_emulator_succeeds_and_charges_the_estimate(
    env: dict[str, str], emulators: dict[str, str], provider: str
) -> None:
    model = MODELS[provider]
    prompt = f"a red fox for {provider}"
    estimate, generated = imagegen_many(
        env,
        ("estimate", "--provider", provider, "--model", model, "--json"),
        ("generate", prompt, "--provider", provider, "--model", model, "--json"),
    )
    quoted, result = estimate.json(), generated.json()

    assert result["status"] == "succeeded"
    assert (result["provider"], result["model"]) == (provider, model)
    assert result["credits_charged"] == quoted["credits"] > 0
    (image,) = result["images"]
    with Image.open(image["path"]) as picture:
        picture.load()
        assert picture.size == (image["width"], image["height"])
    assert any(prompt in json.dumps(r) for r in recorded(emulators[provider]))
    balance = imagegen(env, "credits", "balance", "--json").json()
    assert balance["balance"] == 100 - quoted["credits"]
    assert balance["reserved"] == 0


def test_providers_health_is_ok_for_every_provider(env: dict[str, str]) -> None:
    run = imagegen(env, "providers", "health", "--json")

    reports = {r["provider"]: r for r in run.json()["providers"]}
    assert {"openai", "replicate", "stability"} <= set(reports)
    assert all(report["ok"] for report in reports.values()), reports


# --- editing a DAM asset -------------------------------------------------------------------------


def _source_asset(env: dict[str, str]) -> dict[str, Any]:
    generated = imagegen(
        env, "generate", "a blue door", "--size", "256x256", "--tag", "source", "--json"
    ).json()
    (asset,) = generated["assets"]
    return dict(asset)


def _assert_inpainted(result: dict[str, Any], asset: dict[str, Any]) -> None:
    assert result["status"] == "succeeded"
    assert (result["provider"], result["model"]) == ("stability", "stable-image-inpaint")
    assert result["credits_charged"] == 5
    (image,) = result["images"]
    assert (image["width"], image["height"]) == (asset["width"], asset["height"])
    data = Path(image["path"]).read_bytes()
    assert COMPOSITE.encode() in data
    assert re.search(rb"<imagegen:parentAssetId>" + asset["id"].encode(), data)


def test_edit_inpaints_a_dam_asset_with_a_mask_on_stability(
    env: dict[str, str], tmp_path: Path
) -> None:
    asset = _source_asset(env)
    mask = mask_file(tmp_path / "m.png", (asset["width"], asset["height"]))

    result = imagegen(
        env,
        "edit",
        asset["id"],
        "a red door",
        "--provider",
        "stability",
        "--model",
        "stable-image-inpaint",
        "--operation",
        "inpaint",
        "--mask",
        str(mask),
        "--json",
    ).json()

    _assert_inpainted(result, asset)


def test_edit_with_a_mask_on_an_inpaint_model_needs_no_operation(
    env: dict[str, str], tmp_path: Path
) -> None:
    asset = _source_asset(env)
    mask = mask_file(tmp_path / "m.png", (asset["width"], asset["height"]))

    run = imagegen(
        env,
        "edit",
        asset["id"],
        "a red door",
        "--provider",
        "stability",
        "--model",
        "stable-image-inpaint",
        "--mask",
        str(mask),
        "--json",
    )

    _assert_inpainted(run.json(), asset)


# --- a wrong key ---------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", list(MODELS))
def test_a_wrong_key_exits_4_and_never_prints_the_key(env: dict[str, str], provider: str) -> None:
    wrong = dict(env)
    wrong[KEY_VARIABLE[provider]] = WRONG_KEYS[provider]

    # One after the other: the first command also creates the fresh data dir's database.
    generated = imagegen(
        wrong,
        "generate",
        "a red fox",
        "--provider",
        provider,
        "--model",
        MODELS[provider],
        "--json",
    )
    health = imagegen(wrong, "providers", "health", provider, "--json")

    assert generated.code == 4, generated.stderr
    assert generated.stdout == ""
    assert generated.stderr.startswith("error: ")
    assert health.code == 4
    (report,) = json.loads(health.stdout)["providers"]
    assert report["provider"] == provider
    assert report["ok"] is False
    for run in (generated, health):
        shown = run.stdout + run.stderr
        for secret in (WRONG_KEYS[provider], KEYS[provider]):
            assert secret not in shown
            assert secret[-12:] not in shown  # nor a recognisable part of it,
            assert secret[-4:] not in shown  # nor the masked echo OpenAI sends back
