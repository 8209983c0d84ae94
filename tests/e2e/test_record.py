"""record + show on real programs: the trace must agree with what each program counted.

Every test runs the program untraced first and takes its own ``count NAME N`` lines,
pid, thread ids and CLOCK_MONOTONIC window as the truth; the traced run must give the
same stdout and exit status byte for byte, and ``show`` must list each traced function
exactly as many times as the program says it was called.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pytest

from conftest import (STATIC, VARIANT_IDS, VARIANTS, Builder, Ktrace, Run, ShowOutput,
                      Summary, Variant, program_counts, program_facts, run_untraced)

#: Slack allowed between the program's own clock_gettime and the trace's timestamps.
CLOCK_SLACK = 0.002


@dataclass
class Traced:
    """An untraced run, the traced run of the same command, and what was recorded."""

    exe: Path
    untraced: Run
    traced: Run
    summary: Summary
    show: ShowOutput

    @property
    def expected(self) -> dict[str, int]:
        return program_counts(self.untraced.stdout)

    @property
    def facts(self) -> dict[str, list[str]]:
        """The traced run's own stderr facts (its pid, its thread ids...)."""
        return program_facts(self.traced.stderr)


def _normalised_program_stderr(stderr: bytes) -> list[str]:
    lines = stderr.decode(errors="replace").splitlines()
    return [re.sub(r"\d+", "N", line) for line in lines if not line.startswith("ktracecli:")]


def trace(ktrace: Ktrace, tmp_path: Path, argv: Sequence[str | os.PathLike[str]],
          patterns: Sequence[str], stdin: bytes = b"") -> Traced:
    """Run ``argv`` untraced, then traced with ktrace+function and ``patterns``; compare."""
    untraced = run_untraced(argv, stdin)
    ktrace.configure(patterns)
    data = tmp_path / "trace.data"
    traced, summary = ktrace.record(data, argv, stdin)

    assert traced.stdout == untraced.stdout, "tracing changed the program's stdout"
    assert traced.returncode == untraced.shell_status, (
        f"record exited {traced.returncode}, the program alone {untraced.shell_status}")
    assert _normalised_program_stderr(traced.stderr) == _normalised_program_stderr(untraced.stderr)

    show = ktrace.show(data)
    assert summary.lost == 0 and not show.lost, f"events were lost: {summary}, {show.lost}"
    assert summary.events == len(show.entries), (summary, len(show.entries))
    assert show.in_buffer == len(show.entries)
    assert show.written >= show.in_buffer
    assert show.cpus == os.sysconf("SC_NPROCESSORS_ONLN")
    for entry in show.entries:
        assert entry.cpu < show.cpus, entry
        assert entry.comm == Path(argv[0]).name[:15], entry
    _assert_time_ordered_per_thread(show)
    return Traced(Path(argv[0]), untraced, traced, summary, show)


def _assert_time_ordered_per_thread(show: ShowOutput) -> None:
    last: dict[int, float] = {}
    for entry in show.entries:
        assert entry.timestamp >= last.get(entry.tid, 0.0), f"time went backwards: {entry}"
        last[entry.tid] = entry.timestamp


def assert_counts(t: Traced, names: Sequence[str], refused: Sequence[str] = ()) -> None:
    """Each of ``names`` traced as often as the program counted; ``refused`` not at all."""
    expected = t.expected
    for name in names:
        assert name in expected, f"the program does not count {name}"
        assert expected[name] > 0, f"{name} is never called: the test could not fail"
        assert t.show.counts[name] == expected[name], (
            f"{name}: traced {t.show.counts[name]} calls, the program made {expected[name]}")
    for name in refused:
        assert t.show.counts[name] == 0, f"{name} should have been refused but was traced"


BASIC = ["leaf_a", "leaf_b", "mid", "top", "fib"]


