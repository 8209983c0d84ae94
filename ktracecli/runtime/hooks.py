"""Runtime hooks: a tracer's routine called at the entry of a library function.

A tracer that must see some library calls whichever engine delivers the
traced ones (function_graph and the C++ unwinder) names them in
:class:`ktracecli.interface.RuntimeHook`.  Each is placed with the ktrace
engine's technique, by the core, for every engine: the function's first
instructions move to a stub that first calls the routine.

The patch at the function's entry A (an ``endbr64`` stays in front of A)::

    before:  <window: the first instructions, L >= 5 bytes>
    after:   e9 <S:rel32> cc cc ..       jmp S, int3 over the other L-5 bytes

The stub at S (near the module, so that the window's RIP-relative operands
and branches still reach)::

    S+0:    e8 <routine:rel32>                      call routine (or, out of reach:)
       or:  ff 15 02 00 00 00 eb 08 <routine:8>     call [rip+2]; jmp over the address
    S+n:    <relocated window>                      see arch.x86_64.relocate
    S+m:    e9 <A+L:rel32>                          jmp back (left out when the window left)

The window is checked as the ktrace engine checks its own, on the function's
code: the instructions decode and relocate, none before the last ends the
flow, and no direct branch of the function lands inside the window.
"""

from __future__ import annotations

from dataclasses import dataclass

from ktracecli.arch.x86_64 import (
    ENDS_FLOW,
    DecodeError,
    Kind,
    RangeError,
    RelocationError,
    X86,
    call_abs,
    call_rel32,
    jmp_rel32,
    relocate,
)
from ktracecli.elf.image import ElfImage
from ktracecli.errors import PatchError
from ktracecli.model import Patch

PATCH_SIZE = 5
ENDBR64 = b"\xf3\x0f\x1e\xfa"
CALL_ABS_SIZE = 16
#: the most one relocated instruction can grow by (as in the ktrace engine)
MAX_GROWTH = 34


@dataclass(frozen=True)
class HookSite:
    """Where a hook goes in one module: the function and its displaced window (module vaddrs)."""

    symbol: str
    vaddr: int
    window_vaddr: int
    window: bytes

    def stub_size(self, insns: int) -> int:
        """An upper bound of the stub's size for a window of ``insns`` instructions."""
        return CALL_ABS_SIZE + len(self.window) + MAX_GROWTH * insns + PATCH_SIZE


def find(image: ElfImage, x86: X86, symbols: set[str]) -> list[HookSite]:
    """The functions of ``image`` named in ``symbols`` whose entry can be hooked.

    A function that cannot be hooked safely is a :class:`PatchError`: the
    tracer needs every one of its hooks to work correctly.
    """
    sites = []
    seen: set[int] = set()
    for sym in image.find_functions(symbols):
        if sym.vaddr in seen or not sym.vaddr:
            continue
        seen.add(sym.vaddr)
        found = _window(image, x86, sym.vaddr, sym.size)
        if isinstance(found, str):
            raise PatchError(f"cannot hook {sym.name} in {image.name}: {found}")
        sites.append(HookSite(sym.name, sym.vaddr, *found))
    return sites


def _window(image: ElfImage, x86: X86, vaddr: int, size: int) -> tuple[int, bytes] | str:
    """(window vaddr, window bytes) of the function at ``vaddr``, or why it cannot be hooked."""
    section = image.exec_section_at(vaddr)
    if section is None or size <= 0 or vaddr + size > section.end:
        return "not a sized function in an executable section"
    code = section.data[vaddr - section.vaddr:vaddr - section.vaddr + size]
    skip = len(ENDBR64) if code.startswith(ENDBR64) else 0
    start = vaddr + skip
    try:
        insns = x86.decode(code[skip:], start, PATCH_SIZE)
    except DecodeError as exc:
        return f"cannot decode its first instructions (+{exc.offset})"
    end = insns[-1].end
    if end > vaddr + size:
        return "shorter than the patch window"
    for insn in insns[:-1]:
        if insn.kind in ENDS_FLOW or insn.kind is Kind.TRAP:
            return f"`{insn}` ends the flow inside the patch window"
    scan = x86.scan([(image.name, vaddr, code)], [vaddr])
    into = scan.branches_into(start + 1, end)
    if into:
        return f"a branch at {into[0][0]:#x} lands inside the patch window"
    try:
        relocate(insns, start)
    except RelocationError as exc:
        return f"cannot relocate: {exc}"
    return start, code[skip:skip + end - start]


def build(x86: X86, site: HookSite, bias: int, stub_addr: int, routine: int) -> tuple[bytes, Patch]:
    """The stub at ``stub_addr`` that calls ``routine`` then runs the window, and the entry patch."""
    addr = bias + site.window_vaddr
    try:
        try:
            head = call_rel32(stub_addr, routine)
        except RangeError:
            head = call_abs(routine)
        moved = relocate(x86.decode(site.window, addr), stub_addr + len(head))
        stub = head + moved.code
        if moved.falls_through:
            stub += jmp_rel32(stub_addr + len(stub), addr + len(site.window))
        # int3 over the displaced bytes after the jump: never executed (nothing branches into
        # them, the analysis made sure), so no trap runs per call
        new = jmp_rel32(addr, stub_addr) + b"\xcc" * (len(site.window) - PATCH_SIZE)
    except (RangeError, RelocationError) as exc:
        raise PatchError(f"cannot hook {site.symbol}: {exc}") from None
    return stub, Patch(addr, site.window, new)
