"""The common tracer interface: what engines and tracers promise each other.

It plays the part of the kernel's ``ftrace_ops``.  An engine decides how control
reaches the handler; a tracer decides what the handler records and how it is
shown.  Neither knows which one of the other kind it is paired with.

Handler ABI (x86_64), the one contract between generated engine code and
generated tracer code, identical for every engine.  The engine stub starts
with the head :mod:`ktracecli.arch.x86_64.handler_call` builds::

    engine stub, at the traced function's entry (or wherever the engine's site is):
        push  r11                          ; r11 may be live: gcc's -fipa-ra keeps values
                                           ; in call-clobbered registers across calls to
                                           ; local functions that leave them alone
        lea   r11, <the traced function's return-address slot, + 1 when the slot
                    is [rsp] at the stub's continuation>
        push  <site index>                 ; imm32, zero-extended by the handler
        call  <handler>                    ; rel32: the handler copy near this module
    R:  jmp   r11                          ; where the handler said
    R+3:  pop r11; call R+18               ; BY_CALL: the continuation, called: the
    R+10: jmp [handler-8]                  ; traced function returns here
    R+16: pop r11                          ; ON
    R+18: ...                              ; the engine's own continuation

    on entry to the handler:
        [rsp]     R, the return address into the engine stub
        [rsp+8]   site index (only the low 32 bits are meaningful)
        [rsp+16]  the stub's saved r11
        r11       address of the slot that holds the traced function's return
                  address (the tracer reads the caller there; function_graph may
                  rewrite it to hook the return), plus 1 when the stub can hook
                  the return by a call
    the handler returns with ``ret 8`` and r11 = R+16 (go on), or, only when
    bit 0 of r11 was set, with the stub's saved r11 copied into the slot,
    ``ret 16`` and r11 = R+3: the stub then calls its continuation, whose
    return comes back to R+10 and jumps to the address in the quadword just
    before the handler's entry (the tracer's return routine).  It preserves
    every other register and the status flags too (-fipa-ra could in
    principle keep them live); DF stays clear; no vector register is touched.

Sites are numbered from 0 across all modules and processes of one session, in
the order they are first enabled; an index is never given to another function
in the same session (a site disabled and enabled again keeps its index; a
library loaded later, a forked child's copy, an exec'd image all get indices of
their own where their functions differ).  The site index is what records
carry, and ``sites.json`` in the data directory maps it back to a function.

Live output (``--live``, the kernel's ``trace_pipe``): while a session runs,
the consumer thread hands each round's records to the tracer's
:class:`LiveWriter`, which prints them in the tracer's format, without a
header, with ``CPU:N [LOST M EVENTS]`` lines where a ring overflowed.

A tracer may also need code of its own in each process, placed once and
reached from every handler (function_graph's return routines), private
memory of its own (its shadow stacks, which ``fork`` copies), and hooks on a
few library functions that it must see whichever engine delivers calls (the
C++ unwinder).  These are the optional :class:`Tracer` methods
``private_size`` and ``runtime``; a tracer without them (function, nop) gets
none of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol, Sequence, TextIO

from ktracecli.options import TraceOptions

if TYPE_CHECKING:
    import numpy as np

    from ktracecli.datadir import TraceData
    from ktracecli.elf.image import ElfImage
    from ktracecli.model import Patch, Refusal
    from ktracecli.runtime.layout import RuntimeLayout


@dataclass(frozen=True)
class FunctionSite:
    """A function an engine can trace: its canonical name, other names and extent (module-relative)."""

    name: str
    vaddr: int
    size: int
    aliases: tuple[str, ...] = field(default=())

    @property
    def names(self) -> tuple[str, ...]:
        """The canonical name followed by every alias."""
        return (self.name, *self.aliases)


@dataclass(frozen=True)
class Analysis:
    """What an engine found in one module: the sites it can patch and the functions it refuses."""

    sites: tuple[FunctionSite, ...]
    refusals: tuple["Refusal", ...]


class Engine(Protocol):
    """Delivers function entries to the handler (see the module docstring for the ABI)."""

    name: ClassVar[str]
    description: ClassVar[str]

    def analyze(self, image: "ElfImage") -> Analysis:
        """Find every function of ``image`` this engine can patch, and refuse the rest with reasons."""
        ...

    def prepare(self, analysis: Analysis, bias: int) -> list["Patch"]:
        """Patches to apply once to a module before any of its sites is enabled.

        The mcount engine turns every compiler-made call site into a NOP here, as
        dynamic ftrace does at boot; the ktrace engine has nothing to do.
        """
        ...

    def detour_size(self, site: FunctionSite) -> int:
        """Bytes of tracee memory (within +-2 GiB of the module) the site's stub needs."""
        ...

    def build(self, site: FunctionSite, bias: int, stub_addr: int, handler_addr: int,
              index: int) -> tuple[bytes, "Patch"]:
        """The stub code to place at ``stub_addr`` and the patch that enables the site.

        ``bias`` is the module's load bias (process address = vaddr + bias).
        """
        ...


