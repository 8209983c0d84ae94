"""The ``ktracecli`` command line (Typer).

This module only turns arguments into typed settings and prints results.  The
heavy modules (catalog, session, datadir, and through them capstone, keystone,
pyelftools and ptrace) are imported inside the commands that need them.

Errors: :func:`main` runs the app inside the one boundary
(:func:`ktracecli.console.one_line_errors`).  A :class:`KtraceError` becomes one
``ktracecli: <message>`` line on stderr and its exit code; usage errors found by
the argument parser keep their usual message and exit code 2; anything else is
a bug and keeps its traceback.

The ``ktracecli`` program starts in :mod:`ktracecli.entry`, which runs a plain
``available`` command line without this module (Typer costs more than that
command) and hands every other one to :func:`main`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from ktracecli import available as available_command
from ktracecli import config, filters
from ktracecli.console import one_line_errors, stdout_closed
from ktracecli.errors import UsageError
from ktracecli.registry import build_registry

if TYPE_CHECKING:
    from ktracecli.session import RecordResult

ALL_FUNCTIONS_ENABLED = "#### all functions enabled ####"

app = typer.Typer(
    name="ktracecli",
    help="ftrace's function and function_graph tracers for user-space x86_64 programs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
ktrace_app = typer.Typer(
    help="Edit the ktrace filter rules (set_ftrace_filter syntax: [!]pattern[:mod:MODULE]).",
    no_args_is_help=True,
)
app.add_typer(ktrace_app, name="ktrace")


# --- global options and helpers -------------------------------------------------------------


@app.callback()
def _global_options(
    ctx: typer.Context,
    config_path: Annotated[Optional[Path], typer.Option(
        "--config", metavar="PATH", dir_okay=False,
        help=f"Config file (default: ${config.ENV_VAR}, else $XDG_CONFIG_HOME/ktracecli/config.toml).",
    )] = None,
) -> None:
    """ftrace's function and function_graph tracers for user-space x86_64 programs."""
    ctx.obj = config.resolve_path(config_path)


def _config_path(ctx: typer.Context) -> Path:
    """The config file chosen by the global options."""
    path = ctx.find_root().obj
    assert isinstance(path, Path)
    return path


def _choose(path: Path, setting: str, name: str, available: Mapping[str, object]) -> None:
    """Set ``setting`` (engine or tracer) to ``name`` if it is one of ``available``."""
    name = name.strip()
    if name not in available:
        known = " ".join(available) or "none installed"
        raise UsageError(f"unknown {setting} {name!r} (available: {known})")
    if getattr(config.load(path), setting) != name:
        config.update(path, **{setting: name})


def _tokens(patterns: Sequence[str]) -> list[str]:
    """Split arguments into tokens on whitespace, as the kernel splits a write to set_ftrace_filter."""
    return [token for pattern in patterns for token in pattern.split()]


# --- engine and tracer ----------------------------------------------------------------------


@app.command()
def engine(
    ctx: typer.Context,
    name: Annotated[Optional[str], typer.Argument(help="Engine to use from now on.")] = None,
    list_: Annotated[bool, typer.Option("--list", "-l", help="List the installed engines.")] = False,
) -> None:
    """Show or set the engine that delivers function entries (like the kernel's menuconfig choice)."""
    path = _config_path(ctx)
    if list_ and name is not None:
        raise UsageError("give an engine NAME or --list, not both")
    if name is not None:
        _choose(path, "engine", name, build_registry().engines)
        return
    current = config.load(path).engine
    if not list_:
        typer.echo(current)
        return
    engines = build_registry().engines
    width = max((len(n) for n in engines), default=0) + 2
    for engine_name, cls in engines.items():
        label = f"[{engine_name}]" if engine_name == current else f" {engine_name} "
        typer.echo(f"{label:<{width}}  {cls.description}")


