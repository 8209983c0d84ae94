"""function_graph's handler: push a shadow-stack entry, hook the return, record the entry.

Called through the handler ABI (ktracecli.interface) with r11 = S, the
address of the traced function's return-address slot::

    before the handler                 after it
    S:  <return into the caller>       S:  <the return trampoline>      (the caller's
                                                                         address is in
    shadow stack: ... [top-1]          shadow stack: ... [top-1] [S, caller, tsc, site]
                                                                         the entry)

Fast path, per call: find the thread's slot (one hash and compare), check the
top entry (the caller's frame: its slot is above S), reserve an entry with
one non-locked cmpxchg, fill it, mark it complete, write the trampoline's
address into S, and write one 16-byte record.  No system call, lock or trap.

Other paths:

- top entry at or below S: a tail call when S already returns through the
  trampoline (the entry shares the slot); else the top is a dead frame, and
  the runtime's resync routine closes every dead entry first;
- depth >= max_graph_depth (when set) or a full shadow stack: a NOHOOK record,
  and the return is left alone;
- tracing_thresh set: no entry record (the trampoline records long calls).
"""

from __future__ import annotations

from ktracecli.runtime.layout import CTRL_MAX_GRAPH_DEPTH, CTRL_TRACING_THRESH, RuntimeLayout, slot_lookup_asm, timestamp_asm

from ktracecli_function_graph.records import CPU_MASK, CPU_SHIFT, KIND_SHIFT, Kind
from ktracecli_function_graph.shadow import (
    CAPACITY,
    E_ORIG,
    E_SITE,
    E_SLOT,
    E_TSC,
    ENTRY_SHIFT,
    emit_asm,
    restore_asm,
    save_asm,
    saved_bytes,
    shadow_asm,
    trampoline_addr,
)

#: the site index, above the saved registers and the return into the engine stub
SITE_INDEX = saved_bytes() + 8


def _entry_record(layout: RuntimeLayout, p: str, kind: Kind) -> str:
    """Record a call at depth r8: rax = tsc, ecx = TSC_AUX.  Clobbers rax, rcx, rdx, r9, r10."""
    return f"""
    mov r9, rax
    mov r10d, dword ptr [rsp+{SITE_INDEX}]
    and ecx, {CPU_MASK:#x}
    shl ecx, {CPU_SHIFT}
    or ecx, r8d
    or ecx, {int(kind) << KIND_SHIFT}
    shl rcx, 32
    or r10, rcx
    {emit_asm(layout, p, "r9", "r10", "rdx")}"""


def handler_source(layout: RuntimeLayout) -> str:
    """Keystone source of the handler (see ktracecli.interface for the ABI)."""
    tramp = trampoline_addr(layout)
    return f"""
    {save_asm()}
    {slot_lookup_asm(layout, found=".Lslot", full=".Lout", claimed=".Lclaimed")}
.Lclaimed:
    {shadow_asm(layout)}
    mov qword ptr [rdi], 0
    jmp .Lcheck
.Lslot:
    {shadow_asm(layout)}
.Lcheck:
    mov r8, qword ptr [rdi]
    test r8, r8
    jz .Lpush
    mov rax, r8
    shl rax, {ENTRY_SHIFT}
    mov rcx, qword ptr [rdi+rax+{E_SLOT}]
    cmp rcx, r11
    ja .Lpush
    jb .Lbelow
    movabs rax, {tramp:#x}
    cmp qword ptr [r11], rax
    je .Lpush
    jmp .Lresync
.Lbelow:
    test rcx, rcx
    jz .Lpush
.Lresync:
    movabs rax, {layout.runtime:#x}
    call qword ptr [rax]
.Lpush:
    cmp r8, {CAPACITY}
    jae .Lnohook
    movabs rax, {layout.base + CTRL_MAX_GRAPH_DEPTH:#x}
    mov rax, qword ptr [rax]
    dec rax
    cmp r8, rax
    ja .Lnohook
    lea rdx, [r8+1]
    mov rax, r8
    cmpxchg qword ptr [rdi], rdx
    jne .Lcheck
    shl rdx, {ENTRY_SHIFT}
    add rdx, rdi
    mov rcx, qword ptr [r11]
    mov qword ptr [rdx+{E_ORIG}], rcx
    mov ecx, dword ptr [rsp+{SITE_INDEX}]
    mov dword ptr [rdx+{E_SITE}], ecx
    mov r9, rdx
    {timestamp_asm()}
    shl rdx, 32
    or rax, rdx
    mov qword ptr [r9+{E_TSC}], rax
    mov qword ptr [r9+{E_SLOT}], r11
    movabs rdx, {tramp:#x}
    mov qword ptr [r11], rdx
    movabs rdx, {layout.base + CTRL_TRACING_THRESH:#x}
    cmp qword ptr [rdx], 0
    jne .Lout
    {_entry_record(layout, "e", Kind.ENTRY)}
.Lout:
    {restore_asm()}
    ret 8
.Lnohook:
    movabs rdx, {layout.base + CTRL_TRACING_THRESH:#x}
    cmp qword ptr [rdx], 0
    jne .Lout
    {timestamp_asm()}
    shl rdx, 32
    or rax, rdx
    {_entry_record(layout, "n", Kind.NOHOOK)}
    jmp .Lout
"""
