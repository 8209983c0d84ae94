"""Following a session's processes under ptrace until it ends, and changing what they trace.

Threads are stopped only at life-cycle events (start, exit, fork, exec, signal
delivery) and when a change is applied, never per traced call.  Signals pass
through unchanged; group-stops are left in place with PTRACE_LISTEN, so job
control still works.  The loop sleeps on a self-pipe (see ``process.wakeup``)::

    loop:   sleep until SIGCHLD, a poke or 50 ms
            reap every event: note it (bookkeeping), dispatch it (resume the thread)
            the config file changed, a loader hook waits, a sync was left undone?
                hold every thread, sync each process, acknowledge the hooks, resume
            Ctrl-C / SIGTERM asked to stop? hold every thread, restore, detach

- A new thread just runs: it claims a slot of its own on its first traced call.
- A thread that exits is held at PTRACE_EVENT_EXIT while its slot is drained and
  freed, before its fs base can be reused by a new thread.
- A forked child is held at birth and given rings of its own (a fresh shared file
  mapped over the inherited one) before it runs; its code is a copy of its
  parent's, so its state starts as a copy too.  A vfork child runs in its
  parent's memory and is left alone until it execs.
- A process that execs is followed to the exec's system-call exit (the kernel
  has mapped the new program and its loader, nothing has run yet) and set up
  again: rings, loader hook, the same rules; its libraries come through the hook.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from ktracecli import filters
from ktracecli.config import Config
from ktracecli.errors import KtraceError
from ktracecli.process import ptrace
from ktracecli.process.tracee import Tracee
from ktracecli.process.wakeup import Wakeup
from ktracecli.process.world import StopKind, StopTimeout, Thread, tgid
from ktracecli.traced import Mode, Retry, Shared, TracedProcess
from ktracecli.watch import ConfigWatcher

#: the loop's longest sleep: the config file is looked at this often
TICK = 0.05
#: after an event, poll for the next one this long before sleeping (a tracee handling a timer
#: signal every 50 us must get back to work faster than a sleep and a wake-up take)
SPIN = 0.002
#: how often processes without a loader hook have their memory map read again
RESCAN_EVERY = 0.5
#: a sync left undone (a thread stayed inside a window) is tried again after this long, then
#: twice as long each time it fails again, up to RETRY_MAX
RETRY_EVERY = 0.1
RETRY_MAX = 2.0


@dataclass(frozen=True)
class Outcome:
    """How a supervised session ended."""

    #: the first process's wait status, if it ended while traced
    leader_status: int | None
    #: the signal that made ktracecli detach (SIGINT, SIGTERM...), 0 if the processes ended
    detached_by: int = 0


def notice(message: str) -> None:
    """One ``ktracecli: ...`` line on stderr, for what a running session wants the user to know."""
    print(f"ktracecli: {message}", file=sys.stderr, flush=True)


class Supervisor:
    """The ptrace event loop of one record or attach session."""

    def __init__(self, shared: Shared, leader: int, watcher: ConfigWatcher | None,
                 stop_signals: tuple[int, ...] = (signal.SIGTERM,), ignore_signals: tuple[int, ...] = (),
                 on_tick: Callable[[], None] | None = None) -> None:
        self.shared = shared
        self.world = shared.world
        self.world.note = self._note
        self.procs = shared.procs
        self.leader = leader
        self.watcher = watcher
        self.stop_signals = stop_signals
        self.ignore_signals = ignore_signals
        self.on_tick = on_tick
        self.leader_status: int | None = None
        #: while True, noted events are not dispatched (every thread is being held)
        self.holding = False
        #: children whose birth stop came before their parent's fork event: pid -> when
        self._orphans: dict[int, float] = {}
        self._retry_at = 0.0
        self._retry_delay = RETRY_EVERY
        self._rescan_at = 0.0
        self._warned: set[str] = set()

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> Outcome:
        """Resume every held thread and follow the processes to their end, or until told to stop."""
        with Wakeup(self.stop_signals, self.ignore_signals) as wake:
            self.world.sleep = wake.wait
            self.shared.consumer.on_map_change = wake.poke
            try:
                self.holding = False
                self._dispatch_held()
                tick_at = busy_until = 0.0
                while self.procs:
                    if wake.stop_requested:
                        self.detach_all()
                        return Outcome(self.leader_status, wake.stop_requested)
                    reaped = self.world.reap_all()
                    if not self.procs:
                        break
                    now = time.monotonic()
                    if now >= tick_at or wake.poked:
                        self._tick()
                        tick_at = now + TICK
                    if reaped:
                        # events come in bursts (a signal storm stops a thread for each signal): look for
                        # the next one at once, without the SIGCHLD round trip of a sleep, for a while
                        busy_until = now + SPIN
                    if now < busy_until:
                        continue
                    wake.wait(max(0.0, tick_at - time.monotonic()))
            finally:
                self.shared.consumer.on_map_change = None
                self.world.sleep = time.sleep
        return Outcome(self.leader_status)

    def _tick(self) -> None:
        now = time.monotonic()
        changed = False
        if self.watcher is not None:
            cfg = self.watcher.poll()
            if cfg is not None:
                changed = self.take_config(cfg)
            elif self.watcher.error and "config" not in self._warned:
                self._warned.add("config")
                notice(f"{self.watcher.error} (ignored until it is fixed)")
        hooks = {p.pid for p in self.procs.values()
                 if p.mode is Mode.READY and p.rings is not None and p.rings.dl_request != p.dl_handled}
        dirty = any(p.dirty for p in self.procs.values()) and now >= self._retry_at
        rescan = False
        if now >= self._rescan_at:
            self._rescan_at = now + RESCAN_EVERY
            rescan = any(p.mode is Mode.READY and not p.hooked and p.modules_changed() for p in self.procs.values())
        if changed or dirty or rescan:
            self.change(rescan_unhooked=rescan)
        elif hooks:  # a library was loaded or unloaded: only the processes concerned are held
            self.change(pids=hooks | {p.pid for p in self.procs.values() if p.memory_of in hooks})
        for pid, since in list(self._orphans.items()):
            if now - since > 1.0:  # its parent never reported the fork: adopt it by its PPid
                self._adopt_orphan(pid)
        if self.on_tick is not None:
            self.on_tick()

    def take_config(self, cfg: Config) -> bool:
        """Take the rules and the tracer of a new config; True if what is traced changes."""
        sh = self.shared
        try:
            rules = filters.parse_all(cfg.filters)
        except KtraceError as exc:
            notice(f"config: {exc} (ignored)")
            return False
        tracing = cfg.tracer == sh.tracer.name
        if cfg.tracer not in (sh.tracer.name, "nop") and f"tracer {cfg.tracer}" not in self._warned:
            self._warned.add(f"tracer {cfg.tracer}")
            notice(f"tracer {cfg.tracer} cannot replace {sh.tracer.name} in a running session: tracing is off "
                   f"until 'ktracecli tracer {sh.tracer.name}' (or start a new session)")
        if cfg.engine != sh.engine.name and f"engine {cfg.engine}" not in self._warned:
            self._warned.add(f"engine {cfg.engine}")
            notice(f"engine {cfg.engine} applies to the next session; this one keeps {sh.engine.name}")
        changed = rules != sh.selector.rules or tracing != sh.tracing
        sh.selector.rules = rules
        sh.tracing = tracing
        return changed

    # -- applying a change --------------------------------------------------------------------

    def change(self, rescan_unhooked: bool = False, pids: set[int] | None = None) -> None:
        """Hold every thread (of ``pids``, or all), sync those processes (reading new libraries first), resume."""
        self.holding = True
        try:
            try:
                self.world.stop_all(pids)
            except StopTimeout:
                for proc in self.procs.values():
                    proc.dirty = True
                self._retry_at = time.monotonic() + 1.0
                return
            for proc in list(self.procs.values()):
                if pids is not None and proc.pid not in pids:
                    continue
                if proc.mode is not Mode.READY and proc.mode is not Mode.FRESH or self._exiting(proc):
                    continue
                request = proc.rings.dl_request if proc.mode is Mode.READY and proc.rings is not None else None
                try:
                    if request is not None and (request != proc.dl_handled or (rescan_unhooked and not proc.hooked)):
                        proc.rescan()
                    proc.sync()
                except Retry:
                    proc.dirty = True
                except (KtraceError, OSError) as exc:
                    proc.dirty = False
                    if os.path.exists(f"/proc/{proc.pid}"):  # else it is exiting: its exit will come
                        notice(f"process {proc.pid}: {exc}")
                if request is not None and request != proc.dl_handled and proc.rings is not None:
                    proc.rings.dl_acknowledge(request)
                    proc.dl_handled = request
            if pids is None:
                if any(p.dirty for p in self.procs.values()):
                    self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)  # e.g. a process stopped by SIGSTOP
                else:
                    self._retry_delay = RETRY_EVERY
                self._retry_at = time.monotonic() + self._retry_delay
        finally:
            self.holding = False
            self._dispatch_held()

    def _exiting(self, proc: TracedProcess) -> bool:
        """Every thread of the process is on its way out (exit_group): nothing to change in it."""
        return all(t.exiting or (t.status is not None and ptrace.stop_event(t.status) == ptrace.PTRACE_EVENT_EXIT)
                   for t in self.world.of(proc.pid))

    # -- events -------------------------------------------------------------------------------

    def _note(self, tid: int, thread: Thread | None, status: int) -> None:
        """Bookkeeping for an event as it is reaped; resumes nothing while threads are being held."""
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            if tid == self.leader:
                self.leader_status = status
            if thread is not None and tid == thread.pid:
                self._process_gone(thread.pid)
            return
        assert thread is not None
        proc = self.procs.get(thread.pid)
        if proc is None:
            self._orphans.setdefault(thread.pid, time.monotonic())
            return
        event = ptrace.stop_event(status)
        if event in (ptrace.PTRACE_EVENT_CLONE, ptrace.PTRACE_EVENT_FORK, ptrace.PTRACE_EVENT_VFORK):
            self._new_task(proc, thread, event, ptrace.event_msg(tid))
        elif event == ptrace.PTRACE_EVENT_EXIT:
            self.shared.consumer.release(thread.pid, tid)
        elif event == ptrace.PTRACE_EVENT_VFORK_DONE:
            thread.vfork_wait = False
        elif event == ptrace.PTRACE_EVENT_EXEC:
            for other in self.world.of(thread.pid):
                if other.tid != tid:
                    self.world.forget(other.tid)  # every other thread is gone, the exec'ing one is now the leader
            # the leader's tid now names the thread that exec'd (the old leader may have exited before)
            thread.exiting = thread.vfork_wait = False
            thread.seen = True
            proc.exec_replaced()
        if not self.holding:
            self._dispatch(thread)

    def _new_task(self, proc: TracedProcess, thread: Thread, event: int, new: int) -> None:
        if event == ptrace.PTRACE_EVENT_VFORK:
            thread.vfork_wait = True  # from when it resumes until PTRACE_EVENT_VFORK_DONE
        owner = tgid(new)
        if owner == proc.pid:
            self.world.add(new, proc.pid, seen=False)
            return
        child = owner or new
        if child not in self.procs:
            fork_slot = None
            if event == ptrace.PTRACE_EVENT_FORK and proc.rings is not None:
                # the forking thread is stopped in its fork event: its slot is still its own
                key = ptrace.get_regs(thread.tid).fs_base or 1
                fork_slot = (proc.rings.find_slot(key), key)
            self._adopt(child, proc, event == ptrace.PTRACE_EVENT_VFORK, fork_slot)

    def _adopt(self, child: int, parent: TracedProcess, vfork: bool,
               fork_slot: tuple[int | None, int] | None = None) -> None:
        """Follow a new process: its state is a copy of its parent's (or its parent's, when it shares memory)."""
        if parent.mode is Mode.SHARED and parent.memory_of in self.procs:
            parent = self.procs[parent.memory_of]
        same = ptrace.same_memory(child, parent.pid)
        proc = TracedProcess(child, Tracee(child, {child}, self.world.pending), self.shared)
        proc.fork_of(parent, vfork if same is None else same)
        proc.fork_slot = fork_slot
        self.procs[child] = proc
        self.world.add(child, child, seen=False)
        if self._orphans.pop(child, None) is not None and not self.holding:
            for thread in self.world.of(child):
                self._dispatch(thread)

    def _adopt_orphan(self, pid: int) -> None:
        self._orphans.pop(pid, None)
        parent = None
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("PPid:"):
                        parent = self.procs.get(int(line.split()[1]))
        except OSError:
            return
        if parent is None or parent.mode not in (Mode.READY, Mode.SHARED):
            # not a child of ours after all: let it go
            for thread in self.world.of(pid):
                if thread.status is not None:
                    self.world.resume(thread, how=ptrace.detach)
                self.world.forget(thread.tid)
            return
        self._orphans[pid] = 0.0
        self._adopt(pid, parent, vfork=False)

    def _process_gone(self, pid: int) -> None:
        proc = self.procs.pop(pid, None)
        if proc is None:
            return
        if proc.mode is Mode.READY and proc.rings is not None:
            self.shared.consumer.retire(pid, proc.rings)
        proc.tracee.close()

    def _dispatch_held(self) -> None:
        for thread in self.world.held():
            self._dispatch(thread)

    def _dispatch(self, thread: Thread) -> None:
        """Let a held thread go on as its stop requires (the program never sees ktracecli)."""
        status = thread.status
        proc = self.procs.get(thread.pid)
        if status is None or proc is None:
            return  # running, or a child waiting for its parent's fork event
        kind = thread.kind
        thread.seen = True
        event, sig = ptrace.stop_event(status), ptrace.stop_signal(status)
        try:
            if kind is StopKind.EVENT:
                if event == ptrace.PTRACE_EVENT_EXEC:
                    self.world.resume(thread, how=ptrace.syscall)  # to the exec's system-call exit
                    return
                if event == ptrace.PTRACE_EVENT_EXIT:
                    thread.exiting = True
                self.world.resume(thread)
            elif kind is StopKind.BIRTH:
                if proc.mode is Mode.FRESH and thread.tid == proc.pid:
                    proc.give_rings(thread)
                self.world.resume(thread)
            elif kind is StopKind.GROUP:
                self.world.resume(thread, how=ptrace.listen)
            elif kind is StopKind.SYSCALL:
                if proc.mode is Mode.EXEC:
                    self._exec_ready(proc, thread)
                if thread.tid in self.world.threads:
                    self.world.resume(thread)
            elif kind is StopKind.SIGNAL:
                self.world.resume(thread, sig)
            else:
                self.world.resume(thread)
        except ptrace.PtraceError as exc:
            if exc.errno != errno.ESRCH:
                raise
        except KtraceError as exc:
            notice(f"process {thread.pid}: {exc}")
            if thread.status is not None:
                self.world.resume(thread)

    def _exec_ready(self, proc: TracedProcess, thread: Thread) -> None:
        """A process exec'd: set the new image up with the session's rules (or let it go untraced)."""
        try:
            proc.setup(thread, strict=False)
        except KtraceError as exc:
            notice(f"process {proc.pid}: {exc}; it goes on untraced")
            self._drop(proc)

    def _drop(self, proc: TracedProcess) -> None:
        """Stop following a process, with its original code back."""
        try:
            proc.restore()
        except (KtraceError, OSError):
            pass
        for thread in self.world.of(proc.pid):
            if thread.status is not None:
                self.world.resume(thread, how=ptrace.detach)
            self.world.forget(thread.tid)
        self.procs.pop(proc.pid, None)
        proc.tracee.close()

    # -- detaching ----------------------------------------------------------------------------

    def detach_all(self) -> None:
        """Hold every thread, put every original byte back, and let the processes run on untraced."""
        self.holding = True
        try:
            self.world.stop_all()
        except StopTimeout as exc:
            notice(f"threads {exc} do not stop; detaching the others")
        for proc in list(self.procs.values()):
            try:
                proc.restore()
            except (KtraceError, OSError) as exc:
                if not self._exiting(proc):
                    notice(f"process {proc.pid}: could not restore its code: {exc}")
            if proc.mode is Mode.READY and proc.rings is not None:
                proc.rings.dl_acknowledge(proc.rings.dl_request)  # a dlopen waiting in the hook goes on now
        self.shared.consumer.drain()
        for thread in list(self.world.threads.values()):
            if thread.status is not None:
                sig = ptrace.stop_signal(thread.status) if thread.kind is StopKind.SIGNAL else 0
                self.world.resume(thread, sig, how=ptrace.detach)
                self.world.forget(thread.tid)
        # a thread inside vfork() stops (VFORK_DONE) once its child, detached now, execs or exits
        deadline = time.monotonic() + 2.0
        while any(t.vfork_wait for t in self.world.threads.values()) and time.monotonic() < deadline:
            if not self.world.reap():
                time.sleep(0.005)
            for thread in list(self.world.threads.values()):
                if thread.status is not None:
                    self.world.resume(thread, how=ptrace.detach)
                    self.world.forget(thread.tid)
        for proc in self.procs.values():
            proc.tracee.close()
        self.procs.clear()
        self.holding = False
