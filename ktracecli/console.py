"""How commands end and print: the error boundary, and standard output closed early.

Both routes into a command, the Typer app (:mod:`ktracecli.cli`) and the fast
lane for a plain ``available`` (:mod:`ktracecli.entry`), go through here, so
they print the same bytes and exit with the same status.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from ktracecli.errors import KtraceError

#: exit status of a command whose standard output was closed early (128 + SIGPIPE), like cat's
EXIT_BROKEN_PIPE = 141


@contextmanager
def one_line_errors() -> Iterator[None]:
    """The one boundary: a :class:`KtraceError` becomes one ``ktracecli: <message>`` line on
    stderr and its exit code; anything else is a bug and keeps its traceback."""
    try:
        yield
    except KtraceError as exc:
        sys.stdout.flush()
        print(f"ktracecli: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


def write_stdout(text: str) -> None:
    """Write to stdout; a reader that went away (``| head``) ends the command quietly."""
    try:
        sys.stdout.write(text)
    except BrokenPipeError:
        stdout_closed()


def write_stderr_line(line: str) -> None:
    """``line`` and a newline on stderr, flushed: the bytes and the one write ``typer.echo(err=True)`` makes."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def stdout_closed() -> NoReturn:
    """Stop quietly after the reader of stdout went away, as cat does on SIGPIPE."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing left to flush at exit
        os.close(devnull)
    except (OSError, ValueError):
        pass
    raise SystemExit(EXIT_BROKEN_PIPE)
