"""function_graph's per-process runtime: the two return paths, resync, and the unwinder hooks.

Placed once per process at ``layout.runtime``::

    +0      .quad resync    the handlers call [runtime+0] (a slow path)
    +8      call_return     where hooked returns go: the stubs' return point jumps to
                            [handler-8], which holds runtime+8
    ...     resync routine
    then, from RuntimeHook sources, one routine per hooked library function

The call return (see ktracecli.arch.x86_64.handler_call): entered from the
stub's return point by the traced function's ``ret``, with rsp = S + 8, S
being the slot it returned through::

    S+8 ->  caller's frame
    S:      <R+10>           <----   save the flags and the registers below S
    S-8..:  saved registers          find the thread's slot by its fs base, pop
                                     the top entry (whose slot is S), record the
                                     exit, put the caller's return address back
                                     in S, restore the registers; ret

The ``ret`` matches the caller's own call, so the CPU predicts it.  Nothing
but rax, rdx, xmm0, xmm1 and the flags of the function's return matter to the
caller, but every register is preserved (gcc -fipa-ra).  A tail call's entry
shares its caller's slot and holds the caller's hook as its return address:
the caller's return point comes next, and pops the caller's entry.  A thread
whose fs base changed since the entry (a static program setting up its TLS
inside a traced call) finds no entry for S in its own shadow stack: every
slot's stack is searched then (a slow path).

Resynchronisation: an entry above S's in the shadow stack is a frame that
was left without returning (longjmp): it is closed (a CLOSED record).  If no
shadow stack has an entry for S at all (only a program that switches between
stacks of its own, which function_graph does not support, gets there), the
call return cannot know where to return: it says so on stderr and stops the
program with ud2.

Dead entries are also closed when a new call's slot shows them dead (see
handler.py).  ``sigaltstack``: a signal handler running on an alternate stack
may sit above the frames it interrupted, so before closing an entry by
position the resync routine asks the kernel (sigaltstack(NULL, &old), once,
only on this slow path) whether this code runs on the alternate stack, and
keeps the entries that are not on it.

C++ exceptions: the unwinder must never meet a hooked return address (a
stub's return point), or it finds no unwind info there and calls
std::terminate.  So, as uftrace does:

- at the entry of ``_Unwind_RaiseException``, ``_Unwind_Resume``,
  ``_Unwind_Resume_or_Rethrow`` and ``_Unwind_ForcedUnwind`` (pthread_exit,
  pthread_cancel) the *unhook* routine puts every live entry's original return
  address back in its slot;
- at the entry of ``__cxa_begin_catch`` (a handler was found and the stack is
  unwound to it) the *catch* routine closes the entries of the frames the
  exception left (slots below the catching frame: resync, as for a call made
  at __cxa_begin_catch's slot) and hooks the remaining ones again.

Between the two the thread's shadow stack is marked *unwinding*, so that a
traced call made by a cleanup (a destructor) closes the frames already
unwound even when an untraced function took their place on the stack.

Frames of a forced unwind are closed when their thread's later calls, or its
exit, show them gone.  ``_Unwind_Backtrace`` (glibc's ``backtrace()``) is not
hooked: a backtrace taken inside traced frames stops at the first hooked one.
"""

from __future__ import annotations

from ktracecli.interface import RuntimeCode, RuntimeHook
from ktracecli.runtime.layout import (SLOT_SIZE, SLOT_THRESH, RuntimeLayout, cpu_asm, reserve_asm,
                                     stamp_asm)

from ktracecli_function_graph.records import CPU_MASK, CPU_SHIFT, KIND_SHIFT, Kind
from ktracecli_function_graph.shadow import (
    ENTRY_SHIFT,
    ENTRY_SIZE,
    E_HOOK,
    E_ORIG,
    E_SITE,
    E_SLOT,
    H_TOP,
    H_UNWINDING,
    close_top_asm,
    exit_asm,
    find_slot_asm,
    pop_asm,
    restore_asm,
    not_above_asm,
    save_asm,
    saved_bytes,
    shadow_asm,
    store_asm,
    thread_shadow_asm,
    top_entry_asm,
)

UNHOOK_AT = ("_Unwind_RaiseException", "_Unwind_Resume", "_Unwind_Resume_or_Rethrow", "_Unwind_ForcedUnwind")
CATCH_AT = ("__cxa_begin_catch",)
#: what the call return's fast path saves besides shadow.SAVED (its slow path pushes rbx and r12 too)
CALL_RETURN_SAVED = ("r11",)
SYS_WRITE = 1
SYS_SIGALTSTACK = 131
SS_ONSTACK = 1
LOST_MESSAGE = b"ktracecli: function_graph lost a hooked return address (did the program switch stacks?)\n"


def runtime_code(layout: RuntimeLayout) -> RuntimeCode:
    """The runtime placed at ``layout.runtime`` and its unwinder hooks."""
    source = f"""
    .quad .Lresync
    {call_return_source(layout)}
.Lresync:
    {resync_source(layout)}
"""
    unhook = unhook_source(layout)
    catch = catch_source(layout)
    hooks = (*(RuntimeHook(name, unhook) for name in UNHOOK_AT), *(RuntimeHook(name, catch) for name in CATCH_AT))
    return RuntimeCode(source, hooks)


