"""``record`` and ``attach`` sessions: get hold of a process, patch it, follow it, write the trace.

record: check the program and the patterns, fork and exec it stopped, run it
to its entry point (the dynamic loader has mapped its libraries), set it up
(analyse the modules the patterns name, map the shared rings, write handlers
and stubs, enable the sites, hook the loader), and resume.

attach: seize every thread of a running process, hold them all, set it up the
same way, and resume; on Ctrl-C or SIGTERM, hold them again, restore every
original byte and detach, leaving the process running as before.

Both then follow the process's threads and children (supervisor), apply the
config file's changes while they run, drain the rings as they go (streaming
them with ``--live``), and publish their state for ``ktracecli status``.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ktracecli import filters, status
from ktracecli.datadir import DataWriter
from ktracecli.elf.image import ElfImage
from ktracecli.errors import ProcessError, UsageError
from ktracecli.interface import Engine, Tracer
from ktracecli.options import TraceOptions
from ktracecli.process.pids import kill_quietly
from ktracecli.process.tracee import AT_ENTRY, Tracee, process_exe, resolve_program, seize, spawn
from ktracecli.process.world import HELD, StopKind, StopTimeout, Thread, World
from ktracecli.registry import Registry
from ktracecli.runtime import clock
from ktracecli.runtime.consumer import Consumer
from ktracecli.runtime.installer import LoadedModule
from ktracecli.runtime.layout import RuntimeLayout
from ktracecli.selection import Selector, SiteTable
from ktracecli.stream import SessionView, StreamSink
from ktracecli.supervisor import Outcome, Supervisor, notice
from ktracecli.symbols import write_modules
from ktracecli.traced import Shared, Spaces, TracedProcess
from ktracecli.watch import ConfigWatcher

#: how often ``ktracecli status`` sees a session's numbers change
STATUS_EVERY = 0.5


@dataclass(frozen=True, kw_only=True)
class SessionSettings:
    """What every session needs, already validated by the CLI (from the config file and the options)."""

    output: Path
    engine: str
    tracer: str
    filters: tuple[str, ...] = ()
    buffer_size_kb: int = 16384
    config_path: Path | None = None
    live: bool = False
    #: the kernel's function_graph knobs (0 = unlimited / off); tracing_thresh in microseconds
    max_graph_depth: int = 0
    tracing_thresh: int = 0
    #: the trace options --live prints with
    options: TraceOptions = TraceOptions()


@dataclass(frozen=True, kw_only=True)
class RecordSettings(SessionSettings):
    """``record``: the program to start, with its arguments."""

    argv: list[str]


@dataclass(frozen=True, kw_only=True)
class AttachSettings(SessionSettings):
    """``attach``: the running process to trace."""

    pid: int


@dataclass(frozen=True)
class RecordResult:
    """What a finished session reports."""

    exit_status: int
    engine: str
    traced: int
    refused: int
    events: int
    lost: int
    #: attach: the signal that made ktracecli detach, 0 if the process exited
    detached_by: int = 0
    #: attach: the process's wait status if it exited while traced
    process_status: int | None = None


def _exit_code(status: int) -> int:
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return 1


class Session:
    """What a record and an attach session share: the trace being written, the rules, the processes."""

    def __init__(self, kind: str, engine: Engine, tracer: Tracer, rules: list[filters.FilterRule],
                 settings: SessionSettings) -> None:
        assert tracer.record_dtype is not None
        self.kind = kind
        self.settings = settings
        self.output = settings.output
        self.config_path = settings.config_path
        self.setup_started = time.perf_counter()
        self.setup_s = 0.0
        self.start = clock.sample()
        time.sleep(0.01)  # a first calibration, for the loader hook's timeouts, live timestamps, tracing_thresh
        early = clock.Calibration.between(self.start, clock.sample())
        thresh = settings.tracing_thresh
        graph_limits = (settings.max_graph_depth, max(1, round(thresh * 1000 / early.ns_per_tick)) if thresh else 0)
        sites, spaces = SiteTable(), Spaces()
        view = SessionView(sites, spaces, self.start, settings.options, settings.tracing_thresh)
        self.sink = StreamSink(tracer, view) if settings.live else None
        self.writer = DataWriter(settings.output)
        self.consumer = Consumer(self.writer)
        self.consumer.sink = self.sink
        layout = RuntimeLayout.for_buffer(settings.buffer_size_kb, tracer.record_dtype.itemsize)
        self.shared = Shared(engine=engine, tracer=tracer, dtype=tracer.record_dtype, layout=layout,
                             selector=Selector(engine, rules, tracer), sites=sites, consumer=self.consumer,
                             world=World(note=lambda tid, thread, st: None), spaces=spaces,
                             ns_per_tick=early.ns_per_tick, graph_limits=graph_limits)
        self.world = self.shared.world
        self.leader: TracedProcess | None = None
        self.program = ""
        self._status_at = 0.0

    def supervisor(self, leader: int, stop_signals: tuple[int, ...], ignore_signals: tuple[int, ...] = ()
                   ) -> Supervisor:
        """The event loop for this session's processes."""
        watcher = ConfigWatcher(self.config_path) if self.config_path is not None else None
        return Supervisor(self.shared, leader, watcher, stop_signals, ignore_signals, on_tick=self.publish)

    def publish(self, force: bool = False) -> None:
        """Rewrite this session's status file (at most every STATUS_EVERY seconds)."""
        now = time.monotonic()
        if not force and now < self._status_at:
            return
        self._status_at = now + STATUS_EVERY
        sh = self.shared
        enabled: set[int] = set()
        for proc in sh.procs.values():
            enabled |= proc.enabled
        status.publish(status.SessionStatus(
            ktracecli_pid=os.getpid(), kind=self.kind, pid=self.leader.pid if self.leader else 0,
            program=self.program, engine=sh.engine.name, tracer=sh.tracer.name if sh.tracing else "nop",
            traced=len(enabled), events=self.writer.events, lost=self.lost, output=str(self.output),
            config=str(self.config_path or ""), processes=len(sh.procs),
            detour_bytes=sum(int(sh.sites.entries[i].get("detour", 0)) for i in enabled),
            handler_bytes=self.handler_bytes))

    @property
    def handler_bytes(self) -> int:
        """Handler code placed in the leader (one copy per stub region)."""
        leader = self.leader
        return leader.installer.installed.handler_bytes if leader and leader.installer else 0

    @property
    def lost(self) -> int:
        """Events lost so far (full rings, no free slot)."""
        return self.writer.lost + self.consumer.lost_no_slot

    def finish(self, info: dict[str, Any], exit_status: int, outcome: Outcome) -> RecordResult:
        """Drain what is left, write the data directory and say how it went."""
        self.consumer.stop()
        if self.sink is not None:
            self.sink.close()
        if outcome.detached_by:
            for proc in self.consumer.processes:
                proc.rings.release()
        end = clock.sample()
        if end.ns - self.start.ns < 20_000_000:  # widen a short calibration interval
            time.sleep(0.02)
            end = clock.sample()
        calibration = clock.Calibration.between(self.start, end)
        sh = self.shared
        traced = len(sh.sites.entries)
        refused = self.leader.refused if self.leader is not None else 0
        lost = self.lost
        self.writer.write_json("sites.json", sh.sites.entries)
        write_modules(self.writer, sh.spaces.modules)
        self.writer.finish({
            **info,
            "engine": sh.engine.name, "tracer": sh.tracer.name,
            "record_size": sh.dtype.itemsize,
            "ncpus": os.sysconf("SC_NPROCESSORS_ONLN"),
            "clock": {"tsc0": calibration.tsc0, "ns0": calibration.ns0, "ns_per_tick": calibration.ns_per_tick},
            "traced": traced, "refused": refused, "events": self.writer.events, "lost": lost,
            "exit_status": exit_status,
            "max_graph_depth": self.settings.max_graph_depth, "tracing_thresh": self.settings.tracing_thresh,
            # for bench/: time from start to resuming the patched program, and ktracecli's peak memory
            "setup_s": round(self.setup_s, 6),
            "handler_bytes": self.handler_bytes,
            "ktracecli_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        })
        return RecordResult(exit_status, sh.engine.name, traced, refused, self.writer.events, lost,
                            outcome.detached_by, outcome.leader_status)

    def abandon(self) -> None:
        """Give up: stop the consumer and remove the partial data directory."""
        self.consumer.stop()
        self.writer.abandon()


# -- record --------------------------------------------------------------------------------------


def record(settings: RecordSettings, registry: Registry) -> RecordResult:
    """Run ``settings.argv`` traced and write its data directory."""
    engine = registry.engine(settings.engine)
    tracer = registry.tracer(settings.tracer)
    rules = filters.parse_all(settings.filters)
    path = resolve_program(settings.argv[0])
    real_path = os.path.realpath(path)  # the file the kernel maps, as /proc/PID/maps names it
    main_name = os.path.basename(real_path)
    with ElfImage.open(real_path):
        pass  # a clear error for non-ELF, 32-bit and other programs before anything runs
    if tracer.record_dtype is None:
        return _run_untraced(settings, engine, tracer, path)
    if not any(r.module for r in rules):  # bad patterns fail before the program runs
        Selector(engine, rules, tracer).plan([LoadedModule(real_path, main_name, 0, 0, 0)], main_name)
    session = Session("record", engine, tracer, rules, settings)
    session.program = " ".join(settings.argv)
    try:
        tracee = spawn(path, settings.argv)
        pid = tracee.pid
        try:
            tracee.pending_signals = session.world.pending
            entry = tracee.auxv(AT_ENTRY)
            assert entry is not None
            tracee.run_to(pid, entry)
            thread = session.world.add(pid, pid)
            thread.status = HELD
            proc = TracedProcess(pid, tracee, session.shared)
            session.shared.procs[pid] = proc
            session.leader = proc
            proc.setup(thread, strict=True)
        except BaseException:
            tracee.close()
            kill_quietly(pid)
            raise
        session.setup_s = time.perf_counter() - session.setup_started
        session.consumer.start()
        session.publish(force=True)
        # Ctrl-C is the program's (the terminal sends it to both); SIGTERM or a hang-up detaches
        outcome = session.supervisor(pid, (signal.SIGTERM, signal.SIGHUP), (signal.SIGINT,)).run()
        if outcome.detached_by:
            exit_status = 128 + outcome.detached_by
        elif outcome.leader_status is not None:
            exit_status = _exit_code(outcome.leader_status)
        else:  # it went on untraced (an exec ktracecli could not follow): it is still our child
            exit_status = _exit_code(os.waitpid(pid, 0)[1])
        return session.finish({"program": settings.argv, "path": path, "pid": pid}, exit_status, outcome)
    except BaseException:
        session.abandon()
        raise
    finally:
        status.withdraw(os.getpid())


def _run_untraced(settings: RecordSettings, engine: Engine, tracer: Tracer, path: str) -> RecordResult:
    code = subprocess.run(settings.argv, executable=path).returncode
    writer = DataWriter(settings.output)
    writer.write_json("sites.json", [])
    writer.write_json("modules.json", [])
    writer.finish({"tracer": tracer.name, "engine": engine.name, "record_size": 0,
                   "program": settings.argv, "ncpus": os.sysconf("SC_NPROCESSORS_ONLN")})
    return RecordResult(code if code >= 0 else 128 - code, engine.name, 0, 0, 0, 0)


# -- attach --------------------------------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def attach(settings: AttachSettings, registry: Registry) -> RecordResult:
    """Trace the running process ``settings.pid`` until it exits or ktracecli is told to stop."""
    engine = registry.engine(settings.engine)
    tracer = registry.tracer(settings.tracer)
    rules = filters.parse_all(settings.filters)
    if tracer.record_dtype is None:
        raise UsageError(f"the current tracer is {tracer.name}: there is nothing to record "
                         "(choose one with 'ktracecli tracer function')")
    pid = settings.pid
    if pid == os.getpid():
        raise ProcessError("ktracecli cannot trace itself")
    exe = process_exe(pid)
    with ElfImage.open(exe):
        pass
    main_name = os.path.basename(exe)
    session = Session("attach", engine, tracer, rules, settings)
    argv = _cmdline(pid)
    session.program = " ".join(argv) or exe
    supervisor = session.supervisor(pid, (signal.SIGINT, signal.SIGTERM, signal.SIGHUP))
    world = session.world
    try:
        threads = seize(pid)  # first: the kernel's ptrace rules speak before anything else
        try:
            for tid, zombie in threads.items():
                world.add(tid, pid).exiting = zombie
            if not any(r.module for r in rules):
                Selector(engine, rules, tracer).plan([LoadedModule(exe, main_name, 0, 0, 0)], main_name)
            proc = TracedProcess(pid, Tracee(pid, set(threads), world.pending), session.shared)
            session.shared.procs[pid] = proc
            session.leader = proc
            supervisor.holding = True  # until it runs: events are noted, threads stay held
            _stop_for_attach(world, pid)
            proc.setup(_caller_thread(world, pid), strict=True)
        except BaseException:
            supervisor.detach_all()
            raise
        session.setup_s = time.perf_counter() - session.setup_started
        session.consumer.start()
        session.publish(force=True)
        notice(f"attached to process {pid} ({main_name}): tracing {len(proc.enabled)} functions; "
               "Ctrl-C detaches")
        outcome = supervisor.run()
        result = session.finish({"program": argv or [exe], "path": exe, "pid": pid, "attached": True},
                                0, outcome)
    except BaseException:
        session.abandon()
        raise
    finally:
        status.withdraw(os.getpid())
    if outcome.detached_by:
        notice(f"detached from process {pid}: it goes on untraced")
    elif outcome.leader_status is not None:
        notice(f"process {pid} exited with status {_exit_code(outcome.leader_status)}")
    return result


def _stop_for_attach(world: World, pid: int) -> None:
    """Hold every thread of a just-seized process."""
    try:
        world.stop_all({pid})
    except StopTimeout as exc:
        raise ProcessError(f"threads {exc} of process {pid} do not stop (uninterruptible sleep?)") from None
    if pid not in {t.pid for t in world.threads.values()}:
        raise ProcessError(f"process {pid} exited")


def _caller_thread(world: World, pid: int) -> Thread:
    """A held thread of ``pid`` that can make system calls for ktracecli."""
    for kind in (StopKind.INTERRUPT, StopKind.SIGNAL):
        for thread in world.of(pid):
            if thread.kind is kind:
                return thread
    raise ProcessError(f"process {pid} is stopped (job control): continue it first (kill -CONT {pid})")
