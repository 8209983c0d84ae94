"""Noticing that the config file changed while a session runs (``ktracecli ktrace add`` and friends).

The ptrace thread wakes at least every 50 ms and asks :meth:`ConfigWatcher.poll`,
which compares the file's identity (inode, size, mtime): the config is always
replaced by rename, so a changed file is a new inode and never half-written.
A file that does not parse is ignored until it is fixed.
"""

from __future__ import annotations

import os
from pathlib import Path

from ktracecli import config as config_mod
from ktracecli.errors import ConfigError


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class ConfigWatcher:
    """Reports a new :class:`~ktracecli.config.Config` each time the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = _identity(path)
        #: the last problem reading the file, if it is broken now
        self.error: str | None = None

    def poll(self) -> config_mod.Config | None:
        """The new config if the file changed since the last call (and parses), else None."""
        now = _identity(self.path)
        if now == self._seen:
            return None
        self._seen = now
        try:
            cfg = config_mod.load(self.path)
        except ConfigError as exc:
            self.error = str(exc)
            return None
        self.error = None
        return cfg
