"""Bad input: one ``ktracecli: `` line on stderr, a non-zero exit, no traceback,
and the config file left exactly as it was."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from conftest import VARIANTS, Builder, Ktrace, assert_user_error


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


@pytest.fixture
def configured(ktrace: Ktrace) -> Ktrace:
    """A runner whose config already says ktrace + function, tracing leaf_a."""
    ktrace.configure(["leaf_a"])
    return ktrace


def _assert_config_untouched(ktrace: Ktrace, before: dict[str, bytes]) -> None:
    after = _snapshot(ktrace.config.parent)
    assert after == before, "a failed command changed or left files next to the config"


def _elf32(path: Path) -> Path:
    """A minimal i386 ELF32 executable header (gcc -m32 is not always installed)."""
    ident = b"\x7fELF" + bytes([1, 1, 1, 0]) + bytes(8)  # ELFCLASS32, little endian
    header = ident + struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, 0x08049000, 52, 0, 0,
                                 52, 32, 0, 40, 0, 0)
    path.write_bytes(header)
    path.chmod(0o755)
    return path


def _not_elf(path: Path) -> Path:
    path.write_bytes(b"this is not an ELF file\n" * 4)
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("command", ["record", "available"])
def test_missing_program(configured: Ktrace, tmp_path: Path, command: str) -> None:
    before = _snapshot(configured.config.parent)
    missing = tmp_path / "no-such-program"
    if command == "record":
        proc = configured.run("record", "-o", tmp_path / "d", "--", missing)
    else:
        proc = configured.run("available", missing)
    assert_user_error(proc)
    _assert_config_untouched(configured, before)


@pytest.mark.parametrize("make", [_not_elf, _elf32], ids=["not-elf", "elf32"])
@pytest.mark.parametrize("command", ["record", "available"])
def test_not_an_x86_64_elf(configured: Ktrace, tmp_path: Path, command: str, make) -> None:
    bad = make(tmp_path / "bad-program")
    before = _snapshot(configured.config.parent)
    if command == "record":
        proc = configured.run("record", "-o", tmp_path / "d", "--", bad)
    else:
        proc = configured.run("available", bad)
    assert_user_error(proc)
    _assert_config_untouched(configured, before)
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


def test_pattern_matching_nothing(builder: Builder, configured: Ktrace, tmp_path: Path) -> None:
    exe = builder.build("basic", VARIANTS[0])
    configured.ok("ktrace", "add", "no_such_function_xyz")
    proc = configured.run("record", "-o", tmp_path / "d", "--", exe, "3", "3")
    assert_user_error(proc, "no_such_function_xyz")
    assert proc.stdout == "", "the program ran although its patterns match nothing"


@pytest.mark.parametrize("args", [["engine", "no-such-engine"], ["tracer", "no-such-tracer"]],
                         ids=["engine", "tracer"])
def test_unknown_names(configured: Ktrace, args: list[str]) -> None:
    before = _snapshot(configured.config.parent)
    assert_user_error(configured.run(*args), args[1])
    _assert_config_untouched(configured, before)


CORRUPT_CONFIGS = {
    "not-toml": b"[[[ engine = \n\x00\xff garbage",
    "truncated": b'engine = "ktr',
    "empty-binary": b"\xff\xfe\xfd",
}


@pytest.mark.parametrize("content", CORRUPT_CONFIGS.values(), ids=CORRUPT_CONFIGS.keys())
@pytest.mark.parametrize("args", [["ktrace", "list"], ["engine", "ktrace"],
                                  ["ktrace", "add", "leaf_a"], ["tracer", "function"]],
                         ids=["list", "engine", "add", "tracer"])
def test_corrupt_config(ktrace: Ktrace, args: list[str], content: bytes) -> None:
    ktrace.config.write_bytes(content)
    before = _snapshot(ktrace.config.parent)
    assert_user_error(ktrace.run(*args))
    _assert_config_untouched(ktrace, before)


def test_corrupt_config_record(builder: Builder, ktrace: Ktrace, tmp_path: Path) -> None:
    exe = builder.build("basic", VARIANTS[0])
    ktrace.config.write_bytes(CORRUPT_CONFIGS["not-toml"])
    proc = ktrace.run("record", "-o", tmp_path / "d", "--", exe, "3", "3")
    assert_user_error(proc)
    assert proc.stdout == ""


def test_show_missing_data_dir(ktrace: Ktrace, tmp_path: Path) -> None:
    assert_user_error(ktrace.run("show", tmp_path / "no-such-dir"))
    # no argument: ktrace.data in the current directory, which does not exist here
    assert_user_error(ktrace.run("show"))


def test_show_empty_or_file(ktrace: Ktrace, tmp_path: Path) -> None:
    empty = tmp_path / "empty.data"
    empty.mkdir()
    assert_user_error(ktrace.run("show", empty))
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    assert_user_error(ktrace.run("show", a_file))


def test_show_corrupt_data_dir(builder: Builder, configured: Ktrace, tmp_path: Path) -> None:
    exe = builder.build("basic", VARIANTS[0])
    data = tmp_path / "trace.data"
    proc = configured.run("record", "-o", data, "--", exe, "3", "3")
    assert proc.returncode == 0, proc.stderr
    files = [p for p in data.rglob("*") if p.is_file()]
    assert files, "record wrote no files"
    for path in files:
        path.write_bytes(b"\x00corrupt\xff" * 3)
    assert_user_error(configured.run("show", data))


def test_no_partial_config_on_failure(ktrace: Ktrace) -> None:
    """A fresh config: a failing first command must not leave a config file behind half-written."""
    assert_user_error(ktrace.run("engine", "no-such-engine"))
    leftovers = set(os.listdir(ktrace.config.parent)) - {"cwd", ktrace.config.name}
    assert not leftovers, f"files left next to the config: {leftovers}"
    if ktrace.config.exists():
        ktrace.ok("ktrace", "list")
