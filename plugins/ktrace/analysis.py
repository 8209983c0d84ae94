"""Which functions of a module the ktrace engine can patch, and why it refuses the others.

The patch window of a function is its first instructions covering at least 5
bytes (after an ``endbr64``, which stays in place).  Those bytes become
``jmp rel32 stub`` followed by ``int3`` fill, so nothing may ever jump to bytes
1..len-1 of the window.  Each refusal reason starts with a stable key:

- ``no size in the symbol table``
- ``not in an executable section``
- ``too short``: fewer than 5 bytes after endbr64, or the window runs past the end
- ``cannot decode instruction at +N``
- ``ends inside the patch window``: a ret/jmp/int3/ud2/hlt before the window's last instruction
- ``function entry inside the patch window``: another symbol starts in bytes 1..len-1
- ``branch target inside patch window``: a direct branch anywhere in the module goes there
- ``jump table may target the patch window``
- ``address of byte N of the patch window is stored in data``
- ``cannot relocate: <why>``

Offsets (``+N``, ``byte N``) count from the start of the window.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from ktracecli.arch.x86_64 import ENDS_FLOW, BranchScan, DecodeError, Kind, RelocationError, X86, relocate
from ktracecli.elf.image import ElfImage
from ktracecli.interface import Analysis, FunctionSite
from ktracecli.model import Binding, Refusal, Symbol

from .site import KtraceSite

PATCH_SIZE = 5
ENDBR64 = b"\xf3\x0f\x1e\xfa"
#: most entries read from one jump table
MAX_TABLE_ENTRIES = 4096


def canonical_order(sym: Symbol) -> tuple[int, int, int, str]:
    """Sort key choosing an address's canonical name: GLOBAL, WEAK, LOCAL; fewer ``_``; shorter."""
    return (int(sym.binding), len(sym.name) - len(sym.name.lstrip("_")), len(sym.name), sym.name)


def group_aliases(symbols: list[Symbol]) -> list[tuple[Symbol, tuple[str, ...], int]]:
    """(canonical symbol, alias names, largest size) per distinct vaddr, sorted by vaddr."""
    by_addr: dict[int, list[Symbol]] = defaultdict(list)
    for sym in symbols:
        by_addr[sym.vaddr].append(sym)
    out = []
    for vaddr in sorted(by_addr):
        group = sorted(by_addr[vaddr], key=canonical_order)
        names = tuple(dict.fromkeys(s.name for s in group[1:] if s.name != group[0].name))
        out.append((group[0], names, max(s.size for s in group)))
    return out


class _Tables:
    """Jump-table targets of a module, found from gcc's table patterns."""

    def __init__(self, image: ElfImage, scan: BranchScan, func_ranges: np.ndarray) -> None:
        self.image = image
        self.targets: dict[int, int] = {}   # code vaddr -> table vaddr
        self._exec = [(s.vaddr, s.end) for s in image.exec_sections()]
        # a table ends at the latest where the next piece of data the code refers to begins
        self._bounds = np.unique(np.concatenate([scan.rip_leas[:, 1],
                                                 np.asarray([t for _j, t in scan.abs_tables], dtype=np.int64)]))
        self._pie_tables(scan, func_ranges)
        for _jmp, table in scan.abs_tables:
            self._read(table, 8, base=0)

    def _in_exec(self, values: np.ndarray) -> np.ndarray:
        ok = np.zeros(len(values), dtype=bool)
        for lo, hi in self._exec:
            ok |= (values >= lo) & (values < hi)
        return ok

    def _read(self, table: int, size: int, base: int) -> None:
        """Record entries of the table at ``table`` (``base`` + each entry) until one is not code."""
        if self.image.exec_section_at(table) is not None:
            return
        i = int(np.searchsorted(self._bounds, table, side="right"))
        limit = (int(self._bounds[i]) - table) // size if i < len(self._bounds) else MAX_TABLE_ENTRIES
        words = self.image.data_words(table, min(limit, MAX_TABLE_ENTRIES), size).astype(np.int64) + base
        ok = self._in_exec(words)
        stop = int(np.argmin(ok)) if not ok.all() else len(ok)
        for value in words[:stop].tolist():
            self.targets.setdefault(value, table)

    def _pie_tables(self, scan: BranchScan, func_ranges: np.ndarray) -> None:
        """``lea base,[rip+T]; movsxd; add; jmp reg``: every lea of data in a function with an indirect jmp."""
        if not len(scan.indirect_jumps) or not len(scan.rip_leas):
            return
        starts, ends = func_ranges[:, 0], func_ranges[:, 1]
        done: set[tuple[int, int]] = set()
        for jmp in scan.indirect_jumps.tolist():
            i = int(np.searchsorted(starts, jmp, side="right")) - 1
            lo, hi = (int(starts[i]), int(ends[i])) if i >= 0 and ends[i] > jmp else (jmp - 4096, jmp + 1)
            if (lo, hi) in done:
                continue
            done.add((lo, hi))
            a, b = np.searchsorted(scan.rip_leas[:, 0], [lo, hi])
            for table in np.unique(scan.rip_leas[a:b, 1]).tolist():
                self._read(table, 4, base=table)


