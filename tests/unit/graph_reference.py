"""The per-record function_graph printer that ``show`` used before it rendered in bulk: the oracle.

This is the straightforward implementation (one Python step per record, one f-string
per line) that ``ktracecli_function_graph.graph`` and ``.output`` replaced with numpy.
It is kept here, unchanged but for living in one module (with its own copies of
the record decoding and clock conversion it used) and for one fix (a leaf forgets
the entry remembered at its depth, as the kernel does), only so that
``test_graph_equivalence.py`` can compare the product's output with it byte for byte;
the product must not import it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from ktracecli.datadir import ThreadData, TraceData
from ktracecli.interface import ShowSettings
from ktracecli.options import TraceOptions
from ktracecli_function_graph.records import CPU_MASK, CPU_SHIFT, KIND_SHIFT, MAX_DEPTH, RECORD_DTYPE, Kind


def decode(records: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(depth, kind, cpu) arrays of ``records`` (records.decode as it was)."""
    info = records["info"].astype(np.int64)
    return info & MAX_DEPTH, (info >> KIND_SHIFT) & 3, (info >> CPU_SHIFT) & CPU_MASK


def timestamps_ns(calibration: dict[str, Any], tsc: np.ndarray) -> np.ndarray:
    """CLOCK_MONOTONIC nanoseconds of TSC readings (ktracecli.runtime.clock's formula as it was)."""
    delta = tsc.astype(np.int64) - np.int64(calibration["tsc0"])
    return np.int64(calibration["ns0"]) + np.round(delta * float(calibration["ns_per_tick"])).astype(np.int64)


class Role(enum.IntEnum):
    """What a record prints as."""

    SKIP = 0     #: nothing (a leaf's return, or an entry under tracing_thresh)
    LEAF = 1     #: func();  with a duration
    OPEN = 2     #: func() {
    NOHOOK = 3   #: func();  without a duration
    CLOSE = 4    #: }  or  } /* func */


@dataclass
class ThreadGraph:
    """One thread's records, decoded, with the role, duration and match of each."""

    thread: ThreadData
    ns: np.ndarray          #: CLOCK_MONOTONIC ns of each record
    site: list[int]
    depth: list[int]
    cpu: list[int]
    role: list[Role]
    duration: list[int]     #: ns, -1 when unknown
    matched: list[bool]     #: a CLOSE whose entry is in the trace
    lost_before: dict[int, int]  #: record index -> events lost just before it

    def __len__(self) -> int:
        return len(self.site)


def thread_graph(thread: ThreadData, ns: np.ndarray, thresh: bool) -> ThreadGraph:
    """The roles of ``thread``'s records (``ns``: their timestamps; ``thresh``: a tracing_thresh trace)."""
    records = thread.records.view(RECORD_DTYPE)
    depth_a, kind_a, cpu_a = decode(records)
    site, depth, kind = records["site"].tolist(), depth_a.tolist(), kind_a.tolist()
    times = ns.tolist()
    lost_before: dict[int, int] = {}
    for at, count in thread.lost:
        lost_before[at] = lost_before.get(at, 0) + count
    n = len(site)
    role = [Role.SKIP] * n
    duration = [-1] * n
    matched = [False] * n
    entered: dict[int, tuple[int, int]] = {}  # depth -> (site, entry ns)
    i = 0
    while i < n:
        k = kind[i]
        if thresh:
            if k >= Kind.EXIT:
                role[i] = Role.CLOSE
                if i and kind[i - 1] == Kind.ENTRY and i not in lost_before:
                    duration[i] = times[i] - times[i - 1]
        elif k == Kind.ENTRY:
            j = i + 1
            if (j < n and kind[j] >= Kind.EXIT and depth[j] == depth[i] and site[j] == site[i]
                    and j not in lost_before):
                role[i] = Role.LEAF
                duration[i] = times[j] - times[i]
                entered.pop(depth[i], None)  # fixed: as the kernel's print_graph_entry_leaf
                i = j + 1
                continue
            role[i] = Role.OPEN
            entered[depth[i]] = (site[i], times[i])
        elif k == Kind.NOHOOK:
            role[i] = Role.NOHOOK
        else:
            role[i] = Role.CLOSE
            opened = entered.pop(depth[i], None)
            if opened is not None and opened[0] == site[i]:
                matched[i] = True
                duration[i] = times[i] - opened[1]
        i += 1
    return ThreadGraph(thread, ns, site, depth, cpu_a.tolist(), role, duration, matched, lost_before)

