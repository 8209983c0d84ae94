"""The ktrace engine's safety analysis and stubs, on a library gcc builds at test time.

The last test patches the library inside a forked child and calls the patched
functions through ctypes: the stubs must call the handler and then behave exactly
like the original code.
"""

from __future__ import annotations

import collections
import ctypes
import mmap
import os
import struct
import subprocess
import time
from pathlib import Path

import pytest

from ktracecli.elf import ElfImage
from ktracecli.interface import Analysis
from ktracecli_ktrace.analysis import analyze, jump_table_targets
from ktracecli_ktrace.site import KtraceSite
from ktracecli.arch.x86_64.handler_call import HEAD_SIZE as STUB_HEAD_SIZE
from ktracecli.arch.x86_64.handler_call import ON
from ktracecli_ktrace.engine import KtraceEngine

LIB_SOURCE = r"""
__attribute__((visibility("hidden"))) int counter = 42;

__attribute__((noinline, visibility("hidden"))) int helper(int x) { return x * 3 + counter; }

int cet_fn(int x) { return helper(x) * 5 + 1; }
void cet_empty(void) {}

__attribute__((noinline)) int switchy(int x, int y)
{
    switch (x) {
    case 0: return helper(y);
    case 1: return helper(y + 1) * 2;
    case 2: return y * y - 3;
    case 3: return helper(y) ^ 77;
    case 4: return y << 3;
    case 5: return helper(7) - y;
    default: return -1;
    }
}

__asm__(
    ".text\n"
    ".globl rip_first\n .type rip_first, @function\n"
    "rip_first:\n"
    "  mov counter(%rip), %eax\n"        /* 8b 05 <disp32>: the whole window */
    "  add $1, %eax\n"
    "  ret\n"
    ".size rip_first, .-rip_first\n"

    ".globl call_first\n .type call_first, @function\n"
    "call_first:\n"
    "  call helper\n"                    /* e8 <rel32>: relocated as push + jmp */
    "  add $1, %eax\n"
    "  ret\n"
    ".size call_first, .-call_first\n"

    ".globl short_jcc\n .type short_jcc, @function\n"
    "short_jcc:\n"
    "  test %edi, %edi\n"                /* 85 ff */
    "  je 1f\n"                          /* 74 06 -> 0f 84 <rel32> */
    "  mov $7, %eax\n"                   /* b8 07 00 00 00 */
    "  ret\n"
    "1: mov $9, %eax\n"
    "  ret\n"
    ".size short_jcc, .-short_jcc\n"

    ".globl thunk\n .type thunk, @function\n"
    "thunk:\n"
    "  {disp32} jmp helper\n"            /* e9 <rel32>: a tail-call thunk */
    ".size thunk, .-thunk\n"

    ".globl too_short\n .type too_short, @function\n"
    "too_short:\n"
    "  xor %eax, %eax\n"
    "  ret\n"
    ".size too_short, .-too_short\n"

    ".globl ends_early\n .type ends_early, @function\n"
    "ends_early:\n"
    "  xor %eax, %eax\n"
    "  ret\n"
    "  nop; nop; nop; nop\n"
    ".size ends_early, .-ends_early\n"

    ".globl branch_into\n .type branch_into, @function\n"
    "branch_into:\n"
    "  xor %eax, %eax\n"                 /* bytes 0-1 */
    "2: add $1, %eax\n"                  /* bytes 2-4: the loop comes back here */
    "  cmp %edi, %eax\n"
    "  jl 2b\n"
    "  ret\n"
    ".size branch_into, .-branch_into\n"

    ".globl table_into\n .type table_into, @function\n"
    "table_into:\n"
    "  xor %eax, %eax\n"
    "3: add $1, %eax\n"                  /* byte 2: a jump-table target */
    "  cmp $1, %edi\n"
    "  ja 4f\n"
    "  mov %edi, %edi\n"
    "  lea .Ltab(%rip), %rdx\n"
    "  movslq (%rdx,%rdi,4), %rcx\n"
    "  add %rdx, %rcx\n"
    "  jmp *%rcx\n"
    "4: ret\n"
    ".size table_into, .-table_into\n"
    ".section .rodata\n .align 4\n"
    ".Ltab: .long 3b-.Ltab, 4b-.Ltab\n"
    ".text\n"
);
"""


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory, gcc: str) -> Path:
    root = tmp_path_factory.mktemp("ktrace")
    src = root / "kt.c"
    src.write_text(LIB_SOURCE)
    out = root / "libkt.so"
    subprocess.run([gcc, "-O2", "-fPIC", "-shared", "-fcf-protection=full", "-o", str(out), str(src)],
                   check=True)
    return out


