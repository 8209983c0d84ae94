"""x86_64 decoding, relocation and encoding, on hand-written bytes and gcc-built code."""

from __future__ import annotations

import struct
import subprocess
import time
from pathlib import Path

import pytest

from ktracecli.arch.x86_64 import (
    Kind,
    RangeError,
    RelocationError,
    X86,
    call_rel32,
    jmp_abs,
    jmp_rel32,
    push_return_address,
    relocate,
)
from ktracecli.elf import ElfImage

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"


@pytest.fixture(scope="module")
def x86() -> X86:
    return X86()


def rel(value: int) -> bytes:
    return struct.pack("<i", value)


# ----------------------------------------------------------------------------- encoders


def test_jmp_and_call_rel32() -> None:
    assert jmp_rel32(0x1000, 0x2000) == b"\xe9" + rel(0x2000 - 0x1005)
    assert call_rel32(0x2000, 0x1000) == b"\xe8" + rel(0x1000 - 0x2005)
    assert jmp_rel32(0x1000, 0x1000 + 5 + (1 << 31) - 1)[1:] == b"\xff\xff\xff\x7f"


def test_rel32_out_of_range_raises() -> None:
    with pytest.raises(RangeError, match="out of rel32 reach"):
        jmp_rel32(0x1000, 0x1005 + (1 << 31))
    with pytest.raises(RangeError):
        call_rel32(0x7F0000000000, 0x400000)


def test_push_return_address_bytes() -> None:
    assert push_return_address(0x7F1122334455) == bytes.fromhex(
        "488d6424f8" "c70424" "55443322" "c7442404" "117f0000")


# ----------------------------------------------------------------------------- decode


def test_decode_kinds(x86: X86) -> None:
    code = bytes.fromhex("7410" "e2fe" "e8 00000000" "ff2500000000" "c3" "cc")
    insns = x86.decode(code, 0x1000)
    assert [i.kind for i in insns] == [Kind.JCC_REL, Kind.LOOP_REL, Kind.CALL_REL, Kind.JMP_IND,
                                       Kind.RET, Kind.TRAP]
    assert insns[0].target == 0x1012 and insns[0].cc == 4
    assert insns[3].rip_target == 0x1009 + 6


def test_decode_stops_when_enough_bytes(x86: X86) -> None:
    insns = x86.decode(bytes.fromhex("55" "4889e5" "4883ec10" "c3"), 0x400, 5)
    assert [i.size for i in insns] == [1, 3, 4]


# ----------------------------------------------------------------------------- relocate


def test_relocate_rip_relative_rewrites_disp(x86: X86) -> None:
    # mov eax, [rip+0x10] at 0x1000 reads 0x1016
    insns = x86.decode(bytes.fromhex("8b0510000000"), 0x1000)
    out = relocate(insns, 0x5000)
    assert out.code == b"\x8b\x05" + rel(0x1016 - 0x5006)
    assert out.falls_through


def test_relocate_rip_relative_with_immediate(x86: X86) -> None:
    # cmp byte ptr [rip+0x20], 1 (disp before the imm8; rip is the end of the instruction)
    insns = x86.decode(bytes.fromhex("803d2000000001"), 0x1000)
    assert insns[0].rip_target == 0x1027
    assert relocate(insns, 0x3000).code == b"\x80\x3d" + rel(0x1027 - 0x3007) + b"\x01"


def test_relocate_rip_relative_out_of_reach(x86: X86) -> None:
    insns = x86.decode(bytes.fromhex("488d0510000000"), 0x1000)
    with pytest.raises(RelocationError, match="RIP-relative operand of `lea rax"):
        relocate(insns, 0x1000 + (3 << 30))


def test_relocate_short_jcc_becomes_rel32(x86: X86) -> None:
    # test edi, edi; je +0x10; mov eax, 1
    insns = x86.decode(bytes.fromhex("85ff" "7410" "b801000000"), 0x1000, 5)
    out = relocate(insns, 0x9000)
    assert out.code == (b"\x85\xff" + b"\x0f\x84" + rel(0x1014 - (0x9002 + 6))
                        + b"\xb8\x01\x00\x00\x00")


def test_relocate_jcc_out_of_reach_uses_inverted_skip(x86: X86) -> None:
    insns = x86.decode(bytes.fromhex("7510"), 0x1000)
    out = relocate(insns, 0x1000 + (4 << 30))
    assert out.code == b"\x74\x0e" + jmp_abs(0x1012)