def _prepare(image: ElfImage, x86: X86) -> tuple[list[tuple[Symbol, tuple[str, ...], int]], np.ndarray,
                                                 BranchScan, _Tables]:
    """Alias groups, their entry vaddrs, the whole-module branch scan and the jump tables."""
    groups = group_aliases(image.functions())
    starts = np.asarray([sym.vaddr for sym, _names, _size in groups], dtype=np.int64)
    scan = x86.scan(image.exec_sections(), starts.tolist())
    ranges = np.asarray([(sym.vaddr, sym.vaddr + size) for sym, _n, size in groups], dtype=np.int64)
    return groups, starts, scan, _Tables(image, scan, ranges.reshape(-1, 2))


def jump_table_targets(image: ElfImage, x86: X86 | None = None) -> dict[int, int]:
    """Every code vaddr a recognised jump table of ``image`` holds, mapped to the table's vaddr."""
    return _prepare(image, x86 or X86())[3].targets


def analyze(image: ElfImage, x86: X86 | None = None) -> Analysis:
    """Sites and refusals for every distinct function address of ``image``."""
    x86 = x86 or X86()
    groups, starts, scan, tables = _prepare(image, x86)
    table_targets = np.asarray(sorted(tables.targets), dtype=np.int64)
    pointers = np.asarray(sorted(image.pointer_values()), dtype=np.int64)
    names = {sym.vaddr: sym.name for sym, _n, _s in groups}

    sites: list[FunctionSite] = []
    refusals: list[Refusal] = []
    for sym, aliases, size in groups:
        result = _check(image, x86, scan, sym.vaddr, size, starts, names, tables, table_targets, pointers)
        if isinstance(result, str):
            refusals.append(Refusal(sym.name, sym.vaddr, result))
        else:
            window_vaddr, window = result
            sites.append(KtraceSite(sym.name, sym.vaddr, size, aliases, window_vaddr, window))
    return Analysis(tuple(sites), tuple(refusals))


def _first_in(values: np.ndarray, lo: int, hi: int) -> int | None:
    """The smallest of sorted ``values`` in ``[lo, hi)``, or None."""
    i = int(np.searchsorted(values, lo))
    return int(values[i]) if i < len(values) and values[i] < hi else None


def _check(image: ElfImage, x86: X86, scan: BranchScan, vaddr: int, size: int, starts: np.ndarray,
           names: dict[int, str], tables: _Tables, table_targets: np.ndarray,
           pointers: np.ndarray) -> tuple[int, bytes] | str:
    """The window (vaddr, bytes) of the function at ``vaddr``, or the reason it cannot be patched."""
    if size <= 0:
        return "no size in the symbol table"
    section = image.exec_section_at(vaddr)
    if section is None or vaddr + size > section.end:
        return "not in an executable section"
    at = vaddr - section.vaddr
    skip = len(ENDBR64) if section.data[at:at + 4] == ENDBR64 else 0
    body = size - skip
    if body < PATCH_SIZE:
        return f"too short: {body} bytes, the patch window needs {PATCH_SIZE}"
    wstart = vaddr + skip
    try:
        insns = x86.decode(section.data[at + skip:at + size], wstart, PATCH_SIZE)
    except DecodeError as exc:
        if body - exc.offset < 15:
            try:   # a valid instruction that only runs past the symbol's end?
                more = x86.decode(section.data[at + skip:at + skip + exc.offset + 15], wstart, PATCH_SIZE)
            except DecodeError:
                return f"cannot decode instruction at +{exc.offset}"
            return (f"too short: the patch window ({more[-1].end - wstart} bytes) runs past "
                    f"the function end (+{body})")
        return f"cannot decode instruction at +{exc.offset}"
    wend = insns[-1].end
    for insn in insns[:-1]:
        if insn.kind in ENDS_FLOW or insn.kind is Kind.TRAP:
            return f"ends inside the patch window: {insn.mnemonic} at +{insn.addr - wstart}"
    entry = _first_in(starts, wstart + 1, wend)
    if entry is not None:
        return f"function entry inside the patch window: {names[entry]} at byte {entry - wstart}"
    into = scan.branches_into(wstart + 1, wend)
    if into:
        src, dst = into[0]
        return f"branch target inside patch window: jump from {src:#x} into byte {dst - wstart}"
    hit = _first_in(table_targets, wstart + 1, wend)
    if hit is not None:
        return (f"jump table may target the patch window: table at {tables.targets[hit]:#x} "
                f"holds byte {hit - wstart}")
    ptr = _first_in(pointers, wstart + 1, wend)
    if ptr is not None:
        return f"address of byte {ptr - wstart} of the patch window is stored in data"
    try:
        relocate(insns, wstart)
    except RelocationError as exc:
        return f"cannot relocate: {exc}"
    return wstart, section.data[at + skip:at + skip + (wend - wstart)]