@app.command()
def tracer(
    ctx: typer.Context,
    name: Annotated[Optional[str], typer.Argument(help="Tracer to use from now on.")] = None,
    list_: Annotated[bool, typer.Option("--list", "-l", help="List the installed tracers.")] = False,
) -> None:
    """Show or set the current tracer (like the kernel's current_tracer)."""
    path = _config_path(ctx)
    if list_ and name is not None:
        raise UsageError("give a tracer NAME or --list, not both")
    if list_:
        typer.echo(" ".join(build_registry().tracers))
    elif name is not None:
        _choose(path, "tracer", name, build_registry().tracers)
    else:
        typer.echo(config.load(path).tracer)


# --- settings and trace options ---------------------------------------------------------------


@app.command("config", context_settings={"ignore_unknown_options": True})
def config_(
    ctx: typer.Context,
    name: Annotated[Optional[str], typer.Argument(help=f"One of: {', '.join(config.NUMERIC)}.")] = None,
    value: Annotated[Optional[str], typer.Argument(help="New value (a non-negative integer).")] = None,
) -> None:
    """Show or set a numeric setting, like the kernel's files (max_graph_depth, tracing_thresh...)."""
    path = _config_path(ctx)
    settings = config.load(path)
    if name is None:
        for key in config.NUMERIC:
            typer.echo(f"{key} = {getattr(settings, key)}")
        return
    if name not in config.NUMERIC:
        raise UsageError(f"unknown setting {name!r} (known: {', '.join(config.NUMERIC)})")
    if value is None:
        typer.echo(getattr(settings, name))
        return
    number = _non_negative(name, value)
    if name == "buffer_size_kb" and number == 0:
        raise UsageError("buffer_size_kb must be a positive integer")
    if getattr(settings, name) != number:
        config.update(path, **{name: number})


def _non_negative(name: str, text: str) -> int:
    """``text`` as a decimal integer >= 0, or a UsageError naming ``name``."""
    text = text.strip()
    if not text.isdigit():
        raise UsageError(f"{name} must be an integer >= 0, not {text!r}")
    return int(text)


@app.command()
def options(
    ctx: typer.Context,
    tokens: Annotated[Optional[list[str]], typer.Argument(
        metavar="[no]OPTION", help="Options to set (OPTION) or clear (noOPTION).")] = None,
) -> None:
    """List the trace options (one opt/noopt per line) or set them, like the kernel's trace_options."""
    path = _config_path(ctx)
    current = config.load(path).options
    if not tokens:
        typer.echo("\n".join(current.lines()))
        return
    new = current
    for token in _tokens(tokens):
        new = new.set(token)
    if new != current:
        config.update(path, options=new)


# --- ktrace filter rules --------------------------------------------------------------------


@ktrace_app.command("add")
def ktrace_add(
    ctx: typer.Context,
    patterns: Annotated[list[str], typer.Argument(metavar="PATTERN", help="[!]pattern[:mod:MODULE]")],
) -> None:
    """Append filter rules (each is checked first; one already there is left alone)."""
    path = _config_path(ctx)
    new = [str(filters.validate(token)) for token in _tokens(patterns)]
    rules = list(config.load(path).filters)
    for rule in new:
        if rule not in rules:
            rules.append(rule)
    config.update(path, filters=tuple(rules))


@ktrace_app.command("remove")
def ktrace_remove(
    ctx: typer.Context,
    patterns: Annotated[list[str], typer.Argument(metavar="PATTERN", help="Rules exactly as listed.")],
) -> None:
    """Remove filter rules, given exactly as ``ktrace list`` prints them."""
    path = _config_path(ctx)
    rules = [rule.strip() for rule in config.load(path).filters]
    tokens = _tokens(patterns)
    missing = [token for token in tokens if token not in rules]
    if missing:
        raise UsageError(f"no such filter rule: {' '.join(missing)} (see 'ktracecli ktrace list')")
    config.update(path, filters=tuple(rule for rule in rules if rule not in tokens))