@dataclass(frozen=True)
class RuntimeHook:
    """A library function whose entry a tracer's runtime must see, whichever engine is used.

    The installer patches the entry of every function named ``symbol`` in the
    process's modules (the ktrace engine's detour technique: a 5-byte jmp to a
    stub that calls ``source`` and then runs the displaced instructions).  The
    routine is entered by ``call``: ``[rsp]`` returns into the stub and
    ``[rsp+8]`` is the hooked function's return address; it must preserve every
    register and the flags, and return with ``ret``.
    """

    symbol: str
    source: str


@dataclass(frozen=True)
class RuntimeCode:
    """A tracer's per-process code: placed once at ``layout.runtime``, plus its hooks."""

    source: str
    hooks: tuple[RuntimeHook, ...] = ()


@dataclass(frozen=True)
class ShowSettings:
    """How ``show`` prints: the trace options in force and the command's own flags."""

    options: TraceOptions = field(default_factory=TraceOptions)
    #: each thread's events on their own, headed with its comm-tid
    per_thread: bool = False


@dataclass(frozen=True)
class LiveBatch:
    """Records one thread made, drained in one round (a copy the writer may keep)."""

    pid: int
    tid: int
    comm: str
    #: the address space (process image) the records were made in: name callers with it
    space: int
    #: records of the tracer's ``record_dtype``, in the order the thread made them
    records: "np.ndarray"
    #: ``lost`` events were dropped (the ring was full) just before ``records[lost_at]``
    #: (after the last record when ``lost_at == len(records)``)
    lost_at: int = 0
    lost: int = 0
    #: the TSC when the records were found complete (all were written before it)
    drained: int = 0


class LiveContext(Protocol):
    """What a :class:`LiveWriter` may ask of the running session; safe from the consumer thread."""

    #: CPUs online
    ncpus: int
    #: the trace options in force (the config file's, as ``show`` uses them)
    options: TraceOptions
    #: the session's tracing_thresh in microseconds (0 = off)
    tracing_thresh: int

    def site_name(self, index: int) -> str:
        """The function name of a site index (every index a record carries is known)."""
        ...

    def symbolize(self, space: int, addrs: "np.ndarray") -> list[str]:
        """Function names of process addresses in address space ``space`` (hex when unknown)."""
        ...

    def timestamps_ns(self, tsc: "np.ndarray") -> "np.ndarray":
        """CLOCK_MONOTONIC nanoseconds (int64) of TSC readings, with the session's calibration so far."""
        ...


class LiveWriter(Protocol):
    """Prints a running session's records as they are drained (``trace_pipe``)."""

    def write(self, batches: Sequence[LiveBatch]) -> None:
        """Print one round of records (merge the threads in time order within it), then flush."""
        ...

    def close(self) -> None:
        """The session is over: print what is held back, if anything, and flush."""
        ...


class Tracer(Protocol):
    """Decides what the handler records in the tracee and how recorded data is shown.

    Optional methods, looked up with ``getattr`` (see the module docstring):

    ``private_size(layout) -> int``
        Bytes of private anonymous memory to map once per process before the
        runtime is generated; its address is ``layout.private``.
    ``runtime(layout) -> RuntimeCode``
        Code to place once per process at ``layout.runtime`` (which, like
        ``layout.private``, is set when ``handler_source`` is asked for), and
        the library hooks it needs.
    ``refusal(name) -> str | None``
        Why this tracer must not trace the function called ``name`` whichever
        engine could (e.g. it returns twice), or None.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    @property
    def record_dtype(self) -> "np.dtype | None":
        """numpy dtype of one ring record, or None for a tracer that records nothing (nop)."""
        ...

    def handler_source(self, layout: "RuntimeLayout") -> str:
        """Assembly (keystone syntax) of the handler, following the handler ABI.

        It starts with one quadword: where returns hooked by a call go (0 for
        a tracer that never hooks them); the handler's entry follows it.
        """
        ...

    def show(self, data: "TraceData", out: TextIO, settings: ShowSettings = ShowSettings()) -> None:
        """Print recorded data in this tracer's ftrace format."""
        ...

    def live_writer(self, context: LiveContext, out: TextIO) -> LiveWriter:
        """A writer that streams a running session's records to ``out`` in this tracer's format.

        Like reading the kernel's ``trace_pipe``: the same lines as :meth:`show`
        without its header, printed as they come.  A tracer may hold records
        back (function_graph, to pair an entry with its return) until
        :meth:`LiveWriter.close`.
        """
        ...
