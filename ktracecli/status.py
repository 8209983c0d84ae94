"""The running sessions, for ``ktracecli status``.

Each record or attach session keeps one small JSON file, rewritten atomically
about twice a second, in ``$XDG_RUNTIME_DIR/ktracecli/`` (or
``/tmp/ktracecli-UID/``, mode 0700).  A file whose ktracecli process is gone is
stale and is removed when read.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ktracecli.process.pids import alive


@dataclass(frozen=True)
class SessionStatus:
    """What one running session reports."""

    ktracecli_pid: int
    #: "record" or "attach"
    kind: str
    #: the first traced process
    pid: int
    program: str
    engine: str
    #: the tracer in effect now ("nop" while the config says nop)
    tracer: str
    #: functions enabled now, all processes
    traced: int
    events: int
    lost: int
    output: str
    #: the config file the session follows
    config: str
    #: processes traced now
    processes: int = 1
    #: tracee memory: stubs of the functions enabled now, and handler code (leader process)
    detour_bytes: int = 0
    handler_bytes: int = 0


def runtime_dir() -> Path:
    """The per-user directory holding the session files."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "ktracecli" if base else Path(tempfile.gettempdir()) / f"ktracecli-{os.getuid()}"
    return path


def _ours(folder: Path) -> bool:
    """True if ``folder`` is a directory of this user that no one else may write (a shared /tmp)."""
    try:
        st = folder.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def _file(ktracecli_pid: int) -> Path:
    return runtime_dir() / f"session-{ktracecli_pid}.json"


def publish(status: SessionStatus) -> None:
    """Write (or rewrite) this session's file."""
    folder = runtime_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not _ours(folder):
            return
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(status), f)
        os.replace(tmp, _file(status.ktracecli_pid))
    except OSError:
        pass  # status is a convenience: never fail a session for it


def withdraw(ktracecli_pid: int) -> None:
    """Remove this session's file."""
    try:
        _file(ktracecli_pid).unlink()
    except OSError:
        pass


def running() -> list[SessionStatus]:
    """Every live session, oldest ktracecli pid first; stale files are removed."""
    sessions = []
    folder = runtime_dir()
    if not _ours(folder):
        return []
    for path in sorted(folder.glob("session-*.json")):
        try:
            with open(path) as f:
                status = SessionStatus(**json.load(f))
        except (OSError, ValueError, TypeError):
            continue
        if alive(status.ktracecli_pid):
            sessions.append(status)
        else:
            withdraw(status.ktracecli_pid)
    return sorted(sessions, key=lambda s: s.ktracecli_pid)
