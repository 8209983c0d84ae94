"""The function_graph settings kept as the kernel keeps them: max_graph_depth, tracing_thresh
(``ktracecli config``) and the funcgraph trace options (``ktracecli options``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from ktracecli import cli, config
from ktracecli.errors import ConfigError
from ktracecli.options import OPTIONS, TraceOptions


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``ktracecli --config CFG ARGS...`` in-process, through the real error boundary."""
    monkeypatch.delenv(config.ENV_VAR, raising=False)
    cfg = tmp_path / "config.toml"

    def invoke(*args: str) -> Result:
        capsys.readouterr()
        try:
            cli.main(["--config", str(cfg), *args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    invoke.cfg = cfg  # type: ignore[attr-defined]
    yield invoke


def one_error(result: Result, *words: str) -> None:
    assert result.code != 0 and result.out == ""
    assert result.err.count("\n") == 1 and result.err.startswith("ktracecli: "), result.err
    for word in words:
        assert word in result.err, result.err


def test_tracers_are_listed_in_kernel_order(run: Any) -> None:
    assert run("tracer", "--list").out == "function_graph function nop\n"


def test_config_shows_and_sets_the_graph_knobs(run: Any) -> None:
    assert run("config").out == "buffer_size_kb = 16384\nmax_graph_depth = 0\ntracing_thresh = 0\n"
    assert run("config", "max_graph_depth", "5").code == 0
    assert run("config", "tracing_thresh", "250").code == 0
    assert run("config", "max_graph_depth").out == "5\n"
    assert run("config", "tracing_thresh").out == "250\n"
    loaded = config.load(run.cfg)
    assert (loaded.max_graph_depth, loaded.tracing_thresh) == (5, 250)
    text = run.cfg.read_text()
    assert "max_graph_depth = 5\n" in text and "tracing_thresh = 250\n" in text
    assert run("config", "max_graph_depth", "0").code == 0  # 0 = unlimited, like the kernel's file
    assert config.load(run.cfg).max_graph_depth == 0


@pytest.mark.parametrize(("args", "words"), [
    (("config", "max_graph_depth", "-1"), ("max_graph_depth", "integer >= 0")),
    (("config", "tracing_thresh", "ten"), ("tracing_thresh", "'ten'")),
    (("config", "max_depth", "3"), ("unknown setting 'max_depth'", "max_graph_depth")),
    (("config", "buffer_size_kb", "0"), ("buffer_size_kb",)),
    (("options", "funcgraph-color"), ("unknown trace option 'funcgraph-color'",)),
    (("options", "nofuncgraph-colour"), ("unknown trace option",)),
    (("show", "-O", "funcgraph-pid"), ("unknown trace option 'funcgraph-pid'",)),
])
def test_bad_settings_are_one_line_errors(run: Any, args: tuple[str, ...], words: tuple[str, ...]) -> None:
    one_error(run(*args), *words)
    assert not run.cfg.exists()


def test_options_list_like_trace_options(run: Any) -> None:
    defaults = run("options").out.splitlines()
    assert defaults == [o.name if o.default else f"no{o.name}" for o in OPTIONS]
    assert "funcgraph-cpu" in defaults and "nofuncgraph-proc" in defaults and "nofuncgraph-tail" in defaults


def test_options_are_set_and_cleared_and_only_changes_are_kept(run: Any) -> None:
    assert run("options", "funcgraph-proc", "nofuncgraph-cpu").code == 0
    lines = run("options").out.splitlines()
    assert "funcgraph-proc" in lines and "nofuncgraph-cpu" in lines
    text = run.cfg.read_text()
    assert "[options]" in text and "funcgraph-proc = true" in text and "funcgraph-cpu = false" in text
    assert run("options", "nofuncgraph-proc", "funcgraph-cpu").code == 0
    assert config.load(run.cfg).options == TraceOptions()
    assert "funcgraph-proc" not in run.cfg.read_text()


def test_option_tokens_parse_like_the_kernel() -> None:
    opts = TraceOptions()
    assert "funcgraph-tail" not in opts and "funcgraph-overhead" in opts
    opts = opts.set("funcgraph-tail").set("nofuncgraph-overhead")
    assert "funcgraph-tail" in opts and "funcgraph-overhead" not in opts
    assert opts.changed() == {"funcgraph-tail": True, "funcgraph-overhead": False}


@pytest.mark.parametrize(("text", "message"), [
    ("max_graph_depth = -2\n", r"'max_graph_depth' must be an integer >= 0$"),
    ("tracing_thresh = 1.5\n", r"'tracing_thresh' must be an integer >= 0$"),
    ("max_graph_depth = true\n", r"'max_graph_depth' must be an integer >= 0$"),
    ("[options]\nfuncgraph-proc = 1\n", r"'options' must be a table of option = true/false$"),
    ("[options]\nfuncgraph-colour = true\n", r"options: unknown trace option 'funcgraph-colour'"),
    ("options = 3\n", r"'options' must be a table"),
])
def test_bad_values_in_the_file_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        config.load(path)


def test_hand_written_options_table_is_read(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('tracer = "function_graph"\nmax_graph_depth = 7\n\n[options]\nfuncgraph-abstime = true\n')
    loaded = config.load(path)
    assert loaded.max_graph_depth == 7 and "funcgraph-abstime" in loaded.options
