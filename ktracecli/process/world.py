"""Every thread a session traces, whether it runs or is held in a ptrace-stop, and holding them all.

A thread is either running (``status`` None) or held in a ptrace-stop whose
wait status is kept until the session resumes it.  Events are *noted* as they
are reaped (a callback does the bookkeeping: new threads and processes, exits)
and *dispatched* later, when the session decides how each held thread goes on;
so that a change can be applied with every thread held::

    stop_all():   PTRACE_INTERRUPT each running thread; reap until every one is held
                  (a thread may stop for another reason first: a signal, a fork, an
                  exit...; that stop is the one kept, and noted at once)
    ... write code while nothing runs ...
    dispatch each held thread (the session's handler resumes it as its stop requires)

Signals that arrive while ktracecli holds a thread for its own work (a remote
system call, a single step) are kept in :attr:`World.pending` and sent again
with ``tgkill`` just before the thread resumes.  Only this thread (the one that
attached) ever calls ptrace.
"""

from __future__ import annotations

import enum
import errno
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from ktracecli.process import ptrace
from ktracecli.process.remote import restart_pending

#: a wait status meaning "held by ktracecli, resume with no signal" (PTRACE_EVENT_STOP, SIGTRAP)
HELD = (ptrace.PTRACE_EVENT_STOP << 16) | (signal.SIGTRAP << 8) | 0x7F
SYSCALL_TRAP = signal.SIGTRAP | 0x80
STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})
#: how long a thread may take to stop before ktracecli gives up for now
STOP_TIMEOUT = 5.0


class StopKind(enum.Enum):
    """Why a held thread is stopped."""

    BIRTH = "birth"          # first stop of a task born traced (PTRACE_EVENT_STOP)
    INTERRUPT = "interrupt"  # PTRACE_INTERRUPT (PTRACE_EVENT_STOP, SIGTRAP), or held by ktracecli
    GROUP = "group"          # group-stop (PTRACE_EVENT_STOP with a stopping signal)
    SIGNAL = "signal"        # signal-delivery-stop: the signal is delivered when it resumes
    EVENT = "event"          # PTRACE_EVENT_CLONE/FORK/VFORK/VFORK_DONE/EXEC/EXIT
    SYSCALL = "syscall"      # syscall-stop (PTRACE_SYSCALL with TRACESYSGOOD)


class StopTimeout(Exception):
    """A thread did not stop in time (uninterruptible sleep...): try again later."""


@dataclass
class Thread:
    """One traced thread."""

    tid: int
    pid: int
    #: wait status of the ptrace-stop it is held in; None while it runs
    status: int | None = None
    #: False until the first stop of a task born traced (its birth stop)
    seen: bool = True
    #: inside vfork(): the kernel holds it until its child execs or exits (VFORK_DONE)
    vfork_wait: bool = False
    #: past its PTRACE_EVENT_EXIT: it will never stop again
    exiting: bool = False

    @property
    def kind(self) -> StopKind | None:
        """Why it is held, or None while it runs."""
        if self.status is None:
            return None
        return classify(self.status, self.seen)


def classify(status: int, seen: bool) -> StopKind:
    """The kind of a stopped wait status (``seen``: the thread has stopped before)."""
    event, sig = ptrace.stop_event(status), ptrace.stop_signal(status)
    if event == ptrace.PTRACE_EVENT_STOP:
        if not seen:
            return StopKind.BIRTH
        return StopKind.GROUP if sig in STOP_SIGNALS else StopKind.INTERRUPT
    if event:
        return StopKind.EVENT
    if sig == SYSCALL_TRAP:
        return StopKind.SYSCALL
    return StopKind.SIGNAL


def tgid(tid: int) -> int | None:
    """The process (thread group) of a thread, from /proc."""
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


Note = Callable[[int, "Thread | None", int], None]


