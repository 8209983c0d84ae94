"""The ktrace engine: patch any function's entry with a jump to a stub that calls the handler.

Nothing is needed from the compiler.  Heavy imports (capstone, numpy) happen on
first use, so registering the engine stays cheap.
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

#: the most one relocated instruction can grow by (a last call: 20-byte push + 14-byte jmp)
MAX_GROWTH = 34
JMP_BACK_SIZE = 5


class KtraceEngine:
    """Overwrites a function's first instructions with ``jmp rel32`` to a per-site stub."""

    name: ClassVar[str] = "ktrace"
    description: ClassVar[str] = ("patch function entries in place (jmp to a detour that relocates the "
                                  "displaced instructions); needs no special build")

    @property
    def x86(self) -> "X86":
        """The shared decoder (created on first use)."""
        return shared_x86()

    def analyze(self, image: "ElfImage") -> Analysis:
        """Every function of ``image`` that is safe to patch, and a reason for each one that is not."""
        from .analysis import analyze
        return analyze(image, self.x86)

    def prepare(self, analysis: Analysis, bias: int) -> list[Patch]:
        """Nothing: a function's bytes stay as they are until its site is enabled."""
        return []

    def detour_size(self, site: FunctionSite) -> int:
        """An upper bound of the stub's size: head, relocated window, jump back."""
        window = _window(site)
        from ktracecli.arch.x86_64.handler_call import HEAD_SIZE
        return HEAD_SIZE + len(window) + MAX_GROWTH * len(self.x86.decode(window, 0)) + JMP_BACK_SIZE

    # The stub at S, for a window of L >= 5 bytes displaced from W = bias + window_vaddr:
    #   S+0:   the head (arch.x86_64.handler_call), slot [rsp+8] after its push r11: it calls the
    #          handler, then goes on at S+35 or hooks the return by calling S+35
    #   S+35:  <relocated window>                         ; see arch.x86_64.relocate
    #   S+n:   e9 <W+L:rel32>        jmp  W+L             ; left out when the window already left
    #
    # The patch at W (endbr64, when present, stays in front of W untouched):
    #   before: <window: L bytes>
    #   after:  e9 <S:rel32> cc cc ..  jmp S, then int3 over the other L-5 displaced bytes
    def build(self, site: FunctionSite, bias: int, stub_addr: int, handler_addr: int,
              index: int) -> tuple[bytes, Patch]:
        """The stub for ``site`` at ``stub_addr`` and the patch that jumps to it."""
        from ktracecli.arch.x86_64 import RangeError, RelocationError, jmp_rel32, relocate
        from ktracecli.arch.x86_64.handler_call import handler_call
        window = _window(site)
        addr = bias + getattr(site, "window_vaddr")
        if not 0 <= index <= 0xFFFFFFFF:
            raise PatchError(f"{site.name}: site index {index} does not fit in 32 bits")
        try:
            head = handler_call(stub_addr, handler_addr, index, 8)
            moved = relocate(self.x86.decode(window, addr), stub_addr + len(head))
            stub = head + moved.code
            if moved.falls_through:
                stub += jmp_rel32(stub_addr + len(stub), addr + len(window))
            # int3 over the displaced bytes after the jump: never executed (the analysis refused
            # every function with a branch into them), so no trap runs per call
            new = jmp_rel32(addr, stub_addr) + b"\xcc" * (len(window) - 5)
        except RangeError as exc:
            raise PatchError(f"{site.name}: the detour at {stub_addr:#x} is out of reach: {exc}") from None
        except RelocationError as exc:
            raise PatchError(f"{site.name}: cannot relocate: {exc}") from None
        return stub, Patch(addr, window, new)


def _window(site: FunctionSite) -> bytes:
    """The displaced bytes of a ktrace site; other engines' sites are a bug to pass here."""
    window = getattr(site, "window", None)
    if not isinstance(window, bytes) or len(window) < 5:
        raise TypeError(f"{site.name}: not a site of the ktrace engine")
    return window
