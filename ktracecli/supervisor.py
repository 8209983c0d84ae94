"""Following a traced program's threads and processes under ptrace until it ends.

Threads are stopped only at life-cycle events (start, exit, fork, exec,
signal delivery), never per traced call.  Signals pass through unchanged;
group-stops are left in place with PTRACE_LISTEN, so job control still works.

- A new thread just runs: it claims a slot of its own on its first traced call.
- A thread that exits is held at PTRACE_EVENT_EXIT while its slot is drained and
  freed, before its fs base can be reused by a new thread.
- A forked child is held at birth and given rings of its own (a fresh shared file
  mapped over the inherited one) before it runs; its thread keeps the slot index
  of the thread that forked (see :meth:`SharedRings.inherit`).
- A process that execs has lost the patched image: its rings are drained and it is
  detached.
"""

from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass, field

import numpy as np

from ktracecli.model import Patch
from ktracecli.process import ptrace
from ktracecli.process.remote import RemoteCaller
from ktracecli.process.tracee import GROUP_STOP_SIGNALS, Tracee
from ktracecli.runtime.consumer import Consumer
from ktracecli.runtime.shm import SharedRings


class Detach(Exception):
    """Raised by ktracecli's SIGTERM handler: stop tracing and leave the program running."""


@dataclass
class _Proc:
    tracee: Tracee
    patches: list[Patch]
    fresh: bool = False  # a forked child not yet given rings of its own
    threads_seen: set[int] = field(default_factory=set)


def _exit_code(status: int) -> int:
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return 1


def _status_field(tid: int, name: str) -> int | None:
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _tgid(tid: int) -> int | None:
    return _status_field(tid, "Tgid:")


def _ppid(pid: int) -> int:
    return _status_field(pid, "PPid:") or 0


