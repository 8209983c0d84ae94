"""System calls made on behalf of a stopped tracee thread.

The thread's registers are saved, pointed at a ``syscall`` instruction with the
call's arguments, run with PTRACE_SYSCALL to the call's exit, and put back.  No
code of the program is modified: the instruction is found in the vDSO (any
``0f 05`` byte pair works, since the thread stops at the system-call exit before
running anything after it) or in ktracecli's own code region.  This happens a
few times per process while setting up, never per traced call.

A thread held inside a blocking system call (``read``, ``nanosleep``... when
ktracecli attaches or interrupts it) has that call's restart pending: the kernel
rewinds it to the ``syscall`` instruction only on its way out of the signal
path.  Our calls leave the thread at a system-call exit instead, so its
registers alone would hand the program ``-ERESTARTSYS``.  After such a call
the thread is parked again in an interrupt stop (PTRACE_INTERRUPT + resume),
which puts it back on the signal path: the restart happens when it resumes::

    held:     read() ... -ERESTARTSYS, stopped in the signal path
    our call: rip = gadget; syscall; back at a syscall-exit stop; registers restored
    re-park:  PTRACE_INTERRUPT, PTRACE_CONT -> PTRACE_EVENT_STOP in the signal path
    resume:   the kernel sees -ERESTARTSYS: rip -= 2, read() runs again
"""

from __future__ import annotations

import errno
import os
import signal

from ktracecli.errors import ProcessError
from ktracecli.process import ptrace
from ktracecli.process.tracee import Tracee

SYS_CLOSE = 3
SYS_MMAP = 9
SYS_MUNMAP = 11
SYS_OPEN = 2

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x02, 0x10, 0x20
MAP_FIXED_NOREPLACE = 0x100000
SYSCALL_TRAP = signal.SIGTRAP | 0x80
#: -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND, -ERESTART_RESTARTBLOCK
RESTART_CODES = frozenset({-512, -513, -514, -516})


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= (1 << 63) else value


def restart_pending(regs: ptrace.UserRegs) -> bool:
    """True when ``regs`` are those of a thread held inside a system call the kernel will restart."""
    return _signed(regs.orig_rax) >= 0 and _signed(regs.rax) in RESTART_CODES


class RemoteCaller:
    """Makes system calls in one stopped thread of a tracee."""

    def __init__(self, tracee: Tracee, tid: int) -> None:
        self.tracee = tracee
        self.tid = tid
        self.gadget = self._find_gadget()

    def _find_gadget(self) -> int:
        for m in self.tracee.maps():
            if m.path == "[vdso]" and m.executable:
                at = self.tracee.read(m.start, m.end - m.start).find(b"\x0f\x05")
                if at >= 0:
                    return m.start + at
        for m in self.tracee.maps():
            if m.executable and m.path.startswith("/"):
                at = self.tracee.read(m.start, m.end - m.start).find(b"\x0f\x05")
                if at >= 0:
                    return m.start + at
        raise ProcessError(f"no syscall instruction found in process {self.tracee.pid}")

    def _to_syscall_stop(self) -> None:
        while True:
            ptrace.syscall(self.tid, 0)
            status = self.tracee.wait_stop(self.tid)
            if not os.WIFSTOPPED(status):
                raise ProcessError(f"thread {self.tid} died during set-up")
            sig = ptrace.stop_signal(status)
            if sig == SYSCALL_TRAP:
                return
            if ptrace.stop_event(status) == 0 and sig != signal.SIGTRAP:
                # a signal arrived meanwhile: keep it for when the thread resumes
                self.tracee.hold_signal(self.tid, sig)

    def call(self, nr: int, *args: int) -> int:
        """Run system call ``nr`` with ``args`` in the thread; returns the raw result."""
        saved = ptrace.get_regs(self.tid)
        regs = saved.copy()
        regs.rax, regs.orig_rax, regs.rip = nr, 0xFFFFFFFFFFFFFFFF, self.gadget
        for reg, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
            setattr(regs, reg, value & 0xFFFFFFFFFFFFFFFF)
        ptrace.set_regs(self.tid, regs)
        try:
            self._to_syscall_stop()  # entry
            self._to_syscall_stop()  # exit
            result = ptrace.get_regs(self.tid).rax
        finally:
            ptrace.set_regs(self.tid, saved)
            if restart_pending(saved):
                self._repark()
        return _signed(result)

    def _repark(self) -> None:
        """Stop the thread again in the signal path, so that its held system call restarts on resume."""
        ptrace.interrupt(self.tid)
        ptrace.cont(self.tid, 0)
        while True:
            status = self.tracee.wait_stop(self.tid)
            if not os.WIFSTOPPED(status):
                raise ProcessError(f"thread {self.tid} died during set-up")
            if ptrace.stop_event(status) == ptrace.PTRACE_EVENT_STOP:
                return
            sig = ptrace.stop_signal(status)
            if ptrace.stop_event(status) == 0 and sig not in (signal.SIGTRAP, SYSCALL_TRAP):
                self.tracee.hold_signal(self.tid, sig)
            ptrace.cont(self.tid, 0)

    def checked(self, what: str, nr: int, *args: int) -> int:
        """Like :meth:`call`, raising ProcessError with ``what`` on a -errno result."""
        result = self.call(nr, *args)
        if -4096 < result < 0:
            raise ProcessError(f"{what} failed in process {self.tracee.pid}: {os.strerror(-result)}")
        return result

    def mmap(self, addr: int, size: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
        """mmap in the tracee; MAP_FIXED_NOREPLACE requests are checked to land where asked."""
        result = self.call(SYS_MMAP, addr, size, prot, flags, fd, offset)
        if -4096 < result < 0:
            if result == -errno.EEXIST:
                raise LookupError(f"{addr:#x} is taken")
            raise ProcessError(f"mmap failed in process {self.tracee.pid}: {os.strerror(-result)}")
        if flags & MAP_FIXED_NOREPLACE and result != addr:
            self.call(SYS_MUNMAP, result, size)
            raise LookupError(f"{addr:#x} is taken")
        return result

    def map_file(self, path_addr: int, size: int, fixed_addr: int = 0) -> int:
        """Open the file whose NUL-terminated name is at ``path_addr`` and map it shared."""
        fd = self.checked("open of the ring buffer file", SYS_OPEN, path_addr, os.O_RDWR | os.O_CLOEXEC)
        try:
            flags = MAP_SHARED | (MAP_FIXED if fixed_addr else 0)
            return self.mmap(fixed_addr, size, PROT_READ | PROT_WRITE, flags, fd, 0)
        finally:
            self.call(SYS_CLOSE, fd)