@ktrace_app.command("list")
def ktrace_list(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help=(
        "Also show what tracing costs the traced program: each traced function's detour (stub) "
        "bytes in the last recording, and the running sessions' totals."))] = False,
    data: Annotated[Optional[Path], typer.Option(
        "--data", metavar="DIR", help="Recording to describe with -v (default: ktrace.data if there is one).")
    ] = None,
) -> None:
    """Print the filter rules, one per line (with -v, the tracee memory each traced function takes)."""
    rules = config.load(_config_path(ctx)).filters
    typer.echo("\n".join(rules) if rules else ALL_FUNCTIONS_ENABLED)
    if verbose:
        _print_footprint(data or Path("ktrace.data"), explicit=data is not None)


def _print_footprint(data: Path, explicit: bool) -> None:
    """The ``ktrace list -v`` part: running sessions' totals, then one recording's functions."""
    from ktracecli import footprint, status

    for s in status.running():
        per = f" ({s.detour_bytes / s.traced:.1f} per function)" if s.traced else ""
        typer.echo(f"# session {s.ktracecli_pid} ({s.kind} of pid {s.pid}, {s.engine}+{s.tracer}): {s.traced} "
                   f"functions traced, {s.detour_bytes} bytes of detours{per}, {s.handler_bytes} bytes of handlers")
    if not data.exists() and not explicit:
        return
    fp = footprint.of_data(data)
    typer.echo(f"# {data}: {len(fp.detours)} functions traced, {fp.detour_bytes} bytes of detours "
               f"({fp.per_function:.1f} per function), {fp.handler_bytes} bytes of handlers; "
               f"records of {fp.record_size} bytes in per-thread rings")
    if fp.detours:
        width = max(len(d.name) for d in fp.detours)
        for d in sorted(fp.detours, key=lambda d: (d.module, d.name)):
            typer.echo(f"{d.name:<{width}}  [{d.module}]  detour {d.size} bytes")


@ktrace_app.command("clear")
def ktrace_clear(ctx: typer.Context) -> None:
    """Remove every filter rule (all functions of the program are traced again)."""
    config.update(_config_path(ctx), filters=())


# --- available ------------------------------------------------------------------------------


@app.command()
def available(
    ctx: typer.Context,
    program: Annotated[str, typer.Argument(metavar="PROGRAM", help="The ELF program to inspect (looked up in PATH).")],
    rejected: Annotated[bool, typer.Option("--rejected", help="List refused functions and why.")] = False,
    mod: Annotated[Optional[str], typer.Option(
        "--mod", metavar="NAME", help="Look in the shared objects matching NAME (a glob).")] = None,
) -> None:
    """List the functions the current engine can trace (like available_filter_functions).

    Without --mod the program's own functions are listed; with it, those of its
    matching libraries, each name followed by its library's name in brackets.
    """
    available_command.list_functions(_config_path(ctx), program, rejected, mod, build_registry)


# --- record and show ------------------------------------------------------------------------


LIVE_HELP = "Print events as they happen, in the tracer's format (like the kernel's trace_pipe)."


@app.command(context_settings={"allow_interspersed_args": False})
def record(
    ctx: typer.Context,
    argv: Annotated[list[str], typer.Argument(
        metavar="PROGRAM [ARGS]", help="The program to run and trace, with its own arguments.")],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="DIR",
                                         help="Data directory to write.")] = Path("ktrace.data"),
    live: Annotated[bool, typer.Option("--live", help=LIVE_HELP)] = False,
) -> None:
    """Run PROGRAM under the current engine and tracer and record what it calls.

    While it runs, 'ktracecli ktrace add/remove/clear' and 'ktracecli tracer'
    change what is traced in it.
    """
    from ktracecli import session

    path = _config_path(ctx)
    settings = config.load(path)
    record_settings = session.RecordSettings(argv=list(argv), **_session_settings(settings, path, output, live))
    result = session.record(record_settings, build_registry())
    _summary(result)
    raise typer.Exit(result.exit_status)