class World:
    """The threads of one session and their ptrace-stops."""

    def __init__(self, note: Note, sleep: Callable[[float], None] = time.sleep) -> None:
        #: called as each event is reaped: (tid, its Thread or None if unknown and gone, wait status)
        self.note = note
        self.sleep = sleep
        self.threads: dict[int, Thread] = {}
        #: signals to send again before a thread resumes (shared with every Tracee)
        self.pending: dict[int, list[int]] = {}

    # -- bookkeeping ---------------------------------------------------------------------

    def add(self, tid: int, pid: int, seen: bool = True) -> Thread:
        """Start following ``tid`` of process ``pid`` (known already: nothing changes)."""
        thread = self.threads.get(tid)
        if thread is None:
            thread = self.threads[tid] = Thread(tid, pid, seen=seen)
        return thread

    def forget(self, tid: int) -> None:
        """Stop following ``tid`` (it exited, or was detached)."""
        self.threads.pop(tid, None)
        self.pending.pop(tid, None)

    def of(self, pid: int) -> list[Thread]:
        """The threads of process ``pid``."""
        return [t for t in self.threads.values() if t.pid == pid]

    def held(self) -> list[Thread]:
        """Every thread held in a ptrace-stop."""
        return [t for t in self.threads.values() if t.status is not None]

    # -- reaping -------------------------------------------------------------------------

    def _got(self, tid: int, status: int) -> None:
        thread = self.threads.get(tid)
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self.forget(tid)
        elif os.WIFSTOPPED(status):
            if thread is None:
                thread = self.add(tid, tgid(tid) or tid, seen=False)
            thread.status = status
        else:
            return
        self.note(tid, thread, status)

    def reap(self, block: bool = False) -> bool:
        """Reap one event (waiting for it if ``block``) and note it; False if there was none."""
        try:
            tid, status = os.waitpid(-1, ptrace.WALL | (0 if block else os.WNOHANG))
        except ChildProcessError:
            return False
        if tid == 0:
            return False
        self._got(tid, status)
        return True

    def reap_all(self) -> int:
        """Reap and note every event that is waiting; returns how many."""
        count = 0
        while self.reap():
            count += 1
        return count

    def wait_for(self, tid: int, timeout: float | None = None) -> bool:
        """Wait until ``tid`` reports (noting what it reports); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                got, status = os.waitpid(tid, ptrace.WALL | (0 if deadline is None else os.WNOHANG))
            except ChildProcessError:
                self.forget(tid)
                return True
            if got:
                self._got(got, status)
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.0005)

    # -- holding and resuming ------------------------------------------------------------

    def stop_all(self, pids: set[int] | None = None, timeout: float = STOP_TIMEOUT) -> None:
        """Hold every thread (of ``pids``, or all); new tasks born meanwhile are held too.

        Threads inside vfork() are not waited for: they cannot run until their
        child, held too, execs or exits.  Raises :class:`StopTimeout` when some
        thread does not stop within ``timeout`` seconds (the others stay held).
        """
        asked: set[int] = set()
        deadline = time.monotonic() + timeout
        while True:
            waiting = [t for t in self.threads.values()
                       if (pids is None or t.pid in pids) and t.status is None
                       and not t.vfork_wait and not t.exiting]
            if not waiting:
                return
            for thread in waiting:
                if thread.tid in asked:
                    continue
                asked.add(thread.tid)
                try:
                    ptrace.interrupt(thread.tid)
                except ptrace.PtraceError as exc:
                    if exc.errno != errno.ESRCH:
                        raise
            if not self.reap():
                if time.monotonic() > deadline:
                    raise StopTimeout(", ".join(str(t.tid) for t in waiting))
                self.sleep(0.01)

    def borrow(self, thread: Thread) -> None:
        """Take a held thread for ktracecli's own use (remote calls, steps).

        Its stop is forgotten: a signal it was about to receive is kept for later,
        and it will resume as from an interrupt.
        """
        assert thread.status is not None
        if thread.kind is StopKind.SIGNAL:
            sig = ptrace.stop_signal(thread.status)
            if sig != signal.SIGTRAP:
                self.pending.setdefault(thread.tid, []).append(sig)
        thread.status = HELD

    def resume(self, thread: Thread, sig: int = 0, how: Callable[..., None] = ptrace.cont) -> None:
        """Let a held thread go on (``how``: ptrace.cont, syscall, listen or detach)."""
        for pending in self.pending.pop(thread.tid, []):
            try:
                ptrace.tgkill(thread.pid, thread.tid, pending)
            except ptrace.PtraceError:
                pass
        try:
            if how is ptrace.listen:
                ptrace.listen(thread.tid)
            else:
                how(thread.tid, sig)
        except ptrace.PtraceError as exc:
            if exc.errno != errno.ESRCH:  # killed meanwhile (SIGKILL): its exit follows
                raise
        thread.status = None

    def step_out(self, thread: Thread, windows: list[tuple[int, int]], steps: int = 64) -> bool:
        """Single-step a held thread until it will resume in none of ``windows`` (lo < rip < hi).

        A one-off while patching (the thread is stopped anyway), never a trap per traced call.

        A thread held inside a blocking system call resumes at its ``syscall``
        instruction (rip - 2: the kernel restarts the call); it cannot be stepped
        out, it has to be left alone until it returns.  False if the thread is
        still inside after ``steps`` steps, is in such a call, or stopped for
        another reason (an event, which stays held for the session to dispatch).
        """
        for _ in range(steps):
            if thread.status is None or thread.tid not in self.threads:
                return True  # it exited
            try:
                regs = ptrace.get_regs(thread.tid)
            except ptrace.PtraceError:
                return True
            resume_at = regs.rip - 2 if restart_pending(regs) else regs.rip
            if not any(lo < resume_at < hi for lo, hi in windows):
                return True
            if resume_at != regs.rip or thread.kind not in (StopKind.INTERRUPT, StopKind.BIRTH, StopKind.SIGNAL):
                return False
            self.borrow(thread)
            try:
                ptrace.singlestep(thread.tid, 0)
            except ptrace.PtraceError:
                return True
            thread.status = None
            if not self.wait_for(thread.tid, timeout=0.05):
                # a system call that blocks: interrupt it (it restarts when the thread resumes)
                ptrace.interrupt(thread.tid)
                self.wait_for(thread.tid)
            if thread.status is not None and thread.kind is StopKind.SIGNAL \
                    and ptrace.stop_signal(thread.status) == signal.SIGTRAP:
                thread.status = HELD  # our step's trap
        return False
