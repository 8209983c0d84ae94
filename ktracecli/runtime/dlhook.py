"""Seeing ``dlopen`` and ``dlclose`` as they happen: a hook on the loader's debugger breakpoint.

The dynamic loader calls ``_dl_debug_state()`` (``r_debug.r_brk``, an empty
function) after each change of the link map, with ``r_state`` RT_CONSISTENT
once a new library is mapped and relocated and before any of its code runs
(its constructors come later).  Debuggers put a breakpoint there.  A hardware
or int3 breakpoint would kill the program with SIGTRAP if ktracecli died, so
ktracecli patches the function to jump to a hook of its own instead::

    _dl_debug_state (glibc: c3, then NOP padding up to the next function):
        before:  c3 66 66 2e 0f ...          ret ; padding
        after:   e9 <hook:rel32> 0f ...      jmp hook    (5 bytes: the ret and 4 bytes of padding)

    hook (near the loader, never freed), on the shared page of this process:
        if now - heartbeat > STALE: ret           ; ktracecli is gone or frozen: never wait
        ticket = ++dl_request                     ; lock xadd
        repeat up to TRIES times:
            if dl_ack >= ticket: ret              ; ktracecli has patched the new library
            futex_wait(&dl_ack, dl_ack, 50 ms)    ; ktracecli wakes it (a shared futex)
            if now - heartbeat > STALE: ret
        ret

The consumer thread sees ``dl_request`` move, wakes the ptrace thread, which
holds every thread, reads ``/proc/PID/maps``, enables what the ``:mod:`` rules
select in the new modules, and acknowledges.  A system call per map change,
none per traced call; and if ktracecli dies, the hook waits at most STALE.
"""

from __future__ import annotations

from dataclasses import dataclass

from ktracecli.arch.x86_64 import DecodeError, Kind, X86, jmp_rel32
from ktracecli.arch.x86_64.assembler import assemble
from ktracecli.elf.image import ElfImage
from ktracecli.errors import ProgramError
from ktracecli.model import Patch
from ktracecli.process.tracee import Tracee
from ktracecli.runtime.installer import LoadedModule
from ktracecli.runtime.layout import CTRL_DL_ACK, CTRL_DL_REQUEST, CTRL_HEARTBEAT, RuntimeLayout

SYMBOL = "_dl_debug_state"
ENDBR64 = b"\xf3\x0f\x1e\xfa"
RET = 0xC3
PATCH_SIZE = 5
#: futex waits of 50 ms each: a dlopen waits at most a second for ktracecli
TRIES = 20
WAIT_NS = 50_000_000
#: how long without a heartbeat before ktracecli counts as gone
STALE_SECONDS = 0.3
HOOK_SIZE = 4096


@dataclass(frozen=True)
class HookSite:
    """Where the loader's ``_dl_debug_state`` is in one process, and its bytes."""

    module: LoadedModule
    addr: int
    original: bytes


def _is_loader(module: LoadedModule) -> bool:
    return module.name.startswith("ld-") or module.name.startswith("ld.so")


def find_site(tracee: Tracee, modules: list[LoadedModule], x86: X86) -> HookSite | None:
    """The loader's ``_dl_debug_state`` in ``modules`` if it has the shape the hook needs, else None.

    The shape: an optional endbr64, ``ret``, and NOP or int3 padding covering the
    rest of the 5 patched bytes, no other function starting inside them.
    """
    for module in modules:
        if not _is_loader(module):
            continue
        try:
            with ElfImage.open(module.path) as image:
                symbols = image.functions()
        except ProgramError:
            continue
        starts = {s.vaddr for s in symbols}
        for sym in symbols:
            if sym.name != SYMBOL:
                continue
            addr = module.bias + sym.vaddr
            if any(sym.vaddr < v < sym.vaddr + PATCH_SIZE for v in starts):
                return None
            code = tracee.read(addr, 32)
            if _shape_ok(code, addr, x86):
                return HookSite(module, addr, code[:PATCH_SIZE])
            return None
    return None


def _shape_ok(code: bytes, addr: int, x86: X86) -> bool:
    at = len(ENDBR64) if code.startswith(ENDBR64) else 0
    if code[at] != RET:
        return False
    at += 1
    while at < PATCH_SIZE:
        try:
            (insn,) = x86.decode(code[at:at + 15], addr + at, 1)
        except (DecodeError, ValueError):
            return False
        if insn.mnemonic != "nop" and insn.kind is not Kind.TRAP:
            return False
        at += insn.size
    return True


def hook_source(layout: RuntimeLayout, timeout_addr: int, stale_ticks: int) -> str:
    """Keystone source of the hook (see the module docstring); ``timeout_addr`` holds a timespec."""
    ctrl = layout.base
    return f"""
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    movabs rsi, {ctrl:#x}
    rdtsc
    shl rdx, 32
    or rax, rdx
    sub rax, qword ptr [rsi+{CTRL_HEARTBEAT}]
    movabs rdx, {stale_ticks:#x}
    cmp rax, rdx
    ja .Lout
    mov eax, 1
    lock xadd dword ptr [rsi+{CTRL_DL_REQUEST}], eax
    lea r8d, [rax+1]
    mov r9d, {TRIES}
.Lwait:
    mov edx, dword ptr [rsi+{CTRL_DL_ACK}]
    mov eax, edx
    sub eax, r8d
    jns .Lout
    lea rdi, [rsi+{CTRL_DL_ACK}]
    push rsi
    xor esi, esi
    movabs r10, {timeout_addr:#x}
    mov eax, 202
    syscall
    pop rsi
    rdtsc
    shl rdx, 32
    or rax, rdx
    sub rax, qword ptr [rsi+{CTRL_HEARTBEAT}]
    movabs rdx, {stale_ticks:#x}
    cmp rax, rdx
    ja .Lout
    dec r9d
    jnz .Lwait
.Lout:
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    ret
"""


def build(site: HookSite, region_addr: int, layout: RuntimeLayout, ns_per_tick: float) -> tuple[bytes, Patch]:
    """The hook's bytes (a timespec, then the code) at ``region_addr``, and the patch that calls it."""
    timespec = (0).to_bytes(8, "little") + WAIT_NS.to_bytes(8, "little")
    code_addr = region_addr + len(timespec)
    stale_ticks = int(STALE_SECONDS * 1e9 / ns_per_tick)
    code = assemble(hook_source(layout, region_addr, stale_ticks), code_addr)
    jump = jmp_rel32(site.addr, code_addr)
    return timespec + code, Patch(site.addr, site.original, jump)
