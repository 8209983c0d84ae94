"""The config file: defaults, round trip, comments kept, atomic writes, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ktracecli import config
from ktracecli.config import Config
from ktracecli.errors import ConfigError


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ktracecli" / "config.toml"


def test_missing_file_gives_the_defaults(path: Path) -> None:
    assert config.load(path) == Config(engine="ktrace", tracer="nop", filters=(), buffer_size_kb=16384)
    assert not path.exists()


def test_round_trip_creates_parent_directories(path: Path) -> None:
    wanted = Config(engine="mcount", tracer="function", filters=("foo*", "!bar", "malloc:mod:libc.so.6"),
                    buffer_size_kb=64)
    config.save(path, wanted)
    assert config.load(path) == wanted
    assert path.read_text().startswith('engine = "mcount"\n')


def test_update_keeps_user_comments_and_formatting(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(
        "# my tracing setup\n"
        'engine = "ktrace"  # the RFC engine\n'
        "buffer_size_kb = 8_192\n"
        "\n"
        "[ktrace]\n"
        "# the functions I care about\n"
        'filter = ["main"]\n'
    )
    new = config.update(path, tracer="function", filters=("main", "work*"))
    assert new == Config(tracer="function", filters=("main", "work*"), buffer_size_kb=8192)
    text = path.read_text()
    assert "# my tracing setup\n" in text
    assert 'engine = "ktrace"  # the RFC engine\n' in text
    assert "buffer_size_kb = 8_192\n" in text
    assert "# the functions I care about\n" in text
    assert config.load(path) == new


def test_save_leaves_no_temporary_file(path: Path) -> None:
    config.save(path, Config())
    config.update(path, engine="mcount")
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.toml"]


def test_failed_write_keeps_the_old_file(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config.save(path, Config(tracer="function"))
    before = path.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(ConfigError, match=r"^cannot write config file .*: No space left on device$"):
        config.update(path, tracer="nop")
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.toml"]


def test_save_through_a_symlink_keeps_the_symlink(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "ktracecli.toml"
    real.parent.mkdir()
    real.write_text('tracer = "nop"\n')
    link = tmp_path / "config.toml"
    link.symlink_to(real)
    config.update(link, tracer="function")
    assert link.is_symlink()
    assert config.load(real).tracer == "function"


def test_save_keeps_the_file_mode(path: Path) -> None:
    config.save(path, Config())
    path.chmod(0o640)
    config.update(path, engine="mcount")
    assert path.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("text, message", [
    ('engine = "ktrace"\nfilter = [\n\ntracer = "x"\n',
     r"^corrupt config file .*config\.toml: line 4: "),
    ('engine = 3\n', r"^invalid config file .*: 'engine' must be a non-empty string$"),
    ('tracer = ""\n', r"'tracer' must be a non-empty string$"),
    ('buffer_size_kb = "big"\n', r"'buffer_size_kb' must be a positive integer$"),
    ('buffer_size_kb = 0\n', r"'buffer_size_kb' must be a positive integer$"),
    ('buffer_size_kb = true\n', r"'buffer_size_kb' must be a positive integer$"),
    ('ktrace = 1\n', r"'ktrace' must be a table$"),
    ('[ktrace]\nfilter = "main"\n', r"'ktrace.filter' must be a list of strings$"),
    ('[ktrace]\nfilter = [1]\n', r"'ktrace.filter' must be a list of strings$"),
    ('[ktrace]\nfilter = ["1"]\n', r"ktrace.filter rule 1: .*index form"),
    ('tracr = "function"\n', r"unknown key 'tracr'$"),
    ('[ktrace]\nfitler = []\n', r"unknown key 'ktrace.fitler'$"),
])
def test_bad_file_is_one_line_config_error(path: Path, text: str, message: str) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        config.load(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


HAND_WRITTEN = """\
# ktracecli settings
engine = 'mcount'            # literal string
"tracer" = "function_graph"
buffer_size_kb = 1_024
max_graph_depth = 0x10

[ktrace]
filter = [
    "main",   # the program
    'malloc:mod:libc.so.6',
]

[options]
funcgraph-proc = true
"""


def test_load_reads_what_the_writer_reads(path: Path) -> None:
    """load() (tomllib where there is one) and save()/update() (tomlkit) agree on a hand-written file."""
    import tomlkit

    path.parent.mkdir(parents=True)
    path.write_text(HAND_WRITTEN)
    loaded = config.load(path)
    assert loaded == config._to_config(path, tomlkit.parse(HAND_WRITTEN).unwrap())
    assert (loaded.engine, loaded.buffer_size_kb, loaded.max_graph_depth) == ("mcount", 1024, 16)
    assert loaded.filters == ("main", "malloc:mod:libc.so.6")


@pytest.mark.parametrize("text", ['engine = \n', 'engine = "ktrace"\nengine = "mcount"\n', '[ktrace\n',
                                  'filter = ["a",, "b"]\n', 'tracer = "nop" x\n'])
def test_load_words_a_parse_error_as_the_writer_does(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(ConfigError) as loading:
        config.load(path)
    with pytest.raises(ConfigError) as saving:
        config.save(path, Config())
    assert str(loading.value) == str(saving.value)
    assert str(loading.value).startswith(f"corrupt config file {path}: line ")


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is in the standard library from 3.11")
def test_load_does_without_tomlkit(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(HAND_WRITTEN)
    code = (f"import sys; from pathlib import Path; from ktracecli import config; "
            f"config.load(Path({str(path)!r})); print('tomlkit' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout == "False\n"


def test_not_utf8_is_a_config_error(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b'engine = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load(path)


def test_save_refuses_to_overwrite_a_corrupt_file(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("engine = \n")
    with pytest.raises(ConfigError, match="corrupt config file"):
        config.save(path, Config())
    assert path.read_text() == "engine = \n"


def test_unreadable_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        config.load(tmp_path)


def test_update_rejects_a_bad_value(path: Path) -> None:
    with pytest.raises(ConfigError, match="'buffer_size_kb' must be a positive integer"):
        config.update(path, buffer_size_kb=-1)
    assert not path.exists()


class TestResolvePath:
    def test_explicit_path_wins(self) -> None:
        env = {"KTRACECLI_CONFIG": "/env.toml", "XDG_CONFIG_HOME": "/xdg"}
        assert config.resolve_path(Path("/cli.toml"), env) == Path("/cli.toml")

    def test_environment_variable_next(self) -> None:
        env = {"KTRACECLI_CONFIG": "/env.toml", "XDG_CONFIG_HOME": "/xdg"}
        assert config.resolve_path(None, env) == Path("/env.toml")

    def test_xdg_config_home(self) -> None:
        assert config.resolve_path(None, {"XDG_CONFIG_HOME": "/xdg"}) == Path("/xdg/ktracecli/config.toml")

    def test_default_and_relative_xdg_ignored(self) -> None:
        default = Path.home() / ".config" / "ktracecli" / "config.toml"
        assert config.resolve_path(None, {}) == default
        assert config.resolve_path(None, {"XDG_CONFIG_HOME": "rel", "KTRACECLI_CONFIG": ""}) == default
