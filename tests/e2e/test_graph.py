"""The function_graph tracer on real programs, with both engines.

Each program (tests/programs/graph_*.c, graph_exceptions.cc) is built for the ktrace
engine (-O2 and -O0) and for the mcount engine (-O2 -pg -mfentry, and -O2 -pg, whose sites
come after the prologue), run untraced and
traced: its stdout and exit status must not change, the call tree ``show --per-thread``
prints must be the one written below by hand from the program's source (durations,
CPUs and ids normalised away), and every function must be entered and left as often
as the program counted its own calls (a frame left by longjmp or an exception counts
as entered and closed).
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pytest

from conftest import (Builder, GraphOutput, Ktrace, Run, Summary, Variant, assert_nesting,
                      parse_graph, program_counts, program_facts)

O2 = Variant("graph-O2", ("-O2",))
O0 = Variant("graph-O0", ("-O0",))
FENTRY = Variant("graph-O2-pg-fentry", ("-O2", "-pg", "-mfentry", "-DFENTRY"))
#: -pg alone: the site is after the prologue, the return slot at [rbp+8]
PG = Variant("graph-O2-pg", ("-O2", "-pg", "-DMCOUNT"))
#: (engine, build) pairs every tree test runs with
BUILDS = [("ktrace", O2), ("ktrace", O0), ("mcount", FENTRY), ("mcount", PG)]
BUILD_IDS = ["ktrace-O2", "ktrace-O0", "mcount-fentry-O2", "mcount-pg-O2"]


@dataclass
class GraphRun:
    """An untraced run, the traced run of the same command, and what ``show`` printed."""

    untraced: Run
    traced: Run
    summary: Summary
    show: GraphOutput
    data: Path

    @property
    def counts(self) -> dict[str, int]:
        return program_counts(self.untraced.stdout)

    @property
    def facts(self) -> dict[str, list[str]]:
        return program_facts(self.traced.stderr)


def _normalised(stderr: bytes) -> list[str]:
    """The program's stderr lines, numbers masked, in any order (threads print in any order)."""
    return sorted(re.sub(r"\d+", "N", line) for line in stderr.decode(errors="replace").splitlines()
                  if not line.startswith("ktracecli:"))


def graph_record(ktrace: Ktrace, tmp_path: Path, engine: str, argv: Sequence[str | os.PathLike[str]],
                 patterns: Sequence[str], settings: Sequence[tuple[str, str]] = ()) -> GraphRun:
    """Record ``argv`` with ENGINE + function_graph; the program must behave as untraced."""
    ktrace.ok("engine", engine)
    ktrace.ok("tracer", "function_graph")
    ktrace.ok("ktrace", "clear")
    ktrace.ok("ktrace", "add", *patterns)
    for name, value in settings:
        ktrace.ok("config", name, value)
    cwd = tmp_path / "untraced"
    cwd.mkdir(exist_ok=True)
    proc = subprocess.run([str(a) for a in argv], capture_output=True, cwd=cwd, timeout=300)
    untraced = Run(proc.returncode, proc.stdout, proc.stderr)
    data = tmp_path / "graph.data"
    traced, summary = ktrace.record(data, argv)
    assert traced.stdout == untraced.stdout, "tracing changed the program's stdout"
    assert traced.returncode == untraced.shell_status, (
        f"record exited {traced.returncode}, the program alone {untraced.shell_status}")
    assert _normalised(traced.stderr) == _normalised(untraced.stderr)
    show = parse_graph(ktrace.ok("show", "--per-thread", data).stdout)
    assert summary.lost == 0 and not show.lost, f"events were lost: {summary}, {show.lost}"
    assert summary.refused == 0, summary
    return GraphRun(untraced, traced, summary, show, data)


def tree(text: str) -> str:
    """An expected tree written in this file: dedented, without blank lines."""
    lines = [line for line in text.split("\n") if line.strip()]
    margin = min(len(line) - len(line.lstrip()) for line in lines)
    return "\n".join(line[margin:] for line in lines)


def around(func: str, *inner: str) -> str:
    """``func() {``, the ``inner`` trees one level deeper, ``}``."""
    body = "\n".join(textwrap.indent(part, "  ") for part in inner)
    return f"{func}() {{\n{body}\n}}"


