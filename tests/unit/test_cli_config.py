"""The command line: config-editing commands, the error boundary, and the thin commands
that hand typed settings to the core (catalog, session, datadir are faked here)."""

from __future__ import annotations

import dataclasses
import json

import io
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ktracecli.options import TraceOptions

import ktracecli
from ktracecli import cli, config, console, nop
from ktracecli.hookspecs import hookimpl
from ktracecli.model import Refusal
from ktracecli.registry import Registry, build_registry, get_plugin_manager


class FakeKtraceEngine:
    name: ClassVar[str] = "ktrace"
    description: ClassVar[str] = "patches function entries with a jmp"


class FakeMcountEngine:
    name: ClassVar[str] = "mcount"
    description: ClassVar[str] = "uses the compiler's mcount calls"


class FakeFunctionTracer:
    name: ClassVar[str] = "function"
    description: ClassVar[str] = "function entries"


class FakePlugin:
    @hookimpl
    def ktrace_register_engines(self, registry: Registry) -> None:
        registry.add_engine(FakeKtraceEngine)  # type: ignore[arg-type]
        registry.add_engine(FakeMcountEngine)  # type: ignore[arg-type]

    @hookimpl
    def ktrace_register_tracers(self, registry: Registry) -> None:
        registry.add_tracer(FakeFunctionTracer)  # type: ignore[arg-type]


