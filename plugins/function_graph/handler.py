"""function_graph's handler: push a shadow-stack entry, hook the return, record the entry.

Called through the handler ABI (ktracecli.interface) with r11 = S, the
address of the traced function's return-address slot, plus 1 when the stub
calls the function's body with rsp = S (its site is the function's entry)::

    before the handler                 after it (the stub's call then puts R+10 in S)
    S:  <return into the caller>       S:  <the stub's saved r11, popped by the stub>
    shadow stack: ... [top-1]          shadow stack: ... [top-1] [S, caller, tsc, R+10, site]

    (-pg stubs, whose slot is [rbp+8]: the handler writes R+10 in S itself, and
    the stub's call only puts R+10 on the CPU's return stack)

Either way the function's ``ret`` comes back to R+10, the return address of a
call the stub made, so the CPU predicts it (see
ktracecli.arch.x86_64.handler_call); R+10 jumps to the runtime's call return.

Fast path, per call: find the thread's slot (one hash and compare), check the
top entry (the caller's frame: its slot is above S), take the timestamp,
reserve a shadow entry and then the ring record (two non-locked cmpxchg, one
right after the other, so that a signal handler's records land on the right
side of this one unless the signal comes between them), fill the entry, mark
it complete, hook the return, and write the 16-byte record.  No system call,
lock or trap.

Other paths:

- top entry at or below S: a tail call when S still holds the top entry's
  hook (the new entry shares the slot; its original return address is that
  hook); else the top is a dead frame, and the runtime's resync routine
  closes every dead entry first; while an exception unwinds, the resync
  routine also looks at the entries above S;
- depth >= max_graph_depth (when set) or a full shadow stack: a NOHOOK record,
  and the return is left alone;
- tracing_thresh set: no entry record (the return records long calls).
"""

from __future__ import annotations

from ktracecli.arch.x86_64.handler_call import BY_CALL, ON, RETURN_POINT
from ktracecli.runtime.layout import SLOT_DEPTH_MAX, SLOT_THRESH, RuntimeLayout, cpu_asm, stamp_asm

from ktracecli_function_graph.records import CPU_MASK, CPU_SHIFT, KIND_SHIFT, Kind
from ktracecli_function_graph.shadow import (
    CALL_RETURN,
    CAPACITY,
    ENTRY_SHIFT,
    E_HOOK,
    E_ORIG,
    E_SITE,
    E_SLOT,
    E_TSC,
    H_TOP,
    H_UNWINDING,
    reserve_asm,
    restore_asm,
    not_above_asm,
    save_asm,
    saved_bytes,
    store_asm,
    thread_shadow_asm,
    top_entry_asm,
)

#: the return into the engine stub (R), above the saved registers; the site index; the stub's saved r11
STUB_RETURN = saved_bytes()
SITE_INDEX = STUB_RETURN + 8
STUB_R11 = STUB_RETURN + 16
#: a byte of the site index's quadword the handler keeps for itself: 1 when the stub can hook by a call
BY_CALL_FLAG = SITE_INDEX + 4


def _record(layout: RuntimeLayout, p: str, kind: Kind) -> str:
    """Write the record reserved in rcx for a call at depth r8: r9 = tsc, r10d = TSC_AUX.

    Clobbers rax, rcx, r10.
    """
    return f"""
    and r10d, {CPU_MASK:#x}
    shl r10d, {CPU_SHIFT}
    or r10d, r8d
    or r10d, {int(kind) << KIND_SHIFT}
    shl r10, 32
    mov eax, dword ptr [rsp+{SITE_INDEX}]
    or r10, rax
    {store_asm(layout, p, "rcx", "r9", "r10", "rax")}"""


def handler_source(layout: RuntimeLayout) -> str:
    """Keystone source of the handler (see ktracecli.interface for the ABI).

    With ``layout.rseq_cpu`` the slot lookup leaves the CPU number in r10
    (rdpid again after the resync routine, which clobbers r10).
    """
    rseq = bool(layout.rseq_cpu)
    return f"""
    .quad {layout.runtime + CALL_RETURN:#x}
    {save_asm()}
    btr r11, 0
    setc byte ptr [rsp+{BY_CALL_FLAG}]
    {thread_shadow_asm(layout, "h", full=".Lout", on_new=".Lcheck", cpu="r10" if rseq else None)}
.Lcheck:
    {top_entry_asm("h")}
    cmp qword ptr [rdi+{H_UNWINDING}], 0
    jne .Lresync
.Lpush:
    {stamp_asm("r9", "r10d", cpu_known=rseq)}
    cmp r8, {CAPACITY}
    jae .Lnohook
    cmp r8, qword ptr [rsi+{SLOT_DEPTH_MAX}]
    ja .Lnohook
    lea rdx, [r8+1]
    mov rax, r8
    cmpxchg qword ptr [rdi+{H_TOP}], rdx
    jne .Lcheck
    mov rcx, -1
    cmp qword ptr [rsi+{SLOT_THRESH}], 0
    jne .Lnorecord
    {reserve_asm("e", "rcx")}
.Lnorecord:
    shl rdx, {ENTRY_SHIFT}
    add rdx, rdi
    mov rax, qword ptr [r11]
    mov qword ptr [rdx+{E_ORIG}], rax
    mov eax, dword ptr [rsp+{SITE_INDEX}]
    mov dword ptr [rdx+{E_SITE}], eax
    mov qword ptr [rdx+{E_TSC}], r9
    mov rax, qword ptr [rsp+{STUB_RETURN}]
    add rax, {RETURN_POINT}
    mov qword ptr [rdx+{E_HOOK}], rax
    mov qword ptr [rdx+{E_SLOT}], r11
    {_record(layout, "e", Kind.ENTRY)}
    cmp byte ptr [rsp+{BY_CALL_FLAG}], 0
    je .Lframe
    mov rax, qword ptr [rsp+{STUB_R11}]
    mov qword ptr [r11], rax
    mov r11, qword ptr [rsp+{STUB_RETURN}]
    lea r11, [r11+{BY_CALL}]
    {restore_asm()}
    ret 16
.Lframe:
    mov rax, qword ptr [rdx+{E_HOOK}]
    mov qword ptr [r11], rax
    mov r11, qword ptr [rsp+{STUB_RETURN}]
    lea r11, [r11+{BY_CALL}]
    jmp .Lleave
.Lout:
    mov r11, qword ptr [rsp+{STUB_RETURN}]
    lea r11, [r11+{ON}]
.Lleave:
    {restore_asm()}
    ret 8
    {not_above_asm("h", keep=".Lpush", dead=".Lresync")}
.Lresync:
    movabs rax, {layout.runtime:#x}
    call qword ptr [rax]
    {cpu_asm("r10") if rseq else ""}
    jmp .Lpush
.Lnohook:
    cmp qword ptr [rsi+{SLOT_THRESH}], 0
    jne .Lout
    {reserve_asm("n", "rcx")}
    {_record(layout, "n", Kind.NOHOOK)}
    jmp .Lout
"""
