"""A traced process: its threads under ptrace, its memory, and starting it.

All ptrace requests must come from the one thread that attached, so a
:class:`Tracee` is only ever driven from ktracecli's main thread.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import struct
from dataclasses import dataclass, field

from ktracecli.errors import ProcessError, ProgramError
from ktracecli.process import ptrace
from ktracecli.process.pids import kill_quietly
from ktracecli.process.maps import Mapping, read_maps

OPTIONS = (
    ptrace.PTRACE_O_TRACESYSGOOD
    | ptrace.PTRACE_O_TRACECLONE
    | ptrace.PTRACE_O_TRACEFORK
    | ptrace.PTRACE_O_TRACEVFORK
    | ptrace.PTRACE_O_TRACEEXEC
    | ptrace.PTRACE_O_TRACEEXIT
    | ptrace.PTRACE_O_TRACEVFORKDONE
)
# No PTRACE_O_EXITKILL: if ktracecli dies, the kernel detaches and the program runs on.

AT_ENTRY = 9
GROUP_STOP_SIGNALS = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}


@dataclass
class Tracee:
    """One traced process (thread group) and the state of its threads."""

    pid: int
    threads: set[int] = field(default_factory=set)
    #: signals that arrived while a thread was held for ktracecli's own work (remote calls,
    #: single steps), to send again before it resumes; may be shared by several processes
    pending_signals: dict[int, list[int]] = field(default_factory=dict)
    _mem_fd: int = -1

    # -- memory ----------------------------------------------------------

    def _mem(self) -> int:
        if self._mem_fd < 0:
            self._mem_fd = os.open(f"/proc/{self.pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        return self._mem_fd

    def read(self, addr: int, size: int) -> bytes:
        """Read ``size`` bytes at process address ``addr``; a short read is an error."""
        data = os.pread(self._mem(), size, addr)
        if len(data) != size:
            raise ProcessError(f"cannot read {size} bytes at {addr:#x} in process {self.pid}")
        return data

    def write(self, addr: int, data: bytes) -> None:
        """Write ``data`` at ``addr`` (read-only code included) and check it landed."""
        written = os.pwrite(self._mem(), data, addr)
        if written != len(data) or self.read(addr, len(data)) != data:
            raise ProcessError(f"cannot write {len(data)} bytes at {addr:#x} in process {self.pid}")

    def close(self) -> None:
        """Release the memory file descriptor."""
        if self._mem_fd >= 0:
            os.close(self._mem_fd)
            self._mem_fd = -1

    # -- process facts ---------------------------------------------------

    def maps(self) -> list[Mapping]:
        """The current memory map."""
        return read_maps(self.pid)

    def auxv(self, key: int) -> int | None:
        """One entry of the process's auxiliary vector."""
        with open(f"/proc/{self.pid}/auxv", "rb") as f:
            raw = f.read()
        for k, v in struct.iter_unpack("<QQ", raw):
            if k == key:
                return v
        return None

    def hold_signal(self, tid: int, sig: int) -> None:
        """Keep ``sig``, which arrived while ``tid`` was held, for delivery when it resumes."""
        self.pending_signals.setdefault(tid, []).append(sig)

    # -- waiting ---------------------------------------------------------

    def wait_stop(self, tid: int) -> int:
        """Wait for thread ``tid`` to report; returns the raw wait status."""
        while True:
            try:
                _, status = os.waitpid(tid, ptrace.WALL)
                return status
            except InterruptedError:
                continue

    def run_to(self, tid: int, addr: int) -> None:
        """Resume ``tid`` until it reaches ``addr`` (a one-off hardware breakpoint, not a code patch).

        Used once, to stop a new program at its entry point before patching it: a one-off
        trap at start, never one per traced call.
        """
        ptrace.set_debugreg(tid, 0, addr)
        ptrace.set_debugreg(tid, 7, 1)  # L0 enabled, break on execution, length 1
        deliver = 0
        try:
            while True:
                ptrace.cont(tid, deliver)  # a signal that stopped the thread on the way passes through
                status = self.wait_stop(tid)
                if not os.WIFSTOPPED(status):
                    raise ProgramError(f"the program exited before reaching its entry point ({_describe(status)})")
                sig = ptrace.stop_signal(status)
                if sig == signal.SIGTRAP and ptrace.get_regs(tid).rip == addr:
                    return
                deliver = sig if ptrace.stop_event(status) == 0 and sig != signal.SIGTRAP else 0
        finally:
            ptrace.set_debugreg(tid, 7, 0)
            ptrace.set_debugreg(tid, 6, 0)


def _describe(status: int) -> str:
    if os.WIFEXITED(status):
        return f"exit status {os.WEXITSTATUS(status)}"
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"wait status {status:#x}"