def assert_counts(run: GraphRun, names: Sequence[str], tid: int | None = None,
                  counts: dict[str, int] | None = None, exits: dict[str, int] | None = None) -> None:
    """Each function entered (and left) as often as the program says it was called."""
    expected = counts or run.counts
    entries, left = run.show.counts(tid)
    for name in names:
        assert expected[name] > 0, f"{name} is never called: the test could not fail"
        assert entries[name] == expected[name], f"{name}: {entries[name]} entries, {expected[name]} calls"
        want = (exits or {}).get(name, expected[name])
        assert left[name] == want, f"{name}: {left[name]} exits, {want} expected"


def only_thread(run: GraphRun) -> int:
    (tid,) = run.show.threads
    return tid


# --------------------------------------------------------------------------- recursion, returns

BASIC = ["main", "leaf", "fact", "chain", "pair_of", "vec_of", "flag_probe", "flag_leaf", "slow"]
BASIC_TREE = tree("""
    main() {
      fact() {
        fact() {
          fact() {
            leaf();
          }
        }
      }
      chain() {
        chain() {
          chain() {
            leaf();
          }
        }
      }
      pair_of();
      vec_of();
      flag_probe() {
        flag_leaf();
      }
      flag_probe() {
        flag_leaf();
      }
    }
""")


@pytest.mark.parametrize(("engine", "variant"), BUILDS, ids=BUILD_IDS)
def test_recursion_and_returned_values(builder: Builder, ktrace: Ktrace, tmp_path: Path,
                                       engine: str, variant: Variant) -> None:
    exe = builder.build("graph_basic", variant)
    run = graph_record(ktrace, tmp_path, engine, [exe, "3", "2"], BASIC)
    assert b"returns ok\n" in run.traced.stdout  # rax, rdx, xmm0, xmm1 and CF came back
    tid = only_thread(run)
    assert run.show.tree(tid) == BASIC_TREE
    assert_nesting(run.show.threads[tid])
    assert_counts(run, BASIC[1:-1])
    for line in run.show.lines:
        assert (line.duration is None) == (line.kind == "open"), line


@pytest.mark.parametrize(("engine", "variant"), BUILDS, ids=BUILD_IDS)
def test_max_graph_depth(builder: Builder, ktrace: Ktrace, tmp_path: Path, engine: str,
                         variant: Variant) -> None:
    """Calls deeper than max_graph_depth are traced, without hooking their returns."""
    exe = builder.build("graph_basic", variant)
    run = graph_record(ktrace, tmp_path, engine, [exe, "4", "1"], ["main", "fact", "chain", "leaf"],
                       settings=[("max_graph_depth", "3")])
    assert run.show.tree() == tree("""
        main() {
          fact() {
            fact() {
              fact();
              fact();
              leaf();
            }
          }
          chain() {
            chain() {
              leaf();
            }
          }
        }
    """)
    unhooked = [line for line in run.show.lines if line.depth == 3]
    assert unhooked and all(line.duration is None for line in unhooked)
    assert json.loads((run.data / "info.json").read_text())["max_graph_depth"] == 3
    entries, _exits = run.show.counts()
    assert entries["fact"] == run.counts["fact"] == 4


def test_deeper_than_the_shadow_stack(builder: Builder, ktrace: Ktrace, tmp_path: Path) -> None:
    """A 3000-deep recursion: the shadow stack (1023 entries) never overflows; deeper calls are unhooked."""
    exe = builder.build("graph_basic", O2)
    run = graph_record(ktrace, tmp_path, "ktrace", [exe, "1", "3000"], ["main", "chain", "leaf"])
    assert b"returns ok\n" in run.traced.stdout
    entries, exits = run.show.counts()
    assert entries["chain"] == run.counts["chain"] == 3001
    hooked = [line for line in run.show.lines if line.func == "chain" and line.kind == "open"]
    assert len(hooked) == exits["chain"] == 1022  # main holds the first entry
    deep = [line for line in run.show.lines if line.depth == 1023]
    assert {line.func for line in deep} == {"chain", "leaf"}
    assert all(line.kind == "leaf" and line.duration is None for line in deep)
    assert_nesting(run.show.lines)


def test_tracing_thresh(builder: Builder, ktrace: Ktrace, tmp_path: Path) -> None:
    """Only calls of at least tracing_thresh microseconds, and only their returns, as the kernel."""
    exe = builder.build("graph_basic", O2)
    run = graph_record(ktrace, tmp_path, "ktrace", [exe, "3", "2", "3000"], BASIC,
                       settings=[("tracing_thresh", "1000")])
    assert run.show.tree() == tree("""
          } /* slow */
        } /* main */
    """)
    assert all(line.duration is not None and line.duration >= 1000 for line in run.show.lines)
    assert json.loads((run.data / "info.json").read_text())["tracing_thresh"] == 1000