def test_relocate_last_call_pushes_original_return(x86: X86) -> None:
    insns = x86.decode(bytes.fromhex("e8fb0f0000"), 0x1000)   # call 0x2000
    out = relocate(insns, 0x8000)
    head = push_return_address(0x1005)
    assert out.code == head + b"\xe9" + rel(0x2000 - (0x8000 + len(head) + 5))
    assert not out.falls_through


def test_relocate_call_not_last_is_a_real_call(x86: X86) -> None:
    insns = x86.decode(bytes.fromhex("e8fb0f0000" "90"), 0x1000)
    out = relocate(insns, 0x8000)
    assert out.code == b"\xe8" + rel(0x2000 - 0x8005) + b"\x90"
    assert out.falls_through


def test_relocate_last_got_call(x86: X86) -> None:
    insns = x86.decode(bytes.fromhex("ff15fa0f0000"), 0x1000)   # call [rip+0xffa] -> [0x2000]
    out = relocate(insns, 0x8000)
    head = push_return_address(0x1006)
    assert out.code == head + b"\xff\x25" + rel(0x2000 - (0x8000 + len(head) + 6))


def test_relocate_jmp_rel8_last_and_not_last(x86: X86) -> None:
    out = relocate(x86.decode(bytes.fromhex("eb10"), 0x1000), 0x4000)
    assert out.code == b"\xe9" + rel(0x1012 - 0x4005) and not out.falls_through
    with pytest.raises(RelocationError, match="followed by displaced instructions"):
        relocate(x86.decode(bytes.fromhex("eb10" "90"), 0x1000), 0x4000)


def test_relocate_far_jmp_uses_absolute_form(x86: X86) -> None:
    out = relocate(x86.decode(bytes.fromhex("e900010000"), 0x1000), 0x1000 + (5 << 30))
    assert out.code == jmp_abs(0x1105)


@pytest.mark.parametrize("code, word", [("e2fe", "loop"), ("e3fe", "loop/jrcxz"),
                                        ("c7f800000000", "implicit RIP-relative")])
def test_relocate_refuses(x86: X86, code: str, word: str) -> None:
    with pytest.raises(RelocationError, match=word):
        relocate(x86.decode(bytes.fromhex(code), 0x1000), 0x2000)


def test_relocate_refuses_branch_into_window(x86: X86) -> None:
    # xor eax, eax; jne -> byte 1 of the window
    with pytest.raises(RelocationError, match="branches into the displaced bytes"):
        relocate(x86.decode(bytes.fromhex("31c0" "75fd" "90"), 0x1000), 0x2000)


# ----------------------------------------------------------------------------- scan


SCAN_ASM = r"""
    .text
    .hidden g
    .globl f
    .type f, @function
f:  xor %eax, %eax
1:  add $1, %eax
    cmp %edi, %eax
    jl 1b
    je 2f
    call g
    loop 1b
2:  ret
    .size f, .-f
    .globl g
    .type g, @function
g:  ret
    .size g, .-g
"""


def test_scan_finds_every_direct_branch(tmp_path: Path, gcc: str, x86: X86) -> None:
    src = tmp_path / "scan.s"
    src.write_text(SCAN_ASM)
    obj = tmp_path / "scan.so"
    subprocess.run([gcc, "-shared", "-nostdlib", "-o", str(obj), str(src)], check=True)
    image = ElfImage.open(str(obj))
    f = next(s for s in image.functions() if s.name == "f")
    g = next(s for s in image.functions() if s.name == "g")
    scan = x86.scan(image.exec_sections(), [f.vaddr, g.vaddr])
    found = {(s - f.vaddr, t - f.vaddr) for s, t in scan.branches_into(f.vaddr, g.vaddr + 1)}
    # jl 1b at +7, je 2f at +9, call g at +11, loop 1b at +16; 1b is +2, 2f is +18
    assert found == {(7, 2), (9, 18), (11, g.vaddr - f.vaddr), (16, 2)}


def test_scan_of_libc_is_fast(x86: X86) -> None:
    image = ElfImage.open(LIBC)
    starts = [s.vaddr for s in image.functions()]
    began = time.perf_counter()
    scan = x86.scan(image.exec_sections(), starts)
    elapsed = time.perf_counter() - began
    assert elapsed < 3.0, f"libc scan took {elapsed:.2f}s"
    assert scan.instructions > 200_000 and len(scan.targets) > 30_000
