"""The common tracer interface: what engines and tracers promise each other.

It plays the part of the kernel's ``ftrace_ops``.  An engine decides how control
reaches the handler; a tracer decides what the handler records and how it is
shown.  Neither knows which one of the other kind it is paired with.

Handler ABI (x86_64), the one contract between generated engine code and
generated tracer code, identical for every engine::

    engine stub, at the traced function's entry (or wherever the engine's site is):
        push  r11                          ; r11 may be live: gcc's -fipa-ra keeps values
                                           ; in call-clobbered registers across calls to
                                           ; local functions that leave them alone
        lea   r11, <the traced function's return-address slot>
        push  <site index>                 ; imm32, zero-extended by the handler
        call  <handler>                    ; rel32: the handler copy near this module
        pop   r11
        ...                                ; the engine's own continuation

    on entry to the handler:
        [rsp]     return address into the engine stub
        [rsp+8]   site index (only the low 32 bits are meaningful)
        r11       address of the slot that holds the traced function's return
                  address (the tracer reads the caller there; function_graph may
                  rewrite it to hook the return)
    the handler returns with ``ret 8`` and preserves every register but r11
    (which the stub restores) and the status flags too (-fipa-ra could in
    principle keep them live); DF stays clear; no vector register is touched.

Sites are numbered densely from 0 across all modules of one process; the site
index is what records carry, and ``sites.json`` in the data directory maps it
back to a function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol, TextIO

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


class Tracer(Protocol):
    """Decides what the handler records in the tracee and how recorded data is shown."""

    name: ClassVar[str]
    description: ClassVar[str]
    #: numpy dtype of one ring record, or None for a tracer that records nothing (nop)
    record_dtype: ClassVar["np.dtype | None"]

    def handler_source(self, layout: "RuntimeLayout") -> str:
        """Assembly (keystone syntax) of the handler, following the handler ABI."""
        ...

    def show(self, data: "TraceData", out: TextIO) -> None:
        """Print recorded data in this tracer's ftrace format."""
        ...
