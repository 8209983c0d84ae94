"""The pieces of live tracing that need no traced process: stop kinds, selection while a session
runs, site indices, address spaces, the live writer's lines, the consumer's hand-over to a sink,
the loader hook's shape check, and the data directory's leftovers."""

from __future__ import annotations

import io
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ktracecli import filters
from ktracecli.arch.x86_64 import X86
from ktracecli.datadir import DataWriter, load
from ktracecli.errors import NoMatchError
from ktracecli.interface import Analysis, FunctionSite, LiveBatch
from ktracecli.process import ptrace
from ktracecli.process.remote import restart_pending
from ktracecli.process.world import HELD, StopKind, classify
from ktracecli.runtime import dlhook
from ktracecli.runtime.consumer import Consumer
from ktracecli.runtime.installer import LoadedModule
from ktracecli.runtime.layout import RuntimeLayout
from ktracecli.runtime.shm import SharedRings
from ktracecli.selection import Selector, SiteTable
from ktracecli.traced import Spaces
from ktracecli_function.records import RECORD_DTYPE, encode
from ktracecli_function.live import FunctionLiveWriter


def stopped(sig: int, event: int = 0) -> int:
    return (event << 16) | (sig << 8) | 0x7F


# --------------------------------------------------------------------------- stops


@pytest.mark.parametrize(("status", "seen", "kind"), [
    (stopped(signal.SIGSTOP, ptrace.PTRACE_EVENT_STOP), False, StopKind.BIRTH),
    (stopped(signal.SIGTRAP, ptrace.PTRACE_EVENT_STOP), True, StopKind.INTERRUPT),
    (HELD, True, StopKind.INTERRUPT),
    (stopped(signal.SIGTSTP, ptrace.PTRACE_EVENT_STOP), True, StopKind.GROUP),
    (stopped(signal.SIGTRAP, ptrace.PTRACE_EVENT_FORK), True, StopKind.EVENT),
    (stopped(signal.SIGTRAP, ptrace.PTRACE_EVENT_EXIT), True, StopKind.EVENT),
    (stopped(signal.SIGTRAP | 0x80), True, StopKind.SYSCALL),
    (stopped(signal.SIGUSR1), True, StopKind.SIGNAL),
    (stopped(signal.SIGTRAP), True, StopKind.SIGNAL),
])
def test_stop_kinds(status: int, seen: bool, kind: StopKind) -> None:
    assert classify(status, seen) is kind


@dataclass
class Regs:
    orig_rax: int
    rax: int


@pytest.mark.parametrize(("orig", "rax", "pending"), [
    (0, -512 & (2**64 - 1), True),          # read() held: -ERESTARTSYS
    (230, -516 & (2**64 - 1), True),        # clock_nanosleep: -ERESTART_RESTARTBLOCK
    (202, -513 & (2**64 - 1), True),
    (2**64 - 1, -512 & (2**64 - 1), False),  # not in a system call
    (0, 6, False),                          # read() returned
    (0, -4 & (2**64 - 1), False),           # -EINTR: the program sees it, nothing to restart
])
def test_restart_pending(orig: int, rax: int, pending: bool) -> None:
    assert restart_pending(Regs(orig, rax)) is pending  # type: ignore[arg-type]


# --------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class Engine:
    name = "fake"

    def analyze(self, image: object) -> Analysis:
        raise AssertionError("analyses come from the table below")


MAIN = LoadedModule("/bin/prog", "prog", 0x1000, 0x1000, 0x9000)
LIBC = LoadedModule("/lib/libc.so.6", "libc.so.6", 0x7000_0000, 0x7000_0000, 0x7010_0000)
ANALYSES = {
    MAIN.path: Analysis((FunctionSite("main", 0x100, 10), FunctionSite("work", 0x200, 10)), ()),
    LIBC.path: Analysis((FunctionSite("malloc", 0x900, 10),), ()),
}


def selector(*tokens: str) -> Selector:
    sel = Selector(Engine(), filters.parse_all(tokens))  # type: ignore[arg-type]
    sel._analyses.update(ANALYSES)
    return sel


