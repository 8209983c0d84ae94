"""The mcount engine: the compiler's entry call sites, NOPs until a function is traced.

Like the kernel's dynamic ftrace: at start every site of a module is disabled
(a NOP of the site's own length, so a -pg program no longer runs glibc's gprof
``mcount`` either), and the site of each selected function jumps to a stub that
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


class McountEngine:
    """Turns compiler-made call sites into NOPs, and the selected ones into jumps to a stub."""

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
        """The stub's size: the handler-call head, then a jump back (5 bytes) or a return (1)."""
        from ktracecli.arch.x86_64.handler_call import FRAME_STUB_SIZE, HEAD_SIZE

        from .site import Slot
        return HEAD_SIZE + 5 if _call(site).slot is Slot.ENTRY else FRAME_STUB_SIZE

    # The stub at S, for the site of L bytes (5 or more) at A in a function F, is jumped to:
    #     patch: 0f 1f 44 00 00 [nop]  ->  e9 <S:rel32> [nop]     (L-5 NOP bytes stay NOPs,
    #                                                              never reached: the stub jumps to A+L)
    # Its head is arch.x86_64.handler_call's, which calls the handler, then goes on or hooks
    # F's return so that it comes back to the stub through a predicted return:
    #   site at F's entry (-mfentry, -mnop-mcount, patchable entry): like a ktrace stub
    #     S+0:   head, slot [rsp+8] after its push r11
    #     S+35:  e9 <A+L:rel32>        jmp  A+L            ; the end of the site
    #   site after push rbp; mov rbp, rsp (-pg): F's return address is at [rbp+8]
    #     S+0:   head, slot [rbp+8]
    #     S+34:  e9 <A+L:rel32>        jmp  A+L
    #     S+39:  48 8d 64 24 08        lea  rsp, [rsp+8]   ; after the call that filled the
    #     S+44:  eb f4                 jmp  S+34           ; CPU's return stack (see handler_call)
    def build(self, site: FunctionSite, bias: int, stub_addr: int, handler_addr: int,
              index: int) -> tuple[bytes, Patch]:
        """The stub for ``site`` at ``stub_addr`` and the patch that makes its site call it."""
        from ktracecli.arch.x86_64 import RangeError, jmp_rel32, nop
        from ktracecli.arch.x86_64.handler_call import frame_stub, handler_call

        from .site import CALL_LENGTH, MAX_SINGLE, Slot

        call = _call(site)
        if not 0 <= index <= 0xFFFFFFFF:
            raise PatchError(f"{site.name}: site index {index} does not fit in 32 bits")
        addr = bias + call.vaddr
        try:
            if call.slot is Slot.ENTRY:
                head = handler_call(stub_addr, handler_addr, index, 8)
                stub = head + jmp_rel32(stub_addr + len(head), addr + call.length)
            else:
                stub = frame_stub(stub_addr, handler_addr, index, addr + call.length)
            rest = call.length - CALL_LENGTH
            pad = call.disabled[CALL_LENGTH:] if call.length > MAX_SINGLE else nop(rest) if rest else b""
            new = jmp_rel32(addr, stub_addr) + pad
        except RangeError as exc:
            raise PatchError(f"{site.name}: the stub at {stub_addr:#x} is out of reach: {exc}") from None
        assert len(stub) <= self.detour_size(site)
        return stub, Patch(addr, call.disabled, new)


def _call(site: FunctionSite) -> "CallSite":
    """The call site of an mcount site; other engines' sites are a bug to pass here."""
    call = getattr(site, "call", None)
    if call is None:
        raise TypeError(f"{site.name}: not a site of the mcount engine")
    return call
