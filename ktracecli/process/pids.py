"""Processes by pid, without ptrace: is one still there, and making one go away."""

from __future__ import annotations

import os
import signal

WALL = 0x40000000  # __WALL: wait for threads and children alike (ptrace.WALL, without loading ptrace)


def alive(pid: int) -> bool:
    """True while process ``pid`` exists (even one this user may not signal)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_quietly(pid: int) -> None:
    """SIGKILL a child of ours and reap it; nothing if it is gone already."""
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, WALL)
    except (ProcessLookupError, ChildProcessError):
        pass
