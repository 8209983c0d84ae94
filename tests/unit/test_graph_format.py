"""function_graph output against ../shared/ftrace-format.md, section 3, one option at a time.

Traces are built in memory (records as the tracee's handler writes them, a clock of one
nanosecond per tick), so every expected line below is the format document's own.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from ktracecli.datadir import ThreadData, TraceData
from ktracecli.interface import ShowSettings
from ktracecli.options import TraceOptions
from ktracecli.runtime.layout import CommitWord, commit_word
from ktracecli_function_graph.output import duration_number, mark, write_trace
from ktracecli_function_graph.records import COMMIT, RECORD_DTYPE, Kind, info_word

E, N, X, C = Kind.ENTRY, Kind.NOHOOK, Kind.EXIT, Kind.CLOSED
DASHES = " " + "-" * 42


def thread(comm: str, tid: int, events: list[tuple[int, str, Kind, int]], sites: list[str], cpu: int = 0,
           lost: list[tuple[int, int]] | None = None) -> ThreadData:
    """A thread's records from (ns, function, kind, depth) events."""
    records = np.zeros(len(events), RECORD_DTYPE)
    for i, (ns, func, kind, depth) in enumerate(events):
        if func not in sites:
            sites.append(func)
        records[i] = (ns, sites.index(func), info_word(depth, kind, cpu))
    return ThreadData(tid, tid, comm, records, lost or [])


def trace(threads: list[ThreadData], sites: list[str], ncpus: int = 2, ns0: int = 0,
          thresh: int = 0) -> TraceData:
    info = {"tracer": "function_graph", "engine": "ktrace", "ncpus": ncpus, "tracing_thresh": thresh,
            "clock": {"tsc0": 0, "ns0": ns0, "ns_per_tick": 1.0}}
    return TraceData(Path("."), info, sites, [], threads)


def show(data: TraceData, *options: str, per_thread: bool = False) -> list[str]:
    opts = TraceOptions()
    for option in options:
        opts = opts.set(option)
    out = io.StringIO()
    write_trace(data, out, ShowSettings(opts, per_thread))
    text = out.getvalue()
    assert text.endswith("\n")
    return text[:-1].split("\n")


def bash_and_sshd() -> TraceData:
    """The format document's default example: bash's do_sys_open, then sshd returning from schedule."""
    sites: list[str] = []
    bash = thread("bash", 1977, [
        (1_000, "do_sys_open", E, 0),
        (1_100, "getname", E, 1),
        (1_200, "kmem_cache_alloc", E, 2),
        (2_582, "kmem_cache_alloc", X, 2),
        (3_578, "getname", X, 1),
        (4_000, "alloc_fd", E, 1),
        (4_668, "alloc_fd", X, 1),
        (13_345, "do_sys_open", X, 0),
    ], sites)
    sshd = thread("sshd", 1974, [(20_000, "schedule", X, 1)], sites)
    return trace([bash, sshd], sites)


def test_default_options_as_the_document_shows_them() -> None:
    lines = show(bash_and_sshd())
    assert lines == [
        "# tracer: function_graph",
        "# engine: ktrace",
        "#",
        "# CPU  DURATION                  FUNCTION CALLS",
        "# |     |   |                     |   |   |   |",
        " 0)               |  do_sys_open() {",
        " 0)               |    getname() {",
        " 0)   1.382 us    |      kmem_cache_alloc();",
        " 0)   2.478 us    |    }",
        " 0)   0.668 us    |    alloc_fd();",
        " 0) + 12.345 us   |  }",
        DASHES,
        " 0)   bash-1977    =>   sshd-1974   ",
        DASHES,
        "",
        # the entry of schedule is not in the trace: no duration is known (the kernel's
        # return event carries its call time; ours, 16 bytes, do not)
        " 0)               |    } /* schedule */",
    ]


@pytest.mark.parametrize(("ns", "text"), [
    (313, "0.313"), (12_345, "12.345"), (1_837_709, "1837.709"), (33_998_590, "33998.59"),
    (119_760_200, "119760.2"), (3_594_274_000, "3594274"),
    (1_999, "1.999"), (12_345_678, "12345.67"), (999, "0.999"), (0, "0.000"),
])
def test_duration_numbers_are_truncated_to_seven_digits(ns: int, text: str) -> None:
    assert duration_number(ns) == text


