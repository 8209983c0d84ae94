"""Live tracing on real processes: attach and detach, changing what is traced while it runs,
--live streaming, dlopen, fork and exec, and ktracecli killed mid-run.

The truth is always what the programs know: tests/programs/live.c runs phases on command
and reports, per phase, how many calls each thread made and the CLOCK_MONOTONIC window the
phase ran in; the trace must hold exactly those calls of each traced function, in those
windows, and none of the functions that were not traced at the time.  After a detach the
program's code must be the ELF file's bytes again, byte for byte, and its output the same
as an untraced run's.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Sequence

import pytest

from conftest import (ENTRY_RE, LOST_RE, VARIANTS, Builder, Ktrace, ShowOutput, Variant, assert_user_error,
                      program_counts, program_facts, run_untraced)

TIMEOUT = 60
#: idle time before each phase, so that the windows of adjacent phases are further apart than the slack
GAP = 0.03
#: slack between the program's own clock readings and the trace's timestamps (seconds)
CLOCK_SLACK = 0.002
PIE_O2 = VARIANTS[5]      # O2-pie-nofp (the matrix order is opt, pie, fp)
NOPIE_O0 = VARIANTS[2]    # O0-nopie-fp
LIVE_VARIANTS = [VARIANTS[0], VARIANTS[7]]  # O0-pie-fp, O2-nopie-nofp


# --------------------------------------------------------------------------- the live program


@dataclass
class Phase:
    """What live.c said about one phase."""

    number: int
    start: float
    end: float
    #: tid -> (alpha calls, beta calls)
    calls: dict[int, tuple[int, int]] = field(default_factory=dict)

    def total(self, func: str) -> int:
        return sum(a if func == "alpha" else b for a, b in self.calls.values())


class LiveProgram:
    """tests/programs/live.c, running (alone or under ktracecli record), driven through stdin."""

    def __init__(self, argv: Sequence[str | os.PathLike[str]], stderr_path: Path,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen([str(a) for a in argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, env=env, cwd=cwd)
        self.lines: list[str] = []
        assert self._line() == "ready", self.lines

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line:
            raise AssertionError(f"the program ended early; stderr:\n{self.stderr_path.read_text()}")
        self.lines.append(line)
        return line.rstrip("\n")

    def send(self, command: str) -> None:
        if command.startswith("run") or command == "spin":
            time.sleep(GAP)
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{command}\n".encode())
        self.proc.stdin.flush()

    def run(self, n: int) -> str:
        self.send(f"run {n}")
        return self._line()

    def spin(self) -> None:
        self.send("spin")

    def stop(self) -> str:
        self.send("stop")
        return self._line()

    def quit(self) -> tuple[str, int]:
        """Ask it to end; its whole stdout and its exit status."""
        self.send("quit")
        out, _ = self.proc.communicate(timeout=TIMEOUT)
        self._stderr.close()
        return "".join(self.lines) + out.decode(), self.proc.returncode

    @property
    def pid(self) -> int:
        return self.proc.pid

    def facts(self) -> dict[str, list[str]]:
        return program_facts(self.stderr_path.read_bytes())

    def phases(self) -> dict[int, Phase]:
        """Every finished phase, from the program's stderr."""
        phases: dict[int, Phase] = {}
        for line in self.stderr_path.read_text(errors="replace").splitlines():
            m = re.fullmatch(r"window (\d+) (\S+) (\S+)", line)
            if m:
                k = int(m.group(1))
                phases.setdefault(k, Phase(k, 0, 0))
                phases[k].start, phases[k].end = float(m.group(2)), float(m.group(3))
            m = re.fullmatch(r"phase (\d+) tid (\d+) alpha (\d+) beta (\d+)", line)
            if m:
                k = int(m.group(1))
                phases.setdefault(k, Phase(k, 0, 0)).calls[int(m.group(2))] = (int(m.group(3)), int(m.group(4)))
        return phases

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


def live_commands(program: LiveProgram, script: Sequence[str]) -> None:
    for command in script:
        if command.startswith("run "):
            program.run(int(command[4:]))
        else:
            program.send(command)


def untraced_output(exe: Path, nthreads: int, script: Sequence[str], tmp_path: Path) -> str:
    """What live.c prints running ``script`` untraced."""
    program = LiveProgram([exe, str(nthreads)], tmp_path / "untraced.stderr", cwd=tmp_path)
    try:
        for command in script:
            if command.startswith("run "):
                program.run(int(command[4:]))
            elif command == "stop":
                program.stop()
            else:
                program.send(command)
        out, status = program.quit()
    finally:
        program.kill()
    assert status == 0
    return out


# --------------------------------------------------------------------------- ktracecli helpers