def _check_basic(t: Traced) -> None:
    assert_counts(t, BASIC)
    (pid,) = t.facts["pid"]
    start, end = float(t.facts["mono_start"][0]), float(t.facts["mono_end"][0])
    ours = [e for e in t.show.entries if e.func in BASIC]
    for entry in ours:
        assert entry.tid == int(pid), entry
        assert start - CLOCK_SLACK <= entry.timestamp <= end + CLOCK_SLACK, (
            f"{entry} outside the program's own clock window [{start}, {end}]")
    # Parents: BARRIER() in basic.c keeps every call a real call from its caller.
    assert {e.parent for e in t.show.of("leaf_a")} == {"mid"}
    assert {e.parent for e in t.show.of("mid")} == {"top"}
    assert {e.parent for e in t.show.of("top")} == {"main"}
    assert sum(e.parent == "main" for e in t.show.of("leaf_b")) == 7
    assert {e.parent for e in t.show.of("leaf_b")} == {"mid", "main"}
    assert sum(e.parent == "main" for e in t.show.of("fib")) == 1
    assert {e.parent for e in t.show.of("fib")} <= {"fib", "main"}


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_basic_listed_functions(builder: Builder, ktrace: Ktrace, tmp_path: Path,
                                variant: Variant) -> None:
    exe = builder.build("basic", variant)
    t = trace(ktrace, tmp_path, [exe, "40", "12"], BASIC)
    _check_basic(t)
    assert (t.summary.traced, t.summary.refused) == (len(BASIC), 0)
    assert set(t.show.counts) == set(BASIC)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_basic_empty_list_traces_every_function(builder: Builder, ktrace: Ktrace,
                                                tmp_path: Path, variant: Variant) -> None:
    exe = builder.build("basic", variant)
    t = trace(ktrace, tmp_path, [exe, "25", "10"], [])
    _check_basic(t)
    assert t.show.counts["main"] == 1
    assert t.summary.traced >= len(BASIC) + 1


def test_basic_static(builder: Builder, ktrace: Ktrace, tmp_path: Path) -> None:
    exe = builder.build("basic", STATIC)
    t = trace(ktrace, tmp_path, [exe, "30", "11"], BASIC)
    _check_basic(t)
    assert set(t.show.counts) == set(BASIC)


@pytest.mark.parametrize(("patterns", "traced"), [
    (["leaf_*"], {"leaf_a", "leaf_b"}),
    (["*_b", "fib"], {"leaf_b", "fib"}),
    (["*eaf_*"], {"leaf_a", "leaf_b"}),
    (["l?af_[a]", "to?"], {"leaf_a", "top"}),
    (["leaf_*", "mid", "!leaf_b"], {"leaf_a", "mid"}),
], ids=["prefix", "suffix", "substring", "glob", "negation"])
def test_filter_patterns(builder: Builder, ktrace: Ktrace, tmp_path: Path,
                         patterns: list[str], traced: set[str]) -> None:
    exe = builder.build("basic", VARIANTS[-1])
    t = trace(ktrace, tmp_path, [exe, "20", "9"], patterns)
    assert_counts(t, sorted(traced), refused=sorted(set(BASIC) - traced))


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_relocated_entries(builder: Builder, ktrace: Ktrace, tmp_path: Path,
                           variant: Variant) -> None:
    """RIP-relative, call and short-jcc first instructions are relocated, not refused."""
    names = ["rip_first", "call_first", "cf_helper", "jcc_first", "c_bump"]
    exe = builder.build("patchsites", variant)
    t = trace(ktrace, tmp_path, [exe, "300"], names)
    assert_counts(t, names)
    assert (t.summary.traced, t.summary.refused) == (len(names), 0)
    assert {e.parent for e in t.show.of("cf_helper")} == {"call_first"}


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_unsafe_functions_are_refused(builder: Builder, ktrace: Ktrace, tmp_path: Path,
                                      variant: Variant) -> None:
    exe = builder.build("refused", variant)
    t = trace(ktrace, tmp_path, [exe, "200"], ["tiny", "loopy", "fine"])
    assert_counts(t, ["fine"], refused=["tiny", "loopy"])
    assert (t.summary.traced, t.summary.refused) == (1, 2)

    rejected = ktrace.ok("available", exe, "--rejected").stdout
    reasons = dict(line.split("\t", 1) for line in rejected.splitlines() if "\t" in line)
    assert re.search(r"too short", reasons.get("tiny", ""), re.I), rejected
    assert re.search(r"branch target inside patch window", reasons.get("loopy", ""), re.I), rejected
    assert "fine" not in reasons

    available = ktrace.ok("available", exe).stdout.splitlines()
    assert "fine" in available
    assert "tiny" not in available and "loopy" not in available


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_threads(builder: Builder, ktrace: Ktrace, tmp_path: Path, variant: Variant) -> None:
    exe = builder.build("threads", variant)
    t = trace(ktrace, tmp_path, [exe, "4", "500"], ["work"])
    assert_counts(t, ["work"])
    per_thread = {}
    for fact in t.facts["tid"]:
        tid, _, calls = fact.split()
        per_thread[int(tid)] = int(calls)
    assert len(per_thread) == 4
    traced_per_thread = {tid: 0 for tid in per_thread}
    for entry in t.show.of("work"):
        assert entry.tid in per_thread, f"{entry}: not one of the program's threads"
        traced_per_thread[entry.tid] += 1
    assert traced_per_thread == per_thread


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_shared_library_function(builder: Builder, ktrace: Ktrace, tmp_path: Path,
                                 variant: Variant) -> None:
    exe = builder.build("libcall", variant)
    t = trace(ktrace, tmp_path, [exe, "250"], ["toupper:mod:libc.so.6"])
    assert_counts(t, ["toupper"])
    assert set(t.show.counts) == {"toupper"}
    assert {e.parent for e in t.show.of("toupper")} == {"main"}


