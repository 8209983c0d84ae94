"""The mcount engine on real programs built with each kind of compiler-made entry site.

Every form (-pg; -pg -mfentry; -pg -mfentry -mnop-mcount -mrecord-mcount;
-fpatchable-function-entry=5 and =7,2) at -O0 and -O2, PIE and not (-mnop-mcount:
not PIE, which gcc does not implement), and clang's forms (-pg, -pg -mfentry and its
one-long-NOP patchable entries) the same way: the program's
output and exit status are the same traced and untraced, and each function is
traced exactly as often as the program counted its own calls.  The same
-pg -mfentry binary gives the same entries per thread under the mcount and the
ktrace engine, switched through the config file only.
"""

from __future__ import annotations

import collections
import os
import re
import struct
import subprocess
from pathlib import Path
from typing import Sequence

import pytest

from conftest import (Builder, Ktrace, Run, ShowOutput, Summary, Variant, assert_user_error,
                      program_counts, program_facts)

NO_SITE = "no mcount call site: build with -pg, or use the ktrace engine"
#: every function mcount.c counts
COUNTED = ["leaf", "branch", "tree", "fib", "apply", "twice", "thrice", "many_args", "worker"]
N, NTHREADS = "12", "3"

FORMS: dict[str, tuple[str, ...]] = {
    "pg": ("-pg",),
    "fentry": ("-pg", "-mfentry"),
    "nop-mcount": ("-pg", "-mfentry", "-mnop-mcount", "-mrecord-mcount"),
    "patchable5": ("-fpatchable-function-entry=5",),
    "patchable7,2": ("-fpatchable-function-entry=7,2",),
}
#: clang's own forms: `call mcount@plt` after a prologue that may push more than rbp, and
#: one long NOP as the patchable entry (clang 14 has no -mnop-mcount or -mrecord-mcount)
CLANG_FORMS = ("pg", "fentry", "patchable5", "patchable7,2")
PIE = {"pie": ("-fPIE", "-pie"), "nopie": ("-fno-pie", "-no-pie")}


def _pie_choices(form: str) -> dict[str, tuple[str, ...]]:
    """gcc implements -mnop-mcount for position-dependent code only ("not implemented for -fPIC")."""
    return {"nopie": PIE["nopie"]} if form == "nop-mcount" else PIE


def _builds() -> list[tuple[str, Variant]]:
    out = []
    for form, flags in FORMS.items():
        for opt in ("O0", "O2"):
            for pie, pie_flags in _pie_choices(form).items():
                out.append((form, Variant(f"{form}-{opt}-{pie}", (f"-{opt}", *flags, *pie_flags))))
        # endbr64 in front of every site (Ubuntu's default -fcf-protection)
        pie = "nopie" if form == "nop-mcount" else "pie"
        out.append((form, Variant(f"{form}-O2-{pie}-cet", ("-O2", *flags, *PIE[pie], "-fcf-protection"))))
    for form in CLANG_FORMS:
        for opt in ("O0", "O2"):
            for pie, pie_flags in PIE.items():
                out.append((form, Variant(f"clang-{form}-{opt}-{pie}", (f"-{opt}", *FORMS[form], *pie_flags),
                                          compiler="clang")))
    return out


BUILDS = _builds()


def build(builder: Builder, program: str, variant: Variant) -> Path:
    """``program`` built as ``variant``."""
    return builder.build(program, variant)


def run_untraced(argv: Sequence[str | os.PathLike[str]], cwd: Path) -> Run:
    """Run the program directly in ``cwd`` (a -pg program writes gmon.out there)."""
    cwd.mkdir(exist_ok=True)
    proc = subprocess.run([str(a) for a in argv], capture_output=True, cwd=cwd, timeout=300)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def configure(ktrace: Ktrace, engine: str, patterns: Sequence[str] = ()) -> None:
    """Engine ENGINE, tracer function and exactly ``patterns``, all through the config file."""
    ktrace.ok("engine", engine)
    ktrace.ok("tracer", "function")
    ktrace.ok("ktrace", "clear")
    if patterns:
        ktrace.ok("ktrace", "add", *patterns)
    assert f'engine = "{engine}"' in ktrace.config.read_text()


def gmon_arcs(path: Path) -> int:
    """Call-graph arc records in a gmon.out: glibc's mcount/__fentry__ ran once per new arc."""
    data = path.read_bytes()
    assert data[:4] == b"gmon", f"{path} is not a gmon.out"
    pos, arcs = 20, 0
    while pos < len(data):
        tag = data[pos]
        pos += 1
        if tag == 0:    # histogram: lowpc, highpc, ncnt, rate, dimen[15], abbrev, ncnt u16
            _low, _high, ncnt, _rate = struct.unpack_from("<QQii", data, pos)
            pos += 40 + 2 * ncnt
        elif tag == 1:  # arc: from_pc, self_pc, count
            pos += 20
            arcs += 1
        else:
            raise AssertionError(f"unknown gmon.out record tag {tag}")
    return arcs


