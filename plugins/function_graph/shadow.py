"""The per-thread shadow stacks, and the assembly pieces the handler and the runtime share.

Shadow stacks live in the tracer's private memory (``layout.private``), one
per slot, at the slot's index, so that ``fork`` copies them to the child,
whose thread gets the same slot index (see ``SharedRings.inherit``)::

    private + i * 32 KiB           the shadow stack of slot i
        +0                 u64  top: entries reserved (the next one goes at index top)
        +32 * (n + 1)      entry n, 32 bytes:
            +0   u64  slot   address of the return-address slot; 0 while being written
            +8   u64  orig   the return address it held (the trampoline's own for a tail call)
            +16  u64  tsc    entry time (tracing_thresh needs it at return)
            +24  u32  site   site index

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
while the slot no longer returns through the trampoline, belongs to a frame
left without returning (longjmp, an exception): it is *dead*, and closed.
"""

from __future__ import annotations

from ktracecli.runtime.layout import CTRL_TRACING_THRESH, SLOT_SIZE, RuntimeLayout, timestamp_asm

from ktracecli_function_graph.records import CPU_MASK, CPU_SHIFT, KIND_SHIFT, Kind

ENTRY_SHIFT = 5
ENTRY_SIZE = 1 << ENTRY_SHIFT
#: entries per shadow stack; depths 0..CAPACITY fit the records' 10-bit depth
CAPACITY = 1023
SHADOW_BYTES = ENTRY_SIZE * (CAPACITY + 1)
#: shadow stack address = private + (slot address - slot table) << SLOT_TO_SHADOW
SLOT_TO_SHADOW = (SHADOW_BYTES // SLOT_SIZE).bit_length() - 1
assert SLOT_SIZE << SLOT_TO_SHADOW == SHADOW_BYTES

E_SLOT, E_ORIG, E_TSC, E_SITE = 0, 8, 16, 24

#: the registers the handler and the runtime routines save (flags go in with rax)
SAVED = ("rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10")


def private_size(layout: RuntimeLayout) -> int:
    """Bytes of private memory: one shadow stack per slot."""
    return layout.nslots * SHADOW_BYTES


def trampoline_addr(layout: RuntimeLayout) -> int:
    """The return trampoline: at +8 of the runtime (+0 holds the resync routine's address)."""
    return layout.runtime + 8


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


def emit_asm(layout: RuntimeLayout, p: str, tsc: str, meta: str, tmp: str) -> str:
    """Write one record to the ring of the slot at rsi (or count it lost when the ring is full).

    ``tsc`` holds the timestamp, ``meta`` the second quadword without its
    commit byte (site | info << 32).  Clobbers rax, ``tmp`` and ``meta``.
    The reservation is a non-locked cmpxchg on head; the second quadword,
    holding the commit byte, is stored last::

        ring[head & mask] = { tsc, site | info << 32 | ((head >> log2(capacity)) + 1) << 56 }
    """
    return f"""
.L{p}reserve:
    mov rax, qword ptr [rsi+32]
    mov {tmp}, rax
    sub {tmp}, qword ptr [rsi+64]
    cmp {tmp}, qword ptr [rsi+56]
    jae .L{p}drop
    lea {tmp}, [rax+1]
    cmpxchg qword ptr [rsi+32], {tmp}
    jne .L{p}reserve
    mov {tmp}, rax
    shr {tmp}, {layout.capacity_bits}
    inc {tmp}
    shl {tmp}, 56
    or {meta}, {tmp}
    and rax, qword ptr [rsi+24]
    shl rax, 4
    add rax, qword ptr [rsi+16]
    mov qword ptr [rax], {tsc}
    mov qword ptr [rax+8], {meta}
    jmp .L{p}end
.L{p}drop:
    add qword ptr [rsi+40], 1
    mov qword ptr [rsi+48], rax
.L{p}end:"""


def exit_asm(layout: RuntimeLayout, p: str, kind: Kind) -> str:
    """Record the end of a popped entry: rdx = its depth, ecx = its site, r10 = its entry tsc.

    Writes one ``kind`` record (EXIT or CLOSED) stamped now; under
    tracing_thresh, the pair ENTRY (entry time) + ``kind`` when the call took
    at least the threshold, else nothing.  Clobbers rax, rcx, rdx, r9, r10.
    """
    thresh = layout.base + CTRL_TRACING_THRESH
    kind_bits = 3 << (KIND_SHIFT + 32)
    return f"""
    mov r9d, ecx
    or rdx, {int(kind) << KIND_SHIFT}
    shl rdx, 32
    or r9, rdx
    {timestamp_asm()}
    shl rdx, 32
    or rax, rdx
    and ecx, {CPU_MASK:#x}
    shl rcx, {CPU_SHIFT + 32}
    or r9, rcx
    movabs rdx, {thresh:#x}
    mov rdx, qword ptr [rdx]
    test rdx, rdx
    jnz .L{p}thresh
    mov r10, rax
    {emit_asm(layout, p + "x", "r10", "r9", "rdx")}
    jmp .L{p}done
.L{p}thresh:
    mov rcx, rax
    sub rcx, r10
    cmp rcx, rdx
    jb .L{p}done
    push rax
    push r9
    movabs rcx, {~kind_bits & (2**64 - 1):#x}
    and r9, rcx
    {emit_asm(layout, p + "e", "r10", "r9", "rdx")}
    pop r9
    pop r10
    {emit_asm(layout, p + "r", "r10", "r9", "rdx")}
.L{p}done:"""


def close_top_asm(layout: RuntimeLayout, p: str, again: str) -> str:
    """Pop the top entry (r8 = top, rdi = shadow stack) as CLOSED, then jump to ``again``.

    An incomplete entry (slot 0: its writer was left by a longjmp) is popped
    without a record.  If a signal handler moved top meanwhile, the entry is
    put back untouched and ``again`` decides anew.  Clobbers rax, rcx, rdx,
    r9, r10.
    """
    return f"""
    mov rdx, r8
    shl rdx, {ENTRY_SHIFT}
    add rdx, rdi
    mov r9, qword ptr [rdx+{E_SLOT}]
    mov r10, qword ptr [rdx+{E_TSC}]
    mov ecx, dword ptr [rdx+{E_SITE}]
    mov qword ptr [rdx+{E_SLOT}], 0
    lea rdx, [r8-1]
    mov rax, r8
    cmpxchg qword ptr [rdi], rdx
    jne .L{p}fail
    test r9, r9
    jz {again}
    {exit_asm(layout, p, Kind.CLOSED)}
    jmp {again}
.L{p}fail:
    mov rdx, r8
    shl rdx, {ENTRY_SHIFT}
    mov qword ptr [rdi+rdx+{E_SLOT}], r9
    jmp {again}"""
