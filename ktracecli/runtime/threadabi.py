"""What a process's threads offer the tracers' code: glibc's thread control block and rseq area.

In a process run by glibc's dynamic loader every thread's fs base points to
its thread control block, whose first word holds that same address (the x86-64
TLS ABI's rule, which ``mov rax, fs:0`` in compiled code relies on).  A load of
that word finds the thread's slot for less than ``rdfsbase`` costs.  glibc
2.35 and later also register an rseq area per thread, in which the kernel keeps
the CPU the thread runs on; a load from it replaces ``rdpid`` (glibc's own
``sched_getcpu`` reads it the same way).  The loader exports where the area is
(``__rseq_offset``, from the thread pointer) and whether registration worked
(``__rseq_size``, 0 when not); both are set before the program's entry point.

A static program sets up its thread pointer inside its own start-up code, where
traced functions may run with fs base 0: it gets neither (rdfsbase and rdpid).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ktracecli.elf.image import ElfImage
from ktracecli.errors import KtraceError
from ktracecli.runtime.installer import LoadedModule

GLIBC_LOADER = "ld-linux-x86-64.so.2"
#: offset of cpu_id in struct rseq (after cpu_id_start)
RSEQ_CPU_ID = 4
#: __rseq_size of a registered area holds at least cpu_id_start and cpu_id
RSEQ_MIN_SIZE = 8


@dataclass(frozen=True)
class ThreadAbi:
    """The two facts :class:`~ktracecli.runtime.layout.RuntimeLayout` carries (see there)."""

    tcb_self: bool = False
    rseq_cpu: int = 0


def probe(modules: Sequence[LoadedModule], read: Callable[[int, int], bytes]) -> ThreadAbi:
    """The thread ABI of a process stopped at or after its entry point (``read``: its memory)."""
    loader = next((m for m in modules if os.path.basename(m.path) == GLIBC_LOADER or m.name == GLIBC_LOADER), None)
    if loader is None:
        return ThreadAbi()
    try:
        with ElfImage.open(loader.path) as image:
            offset_at, size_at = image.exported_object("__rseq_offset"), image.exported_object("__rseq_size")
        if offset_at is None or size_at is None:
            return ThreadAbi(tcb_self=True)  # glibc before 2.35: no rseq area
        size = int.from_bytes(read(loader.bias + size_at, 4), "little")
        offset = int.from_bytes(read(loader.bias + offset_at, 8), "little", signed=True)
    except (KtraceError, OSError):
        return ThreadAbi(tcb_self=True)
    if size < RSEQ_MIN_SIZE or offset + RSEQ_CPU_ID == 0:
        return ThreadAbi(tcb_self=True)  # rseq not registered (no kernel support, or a tunable turned it off)
    return ThreadAbi(tcb_self=True, rseq_cpu=offset + RSEQ_CPU_ID)
