"""The fast lane of ``ktracecli available``: which command lines it takes, and that it leaves
every other one to the Typer app (which it must match: see tests/e2e/test_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ktracecli import entry
from ktracecli.entry import PlainAvailable


@pytest.mark.parametrize(("args", "plain"), [
    (["available", "/bin/true"], PlainAvailable(None, "/bin/true")),
    (["available", "--mod", "libc.so.6", "/bin/true"], PlainAvailable(None, "/bin/true", mod="libc.so.6")),
    (["available", "/bin/true", "--rejected", "--mod=libc*"],
     PlainAvailable(None, "/bin/true", rejected=True, mod="libc*")),
    (["--config", "c.toml", "available", "--rejected", "prog"], PlainAvailable(Path("c.toml"), "prog", True)),
    (["--config=c.toml", "available", "prog"], PlainAvailable(Path("c.toml"), "prog")),
])
def test_plain_command_lines_are_taken(args: list[str], plain: PlainAvailable) -> None:
    assert entry.plain_available(args, {}) == plain


@pytest.mark.parametrize("args", [
    [], ["--help"], ["engine"], ["tracer", "--list"], ["record", "available"],
    ["available"], ["available", "--help"], ["available", "prog", "--help"], ["available", "-h", "prog"],
    ["available", "prog", "other"], ["available", "--", "prog"], ["available", "-"],
    ["available", "prog", "--mod"], ["available", "prog", "--mod", ""], ["available", "prog", "--mod="],
    ["available", "--mod", "--rejected", "prog"], ["available", "prog", "--mod", "a", "--mod", "b"],
    ["available", "prog", "--rejected", "--rejected"], ["available", "prog", "--rejected=yes"],
    ["available", "prog", "--bogus"], ["available", "prog", "--config", "c.toml"],
    ["--config"], ["--config", "available"], ["--config", "", "available", "prog"],
    ["--config", "-", "available", "prog"], ["--bogus", "available", "prog"],
])
def test_other_command_lines_go_to_typer(args: list[str]) -> None:
    assert entry.plain_available(args, {}) is None


def test_a_config_path_click_would_refuse_goes_to_typer(tmp_path: Path) -> None:
    assert entry.plain_available(["--config", str(tmp_path), "available", "prog"], {}) is None
    missing = tmp_path / "missing" / "config.toml"
    assert entry.plain_available(["--config", str(missing), "available", "prog"], {}) == PlainAvailable(
        missing, "prog")


def test_a_shell_completion_request_goes_to_typer() -> None:
    assert entry.plain_available(["available", "prog"], {entry.COMPLETION_VAR: "bash_complete"}) is None
