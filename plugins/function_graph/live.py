"""Streaming function_graph lines while a session runs (``--live``, the kernel's trace_pipe).

Each round of drained records is printed with the same roles, columns and
merging as ``show`` (:mod:`ktracecli_function_graph.graph`, ``columns``,
``output``), with what one round cannot know carried to the next, per thread:

- a thread's last record of a round, if it is an entry, waits for the next round
  (the record after it says whether it is a leaf, ``func();``, or ``func() {``);
  the session's end prints it as ``func() {``;
- the entries still open at each depth, so that a return in a later round is
  matched (``}`` with its duration) exactly as ``show`` matches it;
- each CPU's last thread, so that a task switch between rounds gets its lines.

Under tracing_thresh every record comes as an (entry, return) pair and only the
returns print, as in ``show``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from ktracecli.datadir import ThreadData
from ktracecli.interface import LiveBatch, LiveContext
from ktracecli.options import TraceOptions
from ktracecli_function_graph.columns import LineRenderer, Records, proc_field
from ktracecli_function_graph.graph import Role, ThreadGraph, thread_graph
from ktracecli_function_graph.output import DASHES, SWITCH, _merged, _records
from ktracecli_function_graph.records import RECORD_DTYPE, Kind, decode


@dataclass
class _ThreadState:
    """What one thread's next round needs from the rounds before."""

    pid: int
    tid: int
    comm: str
    #: the last record of the previous round, when it is an entry that may be a leaf
    held: np.ndarray = field(default_factory=lambda: np.zeros(0, RECORD_DTYPE))
    #: depth -> (site, tsc) of the entry remembered there (the kernel's enter_funcs)
    open: dict[int, tuple[int, int]] = field(default_factory=dict)


def _phantom_thread(tsc: list[int]) -> ThreadGraph:
    """An unprinted thread carrying the timestamps of earlier rounds' entries."""
    n = len(tsc)
    empty = ThreadData(0, -1, "", np.zeros(0, RECORD_DTYPE), [])
    return ThreadGraph(empty, np.asarray(tsc, dtype=np.uint64), np.zeros(n, np.uint32), np.zeros(n, np.int16),
                       np.zeros(n, np.int16), np.full(n, Role.SKIP, np.int8), np.zeros(n, bool),
                       np.zeros(0, np.intp), np.zeros(0, np.intp), {})