# --------------------------------------------------------------------------- tail calls


def _jumps(exe: Path, func: str) -> set[str]:
    """The functions ``func`` jumps to (objdump), i.e. its tail calls."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(exe)], capture_output=True,
                         text=True, check=True).stdout
    body = out.split(f"<{func}>:\n", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"\bjmp\s+[0-9a-f]+ <([^>+]+)>", body))


@pytest.mark.parametrize(("engine", "variant"), BUILDS, ids=BUILD_IDS)
def test_stack_arguments(builder: Builder, ktrace: Ktrace, tmp_path: Path, engine: str,
                         variant: Variant) -> None:
    """Stack arguments, a struct by value, varargs and double results, each through a hooked return.

    The return is hooked by calling the rest of the function from its stub: the
    arguments must still be found above the return address.  A shifted stack
    changes the printed result (and the exit status) that graph_record compares.
    """
    exe = builder.build("graph_args", variant)
    run = graph_record(ktrace, tmp_path, engine, [exe, "37"], ["main", "many", "by_value", "sum_va", "scale"])
    assert run.untraced.returncode != 0, "the exit status carries the result: it must not be 0 here"
    assert_counts(run, ["many", "by_value", "sum_va", "scale"])


@pytest.mark.parametrize(("engine", "variant"), [("ktrace", O2), ("mcount", FENTRY)],
                         ids=["ktrace-O2", "mcount-fentry-O2"])
def test_tail_calls(builder: Builder, ktrace: Ktrace, tmp_path: Path, engine: str,
                    variant: Variant) -> None:
    exe = builder.build("graph_tail", variant)
    assert "tail_leaf" in _jumps(exe, "tail_mid"), "gcc did not make tail_mid's call a jmp"
    assert "tail_mid" in _jumps(exe, "tail_two"), "gcc did not make tail_two's call a jmp"
    run = graph_record(ktrace, tmp_path, engine, [exe, "2"], ["main", "tail_*"])
    round_ = """
          tail_top() {
            tail_mid() {
              tail_leaf();
            }
          }
          tail_two() {
            tail_mid() {
              tail_leaf();
            }
          }
    """
    assert run.show.tree() == around("main", tree(round_), tree(round_))
    assert_counts(run, ["tail_top", "tail_mid", "tail_leaf", "tail_two"])


# --------------------------------------------------------------------------- longjmp


@pytest.mark.parametrize(("engine", "variant"), BUILDS, ids=BUILD_IDS)
def test_longjmp(builder: Builder, ktrace: Ktrace, tmp_path: Path, engine: str, variant: Variant) -> None:
    exe = builder.build("graph_longjmp", variant)
    run = graph_record(ktrace, tmp_path, engine, [exe, "1"], ["main", "catcher", "thrower", "after", "leaf"])
    assert run.show.tree() == tree("""
        main() {
          catcher() {
            thrower() {
              thrower() {
                thrower();
              }
            }
          }
          after() {
            leaf();
          }
          thrower() {
            thrower();
          }
          after() {
            leaf();
          }
        }
    """)
    assert_counts(run, ["catcher", "thrower", "after", "leaf"])


# --------------------------------------------------------------------------- signals

SIGNAL_TREE = tree("""
    main() {
      outer() {
        raiser() {
          on_usr1() {
            sig_leaf();
          }
          sig_leaf();
        }
      }
      outer() {
        raiser() {
          on_usr2() {
            sig_leaf();
          }
          sig_leaf();
        }
      }
    }
