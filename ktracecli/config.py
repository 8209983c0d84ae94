"""The user's settings, kept in a TOML file that people may edit by hand.

Layout of the file (every key optional; a missing file means the defaults)::

    engine = "ktrace"          # how calls reach the tracer (ktracecli engine)
    tracer = "nop"             # what is recorded (ktracecli tracer), nop = off
    buffer_size_kb = 16384     # ring size per traced thread
    max_graph_depth = 0        # function_graph: deepest hooked call, 0 = unlimited
    tracing_thresh = 0         # function_graph: record only calls of at least N us, 0 = off

    [ktrace]
    filter = ["main", "malloc:mod:libc.so.6"]   # set_ftrace_filter rules

    [options]                  # trace_options (ktracecli options): only those changed
    funcgraph-proc = true

The file is found by :func:`resolve_path`.  Every command reads it, with the
standard library's tomllib where Python has it (3.11 on), which imports in a
third of tomlkit's time (2 ms against 6); a file that does not parse is still
reported in tomlkit's words.  It is rewritten in place with tomlkit, so the
user's comments and key order survive, and always atomically: a reader sees the
old file or the new one, never half of one.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ktracecli import filters
from ktracecli.errors import ConfigError, UsageError
from ktracecli.options import TraceOptions

if sys.version_info >= (3, 11):
    import tomllib
if TYPE_CHECKING:
    from tomlkit import TOMLDocument

ENV_VAR = "KTRACECLI_CONFIG"
_TOP_KEYS = ("engine", "tracer", "buffer_size_kb")
#: top-level keys written only once they differ from the default (or are in the file already)
_OPTIONAL_KEYS = ("max_graph_depth", "tracing_thresh")
_KTRACE_KEYS = ("filter",)
#: the settings ``ktracecli config NAME [VALUE]`` reads and writes: non-negative integers
NUMERIC = {
    "buffer_size_kb": "KiB of ring per traced thread (> 0)",
    "max_graph_depth": "function_graph: deepest call whose return is hooked (0 = unlimited)",
    "tracing_thresh": "function_graph: record only calls of at least N microseconds (0 = all)",
}


@dataclass(frozen=True)
class Config:
    """Every setting ktracecli keeps between runs (defaults as the kernel boots)."""

    engine: str = "ktrace"
    tracer: str = "nop"
    filters: tuple[str, ...] = ()
    buffer_size_kb: int = 16384
    max_graph_depth: int = 0
    tracing_thresh: int = 0
    options: TraceOptions = TraceOptions()


def resolve_path(explicit: Path | None = None,
                 environ: Mapping[str, str] | None = None) -> Path:
    """The config file to use: ``--config``, else ``$KTRACECLI_CONFIG``, else the XDG location.

    A relative ``$XDG_CONFIG_HOME`` is ignored, as the XDG spec says.
    """
    env = os.environ if environ is None else environ
    if explicit is not None:
        return explicit
    if env.get(ENV_VAR):
        return Path(env[ENV_VAR])
    xdg = env.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".config"
    return base / "ktracecli" / "config.toml"


def load(path: Path) -> Config:
    """Read ``path``; a missing file gives the defaults, a bad one a one-line :class:`ConfigError`."""
    text = _read_text(path)
    return Config() if text is None else _to_config(path, _parse_values(path, text))


def save(path: Path, config: Config) -> None:
    """Write ``config`` to ``path`` atomically, keeping the comments of the file already there."""
    import tomlkit

    text = _read_text(path)
    if text is None:
        doc = tomlkit.document()
    else:
        doc = _parse_document(path, text)
        _to_config(path, doc.unwrap())  # never silently rewrite a file we could not have read
    _apply(doc, config)
    _write_atomically(path, tomlkit.dumps(doc))


def update(path: Path, **changes: Any) -> Config:
    """Load ``path``, change the given fields, save it and return the new config."""
    config = dataclasses.replace(load(path), **changes)
    _check_types(path, config)
    save(path, config)
    return config


def _read_text(path: Path) -> str | None:
    """The text of the file, None when there is none."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"corrupt config file {path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None


def _parse_values(path: Path, text: str) -> dict[str, Any]:
    """The document as plain values (tables are dicts, arrays lists)."""
    if sys.version_info >= (3, 11):
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            pass  # tomlkit says where and why, as it always has
    return _parse_document(path, text).unwrap()


def _parse_document(path: Path, text: str) -> "TOMLDocument":
    """The document with its comments and formatting, to be edited and written back."""
    import tomlkit
    import tomlkit.exceptions

    try:
        return tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        message = str(exc).removesuffix(f" at line {exc.line} col {exc.col}")
        raise ConfigError(f"corrupt config file {path}: line {exc.line}: {message}") from None
    except tomlkit.exceptions.TOMLKitError as exc:
        raise ConfigError(f"corrupt config file {path}: {_one_line(exc)}") from None


def _to_config(path: Path, data: dict[str, Any]) -> Config:
    """Validate the parsed document's values and turn them into a :class:`Config`."""
    _reject_unknown(path, data, _TOP_KEYS + _OPTIONAL_KEYS + ("ktrace", "options"), "")
    section = data.get("ktrace", {})
    if not isinstance(section, dict):
        raise ConfigError(f"invalid config file {path}: 'ktrace' must be a table")
    _reject_unknown(path, section, _KTRACE_KEYS, "ktrace.")
    rules = section.get("filter", [])
    if not isinstance(rules, list):
        raise ConfigError(f"invalid config file {path}: 'ktrace.filter' must be a list of strings")
    defaults = Config()
    config = Config(
        engine=data.get("engine", defaults.engine),
        tracer=data.get("tracer", defaults.tracer),
        filters=tuple(rules),
        buffer_size_kb=data.get("buffer_size_kb", defaults.buffer_size_kb),
        max_graph_depth=data.get("max_graph_depth", defaults.max_graph_depth),
        tracing_thresh=data.get("tracing_thresh", defaults.tracing_thresh),
        options=_to_options(path, data.get("options", {})),
    )
    _check_types(path, config)
    return config


def _to_options(path: Path, table: object) -> TraceOptions:
    """The ``[options]`` table: option name -> true/false, every name a known option."""
    if not isinstance(table, dict) or not all(isinstance(v, bool) for v in table.values()):
        raise ConfigError(f"invalid config file {path}: 'options' must be a table of option = true/false")
    try:
        return TraceOptions.from_values(table)
    except UsageError as exc:
        raise ConfigError(f"invalid config file {path}: options: {exc}") from None


def _check_types(path: Path, config: Config) -> None:
    """Raise :class:`ConfigError` naming the first field that holds a wrong value."""
    for key in ("engine", "tracer"):
        value = getattr(config, key)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"invalid config file {path}: {key!r} must be a non-empty string")
    size = config.buffer_size_kb
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ConfigError(f"invalid config file {path}: 'buffer_size_kb' must be a positive integer")
    for key in _OPTIONAL_KEYS:
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"invalid config file {path}: {key!r} must be an integer >= 0")
    for number, token in enumerate(config.filters, start=1):
        if not isinstance(token, str):
            raise ConfigError(f"invalid config file {path}: 'ktrace.filter' must be a list of strings")
        try:
            filters.validate(token)
        except UsageError as exc:
            raise ConfigError(f"invalid config file {path}: ktrace.filter rule {number}: {exc}") from None