def test_library_named_by_its_soname(builder: Builder, ktrace: Ktrace, tmp_path: Path) -> None:
    """``:mod:libstdc++.so.6`` names the library ldd shows, although the file is libstdc++.so.6.0.NN."""
    exe = builder.build("cxxlib", VARIANTS[0])
    real = os.path.basename(os.path.realpath("/lib/x86_64-linux-gnu/libstdc++.so.6"))
    assert real != "libstdc++.so.6", "the soname should be a link to a versioned file here"
    t = trace(ktrace, tmp_path, [exe, "40"],
              ["__cxa_allocate_exception:mod:libstdc++.so.6", "__cxa_begin_catch:mod:libstdc++.so.6"])
    assert_counts(t, ["__cxa_allocate_exception", "__cxa_begin_catch"])
    listed = ktrace.ok("available", "--mod", "libstdc++.so.6", exe).stdout.splitlines()
    assert "__cxa_begin_catch [libstdc++.so.6]" in listed


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_exit_status(builder: Builder, ktrace: Ktrace, tmp_path: Path, variant: Variant) -> None:
    exe = builder.build("exits", variant)
    t = trace(ktrace, tmp_path, [exe, "exit3", "77"], ["tick"])
    assert t.traced.returncode == 3
    assert_counts(t, ["tick"])


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_killed_by_signal(builder: Builder, ktrace: Ktrace, tmp_path: Path,
                          variant: Variant) -> None:
    exe = builder.build("exits", variant)
    t = trace(ktrace, tmp_path, [exe, "signal", "55"], ["tick"])
    assert t.untraced.returncode == -10  # SIGUSR1
    assert t.traced.returncode == 128 + 10
    assert_counts(t, ["tick"])


def test_stdin_is_the_programs(builder: Builder, ktrace: Ktrace, tmp_path: Path) -> None:
    exe = builder.build("exits", VARIANTS[0])
    data = bytes(range(256)) * 3 + b"the end\n"
    t = trace(ktrace, tmp_path, [exe, "stdin"], ["tick"], stdin=data)
    assert f"bytes {len(data)}\n".encode() in t.traced.stdout
    assert_counts(t, ["tick"])
    assert b"stderr says hello\n" in t.traced.stderr