def pop_exit_asm(layout: RuntimeLayout, p: str, again: str) -> str:
    """Pop the top entry (its slot is r11), put its return address back in the slot, record its EXIT.

    r8 = top, rdi = shadow stack; a signal handler moving top meanwhile sends
    control to ``again`` (see :func:`pop_asm`).  Clobbers rax, rcx, rdx, r9,
    r10, rbx, r12.
    """
    return f"""
    {pop_asm(p + "p", again)}
    mov qword ptr [r11], rcx
    mov ecx, eax
    {exit_asm(layout, p + "x", Kind.EXIT)}"""


def call_return_source(layout: RuntimeLayout) -> str:
    """Returns hooked by a call (see the module docstring): entered with rsp = S + 8.

    The fast path (S's entry on top of the thread's shadow stack, no
    tracing_thresh) uses only the registers it saves; the other cases go to
    the slow path, which saves rbx and r12 too and searches, closes dead
    entries above S's, or applies tracing_thresh.  With ``layout.rseq_cpu``
    the slot lookup leaves the CPU number in r10.
    """
    rseq = bool(layout.rseq_cpu)
    table = layout.base + layout.slot_table
    end = table + layout.nslots * SLOT_SIZE
    message = ", ".join(str(b) for b in LOST_MESSAGE)
    return f"""
    lea rsp, [rsp-8]
    {save_asm(CALL_RETURN_SAVED)}
    lea r11, [rsp+{saved_bytes(CALL_RETURN_SAVED)}]
    {thread_shadow_asm(layout, "cr", full=".Lcslow", on_new=".Lcslow", cpu="r10" if rseq else None)}
.Lcfast:
    {stamp_asm("r9", "r10d", cpu_known=rseq)}
    mov r8, qword ptr [rdi+{H_TOP}]
    mov rdx, r8
    shl rdx, {ENTRY_SHIFT}
    add rdx, rdi
    cmp qword ptr [rdx+{E_SLOT}], r11
    jne .Lcslow
    cmp qword ptr [rsi+{SLOT_THRESH}], 0
    jne .Lcslow
    and r10d, {CPU_MASK:#x}
    shl r10d, {CPU_SHIFT}
    lea ecx, [r8-1]
    or r10d, ecx
    or r10d, {int(Kind.EXIT) << KIND_SHIFT:#x}
    shl r10, 32
    mov eax, dword ptr [rdx+{E_SITE}]
    or r10, rax
    mov rcx, qword ptr [rdx+{E_ORIG}]
    mov qword ptr [r11], rcx
    mov qword ptr [rdx+{E_SLOT}], 0
    lea rcx, [r8-1]
    mov rax, r8
    cmpxchg qword ptr [rdi+{H_TOP}], rcx
    jne .Lcraced
    {reserve_asm("cx", "rcx", dropped=".Lcdone")}
    {store_asm(layout, "cx", "rcx", "r9", "r10", "rax")}
.Lcdone:
    {restore_asm(CALL_RETURN_SAVED)}
    ret
.Lcraced:
    mov qword ptr [rdx+{E_SLOT}], r11
    {cpu_asm("r10") if rseq else ""}
    jmp .Lcfast
.Lcslow:
    push rbx
    push r12
.Lcsearch:
    mov r8, qword ptr [rdi+{H_TOP}]
    {find_slot_asm("cs", ".Lcfound", ".Lcother")}
.Lcfound:
    cmp rax, r8
    jb .Lcclose
    {pop_exit_asm(layout, "c", ".Lcsearch")}
    pop r12
    pop rbx
    jmp .Lcdone
.Lcclose:
    {close_top_asm(layout, "cc", ".Lcsearch")}
.Lcother:
    movabs rsi, {table:#x}
.Lcnext:
    {shadow_asm(layout)}
    mov r8, qword ptr [rdi+{H_TOP}]
    {find_slot_asm("co", ".Lcsearch", ".Lcmove")}
.Lcmove:
    add rsi, {SLOT_SIZE}
    movabs rax, {end:#x}
    cmp rsi, rax
    jb .Lcnext
    # no shadow stack holds S: the return address is lost, so say so and stop the program
    # (ud2); never reached on a traced call's path, which always finds its entry
    call .Lcwrite
    .byte {message}
.Lcwrite:
    pop rsi
    mov eax, {SYS_WRITE}
    mov edi, 2
    mov edx, {len(LOST_MESSAGE)}
    syscall
    ud2
"""


