"""x86_64: the one place that decodes, relocates and encodes machine code.

:class:`X86` owns the capstone handles; :func:`relocate` moves displaced
instructions; the encoders build the few instructions ktracecli generates.
"""

from ktracecli.arch.x86_64.decode import ENDS_FLOW, BranchScan, DecodeError, Insn, Kind, X86
from ktracecli.arch.x86_64.encode import (
    RangeError,
    call_abs,
    call_rel32,
    jcc_rel32,
    jmp_abs,
    jmp_rel32,
    lea_r11_rbp,
    lea_r11_rsp,
    nop,
    pop_r11,
    push_r11,
    push_imm32,
    push_return_address,
    rel32,
)
from ktracecli.arch.x86_64.frame import frame_pointer_refusal
from ktracecli.arch.x86_64.relocate import Relocated, RelocationError, relocate

__all__ = [
    "ENDS_FLOW", "BranchScan", "DecodeError", "Insn", "Kind", "X86",
    "RangeError", "call_abs", "call_rel32", "jcc_rel32", "jmp_abs", "jmp_rel32", "lea_r11_rsp", "pop_r11", "push_r11",
    "push_imm32", "push_return_address", "rel32",
    "lea_r11_rbp", "nop", "frame_pointer_refusal",
    "Relocated", "RelocationError", "relocate",
]