@app.command()
def attach(
    ctx: typer.Context,
    pid: Annotated[int, typer.Argument(metavar="PID", help="The running process to trace.", min=1)],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="DIR",
                                         help="Data directory to write.")] = Path("ktrace.data"),
    live: Annotated[bool, typer.Option("--live", help=LIVE_HELP)] = False,
) -> None:
    """Trace a running process, all its threads, until Ctrl-C, SIGTERM or its exit.

    On Ctrl-C or SIGTERM every original byte is put back and the process goes on
    untraced.  While it runs, 'ktracecli ktrace add/remove/clear' and
    'ktracecli tracer' change what is traced in it.
    """
    from ktracecli import session

    path = _config_path(ctx)
    settings = config.load(path)
    attach_settings = session.AttachSettings(pid=pid, **_session_settings(settings, path, output, live))
    result = session.attach(attach_settings, build_registry())
    _summary(result)


def _session_settings(settings: config.Config, path: Path, output: Path, live: bool) -> dict[str, Any]:
    """What record and attach take from the config file and their common options."""
    return {"output": output, "engine": settings.engine, "tracer": settings.tracer, "filters": settings.filters,
            "buffer_size_kb": settings.buffer_size_kb, "config_path": path, "live": live,
            "max_graph_depth": settings.max_graph_depth, "tracing_thresh": settings.tracing_thresh,
            "options": settings.options}


def _summary(result: "RecordResult") -> None:
    """The one summary line of a record or attach session, on stderr."""
    why = " (ktracecli available --rejected says why)" if result.refused else ""
    typer.echo(
        f"ktracecli: traced {result.traced} functions, refused {result.refused}{why}, "
        f"{result.events} events recorded, {result.lost} lost, engine {result.engine}",
        err=True,
    )


@app.command("status")
def status_(
    json_: Annotated[bool, typer.Option("--json", help="One JSON object per session, one per line.")] = False,
) -> None:
    """List the running record and attach sessions of this user."""
    import dataclasses
    import json

    from ktracecli import status

    sessions = status.running()
    if json_:
        for s in sessions:
            typer.echo(json.dumps(dataclasses.asdict(s)))
        return
    if not sessions:
        typer.echo("no running sessions", err=True)
        return
    header = ("PID", "PROGRAM", "ENGINE", "TRACER", "FUNCTIONS", "EVENTS", "LOST", "SESSION")
    rows = [(str(s.pid), s.program if len(s.program) <= 40 else s.program[:37] + "...", s.engine, s.tracer,
             str(s.traced), str(s.events), str(s.lost), f"{s.kind} ({s.ktracecli_pid})") for s in sessions]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@app.command()
def show(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Data directory.")] = Path("ktrace.data"),
    per_thread: Annotated[bool, typer.Option(
        "--per-thread", help="function_graph: each thread's calls on their own, headed with its comm-tid.")] = False,
    option: Annotated[Optional[list[str]], typer.Option(
        "-O", "--option", metavar="[no]OPTION", help="A trace option for this show only (repeatable).")] = None,
) -> None:
    """Print recorded data in the format of its tracer (like the kernel's trace file).

    The trace options of the config file apply (see 'ktracecli options'), then those of -O.
    """
    from ktracecli import datadir
    from ktracecli.interface import ShowSettings

    shown = config.load(_config_path(ctx)).options
    for token in _tokens(option or []):
        shown = shown.set(token)
    data = datadir.load(directory)
    tracer_ = build_registry().tracer(data.tracer)
    try:
        tracer_.show(data, sys.stdout, ShowSettings(shown, per_thread))
        sys.stdout.flush()
    except BrokenPipeError:
        stdout_closed()


# --- entry point ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line through the Typer app, inside the one error boundary."""
    with one_line_errors():
        app(args=None if argv is None else list(argv), prog_name="ktracecli")
