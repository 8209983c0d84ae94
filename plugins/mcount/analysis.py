"""Where the compiler put a call site in each function of a module, and which functions have none.

The forms of site, each recorded as a :class:`CallSite` saying its form and length:

================================================  ====================  ======  ===============
build                                             bytes at the site     length  return address
================================================  ====================  ======  ===============
``-pg``                                           ``call mcount``       5 / 6   ``[rbp+8]``
``-pg -mfentry``                                  ``call __fentry__``   5 / 6   ``[rsp]``
``-pg -mfentry -mnop-mcount -mrecord-mcount``     5-byte NOP            5       ``[rsp]``
``-fpatchable-function-entry=N[,M]``              N-M NOPs at entry     5..14   ``[rsp]``
================================================  ====================  ======  ===============

A call is ``e8 rel32`` to the function or its PLT stub (5 bytes), or in PIE builds
``ff 15`` through its GOT slot (6 bytes).  NOP sites are known from the tables the
compiler keeps (``__mcount_loc``, ``__patchable_function_entries``); a call site
from its target.  ``[rsp]`` means: at the site, before anything is pushed.
Without ``-mfentry`` the call comes after the prologue, and ``[rbp+8]`` holds the
return address only if the prologue made rbp the frame pointer: a function
without one is refused rather than traced wrong.

Refusal reasons start with a stable key:

- ``not in an executable section``
- ``no mcount call site: build with -pg, or use the ktrace engine``
- ``call mcount without a frame pointer: <why> (...)``
- ``patchable entry too short: ...``
- ``unexpected site: ...``: a recorded site that is not a 5/6-byte call or NOP

Function names and their order (hence site indices) follow the ktrace engine's
alias grouping, so a function is the same site under both engines.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from ktracecli.arch.x86_64 import ENDS_FLOW, DecodeError, Insn, Kind, X86, frame_pointer_refusal
from ktracecli.elf.image import ElfImage, ExecSection
from ktracecli.interface import Analysis, FunctionSite
from ktracecli.model import Refusal
from ktracecli_ktrace.analysis import group_aliases

from .site import CALL_LENGTH, PROFILERS, CallSite, Form, McountRefusal, McountSite, Slot

ENDBR64 = b"\xf3\x0f\x1e\xfa"
NO_SITE = "no mcount call site: build with -pg, or use the ktrace engine"
#: instructions looked at from a function's entry for its call site (prologue, stack probes)
MAX_PROLOGUE = 40
#: farthest a patchable entry's pre-entry NOPs (the M of N,M) may start before the symbol
MAX_PRE_ENTRY = 64
#: the longest NOP pad taken whole as a site (5-byte call + one NOP of up to 9)
MAX_PAD = 14


class _Profilers:
    """Tells whether a call goes to mcount or __fentry__: directly, through a PLT stub or a GOT slot."""

    def __init__(self, image: ElfImage, x86: X86) -> None:
        self.image = image
        self.x86 = x86
        self.direct = {s.vaddr: s.name for s in image.functions() if s.name in PROFILERS}
        self.slots = {vaddr: name for vaddr, name in image.got_symbols().items() if name in PROFILERS}
        self._stubs: dict[int, str | None] = {}

    def called(self, insn: Insn) -> str | None:
        """The profiler ``insn`` calls, or None."""
        if insn.kind is Kind.CALL_IND:
            slot = insn.rip_target
            return None if slot is None else self.slots.get(slot)
        if insn.kind is not Kind.CALL_REL or insn.target is None:
            return None
        if insn.target in self.direct:
            return self.direct[insn.target]
        if insn.target not in self._stubs:
            self._stubs[insn.target] = self._plt_stub(insn.target)
        return self._stubs[insn.target]

    def _plt_stub(self, vaddr: int) -> str | None:
        """The profiler a PLT stub (``[endbr64] [bnd] jmp [rip+slot]``) jumps to, or None."""
        if not self.slots:
            return None
        section = self.image.exec_section_at(vaddr)
        if section is None:
            return None
        at = vaddr - section.vaddr
        try:
            insns = self.x86.decode(section.data[at:at + 16], vaddr, 1)
            if insns[0].raw == ENDBR64:
                insns = self.x86.decode(section.data[at + 4:at + 20], vaddr + 4, 1)
        except DecodeError:
            return None
        jmp = insns[0]
        if jmp.kind is not Kind.JMP_IND or jmp.rip_target is None:
            return None
        return self.slots.get(jmp.rip_target)


@dataclass(frozen=True)
class _Tables:
    """The sites the compiler listed: ``__mcount_loc`` and ``__patchable_function_entries`` (sorted)."""

    mcount_loc: frozenset[int]
    patchable: list[int]

    @classmethod
    def of(cls, image: ElfImage) -> "_Tables":
        return cls(frozenset(image.address_table("__mcount_loc") or ()),
                   sorted(image.address_table("__patchable_function_entries") or ()))

    def patchable_entry(self, x86: X86, section: ExecSection, vaddr: int, entry: int) -> bool:
        """True when the table lists the function at ``vaddr`` (pad at ``entry``, after any endbr64).

        With ``N,M`` (M > 0) the table holds the first of the M NOPs before the symbol.
        """
        i = bisect.bisect_right(self.patchable, entry) - 1
        if i < 0:
            return False
        start = self.patchable[i]
        if start in (vaddr, entry):
            return True
        if not vaddr - MAX_PRE_ENTRY <= start < vaddr or start < section.vaddr:
            return False
        return _nops(x86, section.data[start - section.vaddr:vaddr - section.vaddr], start) == vaddr - start


def analyze(image: ElfImage, x86: X86 | None = None) -> Analysis:
    """Sites and refusals for every distinct function address of ``image``."""
    x86 = x86 or X86()
    profilers = _Profilers(image, x86)
    tables = _Tables.of(image)
    sites: list[FunctionSite] = []
    refusals: list[Refusal] = []
    groups = group_aliases(image.functions())
    for n, (sym, aliases, size) in enumerate(groups):
        # a symbol without a size (crt code, hand-written assembly) ends where the next one starts
        extent = size if size > 0 else (groups[n + 1][0].vaddr - sym.vaddr if n + 1 < len(groups) else 0)
        result = _find(image, x86, profilers, tables, sym.vaddr, extent)
        if isinstance(result, CallSite):
            sites.append(McountSite(sym.name, sym.vaddr, size, aliases, result))
        else:
            reason, call = result
            refusals.append(McountRefusal(sym.name, sym.vaddr, reason, call))
    return Analysis(tuple(sites), tuple(refusals))


def _find(image: ElfImage, x86: X86, profilers: _Profilers, tables: _Tables, vaddr: int,
          size: int) -> CallSite | tuple[str, CallSite | None]:
    """The call site of the function at ``vaddr``, or (why it cannot be traced, a site it has anyway)."""
    section = image.exec_section_at(vaddr)
    if section is None:
        return "not in an executable section", None
    if size <= 0 or vaddr + size > section.end:
        size = section.end - vaddr
    at = vaddr - section.vaddr
    code = section.data[at:at + size]
    skip = len(ENDBR64) if code.startswith(ENDBR64) else 0
    entry = vaddr + skip
    if tables.patchable_entry(x86, section, vaddr, entry):
        return _patchable(x86, code[skip:], entry)
    insns: list[Insn] = []
    offset = skip
    while offset < size and len(insns) < MAX_PROLOGUE:
        try:
            (insn,) = x86.decode(code[offset:offset + 15], vaddr + offset, 1)
        except DecodeError:
            break
        if insn.end > vaddr + size:
            break
        form = _site_form(insn, profilers, tables)
        if form is not None:
            return _checked(insn, form, insns)
        if insn.kind in ENDS_FLOW or insn.kind in (Kind.CALL_REL, Kind.CALL_IND):
            break
        insns.append(insn)
        offset += insn.size
    return NO_SITE, None


def _site_form(insn: Insn, profilers: _Profilers, tables: _Tables) -> Form | None:
    """The form of the site ``insn`` is, or None if it is no site."""
    name = profilers.called(insn)
    if name is not None:
        return PROFILERS[name]
    if insn.addr in tables.mcount_loc:
        return Form.NOP_MCOUNT if insn.mnemonic == "nop" else Form.MCOUNT
    return None


def _checked(insn: Insn, form: Form, before: list[Insn]) -> CallSite | tuple[str, CallSite | None]:
    """The site at ``insn`` found after the instructions ``before`` (from the function's first byte)."""
    if insn.size not in (5, 6) or (form is Form.NOP_MCOUNT and insn.size != CALL_LENGTH):
        return f"unexpected site: `{insn}` ({insn.size} bytes) at {insn.addr:#x}", None
    entry = not before or (len(before) == 1 and before[0].raw == ENDBR64)
    site = CallSite(insn.addr, form, insn.raw, Slot.ENTRY if entry else Slot.FRAME_POINTER)
    if entry:
        return site
    why = frame_pointer_refusal(before)
    if why is not None:
        return (f"{form.value} without a frame pointer: {why} "
                "(build with -mfentry, or use the ktrace engine)"), site
    return site


def _nops(x86: X86, code: bytes, addr: int, enough: int | None = None) -> int:
    """Bytes of whole NOP instructions at the start of ``code`` (stopping once ``enough`` are covered)."""
    covered = 0
    while covered < len(code) and (enough is None or covered < enough):
        try:
            (insn,) = x86.decode(code[covered:covered + 15], addr + covered, 1)
        except DecodeError:
            break
        if insn.mnemonic != "nop" or covered + insn.size > len(code):
            break
        covered += insn.size
    return covered


def _patchable(x86: X86, pad: bytes, entry: int) -> CallSite | tuple[str, CallSite | None]:
    """The site at the start of a patchable entry's NOP pad: its first NOPs covering 5 bytes or more.

    gcc pads with one-byte NOPs (the site is the first 5), clang with one long NOP (the site
    is that NOP, up to :data:`MAX_PAD` bytes).
    """
    length = _nops(x86, pad, entry, CALL_LENGTH)
    if length < CALL_LENGTH:
        return (f"patchable entry too short: {length} NOP bytes at the entry, a call needs {CALL_LENGTH} "
                "(build with -fpatchable-function-entry=N,M where N-M >= 5)"), None
    if length > MAX_PAD:
        return f"unexpected site: a {length}-byte NOP at {entry:#x}", None
    return CallSite(entry, Form.PATCHABLE, pad[:length], Slot.ENTRY)
