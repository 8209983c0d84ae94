"""Decoding x86_64 code: the one class that owns the capstone handles.

Two questions are asked of it:

- :meth:`X86.scan` sweeps whole executable sections fast (capstone's
  ``disasm_lite``, no operand detail) and returns every direct branch target,
  with where it comes from, plus what jump-table analysis needs;
- :meth:`X86.decode` decodes a few instructions with full detail and turns
  each into a typed :class:`Insn` that relocation works from.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import capstone
import numpy as np
from capstone import x86_const as X


class DecodeError(ValueError):
    """Bytes that capstone cannot decode as an instruction; ``offset`` is where, from the start."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"cannot decode instruction at +{offset}")
        self.offset = offset


class Kind(enum.Enum):
    """What an instruction does to control flow, as far as patching cares."""

    PLAIN = "plain"            # falls through; may still have a [rip+disp] operand
    JMP_REL = "jmp rel"        # jmp rel8 / rel32
    JCC_REL = "jcc rel"        # jcc rel8 / rel32
    CALL_REL = "call rel"      # call rel32
    LOOP_REL = "loop rel"      # loop/loope/loopne/jrcxz/jecxz: rel8 only, no rel32 form
    OTHER_REL = "other rel"    # xbegin and anything else with an implicit RIP-relative target
    JMP_IND = "jmp indirect"   # jmp reg / jmp [mem]
    CALL_IND = "call indirect"
    RET = "ret"
    TRAP = "trap"              # int3, ud2, hlt


#: kinds after which execution does not continue with the next instruction
ENDS_FLOW = frozenset({Kind.JMP_REL, Kind.JMP_IND, Kind.RET, Kind.TRAP})

_LOOPS = {X.X86_INS_LOOP, X.X86_INS_LOOPE, X.X86_INS_LOOPNE, X.X86_INS_JRCXZ, X.X86_INS_JECXZ,
          X.X86_INS_JCXZ}
_TRAPS = {X.X86_INS_INT3, X.X86_INS_UD2, X.X86_INS_HLT, X.X86_INS_UD1, X.X86_INS_UD0}
_RETS = {X.X86_INS_RET, X.X86_INS_RETF, X.X86_INS_RETFQ, X.X86_INS_IRET, X.X86_INS_IRETQ}

_JCC = ("ja", "jae", "jb", "jbe", "je", "jne", "jg", "jge", "jl", "jle", "jo", "jno", "jp", "jnp",
        "js", "jns")
_BRANCHES = ("jmp", "call", *_JCC, "loop", "loope", "loopne", "jrcxz", "jecxz")
#: lite-mode mnemonics (with the prefixes capstone prints) of direct branches
BRANCH_MNEMONICS = frozenset(_BRANCHES) | {f"{p} {m}" for p in ("bnd", "notrack") for m in _BRANCHES}


@dataclass(frozen=True)
class Insn:
    """One decoded instruction at process or module address ``addr``, with what relocation needs."""

    addr: int
    raw: bytes
    mnemonic: str
    op_str: str
    kind: Kind
    target: int | None = None    # destination of a relative branch
    rip_disp_offset: int = -1    # where the disp32 of a [rip+disp] operand sits in ``raw``, -1 if none
    cc: int | None = None        # condition code (low nibble of the opcode) of a jcc

    @property
    def size(self) -> int:
        """Length in bytes."""
        return len(self.raw)

    @property
    def end(self) -> int:
        """Address of the next instruction."""
        return self.addr + len(self.raw)

    @property
    def rip_target(self) -> int | None:
        """The address a ``[rip+disp]`` operand refers to, or None."""
        if self.rip_disp_offset < 0:
            return None
        disp = int.from_bytes(self.raw[self.rip_disp_offset:self.rip_disp_offset + 4], "little", signed=True)
        return self.end + disp

    def __str__(self) -> str:
        return f"{self.mnemonic} {self.op_str}".strip()


