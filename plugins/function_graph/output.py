"""Printing function_graph records in ftrace's format (../shared/ftrace-format.md, section 3).

::

    # tracer: function_graph
    # engine: ktrace
    #
    # CPU  DURATION                  FUNCTION CALLS
    # |     |   |                     |   |   |   |
     0)               |  main() {
     0)   0.313 us    |    leaf();
     0) + 12.345 us   |  }

Each line is ``[abstime "%5lu.%06lu |  "] [cpu " %*d) "] [proc " | "]
[duration field] + 2 x depth spaces + body``, with the columns chosen by the
trace options (funcgraph-abstime, -cpu, -proc, -duration, -overhead, -tail).
Threads are merged in time order, as the kernel merges its CPU buffers, with
the task-switch lines whenever a CPU's thread changes; ``--per-thread``
prints each thread's graph on its own instead, after a ``# comm-tid`` line.
``# engine: NAME`` is ours, as in the function tracer's header.

Lines are rendered in batches with numpy (:mod:`ktracecli_function_graph.columns`),
never one Python statement per record; the lines that do not fit the columns (task
switches, lost events) are spliced in where they fall.
"""


from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TextIO

import numpy as np

from ktracecli.datadir import TraceData
from ktracecli.interface import ShowSettings
from ktracecli.options import TraceOptions
from ktracecli.runtime.clock import timestamps_ns
from ktracecli_function_graph.columns import LineRenderer, Records, duration_number, mark, proc_field
from ktracecli_function_graph.graph import Role, ThreadGraph, thread_graph

__all__ = ["duration_number", "header", "mark", "write_trace"]

DASHES = " " + "-" * 42
#: lines rendered at a time
BATCH_LINES = 1 << 15
#: lines due before the record at a position: lost events first, then the task switch
LOST, SWITCH, TRAILING = 0, 1, 2
#: (key, LOST/SWITCH/TRAILING, order among equals, text): a line due before the printed record of
#: that key (a record index, or a position in the merged order), or after all when none is left
Insert = tuple[int, int, int, bytes]
#: (records to print, their keys (sorted), the key past the batch)
Batch = tuple[np.ndarray, np.ndarray, int]


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


def _graphs(data: TraceData) -> list[ThreadGraph]:
    thresh = bool(data.info.get("tracing_thresh"))
    return [thread_graph(t, thresh) for t in data.threads if len(t.records) or t.lost]


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """``parts`` end to end (the array itself when there is one: no copy)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _records(graphs: list[ThreadGraph], clock: dict[str, Any]) -> Records:
    """All threads' records end to end."""
    starts = np.cumsum([0] + [len(g) for g in graphs])
    return Records(
        tsc=_joined([g.tsc for g in graphs]),
        clock=clock,
        cpu=_joined([g.cpu for g in graphs]),
        site=_joined([g.site for g in graphs]),
        depth=_joined([g.depth for g in graphs]),
        role=_joined([g.role for g in graphs]),
        matched=_joined([g.matched for g in graphs]),
        closes=_joined([g.closes + start for g, start in zip(graphs, starts.tolist())]),
        opens=_joined([g.opens + start for g, start in zip(graphs, starts.tolist())]),
        starts=starts,
    )


def _lost(g: ThreadGraph, at: int, count: int) -> bytes:
    """The lost-events line due before record ``at`` of ``g``."""
    cpu = int(g.cpu[at]) if at < len(g) else (int(g.cpu[-1]) if len(g) else 0)
    return f"CPU:{cpu} [LOST {count} EVENTS]\n".encode()


def _thread_batches(role: np.ndarray, start: int, stop: int) -> Iterator[Batch]:
    """The printed records of ``start`` .. ``stop``, in order, keyed by record index."""
    for first in range(start, stop, BATCH_LINES):
        last = min(first + BATCH_LINES, stop)
        rows = np.flatnonzero(role[first:last] != Role.SKIP)
        rows += first
        yield rows, rows, last


def _thread_inserts(g: ThreadGraph, start: int) -> list[Insert]:
    """The lost-event lines of ``g`` (its records from ``start``), keyed by record index."""
    return sorted((start + at, LOST, 0, _lost(g, at, count)) for at, count in g.lost_before.items()
                  if count and 0 <= at <= len(g))


