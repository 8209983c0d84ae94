"""Thin, typed wrapper over the ptrace(2) system call (x86_64 only).

Only the requests ktracecli uses are exposed.  Every failure raises
:class:`PtraceError` carrying the errno, so callers can tell ESRCH (the thread
is gone) from real errors.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

PTRACE_PEEKUSER = 3
PTRACE_POKEUSER = 6
PTRACE_CONT = 7
PTRACE_KILL = 8
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_SINGLESTEP = 9
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208

PTRACE_O_TRACESYSGOOD = 0x01
PTRACE_O_TRACEFORK = 0x02
PTRACE_O_TRACEVFORK = 0x04
PTRACE_O_TRACECLONE = 0x08
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACEVFORKDONE = 0x20
PTRACE_O_TRACEEXIT = 0x40

PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_VFORK_DONE = 5
PTRACE_EVENT_EXIT = 6
PTRACE_EVENT_STOP = 128

WALL = 0x40000000  # __WALL: wait for threads and children alike

# offsetof(struct user, u_debugreg) on x86_64
DEBUGREG_OFFSET = 848


class PtraceError(OSError):
    """A ptrace request failed; ``errno`` tells why."""


class UserRegs(ctypes.Structure):
    """``struct user_regs_struct`` of x86_64."""

    _fields_ = [
        (name, ctypes.c_ulonglong)
        for name in (
            "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
            "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags",
            "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
        )
    ]

    def copy(self) -> "UserRegs":
        """Return an independent copy of these registers."""
        clone = UserRegs()
        ctypes.memmove(ctypes.byref(clone), ctypes.byref(self), ctypes.sizeof(UserRegs))
        return clone


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_ptrace = _libc.ptrace
_ptrace.restype = ctypes.c_long
_ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


def _call(request: int, tid: int, addr: int = 0, data: int | ctypes.c_void_p = 0) -> int:
    ctypes.set_errno(0)
    result = _ptrace(request, tid, ctypes.c_void_p(addr), data if isinstance(data, ctypes.c_void_p) else ctypes.c_void_p(data))
    if result == -1:
        err = ctypes.get_errno()
        if err:
            raise PtraceError(err, f"ptrace({request:#x}, {tid}): {os.strerror(err)}")
    return result


def seize(tid: int, options: int) -> None:
    """Attach to ``tid`` without stopping it (PTRACE_SEIZE)."""
    _call(PTRACE_SEIZE, tid, 0, options)


def interrupt(tid: int) -> None:
    """Ask a seized thread to stop (PTRACE_INTERRUPT)."""
    _call(PTRACE_INTERRUPT, tid)


def cont(tid: int, sig: int = 0) -> None:
    """Resume a stopped thread, delivering ``sig`` when non-zero."""
    _call(PTRACE_CONT, tid, 0, sig)


def listen(tid: int) -> None:
    """Leave a group-stopped thread stopped but let it report SIGCONT (PTRACE_LISTEN)."""
    _call(PTRACE_LISTEN, tid)


def singlestep(tid: int, sig: int = 0) -> None:
    """Resume a stopped thread for one instruction (PTRACE_SINGLESTEP).

    Used only to move a thread out of a window being patched: a one-off trap while
    patching, never one per traced call.
    """
    _call(PTRACE_SINGLESTEP, tid, 0, sig)


def syscall(tid: int, sig: int = 0) -> None:
    """Resume until the next system-call entry or exit (PTRACE_SYSCALL)."""
    _call(PTRACE_SYSCALL, tid, 0, sig)


def detach(tid: int, sig: int = 0) -> None:
    """Detach from a stopped thread, delivering ``sig`` when non-zero."""
    _call(PTRACE_DETACH, tid, 0, sig)


def set_options(tid: int, options: int) -> None:
    """Set the PTRACE_O_* options of a stopped thread."""
    _call(PTRACE_SETOPTIONS, tid, 0, options)


def event_msg(tid: int) -> int:
    """The message of the last ptrace event (new thread id, exit status...)."""
    value = ctypes.c_ulong(0)
    _call(PTRACE_GETEVENTMSG, tid, 0, ctypes.c_void_p(ctypes.addressof(value)))
    return value.value


def get_regs(tid: int) -> UserRegs:
    """Read the general-purpose registers of a stopped thread."""
    regs = UserRegs()
    _call(PTRACE_GETREGS, tid, 0, ctypes.c_void_p(ctypes.addressof(regs)))
    return regs


def set_regs(tid: int, regs: UserRegs) -> None:
    """Write the general-purpose registers of a stopped thread."""
    _call(PTRACE_SETREGS, tid, 0, ctypes.c_void_p(ctypes.addressof(regs)))


def siginfo_signo(tid: int) -> int | None:
    """The signal number of a signal-delivery-stop, or None for a group-stop."""
    buf = (ctypes.c_int * 32)()
    try:
        _call(PTRACE_GETSIGINFO, tid, 0, ctypes.c_void_p(ctypes.addressof(buf)))
    except PtraceError as exc:
        if exc.errno == errno.EINVAL:
            return None
        raise
    return buf[0]


def set_debugreg(tid: int, index: int, value: int) -> None:
    """Write hardware debug register ``index`` (0-3, 6 or 7) of a stopped thread."""
    _call(PTRACE_POKEUSER, tid, DEBUGREG_OFFSET + 8 * index, value)


def tgkill(pid: int, tid: int, sig: int) -> None:
    """Send ``sig`` to one thread (the signal waits, pending, while the thread is stopped)."""
    if _tgkill(pid, tid, sig) == -1:
        err = ctypes.get_errno()
        raise PtraceError(err, f"tgkill({pid}, {tid}, {sig}): {os.strerror(err)}")


SYS_TGKILL = 234
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _tgkill(pid: int, tid: int, sig: int) -> int:
    ctypes.set_errno(0)
    return int(_syscall(ctypes.c_long(SYS_TGKILL), ctypes.c_long(pid), ctypes.c_long(tid), ctypes.c_long(sig)))


def stop_signal(status: int) -> int:
    """The signal of a stopped wait status."""
    return (status >> 8) & 0xFF


def stop_event(status: int) -> int:
    """The PTRACE_EVENT_* of a stopped wait status (0 if none)."""
    return (status >> 16) & 0xFF


SYS_KCMP = 312
KCMP_VM = 1


def same_memory(pid1: int, pid2: int) -> bool | None:
    """Whether two processes share one address space (kcmp KCMP_VM); None if the kernel cannot say."""
    ctypes.set_errno(0)
    result = int(_syscall(ctypes.c_long(SYS_KCMP), ctypes.c_long(pid1), ctypes.c_long(pid2),
                          ctypes.c_long(KCMP_VM), ctypes.c_long(0), ctypes.c_long(0)))
    if result < 0:
        return None
    return result == 0