def _reject_unknown(path: Path, table: Mapping[str, Any], known: tuple[str, ...], prefix: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(f"invalid config file {path}: unknown key {prefix + key!r}")


def _apply(doc: "TOMLDocument", config: Config) -> None:
    """Put the values of ``config`` into ``doc``, leaving comments and other formatting alone."""
    import tomlkit
    from tomlkit.items import Table

    for key in _TOP_KEYS:
        if key not in doc or doc[key] != getattr(config, key):
            doc[key] = getattr(config, key)
    defaults = Config()
    for key in _OPTIONAL_KEYS:
        value = getattr(config, key)
        if (key in doc or value != getattr(defaults, key)) and doc.get(key) != value:
            doc[key] = value
    _apply_options(doc, config.options)
    rules = tomlkit.array()
    rules.extend(config.filters)
    if len(config.filters) > 1:
        rules.multiline(True)
    section = doc.get("ktrace")
    if isinstance(section, (Table, dict)) and section.get("filter") == list(config.filters):
        return
    if section is None:
        section = tomlkit.table()
        doc["ktrace"] = section
    section["filter"] = rules


def _apply_options(doc: "TOMLDocument", options: TraceOptions) -> None:
    """Keep ``[options]`` holding exactly the options that differ from their defaults."""
    import tomlkit

    changed = options.changed()
    section = doc.get("options")
    if section is None:
        if not changed:
            return
        section = tomlkit.table()
        doc["options"] = section
    for name in [n for n in section if n not in changed]:
        del section[name]
    for name, on in changed.items():
        if section.get(name) != on:
            section[name] = on


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by a file holding ``text``: a temporary beside it, fsync, rename."""
    import tempfile

    target = Path(os.path.realpath(path))  # keep a symlinked config (dotfiles) a symlink
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise ConfigError(f"cannot write config file {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            if target.exists():
                os.fchmod(out.fileno(), target.stat().st_mode & 0o7777)
            os.fsync(out.fileno())
        os.replace(tmp_name, target)
    except OSError as exc:
        _unlink_quietly(tmp_name)
        raise ConfigError(f"cannot write config file {path}: {exc.strerror or exc}") from None
    except BaseException:
        _unlink_quietly(tmp_name)
        raise
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable; some file systems cannot, which is harmless."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