@dataclass
class BranchScan:
    """What a whole-module sweep found (all module-relative vaddrs).

    ``targets`` is sorted and ``sources[i]`` is one branch that goes to ``targets[i]``.
    """

    targets: np.ndarray
    sources: np.ndarray
    indirect_jumps: np.ndarray           # non-RIP-relative jmp reg / jmp [mem], sorted
    rip_leas: np.ndarray                 # (vaddr of the lea, vaddr it loads), sorted on the first column
    abs_tables: list[tuple[int, int]] = field(default_factory=list)  # (jmp vaddr, table vaddr) of jmp [reg*8+T]
    instructions: int = 0

    def branches_into(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """(source, target) of every direct branch whose target is in ``[lo, hi)``."""
        a, b = np.searchsorted(self.targets, [lo, hi])
        return [(int(s), int(t)) for s, t in zip(self.sources[a:b], self.targets[a:b])]


def _hex_after(text: str, marker: str) -> int | None:
    """The signed hex number after ``marker`` in capstone operand text ("[rip + 0x10]" -> 16)."""
    at = text.find(marker)
    if at < 0:
        return None
    rest = text[at + len(marker):]
    sign = 1
    if rest.startswith(" + "):
        rest = rest[3:]
    elif rest.startswith(" - "):
        rest, sign = rest[3:], -1
    elif rest.startswith("]"):
        return 0
    end = rest.find("]")
    try:
        return sign * int(rest[:end], 16)
    except ValueError:
        return None


class X86:
    """Owns the capstone handles for x86_64 (one lite, one with operand detail)."""

    def __init__(self) -> None:
        self._lite = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self._detail = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self._detail.detail = True

    # ------------------------------------------------------------------ whole-module sweep

    def scan(self, sections: Iterable[tuple[str, int, bytes]], starts: Sequence[int] = ()) -> BranchScan:
        """Sweep ``sections`` linearly, restarting at each of ``starts`` (function entries).

        Undecodable bytes are skipped one at a time.  libc's 1.4 MB of code takes about a second.
        """
        targets: list[int] = []
        sources: list[int] = []
        indirect: list[int] = []
        leas: list[tuple[int, int]] = []
        abs_tables: list[tuple[int, int]] = []
        count = 0
        all_starts = np.unique(np.asarray(list(starts), dtype=np.int64))
        disasm = self._lite.disasm_lite
        branch_mnemonics = BRANCH_MNEMONICS
        for _name, base, data in sections:
            end = base + len(data)
            a, b = np.searchsorted(all_starts, [base, end])
            bounds = [base, *(int(s) for s in all_starts[a:b] if s > base), end]
            for lo, hi in zip(bounds, bounds[1:]):
                pos = lo
                while pos < hi:
                    at = pos
                    for addr, size, mnem, ops in disasm(data[pos - base:hi - base], pos):
                        count += 1
                        at = addr + size
                        if ops[:2] == "0x":
                            if mnem in branch_mnemonics:
                                targets.append(int(ops, 16))
                                sources.append(addr)
                        elif mnem == "lea":
                            if "[rip" in ops:
                                disp = _hex_after(ops, "[rip")
                                if disp is not None:
                                    leas.append((addr, at + disp))
                        elif mnem[-3:] == "jmp":
                            if "rip" not in ops:
                                indirect.append(addr)
                                if "*8 + 0x" in ops:
                                    disp = _hex_after(ops, "*8")
                                    if disp is not None:
                                        abs_tables.append((addr, disp))
                    if at >= hi:
                        break
                    pos = at + 1    # an undecodable byte: skip it and sweep on
        order = np.argsort(np.asarray(targets, dtype=np.int64), kind="stable")
        lea_arr = np.asarray(leas, dtype=np.int64).reshape(-1, 2)
        return BranchScan(
            targets=np.asarray(targets, dtype=np.int64)[order],
            sources=np.asarray(sources, dtype=np.int64)[order],
            indirect_jumps=np.asarray(sorted(indirect), dtype=np.int64),
            rip_leas=lea_arr[np.argsort(lea_arr[:, 0], kind="stable")],
            abs_tables=abs_tables,
            instructions=count,
        )

    # ------------------------------------------------------------------ detailed decode

    def decode(self, code: bytes, addr: int, min_bytes: int | None = None) -> list[Insn]:
        """Decode ``code`` placed at ``addr`` until at least ``min_bytes`` are covered (all of it if None).

        Raises :class:`DecodeError` with the offset of the first byte that does not decode.
        """
        want = len(code) if min_bytes is None else min_bytes
        out: list[Insn] = []
        covered = 0
        while covered < want:
            ins = next(self._detail.disasm(code[covered:covered + 15], addr + covered, 1), None)
            if ins is None:
                raise DecodeError(covered)
            out.append(self._insn(ins))
            covered += ins.size
        return out

    def _insn(self, ins: capstone.CsInsn) -> Insn:
        """The typed view of one capstone instruction (detail on)."""
        groups = set(ins.groups)
        kind = Kind.PLAIN
        target: int | None = None
        cc: int | None = None
        if capstone.CS_GRP_BRANCH_RELATIVE in groups:
            target = int(ins.operands[0].imm) if ins.operands else None
            if ins.id in _LOOPS:
                kind = Kind.LOOP_REL
            elif ins.id == X.X86_INS_JMP:
                kind = Kind.JMP_REL
            elif ins.id == X.X86_INS_CALL:
                kind = Kind.CALL_REL
            elif ins.mnemonic.rsplit(" ", 1)[-1] in _JCC:
                kind = Kind.JCC_REL
                op = ins.opcode
                cc = (op[1] - 0x80) if op[0] == 0x0F else (op[0] - 0x70)
            else:
                kind = Kind.OTHER_REL
        elif ins.id == X.X86_INS_JMP:
            kind = Kind.JMP_IND
        elif ins.id == X.X86_INS_CALL:
            kind = Kind.CALL_IND
        elif ins.id in _RETS:
            kind = Kind.RET
        elif ins.id in _TRAPS:
            kind = Kind.TRAP
        elif ins.id == X.X86_INS_XBEGIN:
            kind = Kind.OTHER_REL
        rip_off = -1
        for op in ins.operands:
            if op.type == X.X86_OP_MEM and op.mem.base == X.X86_REG_RIP:
                rip_off = int(ins.disp_offset)
        return Insn(int(ins.address), bytes(ins.bytes), ins.mnemonic, ins.op_str, kind, target, rip_off, cc)

