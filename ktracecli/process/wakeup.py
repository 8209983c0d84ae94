"""Waking ktracecli's ptrace thread: a self-pipe fed by SIGCHLD and by other threads.

The ptrace thread must not block in ``waitpid`` while a config change or a
dlopen waits to be applied, so it sleeps in ``select`` on a pipe instead::

    SIGCHLD (a tracee stopped or exited) --signal.set_wakeup_fd--+
    consumer thread (a dlopen asks for its library) --poke()----+--> pipe --> select() wakes
    SIGINT / SIGTERM (detach)            --set_wakeup_fd--------+

then reaps every event with ``waitpid(WNOHANG)`` until none is left.  A signal
that arrives between the last ``waitpid`` and ``select`` has already written its
byte, so no wake-up is lost; a timeout bounds the sleep anyway.
"""

from __future__ import annotations

import os
import select
import signal
import threading
from types import FrameType
from typing import Callable


class Wakeup:
    """The self-pipe and the signal handlers that feed it (install with ``with``)."""

    def __init__(self, stop_signals: tuple[int, ...] = (signal.SIGTERM,),
                 ignore_signals: tuple[int, ...] = ()) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.stop_signals = stop_signals
        #: signals ktracecli leaves to the traced program (record: Ctrl-C is the program's)
        self.ignore_signals = ignore_signals
        #: the first stop signal received (SIGTERM, or SIGINT for attach), 0 if none
        self.stop_requested = 0
        self._previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}
        self._previous_fd = -1
        self._lock = threading.Lock()  # poke() from another thread never writes to a closed (reused) fd
        self._closed = False

    def __enter__(self) -> "Wakeup":
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, _nothing)
        for signum in self.stop_signals:
            self._previous[signum] = signal.signal(signum, self._on_stop)
        for signum in self.ignore_signals:
            self._previous[signum] = signal.signal(signum, signal.SIG_IGN)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        signal.set_wakeup_fd(self._previous_fd)
        with self._lock:
            self._closed = True
            os.close(self._read)
            os.close(self._write)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        if not self.stop_requested:
            self.stop_requested = signum

    def poke(self) -> None:
        """Wake the ptrace thread (safe from any thread)."""
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self._write, POKE)
            except OSError:
                pass  # the pipe is full: a wake-up is pending already

    def wait(self, timeout: float) -> None:
        """Sleep until poked, a signal arrives or ``timeout`` seconds pass; then empty the pipe."""
        select.select([self._read], [], [], timeout)
        self._drain()

    @property
    def poked(self) -> bool:
        """True (once) when :meth:`poke` was called since the last look, without sleeping."""
        return self._drain()

    def _drain(self) -> bool:
        """Empty the pipe; True if it held a poke (signals write their number, a poke POKE)."""
        poked = False
        try:
            while chunk := os.read(self._read, 4096):
                poked = poked or POKE in chunk
        except BlockingIOError:
            pass
        return poked


#: the byte :meth:`Wakeup.poke` writes (signals write their number, at most 64)
POKE = b"\xff"


def _nothing(signum: int, frame: FrameType | None) -> None:
    """SIGCHLD's handler: the byte the C-level handler writes to the pipe is all that is needed."""
