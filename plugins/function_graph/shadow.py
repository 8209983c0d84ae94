"""The per-thread shadow stacks, and the assembly pieces the handler and the runtime share.

Shadow stacks live in the tracer's private memory (``layout.private``), one
per slot, at the slot's index, so that ``fork`` copies them to the child,
whose thread gets the same slot index (see ``SharedRings.inherit``)::

    private + i * 64 KiB           the shadow stack of slot i
        +0                 u64  top: entries reserved (the next one goes at index top)
        +8                 u64  unwinding: 1 from the start of an exception's unwinding
                                (the unhook routine) to its catch; 0 otherwise
        +64 * (n + 1)      entry n, 64 bytes (one cache line):
            +0   u64  slot   address of the return-address slot; 0 while being written
            +8   u64  orig   the return address it held (for a tail call, the hook of the
                             entry below)
            +16  u64  tsc    entry time (tracing_thresh needs it at return)
            +24  u64  hook   what the slot holds while the return is hooked: the return
                             point of the function's stub
            +32  u32  site   site index

Entries are reserved with a non-locked ``cmpxchg`` on top (one instruction: a
signal handler on the same thread sees it done or not done) and marked
complete by writing ``slot`` last; an entry is popped by reading it whole,
zeroing its ``slot`` and then moving top down with ``cmpxchg`` (the slot is
put back if a signal handler moved top meanwhile).  So every entry at or
above top has ``slot`` 0, and a signal handler that finds an incomplete entry
on top knows it belongs to code it interrupted and leaves it alone.

Entries are ordered by stack position: a live frame's slot is above (greater
than) every slot pushed after it, except a tail callee's, which shares its
caller's slot.  An entry whose slot is below a new call's, or equal to it
while the slot no longer holds the entry's hook, belongs to a frame left
without returning (longjmp, an exception): it is *dead*, and closed.  While
an exception unwinds, a frame above the new call is dead too when its slot
holds neither its hook nor its own return address any more: an untraced
function (a destructor called by a landing pad) took its place.
"""

from __future__ import annotations

from ktracecli.runtime.layout import (
    SLOT_SIZE,
    SLOT_THRESH,
    RuntimeLayout,
    reserve_asm,
    lap_asm,
    slot_lookup_asm,
    stamp_asm,
)

from ktracecli_function_graph.records import CPU_MASK, CPU_SHIFT, KIND_SHIFT, Kind

