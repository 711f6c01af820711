"""Running the real ``imagegen`` command in tests: one JSON line in, typed results out."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

_SCRIPT = Path(sys.executable).parent / "imagegen"
COMMAND = (
    [str(_SCRIPT)]
    if _SCRIPT.exists()
    else [sys.executable, "-c", "from imagegen.interfaces.cli import main; main()"]
)
TIMEOUT_S = 60


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        """The single JSON object on stdout (fails if there is anything else)."""
        assert self.code == 0, f"imagegen {' '.join(self.args)} exited {self.code}: {self.stderr}"
        lines = self.stdout.splitlines()
        assert len(lines) == 1, f"expected one line of JSON, got {self.stdout!r}"
        data = json.loads(lines[0])
        assert isinstance(data, dict)
        return data


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*COMMAND, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def finish(process: subprocess.Popen[str], args: tuple[str, ...]) -> Run:
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"imagegen {' '.join(args)} did not finish within {TIMEOUT_S} s")
    return Run(args, process.returncode, stdout, stderr)


def imagegen(env: dict[str, str], *args: str) -> Run:
    return finish(start(env, *args), args)


def imagegen_many(env: dict[str, str], *argvs: tuple[str, ...]) -> list[Run]:
    """Run independent commands at the same time (each start costs ~0.7 s of CPU)."""
    processes = [(start(env, *argv), argv) for argv in argvs]
    return [finish(process, argv) for process, argv in processes]
