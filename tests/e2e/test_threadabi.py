"""What the handlers take from a glibc thread: its thread pointer by a load, its CPU from rseq.

tests/programs/tcb.c pins two threads to CPUs of their own and says which; then its
main thread calls a traced function with its fs base pointing at blocks whose first
word is not their address (0, then 0x1234), each block ending a page that an
inaccessible page follows.  Every call must be traced, under its thread, with the
CPU the program pinned the thread to; with glibc's rseq area (the fast path) and
without it (the tunable turns registration off: rdpid).  The thread-ABI probe must
read what the program itself says glibc set.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import STATIC, Builder, Ktrace, Variant, parse_graph, parse_show, program_counts, program_facts

from ktracecli.process.maps import read_maps
from ktracecli.runtime.modules import loaded_modules
from ktracecli.runtime.threadabi import RSEQ_CPU_ID, ThreadAbi, probe

O2 = Variant("O2", ("-O2",))
NO_RSEQ = {"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}
CALLS = 3000


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    env.update(extra)
    return env


@pytest.mark.parametrize("tracer", ["function", "function_graph"])
@pytest.mark.parametrize("rseq", [True, False], ids=["rseq", "no-rseq"])
def test_cpu_numbers_and_foreign_fs_bases(builder: Builder, ktrace: Ktrace, tmp_path: Path,
                                          tracer: str, rseq: bool) -> None:
    exe = builder.build("tcb", O2)
    env = _env({} if rseq else NO_RSEQ)
    untraced = subprocess.run([str(exe), str(CALLS)], capture_output=True, env=env, timeout=120)
    assert untraced.returncode == 0, untraced.stderr
    facts = program_facts(untraced.stderr)
    assert (int(facts["rseq_size"][0]) > 0) == rseq, facts

    ktrace.configure(["work", "bare"], tracer=tracer)
    ktrace.env.update(env)
    data = tmp_path / "tcb.data"
    proc = ktrace.run("record", "-o", data, "--", exe, str(CALLS), text=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == untraced.stdout
    facts = program_facts(proc.stderr)
    pinned = {int(tid): int(cpu) for tid, _, cpu in (f.split() for f in facts["tid"])}
    assert len(pinned) == 2
    if not any(pinned.values()):
        pytest.fail("tcb pinned both threads to CPU 0: this test needs a machine with 2 CPUs")
    (main_tid,) = (int(t) for t in facts["main_tid"])
    counts = program_counts(untraced.stdout)
    assert counts["work"] == 2 * CALLS and counts["bare"] == 2 * CALLS

    shown = ktrace.ok("show", *(["--per-thread"] if tracer == "function_graph" else []), data).stdout
    if tracer == "function":
        show = parse_show(shown)
        assert not show.lost
        work = [(e.tid, e.cpu) for e in show.of("work")]
        bare_tids = [e.tid for e in show.of("bare")]
    else:
        graph = parse_graph(shown)
        assert not graph.lost
        work = [(tid, line.cpu) for tid, lines in graph.threads.items() for line in lines if line.func == "work"]
        bare_tids = [tid for tid, lines in graph.threads.items() for line in lines if line.func == "bare"]
    assert len(work) == counts["work"]
    for tid, cpu in work:
        assert tid in pinned, f"work() traced under thread {tid}, not one of the program's"
        assert cpu == pinned[tid], f"thread {tid} ran on CPU {pinned[tid]}, its record says {cpu}"
    assert bare_tids == [main_tid] * counts["bare"]


def _abi_of(exe: Path, env: dict[str, str]) -> tuple[ThreadAbi, dict[str, list[str]]]:
    """Start ``exe`` in its waiting mode, probe it past its entry point, let it finish."""
    proc = subprocess.Popen([str(exe), "10", "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stderr is not None and proc.stdin is not None
        lines = [proc.stderr.readline() for _ in range(3)]
        facts = program_facts(b"".join(lines))
        modules = loaded_modules(read_maps(proc.pid), os.path.realpath(exe))
        fd = os.open(f"/proc/{proc.pid}/mem", os.O_RDONLY)
        try:
            abi = probe(modules, lambda addr, size: os.pread(fd, size, addr))
        finally:
            os.close(fd)
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()
    return abi, facts


@pytest.mark.parametrize("rseq", [True, False], ids=["rseq", "no-rseq"])
def test_probe_reads_what_glibc_set(builder: Builder, rseq: bool) -> None:
    abi, facts = _abi_of(builder.build("tcb", O2), _env({} if rseq else NO_RSEQ))
    offset, size = int(facts["rseq_offset"][0]), int(facts["rseq_size"][0])
    assert abi.tcb_self
    if rseq:
        assert size > 0
        assert abi.rseq_cpu == offset + RSEQ_CPU_ID
    else:
        assert size == 0
        assert abi.rseq_cpu == 0


def test_probe_leaves_static_programs_to_rdfsbase(builder: Builder) -> None:
    """A static program sets its thread pointer up itself: no load of fs:0 for it."""
    abi, facts = _abi_of(builder.build("tcb", STATIC), _env({}))
    assert int(facts["rseq_size"][0]) > 0  # glibc registered rseq all the same
    assert abi == ThreadAbi()