def resync_source(layout: RuntimeLayout) -> str:
    """Close the dead entries on top of a shadow stack, for a call made at slot r11.

    In: rsi = slot, rdi = shadow stack, r11 = the new call's return-address
    slot.  Out: r8 = top.  Clobbers rax, rcx, rdx, r9, r10 and the flags
    (rbx and r12, which closing uses, are saved).
    The top entry is dead when its slot is below r11, or equal to it while
    r11 no longer holds the entry's hook, or (only while an exception
    unwinds) above it while holding neither the entry's hook nor its own
    return address (a tail call's entry goes with the entry below it);
    unless this code runs on the signal stack and the entry is not on it.
    """
    # stack: +0 stack_t of sigaltstack (ss_sp, ss_flags, ss_size), +24 whether it was asked for
    return f"""
    push rbx
    push r12
    lea rsp, [rsp-32]
    mov qword ptr [rsp+24], 0
.Lrloop:
    {top_entry_asm("rt")}
    cmp qword ptr [rdi+{H_UNWINDING}], 0
    je .Lrdone
    mov rdx, qword ptr [rcx]
    cmp rdx, qword ptr [rdi+rax+{E_HOOK}]
    je .Lrdone
    mov r10, qword ptr [rdi+rax+{E_ORIG}]
    cmp rdx, r10
    je .Lrdone
    cmp r8, 1
    jbe .Lrcandidate
    cmp rcx, qword ptr [rdi+rax-{ENTRY_SIZE - E_SLOT}]
    jne .Lrcandidate
    cmp r10, qword ptr [rdi+rax-{ENTRY_SIZE - E_HOOK}]
    je .Lrdone
.Lrcandidate:
    cmp qword ptr [rsp+24], 0
    jne .Lrknown
    push rdi
    push rsi
    push r11
    mov eax, {SYS_SIGALTSTACK}
    xor edi, edi
    lea rsi, [rsp+24]
    syscall
    pop r11
    pop rsi
    pop rdi
    mov qword ptr [rsp+24], 1
    test rax, rax
    jz .Lrloop
    mov dword ptr [rsp+8], 0
    jmp .Lrloop
.Lrknown:
    test dword ptr [rsp+8], {SS_ONSTACK}
    jz .Lrdead
    mov rax, rcx
    sub rax, qword ptr [rsp]
    cmp rax, qword ptr [rsp+16]
    jae .Lrdone
.Lrdead:
    {close_top_asm(layout, "rc", ".Lrloop")}
.Lrdone:
    lea rsp, [rsp+32]
    pop r12
    pop rbx
    ret
    {not_above_asm("rt", keep=".Lrdone", dead=".Lrcandidate")}
"""


def _hook_prologue(layout: RuntimeLayout, p: str) -> str:
    """Save everything, then rsi = slot and rdi = shadow stack; a thread without one goes to .L{p}out."""
    return f"""
    {save_asm(("r11",))}
    {thread_shadow_asm(layout, p, full=f".L{p}out", on_new=f".L{p}out")}"""


def _rewrite_slots(layout: RuntimeLayout, p: str, hook: bool) -> str:
    """For each complete entry: slot original -> hook (``hook``, bottom up) or hook -> original (top down).

    Only a slot that still holds what the entry left there is written.  The
    orders matter for tail calls, whose entries share a slot and chain (a
    tail callee's original return address is its caller's hook): unhooking
    from the top puts each caller's hook back for the caller to replace, and
    hooking from the bottom the other way round.  r8 = top.  Clobbers rax,
    rcx, rdx, r9, r10.
    """
    expect, write = (E_ORIG, E_HOOK) if hook else (E_HOOK, E_ORIG)
    first, step = ("1", "inc rax") if hook else ("r8", "dec rax")
    return f"""
    mov rax, {first}
.L{p}loop:
    cmp rax, 1
    jb .L{p}end
    cmp rax, r8
    ja .L{p}end
    mov rdx, rax
    shl rdx, {ENTRY_SHIFT}
    add rdx, rdi
    mov rcx, qword ptr [rdx+{E_SLOT}]
    test rcx, rcx
    jz .L{p}next
    mov r9, qword ptr [rdx+{expect}]
    cmp qword ptr [rcx], r9
    jne .L{p}next
    mov r10, qword ptr [rdx+{write}]
    mov qword ptr [rcx], r10
.L{p}next:
    {step}
    jmp .L{p}loop
.L{p}end:"""


def unhook_source(layout: RuntimeLayout) -> str:
    """Routine run as an exception starts unwinding: every live slot gets its return address back."""
    return f"""
    {_hook_prologue(layout, "u")}
    mov qword ptr [rdi+{H_UNWINDING}], 1
    mov r8, qword ptr [rdi]
    {_rewrite_slots(layout, "uw", hook=False)}
.Luout:
    {restore_asm(("r11",))}
    ret
"""


def catch_source(layout: RuntimeLayout) -> str:
    """Routine run at __cxa_begin_catch: close the unwound frames, hook the live ones again."""
    # [rsp] returns into the hook stub; above it, __cxa_begin_catch's return-address slot
    slot = saved_bytes(("r11",)) + 8
    return f"""
    {_hook_prologue(layout, "c")}
    lea r11, [rsp+{slot}]
    movabs rax, {layout.runtime:#x}
    call qword ptr [rax]
    {_rewrite_slots(layout, "cw", hook=True)}
    mov qword ptr [rdi+{H_UNWINDING}], 0
.Lcout:
    {restore_asm(("r11",))}
    ret
"""