def _normalised(stderr: bytes) -> list[str]:
    return [re.sub(r"\d+", "N", line) for line in stderr.decode(errors="replace").splitlines()
            if not line.startswith("ktracecli:")]


def record_and_compare(ktrace: Ktrace, tmp_path: Path, argv: Sequence[str | os.PathLike[str]],
                       name: str = "trace.data") -> tuple[Run, Run, Summary, ShowOutput]:
    """Untraced run, traced run (with the config as it is), ``show``; outputs must agree."""
    untraced = run_untraced(argv, tmp_path / "untraced")
    data = tmp_path / name
    traced, summary = ktrace.record(data, argv)
    assert traced.stdout == untraced.stdout, "tracing changed the program's stdout"
    assert traced.returncode == untraced.shell_status, (
        f"record exited {traced.returncode}, the program alone {untraced.shell_status}")
    assert _normalised(traced.stderr) == _normalised(untraced.stderr)
    show = ktrace.show(data)
    assert summary.lost == 0 and not show.lost, f"events were lost: {summary}, {show.lost}"
    assert summary.events == len(show.entries) == show.in_buffer
    return untraced, traced, summary, show


def per_thread(show: ShowOutput) -> dict[int, list[tuple[str, str]]]:
    """(function, parent) of each entry, per thread id, in order; a parent shown as an address
    (libc without symbols, placed anywhere by ASLR) becomes ``0x?``."""
    out: dict[int, list[tuple[str, str]]] = collections.defaultdict(list)
    for entry in show.entries:
        out[entry.tid].append((entry.func, "0x?" if entry.parent.startswith("0x") else entry.parent))
    return out


@pytest.mark.parametrize(("form", "variant"), BUILDS, ids=[v.name for _f, v in BUILDS])
def test_every_form(builder: Builder, ktrace: Ktrace, tmp_path: Path, form: str,
                    variant: Variant) -> None:
    exe = build(builder, "mcount", variant)
    configure(ktrace, "mcount")
    untraced, traced, summary, show = record_and_compare(ktrace, tmp_path, [exe, N, NTHREADS])

    expected = program_counts(untraced.stdout)
    for name in COUNTED:
        assert expected[name] > 0, f"{name} is never called: the test could not fail"
        assert show.counts[name] == expected[name], (
            f"{name}: traced {show.counts[name]} calls, the program made {expected[name]}")
    assert show.counts["main"] == 1
    assert show.counts["thread_main"] == int(NTHREADS)
    assert not {"_start", "_init", "frame_dummy"} & set(show.counts), "crt code has no call site"
    assert summary.traced == len(COUNTED) + 2, summary
    assert "# engine: mcount" in show.header

    # the caller is read from the right slot: [rsp] at entry, [rbp+8] after a -pg prologue
    assert {e.parent for e in show.of("branch")} == {"tree"}
    assert {e.parent for e in show.of("twice")} | {e.parent for e in show.of("thrice")} == {"apply"}
    assert {e.parent for e in show.of("fib")} == {"fib", "main"}
    assert {e.parent for e in show.of("worker")} == {"thread_main"}

    # thread i called leaf 10*(i+1) times from worker
    facts = program_facts(traced.stderr)
    tids = [int(line.split()[2]) for line in facts["thread"]]
    threads = per_thread(show)
    for i, tid in enumerate(tids):
        assert threads[tid].count(("leaf", "worker")) == 10 * (i + 1), (i, tid)

    if "-pg" in variant.flags and "-mnop-mcount" not in variant.flags:
        # untraced, glibc's gprof mcount ran at every site; traced, every site is a NOP or ours
        assert gmon_arcs(tmp_path / "untraced" / "gmon.out") > 0
        assert gmon_arcs(ktrace.cwd / "gmon.out") == 0, "a site still called glibc's mcount"


@pytest.mark.parametrize("pie", list(PIE))
def test_selected_functions_only(builder: Builder, ktrace: Ktrace, tmp_path: Path, pie: str) -> None:
    exe = build(builder, "mcount", Variant(f"pg-O2-{pie}", ("-O2", "-pg", *PIE[pie])))
    configure(ktrace, "mcount", ["leaf", "*ice"])
    untraced, _traced, summary, show = record_and_compare(ktrace, tmp_path, [exe, N, NTHREADS])
    expected = program_counts(untraced.stdout)
    assert set(show.counts) == {"leaf", "twice", "thrice"}
    for name in show.counts:
        assert show.counts[name] == expected[name]
    assert (summary.traced, summary.refused) == (3, 0)
    # the sites of the functions not traced are NOPs too: glibc's mcount never ran
    assert gmon_arcs(ktrace.cwd / "gmon.out") == 0