def session_status(ktrace: Ktrace, ktracecli_pid: int) -> dict[str, object] | None:
    """This session's line of ``ktracecli status --json``, or None if it is not listed."""
    proc = ktrace.ok("status", "--json")
    for line in proc.stdout.splitlines():
        entry = json.loads(line)
        if entry["ktracecli_pid"] == ktracecli_pid:
            return entry
    return None


def wait_applied(ktrace: Ktrace, ktracecli_pid: int, traced_above: int | None = None,
                 **want: object) -> dict[str, object]:
    """Wait until the running session reports ``want`` (it has applied a change)."""
    deadline = time.monotonic() + TIMEOUT
    last = None
    while time.monotonic() < deadline:
        last = session_status(ktrace, ktracecli_pid)
        if last is not None and all(last.get(k) == v for k, v in want.items()) and (
                traced_above is None or int(last["traced"]) > traced_above):  # type: ignore[call-overload]
            return last
        time.sleep(0.05)
    raise AssertionError(f"the session never reported {want}; last status: {last}")


def wait_line(path: Path, pattern: str, proc: subprocess.Popen) -> str:
    """Wait until a file (a process's stderr) has a line matching ``pattern``."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        for line in path.read_text(errors="replace").splitlines():
            if re.search(pattern, line):
                return line
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before printing {pattern!r}:\n{path.read_text()}")
        time.sleep(0.02)
    raise AssertionError(f"no line matching {pattern!r} in {path}:\n{path.read_text()}")


def attach(ktrace: Ktrace, pid: int, data: Path, stderr_path: Path, *extra: str,
           stdout: int | IO[bytes] | None = subprocess.DEVNULL) -> subprocess.Popen:
    """Start ``ktracecli attach PID`` and wait until it says it is attached."""
    err = open(stderr_path, "wb")
    proc = subprocess.Popen(ktrace.argv("attach", str(pid), "-o", data, *extra), stdout=stdout, stderr=err,
                            cwd=ktrace.cwd, env=ktrace.env)
    err.close()
    wait_line(stderr_path, r"^ktracecli: attached to process", proc)
    return proc


def summary(stderr: str) -> dict[str, int]:
    """The numbers of the ``ktracecli: traced ...`` summary line."""
    lines = [line for line in stderr.splitlines() if line.startswith("ktracecli: traced ")]
    assert len(lines) == 1, stderr
    m = re.match(r"ktracecli: traced (\d+) functions?, refused (\d+).*?(\d+) events? recorded, (\d+) lost", lines[0])
    assert m, lines[0]
    return dict(zip(("traced", "refused", "events", "lost"), map(int, m.groups())))


def executable_mappings(pid: int) -> list[tuple[int, int, int, str]]:
    """(start, end, file offset, path) of every file-backed executable mapping of ``pid``."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or "x" not in parts[1] or not parts[5].startswith("/"):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi, int(parts[2], 16), parts[5].rstrip("\n")))
    return out


def code_differences(pid: int) -> list[str]:
    """Where the process's executable file mappings differ from their files (empty: pristine)."""
    diffs = []
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for lo, hi, offset, path in executable_mappings(pid):
            with open(path, "rb") as f:
                f.seek(offset)
                want = f.read(hi - lo)
            mem.seek(lo)
            got = mem.read(len(want))
            if got != want:
                at = next(i for i in range(len(want)) if got[i] != want[i])
                diffs.append(f"{path}+{offset + at:#x} ({lo + at:#x}): {got[at:at + 8].hex()} "
                             f"instead of {want[at:at + 8].hex()}")
    return diffs


def show(ktrace: Ktrace, data: Path) -> ShowOutput:
    return ktrace.show(data)


def in_window(entries: list, phase: Phase) -> list:
    return [e for e in entries if phase.start - CLOCK_SLACK <= e.timestamp <= phase.end + CLOCK_SLACK]


def assert_phase(trace: ShowOutput, phase: Phase, traced: set[str]) -> None:
    """Within the phase's window: each function in ``traced`` exactly as the program counted, per
    thread; the others not at all."""
    for func in ("alpha", "beta"):
        entries = in_window(trace.of(func), phase)
        per_tid = collections.Counter(e.tid for e in entries)
        if func in traced:
            want = {tid: (a if func == "alpha" else b) for tid, (a, b) in phase.calls.items()}
            assert phase.total(func) > 0, "the phase made no calls: the test could not fail"
            assert dict(per_tid) == want, f"phase {phase.number} {func}: traced {dict(per_tid)}, made {want}"
        else:
            assert not entries, f"phase {phase.number}: {func} traced {len(entries)} times while not selected"


# --------------------------------------------------------------------------- attach and detach


