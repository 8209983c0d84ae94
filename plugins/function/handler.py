"""The function tracer's handler: one 16-byte record per traced call (see records.py)."""

from __future__ import annotations

from ktracecli.arch.x86_64.handler_call import ON
from ktracecli.runtime.layout import RuntimeLayout, lap_asm, reserve_asm, slot_lookup_asm, stamp_asm

from ktracecli_function.records import CPU_MASK, PARENT_BITS, SITE_BITS, TSC_SHIFT

# Stack after the six pushes below:
#   [rsp+0..24]  saved rdi, rsi, rdx, rcx
#   [rsp+32]     saved status flags (lahf in ah, seto in al)
#   [rsp+40]     saved rax
#   [rsp+48]     return into the engine stub
#   [rsp+56]     site index
SITE_INDEX = 56


def handler_source(layout: RuntimeLayout) -> str:
    """Keystone source of the handler (see ktracecli.interface for the ABI).

    The quadword in front of it is 0: this tracer never hooks returns.  The
    two ``shrd`` put the site index above the TSC bits kept, and the CPU and
    lap above the caller's address, one instruction each.
    """
    rseq = bool(layout.rseq_cpu)
    tsc_top = 64 - (TSC_SHIFT + (64 - SITE_BITS))  # high TSC bits dropped: shl by this, then shrd
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
    {slot_lookup_asm(layout, found=".Lslot", full=".Lout", cpu="rcx" if rseq else None)}
.Lslot:
    {reserve_asm("r", "rdx", dropped=".Lout")}
    {lap_asm(layout, "rdi", "rdx")}
    and rdx, qword ptr [rsi+24]
    shl rdx, 4
    add rdx, qword ptr [rsi+16]
    mov rsi, rdx
    {stamp_asm("rax", cpu_known=rseq)}
    mov edx, dword ptr [rsp+{SITE_INDEX}]
    shl rax, {tsc_top}
    shrd rax, rdx, {SITE_BITS}
    mov qword ptr [rsi], rax
    and ecx, {CPU_MASK:#x}
    shl edi, 12
    or edi, ecx
    and r11, -8
    mov r11, qword ptr [r11]
    shl r11, {64 - PARENT_BITS}
    shrd r11, rdi, {64 - PARENT_BITS}
    mov qword ptr [rsi+8], r11
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
