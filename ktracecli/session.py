"""A ``record`` session: start the program under ptrace, patch it, collect its trace.

The steps, in order: check the program and the patterns, fork and exec it
stopped, run it to its entry point (the dynamic loader has mapped its
libraries), analyse the modules the patterns name, map the shared rings, write
handlers and stubs, enable the sites, and resume.  Then follow the process's
threads and children until it exits, draining the rings as it runs.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ktracecli import analysis_cache, filters
from ktracecli.datadir import DataWriter
from ktracecli.elf.image import ElfImage
from ktracecli.errors import NoMatchError, ProgramError
from ktracecli.interface import Analysis, Engine, FunctionSite, Tracer
from ktracecli.model import Refusal
from ktracecli.process import ptrace
from ktracecli.process.remote import MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE, RemoteCaller
from ktracecli.process.tracee import AT_ENTRY, Tracee, resolve_program, spawn
from ktracecli.registry import Registry
from ktracecli.runtime import clock
from ktracecli.runtime.consumer import Consumer
from ktracecli.runtime.installer import Installer, LoadedModule
from ktracecli.runtime.layout import RuntimeLayout
from ktracecli.runtime.shm import SharedRings
from ktracecli.supervisor import Supervisor
from ktracecli.symbols import write_modules


@dataclass(frozen=True)
class RecordSettings:
    """Everything ``record`` needs, already validated by the CLI."""

    argv: list[str]
    output: Path
    engine: str
    tracer: str
    filters: tuple[str, ...] = ()
    buffer_size_kb: int = 16384
    config_path: Path | None = None
    #: the kernel's function_graph knobs (0 = unlimited / off); tracing_thresh in microseconds
    max_graph_depth: int = 0
    tracing_thresh: int = 0


@dataclass(frozen=True)
class RecordResult:
    """What a finished record session reports."""

    exit_status: int
    engine: str
    traced: int
    refused: int
    events: int
    lost: int


@dataclass(frozen=True)
class Plan:
    """The sites to enable, per module, and the functions refused among those selected."""

    #: (index into the module list given to :meth:`Recorder.plan`, [(site index, site)])
    modules: list[tuple[int, list[tuple[int, FunctionSite]]]]
    refused: int


def loaded_modules(tracee: Tracee) -> list[LoadedModule]:
    """ELF modules with executable mappings in the tracee (main program first)."""
    spans: dict[str, list[int]] = {}
    file_zero: dict[str, int] = {}
    executable: set[str] = set()
    for m in tracee.maps():
        if not m.path.startswith("/"):
            continue
        lo_hi = spans.setdefault(m.path, [m.start, m.end])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], m.start), max(lo_hi[1], m.end)
        if m.offset == 0:
            file_zero.setdefault(m.path, m.start)
        if m.executable:
            executable.add(m.path)
    modules = []
    for path in spans:
        if path not in executable or path not in file_zero:
            continue
        try:
            image = ElfImage.open(path)
        except ProgramError:
            continue
        with image:
            bias = file_zero[path] - image.first_load_vaddr
        modules.append(LoadedModule(path, os.path.basename(path), bias, *spans[path]))
    return modules


def refused_by_tracer(tracer: Tracer, analysis: Analysis) -> Analysis:
    """``analysis`` with the sites the tracer refuses (its optional ``refusal``) moved to the refusals."""
    refusal = getattr(tracer, "refusal", None)
    if refusal is None:
        return analysis
    sites, refusals = [], list(analysis.refusals)
    for site in analysis.sites:
        reason = next((r for r in map(refusal, site.names) if r), None)
        if reason:
            refusals.append(Refusal(site.name, site.vaddr, reason))
        else:
            sites.append(site)
    return Analysis(tuple(sites), tuple(refusals))


class Recorder:
    """Runs one record session."""

    def __init__(self, settings: RecordSettings, registry: Registry) -> None:
        self.settings = settings
        self.engine: Engine = registry.engine(settings.engine)
        self.tracer: Tracer = registry.tracer(settings.tracer)
        self.rules = filters.parse_all(settings.filters)
        self.path = resolve_program(settings.argv[0])
        #: the file the kernel maps (symlinks resolved), as /proc/PID/maps names it
        self.real_path = os.path.realpath(self.path)
        self._analyses: dict[str, Analysis] = {}

    def analysis(self, path: str) -> Analysis:
        """The engine's analysis of one module, computed once, less what the tracer refuses."""
        if path not in self._analyses:
            with ElfImage.open(path) as image:
                self._analyses[path] = refused_by_tracer(self.tracer, analysis_cache.analyze(self.engine, image))
        return self._analyses[path]

    def plan(self, modules: list[tuple[str, str]], main_name: str) -> Plan:
        """Apply the rules to the functions of ``modules`` ((path, name) pairs)."""
        candidates: list[filters.Candidate] = []
        entries: list[tuple[int, FunctionSite | None]] = []
        refusal_names: dict[int, str] = {}
        analyses: list[tuple[str, Analysis]] = []
        for mi, (path, name) in enumerate(modules):
            wanted = name == main_name or any(r.module is not None and r.applies_to(name, main_name)
                                              for r in self.rules)
            if not wanted:
                continue
            analysis = self.analysis(path)
            analyses.append((name, analysis))
            for site in analysis.sites:
                candidates.append((name, site.names))
                entries.append((mi, site))
            for refusal in analysis.refusals:
                candidates.append((name, (refusal.name,)))
                refusal_names[len(entries)] = f"{refusal.name} ({refusal.reason})"
                entries.append((mi, None))
        if analyses and not any(a.sites for _name, a in analyses):
            self._explain_nothing_traceable(analyses)
        selection = filters.select(self.rules, candidates, main_name)
        if selection.unmatched:
            self._explain_unmatched(selection.unmatched, candidates, refusal_names, main_name)
        per_module: dict[int, list[tuple[int, FunctionSite]]] = {}
        refused = index = 0
        for i in selection.indices:
            mi, site = entries[i]
            if site is None:
                refused += 1
                continue
            per_module.setdefault(mi, []).append((index, site))
            index += 1
        return Plan(sorted(per_module.items()), refused)

    def _explain_nothing_traceable(self, analyses: list[tuple[str, Analysis]]) -> None:
        """One line for modules in which the engine can trace nothing: the commonest reason first."""
        reasons = Counter(r.reason for _name, a in analyses for r in a.refusals)
        reason = reasons.most_common(1)[0][0] if reasons else "no function symbols"
        total = sum(reasons.values())
        raise NoMatchError(f"{', '.join(name for name, _a in analyses)}: {reason} "
                           f"(the {self.engine.name} engine can trace none of its {total} functions)")

    def _explain_unmatched(self, rules: tuple[filters.FilterRule, ...], candidates: list[filters.Candidate],
                           refusal_names: dict[int, str], main_name: str) -> None:
        rule = rules[0]
        refused = [refusal_names[i] for i, c in enumerate(candidates)
                   if i in refusal_names and rule.matches(c, main_name)]
        where = f"module {rule.module}" if rule.module else main_name
        if refused:
            raise NoMatchError(f"pattern '{rule}' matches only functions the {self.engine.name} engine "
                               f"refuses: {', '.join(refused[:3])}")
        raise NoMatchError(f"pattern '{rule}' matches no function in {where}")

    def run(self) -> RecordResult:
        """Record the program; returns its exit status and the totals."""
        main_name = os.path.basename(self.real_path)
        with ElfImage.open(self.real_path):
            pass  # a clear error for non-ELF, 32-bit and other programs before anything runs
        if self.tracer.record_dtype is None:
            return self._run_untraced()
        if not any(r.module for r in self.rules):
            self.plan([(self.real_path, main_name)], main_name)  # bad patterns fail before the program runs
        writer = DataWriter(self.settings.output)
        try:
            return self._record(writer, main_name)
        except BaseException:
            writer.abandon()
            raise

    def _run_untraced(self) -> RecordResult:
        status = subprocess.run(self.settings.argv, executable=self.path).returncode
        writer = DataWriter(self.settings.output)
        writer.write_json("sites.json", [])
        writer.write_json("modules.json", [])
        writer.finish({"tracer": self.tracer.name, "engine": self.engine.name, "record_size": 0,
                       "program": self.settings.argv, "ncpus": os.sysconf("SC_NPROCESSORS_ONLN")})
        return RecordResult(status if status >= 0 else 128 - status, self.engine.name, 0, 0, 0, 0)

    def _record(self, writer: DataWriter, main_name: str) -> RecordResult:
        start = clock.sample()
        setup_start = time.perf_counter()
        tracee = spawn(self.path, self.settings.argv)
        try:
            entry = tracee.auxv(AT_ENTRY)
            assert entry is not None
            tracee.run_to(tracee.pid, entry)
            modules = loaded_modules(tracee)
            plan = self.plan([(m.path, m.name) for m in modules], main_name)
            caller = RemoteCaller(tracee, tracee.pid)
            scratch = caller.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
            assert self.tracer.record_dtype is not None
            layout = RuntimeLayout.for_buffer(self.settings.buffer_size_kb, self.tracer.record_dtype.itemsize)
            rings = SharedRings(layout, tracee.pid)
            try:
                rings.map_into(caller, scratch)
            finally:
                rings.unlink()
            rings.set_graph_limits(self.settings.max_graph_depth, self._ticks(start, self.settings.tracing_thresh))
            installer = Installer(tracee, caller, self.engine, self.tracer, rings.layout)
            installer.place_runtime()
            for module in modules:
                installer.place_hooks(module)
            sites_json: list[dict[str, Any]] = []
            for module in modules:
                if module.path in self._analyses:
                    installer.prepare(module, self._analyses[module.path])
            for mi, sites in plan.modules:
                module = modules[mi]
                installer.install(module, sites)
                sites_json += [{"name": s.name, "module": module.name, "addr": s.vaddr + module.bias}
                               for _, s in sites]
        except BaseException:
            tracee.close()
            os.kill(tracee.pid, signal.SIGKILL)
            os.waitpid(tracee.pid, ptrace.WALL)
            raise
        writer.write_json("sites.json", sites_json)
        write_modules(writer, modules)
        consumer = Consumer(writer)
        consumer.add(tracee.pid, rings, self.tracer.record_dtype)
        consumer.start()
        supervisor = Supervisor(tracee, consumer, rings, scratch, self.tracer.record_dtype,
                                installer.installed.in_order())
        setup_s = time.perf_counter() - setup_start
        status = supervisor.run()
        consumer.stop()
        tracee.close()
        end = clock.sample()
        if end.ns - start.ns < 20_000_000:  # widen a short calibration interval
            time.sleep(0.02)
            end = clock.sample()
        calibration = clock.Calibration.between(start, end)
        lost = writer.lost + sum(p.rings.lost_no_slot for p in consumer.processes)
        traced = len(sites_json)
        writer.finish({
            "program": self.settings.argv, "path": self.path, "pid": tracee.pid,
            "engine": self.engine.name, "tracer": self.tracer.name,
            "record_size": self.tracer.record_dtype.itemsize,
            "ncpus": os.sysconf("SC_NPROCESSORS_ONLN"),
            "clock": {"tsc0": calibration.tsc0, "ns0": calibration.ns0, "ns_per_tick": calibration.ns_per_tick},
            "traced": traced, "refused": plan.refused, "events": writer.events, "lost": lost,
            "exit_status": status,
            "max_graph_depth": self.settings.max_graph_depth, "tracing_thresh": self.settings.tracing_thresh,
            # for bench/: time from fork to resuming the patched program, and ktracecli's peak memory
            "setup_s": round(setup_s, 6),
            "ktracecli_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        })
        return RecordResult(status, self.engine.name, traced, plan.refused, writer.events, lost)


    @staticmethod
    def _ticks(start: clock.ClockSample, usecs: int) -> int:
        """``usecs`` microseconds in TSC ticks, calibrated from ``start`` to now (0 stays 0)."""
        if not usecs:
            return 0
        now = clock.sample()
        if now.ns - start.ns < 5_000_000:
            time.sleep(0.005)
            now = clock.sample()
        return max(1, round(usecs * 1000 / clock.Calibration.between(start, now).ns_per_tick))


def record(settings: RecordSettings, registry: Registry) -> RecordResult:
    """Run ``settings.argv`` traced and write its data directory."""
    return Recorder(settings, registry).run()
