"""The mcount engine: the compiler's entry call sites, NOPs until a function is traced.

Like the kernel's dynamic ftrace: at start every site of a module is disabled
(a NOP of the site's own length, so a -pg program no longer runs glibc's gprof
``mcount`` either), and the site of each selected function calls a stub that
calls the handler.  Heavy imports (capstone, numpy) happen on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ktracecli.arch import shared_x86
from ktracecli.errors import PatchError
from ktracecli.interface import Analysis, FunctionSite
from ktracecli.model import Patch

if TYPE_CHECKING:
    from ktracecli.arch.x86_64 import X86
    from ktracecli.elf.image import ElfImage

    from .site import CallSite

#: push r11 (2) + lea r11, [rsp+16] (5) or [rbp+8] (4) + push imm32 (5) + call rel32 (5) + pop r11 (2) + ret (1)
STUB_SIZE = 20


class McountEngine:
    """Turns compiler-made call sites into NOPs, and the selected ones into calls to a stub."""

    name: ClassVar[str] = "mcount"
    description: ClassVar[str] = ("use the call sites the compiler put at function entries (-pg, -mfentry, "
                                  "-mnop-mcount, -fpatchable-function-entry): NOPs until traced")

    @property
    def x86(self) -> "X86":
        """The shared decoder (created on first use)."""
        return shared_x86()

    def analyze(self, image: "ElfImage") -> Analysis:
        """Every function of ``image`` with a usable call site, and a reason for each one without."""
        from .analysis import analyze
        return analyze(image, self.x86)

    # Every site of the module, traced or refused, at A (module vaddr + bias):
    #   before: e8 <mcount:rel32>        | ff 15 <GOT:disp32>       | 90 90 90 90 90 (patchable pad)
    #   after:  0f 1f 44 00 00           | 66 0f 1f 44 00 00        | 0f 1f 44 00 00
    # (a -mnop-mcount site already is 0f 1f 44 00 00 and is left alone)
    def prepare(self, analysis: Analysis, bias: int) -> list[Patch]:
        """Disable every site of the module: a NOP of the site's own length."""
        patches = []
        for item in (*analysis.sites, *analysis.refusals):
            call = getattr(item, "call", None)
            if call is not None and call.original != call.disabled:
                patches.append(Patch(bias + call.vaddr, call.original, call.disabled))
        return patches

    def detour_size(self, site: FunctionSite) -> int:
        """The largest stub (the [rsp+16] one)."""
        _call(site)
        return STUB_SIZE

    # The stub at S, for the site of L bytes (5 or 6) at A in a function F:
    #   S+0:   41 53                 push r11
    #   S+2:   4c 8d 5c 24 10        lea  r11, [rsp+16]   ; site at F's entry: [rsp+8] = return to A+L,
    #                                                     ; [rsp+16] = F's return address
    #     or:  4c 8d 5d 08           lea  r11, [rbp+8]    ; site after push rbp; mov rbp, rsp (-pg):
    #                                                     ; every offset below is one less
    #   S+7:   68 <index:4>          push index
    #   S+12:  e8 <handler:rel32>    call handler         ; handler returns with ret 8
    #   S+17:  41 5b                 pop  r11
    #   S+19:  c3                    ret                  ; to A+L, the end of the site
    #
    # The patch at A (disabled -> enabled):
    #   5 bytes:  0f 1f 44 00 00      ->  e8 <S:rel32>        call S
    #   6 bytes:  66 0f 1f 44 00 00   ->  2e e8 <S:rel32>     cs call S (one instruction: it returns to A+6)
    #   L > 6 (clang's one long NOP in a patchable entry):
    #             0f 1f 44 00 00 <nop:L-5>  ->  e8 <S:rel32> <nop:L-5>   (the stub returns to A+5)
    def build(self, site: FunctionSite, bias: int, stub_addr: int, handler_addr: int,
              index: int) -> tuple[bytes, Patch]:
        """The stub for ``site`` at ``stub_addr`` and the patch that makes its site call it."""
        from ktracecli.arch.x86_64 import (
            RangeError,
            call_rel32,
            call_rel32_sized,
            lea_r11_rbp,
            lea_r11_rsp,
            pop_r11,
            push_imm32,
            push_r11,
            ret,
        )

        from .site import CALL_LENGTH, MAX_SINGLE, Slot

        call = _call(site)
        if not 0 <= index <= 0xFFFFFFFF:
            raise PatchError(f"{site.name}: site index {index} does not fit in 32 bits")
        addr = bias + call.vaddr
        slot = lea_r11_rsp(16) if call.slot is Slot.ENTRY else lea_r11_rbp(8)
        head = push_r11() + slot + push_imm32(index)
        try:
            stub = head + call_rel32(stub_addr + len(head), handler_addr) + pop_r11() + ret()
            if call.length <= MAX_SINGLE:
                new = call_rel32_sized(addr, stub_addr, call.length)
            else:
                new = call_rel32(addr, stub_addr) + call.disabled[CALL_LENGTH:]
        except RangeError as exc:
            raise PatchError(f"{site.name}: the stub at {stub_addr:#x} is out of reach: {exc}") from None
        assert len(stub) <= STUB_SIZE
        return stub, Patch(addr, call.disabled, new)


def _call(site: FunctionSite) -> "CallSite":
    """The call site of an mcount site; other engines' sites are a bug to pass here."""
    call = getattr(site, "call", None)
    if call is None:
        raise TypeError(f"{site.name}: not a site of the mcount engine")
    return call