class Supervisor:
    """The ptrace event loop of one record session."""

    def __init__(self, tracee: Tracee, consumer: Consumer, rings: SharedRings, scratch: int,
                 dtype: np.dtype, patches: list[Patch]) -> None:
        self.leader = tracee.pid
        self.consumer = consumer
        self.rings_layout = rings.layout
        self.scratch = scratch
        self.dtype = dtype
        self.procs: dict[int, _Proc] = {tracee.pid: _Proc(tracee, list(patches))}
        self.owner: dict[int, int] = {tracee.pid: tracee.pid}
        self.leader_status: int | None = None
        self.rings: dict[int, SharedRings] = {tracee.pid: rings}
        #: forked child -> (its parent, the forking thread's slot index, its fs base)
        self.fork_slots: dict[int, tuple[int, int | None, int]] = {}

    def run(self) -> int:
        """Resume the program and follow it to its end; returns its exit status (128+N if killed)."""
        previous = signal.signal(signal.SIGTERM, self._on_term)
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the program's to handle
        try:
            ptrace.cont(self.leader, self.procs[self.leader].tracee.pending_signals.pop(self.leader, 0))
            while self.procs or self.leader_status is None:
                try:
                    tid, status = os.waitpid(-1, ptrace.WALL)
                except ChildProcessError:
                    break
                self._handle(tid, status)
        except Detach:
            self.detach_all()
            return 128 + signal.SIGTERM
        finally:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, interrupt)
        return _exit_code(self.leader_status) if self.leader_status is not None else 1

    def _on_term(self, signum: int, frame: object) -> None:
        raise Detach()

    # -- events ------------------------------------------------------------

    def _handle(self, tid: int, status: int) -> None:
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self._gone(tid, status)
            return
        if not os.WIFSTOPPED(status):
            return
        pid = self.owner.get(tid)
        if pid is None:
            pid = _tgid(tid) or tid
            if pid not in self.procs:  # a forked child that reported before its parent's event
                self._adopt_child(pid)
            self.owner[tid] = pid
            self.procs[pid].tracee.threads.add(tid)
        proc = self.procs[pid]
        event, sig = ptrace.stop_event(status), ptrace.stop_signal(status)
        try:
            if event in (ptrace.PTRACE_EVENT_CLONE, ptrace.PTRACE_EVENT_FORK, ptrace.PTRACE_EVENT_VFORK):
                new = ptrace.event_msg(tid)
                if event == ptrace.PTRACE_EVENT_FORK and new not in self.fork_slots:
                    self.fork_slots[new] = self._forking_slot(pid, tid)
                self._new_task(pid, event, new)
                ptrace.cont(tid)
            elif event == ptrace.PTRACE_EVENT_EXIT:
                self.consumer.release(pid, tid)
                ptrace.cont(tid)
            elif event == ptrace.PTRACE_EVENT_EXEC:
                self._exec(pid, tid)
            elif event == ptrace.PTRACE_EVENT_STOP:
                first = tid not in proc.threads_seen
                proc.threads_seen.add(tid)
                if first and proc.fresh:
                    self._give_rings(proc)
                if not first and sig in GROUP_STOP_SIGNALS:
                    ptrace.listen(tid)
                else:
                    ptrace.cont(tid)
            else:
                proc.threads_seen.add(tid)
                ptrace.cont(tid, 0 if sig == (signal.SIGTRAP | 0x80) else sig)
        except ptrace.PtraceError as exc:
            if exc.errno != errno.ESRCH:  # the thread vanished meanwhile (SIGKILL): its exit follows
                raise

    def _new_task(self, parent: int, event: int, new: int) -> None:
        if event == ptrace.PTRACE_EVENT_CLONE:
            if self.owner.get(new) is None:
                self.owner[new] = parent
                self.procs[parent].tracee.threads.add(new)
            return
        if new not in self.procs:
            self._adopt_child(new, vfork=event == ptrace.PTRACE_EVENT_VFORK)

    def _adopt_child(self, pid: int, vfork: bool = False) -> None:
        parent_patches = self.procs[self.leader].patches if self.leader in self.procs else []
        # a vfork child shares its parent's memory: remapping would remap the parent too
        self.procs[pid] = _Proc(Tracee(pid, {pid}), list(parent_patches), fresh=not vfork)
        self.owner[pid] = pid

    def _forking_slot(self, parent: int, tid: int) -> tuple[int, int | None, int]:
        """(parent, slot index, fs base) of thread ``tid``, stopped in fork (its slot is still its own)."""
        key = ptrace.get_regs(tid).fs_base or 1
        rings = self.rings.get(parent)
        return parent, rings.find_slot(key) if rings else None, key

    def _give_rings(self, proc: _Proc) -> None:
        """Map a fresh shared file over the rings a forked child inherited."""
        proc.fresh = False
        pid = proc.tracee.pid
        rings = SharedRings(self.rings_layout.at(0), pid)
        try:
            caller = RemoteCaller(proc.tracee, pid)
            rings.map_into(caller, self.scratch, fixed=self.rings_layout.base)
        finally:
            rings.unlink()
        # the parent is still stopped in its fork event if it has not reported it yet
        if pid in self.fork_slots:
            parent, index, key = self.fork_slots.pop(pid)
        else:
            parent, index, key = self._forking_slot(_ppid(pid), pid)
        if parent in self.rings:
            rings.inherit(self.rings[parent], index, key, pid)
        self.rings[pid] = rings
        self.consumer.add(pid, rings, self.dtype)

    def _exec(self, pid: int, tid: int) -> None:
        """The process replaced its image: what was patched is gone; stop following it."""
        proc = self.procs.pop(pid)
        self.consumer.drain()
        self.consumer.forget(pid)
        for t in [t for t, p in self.owner.items() if p == pid]:
            del self.owner[t]
        proc.tracee.close()
        ptrace.detach(tid)

    def _gone(self, tid: int, status: int) -> None:
        pid = self.owner.pop(tid, None)
        if tid == self.leader:
            self.leader_status = status
        if pid is None:
            return
        proc = self.procs.get(pid)
        if proc is None:
            return
        proc.tracee.threads.discard(tid)
        if tid == pid:  # the thread-group leader is reported last
            proc.tracee.close()
            del self.procs[pid]

    # -- detaching -----------------------------------------------------------

    def detach_all(self) -> None:
        """Stop every thread, put the original bytes back, and let the processes run on untraced."""
        for pid, proc in list(self.procs.items()):
            stopped = self._stop_threads(proc)
            try:
                for patch in reversed(proc.patches):
                    if proc.tracee.read(patch.addr, len(patch.new)) == patch.new:
                        proc.tracee.write(patch.addr, patch.original)
            finally:
                for tid in stopped:
                    try:
                        ptrace.detach(tid, proc.tracee.pending_signals.pop(tid, 0))
                    except ptrace.PtraceError:
                        pass
                proc.tracee.close()
        self.procs.clear()

    def _stop_threads(self, proc: _Proc) -> list[int]:
        """PTRACE_INTERRUPT every thread and wait until each is stopped."""
        waiting = set()
        for tid in list(proc.tracee.threads):
            try:
                ptrace.interrupt(tid)
                waiting.add(tid)
            except ptrace.PtraceError:
                proc.tracee.threads.discard(tid)
        stopped = []
        while waiting:
            try:
                tid, status = os.waitpid(-1, ptrace.WALL)
            except ChildProcessError:
                break
            if tid not in waiting:
                continue
            if os.WIFSTOPPED(status):
                sig = ptrace.stop_signal(status)
                if ptrace.stop_event(status) == 0 and sig != signal.SIGTRAP:
                    proc.tracee.pending_signals[tid] = sig
                stopped.append(tid)
            waiting.discard(tid)
        return stopped