@pytest.mark.parametrize("pie", list(PIE))
def test_same_entries_under_both_engines(builder: Builder, ktrace: Ktrace, tmp_path: Path,
                                         pie: str) -> None:
    """One -pg -mfentry binary, engine mcount then engine ktrace (config file only)."""
    exe = build(builder, "mcount", Variant(f"fentry-O2-{pie}", ("-O2", "-pg", "-mfentry", *PIE[pie])))
    runs = {}
    for engine in ("mcount", "ktrace"):
        configure(ktrace, engine, [*COUNTED, "thread_main", "main"])
        assert ktrace.ok("engine").stdout.strip() == engine
        _untraced, traced, summary, show = record_and_compare(ktrace, tmp_path, [exe, N, NTHREADS],
                                                             f"{engine}.data")
        assert traced.stderr.decode().splitlines()[-1].endswith(f"engine {engine}")
        assert f"# engine: {engine}" in show.header
        assert summary.traced == len(COUNTED) + 2
        # threads are matched by order of creation (their ids differ between runs)
        facts = program_facts(traced.stderr)
        order = [int(facts["pid"][0])] + [int(line.split()[2]) for line in facts["thread"]]
        threads = per_thread(show)
        assert set(threads) == set(order)
        runs[engine] = [threads[tid] for tid in order]
    for i, (ours, theirs) in enumerate(zip(runs["mcount"], runs["ktrace"])):
        assert ours == theirs, f"thread {i}: the engines saw different function entries"


def test_program_without_sites_is_one_line_error(builder: Builder, ktrace: Ktrace,
                                                 tmp_path: Path) -> None:
    exe = builder.build("mcount", Variant("plain-O2-pie", ("-O2", "-fPIE", "-pie")))
    for patterns in ((), ("leaf",)):
        configure(ktrace, "mcount", patterns)
        proc = ktrace.run("record", "-o", tmp_path / "d", "--", exe)
        line = assert_user_error(proc, NO_SITE)
        assert exe.name in line
        assert proc.stdout == "", "the program ran although nothing can be traced"
        assert not (tmp_path / "d").exists()
    proc = ktrace.ok("available", "--rejected", exe)
    rejected = dict(line.split("\t", 1) for line in proc.stdout.splitlines())
    for name in [*COUNTED, "main"]:
        assert rejected[name] == NO_SITE
    assert "0 functions traceable" in proc.stderr


def test_available_lists_functions_with_sites(builder: Builder, ktrace: Ktrace) -> None:
    exe = builder.build("mcount", Variant("pg-O0-nopie", ("-O0", "-pg", *PIE["nopie"])))
    configure(ktrace, "mcount")
    listed = ktrace.ok("available", exe).stdout.split()
    assert set(listed) == {*COUNTED, "main", "thread_main"}
    rejected = dict(line.split("\t", 1) for line in ktrace.ok("available", "--rejected", exe).stdout.splitlines())
    assert rejected["_start"] == NO_SITE
    assert not set(listed) & set(rejected)


@pytest.mark.parametrize(("opt", "pie"), [(o, p) for o in ("O0", "O2") for p in PIE])
def test_pg_without_frame_pointer_is_refused(builder: Builder, ktrace: Ktrace, tmp_path: Path,
                                             opt: str, pie: str) -> None:
    """gcc refuses -pg -fomit-frame-pointer, so nofp_leaf is hand-written assembly."""
    exe = build(builder, "mcount_nofp", Variant(f"pg-{opt}-{pie}", (f"-{opt}", "-pg", *PIE[pie])))
    configure(ktrace, "mcount")
    rejected = dict(line.split("\t", 1) for line in ktrace.ok("available", "--rejected", exe).stdout.splitlines())
    assert rejected["nofp_leaf"].startswith("call mcount without a frame pointer: "), rejected["nofp_leaf"]

    untraced, _traced, summary, show = record_and_compare(ktrace, tmp_path, [exe, "30"])
    expected = program_counts(untraced.stdout)
    assert show.counts["with_fp"] == expected["with_fp"] == 30
    assert show.counts["nofp_leaf"] == 0
    assert summary.refused >= 1
    # the refused function's site is disabled too: glibc's mcount never ran
    assert gmon_arcs(tmp_path / "untraced" / "gmon.out") > 0
    assert gmon_arcs(ktrace.cwd / "gmon.out") == 0

    # asked for by name, it is refused as ktrace refuses what it cannot patch: counted, not traced
    configure(ktrace, "mcount", ["nofp_leaf"])
    _untraced, _traced, summary, show = record_and_compare(ktrace, tmp_path, [exe, "30"], "d2")
    assert (summary.traced, summary.refused, len(show.entries)) == (0, 1, 0)