#: (threshold in ns, mark): the first threshold a duration is strictly above gives its mark
MARKS = ((1_000_000_000, "$"), (100_000_000, "@"), (10_000_000, "*"), (1_000_000, "#"),
         (100_000, "!"), (10_000, "+"))
FILL = "              |  "
PROC_WIDTH = 14
DASHES = " " + "-" * 42


def mark(ns: int) -> str:
    """The overhead mark of a duration (a space under 10 us)."""
    for limit, symbol in MARKS:
        if ns > limit:
            return symbol
    return " "


def duration_number(ns: int) -> str:
    """Microseconds with the first min(3, 7 - digits) digits of the remainder, truncated."""
    usecs, rem = divmod(ns, 1000)
    text = str(usecs)
    if len(text) < 7:
        text += "." + f"{rem:03d}"[:min(3, 7 - len(text))]
    return text


def duration_field(ns: int, opts: TraceOptions) -> str:
    """The DURATION column of a line whose call took ``ns`` (-1: no duration, filled)."""
    if "funcgraph-duration" not in opts:
        return ""
    if ns < 0:
        return FILL
    number = duration_number(ns)
    head = f"{mark(ns)} " if "funcgraph-overhead" in opts else "  "
    return f"{head}{number} us {' ' * max(0, 8 - len(number))}|  "


