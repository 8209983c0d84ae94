"""The head every engine stub starts with: call the handler, then go on or hook the return.

The handler ABI (see :mod:`ktracecli.interface`) in bytes.  At the stub S,
with R the return address of the call to the handler::

    S:        41 53                push  r11                 ; r11 may be live (gcc -fipa-ra)
              4c 8d 5c 24 09       lea   r11, [rsp+9]        ; the return-address slot + 1: the
                                                             ; slot is at rsp when the stub goes on
         or:  4c 8d 5d 08          lea   r11, [rbp+8]        ; (-pg sites: the slot, bit 0 clear)
              68 <index:4>         push  index
              e8 <handler:rel32>   call  handler             ; returns r11 = R+ON or R+BY_CALL
    R+0:      41 ff e3             jmp   r11
    R+3:      41 5b                pop   r11                 ; BY_CALL: the handler hooked the return
    R+5:      e8 <rel32>           call  R+18 (R+23 at -pg)  ; puts R+10 on the return stack
    R+10:     ff 25 <rel32>        jmp   [handler-8]         ; the hooked return comes back here
    R+16:     41 5b                pop   r11                 ; ON
    R+18:     the engine's continuation (relocated window and jump back, or a jump back)

Hooking a return so that it comes back to R+10, the address a call of the
stub's own pushed, keeps the CPU's return-stack predictions right: the traced
function's ``ret`` is predicted, and the tracer later returns to the caller
with a ``ret`` that matches the caller's own call.  A return sent anywhere
else costs a mispredicted return (about 8 ns here).

- Slot at rsp (the site is the function's entry): the handler left the
  caller's return address in its shadow stack and the stub's saved r11 in the
  slot, so ``pop r11`` takes it and the call at R+5 *is* the call of the
  function's body (its continuation at R+18): R+10 lands in the slot.
- Slot at [rbp+8] (-pg: the site is after the prologue, the function's frame
  below the slot): the handler wrote R+10 in the slot itself.  The call at R+5
  only puts R+10 on the CPU's return stack: it lands at R+23, which drops the
  pushed address and jumps back into the function like the continuation at
  R+18 does (the stack below rsp was the site's to use: a call to mcount
  pushed there too).  The function's ``ret`` then takes R+10 from the slot,
  as predicted.  (The landing is ``lea rsp, [rsp+8]`` and a short jump to
  R+18: a -pg stub takes 46 bytes.)
"""

from __future__ import annotations

from ktracecli.arch.x86_64.encode import (call_rel32, jmp_rel32, lea_r11_rbp, lea_r11_rsp, pop_r11, push_imm32,
                                          push_r11, rel32)

#: offsets from R, the return address of the call to the handler
BY_CALL = 3
RETURN_POINT = 10
ON = 16
CONTINUATION = 18
#: the handler's entry is this many bytes into its code; the quadword before it
#: holds where hooked returns go (the stub's ``jmp [handler-8]``)
HANDLER_ENTRY = 8
#: bytes of the head when the slot is given by rsp (the rbp form is one byte shorter)
HEAD_SIZE = 2 + 5 + 5 + 5 + CONTINUATION
#: lea rsp, [rsp+8]: the -pg stubs' landing for the call that only fills the return stack
DROP_RETURN = bytes.fromhex("488d642408")
#: jmp short R+CONTINUATION (rel8), after the landing's lea: the jump back there serves both
JMP_SHORT = 0xEB
#: bytes of a whole -pg stub: its head, the jump back, then the landing and its short jump
FRAME_STUB_SIZE = HEAD_SIZE - 1 + 5 + len(DROP_RETURN) + 2

JMP_R11 = b"\x41\xff\xe3"


def handler_call(stub_addr: int, handler_addr: int, index: int, slot_disp: int) -> bytes:
    """The stub's head up to its continuation (which starts at the returned length).

    ``slot_disp`` is the return-address slot's displacement from rsp after
    ``push r11``.
    """
    head = push_r11() + lea_r11_rsp(slot_disp + 1) + push_imm32(index)
    return _tail(head, stub_addr, handler_addr, CONTINUATION)


def frame_stub(stub_addr: int, handler_addr: int, index: int, back: int) -> bytes:
    """A whole stub for a site after the prologue (-pg): the slot at [rbp+8]; ``back``: where the site ends."""
    head = push_r11() + lea_r11_rbp(8) + push_imm32(index)
    landing = CONTINUATION + 5
    stub = _tail(head, stub_addr, handler_addr, landing)
    continuation = len(stub)
    stub += jmp_rel32(stub_addr + len(stub), back)
    stub += DROP_RETURN
    stub += bytes([JMP_SHORT, (continuation - (len(stub) + 2)) & 0xFF])
    assert len(stub) == FRAME_STUB_SIZE
    return stub


def _tail(head: bytes, stub_addr: int, handler_addr: int, call_to: int) -> bytes:
    """``head`` + the call to the handler and the paths after it, up to R+CONTINUATION."""
    r = stub_addr + len(head) + 5
    head += call_rel32(r - 5, handler_addr) + JMP_R11
    head += pop_r11() + call_rel32(r + 5, r + call_to) + b"\xff\x25" + rel32(r + ON, handler_addr - 8)
    head += pop_r11()
    assert len(head) == r - stub_addr + CONTINUATION
    return head