@pytest.fixture(scope="module")
def image(lib: Path) -> ElfImage:
    return ElfImage.open(str(lib))


@pytest.fixture(scope="module")
def analysis(image: ElfImage) -> Analysis:
    return analyze(image)


def site(analysis: Analysis, name: str) -> KtraceSite:
    found = [s for s in analysis.sites if name in s.names]
    assert found, f"{name} refused: {[r.reason for r in analysis.refusals if r.name == name]}"
    assert isinstance(found[0], KtraceSite)
    return found[0]


def reason(analysis: Analysis, name: str) -> str:
    found = [r.reason for r in analysis.refusals if r.name == name]
    assert found, f"{name} was not refused"
    return found[0]


def vaddr(image: ElfImage, name: str) -> int:
    return next(s.vaddr for s in image.functions() if s.name == name)


# ----------------------------------------------------------------------------- refusals


def test_too_short(analysis: Analysis) -> None:
    assert reason(analysis, "too_short") == "too short: 3 bytes, the patch window needs 5"


def test_too_short_after_endbr64(analysis: Analysis) -> None:
    assert reason(analysis, "cet_empty") == "too short: 1 bytes, the patch window needs 5"


def test_ret_inside_window(analysis: Analysis) -> None:
    assert reason(analysis, "ends_early") == "ends inside the patch window: ret at +2"


def test_branch_into_window(analysis: Analysis, image: ElfImage) -> None:
    # jl 2b sits at +7 (xor 2 + add 3 + cmp 2) and goes to byte 2
    src = vaddr(image, "branch_into") + 7
    assert reason(analysis, "branch_into") == (
        f"branch target inside patch window: jump from {src:#x} into byte 2")


def test_jump_table_into_window(analysis: Analysis) -> None:
    assert reason(analysis, "table_into").startswith("jump table may target the patch window: table at 0x")
    assert reason(analysis, "table_into").endswith("holds byte 2")


def test_gcc_switch_table_is_found_and_function_kept(image: ElfImage, analysis: Analysis) -> None:
    fn = next(s for s in image.functions() if s.name == "switchy")
    targets = jump_table_targets(image)
    inside = [t for t in targets if fn.vaddr < t < fn.vaddr + fn.size]
    assert len(inside) >= 5, "the notrack jmp table of switchy was not decoded"
    assert site(analysis, "switchy").window_vaddr == fn.vaddr + 4


# ----------------------------------------------------------------------------- sites


H = STUB_HEAD_SIZE  # the stub's handler-call head, before the relocated window


def test_rip_relative_first_instruction(analysis: Analysis, image: ElfImage) -> None:
    s = site(analysis, "rip_first")
    assert s.window_vaddr == s.vaddr and s.window[:2] == b"\x8b\x05" and len(s.window) == 6
    counter = s.vaddr + 6 + struct.unpack("<i", s.window[2:6])[0]
    assert image.exec_section_at(counter) is None and counter > s.vaddr   # the data of "counter"
    stub, patch = KtraceEngine().build(s, 0x10000000, 0x10000000 + 0x200000, 0x10000000 + 0x300000, 3)
    moved = stub[H:H + 6]
    assert moved[:2] == b"\x8b\x05"
    new_disp = struct.unpack("<i", moved[2:])[0]
    assert 0x10200000 + H + 6 + new_disp == 0x10000000 + counter
    assert stub[H + 6:] == b"\xe9" + struct.pack("<i", (0x10000000 + s.vaddr + 6) - (0x10200000 + H + 11))
    assert patch.original == s.window and patch.new[0] == 0xE9 and patch.new[5:] == b"\xcc"


def test_relative_call_first(analysis: Analysis, image: ElfImage) -> None:
    s = site(analysis, "call_first")
    assert s.window[0] == 0xE8 and len(s.window) == 5
    bias, stub_addr = 0x20000000, 0x20100000
    stub, _ = KtraceEngine().build(s, bias, stub_addr, stub_addr + 0x1000, 1)
    ret = bias + s.vaddr + 5
    assert stub[H:H + 20] == (b"\x48\x8d\x64\x24\xf8" + b"\xc7\x04\x24" + struct.pack("<I", ret & 0xFFFFFFFF)
                           + b"\xc7\x44\x24\x04" + struct.pack("<I", ret >> 32))
    helper = vaddr(image, "helper")
    assert stub[H + 20:] == b"\xe9" + struct.pack("<i", bias + helper - (stub_addr + H + 25))