def _merged(graphs: list[ThreadGraph], records: Records, cpu_width: int) -> tuple[np.ndarray, list[Insert]]:
    """Several threads' printed records in time order (each thread's in its own order), and the
    lines between them, keyed by position in that order."""
    keys = np.empty(len(records.tsc), dtype=np.int64)
    for start, stop in zip(records.starts.tolist(), records.starts[1:].tolist()):
        keys[start:stop] = timestamps_ns(records.clock, records.tsc[start:stop])
        np.maximum.accumulate(keys[start:stop], out=keys[start:stop])
    order = np.argsort(keys, kind="stable")
    del keys
    printed = records.role[order] != Role.SKIP
    rows = order[printed]
    inserts: list[Insert] = []
    lost = [(k, at, count) for k, g in enumerate(graphs) for at, count in g.lost_before.items()
            if count and 0 <= at <= len(g)]
    if any(at < len(graphs[k]) for k, at, _ in lost):
        # lost events go before the record at which they were noticed, printed or not
        before = np.cumsum(printed) - printed
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
    for k, at, count in lost:
        g = graphs[k]
        if at < len(g):
            where = int(rank[records.starts[k] + at])
            inserts.append((int(before[where]), LOST, where, _lost(g, at, count)))
        else:
            inserts.append((len(rows), TRAILING, k, _lost(g, at, count)))
    inserts += _switches(graphs, records, rows, cpu_width)
    inserts.sort()
    return rows, inserts


def _merged_batches(rows: np.ndarray) -> Iterator[Batch]:
    """``rows`` a batch at a time, keyed by position."""
    for first in range(0, len(rows), BATCH_LINES):
        part = rows[first:first + BATCH_LINES]
        yield part, np.arange(first, first + len(part)), first + BATCH_LINES


def _switches(graphs: list[ThreadGraph], records: Records, rows: np.ndarray, cpu_width: int) -> list[Insert]:
    """The task-switch lines: before a printed record whose CPU last printed another thread's."""
    owner = records.owner(rows)
    tids = np.array([g.thread.tid for g in graphs], dtype=np.int64)
    tid = tids[owner]
    if not len(tid) or (tid == tid[0]).all():
        return []
    by_cpu = np.argsort(records.cpu[rows], kind="stable")
    cpu, tid = records.cpu[rows][by_cpu], tid[by_cpu]
    switched = np.flatnonzero((cpu[1:] == cpu[:-1]) & (tid[1:] != tid[:-1])) + 1
    comms = {g.thread.tid: g.thread.comm for g in graphs}
    inserts = []
    for at, c, old, new, k in zip(by_cpu[switched].tolist(), cpu[switched].tolist(),
                                  tid[switched - 1].tolist(), tid[switched].tolist(),
                                  owner[by_cpu[switched]].tolist()):
        text = (f"{DASHES}\n {c:{cpu_width}d}) {proc_field(comms[old], old)} => "
                f"{proc_field(graphs[k].thread.comm, new)}\n{DASHES}\n\n")
        inserts.append((at, SWITCH, 0, text.encode()))
    return inserts


def _write(out: TextIO, renderer: LineRenderer, records: Records, batches: Iterable[Batch],
           inserts: list[Insert]) -> None:
    """Write the lines of each batch, with the ``inserts`` whose keys fall in it before their rows."""
    k = 0
    for rows, keys, stop in batches:
        first = k
        while k < len(inserts) and inserts[k][0] < stop:
            k += 1
        spliced = inserts[first:k]
        at = np.searchsorted(keys, [key for key, _, _, _ in spliced]).tolist() if spliced else []
        out.write(renderer.lines(records, rows, [(a, text) for a, (_, _, _, text) in zip(at, spliced)]).decode())
    if k < len(inserts):
        out.write(b"".join(text for _, _, _, text in inserts[k:]).decode())


def write_trace(data: TraceData, out: TextIO, settings: ShowSettings = ShowSettings()) -> None:
    """Write the whole trace in the function_graph format."""
    opts = settings.options
    out.write(header(data.info.get("engine"), opts))
    graphs = _graphs(data)
    if not graphs:
        return
    records = _records(graphs, data.info["clock"])
    cpu_width = len(str(max(int(data.info.get("ncpus", 1)) - 1, 0)))
    renderer = LineRenderer(opts, data.sites, [proc_field(g.thread.comm, g.thread.tid) for g in graphs],
                            cpu_width, int(records.cpu.max()) if len(records.cpu) else 0)
    starts = records.starts.tolist()
    if not settings.per_thread:
        if len(graphs) == 1:
            _write(out, renderer, records, _thread_batches(records.role, 0, starts[1]),
                   _thread_inserts(graphs[0], 0))
        else:
            rows, inserts = _merged(graphs, records, cpu_width)
            _write(out, renderer, records, _merged_batches(rows), inserts)
        return
    first = [int(records.ns(np.array([start]))[0]) if start < stop else 0
             for start, stop in zip(starts, starts[1:])]
    shown = sorted(range(len(graphs)), key=lambda k: first[k])
    for n, k in enumerate(shown):
        g = graphs[k]
        out.write(f"{chr(10) if n else ''}# {g.thread.comm}-{g.thread.tid}\n")
        _write(out, renderer, records, _thread_batches(records.role, starts[k], starts[k + 1]),
               _thread_inserts(g, starts[k]))