ENTRY_SHIFT = 6
ENTRY_SIZE = 1 << ENTRY_SHIFT
#: entries per shadow stack; depths 0..CAPACITY fit the records' 10-bit depth
CAPACITY = 1023
SHADOW_BYTES = ENTRY_SIZE * (CAPACITY + 1)
#: shadow stack address = private + (slot address - slot table) << SLOT_TO_SHADOW
SLOT_TO_SHADOW = (SHADOW_BYTES // SLOT_SIZE).bit_length() - 1
assert SLOT_SIZE << SLOT_TO_SHADOW == SHADOW_BYTES

E_SLOT, E_ORIG, E_TSC, E_HOOK, E_SITE = 0, 8, 16, 24, 32
#: offsets in the shadow stack's header
H_TOP, H_UNWINDING = 0, 8

#: the registers the handler and the runtime routines save (flags go in with rax)
SAVED = ("rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10")


def private_size(layout: RuntimeLayout) -> int:
    """Bytes of private memory: one shadow stack per slot."""
    return layout.nslots * SHADOW_BYTES


#: the runtime starts with resync's address, then the routine hooked returns go to
CALL_RETURN = 8


def save_asm(extra: tuple[str, ...] = ()) -> str:
    """Push rax, the status flags (lahf/seto, as the handler ABI asks) and the registers used."""
    pushes = "\n".join(f"    push {r}" for r in (*SAVED, *extra))
    return f"""
    push rax
    lahf
    seto al
    push rax
{pushes}"""


def restore_asm(extra: tuple[str, ...] = ()) -> str:
    """Undo :func:`save_asm` (``add al, 0x7f`` sets OF again from seto's byte before sahf)."""
    pops = "\n".join(f"    pop {r}" for r in reversed((*SAVED, *extra)))
    return f"""
{pops}
    pop rax
    add al, 0x7f
    sahf
    pop rax"""


def saved_bytes(extra: tuple[str, ...] = ()) -> int:
    """Bytes :func:`save_asm` pushes."""
    return 8 * (2 + len(SAVED) + len(extra))


def shadow_asm(layout: RuntimeLayout) -> str:
    """rdi = the shadow stack of the slot at rsi.  Clobbers rax."""
    k = (layout.private - ((layout.base + layout.slot_table) << SLOT_TO_SHADOW)) & (2**64 - 1)
    return f"""
    mov rdi, rsi
    shl rdi, {SLOT_TO_SHADOW}
    movabs rax, {k:#x}
    add rdi, rax"""


def thread_shadow_asm(layout: RuntimeLayout, p: str, full: str, on_new: str, cpu: str | None = None) -> str:
    """rsi = this thread's slot and rdi = its shadow stack, found by the thread's fs base.

    A slot claimed just now gets an empty shadow stack, then control goes to
    ``on_new``; with no slot to be had, to ``full``; otherwise it falls
    through.  ``p`` keeps the labels of several copies apart.  ``cpu``: see
    :func:`~ktracecli.runtime.layout.slot_lookup_asm`.  Clobbers rax, rcx, rdx
    and the flags.
    """
    return f"""
    {slot_lookup_asm(layout, found=f".L{p}slot", full=full, claimed=f".L{p}claimed", prefix=p, cpu=cpu)}
.L{p}claimed:
    {shadow_asm(layout)}
    mov qword ptr [rdi+{H_TOP}], 0
    mov qword ptr [rdi+{H_UNWINDING}], 0
    jmp {on_new}
.L{p}slot:
    {shadow_asm(layout)}"""


def top_entry_asm(p: str) -> str:
    """How the top entry of the shadow stack at rdi stands to a new call made at slot r11.

    Out: r8 = top, rax = top << ENTRY_SHIFT, rcx = the top entry's slot.  Falls
    through when that slot is above r11 (the caller's frame, unless an
    exception is unwinding): the common case costs one compare.  Otherwise goes
    to .L{p}notabove, which the caller places out of the way (:func:`not_above_asm`).
    Clobbers the flags.
    """
    return f"""
    mov r8, qword ptr [rdi+{H_TOP}]
    mov rax, r8
    shl rax, {ENTRY_SHIFT}
    mov rcx, qword ptr [rdi+rax+{E_SLOT}]
    cmp rcx, r11
    jbe .L{p}notabove"""


def not_above_asm(p: str, keep: str, dead: str) -> str:
    """The top entry's slot is not above r11 (after :func:`top_entry_asm`).

    ``keep`` when the stack is empty (the header's first word, top, was read
    as the slot: 0), the entry is incomplete (slot 0: code this one interrupted
    is writing it), or it is a tail call's (slot r11, still holding the
    entry's hook); ``dead`` when the slot is below r11, or is r11 without the
    hook: a frame left without returning.  Clobbers rdx and the flags.
    """
    return f"""
.L{p}notabove:
    test rcx, rcx
    jz {keep}
    cmp rcx, r11
    jb {dead}
    mov rdx, qword ptr [rdi+rax+{E_HOOK}]
    cmp qword ptr [r11], rdx
    je {keep}
    jmp {dead}"""


def find_slot_asm(p: str, found: str, missing: str) -> str:
    """Search the shadow stack at rdi down from r8 (its top) for the entry whose slot is r11.

    Jumps to ``found`` with rax = that entry's index + 1 (r8 for the top
    entry), or to ``missing`` when no entry has that slot.  Clobbers rax, rdx
    and the flags.
    """
    return f"""
    mov rax, r8
.L{p}scan:
    test rax, rax
    jz {missing}
    mov rdx, rax
    shl rdx, {ENTRY_SHIFT}
    cmp qword ptr [rdi+rdx+{E_SLOT}], r11
    je {found}
    dec rax
    jmp .L{p}scan"""


def store_asm(layout: RuntimeLayout, p: str, index: str, tsc: str, meta: str, tmp: str) -> str:
    """Write record ``index`` (reserved by :func:`reserve_asm`; -1 writes nothing).

    ``meta`` is the second quadword without its commit byte (site | info << 32);
    it is stored last, with the commit byte, in one store::

        ring[index & mask] = { tsc, meta | ((index >> log2(capacity)) + 1) << 56 }

    Clobbers ``index``, ``meta``, ``tmp`` and the flags.
    """
    return f"""
    cmp {index}, -1
    je .L{p}stored
    {lap_asm(layout, tmp, index)}
    shl {tmp}, 56
    or {meta}, {tmp}
    and {index}, qword ptr [rsi+24]
    shl {index}, 4
    add {index}, qword ptr [rsi+16]
    mov qword ptr [{index}], {tsc}
    mov qword ptr [{index}+8], {meta}
.L{p}stored:"""


def exit_asm(layout: RuntimeLayout, p: str, kind: Kind) -> str:
    """Record the end of a just-popped entry (timestamped before the pop, see :func:`pop_asm`).

    In: rdx = its depth, ecx = its site, rbx = now, r12 = its entry tsc,
    r10d = TSC_AUX.  Writes one ``kind`` record (EXIT or CLOSED); under
    tracing_thresh, the pair ENTRY (entry time) + ``kind`` when the call took
    at least the threshold, else nothing.  Clobbers rax, rcx, rdx, r9, r10.
    """
    return f"""
    and r10d, {CPU_MASK:#x}
    shl r10d, {CPU_SHIFT}
    or r10d, edx
    shl r10, 32
    or r10, rcx
    mov rax, qword ptr [rsi+{SLOT_THRESH}]
    test rax, rax
    jnz .L{p}thresh
    {reserve_asm(p + "x", "r9")}
    mov rax, {int(kind) << (KIND_SHIFT + 32)}
    or r10, rax
    {store_asm(layout, p + "x", "r9", "rbx", "r10", "rax")}
    jmp .L{p}done
.L{p}thresh:
    mov rcx, rbx
    sub rcx, r12
    cmp rcx, rax
    jb .L{p}done
    {reserve_asm(p + "e", "r9")}
    mov rcx, r10
    {store_asm(layout, p + "e", "r9", "r12", "rcx", "rax")}
    {reserve_asm(p + "r", "r9")}
    mov rax, {int(kind) << (KIND_SHIFT + 32)}
    or r10, rax
    {store_asm(layout, p + "r", "r9", "rbx", "r10", "rax")}
.L{p}done:"""


def pop_asm(p: str, fail: str) -> str:
    """Timestamp, then pop the top entry (r8 = top, rdi = shadow stack).

    The timestamp comes first so that the pop and the reservation of its
    record follow each other closely: a signal handler's records land on the
    right side of this one unless the signal comes in those few instructions.
    Out: rbx = now, r10d = TSC_AUX, and the entry read whole: r9 = its slot,
    rcx = its original return address, r12 = its entry tsc, eax = its site,
    rdx = its depth (top - 1).  If a signal handler moved top meanwhile, the
    entry is put back untouched and control goes to ``fail``.  Clobbers rax,
    rcx, rdx, r9, r10, rbx, r12.
    """
    return f"""
    {stamp_asm("rbx", "r10d")}
    mov rdx, r8
    shl rdx, {ENTRY_SHIFT}
    add rdx, rdi
    mov r9, qword ptr [rdx+{E_SLOT}]
    mov rcx, qword ptr [rdx+{E_ORIG}]
    mov r12, qword ptr [rdx+{E_TSC}]
    mov eax, dword ptr [rdx+{E_SITE}]
    push rax
    mov qword ptr [rdx+{E_SLOT}], 0
    lea rdx, [r8-1]
    mov rax, r8
    cmpxchg qword ptr [rdi], rdx
    pop rax
    je .L{p}popped
    mov rdx, r8
    shl rdx, {ENTRY_SHIFT}
    mov qword ptr [rdi+rdx+{E_SLOT}], r9
    jmp {fail}
.L{p}popped:"""


def close_top_asm(layout: RuntimeLayout, p: str, again: str) -> str:
    """Pop the top entry (r8 = top, rdi = shadow stack) as CLOSED, then jump to ``again``.

    An incomplete entry (slot 0: its writer was left by a longjmp) is popped
    without a record.  If a signal handler moved top meanwhile, the entry is
    put back untouched and ``again`` decides anew.  Clobbers rax, rcx, rdx,
    r9, r10, rbx, r12.
    """
    return f"""
    {pop_asm(p, again)}
    test r9, r9
    jz {again}
    mov ecx, eax
    {exit_asm(layout, p, Kind.CLOSED)}
    jmp {again}"""