""")
SIGNAL_FUNCS = ["main", "outer", "raiser", "sig_leaf", "on_usr1", "on_usr2", "work", "tick"]


@pytest.mark.parametrize(("engine", "variant"), BUILDS, ids=BUILD_IDS)
def test_signal_handlers(builder: Builder, ktrace: Ktrace, tmp_path: Path, engine: str,
                         variant: Variant) -> None:
    """Handlers on the same stack and on a sigaltstack above the frames they interrupt."""
    exe = builder.build("graph_signal", variant)
    run = graph_record(ktrace, tmp_path, engine, [exe], SIGNAL_FUNCS)
    assert run.show.tree() == SIGNAL_TREE
    assert_counts(run, ["outer", "raiser", "sig_leaf", "on_usr1", "on_usr2"])


@pytest.mark.parametrize(("engine", "variant"), [("ktrace", O2), ("mcount", FENTRY)],
                         ids=["ktrace-O2", "mcount-fentry-O2"])
def test_signal_storm(builder: Builder, ktrace: Ktrace, tmp_path: Path, engine: str,
                      variant: Variant) -> None:
    """A timer's handler calling traced code lands inside the handler and the trampoline too.

    A signal that comes between a shadow-stack push and the reservation of its record
    (a few instructions) puts the handler's lines before the interrupted entry's, as an
    interrupt does in the kernel's trace; so the counts are checked, not the nesting.
    """
    exe = builder.build("graph_signal", variant)
    run = graph_record(ktrace, tmp_path, engine, [exe, "300000"], SIGNAL_FUNCS)
    (ticks,) = (int(n) for n in run.facts["ticks"])
    assert ticks >= 10
    assert_counts(run, ["work", "tick", "sig_leaf", "outer", "raiser"], counts={**run.counts, "tick": ticks})


# --------------------------------------------------------------------------- C++ exceptions

EXCEPTION_FUNCS = ["main", "catcher", "thrower", "cleanup", "handled", "outer_catch", "middle", "nested",
                   "inner_catch"]


@pytest.mark.parametrize(("engine", "variant"), BUILDS, ids=BUILD_IDS)
def test_cxx_exceptions(builder: Builder, ktrace: Ktrace, tmp_path: Path, engine: str,
                        variant: Variant) -> None:
    """Thrown through traced frames, caught, rethrown, and thrown inside a destructor while unwinding."""
    exe = builder.build("graph_exceptions", variant)
    run = graph_record(ktrace, tmp_path, engine, [exe, "1"], EXCEPTION_FUNCS)
    assert run.show.tree() == tree("""
        main() {
          catcher() {
            thrower() {
              thrower() {
                thrower() {
                  cleanup();
                }
                cleanup();
              }
              cleanup();
            }
            handled();
          }
          outer_catch() {
            middle() {
              thrower() {
                cleanup();
              }
              cleanup();
            }
            handled();
          }
          nested() {
            thrower() {
              inner_catch();
            }
            handled();
          }
        }
    """)
    assert_counts(run, EXCEPTION_FUNCS[1:])
    assert_nesting(run.show.lines)


# --------------------------------------------------------------------------- fork


@pytest.mark.parametrize(("engine", "variant"), BUILDS, ids=BUILD_IDS)
def test_fork(builder: Builder, ktrace: Ktrace, tmp_path: Path, engine: str, variant: Variant) -> None:
    """Forked inside traced frames: the child returns through the shadow stack it inherited."""
    exe = builder.build("graph_fork", variant)
    run = graph_record(ktrace, tmp_path, engine, [exe, "2"],
                       ["main", "forker", "child_work", "parent_work", "f_leaf", "after_fork"])
    (parent,) = (int(p) for p in run.facts["parent"])
    children = [int(c) for c in run.facts["child"]]
    assert set(run.show.threads) == {parent, *children}
    parent_round = """
          forker() {
            parent_work() {
              f_leaf();
            }
          }
          after_fork();
    """
    assert run.show.tree(parent) == around("main", tree(parent_round), tree(parent_round))
    assert_counts(run, ["forker", "parent_work", "f_leaf", "after_fork"], parent)
    child_counts: dict[str, int] = collections.Counter()
    for line in run.untraced.stdout.decode().splitlines():
        if line.startswith("child count "):
            _c, _count, name, n = line.split()
            child_counts[name] += int(n)
    for child in children:  # its trace starts inside main and forker: at depth 2
        assert run.show.tree(child) == textwrap.indent(tree("""
                child_work() {
                  f_leaf();
                }
              } /* forker */
              after_fork();
        """), "  ")
    entries = sum((run.show.counts(c)[0] for c in children), collections.Counter())
    for name in ("child_work", "f_leaf", "after_fork"):
        assert entries[name] == child_counts[name] > 0, name


# --------------------------------------------------------------------------- threads


@pytest.mark.parametrize(("engine", "variant"), BUILDS, ids=BUILD_IDS)
def test_threads(builder: Builder, ktrace: Ktrace, tmp_path: Path, engine: str, variant: Variant) -> None:
    """A shadow stack per thread; one thread ends with pthread_exit inside traced frames."""
    exe = builder.build("graph_threads", variant)
    run = graph_record(ktrace, tmp_path, engine, [exe, "3"], ["main", "t_*"])
    workers = {int(i): int(tid) for i, _tid, tid in (f.split() for f in run.facts["thread"])}
    (exiter,) = (int(f.split()[1]) for f in run.facts["exiter"])
    main_tid = next(t for t in run.show.threads if t not in workers.values() and t != exiter)
    assert run.show.tree(main_tid) == tree("main() {\n  t_leaf();\n}")
    for i, tid in workers.items():
        leaves = "\n".join(["    t_leaf();"] * (i + 1))
        assert run.show.tree(tid) == tree(f"t_main() {{\n  t_work() {{\n{leaves}\n  }}\n}}")
    assert run.show.tree(exiter) == tree("t_exiter() {\n  t_exit_inner() {")
    assert_counts(run, ["t_main", "t_work", "t_leaf"])

    merged = parse_graph(ktrace.ok("show", run.data).stdout)
    assert sorted(line.text for line in merged.lines) == sorted(line.text for line in run.show.lines)
    assert merged.switches, "five threads on two CPUs, and no task-switch line"
    tids = {main_tid, exiter, *workers.values()}
    for _cpu, old, new in merged.switches:
        assert int(old.rpartition("-")[2]) in tids and int(new.rpartition("-")[2]) in tids


@pytest.mark.parametrize(("engine", "variant"), [("ktrace", O2), ("mcount", FENTRY)],
                         ids=["ktrace-O2", "mcount-fentry-O2"])
def test_a_reused_slot_starts_with_an_empty_shadow_stack(builder: Builder, ktrace: Ktrace, tmp_path: Path,
                                                         engine: str, variant: Variant) -> None:
    """Threads that end inside traced frames, one after the other, on the same thread pointer."""
    exe = builder.build("graph_threads", variant)
    run = graph_record(ktrace, tmp_path, engine, [exe, "1", "4"], ["main", "t_*"])
    exiters = [f.split() for f in run.facts["exiter"]]  # "tid T self P"
    pointers = collections.Counter(pointer for _t, _tid, _s, pointer in exiters)
    assert max(pointers.values()) > 1, f"no thread pointer was reused: the test could not fail ({pointers})"
    for _t, tid, _s, _pointer in exiters:
        assert run.show.tree(int(tid)) == tree("t_exiter() {\n  t_exit_inner() {")


GRAPH_LINE_RE = re.compile(r"^ (?P<cpu> *\d+)\) (?P<duration>.{14})\|  (?P<indent>(?:  )*)(?P<body>\S.*)$")


def _graph_lines(text: str) -> list[tuple[str, str, bool]]:
    """(indent, body, has a duration) of each function_graph line of ``text``; other lines are left out."""
    out = []
    for line in text.splitlines():
        m = GRAPH_LINE_RE.match(line)
        if m:
            out.append((m.group("indent"), m.group("body"), bool(m.group("duration").strip())))
    return out


@pytest.mark.parametrize(("engine", "variant"), [BUILDS[0], BUILDS[2]], ids=[BUILD_IDS[0], BUILD_IDS[2]])
def test_live_streams_the_same_graph_as_show(builder: Builder, ktrace: Ktrace, tmp_path: Path,
                                              engine: str, variant: Variant) -> None:
    """``record --live``: the tree streamed while the program runs is the tree ``show`` prints, though a
    call's entry and return come in different rounds (``slow`` sleeps 30 ms inside main)."""
    exe = builder.build("graph_basic", variant)
    ktrace.ok("engine", engine)
    ktrace.ok("tracer", "function_graph")
    ktrace.ok("ktrace", "clear")
    ktrace.ok("ktrace", "add", *BASIC)
    data = tmp_path / "live.data"
    argv = [str(exe), "3", "2", "30000"]
    untraced = subprocess.run(argv, capture_output=True, timeout=300)
    proc = subprocess.run(ktrace.argv("record", "--live", "-o", data, "--", *argv), capture_output=True,
                          cwd=ktrace.cwd, env=ktrace.env, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    streamed = _graph_lines(out)
    program = [line for line in out.splitlines() if not GRAPH_LINE_RE.match(line)]
    assert "\n".join(program) + "\n" == untraced.stdout.decode(), "the program's own lines came through"
    shown = _graph_lines(ktrace.ok("show", data).stdout)
    assert len(shown) > 20 and ("  ", "slow();", True) in shown, shown
    assert streamed == shown
