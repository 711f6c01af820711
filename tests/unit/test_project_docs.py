"""The docs promise what the code does: the CI runs the README's test command, and the
documented error tree lists every error class."""

from __future__ import annotations

import re
from pathlib import Path

import imagegen
from imagegen.domain import errors

ROOT = Path(__file__).resolve().parents[2]


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_the_readme_quick_start_has_exactly_two_commands() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2
    assert "imagegen generate" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert quick_start_commands()[1] in ci


def all_error_classes() -> set[type[errors.ImageGenError]]:
    found: set[type[errors.ImageGenError]] = set()
    pending: list[type[errors.ImageGenError]] = [errors.ImageGenError]
    while pending:
        cls = pending.pop()
        found.add(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_the_error_tree_in_the_docstring_names_every_error() -> None:
    doc = errors.__doc__ or ""
    missing = {cls.__name__ for cls in all_error_classes() if cls.__name__ not in doc}
    assert not missing


def test_every_error_is_exported_from_the_package_with_a_unique_code() -> None:
    classes = all_error_classes()
    assert all(getattr(imagegen, cls.__name__) is cls for cls in classes)
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes))