def test_short_jcc_in_window(analysis: Analysis, image: ElfImage) -> None:
    s = site(analysis, "short_jcc")
    assert s.window == bytes.fromhex("85ff7406b807000000")
    stub, patch = KtraceEngine().build(s, 0, 0x100000, 0x200000, 0)
    target = s.vaddr + 4 + 6   # je at +2 (74 06): "1:" after mov (5) and ret (1)
    assert stub[H:H + 2] == b"\x85\xff"
    assert stub[H + 2:H + 4] == b"\x0f\x84" and struct.unpack("<i", stub[H + 4:H + 8])[0] == target - (0x100000 + H + 8)
    assert patch.new == b"\xe9" + struct.pack("<i", 0x100000 - (s.vaddr + 5)) + b"\xcc" * 4


def test_tail_call_thunk_is_patchable(analysis: Analysis) -> None:
    s = site(analysis, "thunk")
    stub, _ = KtraceEngine().build(s, 0, 0x100000, 0x200000, 0)
    assert len(stub) == H + 5, "a relocated jmp needs no jump back"


def test_endbr64_stays_in_place(analysis: Analysis) -> None:
    s = site(analysis, "cet_fn")
    assert s.window_vaddr == s.vaddr + 4 and not s.window.startswith(b"\xf3\x0f\x1e\xfa")


def test_stub_head_follows_handler_abi(analysis: Analysis) -> None:
    s = site(analysis, "rip_first")
    stub, _ = KtraceEngine().build(s, 0, 0x100000, 0x180000, 0x1234)
    r = 0x100011  # the return address of the call to the handler
    assert stub[:STUB_HEAD_SIZE] == (
        b"\x41\x53" + b"\x4c\x8d\x5c\x24\x09"           # push r11; lea r11, [rsp+9] (slot + 1: by call)
        + b"\x68\x34\x12\x00\x00"                      # push 0x1234
        + b"\xe8" + struct.pack("<i", 0x180000 - r)      # call handler
        + b"\x41\xff\xe3"                              # R: jmp r11
        + b"\x41\x5b" + b"\xe8" + struct.pack("<i", 8)  # R+3: pop r11; call R+18
        + b"\xff\x25" + struct.pack("<i", 0x180000 - 8 - (r + 16))  # R+10: jmp [handler-8]
        + b"\x41\x5b")                                 # R+16: pop r11
    assert len(stub) <= KtraceEngine().detour_size(s)


def test_out_of_range_stub_is_a_patch_error(analysis: Analysis) -> None:
    from ktracecli.errors import PatchError
    with pytest.raises(PatchError, match="out of reach"):
        KtraceEngine().build(site(analysis, "rip_first"), 0, 0x7F0000000000, 0x7F0000001000, 0)


def test_aliases_are_grouped_with_a_canonical_name() -> None:
    a = analyze(ElfImage.open("/lib/x86_64-linux-gnu/libc.so.6"))
    by_name = {n: s for s in a.sites for n in s.names}
    assert by_name["malloc"].name == "malloc" and "__libc_malloc" in by_name["malloc"].aliases
    addrs = [s.vaddr for s in a.sites] + [r.vaddr for r in a.refusals]
    assert len(addrs) == len(set(addrs))


# ----------------------------------------------------------------------------- coverage


