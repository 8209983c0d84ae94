"""The exceptions ktracecli raises for conditions a user can act on.

Every :class:`KtraceError` carries a one-line message meant for the user; the CLI
prints it on stderr and exits non-zero.  Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class KtraceError(Exception):
    """A condition the user can act on; ``str(exc)`` is one line for stderr."""

    exit_code = 2


class ConfigError(KtraceError):
    """The config file is unreadable, corrupt or holds an invalid value."""


class UsageError(KtraceError):
    """A command-line argument is invalid (unknown name, bad pattern...)."""


class ProgramError(KtraceError):
    """The program to trace is missing, not executable, or not an x86_64 ELF."""


class NoMatchError(KtraceError):
    """A symbol pattern matches no function."""


class ProcessError(KtraceError):
    """The tracee could not be started, attached to or controlled."""


class DataError(KtraceError):
    """A recorded data directory is missing or corrupt."""


class PatchError(KtraceError):
    """A patch could not be applied or verified; the batch was rolled back."""
