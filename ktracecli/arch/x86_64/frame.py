"""Stack frames: does a function's prologue make rbp its frame pointer?

A ``call mcount`` placed after the prologue (gcc and clang ``-pg`` without
``-mfentry``) finds the traced function's return address at ``[rbp+8]`` only
when the instructions before it are::

    [f3 0f 1e fa]          endbr64            ; optional
    55                     push rbp           ; [rsp] = old rbp, [rsp+8] = return address
    48 89 e5               mov  rbp, rsp      ; so [rbp+8] = return address
    ...                    anything that leaves rbp alone and does not leave the
                           function: pushes, sub rsp, stack probes (a jcc back), movs
    e8 <mcount> | ff 15 <GOT>                 ; the call site

Anything else (no frame pointer, stack realignment with DRAP that pushes a copy
of the return address, rbp written again) is refused: [rbp+8] would not be the
slot the function returns through.
"""

from __future__ import annotations

from collections.abc import Sequence

from ktracecli.arch.x86_64.decode import Insn, Kind

ENDBR64 = "endbr64"
_RBP = frozenset({"rbp", "ebp", "bp", "bpl"})
#: instructions that write rbp without naming it as their first operand
_IMPLICIT_RBP = frozenset({"leave", "enter"})
#: instructions that write their second operand too
_WRITE_BOTH = frozenset({"xchg", "xadd", "cmpxchg"})
#: instructions that only read their operands
_READ_ONLY = frozenset({"push", "cmp", "test", "bt", "prefetcht0", "prefetcht1", "prefetcht2", "prefetchnta"})


def _operands(insn: Insn) -> list[str]:
    return [op.strip() for op in insn.op_str.split(",")] if insn.op_str else []


def _writes_rbp(insn: Insn) -> bool:
    """True when ``insn`` may change rbp (its operand text says so, or it is leave/enter)."""
    mnemonic = insn.mnemonic.split()[-1]
    if mnemonic in _IMPLICIT_RBP:
        return True
    if mnemonic in _READ_ONLY:
        return False
    ops = _operands(insn)
    written = ops if mnemonic in _WRITE_BOTH else ops[:1]
    return any(op in _RBP for op in written)


def frame_pointer_refusal(insns: Sequence[Insn]) -> str | None:
    """None when ``insns`` (from the function entry up to, not including, a call site) leave
    ``[rbp+8]`` holding the function's return address; otherwise why not, in a few words."""
    body = list(insns)
    if body and body[0].mnemonic == ENDBR64:
        body = body[1:]
    if len(body) < 2 or str(body[0]) != "push rbp" or str(body[1]) != "mov rbp, rsp":
        first = "; ".join(str(i) for i in body[:2]) or "nothing"
        return f"the prologue is `{first}`, not `push rbp; mov rbp, rsp`"
    lo, hi = body[0].addr, body[-1].end
    for insn in body[2:]:
        if insn.kind is Kind.JCC_REL:
            if insn.target is None or not lo <= insn.target <= hi:
                return f"`{insn}` may skip the call site"
            continue
        if insn.kind is not Kind.PLAIN:
            return f"`{insn}` comes before the call site"
        if _writes_rbp(insn):
            return f"`{insn}` changes rbp before the call site"
    return None