def names(plan_sites: list[tuple[LoadedModule, FunctionSite]]) -> set[str]:
    return {site.name for _m, site in plan_sites}


def test_a_mod_rule_waits_for_its_library() -> None:
    sel = selector("work", "plug_work:mod:libplug.so")
    assert names(sel.plan([MAIN], "prog", strict=True).sites) == {"work"}


def test_a_rule_for_a_loaded_library_must_match() -> None:
    with pytest.raises(NoMatchError, match="calloc"):
        selector("calloc:mod:libc.so.6").plan([MAIN, LIBC], "prog", strict=True)
    assert names(selector("calloc:mod:libc.so.6", "work").plan([MAIN, LIBC], "prog", strict=False).sites) \
        == {"work"}


def test_rules_can_change_between_plans() -> None:
    sel = selector("work")
    assert names(sel.plan([MAIN, LIBC], "prog").sites) == {"work"}
    sel.rules = filters.parse_all(["malloc:mod:libc*"])
    assert names(sel.plan([MAIN, LIBC], "prog").sites) == {"malloc"}
    sel.rules = []
    assert names(sel.plan([MAIN, LIBC], "prog").sites) == {"main", "work"}


def test_site_indices_are_stable_and_never_reused() -> None:
    table = SiteTable()
    work, main = ANALYSES[MAIN.path].sites[1], ANALYSES[MAIN.path].sites[0]
    assert table.index(MAIN, work) == 0
    assert table.index(MAIN, main) == 1
    assert table.index(MAIN, work) == 0  # disabled and enabled again, or a forked copy
    moved = LoadedModule(MAIN.path, MAIN.name, 0x5000, 0x5000, 0xD000)  # another image of the file
    assert table.index(moved, work) == 2
    assert table.names() == ["work", "main", "work"]
    assert table.entries[2]["addr"] == 0x5000 + 0x200


def test_spaces_record_each_module_once() -> None:
    spaces = Spaces()
    first = spaces.new([MAIN])
    second = spaces.new([MAIN])
    spaces.add(first, [MAIN, LIBC])
    spaces.add(first, [MAIN, LIBC])
    assert (first, second) == (0, 1)
    assert spaces.of(first) == [MAIN, LIBC] and spaces.of(second) == [MAIN]
    assert spaces.modules == [(0, MAIN), (1, MAIN), (0, LIBC)]


# --------------------------------------------------------------------------- live lines


class View:
    ncpus = 2

    def site_name(self, index: int) -> str:
        return ["alpha", "beta"][index]

    def symbolize(self, space: int, addrs: np.ndarray) -> list[str]:
        return [f"caller{space}" for _ in addrs]

    def timestamps_ns(self, tsc: np.ndarray) -> np.ndarray:
        return tsc.astype(np.int64) * 1000  # one tick = 1 us


def records(*rows: tuple[int, int, int], first: int = 0) -> np.ndarray:
    """(tsc, cpu, site) rows as function-tracer records, reserved from index ``first`` of a big ring."""
    out = np.zeros(len(rows), RECORD_DTYPE)
    for i, (tsc, cpu, site) in enumerate(rows):
        out[i] = encode(tsc, site, 0x401000, cpu, first + i, 20)
    return out


def test_live_writer_merges_threads_in_time_and_marks_losses() -> None:
    out = io.StringIO()
    writer = FunctionLiveWriter(View(), out)  # type: ignore[arg-type]
    writer.write([
        LiveBatch(10, 10, "prog", 0, records((5_000_000, 1, 0), (7_000_000, 1, 1)), lost_at=1, lost=3),
        LiveBatch(10, 11, "worker", 1, records((6_000_000, 0, 1)), lost_at=1, lost=2),
    ])
    assert out.getvalue().splitlines() == [
        "            prog-10      [001]      5.000000: alpha <-caller0",
        "          worker-11      [000]      6.000000: beta <-caller1",
        "CPU:0 [LOST 2 EVENTS]",
        "CPU:1 [LOST 3 EVENTS]",
        "            prog-10      [001]      7.000000: beta <-caller0",
    ]