@pytest.mark.parametrize(("ns", "symbol"), [
    (10_000, " "), (10_001, "+"), (100_000, "+"), (100_001, "!"), (1_000_000, "!"), (1_000_001, "#"),
    (10_000_000, "#"), (10_000_001, "*"), (100_000_000, "*"), (100_000_001, "@"),
    (1_000_000_000, "@"), (1_000_000_001, "$"),
])
def test_overhead_marks_are_for_durations_strictly_above_each_limit(ns: int, symbol: str) -> None:
    assert mark(ns) == symbol


def _one_call(ns: int) -> TraceData:
    sites: list[str] = []
    return trace([thread("prog", 7, [(0, "f", E, 0), (ns, "f", X, 0)], sites)], sites)


@pytest.mark.parametrize(("ns", "column"), [
    (313, "   0.313 us    |  "),
    (12_345, " + 12.345 us   |  "),
    (140_417, " ! 140.417 us  |  "),
    (1_837_709, " # 1837.709 us |  "),
    (33_998_590, " * 33998.59 us |  "),
    (119_760_200, " @ 119760.2 us |  "),
    (3_594_274_000, " $ 3594274 us  |  "),
])
def test_funcgraph_overhead_marks_in_the_duration_column(ns: int, column: str) -> None:
    assert show(_one_call(ns))[-1] == f" 0){column}f();"


def test_nofuncgraph_overhead_prints_no_marks() -> None:
    assert show(_one_call(12_345), "nofuncgraph-overhead")[-1] == " 0)   12.345 us   |  f();"
    assert show(_one_call(3_594_274_000), "nofuncgraph-overhead")[-1] == " 0)   3594274 us  |  f();"


def test_nofuncgraph_duration_drops_the_column_and_its_header() -> None:
    lines = show(bash_and_sshd(), "nofuncgraph-duration")
    assert lines[3:5] == ["# CPU               FUNCTION CALLS", "# |                 |   |   |   |"]
    assert lines[5:11] == [
        " 0) do_sys_open() {",
        " 0)   getname() {",
        " 0)     kmem_cache_alloc();",
        " 0)   }",
        " 0)   alloc_fd();",
        " 0) }",
    ]


def test_nofuncgraph_cpu_drops_the_cpu_column() -> None:
    lines = show(bash_and_sshd(), "nofuncgraph-cpu")
    assert lines[3:5] == ["#  DURATION                  FUNCTION CALLS", "#   |   |                     |   |   |   |"]
    assert lines[5] == "              |  do_sys_open() {"
    assert lines[10] == "+ 12.345 us   |  }"
    assert lines[12] == " 0)   bash-1977    =>   sshd-1974   "  # the task-switch line keeps its CPU


def test_funcgraph_proc_adds_the_centred_task_column() -> None:
    lines = show(bash_and_sshd(), "funcgraph-proc")
    assert lines[3:5] == [
        "# CPU  TASK/PID         DURATION                  FUNCTION CALLS",
        "# |     |    |           |   |                     |   |   |   |",
    ]
    assert lines[5] == " 0)   bash-1977    |               |  do_sys_open() {"
    assert lines[10] == " 0)   bash-1977    | + 12.345 us   |  }"


@pytest.mark.parametrize(("comm", "tid", "column"), [
    ("sh", 4802, "   sh-4802    "),           # 7 characters: 3 spaces left, 4 right
    ("bash", 1977, "  bash-1977   "),
    ("kworker/0:1", 12345, "kworker-12345 "),  # comm cut to 7 characters
    ("averylongname", 1234567890, "averylo-1234567890"),
])
def test_proc_column_is_centred_with_the_odd_space_on_the_right(comm: str, tid: int, column: str) -> None:
    sites: list[str] = []
    data = trace([thread(comm, tid, [(0, "f", E, 0), (313, "f", X, 0)], sites)], sites)
    assert show(data, "funcgraph-proc")[-1] == f" 0) {column} |   0.313 us    |  f();"


def test_funcgraph_abstime_and_proc_as_the_document_shows_them() -> None:
    sites: list[str] = []
    sh = thread("sh", 4802, [
        (0, "d_free", E, 0),
        (1_000, "call_rcu", E, 1),
        (1_616, "call_rcu", X, 1),
        (5_151, "d_free", X, 0),
    ], sites, cpu=1)
    data = trace([sh], sites, ns0=360_774_522_999)
    lines = show(data, "funcgraph-abstime", "funcgraph-proc")
    assert lines[3:] == [
        "#     TIME        CPU  TASK/PID         DURATION                  FUNCTION CALLS",
        "#      |          |     |    |           |   |                     |   |   |   |",
        "  360.774522 |   1)    sh-4802     |               |  d_free() {",
        "  360.774523 |   1)    sh-4802     |   0.616 us    |    call_rcu();",
        "  360.774528 |   1)    sh-4802     |   5.151 us    |  }",
    ]


