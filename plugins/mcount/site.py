"""The mcount engine's site records, kept apart from the analysis so that reading them back from the
analysis cache needs no disassembler."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ktracecli.interface import FunctionSite
from ktracecli.model import Refusal

CALL_LENGTH = 5
#: the longest site enabled as one call instruction (a cs-prefixed call)
MAX_SINGLE = 6


class Form(enum.Enum):
    """Which compiler feature made a site."""

    MCOUNT = "call mcount"                    # -pg
    FENTRY = "call __fentry__"                # -pg -mfentry
    NOP_MCOUNT = "nop (__mcount_loc)"         # -mnop-mcount -mrecord-mcount
    PATCHABLE = "patchable entry"             # -fpatchable-function-entry


#: the functions a -pg build calls, by the names gcc and clang use on x86_64 Linux
PROFILERS = {"mcount": Form.MCOUNT, "_mcount": Form.MCOUNT, "__fentry__": Form.FENTRY}


class Slot(enum.Enum):
    """Where the traced function's return address is while its site runs."""

    ENTRY = "rsp"           # the site is the function's first instruction: [rsp] at the site
    FRAME_POINTER = "rbp"   # after push rbp; mov rbp, rsp: [rbp+8]


@dataclass(frozen=True)
class CallSite:
    """One compiler-made site: module-relative ``vaddr``, its form, its bytes in the file, its slot."""

    vaddr: int
    form: Form
    original: bytes
    slot: Slot

    @property
    def length(self) -> int:
        """Bytes of the site: its NOP and its call to the stub have this length."""
        return len(self.original)

    @property
    def disabled(self) -> bytes:
        """The site as NOPs of its own length (what :meth:`McountEngine.prepare` writes).

        One NOP for 5 or 6 bytes; a longer pad (clang's one long NOP) becomes a 5-byte NOP
        and a NOP for the rest, so that byte 5, where the enabled site's 5-byte call
        returns, is an instruction boundary whether the site is enabled or not.
        """
        from ktracecli.arch.x86_64 import nop  # capstone comes with the package: only when patching

        if self.length <= MAX_SINGLE:
            return nop(self.length)
        return nop(CALL_LENGTH) + nop(self.length - CALL_LENGTH)


@dataclass(frozen=True)
class McountSite(FunctionSite):
    """A traceable function and its call site."""

    call: CallSite | None = None


@dataclass(frozen=True)
class McountRefusal(Refusal):
    """A function the engine will not trace; ``call`` is a site it has all the same (still disabled)."""

    call: CallSite | None = None
