"""The ``ktracecli`` program: a fast lane for a plain ``available`` command line, Typer for the rest.

Importing Typer and click and building the command tree costs about 27 ms: a
cached ``ktracecli available --mod libc.so.6 /bin/true`` takes 0.075 s without
them and 0.10 s with them, interpreter start-up included.  So :func:`main` first
asks :func:`plain_available` whether the command line is one of the forms::

    ktracecli [--config PATH | --config=PATH] available ARGS

where ARGS are, in any order, PROGRAM, ``--rejected`` and ``--mod NAME`` (or
``--mod=NAME``), each at most once, no value is empty or starts with ``-``, and
PATH is one click takes as it is (not a folder, readable if it exists).  Such a
line means one thing to click as well, and :func:`main` runs it with the same
code and the same exits as the Typer command.  Any other line, including every
one that click would refuse or answer with help, goes to the Typer app
(:func:`ktracecli.cli.main`), so usage errors keep click's messages.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ktracecli.console import one_line_errors, write_stderr_line

#: click answers shell-completion requests when this is set (``_<PROG_NAME>_COMPLETE``)
COMPLETION_VAR = "_KTRACECLI_COMPLETE"


@dataclass(frozen=True)
class PlainAvailable:
    """The settings of a plain ``available`` command line."""

    config: Path | None
    program: str
    rejected: bool = False
    mod: str | None = None


def plain_available(args: Sequence[str], environ: Mapping[str, str]) -> PlainAvailable | None:
    """The settings of ``args`` when they are a plain ``available`` command line, else None.

    ``environ`` is checked for a shell-completion request, which click handles
    whatever the arguments.
    """
    if environ.get(COMPLETION_VAR):
        return None
    args = list(args)
    config: str | None = None
    if args[:1] == ["--config"] and len(args) > 1:
        config, args = args[1], args[2:]
    elif args and args[0].startswith("--config="):
        config, args = args[0].removeprefix("--config="), args[1:]
    if args[:1] != ["available"] or (config is not None and not _plain_config(config)):
        return None
    program: str | None = None
    mod: str | None = None
    rejected = False
    rest = iter(args[1:])
    for token in rest:
        if token == "--rejected" and not rejected:
            rejected = True
        elif token == "--mod" and mod is None:
            mod = next(rest, "")
            if not _plain_value(mod):
                return None
        elif token.startswith("--mod=") and mod is None and _plain_value(token.removeprefix("--mod=")):
            mod = token.removeprefix("--mod=")
        elif program is None and _plain_value(token):
            program = token
        else:
            return None
    if program is None:
        return None
    return PlainAvailable(None if config is None else Path(config), program, rejected, mod)


def _plain_value(value: str) -> bool:
    return value != "" and not value.startswith("-")


def _plain_config(value: str) -> bool:
    """Whether click takes ``value`` for ``--config`` (a path that is not a directory and is
    readable if it exists) without a word."""
    if not _plain_value(value):
        return False
    try:
        st = os.stat(value)
    except OSError:
        return True
    return not stat.S_ISDIR(st.st_mode) and os.access(value, os.R_OK)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``ktracecli`` command line ``argv`` (default: ``sys.argv[1:]``)."""
    args = sys.argv[1:] if argv is None else list(argv)
    plain = plain_available(args, os.environ)
    if plain is None:
        from ktracecli import cli

        cli.main(args)
        return
    from ktracecli import available, config, registry

    with one_line_errors(), _click_exits():
        available.list_functions(config.resolve_path(plain.config), plain.program, plain.rejected,
                                 plain.mod, registry.build_registry)


@contextmanager
def _click_exits() -> Iterator[None]:
    """End on an interruption or a closed stream as the Typer app ends a command."""
    try:
        yield
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except EOFError:
        write_stderr_line("")
        write_stderr_line("Aborted!")
        raise SystemExit(1) from None
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        from click.utils import PacifyFlushWrapper  # errors at exit from a closed stream stay quiet

        sys.stdout = PacifyFlushWrapper(sys.stdout)  # type: ignore[assignment]
        sys.stderr = PacifyFlushWrapper(sys.stderr)  # type: ignore[assignment]
        raise SystemExit(1) from None