@pytest.fixture
def registry() -> Registry:
    """A registry built by a fresh plugin manager: fake engines, a fake function tracer, the real nop."""
    pm = get_plugin_manager(load_entrypoints=False)
    pm.register(FakePlugin())
    pm.register(nop)
    return build_registry(pm)


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry: Registry) -> Path:
    """The config file the commands use (through --config), with the fake registry installed."""
    monkeypatch.delenv(config.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(cli, "build_registry", lambda: registry)
    return tmp_path / "config.toml"


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def run(cfg: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    """Run ``ktracecli --config CFG ARGS...`` in-process through main(), the real error boundary."""

    def invoke(*args: str) -> Run:
        capsys.readouterr()
        try:
            cli.main(["--config", str(cfg), *args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    yield invoke


def fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **attrs: Any) -> None:
    """Install a stand-in for a core module the CLI imports lazily (``ktracecli.<name>``)."""
    module = types.ModuleType(f"ktracecli.{name}")
    module.__dict__.update(attrs)
    monkeypatch.setitem(sys.modules, f"ktracecli.{name}", module)
    monkeypatch.setattr(ktracecli, name, module, raising=False)


def ktracecli_subprocess(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ktracecli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


# --- engine and tracer ----------------------------------------------------------------------


def test_engine_shows_sets_and_lists(run: Any, cfg: Path) -> None:
    assert run("engine").out == "ktrace\n"
    assert run("engine", "mcount").code == 0
    assert config.load(cfg).engine == "mcount"
    assert run("engine").out == "mcount\n"
    listing = run("engine", "--list").out.splitlines()
    assert listing == [" ktrace   patches function entries with a jmp",
                       "[mcount]  uses the compiler's mcount calls"]


def test_unknown_engine_is_one_line_usage_error(run: Any, cfg: Path) -> None:
    result = run("engine", "bogus")
    assert result.code == 2
    assert result.err == "ktracecli: unknown engine 'bogus' (available: ktrace mcount)\n"
    assert not cfg.exists()


def test_engine_name_and_list_together_is_an_error(run: Any) -> None:
    result = run("engine", "ktrace", "--list")
    assert (result.code, result.err) == (2, "ktracecli: give an engine NAME or --list, not both\n")


def test_tracer_defaults_to_nop_and_lists_kernel_style(run: Any, cfg: Path) -> None:
    assert run("tracer").out == "nop\n"
    assert run("tracer", "--list").out == "function nop\n"
    assert run("tracer", "function").code == 0
    assert config.load(cfg).tracer == "function"


def test_unknown_tracer_is_one_line_usage_error(run: Any) -> None:
    result = run("tracer", "function_graph")
    assert result.code == 2
    assert result.err == "ktracecli: unknown tracer 'function_graph' (available: function nop)\n"


def test_setting_the_current_value_does_not_write(run: Any, cfg: Path) -> None:
    assert run("tracer", "nop").code == 0
    assert not cfg.exists()


# --- ktrace filter rules --------------------------------------------------------------------


def test_ktrace_add_list_remove_clear(run: Any, cfg: Path) -> None:
    assert run("ktrace", "list").out == "#### all functions enabled ####\n"
    assert run("ktrace", "add", "main", "work* !work_done", "malloc:mod:libc.so.6").code == 0
    assert run("ktrace", "add", "main").code == 0  # already there: not added twice
    assert run("ktrace", "list").out == "main\nwork*\n!work_done\nmalloc:mod:libc.so.6\n"
    assert config.load(cfg).filters == ("main", "work*", "!work_done", "malloc:mod:libc.so.6")
    assert run("ktrace", "remove", "!work_done", "main").code == 0
    assert run("ktrace", "list").out == "work*\nmalloc:mod:libc.so.6\n"
    assert run("ktrace", "clear").code == 0
    assert run("ktrace", "list").out == "#### all functions enabled ####\n"


def test_ktrace_add_rejects_bad_tokens_and_adds_none(run: Any, cfg: Path) -> None:
    result = run("ktrace", "add", "main", "foo:traceoff")
    assert result.code == 2
    assert result.err.count("\n") == 1
    assert "'func:command' forms are not supported" in result.err
    assert config.load(cfg).filters == ()
    assert "index form" in run("ktrace", "add", "42").err


def test_ktrace_remove_unknown_rule_changes_nothing(run: Any, cfg: Path) -> None:
    run("ktrace", "add", "main", "helper")
    result = run("ktrace", "remove", "main", "mian")
    assert result.code == 2
    assert result.err == "ktracecli: no such filter rule: mian (see 'ktracecli ktrace list')\n"
    assert config.load(cfg).filters == ("main", "helper")


# --- error boundary -------------------------------------------------------------------------


def test_corrupt_config_is_one_line_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text('engine = "ktrace"\ntracer = \n')
    result = ktracecli_subprocess("--config", str(bad), "tracer")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"ktracecli: corrupt config file {bad}: line 2: ")
    assert result.stderr.count("\n") == 1


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "env" / "config.toml"
    result = ktracecli_subprocess("ktrace", "add", "main", env={config.ENV_VAR: str(path)})
    assert (result.returncode, result.stderr) == (0, "")
    assert config.load(path).filters == ("main",)


def test_usage_errors_keep_exit_2(run: Any) -> None:
    assert run("no-such-command").code == 2
    assert run("tracer", "--bogus").code == 2


def test_a_bug_keeps_its_traceback(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path: Path) -> config.Config:
        raise RuntimeError("a bug")

    monkeypatch.setattr(config, "load", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        run("tracer")


def test_cli_imports_no_heavy_module() -> None:
    code = ("import sys, ktracecli.cli; "
            "print([m for m in ('capstone', 'keystone', 'elftools', 'numpy', 'ktracecli.process.ptrace') "
            "if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout == "[]\n"


# --- available ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeSite:
    name: str
    vaddr: int


@dataclass(frozen=True)
class FakeAnalysis:
    sites: tuple[FakeSite, ...]
    refusals: tuple[Refusal, ...] = ()


@dataclass(frozen=True)
class FakeModuleAnalysis:
    path: str
    name: str
    analysis: FakeAnalysis


PROG = FakeModuleAnalysis("/bin/prog", "prog", FakeAnalysis(
    (FakeSite("work", 0x1200), FakeSite("main", 0x1100)),
    (Refusal("tiny", 0x1300, "shorter than the 5-byte patch window"),)))
LIBC = FakeModuleAnalysis("/lib/libc.so.6", "libc.so.6", FakeAnalysis(
    (FakeSite("malloc", 0x9000), FakeSite("free", 0x8000)),
    (Refusal("memcpy", 0x7000, "jump table may target the patch window"),
     Refusal("strlen", 0x6000, "ifunc resolver"))))


@pytest.fixture
def catalog_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """A stand-in catalog: the program alone without a module glob, else its libraries."""
    calls: list[tuple[Any, ...]] = []

    def available(program: str, engine: Any, module_glob: str | None) -> list[FakeModuleAnalysis]:
        calls.append((program, engine, module_glob))
        return [PROG] if module_glob is None else [LIBC]

    fake_module(monkeypatch, "catalog", available=available)
    return calls


def test_available_lists_the_program_in_address_order(run: Any, catalog_calls: list[Any]) -> None:
    result = run("available", "prog")
    assert result.code == 0
    assert result.out == "main\nwork\n"
    assert result.err == "2 functions traceable, 1 refused (66.7% traceable)\n"
    program, engine, glob = catalog_calls[0]
    assert (program, type(engine), glob) == ("prog", FakeKtraceEngine, None)


def test_available_mod_marks_library_functions(run: Any, catalog_calls: list[Any]) -> None:
    result = run("available", "/bin/prog", "--mod", "libc*")
    assert result.out == "free [libc.so.6]\nmalloc [libc.so.6]\n"
    assert result.err == "2 functions traceable, 2 refused (50.0% traceable)\n"
    assert catalog_calls[0][2] == "libc*"


def test_available_rejected_gives_reasons(run: Any, catalog_calls: list[Any]) -> None:
    assert run("available", "prog", "--rejected").out == "tiny\tshorter than the 5-byte patch window\n"
    assert run("available", "prog", "--rejected", "--mod", "libc.so.6").out == (
        "strlen [libc.so.6]\tifunc resolver\n"
        "memcpy [libc.so.6]\tjump table may target the patch window\n")


def test_available_uses_the_configured_engine(run: Any, catalog_calls: list[Any]) -> None:
    run("engine", "mcount")
    run("available", "prog")
    assert type(catalog_calls[0][1]) is FakeMcountEngine


# --- record ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeRecordSettings:
    argv: list[str]
    output: Path
    engine: str
    tracer: str
    filters: tuple[str, ...]
    buffer_size_kb: int
    config_path: Path
    max_graph_depth: int = 0
    tracing_thresh: int = 0
    options: TraceOptions = TraceOptions()
    live: bool = False


@dataclass(frozen=True)
class FakeRecordResult:
    exit_status: int = 3
    engine: str = "ktrace"
    traced: int = 12
    refused: int = 3
    events: int = 4021
    lost: int = 0


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> list[FakeRecordSettings]:
    calls: list[FakeRecordSettings] = []

    def record(settings: FakeRecordSettings, reg: Registry) -> FakeRecordResult:
        assert reg is registry
        calls.append(settings)
        return FakeRecordResult()

    fake_module(monkeypatch, "session", RecordSettings=FakeRecordSettings, record=record)
    return calls


def test_record_builds_settings_and_exits_with_the_programs_status(
        run: Any, cfg: Path, recorded: list[FakeRecordSettings]) -> None:
    run("ktrace", "add", "main")
    run("tracer", "function")
    result = run("record", "-o", "out.data", "--", "./prog", "-o", "x", "--help")
    assert result.code == 3
    assert result.err == ("ktracecli: traced 12 functions, refused 3 (ktracecli available --rejected "
                          "says why), 4021 events recorded, 0 lost, engine ktrace\n")
    assert recorded == [FakeRecordSettings(["./prog", "-o", "x", "--help"], Path("out.data"), "ktrace",
                                           "function", ("main",), 16384, cfg)]


def test_record_passes_the_graph_knobs(run: Any, recorded: list[FakeRecordSettings]) -> None:
    run("config", "max_graph_depth", "4")
    run("config", "tracing_thresh", "9")
    run("record", "./prog")
    assert (recorded[0].max_graph_depth, recorded[0].tracing_thresh) == (4, 9)


def test_record_passes_program_options_without_double_dash(
        run: Any, recorded: list[FakeRecordSettings]) -> None:
    assert run("record", "./prog", "-x", "--output", "y").code == 3
    assert recorded[0].argv == ["./prog", "-x", "--output", "y"]
    assert recorded[0].output == Path("ktrace.data")


def test_record_needs_a_program(run: Any, recorded: list[FakeRecordSettings]) -> None:
    assert run("record").code == 2
    assert recorded == []


def test_record_live_flag(run: Any, recorded: list[FakeRecordSettings]) -> None:
    assert run("record", "--live", "./prog").code == 3
    assert recorded[0].live is True
    assert run("record", "./prog", "--live").code == 3
    assert recorded[1].live is False and recorded[1].argv == ["./prog", "--live"]


# --- attach and status ------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeAttachSettings:
    pid: int
    output: Path
    engine: str
    tracer: str
    filters: tuple[str, ...]
    buffer_size_kb: int
    config_path: Path
    live: bool = False
    max_graph_depth: int = 0
    tracing_thresh: int = 0
    options: TraceOptions = TraceOptions()


@pytest.fixture
def attached(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> list[FakeAttachSettings]:
    calls: list[FakeAttachSettings] = []

    def attach(settings: FakeAttachSettings, reg: Registry) -> FakeRecordResult:
        calls.append(settings)
        return FakeRecordResult(exit_status=0)

    fake_module(monkeypatch, "session", AttachSettings=FakeAttachSettings, attach=attach)
    return calls


def test_attach_builds_settings(run: Any, cfg: Path, attached: list[FakeAttachSettings]) -> None:
    run("ktrace", "add", "work")
    run("tracer", "function")
    result = run("attach", "4242", "-o", "a.data", "--live")
    assert result.code == 0
    assert result.err.startswith("ktracecli: traced 12 functions, refused 3")
    assert attached == [FakeAttachSettings(4242, Path("a.data"), "ktrace", "function", ("work",), 16384, cfg,
                                           True)]


@pytest.mark.parametrize("pid", ["0", "-3", "abc", ""])
def test_attach_needs_a_pid(run: Any, attached: list[FakeAttachSettings], pid: str) -> None:
    assert run("attach", pid).code == 2
    assert attached == []


def test_status_lists_sessions_and_removes_stale_ones(run: Any, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    from ktracecli import status

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    assert run("status").err == "no running sessions\n"
    mine = status.SessionStatus(ktracecli_pid=os.getpid(), kind="attach", pid=77, program="./prog -x",
                                engine="ktrace", tracer="function", traced=3, events=1234, lost=5,
                                output="a.data", config="c.toml")
    status.publish(mine)
    gone = subprocess.Popen(["true"])
    gone.wait()
    status.publish(dataclasses.replace(mine, ktracecli_pid=gone.pid, pid=78))
    assert len(list((tmp_path / "run" / "ktracecli").glob("session-*.json"))) == 2
    result = run("status")
    lines = result.out.splitlines()
    assert lines[0].split() == ["PID", "PROGRAM", "ENGINE", "TRACER", "FUNCTIONS", "EVENTS", "LOST", "SESSION"]
    assert lines[1].split() == ["77", "./prog", "-x", "ktrace", "function", "3", "1234", "5", "attach",
                                f"({os.getpid()})"]
    assert len(lines) == 2
    assert len(list((tmp_path / "run" / "ktracecli").glob("session-*.json"))) == 1  # the stale one is gone
    assert json.loads(run("status", "--json").out)["pid"] == 77
    status.withdraw(os.getpid())
    assert run("status").out == ""


# --- show and the nop tracer ----------------------------------------------------------------


@dataclass
class FakeTraceData:
    tracer: str
    directory: Path = field(default=Path("."))


def test_show_uses_the_recorded_tracer(run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    loaded: list[Path] = []

    def load(directory: Path) -> FakeTraceData:
        loaded.append(directory)
        return FakeTraceData("nop", directory)

    fake_module(monkeypatch, "datadir", load=load)
    result = run("show", str(tmp_path / "d"))
    assert (result.code, result.out, result.err) == (0, "# tracer: nop\n#\n", "")
    assert run("show").code == 0
    assert loaded == [tmp_path / "d", Path("ktrace.data")]


def test_show_stops_quietly_when_the_reader_goes_away(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_module(monkeypatch, "datadir", load=lambda directory: FakeTraceData("nop"))

    def closed_pipe(self: nop.NopTracer, data: Any, out: io.TextIOBase, *settings: Any) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(nop.NopTracer, "show", closed_pipe)
    result = run("show")
    assert (result.code, result.err) == (console.EXIT_BROKEN_PIPE, "")


def test_nop_tracer_registers_through_its_entry_point() -> None:
    registry = build_registry()
    assert registry.tracers["nop"] is nop.NopTracer
    tracer = registry.tracer("nop")
    assert tracer.record_dtype is None
    out = io.StringIO()
    tracer.show(FakeTraceData("nop"), out)  # type: ignore[arg-type]
    assert out.getvalue() == "# tracer: nop\n#\n"