@pytest.mark.parametrize("variant", LIVE_VARIANTS, ids=[v.name for v in LIVE_VARIANTS])
def test_attach_detach_restores_every_byte(builder: Builder, ktrace: Ktrace, tmp_path: Path,
                                           variant: Variant) -> None:
    exe = builder.build("live", variant)
    script = ["spin", "stop", "run 2000", "spin", "stop", "run 500"]
    expected = untraced_output(exe, 4, script, tmp_path)
    ktrace.configure(["alpha", "beta"])
    program = LiveProgram([exe, "4"], tmp_path / "program.stderr")
    data = tmp_path / "attach.data"
    try:
        before = code_differences(program.pid)
        assert before == [], before
        program.spin()  # attach while every thread is busy in the traced functions
        time.sleep(0.1)
        tracer = attach(ktrace, program.pid, data, tmp_path / "attach.stderr")
        program.stop()  # at once: a spin traced for long makes a trace too big to check quickly
        patched = code_differences(program.pid)
        assert len(patched) >= 2, f"attached, yet the program's code is not patched: {patched}"
        program.run(2000)   # phase 2: all of it traced
        program.spin()      # detach while every thread is busy again
        time.sleep(0.02)
        tracer.send_signal(signal.SIGINT)
        assert tracer.wait(timeout=TIMEOUT) == 0
        err = (tmp_path / "attach.stderr").read_text()
        assert "Traceback" not in err, err
        assert re.search(r"^ktracecli: detached from process", err, re.M), err
        after = code_differences(program.pid)
        assert after == [], f"code left patched after detach: {after[:5]}"
        assert os.path.exists(f"/proc/{program.pid}"), "the program died"
        program.stop()
        program.run(500)
        out, status = program.quit()
    finally:
        program.kill()
    assert status == 0
    assert out == expected, "the attached-then-detached program printed something else"
    trace = show(ktrace, data)
    phase2 = program.phases()[2]
    assert_phase(trace, phase2, {"alpha", "beta"})
    counts = summary(err)
    assert counts["events"] == len(trace.entries)


def test_attach_detach_with_the_mcount_engine(builder: Builder, ktrace: Ktrace, tmp_path: Path) -> None:
    """The mcount engine's one-time patches (every compiler-made site to a NOP) are undone at detach too."""
    exe = builder.build("live", Variant("pg-fentry-O2", ("-O2", "-pg", "-mfentry", "-fPIE", "-pie")))
    script = ["run 100", "run 100", "run 10"]
    expected = untraced_output(exe, 3, script, tmp_path)
    ktrace.configure(["alpha", "beta"])
    ktrace.ok("engine", "mcount")
    program = LiveProgram([exe, "3"], tmp_path / "program.stderr", cwd=tmp_path)
    data = tmp_path / "attach.data"
    try:
        tracer = attach(ktrace, program.pid, data, tmp_path / "attach.stderr")
        assert len(code_differences(program.pid)) >= 1
        program.run(100)
        ktrace.ok("ktrace", "remove", "beta")
        wait_applied(ktrace, tracer.pid, traced=1)
        program.run(100)
        tracer.send_signal(signal.SIGINT)
        assert tracer.wait(timeout=TIMEOUT) == 0
        assert code_differences(program.pid) == []
        program.run(10)
        out, status = program.quit()
    finally:
        program.kill()
    assert (out, status) == (expected, 0)
    assert "engine mcount" in (tmp_path / "attach.stderr").read_text()
    trace = show(ktrace, data)
    phases = program.phases()
    assert_phase(trace, phases[1], {"alpha", "beta"})
    assert_phase(trace, phases[2], {"alpha"})


def test_attach_does_not_disturb_blocked_system_calls(builder: Builder, ktrace: Ktrace, tmp_path: Path) -> None:
    """Threads held in read() and pthread_cond_wait() while ktracecli attaches, calls mmap in them and
    detaches: their calls go on as if nothing happened (no EINTR, no -ERESTARTSYS)."""
    exe = builder.build("live", PIE_O2)
    expected = untraced_output(exe, 3, ["run 100", "run 100"], tmp_path)
    ktrace.configure(["alpha"])
    program = LiveProgram([exe, "3"], tmp_path / "program.stderr")
    try:
        program.run(100)
        for round_ in range(3):
            tracer = attach(ktrace, program.pid, tmp_path / f"a{round_}.data", tmp_path / f"a{round_}.stderr")
            tracer.send_signal(signal.SIGTERM)
            assert tracer.wait(timeout=TIMEOUT) == 0
            assert code_differences(program.pid) == []
        program.run(100)
        out, status = program.quit()
    finally:
        program.kill()
    assert (out, status) == (expected, 0)


