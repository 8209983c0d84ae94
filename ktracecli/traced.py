"""One traced process and what ktracecli placed in it: rings, handlers, stubs, patches, loader hook.

A :class:`TracedProcess` is one process *image*: a forked child gets its own
(a copy of its parent's state, as its memory is a copy), an ``exec`` replaces
it by a new one.  Every change to its code happens through :meth:`sync`,
called with every thread of the process held::

    sync():  selection = the rules applied to the modules mapped now
             disable the enabled sites no longer selected   (original bytes back; stubs stay)
             enable the selected sites not enabled yet       (a stub is built once per site)

A site that a thread cannot be moved out of (its rip stays inside the window)
is left for the next sync; ``dirty`` says one is needed.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ktracecli.arch import shared_x86
from ktracecli.arch.x86_64 import X86
from ktracecli.errors import KtraceError, ProcessError
from ktracecli.interface import Engine, FunctionSite, Tracer
from ktracecli.model import Patch
from ktracecli.process import ptrace
from ktracecli.process.remote import (MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE, RemoteCaller,
                                      restart_pending)
from ktracecli.process.tracee import Tracee
from ktracecli.process.world import StopKind, Thread, World
from ktracecli.runtime import dlhook, threadabi
from ktracecli.runtime.consumer import Consumer
from ktracecli.runtime.installer import Installer, LoadedModule
from ktracecli.runtime.layout import RuntimeLayout
from ktracecli.runtime.modules import loaded_modules
from ktracecli.runtime.shm import SharedRings
from ktracecli.selection import Selector, SiteTable


class Mode(enum.Enum):
    """Where a traced process is in its life."""

    READY = "ready"      # set up: rings, handlers, what the rules select
    FRESH = "fresh"      # a forked child held at birth: it still has its parent's rings
    SHARED = "shared"    # a vfork (CLONE_VM) child: it runs in its parent's memory
    EXEC = "exec"        # its image was replaced: set up again at the exec's system-call exit


class Retry(Exception):
    """The change cannot be made now (no thread fit for a remote call); try again later."""


@dataclass
class Spaces:
    """The address spaces of a session and the modules mapped in each, for the data directory."""

    modules: list[tuple[int, LoadedModule]] = field(default_factory=list)
    count: int = 0
    _by_space: dict[int, list[LoadedModule]] = field(default_factory=dict)

    def new(self, modules: list[LoadedModule]) -> int:
        """A new address space holding ``modules``; returns its number."""
        space = self.count
        self.count += 1
        self._by_space[space] = []
        self.add(space, modules)
        return space

    def add(self, space: int, modules: list[LoadedModule]) -> None:
        """Record modules mapped in ``space`` (those recorded already are skipped)."""
        known = self._by_space[space]
        fresh = [m for m in modules if m not in known]
        if fresh:
            # replaced, not appended: a reader on another thread sees the old list or the new one
            self._by_space[space] = known + fresh
            self.modules = self.modules + [(space, m) for m in fresh]

    def of(self, space: int) -> list[LoadedModule]:
        """Every module ever recorded in ``space``."""
        return self._by_space.get(space, [])


@dataclass
class Shared:
    """What every traced process of a session shares."""

    engine: Engine
    tracer: Tracer
    dtype: np.dtype
    #: sizes of each process's shared file (base 0 until mapped)
    layout: RuntimeLayout
    selector: Selector
    sites: SiteTable
    consumer: Consumer
    world: World
    spaces: Spaces
    ns_per_tick: float
    #: every traced process, by pid
    procs: dict[int, "TracedProcess"] = field(default_factory=dict)
    #: False while the current tracer is nop (every site disabled)
    tracing: bool = True
    x86: X86 = field(default_factory=shared_x86)
    #: function_graph's knobs written into each process's control page: max_graph_depth and
    #: tracing_thresh in TSC ticks (0 = unlimited / off)
    graph_limits: tuple[int, int] = (0, 0)


class TracedProcess:
    """One traced process image."""

    def __init__(self, pid: int, tracee: Tracee, shared: Shared, mode: Mode = Mode.READY) -> None:
        self.pid = pid
        self.tracee = tracee
        self.shared = shared
        self.mode = mode
        self.space = -1
        self.main_path = ""
        self.main_name = ""
        #: the process's name (/proc/PID/comm) when it was set up
        self.comm = ""
        self.modules: list[LoadedModule] = []
        self.rings: SharedRings | None = None
        self.installer: Installer | None = None
        self.scratch = 0
        self.hooked = False
        #: loader-hook requests handled so far
        self.dl_handled = 0
        #: a sync left something undone (a thread stayed inside a window)
        self.dirty = False
        #: refused functions among those the rules select, at the last sync
        self.refused = 0
        #: for a SHARED child: the process whose memory it runs in
        self.memory_of: int | None = None
        #: a forked child: the slot index the forking thread had in its parent's rings, and its fs base
        self.fork_slot: tuple[int | None, int] | None = None

    # -- life cycle --------------------------------------------------------------------------

    def setup(self, thread: Thread, strict: bool) -> None:
        """Set up the current image, ``thread`` held in a clean stop: rings, loader hook, selection.

        ``strict``: patterns that match nothing are an error (NoMatchError) rather than
        waiting for a library that may come later.
        """
        sh = self.shared
        self.main_path = os.path.realpath(f"/proc/{self.pid}/exe")
        self.main_name = os.path.basename(self.main_path)
        self.comm = _read_comm(self.pid) or self.main_name[:15]
        self.modules = loaded_modules(self.tracee.maps(), self.main_path)
        if not self.modules or self.modules[0].path != self.main_path:
            raise ProcessError(f"process {self.pid}: {self.main_path} is not an x86_64 ELF program "
                               "ktracecli can read")
        sh.world.borrow(thread)
        caller = RemoteCaller(self.tracee, thread.tid)
        self.scratch = caller.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
        rings = SharedRings(sh.layout, self.pid)
        try:
            rings.map_into(caller, self.scratch)
        finally:
            rings.unlink()
        rings.set_graph_limits(*sh.graph_limits)
        abi = threadabi.probe(self.modules, self.tracee.read)
        rings.layout = dataclasses.replace(rings.layout, **dataclasses.asdict(abi))
        self.rings = rings
        self.installer = Installer(self.tracee, caller, sh.engine, sh.tracer, rings.layout)
        self.installer.guard = self._guard
        self.installer.place_runtime()
        self.space = sh.spaces.new(self.modules)
        sh.consumer.add(self.pid, rings, sh.dtype, self.space, comm=self.comm)
        self.mode = Mode.READY
        try:
            self._hook(caller)
        except KtraceError:
            self.hooked = False  # new libraries are then found by reading the memory map now and then
        self.sync(strict=strict)

    def fork_of(self, parent: "TracedProcess", shared_memory: bool) -> None:
        """Become ``parent``'s child: its memory (and so its state) is a copy of the parent's, or the same."""
        self.main_path, self.main_name, self.comm = parent.main_path, parent.main_name, parent.comm
        self.modules = list(parent.modules)
        self.scratch = parent.scratch
        self.hooked = parent.hooked
        if shared_memory:
            self.mode = Mode.SHARED
            self.memory_of = parent.memory_of or parent.pid
            self.space = parent.space
            return
        assert parent.installer is not None and parent.rings is not None
        self.mode = Mode.FRESH
        self.rings = parent.rings  # until its own are mapped over them at its first stop
        self.installer = Installer(self.tracee, parent.installer.caller, self.shared.engine, self.shared.tracer,
                                   parent.installer.layout)
        self.installer.installed = parent.installer.installed.copy()
        # its memory holds copies of the parent's stub regions: later stubs may fill them too
        self.installer.regions = {key: [dataclasses.replace(r) for r in regions]
                                  for key, regions in parent.installer.regions.items()}
        self.installer.guard = self._guard
        self.space = self.shared.spaces.new(self.modules)

    def give_rings(self, thread: Thread) -> None:
        """Map a fresh shared file over the rings a forked child inherited (``thread`` held at birth).

        The child's thread keeps the slot index the forking thread had (see
        :meth:`SharedRings.inherit`), so per-slot state a tracer keeps in private
        memory, which fork copied (function_graph's shadow stack), is found again.
        """
        sh = self.shared
        assert self.installer is not None
        sh.world.borrow(thread)
        inherited = self.rings
        if self.fork_slot is not None:
            index, key = self.fork_slot
        else:  # the parent's fork event was not seen first: the child's own fs base is the forking thread's
            key = ptrace.get_regs(thread.tid).fs_base or 1
            index = inherited.find_slot(key) if inherited is not None else None
        caller = RemoteCaller(self.tracee, thread.tid)
        rings = SharedRings(self.installer.layout.at(0), self.pid)
        try:
            rings.map_into(caller, self.scratch, fixed=self.installer.layout.base)
        finally:
            rings.unlink()
        if inherited is not None:
            rings.inherit(inherited, index, key, self.pid)
        self.rings = rings
        self.installer.caller = caller
        sh.consumer.add(self.pid, rings, sh.dtype, self.space, comm=self.comm)
        self.mode = Mode.READY

    def exec_replaced(self) -> None:
        """The process replaced its image: what ktracecli placed in it is gone."""
        sh = self.shared
        if self.rings is not None and self.mode is Mode.READY:
            sh.consumer.retire(self.pid, self.rings, comm_hint=self.comm)
        self.tracee.close()
        self.tracee = Tracee(self.pid, {self.pid}, sh.world.pending)
        self.rings = None
        self.installer = None
        self.hooked = False
        self.dl_handled = 0
        self.memory_of = None
        self.mode = Mode.EXEC

    # -- changes -----------------------------------------------------------------------------

    def _caller(self) -> RemoteCaller:
        """A remote caller on a held thread of this process fit for system calls."""
        for thread in self.shared.world.of(self.pid):
            if thread.kind in (StopKind.INTERRUPT, StopKind.BIRTH, StopKind.SIGNAL):
                self.shared.world.borrow(thread)
                return RemoteCaller(self.tracee, thread.tid)
        raise Retry(f"no thread of process {self.pid} can make a system call now")

    def rescan(self) -> bool:
        """Read the memory map again (a library was loaded or unloaded); True if modules changed."""
        if self.mode is not Mode.READY:
            return False
        modules = loaded_modules(self.tracee.maps(), self.main_path)
        if modules == self.modules:
            return False
        assert self.installer is not None
        for gone in set(self.modules) - set(modules):
            self.installer.installed.forget(gone)
        self.modules = modules
        self.shared.spaces.add(self.space, modules)
        return True

    def modules_changed(self) -> bool:
        """Whether the modules mapped now differ from those set up (without holding anything)."""
        try:
            return loaded_modules(self.tracee.maps(), self.main_path) != self.modules
        except OSError:
            return False

    def sync(self, strict: bool = False) -> None:
        """Make the enabled sites what the rules select now (every thread held)."""
        if self.mode not in (Mode.READY, Mode.FRESH):
            return
        sh = self.shared
        installer = self.installer
        assert installer is not None
        installer.caller = _Lazy(self._caller)  # type: ignore[assignment]
        desired: dict[int, tuple[LoadedModule, FunctionSite]] = {}
        plan = sh.selector.plan(self.modules, self.main_name, strict=strict)
        self.refused = plan.refused
        for module in self.modules:
            installer.place_hooks(module)  # the tracer's runtime hooks (function_graph: the C++ unwinder)
            analysis = sh.selector.analyzed(module.path)
            if analysis is not None:
                installer.prepare(module, analysis)
        if sh.tracing:
            max_sites = getattr(sh.tracer, "max_sites", None)
            for module, site in plan.sites:
                index = sh.sites.index(module, site)
                if max_sites is not None and index >= max_sites:
                    self.refused += 1  # its records have no room for the index
                    continue
                desired[index] = (module, site)
        enabled = installer.installed.patches
        off = [i for i in enabled if i not in desired]
        if off:
            installer.disable(off)
        per_module: dict[LoadedModule, list[tuple[int, FunctionSite]]] = {}
        for index, (module, site) in desired.items():
            if index not in enabled:
                per_module.setdefault(module, []).append((index, site))
        for module, sites in per_module.items():
            installer.enable(module, sites)
            for index, _site in sites:
                if index in installer.installed.detours:
                    sh.sites.note_detour(index, installer.installed.detours[index][1])
        self.dirty = set(installer.installed.patches) != set(desired)

    @property
    def enabled(self) -> set[int]:
        """Site indices enabled in this process now."""
        return set(self.installer.installed.patches) if self.installer is not None else set()

    def _hook(self, caller: RemoteCaller) -> None:
        """Patch the loader's debugger breakpoint function to call the loader hook (see dlhook)."""
        sh = self.shared
        assert self.installer is not None and self.rings is not None
        site = dlhook.find_site(self.tracee, self.modules, sh.x86)
        if site is None:
            return
        region = self.installer.allocate_near(site.module, dlhook.HOOK_SIZE)
        code, patch = dlhook.build(site, region.addr, self.rings.layout, sh.ns_per_tick)
        self.tracee.write(region.addr, code)
        applied = self.installer.apply([patch])
        self.installer.installed.prepared += applied
        self.hooked = bool(applied)

    def _guard(self, patches: list[Patch]) -> set[int]:
        """Move the threads running in this process's memory out of the patch windows.

        Returns the windows (by address) a thread could not leave: those patches wait.
        """
        windows = [(p.addr, p.addr + len(p.new)) for p in patches]
        world = self.shared.world
        held: set[int] = set()
        for thread in list(world.threads.values()):
            owner = self.shared.procs.get(thread.pid)
            if thread.pid != self.pid and (owner is None or owner.memory_of != self.pid):
                continue
            if thread.status is None or world.step_out(thread, windows):
                continue  # a thread that is not held cannot run (vfork), or it is outside now
            try:
                regs = ptrace.get_regs(thread.tid)
            except ptrace.PtraceError:
                continue
            for rip in (regs.rip, regs.rip - 2 if restart_pending(regs) else regs.rip):
                held |= {lo for lo, hi in windows if lo < rip < hi}
        return held

    def restore(self) -> None:
        """Put back every original byte (every thread held); what was allocated stays."""
        if self.mode in (Mode.READY, Mode.FRESH) and self.installer is not None:
            self.installer.restore_all()


def _read_comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().rstrip("\n")
    except OSError:
        return ""


class _Lazy:
    """A RemoteCaller made on first use (most changes need no system call in the tracee)."""

    def __init__(self, make: Callable[[], RemoteCaller]) -> None:
        self._make = make
        self._caller: RemoteCaller | None = None

    def __getattr__(self, name: str) -> Any:
        if self._caller is None:
            self._caller = self._make()
        return getattr(self._caller, name)