def test_live_writer_reports_a_round_of_losses_only() -> None:
    out = io.StringIO()
    FunctionLiveWriter(View(), out).write([LiveBatch(1, 1, "p", 0, records(), 0, 9)])  # type: ignore[arg-type]
    assert out.getvalue() == "CPU:0 [LOST 9 EVENTS]\n"


# --------------------------------------------------------------------------- consumer


def test_consumer_hands_each_round_to_the_sink(tmp_path: Path) -> None:
    layout = RuntimeLayout.for_buffer(4, RECORD_DTYPE.itemsize, slot_bits=1)
    rings = SharedRings(layout, 0)
    rings.unlink()
    writer = DataWriter(tmp_path / "d")
    consumer = Consumer(writer)
    rounds: list[list[LiveBatch]] = []
    consumer.sink = rounds.append
    consumer.add(os.getpid(), rings, RECORD_DTYPE, space=3)
    slot = rings.slots[0]
    slot.tid, slot.state = os.getpid(), 1
    ring = rings.ring(0, RECORD_DTYPE)
    ring[:2] = records((1, 0, 0), (2, 0, 1))
    slot.head = 2
    slot.lost, slot.drop_pos = 4, 2
    assert consumer.drain() == 2
    ((batch,),) = rounds
    assert (batch.tid, batch.space, batch.lost_at, batch.lost, len(batch.records)) == (os.getpid(), 3, 2, 4, 2)
    ring[2:3] = records((3, 0, 0), first=2)
    slot.head = 3
    consumer.retire(os.getpid(), rings, comm_hint="gone")
    assert len(rounds) == 2 and len(rounds[1][0].records) == 1
    assert consumer.processes == []
    assert writer.events == 3 and writer.lost == 4
    writer.write_json("sites.json", [{"name": "alpha"}, {"name": "beta"}])
    writer.write_json("modules.json", [])
    writer.finish({"tracer": "function", "record_size": RECORD_DTYPE.itemsize})
    (thread,) = load(tmp_path / "d", RECORD_DTYPE).threads
    assert thread.space == 3 and thread.lost == [(2, 4)]


# --------------------------------------------------------------------------- loader hook


@pytest.mark.parametrize(("code", "ok"), [
    (bytes.fromhex("c3 66 66 2e 0f 1f 84 00 00 00 00 00 0f 1f 40 00"), True),   # glibc 2.36
    (bytes.fromhex("f3 0f 1e fa c3 66 2e 0f 1f 84 00 00 00 00 00 90"), True),   # with endbr64
    (bytes.fromhex("c3 cc cc cc cc cc cc cc cc cc cc cc cc cc cc cc"), True),   # int3 padding
    (bytes.fromhex("c3 48 8d 05 a1 20 03 00 90 90 90 90 90 90 90 90"), False),  # code right after
    (bytes.fromhex("55 48 89 e5 5d c3 90 90 90 90 90 90 90 90 90 90"), False),  # not an empty function
])
def test_loader_hook_shape(code: bytes, ok: bool) -> None:
    assert dlhook._shape_ok(code + bytes(16), 0x1000, X86()) is ok


def test_loader_hook_assembles_and_jumps_to_its_code() -> None:
    site = dlhook.HookSite(MAIN, 0x7F00_0000_2060, bytes.fromhex("c3 66 66 2e 0f"))
    layout = RuntimeLayout.for_buffer(64, 24).at(0x7F10_0000_0000)
    code, patch = dlhook.build(site, 0x7F00_1000_0000, layout, ns_per_tick=0.4)
    assert code[:16] == (0).to_bytes(8, "little") + dlhook.WAIT_NS.to_bytes(8, "little")
    assert code.endswith(b"\xc3")
    assert patch.original == site.original and patch.new[0] == 0xE9
    assert int.from_bytes(patch.new[1:5], "little", signed=True) == 0x7F00_1000_0010 - (site.addr + 5)


# --------------------------------------------------------------------------- data directory


def test_a_partial_directory_left_by_a_dead_ktracecli_is_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".t.data.partial-{dead.pid}"
    live = tmp_path / f".t.data.partial-{os.getppid()}"
    stale.mkdir()
    live.mkdir()
    DataWriter(tmp_path / "t.data").abandon()
    assert not stale.exists() and live.exists()