def resolve_program(name: str) -> str:
    """The path of the program to run, looked up in PATH like a shell would."""
    if "/" in name:
        if not os.path.exists(name):
            raise ProgramError(f"no such program: {name}")
        path = name
    else:
        found = shutil.which(name)
        if found is None:
            raise ProgramError(f"no such program: {name} (not found in PATH)")
        path = found
    if os.path.isdir(path):
        raise ProgramError(f"{name} is a directory, not a program")
    if not os.access(path, os.X_OK):
        raise ProgramError(f"{name} is not executable")
    return path


def spawn(path: str, argv: list[str]) -> Tracee:
    """Start ``argv`` with ``path`` under ptrace, stopped right after its execve.

    The child stops itself before exec so that it can be seized (PTRACE_SEIZE gives
    clean group-stop reporting); exec errors come back through a close-on-exec pipe.
    """
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # child: only async-signal-safe work from here
        try:
            os.close(read_end)
            os.kill(os.getpid(), signal.SIGSTOP)
            os.execv(path, argv)
        except OSError as exc:
            os.write(write_end, f"{exc.errno}".encode())
        finally:
            os._exit(127)
    os.close(write_end)
    try:
        _, status = os.waitpid(pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):
            raise ProcessError(f"could not start {path} ({_describe(status)})")
        ptrace.seize(pid, OPTIONS)
        os.kill(pid, signal.SIGCONT)
        tracee = Tracee(pid, {pid})
        while True:
            status = tracee.wait_stop(pid)
            if not os.WIFSTOPPED(status):
                err = os.read(read_end, 64)
                reason = os.strerror(int(err)) if err else _describe(status)
                raise ProgramError(f"cannot execute {path}: {reason}")
            if ptrace.stop_event(status) == ptrace.PTRACE_EVENT_EXEC:
                return tracee
            sig = ptrace.stop_signal(status)
            # the SIGCONT we sent, or the self-stop's group-stop report: swallow both
            if sig in (signal.SIGCONT, signal.SIGSTOP) or ptrace.stop_event(status):
                ptrace.cont(pid, 0)
            else:
                ptrace.cont(pid, sig)
    except ptrace.PtraceError as exc:
        kill_quietly(pid)
        if exc.errno == errno.EPERM:
            raise ProcessError(f"not allowed to trace {path}: {os.strerror(exc.errno)}") from None
        raise
    except BaseException:
        kill_quietly(pid)
        raise
    finally:
        os.close(read_end)




def _thread_state(pid: int, tid: int) -> str:
    """The one-letter state of a thread (R, S, D, T, t, Z, X...), "" if it is gone."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def process_exe(pid: int) -> str:
    """The program a running process executes (``/proc/PID/exe``, resolved); ProcessError if unknown."""
    if not os.path.isdir(f"/proc/{pid}"):
        raise ProcessError(f"no process {pid}")
    try:
        return os.path.realpath(os.readlink(f"/proc/{pid}/exe"))
    except FileNotFoundError:
        raise ProcessError(f"no process {pid}") from None
    except PermissionError:
        raise ProcessError(f"not allowed to trace process {pid}: {os.strerror(errno.EACCES)}") from None
    except OSError as exc:
        raise ProcessError(f"process {pid} has no program to trace (a kernel thread?): "
                           f"{exc.strerror or exc}") from None


def seize(pid: int) -> dict[int, bool]:
    """PTRACE_SEIZE every thread of process ``pid``, until no new one appears.

    Returns {tid: True if the thread is a zombie (it will never stop)}.  The
    threads keep running; the kernel's ptrace rules decide who may do this
    (ProcessError, one line, when they say no).
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Tgid:") and int(line.split()[1]) != pid:
                raise ProcessError(f"{pid} is a thread of process {line.split()[1]}: attach to the process")
    seized: dict[int, bool] = {}
    while True:
        try:
            tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
        except FileNotFoundError:
            tids = []
        new = [t for t in tids if t not in seized]
        if not new:
            break
        for tid in new:
            state = _thread_state(pid, tid)
            try:
                ptrace.seize(tid, OPTIONS)
            except ptrace.PtraceError as exc:
                if exc.errno == errno.ESRCH and tid != pid:
                    continue  # it exited meanwhile
                for done in seized:
                    try:
                        ptrace.detach(done)
                    except ptrace.PtraceError:
                        pass
                if exc.errno == errno.ESRCH:
                    raise ProcessError(f"process {pid} exited") from None
                raise ProcessError(f"not allowed to trace process {pid}: {os.strerror(exc.errno or errno.EPERM)}"
                                   f"{_ptrace_rules_hint()}") from None
            seized[tid] = state in ("Z", "X")
    if not seized:
        raise ProcessError(f"process {pid} exited")
    return seized


def _ptrace_rules_hint() -> str:
    """Why the kernel may refuse, in a few words."""
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = int(f.read().strip() or 0)
    except (OSError, ValueError):
        scope = 0
    if scope:
        return f" (kernel.yama.ptrace_scope is {scope}; is it another user's, or traced already?)"
    return " (is it another user's, or traced already?)"