def test_funcgraph_abstime_alone() -> None:
    lines = show(_one_call(313), "funcgraph-abstime")
    assert lines[3:] == [
        "#     TIME        CPU  DURATION                  FUNCTION CALLS",
        "#      |          |     |   |                     |   |   |   |",
        "    0.000000 |   0)   0.313 us    |  f();",
    ]


def test_funcgraph_tail_names_every_return() -> None:
    lines = show(bash_and_sshd(), "funcgraph-tail")
    assert lines[8] == " 0)   2.478 us    |    } /* getname */"
    assert lines[10] == " 0) + 12.345 us   |  } /* do_sys_open */"
    assert lines[7] == " 0)   1.382 us    |      kmem_cache_alloc();"  # leaves stay leaves


def test_a_trace_starting_mid_call_keeps_the_recorded_depths() -> None:
    sites: list[str] = []
    data = trace([thread("prog", 9, [
        (0, "do_foo", X, 3),
        (100, "bar", X, 2),
        (200, "baz", E, 2),
        (300, "qux", E, 3),
        (613, "qux", X, 3),
        (1_300, "baz", X, 2),
    ], sites, cpu=1)], sites)
    assert show(data)[5:] == [
        " 1)               |        } /* do_foo */",
        " 1)               |      } /* bar */",
        " 1)               |      baz() {",
        " 1)   0.313 us    |        qux();",
        " 1)   1.100 us    |      }",
    ]


def test_a_return_of_another_function_at_that_depth_is_named() -> None:
    sites: list[str] = []
    data = trace([thread("prog", 9, [(0, "f", E, 0), (10, "g", E, 1), (20, "h", X, 1), (30, "f", X, 0)],
                         sites)], sites)
    assert show(data)[5:] == [" 0)               |  f() {", " 0)               |    g() {",
                              " 0)               |    } /* h */", " 0)   0.030 us    |  }"]


def test_frames_closed_by_longjmp_or_an_exception_print_as_returns() -> None:
    sites: list[str] = []
    data = trace([thread("prog", 9, [(0, "f", E, 0), (10, "g", E, 1), (40, "g", C, 1), (50, "f", X, 0)],
                         sites)], sites)
    assert show(data)[5:] == [" 0)               |  f() {", " 0)   0.030 us    |    g();",
                              " 0)   0.050 us    |  }"]


def test_a_leaf_forgets_the_entry_remembered_at_its_depth() -> None:
    """As the kernel's print_graph_entry_leaf does: a call at a depth means the frame that was
    there has returned, so a later return at that depth has lost its entry (here with the
    second call of f) and is named, without a duration measured from the first call."""
    sites: list[str] = []
    data = trace([thread("prog", 9, [(0, "f", E, 0), (10, "g", E, 0), (20, "g", X, 0), (30, "f", X, 0)],
                         sites, lost=[(1, 1), (3, 2)])], sites)
    assert show(data)[5:] == [" 0)               |  f() {", "CPU:0 [LOST 1 EVENTS]", " 0)   0.010 us    |  g();",
                              "CPU:0 [LOST 2 EVENTS]", " 0)               |  } /* f */"]


def test_calls_without_return_hooking_have_no_duration() -> None:
    sites: list[str] = []
    data = trace([thread("prog", 9, [(0, "f", E, 0), (10, "g", N, 1), (20, "g", N, 1), (50, "f", X, 0)],
                         sites)], sites)
    assert show(data)[5:] == [" 0)               |  f() {", " 0)               |    g();",
                              " 0)               |    g();", " 0)   0.050 us    |  }"]


def test_lost_events_line_comes_before_the_next_event_and_breaks_a_leaf() -> None:
    sites: list[str] = []
    data = trace([thread("prog", 9, [(0, "f", E, 0), (50, "f", X, 0)], sites, cpu=1, lost=[(1, 11745)])],
                 sites)
    assert show(data)[5:] == [" 1)               |  f() {", "CPU:1 [LOST 11745 EVENTS]",
                              " 1)   0.050 us    |  }"]


