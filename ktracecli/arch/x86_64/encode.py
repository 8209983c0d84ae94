"""Encoders for the few x86_64 instructions ktracecli generates by hand.

Every function takes process (or module) addresses and returns bytes; a rel32
that cannot reach raises :class:`RangeError` rather than wrapping silently.
"""

from __future__ import annotations

import struct

REL32_MIN = -(1 << 31)
REL32_MAX = (1 << 31) - 1

#: bytes of :func:`jmp_abs`, :func:`call_abs` and :func:`push_return_address`
JMP_ABS_SIZE = 14
CALL_ABS_SIZE = 16
PUSH_RETURN_SIZE = 20


class RangeError(ValueError):
    """A rel32 displacement does not fit (source and destination more than 2 GiB apart)."""


def fits_rel32(disp: int) -> bool:
    """True when ``disp`` is a valid signed 32-bit displacement."""
    return REL32_MIN <= disp <= REL32_MAX


def rel32(next_addr: int, dst: int) -> bytes:
    """The little-endian rel32 that goes from ``next_addr`` (end of the instruction) to ``dst``."""
    disp = dst - next_addr
    if not fits_rel32(disp):
        raise RangeError(f"{dst:#x} is out of rel32 reach from {next_addr:#x} ({disp:+#x} bytes)")
    return struct.pack("<i", disp)


# jmp rel32 at src:
#   src: e9 d0 d1 d2 d3        jmp dst       ; d = dst - (src + 5)
def jmp_rel32(src: int, dst: int) -> bytes:
    """``jmp dst`` placed at ``src`` (5 bytes)."""
    return b"\xe9" + rel32(src + 5, dst)


# call rel32 at src:
#   src: e8 d0 d1 d2 d3        call dst      ; d = dst - (src + 5)
def call_rel32(src: int, dst: int) -> bytes:
    """``call dst`` placed at ``src`` (5 bytes)."""
    return b"\xe8" + rel32(src + 5, dst)


# jcc rel32 at src (cc = condition nibble, 4 = e, 5 = ne...):
#   src: 0f 8c d0 d1 d2 d3     jcc dst       ; d = dst - (src + 6)
def jcc_rel32(src: int, dst: int, cc: int) -> bytes:
    """``j<cc> dst`` in its rel32 form placed at ``src`` (6 bytes)."""
    return bytes((0x0F, 0x80 | (cc & 0xF))) + rel32(src + 6, dst)


# jmp to any 64-bit address, no register touched:
#   +0: ff 25 00 00 00 00      jmp qword ptr [rip+0]
#   +6: a0 .. a7               dst (8 bytes, little-endian)
def jmp_abs(dst: int) -> bytes:
    """An absolute jump to ``dst`` (14 bytes, position independent)."""
    return b"\xff\x25\x00\x00\x00\x00" + struct.pack("<Q", dst)


# call to any 64-bit address, returning to +16:
#   +0:  ff 15 02 00 00 00     call qword ptr [rip+2]   ; reads the 8 bytes at +8
#   +6:  eb 08                 jmp +16                  ; the callee returns here
#   +8:  a0 .. a7              dst
#   +16: ...
def call_abs(dst: int) -> bytes:
    """An absolute call to ``dst`` that resumes after itself (16 bytes, position independent)."""
    return b"\xff\x15\x02\x00\x00\x00\xeb\x08" + struct.pack("<Q", dst)


# push a 64-bit return address without touching flags or registers:
#   +0:  48 8d 64 24 f8        lea rsp, [rsp-8]
#   +5:  c7 04 24 l0 l1 l2 l3  mov dword ptr [rsp], lo32
#   +12: c7 44 24 04 h0 .. h3  mov dword ptr [rsp+4], hi32
def push_return_address(ret_addr: int) -> bytes:
    """Push ``ret_addr`` as a call would (20 bytes); the flags stay untouched."""
    lo, hi = ret_addr & 0xFFFFFFFF, (ret_addr >> 32) & 0xFFFFFFFF
    return (b"\x48\x8d\x64\x24\xf8" + b"\xc7\x04\x24" + struct.pack("<I", lo)
            + b"\xc7\x44\x24\x04" + struct.pack("<I", hi))


# Saving r11 around the handler call, and pointing it at the return-address slot.
# r11 may be live at a function entry: gcc's interprocedural register allocation
# (-fipa-ra, on at -O2) keeps values in call-clobbered registers across calls to
# local functions that do not clobber them.
#   41 53              push r11
#   4c 8d 5c 24 08     lea  r11, [rsp+8]      ; the slot above the saved r11
#   41 5b              pop  r11
def push_r11() -> bytes:
    """``push r11`` (2 bytes)."""
    return b"\x41\x53"


def lea_r11_rsp(disp: int) -> bytes:
    """``lea r11, [rsp+disp8]`` (5 bytes, flags untouched)."""
    if not -128 <= disp <= 127:
        raise ValueError(f"lea r11, [rsp{disp:+d}]: displacement does not fit in 8 bits")
    return b"\x4c\x8d\x5c\x24" + struct.pack("<b", disp)


def pop_r11() -> bytes:
    """``pop r11`` (2 bytes)."""
    return b"\x41\x5b"


# push imm32 (sign-extended to 64 bits by the CPU; the handler reads the low 32):
#   68 i0 i1 i2 i3
def push_imm32(value: int) -> bytes:
    """``push value`` (5 bytes); ``value`` must fit in 32 bits."""
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"push imm32: {value} does not fit in 32 bits")
    return b"\x68" + struct.pack("<I", value)


# lea r11, [rbp+disp8] (the -pg site's return-address slot, [rbp+8], after push rbp; mov rbp, rsp):
#   4c 8d 5d d8
def lea_r11_rbp(disp: int) -> bytes:
    """``lea r11, [rbp+disp8]`` (4 bytes, flags untouched)."""
    if not -128 <= disp <= 127:
        raise ValueError(f"lea r11, [rbp{disp:+d}]: displacement does not fit in 8 bits")
    return b"\x4c\x8d\x5d" + struct.pack("<b", disp)


#: the single-instruction NOPs the SDM recommends, by length (the disabled form of a call site)
_NOPS = {
    1: b"\x90",                                    # nop
    2: b"\x66\x90",                                # xchg %ax, %ax
    3: b"\x0f\x1f\x00",                            # nopl (%rax)
    4: b"\x0f\x1f\x40\x00",                        # nopl 0x0(%rax)
    5: b"\x0f\x1f\x44\x00\x00",                    # nopl 0x0(%rax,%rax,1)
    6: b"\x66\x0f\x1f\x44\x00\x00",                # nopw 0x0(%rax,%rax,1)
    7: b"\x0f\x1f\x80\x00\x00\x00\x00",            # nopl 0x0(%rax)  (disp32)
    8: b"\x0f\x1f\x84\x00\x00\x00\x00\x00",        # nopl 0x0(%rax,%rax,1)  (disp32)
    9: b"\x66\x0f\x1f\x84\x00\x00\x00\x00\x00",    # nopw 0x0(%rax,%rax,1)  (disp32)
}


def nop(size: int) -> bytes:
    """One NOP instruction of ``size`` bytes (1 to 9)."""
    try:
        return _NOPS[size]
    except KeyError:
        raise ValueError(f"no {size}-byte NOP instruction is generated") from None