@pytest.mark.parametrize("path", ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/bin/python3.11"])
def test_coverage_of_real_binaries(path: str) -> None:
    began = time.perf_counter()
    a = analyze(ElfImage.open(path))
    elapsed = time.perf_counter() - began
    total = len(a.sites) + len(a.refusals)
    share = len(a.sites) / total
    keys = collections.Counter(r.reason.split(":")[0] for r in a.refusals)
    assert share >= 0.96, f"{path}: {share:.1%} traceable, refusals {keys.most_common(3)}"
    assert elapsed < 10, f"{path}: analysis took {elapsed:.1f}s"
    assert all(len(s.window) >= 5 for s in a.sites if isinstance(s, KtraceSite))


# ----------------------------------------------------------------------------- run it


# handler at H, per the handler ABI; it records [r11 & -8], the site index and a hit count at D,
# and goes on at the stub's plain continuation:
#   50                 push rax
#   4c 89 d8           mov  rax, r11
#   48 83 e0 f8        and  rax, -8             ; bit 0 says the stub could hook by a call
#   48 8b 00           mov  rax, [rax]          ; the traced function's return address
#   48 a3 <D:8>        movabs [D], rax
#   8b 44 24 10        mov  eax, [rsp+16]       ; the site index
#   a3 <D+8:8>         movabs [D+8], eax
#   48 b8 <D+16:8>     movabs rax, D+16
#   48 ff 00           inc  qword [rax]
#   58                 pop  rax
#   4c 8b 1c 24        mov  r11, [rsp]          ; R, the return into the stub
#   4d 8d 5b 10        lea  r11, [r11+16]       ; R + ON
#   c2 08 00           ret  8
def handler_code(data: int) -> bytes:
    assert ON == 0x10
    return (b"\x50\x4c\x89\xd8\x48\x83\xe0\xf8\x48\x8b\x00\x48\xa3" + struct.pack("<Q", data)
            + b"\x8b\x44\x24\x10\xa3" + struct.pack("<Q", data + 8) + b"\x48\xb8" + struct.pack("<Q", data + 16)
            + b"\x48\xff\x00\x58\x4c\x8b\x1c\x24\x4d\x8d\x5b\x10\xc2\x08\x00")


def _run_patched(lib: Path, analysis: Analysis) -> str:
    """In the calling (forked) process: patch, call, compare; '' on success, else why."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    dll = ctypes.CDLL(str(lib))
    maps = [line.split() for line in open("/proc/self/maps") if line.rstrip().endswith(str(lib))]
    base = next(int(m[0].split("-")[0], 16) for m in maps if m[2] == "00000000")
    lib_end = max(int(m[0].split("-")[1], 16) for m in maps)
    rwx = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
    area = libc.mmap(base - 0x1000000, 0x10000, rwx, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if abs(area - base) > 1 << 30:
        return f"stub area {area:#x} is far from {base:#x}"
    data, handler = area, area + 0x100
    ctypes.memmove(handler, handler_code(data), len(handler_code(data)))
    calls = {"rip_first": ((), 43), "call_first": ((5,), 58), "short_jcc": ((0,), 9),
             "thunk": ((2,), 48), "cet_fn": ((2,), 241), "switchy": ((3, 1), (45 ^ 77))}
    results = {name: getattr(dll, name)(*args) for name, (args, _want) in calls.items()}
    stub_at = area + 0x1000
    for index, name in enumerate(calls):
        s = site(analysis, name)
        stub, patch = KtraceEngine().build(s, base, stub_at, handler, index)
        ctypes.memmove(stub_at, stub, len(stub))
        stub_at += (len(stub) + 15) & ~15
        page = patch.addr & ~0xFFF
        libc.mprotect(page, 0x2000, rwx)
        if ctypes.string_at(patch.addr, len(patch.original)) != patch.original:
            return f"{name}: original bytes differ"
        ctypes.memmove(patch.addr, patch.new, len(patch.new))
    for index, (name, (args, want)) in enumerate(calls.items()):
        before = ctypes.c_uint64.from_address(data + 16).value
        got = getattr(dll, name)(*args)
        if got != want or got != results[name]:
            return f"{name}{args}: {got} after patching, {results[name]} before, {want} expected"
        if ctypes.c_uint64.from_address(data + 16).value != before + 1:
            return f"{name}: the handler ran {ctypes.c_uint64.from_address(data + 16).value - before} times"
        if ctypes.c_uint32.from_address(data + 8).value != index:
            return f"{name}: the handler saw index {ctypes.c_uint32.from_address(data + 8).value}"
        ret = ctypes.c_uint64.from_address(data).value
        if base <= ret < lib_end or area <= ret < area + 0x10000:
            return f"{name}: [r11] = {ret:#x} is not the caller's return address"
    return ""


def test_patched_functions_run_and_call_the_handler(lib: Path, analysis: Analysis) -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child patches its own copy of the library
        os.close(read)
        try:
            message = _run_patched(lib, analysis) or "ok"
        except BaseException as exc:   # report anything to the parent, never return into pytest
            message = f"{type(exc).__name__}: {exc}"
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    message = os.read(read, 4096).decode()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), f"the patched child died: status {status:#x}"
    assert message == "ok", message