def proc_field(comm: str, tid: int) -> str:
    """``comm-tid``, comm cut to 7 characters, centred in 14 columns (the odd space on the right)."""
    text = f"{comm[:7]}-{tid}"
    spaces = max(0, PROC_WIDTH - len(text))
    return " " * (spaces // 2) + text + " " * (spaces - spaces // 2)


def header(engine: str | None, opts: TraceOptions) -> str:
    """The two header lines and the column titles for the options set."""
    first, second = "#", "#"
    if "funcgraph-abstime" in opts:
        first, second = first + "     TIME       ", second + "      |         "
    if "funcgraph-cpu" in opts:
        first, second = first + " CPU", second + " |  "
    if "funcgraph-proc" in opts:
        first, second = first + "  TASK/PID       ", second + "   |    |        "
    if "funcgraph-duration" in opts:
        first, second = first + "  DURATION   ", second + "   |   |      "
    engine_line = f"# engine: {engine}\n" if engine else ""
    return (f"# tracer: function_graph\n{engine_line}#\n"
            f"{first}               FUNCTION CALLS\n{second}               |   |   |   |\n")


class Printer:
    """Formats the lines of one trace with one set of options."""

    def __init__(self, data: TraceData, opts: TraceOptions, comms: dict[int, str]) -> None:
        self.opts = opts
        self.names = data.sites
        self.comms = comms  #: tid -> comm, for the task-switch lines
        self.cpu_width = len(str(max(int(data.info.get("ncpus", 1)) - 1, 0)))
        self.last_tid: dict[int, int] = {}

    def prefix(self, g: ThreadGraph, i: int) -> str:
        """The abstime, CPU and proc columns of record ``i`` of ``g``."""
        opts = self.opts
        out = ""
        if "funcgraph-abstime" in opts:
            ns = int(g.ns[i])
            out += f"{ns // 1_000_000_000:5d}.{ns % 1_000_000_000 // 1000:06d} |  "
        if "funcgraph-cpu" in opts:
            out += f" {g.cpu[i]:{self.cpu_width}d}) "
        if "funcgraph-proc" in opts:
            out += proc_field(g.thread.comm, g.thread.tid) + " | "
        return out

    def line(self, g: ThreadGraph, i: int) -> str:
        """The line record ``i`` of ``g`` prints as (its role is not SKIP)."""
        role = g.role[i]
        name = self.names[g.site[i]]
        indent = "  " * g.depth[i]
        if role is Role.LEAF:
            body, ns = f"{name}();", g.duration[i]
        elif role is Role.OPEN:
            body, ns = f"{name}() {{", -1
        elif role is Role.NOHOOK:
            body, ns = f"{name}();", -1
        else:
            tail = not g.matched[i] or "funcgraph-tail" in self.opts
            body, ns = (f"}} /* {name} */" if tail else "}"), g.duration[i]
        return f"{self.prefix(g, i)}{duration_field(ns, self.opts)}{indent}{body}\n"

    def switch(self, g: ThreadGraph, i: int) -> str:
        """The task-switch lines when record ``i`` is not by the thread last seen on its CPU."""
        cpu, tid = g.cpu[i], g.thread.tid
        last = self.last_tid.get(cpu)
        self.last_tid[cpu] = tid
        if last is None or last == tid:
            return ""
        old = self.comms.get(last, "<...>")
        return (f"{DASHES}\n {cpu:{self.cpu_width}d}) {proc_field(old, last)} => "
                f"{proc_field(g.thread.comm, tid)}\n{DASHES}\n\n")

    def lost(self, g: ThreadGraph, i: int) -> str:
        """The lost-events line due before record ``i`` of ``g``, if any."""
        count = g.lost_before.get(i)
        if not count:
            return ""
        cpu = g.cpu[i] if i < len(g) else (g.cpu[-1] if len(g) else 0)
        return f"CPU:{cpu} [LOST {count} EVENTS]\n"


def _graphs(data: TraceData) -> list[ThreadGraph]:
    thresh = bool(data.info.get("tracing_thresh"))
    graphs = []
    for t in data.threads:
        if not len(t.records) and not t.lost:
            continue
        records = t.records.view(RECORD_DTYPE)
        graphs.append(thread_graph(t, timestamps_ns(data.info["clock"], records["tsc"]), thresh))
    return graphs


def _merged(graphs: list[ThreadGraph]) -> Iterator[tuple[ThreadGraph, int]]:
    """(graph, record index) in time order; each thread's records keep their own order."""
    if not graphs:
        return
    keys = np.concatenate([np.maximum.accumulate(g.ns) if len(g) else g.ns for g in graphs])
    owner = np.concatenate([np.full(len(g), k, dtype=np.int32) for k, g in enumerate(graphs)])
    local = np.concatenate([np.arange(len(g), dtype=np.int64) for g in graphs])
    order = np.argsort(keys, kind="stable")
    for k, i in zip(owner[order].tolist(), local[order].tolist()):
        yield graphs[k], i


def write_trace(data: TraceData, out: TextIO, settings: ShowSettings = ShowSettings()) -> None:
    """Write the whole trace in the function_graph format."""
    opts = settings.options
    out.write(header(data.info.get("engine"), opts))
    graphs = _graphs(data)
    printer = Printer(data, opts, {g.thread.tid: g.thread.comm for g in graphs})
    if settings.per_thread:
        graphs.sort(key=lambda g: int(g.ns[0]) if len(g) else 0)
        for n, g in enumerate(graphs):
            out.write(f"{chr(10) if n else ''}# {g.thread.comm}-{g.thread.tid}\n")
            own = []
            for i in range(len(g)):
                own.append(printer.lost(g, i))
                if g.role[i] is not Role.SKIP:
                    own.append(printer.line(g, i))
            own.append(printer.lost(g, len(g)))
            out.write("".join(own))
        return
    lines: list[str] = []
    for g, i in _merged(graphs):
        lines.append(printer.lost(g, i))
        if g.role[i] is Role.SKIP:
            continue
        lines.append(printer.switch(g, i))
        lines.append(printer.line(g, i))
        if len(lines) > 4096:
            out.write("".join(lines))
            lines.clear()
    for g in graphs:
        lines.append(printer.lost(g, len(g)))
    out.write("".join(lines))