def test_lost_events_at_the_end_of_a_thread() -> None:
    sites: list[str] = []
    data = trace([thread("prog", 9, [(0, "f", E, 0), (50, "f", X, 0)], sites, lost=[(2, 3)])], sites)
    assert show(data)[-1] == "CPU:0 [LOST 3 EVENTS]"


def test_tracing_thresh_prints_only_returns() -> None:
    sites: list[str] = []
    data = trace([thread("prog", 9, [
        (1_000, "slow", E, 1), (2_001_000, "slow", X, 1),
        (0, "main", E, 0), (3_000_000, "main", X, 0),
    ], sites)], sites, thresh=1000)
    assert show(data)[5:] == [" 0) # 2000.000 us |    } /* slow */", " 0) # 3000.000 us |  } /* main */"]


def test_cpu_column_is_as_wide_as_the_highest_cpu_number() -> None:
    sites: list[str] = []
    data = trace([thread("prog", 9, [(0, "f", E, 0), (313, "f", X, 0)], sites, cpu=3)], sites, ncpus=16)
    assert show(data)[-1] == "  3)   0.313 us    |  f();"


def test_threads_are_merged_by_time_with_task_switch_lines_per_cpu() -> None:
    sites: list[str] = []
    a = thread("prog", 10, [(0, "f", E, 0), (100, "g", E, 1), (150, "g", X, 1), (400, "f", X, 0)], sites)
    b = thread("prog", 11, [(200, "h", E, 0), (250, "h", X, 0)], sites, cpu=1)
    lines = show(trace([a, b], sites))
    assert lines[5:] == [
        " 0)               |  f() {",
        " 0)   0.050 us    |    g();",
        " 1)   0.050 us    |  h();",   # first event on CPU 1: no switch line before it
        " 0)   0.400 us    |  }",
    ]
    c = thread("prog", 12, [(300, "k", E, 0), (310, "k", X, 0)], sites)
    lines = show(trace([a, b, c], sites))
    assert lines[8:13] == [DASHES, " 0)    prog-10     =>    prog-12    ", DASHES, "", " 0)   0.010 us    |  k();"]


def test_per_thread_prints_each_thread_under_its_comm_tid() -> None:
    sites: list[str] = []
    a = thread("prog", 10, [(0, "f", E, 0), (400, "f", X, 0)], sites)
    b = thread("worker", 11, [(200, "h", E, 0), (250, "h", X, 0)], sites)
    assert show(trace([b, a], sites), per_thread=True)[5:] == [
        "# prog-10",
        " 0)   0.400 us    |  f();",
        "",
        "# worker-11",
        " 0)   0.050 us    |  h();",
    ]


def test_record_is_16_bytes_and_commits_by_lap() -> None:
    assert RECORD_DTYPE.itemsize == 16
    assert commit_word(RECORD_DTYPE) is COMMIT
    # capacity 4 (2 bits); tail 6: records 6, 7 end lap 1 (commit 2), 8, 9 start lap 2 (commit 3)
    before, after = np.zeros(2, RECORD_DTYPE), np.zeros(2, RECORD_DTYPE)
    before["info"] = np.uint32(2 << 24 | 0x5A5)
    after["info"] = np.uint32(3 << 24 | 0x5A5)
    assert COMMIT.complete(before, after, 6, 2) == 4
    after["info"][1] = 2 << 24  # a record of the lap before: not written yet
    assert COMMIT.complete(before, after, 6, 2) == 3
    before["info"][0] = 0  # never written
    assert COMMIT.complete(before, after, 6, 2) == 0
    wrapped = np.zeros(1, RECORD_DTYPE)
    wrapped["info"] = np.uint32(0 << 24)  # lap 255 commits as 256 mod 256 = 0
    assert COMMIT.complete(wrapped, wrapped[:0], 255 << 2, 2) == 1


def test_default_commit_word_is_index_plus_one() -> None:
    dtype = np.dtype([("tsc", "<u8"), ("commit", "<u4")])
    rule = commit_word(dtype)
    assert rule == CommitWord()
    ring = np.zeros(3, dtype)
    ring["commit"] = [2**32 - 1, 0, 1]
    assert rule.complete(ring[:2], ring[2:], 2**32 - 2, 20) == 3
    ring["commit"][1] = 7
    assert rule.complete(ring[:2], ring[2:], 2**32 - 2, 20) == 1
