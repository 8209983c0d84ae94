"""The head every engine stub starts with: call the handler, then go on or hook the return by a call.

The handler ABI (see :mod:`ktracecli.interface`) in bytes.  At the stub S,
with R the return address of the call to the handler::

    S:        41 53                push  r11                 ; r11 may be live (gcc -fipa-ra)
              4c 8d 5c 24 09       lea   r11, [rsp+9]        ; the return-address slot + 1: this
                                                             ; stub can hook the return by a call
         or:  4c 8d 5d 08          lea   r11, [rbp+8]        ; (-pg sites: the slot, bit 0 clear)
              68 <index:4>         push  index
              e8 <handler:rel32>   call  handler             ; returns r11 = R+ON or R+BY_CALL
    R+0:      41 ff e3             jmp   r11
    R+3:      41 5b                pop   r11                 ; BY_CALL: the handler kept the caller's
    R+5:      e8 <R+18:rel32>      call  R+18                ; return address; this call puts R+10
    R+10:     ff 25 <rel32>        jmp   [handler-8]         ; in its slot: the return comes back here
    R+16:     41 5b                pop   r11                 ; ON
    R+18:     the engine's continuation (relocated window and jump back, or a return)

Hooking a return by a call keeps the CPU's return-stack predictions right:
the traced function's ``ret`` comes back to R+10, the address its own call
pushed, and the tracer later returns to the caller with a ``ret`` that
matches the caller's call.  Rewriting the return slot instead costs a
mispredicted return (about 8 ns here).  A stub whose slot is not at [rsp]
when its continuation runs (-pg: the site is after the prologue) has int3
in place of the call path, and its handler never chooses it.
"""

from __future__ import annotations

from ktracecli.arch.x86_64.encode import call_rel32, lea_r11_rbp, lea_r11_rsp, pop_r11, push_imm32, push_r11, rel32

#: offsets from R, the return address of the call to the handler
BY_CALL = 3
RETURN_POINT = 10
ON = 16
CONTINUATION = 18
#: the handler's entry is this many bytes into its code; the quadword before it
#: holds where returns hooked by a call go (the stub's ``jmp [handler-8]``)
HANDLER_ENTRY = 8
#: bytes of the head when the slot is given by rsp (the rbp form is one byte shorter)
HEAD_SIZE = 2 + 5 + 5 + 5 + CONTINUATION

JMP_R11 = b"\x41\xff\xe3"


def handler_call(stub_addr: int, handler_addr: int, index: int, slot_disp: int, *, frame: bool = False) -> bytes:
    """The stub's head up to its continuation (which starts at the returned length).

    ``slot_disp`` is the return-address slot's displacement from rsp after
    ``push r11`` (or from rbp when ``frame``, the -pg form, which cannot hook
    by a call).
    """
    lea = lea_r11_rbp(slot_disp) if frame else lea_r11_rsp(slot_disp + 1)
    head = push_r11() + lea + push_imm32(index)
    r = stub_addr + len(head) + 5
    head += call_rel32(r - 5, handler_addr) + JMP_R11
    if frame:
        head += b"\xcc" * (ON - BY_CALL)  # int3 where the call path would be: its handler never goes there
    else:
        cell = handler_addr - 8
        head += (pop_r11() + call_rel32(r + 5, r + CONTINUATION)
                 + b"\xff\x25" + rel32(r + ON, cell))
    head += pop_r11()
    assert len(head) == r - stub_addr + CONTINUATION
    return head