class Parker:
    """tests/programs/parker.c, driven through stdin."""

    def __init__(self, exe: Path) -> None:
        self.proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.out: list[bytes] = []
        assert self.ask("") == "ready"

    def ask(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if command:
            self.proc.stdin.write(f"{command}\n".encode())
            self.proc.stdin.flush()
        if command == "park":
            time.sleep(0.1)  # until the thread sleeps in park()
            return ""
        line = self.proc.stdout.readline()
        self.out.append(line)
        return line.decode().rstrip("\n")

    def quit(self) -> bytes:
        out, _ = self.proc.communicate(b"quit\n", timeout=TIMEOUT)
        assert self.proc.returncode == 0
        return b"".join(self.out) + out


def test_a_thread_asleep_inside_a_window_delays_its_patch(builder: Builder, ktrace: Ktrace,
                                                          tmp_path: Path) -> None:
    """park() sleeps in a system call inside its own patch window (parker.c): ktracecli must not patch
    it while the thread is there (the kernel restarts the call at the syscall instruction), must patch
    it once the thread has left, and may detach while a thread sleeps inside its detour."""
    exe = builder.build("parker", PIE_O2)
    script = ["park", "work 100", "wake", "park", "wake", "park"]
    untraced = Parker(exe)
    for command in script:
        untraced.ask(command)
    untraced.ask("wake")
    expected = untraced.quit()

    ktrace.configure(["park", "alpha"])
    program = Parker(exe)
    data = tmp_path / "attach.data"
    try:
        program.ask("park")
        tracer = attach(ktrace, program.proc.pid, data, tmp_path / "attach.stderr")
        assert wait_applied(ktrace, tracer.pid)["traced"] == 1  # alpha; park waits for its thread
        assert program.ask("work 100") == "worked 100"
        time.sleep(0.3)  # ktracecli tries again meanwhile: park must stay as it is
        assert wait_applied(ktrace, tracer.pid)["traced"] == 1
        assert program.ask("wake") == "unparked 1"
        wait_applied(ktrace, tracer.pid, traced=2)  # now that the thread has left
        program.ask("park")                          # traced; it sleeps in park's detour
        assert program.ask("wake") == "unparked 2"
        program.ask("park")
        tracer.send_signal(signal.SIGINT)            # detach while it sleeps in the detour
        assert tracer.wait(timeout=TIMEOUT) == 0
        assert code_differences(program.proc.pid) == []
        assert program.ask("wake") == "unparked 3"  # it comes back through the detour, untraced now
        out = program.quit()
    finally:
        if program.proc.poll() is None:
            program.proc.kill()
    assert out == expected
    trace = ktrace.show(data)
    assert trace.counts["alpha"] == 100
    assert trace.counts["park"] == 2, "park traced while a thread slept in it, or not after it left"


def test_attach_ends_with_the_process(builder: Builder, ktrace: Ktrace, tmp_path: Path) -> None:
    exe = builder.build("live", PIE_O2)
    ktrace.configure(["beta"])
    program = LiveProgram([exe, "2"], tmp_path / "program.stderr")
    data = tmp_path / "attach.data"
    try:
        tracer = attach(ktrace, program.pid, data, tmp_path / "attach.stderr")
        program.run(300)
        out, status = program.quit()
        assert tracer.wait(timeout=TIMEOUT) == 0
    finally:
        program.kill()
    assert status == 0 and "count beta 600" in out
    err = (tmp_path / "attach.stderr").read_text()
    assert re.search(rf"^ktracecli: process {program.pid} exited with status 0$", err, re.M), err
    trace = show(ktrace, data)
    assert_phase(trace, program.phases()[1], {"beta"})


def test_attach_to_missing_process(ktrace: Ktrace, tmp_path: Path) -> None:
    ktrace.configure(["alpha"])
    child = subprocess.Popen(["true"])
    child.wait()
    proc = ktrace.run("attach", str(child.pid), "-o", tmp_path / "d")  # reaped: no such pid now
    assert_user_error(proc, str(child.pid))
    assert not (tmp_path / "d").exists()


def test_attach_to_a_process_traced_already(builder: Builder, ktrace: Ktrace, tmp_path: Path) -> None:
    """The kernel's ptrace rules decide: a process that has a tracer already cannot be attached."""
    from ktracecli.process import ptrace

    ktrace.configure(["alpha"])
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        ptrace.seize(sleeper.pid, 0)
        proc = ktrace.run("attach", str(sleeper.pid), "-o", tmp_path / "d")
        assert_user_error(proc, "not allowed")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not (tmp_path / "d").exists()


def _without_cap_sys_ptrace() -> None:
    """In a child before exec: drop CAP_SYS_PTRACE from the bounding set, so that root's exec'd
    ktracecli lacks it and the kernel's ptrace rules apply to it as to any user."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(24, 19, 0, 0, 0) != 0:  # PR_CAPBSET_DROP, CAP_SYS_PTRACE
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_attach_to_another_users_process(ktrace: Ktrace, tmp_path: Path) -> None:
    """Without CAP_SYS_PTRACE, the process of another user may not be traced: one line, from the kernel."""
    ktrace.configure(["alpha"])
    sleeper = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: os.setuid(65534))
    try:
        proc = subprocess.run(ktrace.argv("attach", str(sleeper.pid), "-o", tmp_path / "d"), capture_output=True,
                              text=True, env=ktrace.env, cwd=ktrace.cwd, timeout=TIMEOUT,
                              preexec_fn=_without_cap_sys_ptrace)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
    assert_user_error(proc, "not allowed", str(sleeper.pid))
    assert not (tmp_path / "d").exists()


def test_attach_needs_a_recording_tracer(ktrace: Ktrace, tmp_path: Path) -> None:
    ktrace.configure(["alpha"], tracer="nop")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        assert_user_error(ktrace.run("attach", str(sleeper.pid), "-o", tmp_path / "d"), "nop")
    finally:
        sleeper.kill()
        sleeper.wait()


# --------------------------------------------------------------------------- changes while running


def test_add_remove_nop_function_while_recording(builder: Builder, ktrace: Ktrace, tmp_path: Path) -> None:
    exe = builder.build("live", PIE_O2)
    script = ["run 300"] * 5
    expected = untraced_output(exe, 3, script, tmp_path)
    ktrace.configure(["alpha"])
    data = tmp_path / "rec.data"
    program = LiveProgram(ktrace.argv("record", "-o", data, "--", exe, "3"), tmp_path / "rec.stderr",
                          env=ktrace.env, cwd=ktrace.cwd)
    session = program.pid  # record runs the program as its child: this pid is ktracecli's
    try:
        wait_applied(ktrace, session, traced=1)
        program.run(300)                                   # 1: alpha
        ktrace.ok("ktrace", "add", "beta")
        wait_applied(ktrace, session, traced=2)
        program.run(300)                                   # 2: alpha, beta
        ktrace.ok("ktrace", "remove", "alpha")
        wait_applied(ktrace, session, traced=1)
        program.run(300)                                   # 3: beta
        ktrace.ok("tracer", "nop")
        wait_applied(ktrace, session, traced=0, tracer="nop")
        program.run(300)                                   # 4: nothing
        ktrace.ok("tracer", "function")
        wait_applied(ktrace, session, traced=1, tracer="function")
        program.run(300)                                   # 5: beta again
        ktrace.ok("ktrace", "clear")                       # every function of the program
        wait_applied(ktrace, session, traced_above=3)
        out, status = program.quit()
    finally:
        program.kill()
    assert status == 0 and out == expected
    phases = program.phases()
    trace = show(ktrace, data)
    assert_phase(trace, phases[1], {"alpha"})
    assert_phase(trace, phases[2], {"alpha", "beta"})
    assert_phase(trace, phases[3], {"beta"})
    assert_phase(trace, phases[4], set())
    assert_phase(trace, phases[5], {"beta"})
    # nothing of alpha and beta outside the phases: every traced call is one the program counted
    counts = program_counts(out.encode())
    assert trace.counts["alpha"] == phases[1].total("alpha") + phases[2].total("alpha")
    assert trace.counts["beta"] == sum(phases[k].total("beta") for k in (2, 3, 5)) < counts["beta"]
    err = (tmp_path / "rec.stderr").read_text()
    assert summary(err)["lost"] == 0


def test_add_applies_to_every_thread_and_process_of_an_attach(builder: Builder, ktrace: Ktrace,
                                                                tmp_path: Path) -> None:
    exe = builder.build("live", NOPIE_O0)
    ktrace.configure(["alpha"])
    program = LiveProgram([exe, "4"], tmp_path / "program.stderr")
    data = tmp_path / "attach.data"
    try:
        tracer = attach(ktrace, program.pid, data, tmp_path / "attach.stderr")
        program.run(200)
        ktrace.ok("ktrace", "add", "beta")
        wait_applied(ktrace, tracer.pid, traced=2)
        program.run(200)
        ktrace.ok("ktrace", "remove", "alpha")
        wait_applied(ktrace, tracer.pid, traced=1)
        program.run(200)
        tracer.send_signal(signal.SIGINT)
        assert tracer.wait(timeout=TIMEOUT) == 0
        assert code_differences(program.pid) == []
        program.run(200)
        out, status = program.quit()
    finally:
        program.kill()
    assert status == 0
    phases = program.phases()
    trace = show(ktrace, data)
    assert_phase(trace, phases[1], {"alpha"})
    assert_phase(trace, phases[2], {"alpha", "beta"})
    assert_phase(trace, phases[3], {"beta"})
    assert_phase(trace, phases[4], set())


# --------------------------------------------------------------------------- --live


def test_attach_live_streams_the_trace(builder: Builder, ktrace: Ktrace, tmp_path: Path) -> None:
    exe = builder.build("live", PIE_O2)
    ktrace.configure(["alpha", "beta"])
    program = LiveProgram([exe, "2"], tmp_path / "program.stderr")
    data = tmp_path / "attach.data"
    stream = open(tmp_path / "live.out", "wb")
    try:
        tracer = attach(ktrace, program.pid, data, tmp_path / "attach.stderr", "--live", stdout=stream)
        program.run(400)
        # the lines come while the session runs, before anything is written to the data directory
        deadline = time.monotonic() + TIMEOUT
        while (tmp_path / "live.out").read_text().count("\n") < 1600 and time.monotonic() < deadline:
            time.sleep(0.02)
        streamed_early = (tmp_path / "live.out").read_text()
        assert not data.exists()
        tracer.send_signal(signal.SIGINT)
        assert tracer.wait(timeout=TIMEOUT) == 0
        out, status = program.quit()
    finally:
        stream.close()
        program.kill()
    assert status == 0
    lines = (tmp_path / "live.out").read_text().splitlines()
    assert lines[:len(streamed_early.splitlines())] == streamed_early.splitlines()
    entries = []
    for line in lines:
        m = ENTRY_RE.match(line)
        assert m, f"not a function-tracer line: {line!r}"
        entries.append((int(m.group(2)), m.group(5), m.group(6), float(m.group(4))))
    phase = program.phases()[1]
    for func in ("alpha", "beta"):
        per_tid = collections.Counter(tid for tid, f, _p, _t in entries if f == func)
        assert dict(per_tid) == {tid: calls[0] for tid, calls in phase.calls.items()}
    assert {parent for _tid, _f, parent, _t in entries} == {"worker_main"}
    for _tid, _f, _p, ts in entries:
        assert phase.start - 0.01 <= ts <= phase.end + 0.01
    # the same events as the data directory holds
    assert len(show(ktrace, data).entries) == len(entries)


def test_record_live_counts_every_lost_event(builder: Builder, ktrace: Ktrace, tmp_path: Path) -> None:
    """Tiny rings and a fast program: the reader falls behind, and every call is either streamed
    or counted in a [LOST N EVENTS] line: events + lost = the calls the program made."""
    exe = builder.build("live", PIE_O2)
    ktrace.configure(["alpha"])
    text = ktrace.config.read_text()
    ktrace.config.write_text(text.replace("buffer_size_kb = 16384", "buffer_size_kb = 4"))
    assert "buffer_size_kb = 4\n" in ktrace.config.read_text()
    data = tmp_path / "rec.data"
    with open(tmp_path / "rec.stderr", "wb") as err:
        proc = subprocess.run(ktrace.argv("record", "--live", "-o", data, "--", exe, "2"),
                              input=b"run 300000\nquit\n", stdout=subprocess.PIPE, stderr=err,
                              cwd=ktrace.cwd, env=ktrace.env, timeout=TIMEOUT * 2)
    assert proc.returncode == 0
    streamed = lost = 0
    program_lines = []
    for line in proc.stdout.decode().splitlines():
        if ENTRY_RE.match(line):
            streamed += 1
        elif LOST_RE.match(line):
            lost += int(LOST_RE.match(line).group(2))
        else:
            program_lines.append(line)
    counts = program_counts("\n".join(program_lines).encode())
    assert counts["alpha"] == 600000
    numbers = summary((tmp_path / "rec.stderr").read_text())
    assert lost > 0, "the rings never overflowed: the test could not fail"
    assert numbers["lost"] == lost and numbers["events"] == streamed
    assert streamed + lost == counts["alpha"], (streamed, lost)
    trace = show(ktrace, data)
    assert len(trace.entries) == streamed
    assert sum(n or 0 for _cpu, n in trace.lost) == lost


# --------------------------------------------------------------------------- code that appears later


@pytest.fixture(scope="session")
def libplug(builder: Builder) -> Path:
    lib = builder.build_dir / "libplug.so"
    source = Path(__file__).parent.parent / "programs" / "plug.c"
    proc = subprocess.run([builder.gcc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(source)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return lib


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[7]], ids=[VARIANTS[0].name, VARIANTS[7].name])
def test_dlopen_library_is_traced_when_mapped(builder: Builder, ktrace: Ktrace, tmp_path: Path,
                                              libplug: Path, variant: Variant) -> None:
    exe = builder.build("dlopener", variant)
    argv = [exe, libplug, "400", "250"]
    untraced = run_untraced(argv)
    ktrace.configure(["before_load", "plug_work:mod:libplug.so"])
    traced, summary_ = ktrace.record(tmp_path / "dl.data", argv)
    assert (traced.returncode, traced.stdout) == (untraced.returncode, untraced.stdout)
    counts = program_counts(untraced.stdout)
    trace = ktrace.show(tmp_path / "dl.data")
    assert trace.counts["before_load"] == counts["before_load"] == 400
    assert trace.counts["plug_work"] == counts["plug_work"] == 650
    assert {e.parent for e in trace.of("plug_work")} == {"use"}
    # each call of the library comes after the last call made before it was loaded
    last_before = max(e.timestamp for e in trace.of("before_load"))
    assert min(e.timestamp for e in trace.of("plug_work")) >= last_before
    assert summary_.lost == 0


def test_dlopen_while_attached(builder: Builder, ktrace: Ktrace, tmp_path: Path, libplug: Path) -> None:
    """The loader hook is placed in a process ktracecli attaches to (and taken out at the end)."""
    exe = builder.build("dlopener", PIE_O2)
    argv = [exe, libplug, "100", "60", "wait"]
    untraced = subprocess.run([str(a) for a in argv], input=b"go\n", capture_output=True, timeout=TIMEOUT)
    ktrace.configure(["before_load", "plug_work:mod:libplug.so"])
    program = subprocess.Popen([str(a) for a in argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert program.stdin is not None and program.stdout is not None
    try:
        assert program.stdout.readline() == b"waiting\n"
        data = tmp_path / "attach.data"
        tracer = attach(ktrace, program.pid, data, tmp_path / "attach.stderr")
        program.stdin.write(b"go\n")
        program.stdin.close()
        out = program.stdout.read()
        assert program.wait(timeout=TIMEOUT) == 0
        assert tracer.wait(timeout=TIMEOUT) == 0
    finally:
        if program.poll() is None:
            program.kill()
    assert b"waiting\n" + out == untraced.stdout
    counts = program_counts(out)
    trace = ktrace.show(data)
    assert trace.counts["plug_work"] == counts["plug_work"] == 160
    assert trace.counts["before_load"] == counts["before_load"] == 100


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[7]], ids=[VARIANTS[0].name, VARIANTS[7].name])
def test_exec_of_another_traced_program(builder: Builder, ktrace: Ktrace, tmp_path: Path,
                                        variant: Variant) -> None:
    execer = builder.build("execer", variant)
    target = builder.build("exits", VARIANTS[3])
    argv = [execer, "123", target, "exit3", "77"]
    untraced = run_untraced(argv)
    assert untraced.returncode == 3
    ktrace.configure(["tick"])
    traced, summary_ = ktrace.record(tmp_path / "ex.data", argv)
    assert (traced.returncode, traced.stdout) == (3, untraced.stdout)
    (pid,) = program_facts(traced.stderr)["pid"]
    trace = ktrace.show(tmp_path / "ex.data")
    by_comm = collections.Counter(e.comm for e in trace.of("tick"))
    assert by_comm == {execer.name[:15]: 123, target.name[:15]: 77}, by_comm
    assert {e.tid for e in trace.entries} == {int(pid)}
    assert {e.parent for e in trace.entries} == {"main"}
    assert summary_.traced == 2  # tick in each image: two functions, two site indices


def test_exec_traces_the_new_images_libraries(builder: Builder, ktrace: Ktrace, tmp_path: Path) -> None:
    """After exec, the loader maps the new program's libraries; :mod: rules apply to them from their
    first call (the loader hook is in the new image from the exec's system-call exit)."""
    execer = builder.build("execer", PIE_O2)
    target = builder.build("libcall", VARIANTS[1])
    argv = [execer, "10", target, "333"]
    untraced = run_untraced(argv)
    ktrace.configure(["tick", "toupper:mod:libc.so.6"])
    traced, _summary = ktrace.record(tmp_path / "ex.data", argv)
    assert (traced.returncode, traced.stdout) == (0, untraced.stdout)
    trace = ktrace.show(tmp_path / "ex.data")
    assert collections.Counter((e.comm, e.func) for e in trace.entries) == {
        (execer.name[:15], "tick"): 10, (target.name[:15], "toupper"): program_counts(untraced.stdout)["toupper"]}
    assert {e.parent for e in trace.of("toupper")} == {"main"}


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[7]], ids=[VARIANTS[0].name, VARIANTS[7].name])
def test_fork_child_has_its_own_rings_and_pid(builder: Builder, ktrace: Ktrace, tmp_path: Path,
                                              variant: Variant) -> None:
    exe = builder.build("forker", variant)
    argv = [exe, "500", "321"]
    untraced = run_untraced(argv)
    ktrace.configure(["work"])
    traced, summary_ = ktrace.record(tmp_path / "fork.data", argv)
    assert (traced.returncode, traced.stdout) == (0, untraced.stdout)
    facts = program_facts(traced.stderr)
    parent, child = int(facts["parent"][0]), int(facts["child"][0])
    trace = ktrace.show(tmp_path / "fork.data")
    assert collections.Counter(e.tid for e in trace.of("work")) == {parent: 1000, child: 321}
    assert {e.parent for e in trace.entries} == {"main"}
    assert summary_.lost == 0


