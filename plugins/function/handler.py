"""The function tracer's handler: one 24-byte record per traced call.

Record (little endian)::

    +0   u64  tsc          time stamp counter at entry
    +8   u64  parent | cpu << 48   return address into the caller (user addresses fit
                                   in 48 bits); cpu from TSC_AUX (low 12 bits)
    +16  u32  site index
    +20  u32  commit       low 32 bits of (reservation index + 1), written last
"""

from __future__ import annotations

import numpy as np

from ktracecli.arch.x86_64.handler_call import ON
from ktracecli.runtime.layout import RuntimeLayout, reserve_asm, slot_lookup_asm, timestamp_asm

RECORD_DTYPE = np.dtype([("tsc", "<u8"), ("parent", "<u8"), ("site", "<u4"), ("commit", "<u4")])
assert RECORD_DTYPE.itemsize == 24

# Stack after the six pushes below:
#   [rsp+0..24]  saved rdi, rsi, rdx, rcx
#   [rsp+32]     saved status flags (lahf in ah, seto in al)
#   [rsp+40]     saved rax
#   [rsp+48]     return into the engine stub
#   [rsp+56]     site index
SITE_INDEX = 56


def handler_source(layout: RuntimeLayout) -> str:
    """Keystone source of the handler (see ktracecli.interface for the ABI).

    The quadword in front of it is 0: this tracer never hooks returns.
    """
    return f"""
    .quad 0
    push rax
    lahf
    seto al
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    {slot_lookup_asm(layout, found=".Lslot", full=".Lout", cpu="rcx" if layout.rseq_cpu else None)}
.Lslot:
    {reserve_asm("r", "rdx", dropped=".Lout")}
    lea edi, [rdx+1]
    mov rax, rdx
    and rax, qword ptr [rsi+24]
    lea rax, [rax+rax*2]
    shl rax, 3
    add rax, qword ptr [rsi+16]
    mov rsi, rax
    and r11, -8
    mov r11, qword ptr [r11]
    mov eax, dword ptr [rsp+{SITE_INDEX}]
    mov dword ptr [rsi+16], eax
    {timestamp_asm(cpu_known=bool(layout.rseq_cpu))}
    shl rdx, 32
    or rax, rdx
    mov qword ptr [rsi], rax
    and ecx, 0xfff
    shl rcx, 48
    or r11, rcx
    mov qword ptr [rsi+8], r11
    mov dword ptr [rsi+20], edi
.Lout:
    mov r11, qword ptr [rsp+{SITE_INDEX - 8}]
    lea r11, [r11+{ON}]
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    add al, 0x7f
    sahf
    pop rax
    ret 8
"""
