"""Relocating displaced instructions: run at a new address, behave as at the old one.

The instructions come from :meth:`X86.decode` at their original address; the
result is the bytes to place at ``new_addr``.  What cannot be moved raises
:class:`RelocationError` with a reason a user can read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ktracecli.arch.x86_64.decode import ENDS_FLOW, Insn, Kind
from ktracecli.arch.x86_64.encode import (
    RangeError,
    call_abs,
    call_rel32,
    fits_rel32,
    jcc_rel32,
    jmp_abs,
    jmp_rel32,
    push_return_address,
)


class RelocationError(ValueError):
    """Displaced instructions that cannot run elsewhere; ``str()`` says why, in one line."""


@dataclass(frozen=True)
class Relocated:
    """Relocated code, and whether execution falls off its end (the caller then jumps back)."""

    code: bytes
    falls_through: bool


def _with_rip_disp(insn: Insn, at: int) -> bytes:
    """``insn`` copied to ``at`` with its ``[rip+disp32]`` rewritten to address the same memory."""
    target = insn.rip_target
    assert target is not None
    disp = target - (at + insn.size)
    if not fits_rel32(disp):
        raise RelocationError(f"RIP-relative operand of `{insn}` is out of reach from the detour")
    off = insn.rip_disp_offset
    return insn.raw[:off] + disp.to_bytes(4, "little", signed=True) + insn.raw[off + 4:]


# jmp rel8/rel32 -> jmp rel32 (or 14-byte absolute jmp when out of reach):
#   before: eb d8 | e9 d0..d3          after: e9 D0..D3 | ff 25 00 00 00 00 <target:8>
def _jmp(at: int, target: int) -> bytes:
    try:
        return jmp_rel32(at, target)
    except RangeError:
        return jmp_abs(target)


# jcc rel8/rel32 -> jcc rel32; out of reach, the inverted condition skips an absolute jmp:
#   before: 74 d8                      after: 0f 84 D0..D3
#                                  or after: 75 0e | ff 25 00 00 00 00 <target:8>
def _jcc(at: int, target: int, cc: int) -> bytes:
    try:
        return jcc_rel32(at, target, cc)
    except RangeError:
        return bytes((0x70 | (cc ^ 1), 14)) + jmp_abs(target)


# a call that is the LAST displaced instruction becomes "push the original return address,
# jmp target", so the callee returns straight into the original code and an unwinder never
# sees the detour:
#   before (at A):   e8 d0..d3                 call T            ; returns to A+5
#   after  (stub):   48 8d 64 24 f8            lea  rsp, [rsp-8]
#                    c7 04 24 <lo32(A+5)>      mov  dword ptr [rsp], lo32
#                    c7 44 24 04 <hi32(A+5)>   mov  dword ptr [rsp+4], hi32
#                    e9 D0..D3                 jmp  T   (or ff 25 00000000 <T:8>)
# the same for `call qword ptr [rip+X]` (ff 15 X), whose jmp is `ff 25 X'` with X' re-based.
def _call_last(insn: Insn, at: int) -> bytes:
    head = push_return_address(insn.end)
    if insn.kind is Kind.CALL_REL:
        assert insn.target is not None
        return head + _jmp(at + len(head), insn.target)
    target = insn.rip_target
    assert target is not None
    disp = target - (at + len(head) + 6)
    if not fits_rel32(disp):
        raise RelocationError(f"RIP-relative operand of `{insn}` is out of reach from the detour")
    return head + b"\xff\x25" + disp.to_bytes(4, "little", signed=True)


# a call that is not last stays a real call (its callee returns into the stub):
#   before: e8 d0..d3                  after: e8 D0..D3 | ff 15 02 00 00 00 eb 08 <T:8>
def _call(at: int, target: int) -> bytes:
    try:
        return call_rel32(at, target)
    except RangeError:
        return call_abs(target)


def relocate(insns: Sequence[Insn], new_addr: int) -> Relocated:
    """The bytes that do what ``insns`` (contiguous, decoded at their original address) did, at ``new_addr``."""
    if not insns:
        return Relocated(b"", True)
    lo, hi = insns[0].addr, insns[-1].end
    out = bytearray()
    falls_through = True
    for n, insn in enumerate(insns):
        last = n == len(insns) - 1
        at = new_addr + len(out)
        offset = insn.addr - lo
        if insn.kind in ENDS_FLOW and not last:
            raise RelocationError(f"`{insn}` at +{offset} is followed by displaced instructions")
        if insn.target is not None and lo < insn.target < hi:
            raise RelocationError(f"`{insn}` at +{offset} branches into the displaced bytes")
        kind = insn.kind
        if kind is Kind.LOOP_REL:
            raise RelocationError(f"cannot relocate loop/jrcxz (`{insn}` at +{offset})")
        if kind is Kind.OTHER_REL:
            raise RelocationError(f"cannot relocate `{insn}` at +{offset}: implicit RIP-relative target")
        if kind is Kind.JMP_REL:
            assert insn.target is not None
            out += _jmp(at, insn.target)
        elif kind is Kind.JCC_REL:
            assert insn.target is not None and insn.cc is not None
            out += _jcc(at, insn.target, insn.cc)
        elif kind is Kind.CALL_REL:
            assert insn.target is not None
            out += _call_last(insn, at) if last else _call(at, insn.target)
        elif kind is Kind.CALL_IND and last and insn.rip_disp_offset >= 0:
            out += _call_last(insn, at)
        elif insn.rip_disp_offset >= 0:
            out += _with_rip_disp(insn, at)
        else:
            out += insn.raw
        if last:
            falls_through = not (kind in ENDS_FLOW and insn.mnemonic != "int3") and not (
                kind is Kind.CALL_REL or (kind is Kind.CALL_IND and insn.rip_disp_offset >= 0))
    return Relocated(bytes(out), falls_through)