# --------------------------------------------------------------------------- ktracecli killed


SUBREAPER = """
import ctypes, os, subprocess, sys
ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans of ktracecli come to us
ktracecli = subprocess.Popen(sys.argv[1:])
print(ktracecli.pid, flush=True)
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        break
    sys.stderr.write(f"reaped {pid} {os.waitstatus_to_exitcode(status)}\\n")
"""


def test_sigkill_of_record_leaves_the_program_running(builder: Builder, ktrace: Ktrace, tmp_path: Path) -> None:
    exe = builder.build("live", PIE_O2)
    script = ["run 2000"] * 4
    expected = untraced_output(exe, 3, script, tmp_path)
    ktrace.configure(["alpha", "beta"])
    shm_before = set(os.listdir("/dev/shm"))
    reaper_err = tmp_path / "reaper.stderr"
    with open(reaper_err, "wb") as err:
        reaper = subprocess.Popen([sys.executable, "-c", SUBREAPER,
                                   *ktrace.argv("record", "-o", tmp_path / "k.data", "--", exe, "3")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                  cwd=ktrace.cwd, env=ktrace.env)
    assert reaper.stdin is not None and reaper.stdout is not None
    ktracecli_pid = int(reaper.stdout.readline())
    assert reaper.stdout.readline() == b"ready\n"
    lines = [b"ready\n"]
    try:
        for n, command in enumerate(script):
            reaper.stdin.write(f"{command}\n".encode())
            reaper.stdin.flush()
            lines.append(reaper.stdout.readline())
            if n == 1:
                wait_applied(ktrace, ktracecli_pid, traced=2)
                os.kill(ktracecli_pid, signal.SIGKILL)
                time.sleep(0.2)
        reaper.stdin.write(b"quit\n")
        reaper.stdin.close()
        rest = reaper.stdout.read()
        assert reaper.wait(timeout=TIMEOUT) == 0
    finally:
        if reaper.poll() is None:
            reaper.kill()
    assert b"".join(lines) + rest == expected.encode()
    reaped = dict(line.split()[1:] for line in reaper_err.read_text().splitlines() if line.startswith("reaped"))
    assert reaped.pop(str(ktracecli_pid)) == str(-signal.SIGKILL)
    assert list(reaped.values()) == ["0"], f"the program's exit status: {reaped}"
    assert not [n for n in set(os.listdir("/dev/shm")) - shm_before if n.startswith("ktracecli")]
    assert not (tmp_path / "k.data").exists()


def test_sigkill_of_attach_leaves_the_program_running(builder: Builder, ktrace: Ktrace, tmp_path: Path) -> None:
    exe = builder.build("live", PIE_O2)
    script = ["run 3000", "run 3000"]
    expected = untraced_output(exe, 4, script, tmp_path)
    ktrace.configure(["alpha", "beta"])
    program = LiveProgram([exe, "4"], tmp_path / "program.stderr")
    try:
        tracer = attach(ktrace, program.pid, tmp_path / "a.data", tmp_path / "attach.stderr")
        program.run(3000)
        tracer.kill()
        tracer.wait()
        program.run(3000)  # the handlers go on writing into rings no one reads: they drop, never wait
        out, status = program.quit()
    finally:
        program.kill()
    assert (out, status) == (expected, 0)


def test_stale_partial_data_dir_is_removed(builder: Builder, ktrace: Ktrace, tmp_path: Path) -> None:
    """A data directory a killed ktracecli left half-written is removed by the next record."""
    stale = tmp_path / ".x.data.partial-999999999"
    (stale / "events").mkdir(parents=True)
    exe = builder.build("basic", PIE_O2)
    ktrace.configure(["leaf_a"])
    ktrace.record(tmp_path / "x.data", [exe, "3", "3"])
    assert not stale.exists()
