"""Placing the runtime in a stopped tracee: code regions near modules, handlers, stubs, patches.

For each module with traced functions::

    module text  ...  jmp stub_k ...             (5-byte patch at each site)
        |  within +-2 GiB
        v
    region:  +0      where returns hooked by a call go (a quadword, the handler's first)
             +8      handler (this tracer's, this process's slot table address baked in)
             +H      stub_0  stub_1 ... stub_n   (each engine's stub calls +8)

A tracer with a runtime (see :mod:`ktracecli.interface`) also gets, once per
process, before any handler is generated::

    private:  MAP_PRIVATE | MAP_ANONYMOUS rw-   tracer state that fork must copy
    runtime:  r-x, anywhere                     +0 the tracer's code, then one
                                                routine per runtime hook
    near each module defining a hooked function: hook stubs (see runtime.hooks)

Regions are private anonymous r-x mappings written through /proc/PID/mem.  They
are never freed while the process lives: disabling a site only restores its
original bytes, so a thread still inside a stub finishes safely.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ktracecli.arch import shared_x86
from ktracecli.arch.x86_64.assembler import assemble
from ktracecli.arch.x86_64.handler_call import HANDLER_ENTRY
from ktracecli.errors import PatchError, ProcessError, ProgramError
from ktracecli.interface import Analysis, Engine, FunctionSite, RuntimeCode, Tracer
from ktracecli.model import Patch
from ktracecli.process import ptrace
from ktracecli.process.maps import PAGE, find_free_near
from ktracecli.process.remote import (
    MAP_ANONYMOUS,
    MAP_FIXED_NOREPLACE,
    MAP_PRIVATE,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    RemoteCaller,
)
from ktracecli.process.tracee import Tracee
from ktracecli.runtime.layout import RuntimeLayout

if TYPE_CHECKING:
    from ktracecli.arch.x86_64 import X86

#: int3, filling the gaps between stubs: padding that no jump reaches, so never executed
#: (no trap runs on the traced program's path)
GAP_FILL = b"\xcc"
HANDLER_RESERVE = 1024  # bytes kept for the handler at the start of each region
MAP_NORESERVE = 0x4000
#: where a tracer's runtime is assembled once to learn its size (any canonical address will do)
PROVISIONAL_RUNTIME = 0x7E00_0000_0000


@dataclass(frozen=True)
class LoadedModule:
    """An ELF module mapped in the tracee."""

    path: str
    name: str
    bias: int
    start: int
    end: int


@dataclass
class Region:
    """A code region near one module: ``used`` bytes from its start are taken."""

    addr: int
    size: int
    used: int = 0
    #: where the tracer's handler is (stub regions have one at their start)
    handler: int = 0


#: stubs start on 16-byte boundaries (the CPU fetches and decodes code in aligned 16-byte blocks)
STUB_ALIGN = 16


def _aligned(size: int) -> int:
    return (size + STUB_ALIGN - 1) & ~(STUB_ALIGN - 1)


@dataclass
class Installed:
    """What is written in one process.

    ``prepared``: each module's one-time engine patches and runtime hooks; ``built``: every site
    whose stub exists in the process (site index -> the patch that enables it);
    ``patches``: the sites enabled now.  Stubs are never freed, so a disabled
    site is enabled again by re-applying its patch.
    """

    prepared: list[Patch] = field(default_factory=list)
    prepared_modules: set[str] = field(default_factory=set)
    built: dict[int, Patch] = field(default_factory=dict)
    patches: dict[int, Patch] = field(default_factory=dict)
    hooked_modules: set[str] = field(default_factory=set)
    #: runtime hooks: never undone (see :meth:`Installer.place_hooks`), so not in :meth:`in_order`
    hooks: list[Patch] = field(default_factory=list)
    #: site index -> (address, bytes taken) of its stub, alignment included: the tracee memory
    #: each traced function costs
    detours: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: bytes of handler code (one per stub region, shared by its stubs)
    handler_bytes: int = 0

    def in_order(self) -> list[Patch]:
        """Every patch in the order it was applied (undo them in reverse)."""
        return [*self.prepared, *self.patches.values()]

    def copy(self) -> "Installed":
        """The same state, for a forked child (its memory is a copy of its parent's)."""
        return Installed(list(self.prepared), set(self.prepared_modules), dict(self.built), dict(self.patches),
                         set(self.hooked_modules), list(self.hooks), dict(self.detours), self.handler_bytes)

    def forget(self, module: "LoadedModule") -> None:
        """A module was unmapped (dlclose): its patches and stubs went with it."""
        def inside(patch: Patch) -> bool:
            return module.start <= patch.addr < module.end
        self.prepared = [p for p in self.prepared if not inside(p)]
        self.prepared_modules.discard(module.path)
        self.built = {i: p for i, p in self.built.items() if not inside(p)}
        self.patches = {i: p for i, p in self.patches.items() if not inside(p)}
        self.detours = {i: d for i, d in self.detours.items() if i in self.built}
        self.hooked_modules.discard(module.path)
        self.hooks = [p for p in self.hooks if not inside(p)]


#: Moves threads out of the windows of patches about to be written; returns the addresses of
#: the patches that cannot be written now (a thread is still inside their window).
Guard = Callable[[list[Patch]], set[int]]


class Installer:
    """Writes handlers, stubs and patches into one stopped process."""

    def __init__(self, tracee: Tracee, caller: RemoteCaller, engine: Engine, tracer: Tracer,
                 layout: RuntimeLayout) -> None:
        self.tracee = tracee
        self.caller = caller
        self.engine = engine
        self.tracer = tracer
        self.layout = layout
        self.installed = Installed()
        #: the tracer's runtime code, once placed, and each hook routine's address by symbol
        self.runtime: RuntimeCode | None = None
        self.routines: dict[str, int] = {}
        #: set by a live session: clears threads out of patch windows (default: refuse if one is inside)
        self.guard: Guard | None = None
        #: stub regions by module mapping (path, load bias), in the order they were mapped
        self.regions: dict[tuple[str, int], list[Region]] = {}

    def allocate_near(self, module: LoadedModule, size: int) -> Region:
        """Map a new r-x region reachable by rel32 from the whole module."""
        size = (size + PAGE - 1) & ~(PAGE - 1)
        for _attempt in range(8):
            try:
                addr = find_free_near(self.tracee.maps(), module.start, module.end, size)
            except LookupError:
                break
            try:
                got = self.caller.mmap(addr, size, PROT_READ | PROT_EXEC,
                                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
                return Region(got, size)
            except LookupError:
                continue
        raise ProcessError(f"no free memory within 2 GiB of {module.name} for trampolines")

    @property
    def x86(self) -> "X86":
        """The shared decoder (for hook windows)."""
        return shared_x86()

    def place_runtime(self) -> None:
        """Map the tracer's private memory and place its runtime code, once per process.

        Afterwards ``self.layout`` holds both addresses (handlers are generated
        from it).  A tracer without a ``runtime`` method gets nothing.
        """
        runtime_of = getattr(self.tracer, "runtime", None)
        if runtime_of is None or self.runtime is not None:
            return
        size_of = getattr(self.tracer, "private_size", None)
        private_size = (size_of(self.layout) + PAGE - 1) & ~(PAGE - 1) if size_of else 0
        private = 0
        if private_size:
            private = self.caller.mmap(0, private_size, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)
        provisional = dataclasses.replace(self.layout, private=private or PROVISIONAL_RUNTIME,
                                          runtime=PROVISIONAL_RUNTIME)
        size = len(self._assemble_runtime(runtime_of(provisional), PROVISIONAL_RUNTIME)[0])
        addr = self.caller.mmap(0, (size + PAGE - 1) & ~(PAGE - 1), PROT_READ | PROT_EXEC,
                                MAP_PRIVATE | MAP_ANONYMOUS)
        self.layout = dataclasses.replace(self.layout, private=private, runtime=addr)
        self.runtime = runtime_of(self.layout)
        code, self.routines = self._assemble_runtime(self.runtime, addr)
        if len(code) != size:
            raise PatchError(f"runtime of {self.tracer.name} changed size with its address ({size} -> {len(code)})")
        self.tracee.write(addr, code)

    def _assemble_runtime(self, runtime: RuntimeCode, addr: int) -> tuple[bytes, dict[str, int]]:
        """The runtime's bytes at ``addr``: its code, then each hook's routine; and where each routine is."""
        code = bytearray(assemble(runtime.source, addr))
        routines: dict[str, int] = {}
        for hook in runtime.hooks:
            routines[hook.symbol] = addr + len(code)
            code += assemble(hook.source, addr + len(code))
        return bytes(code), routines

    def place_hooks(self, module: LoadedModule) -> int:
        """Hook the runtime's library functions that ``module`` defines; returns how many.

        Call it for every module of the process (at start, and for modules
        mapped later).  Unlike the sites' patches, these stay when ktracecli
        detaches: frames hooked before still return through the runtime then,
        and the runtime's hooks must keep them away from the C++ unwinder.
        """
        if self.runtime is None or not self.runtime.hooks or module.path in self.installed.hooked_modules:
            return 0
        from ktracecli.elf.image import ElfImage
        from ktracecli.runtime import hooks

        self.installed.hooked_modules.add(module.path)
        try:
            with ElfImage.open(module.path) as image:
                sites = hooks.find(image, self.x86, set(self.routines))
        except ProgramError:
            return 0
        if not sites:
            return 0
        sizes = [site.stub_size(len(self.x86.decode(site.window, 0))) for site in sites]
        region = self.allocate_near(module, sum(sizes))
        code = bytearray()
        patches = []
        for site, size in zip(sites, sizes):
            stub, patch = hooks.build(self.x86, site, module.bias, region.addr + len(code),
                                      self.routines[site.symbol])
            code += stub.ljust(size, GAP_FILL)
            patches.append(patch)
        self.tracee.write(region.addr, bytes(code))
        applied = self.apply(patches)
        self.installed.hooks += applied
        if len(applied) != len(patches):
            done = set(applied)
            missing = sorted({s.symbol for s, p in zip(sites, patches) if p not in done})
            raise PatchError(f"{module.name}: a thread sits inside {', '.join(missing)}; the "
                             f"{self.tracer.name} tracer cannot run without hooking it")
        return len(patches)

    def prepare(self, module: LoadedModule, analysis: Analysis) -> None:
        """Apply the engine's one-time patches to a module (e.g. mcount sites to NOPs), once."""
        if module.path in self.installed.prepared_modules:
            return
        done = {p.addr for p in self.installed.prepared}
        patches = [p for p in self.engine.prepare(analysis, module.bias) if p.addr not in done]
        applied = self.apply(patches) if patches else []
        self.installed.prepared += applied
        if len(applied) == len(patches):
            self.installed.prepared_modules.add(module.path)

    def enable(self, module: LoadedModule, sites: list[tuple[int, FunctionSite]]) -> int:
        """Enable sites, building stubs for those that have none yet; returns how many were enabled.

        A site whose window a thread cannot leave now stays disabled (its stub is built).
        """
        new = [(i, s) for i, s in sites if i not in self.installed.built]
        again = [i for i, _ in sites if i in self.installed.built and i not in self.installed.patches]
        enabled = 0
        if new:
            enabled += len(self.install(module, new))
        if again:
            applied = {p.addr for p in self.apply([self.installed.built[i] for i in again])}
            for i in again:
                if self.installed.built[i].addr in applied:
                    self.installed.patches[i] = self.installed.built[i]
                    enabled += 1
        return enabled

    def disable(self, indices: list[int]) -> int:
        """Put back the original bytes of enabled sites (their stubs stay); returns how many."""
        enabled = [i for i in indices if i in self.installed.patches]
        applied = {p.addr for p in self.apply([self.installed.patches[i].undo() for i in enabled])}
        done = [i for i in enabled if self.installed.patches[i].addr in applied]
        for i in done:
            del self.installed.patches[i]
        return len(done)

    #   region near the module (r-x, never freed), filled from the front, reused by later installs:
    #     +0       handler                     this tracer's, for this process (layout baked in);
    #                                          its entry is at +8, after the call path's return cell
    #     +H       stub_0 | stub_1 | ...       each as long as the engine made it, 16-byte aligned
    #     ...      (free: the next install of a site of this module goes here)
    def install(self, module: LoadedModule, sites: list[tuple[int, FunctionSite]]) -> list[Patch]:
        """Write one stub per site near ``module`` (and a handler, in a new region), then enable every site.

        ``sites`` pairs each site with its process-wide index.  The whole batch is
        rolled back if any patch fails.  Returns the patches applied (the guard may
        hold some back: their sites are built, not enabled).
        """
        bounds = [self.engine.detour_size(site) for _, site in sites]
        region = self._region_for(module, sum(_aligned(b) for b in bounds))
        start = at = region.addr + region.used
        code = bytearray()
        patches = []
        for (index, site), bound in zip(sites, bounds):
            stub, patch = self.engine.build(site, module.bias, at, region.handler, index)
            if len(stub) > bound:
                raise PatchError(f"stub for {site.name} is {len(stub)} bytes, {bound} were reserved")
            self.installed.detours[index] = (at, _aligned(len(stub)))
            code += stub.ljust(_aligned(len(stub)), GAP_FILL)
            patches.append((index, patch))
            at = start + len(code)
        self.tracee.write(start, bytes(code))
        region.used += len(code)
        applied = self.apply([p for _, p in patches])
        done = set(applied)
        for index, patch in patches:
            self.installed.built[index] = patch
            if patch in done:
                self.installed.patches[index] = patch
        return applied

    def _region_for(self, module: LoadedModule, need: int) -> Region:
        """The module's region with ``need`` bytes free, or a new one with the tracer's handler at its start."""
        for region in self.regions.get((module.path, module.bias), []):
            if region.size - region.used >= need:
                return region
        region = self.allocate_near(module, HANDLER_RESERVE + need)
        handler = assemble(self.tracer.handler_source(self.layout), region.addr)
        if len(handler) > HANDLER_RESERVE:
            raise PatchError(f"handler of {self.tracer.name} is {len(handler)} bytes, more than {HANDLER_RESERVE}")
        self.tracee.write(region.addr, handler)
        region.handler, region.used = region.addr + HANDLER_ENTRY, _aligned(len(handler))
        self.installed.handler_bytes += len(handler)
        self.regions.setdefault((module.path, module.bias), []).append(region)
        return region

    def _check_threads_outside(self, patches: list[Patch]) -> set[int]:
        windows = sorted((p.addr, p.addr + len(p.new)) for p in patches)
        for tid in self.tracee.threads:
            rip = ptrace.get_regs(tid).rip
            for lo, hi in windows:
                if lo < rip < hi:
                    raise PatchError(f"thread {tid} is inside the patch window at {lo:#x}; try again")
        return set()

    def apply(self, patches: list[Patch], guard: bool = True) -> list[Patch]:
        """Apply patches (every thread stopped), verifying original bytes; roll back on failure.

        Patches the guard holds back are left out; returns those applied.
        """
        if guard:
            held = self.guard(patches) if self.guard is not None else self._check_threads_outside(patches)
            patches = [p for p in patches if p.addr not in held]
        done: list[Patch] = []
        try:
            for patch in patches:
                current = self.tracee.read(patch.addr, len(patch.original))
                if current != patch.original:
                    raise PatchError(f"unexpected bytes at {patch.addr:#x}: {current.hex()} "
                                     f"instead of {patch.original.hex()}")
                self.tracee.write(patch.addr, patch.new)
                done.append(patch)
        except BaseException:
            for patch in reversed(done):
                self.tracee.write(patch.addr, patch.original)
            raise
        return done

    def restore_all(self) -> None:
        """Put every original byte back (every thread stopped).

        No guard: no thread can be inside an enabled window (its first
        instruction is the jump, the rest is never executed).
        """
        self.apply([p.undo() for p in reversed(self.installed.in_order())], guard=False)
        self.installed.patches.clear()
        self.installed.prepared.clear()
        self.installed.prepared_modules.clear()