class GraphLiveWriter:
    """Prints function_graph records as they arrive."""

    def __init__(self, context: LiveContext, out: TextIO) -> None:
        self.context = context
        self.out = out
        self.options: TraceOptions = getattr(context, "options", TraceOptions())
        self.thresh = bool(getattr(context, "tracing_thresh", 0))
        self.cpu_width = len(str(max(int(context.ncpus) - 1, 0)))
        self.threads: dict[tuple[int, int], _ThreadState] = {}
        #: CPU -> (tid, proc field) of the thread whose line it printed last
        self.last_on_cpu: dict[int, tuple[int, str]] = {}
        self.names: list[str] = []

    def write(self, batches: Sequence[LiveBatch]) -> None:
        """Print one round: every thread's records merged by time, LOST lines where rings overflowed."""
        self._print(batches, final=False)

    def close(self) -> None:
        """Print the entries held back (as ``func() {``) and flush."""
        self._print([], final=True)
        self.out.flush()

    # -- one round ---------------------------------------------------------------------------

    def _print(self, batches: Sequence[LiveBatch], final: bool) -> None:
        rounds: dict[tuple[int, int], tuple[ThreadData, _ThreadState]] = {}
        for b in batches:
            key = (b.pid, b.tid)
            state = self.threads.get(key)
            if state is None:
                state = self.threads[key] = _ThreadState(b.pid, b.tid, b.comm)
            state.comm = b.comm
            new = b.records.view(RECORD_DTYPE)
            records = np.concatenate((state.held, new)) if len(state.held) else new
            lost = [(len(state.held) + b.lost_at, b.lost)] if b.lost else []
            state.held = np.zeros(0, RECORD_DTYPE)
            rounds[key] = (ThreadData(b.pid, b.tid, b.comm, records, lost, b.space), state)
        if final:  # whatever is held is printed now, as it stands
            for key, state in self.threads.items():
                if len(state.held) and key not in rounds:
                    rounds[key] = (ThreadData(state.pid, state.tid, state.comm, state.held, []), state)
                    state.held = np.zeros(0, RECORD_DTYPE)
        graphs: list[ThreadGraph] = []
        phantoms: list[int] = []
        for data, state in rounds.values():
            if not final and not self.thresh:
                data = self._hold_last_entry(data, state)
            if not len(data.records) and not data.lost:
                continue
            graph = thread_graph(data, self.thresh)
            if not self.thresh:
                self._match(graph, state, phantoms)
            graphs.append(graph)
        if graphs:
            self.out.write(self._lines(graphs, phantoms).decode())
        self.out.flush()

    def _hold_last_entry(self, data: ThreadData, state: _ThreadState) -> ThreadData:
        """Keep a trailing ENTRY for the next round (its successor makes it a leaf or not)."""
        records = data.records.view(RECORD_DTYPE)
        if not len(records):
            return data
        _depth, kind, _cpu = decode(records[-1:])
        if int(kind[0]) != Kind.ENTRY or any(at >= len(records) for at, _n in data.lost):
            return data
        state.held = records[-1:].copy()
        return ThreadData(data.pid, data.tid, data.comm, records[:-1], data.lost, data.space)

    def _match(self, graph: ThreadGraph, state: _ThreadState, phantoms: list[int]) -> None:
        """Match the round's returns against the entries open since earlier rounds, as ``show`` would
        over the whole thread: replay the braces (OPEN, LEAF, CLOSE) in order over ``state.open``."""
        role, depth, site, tsc = graph.role, graph.depth, graph.site, graph.tsc
        closes: list[int] = []
        opens: list[int] = []  # a record index of this graph, or ~k for phantoms[k] (an earlier round's entry)
        open_here: dict[int, tuple[int, int]] = {}   # depth -> (site, record index) of this round
        braces = np.flatnonzero((role == Role.OPEN) | (role == Role.LEAF) | (role == Role.CLOSE))
        for i in braces.tolist():
            d, s, r = int(depth[i]), int(site[i]), int(role[i])
            if r == Role.OPEN:
                open_here[d] = (s, i)
                state.open.pop(d, None)
            elif r == Role.LEAF:
                open_here.pop(d, None)
                state.open.pop(d, None)
            else:
                mine = open_here.pop(d, None)
                earlier = state.open.pop(d, None)
                if mine is not None:
                    if mine[0] == s:
                        closes.append(i)
                        opens.append(mine[1])
                elif earlier is not None and earlier[0] == s:
                    closes.append(i)
                    opens.append(~len(phantoms))
                    phantoms.append(earlier[1])
        for d, (s, i) in open_here.items():
            state.open[d] = (s, int(tsc[i]))
        matched = np.zeros(len(role), dtype=bool)
        matched[closes] = True
        graph.matched = matched
        graph.closes = np.asarray(closes, dtype=np.intp)
        graph.opens = np.asarray(opens, dtype=np.intp)

    # -- rendering -----------------------------------------------------------------------------

    def _lines(self, graphs: list[ThreadGraph], phantoms: list[int]) -> bytes:
        """The round's lines: the threads merged in time order, with LOST and task-switch lines.

        Entries of earlier rounds that this round's returns are timed from ride along as a last,
        unprinted thread (their timestamps only).
        """
        real = len(graphs)
        starts = np.cumsum([0] + [len(g) for g in graphs]).tolist()
        for g, start in zip(graphs, starts):
            g.opens = np.where(g.opens >= 0, g.opens, starts[-1] + ~g.opens - start)
        if phantoms:
            graphs = [*graphs, _phantom_thread(phantoms)]
        tsc = np.concatenate([g.tsc for g in graphs])
        records = _records(graphs, self._calibration(tsc))
        procs = [proc_field(g.thread.comm, g.thread.tid) for g in graphs]
        printed = records.site[records.role != Role.SKIP]
        self._learn_names(int(printed.max()) if len(printed) else -1)
        renderer = LineRenderer(self.options, self.names, procs, self.cpu_width,
                                int(records.cpu.max()) if len(records.cpu) else 0)
        rows, inserts = _merged(graphs, records, self.cpu_width)
        inserts += self._switches_at_start(graphs[:real], records, rows, procs)
        inserts.sort()
        return renderer.lines(records, rows, [(key, text) for key, _kind, _at, text in inserts])

    def _learn_names(self, top: int) -> None:
        """Site names up to index ``top`` (indices only grow while a session runs)."""
        while len(self.names) <= top:
            self.names.append(self.context.site_name(len(self.names)))

    def _calibration(self, tsc: np.ndarray) -> dict[str, float]:
        """The session's TSC-to-CLOCK_MONOTONIC line as it stands now, in ``info.json``'s form."""
        t0 = int(tsc.min()) if len(tsc) else 0
        ns0, ns1 = self.context.timestamps_ns(np.array([t0, t0 + 1_000_000_000], dtype=np.uint64)).tolist()
        return {"tsc0": t0, "ns0": ns0, "ns_per_tick": (ns1 - ns0) / 1_000_000_000}

    def _switches_at_start(self, graphs: list[ThreadGraph], records: Records, rows: np.ndarray,
                           procs: list[str]) -> list[tuple[int, int, int, bytes]]:
        """Task switches between the previous round's last line on a CPU and this round's first
        (``show``'s merging sees those within the round); and remember each CPU's last thread."""
        inserts = []
        owner = records.owner(rows)
        cpus = records.cpu[rows]
        seen: set[int] = set()
        for k, (cpu, who) in enumerate(zip(cpus.tolist(), owner.tolist())):
            tid = graphs[who].thread.tid
            if cpu not in seen:
                seen.add(cpu)
                before = self.last_on_cpu.get(cpu)
                if before is not None and before[0] != tid:
                    text = (f"{DASHES}\n {cpu:{self.cpu_width}d}) {before[1]} => {procs[who]}\n{DASHES}\n\n")
                    inserts.append((k, SWITCH, 0, text.encode()))
            self.last_on_cpu[cpu] = (tid, procs[who])
        return inserts
