"""Printing function-tracer records in ftrace's ``function`` format (irq-info off).

::

    # tracer: function
    # engine: mcount
    #
    # entries-in-buffer/entries-written: 3/3   #P:2
    #
    #           TASK-PID     CPU#     TIMESTAMP  FUNCTION
    #              | |         |         |         |
                prog-4242    [001]  5012.118834: main <-__libc_start_call_main

Threads are merged in timestamp order, as the kernel merges its CPU buffers.

``# engine: NAME`` (the engine that delivered the calls, from ``info.json``) is
ours: a comment line added right after the tracer line, so that every line of
the kernel's header is still there, unchanged and in its order, and a reader
that looks for ``# tracer:`` on the first line or skips ``#`` lines still works.
A trace recorded before engines were named prints no engine line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

import numpy as np

from ktracecli import render
from ktracecli.datadir import TraceData
from ktracecli.runtime.clock import timestamps_ns
from ktracecli.symbols import Symbolizer
from ktracecli_function.records import DECODED_DTYPE, decode

ADDR_MASK = (1 << 48) - 1
HEADER = """\
# tracer: function
{engine}#
# entries-in-buffer/entries-written: {entries}/{written}   #P:{ncpus}
#
#           TASK-PID     CPU#     TIMESTAMP  FUNCTION
#              | |         |         |         |
"""


def format_line(task: str, cpu: int, usecs: int, func: str, parent: str) -> str:
    """One event line (irq-info off): ``task`` is the 24-column ``comm-pid`` field."""
    return f"{task} [{cpu:03d}]  {usecs // 1000000:5d}.{usecs % 1000000:06d}: {func} <-{parent}\n"


def task_field(comm: str, tid: int) -> str:
    """The TASK-PID column: comm right-aligned in 16 columns, the pid left-aligned in 7."""
    return f"{comm[:16]:>16}-{tid:<7d}"


def lost_line(cpu: int, count: int) -> str:
    """The line the kernel prints where a CPU buffer dropped events."""
    return f"CPU:{cpu} [LOST {count} EVENTS]\n"


def parent_names(symbolize: Callable[[int, np.ndarray], list[str]], spaces: np.ndarray,
                 addrs: np.ndarray) -> list[str]:
    """Callers' names, each looked up in the address space it was recorded in."""
    if len(spaces) == 0:
        return []
    first = int(spaces[0])
    if (spaces == first).all():
        return symbolize(first, addrs)
    names = [""] * len(addrs)
    for space in np.unique(spaces).tolist():
        where = np.flatnonzero(spaces == space)
        for k, name in zip(where.tolist(), symbolize(int(space), addrs[where])):
            names[k] = name
    return names


def write_trace(data: TraceData, out: TextIO, chunk: int = 1 << 17) -> None:
    """Write the whole trace: header, then events merged by time, with lost-event lines.

    Lines are rendered a batch at a time with numpy (:mod:`ktracecli.render`), never
    one Python statement per record.
    """
    threads = [t for t in data.threads if len(t.records) or t.lost]
    records = [decode(t.records, t.anchors) for t in threads]
    entries = sum(len(r) for r in records)
    lost_total = sum(n for t in threads for _, n in t.lost)
    engine = data.info.get("engine")
    out.write(HEADER.format(engine=f"# engine: {engine}\n" if engine else "", entries=entries,
                            written=entries + lost_total, ncpus=data.info.get("ncpus", 1)))
    if not threads:
        return
    all_records = np.concatenate(records) if records else np.zeros(0, DECODED_DTYPE)
    owner = np.concatenate([np.full(len(r), i, dtype=np.int64) for i, r in enumerate(records)])
    ns = timestamps_ns(data.info["clock"], all_records["tsc"])
    order = np.argsort(ns, kind="stable")
    # lost-event lines go before the record at which each thread's loss was noticed
    offsets = np.cumsum([0] + [len(r) for r in records])
    lost_at: dict[int, int] = {}
    trailing: list[tuple[int, int]] = []
    for i, t in enumerate(threads):
        for at, dropped in t.lost:
            if at < len(records[i]):
                lost_at[int(offsets[i]) + at] = lost_at.get(int(offsets[i]) + at, 0) + dropped
            else:
                last_cpu = int(records[i]["parent"][-1]) >> 48 if len(records[i]) else 0
                trailing.append((last_cpu, dropped))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    breaks = sorted((int(rank[g]), g) for g in lost_at)
    tasks = render.table([task_field(t.comm, t.tid) + " [" for t in threads])
    spaces = np.array([t.space for t in threads], dtype=np.int64)[owner]
    symbolizers: dict[int, Symbolizer] = {}
    site_names = data.sites
    lo = 0
    for stop, global_index in [*breaks, (len(order), -1)]:
        for start in range(lo, stop, chunk):
            idx = order[start:min(stop, start + chunk)]
            callers = _caller_ids(data, symbolizers, spaces[idx], all_records["parent"][idx] & np.uint64(ADDR_MASK))
            out.write(_lines(idx, all_records, owner, ns, tasks, site_names, callers).decode())
        if global_index >= 0:
            out.write(lost_line(int(all_records["parent"][global_index]) >> 48, lost_at[global_index]))
        lo = stop
    for cpu, count in trailing:
        out.write(lost_line(cpu, count))


def _caller_ids(data: TraceData, symbolizers: dict[int, Symbolizer], spaces: np.ndarray,
                addrs: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """For each caller address, an index into a list of names, each looked up in its own address space."""
    ids = np.empty(len(addrs), dtype=np.int64)
    names: list[str] = []
    for space in np.unique(spaces).tolist():
        where = np.flatnonzero(spaces == space)
        if space not in symbolizers:
            symbolizers[space] = Symbolizer(data, space)
        local_ids, local_names = symbolizers[space].name_ids(addrs[where])
        ids[where] = local_ids + len(names)
        names += local_names
    return ids, names


def _lines(idx: np.ndarray, all_records: np.ndarray, owner: np.ndarray, ns: np.ndarray, tasks: np.ndarray,
           site_names: list[str], callers: tuple[np.ndarray, list[str]]) -> bytes:
    """The lines of the records ``idx``: ``"%16s-%-7d [%03d]  %5lu.%06lu: func <-parent"``."""
    n = len(idx)
    if not n:
        return b""
    rec = all_records[idx]
    parent = rec["parent"]
    cpus = (parent >> np.uint64(48)).astype(np.int64)
    parent_ids, parent_names = callers
    usecs = (ns[idx] + 500) // 1000
    # one "func <-parent\n" string per distinct (function, caller) pair of the batch
    key = rec["site"].astype(np.int64) * len(parent_names) + parent_ids
    pairs, which = np.unique(key, return_inverse=True)
    calls = render.table([f"{site_names[int(k) // len(parent_names)]} <-{parent_names[int(k) % len(parent_names)]}\n"
                          for k in pairs.tolist()])
    return render.join_rows([
        render.pick(tasks, owner[idx]),
        render.decimal(cpus, 3, "0"),
        render.constant("]  ", n),
        render.decimal(usecs // 1_000_000, 5),
        render.constant(".", n),
        render.decimal(usecs % 1_000_000, 6, "0"),
        render.constant(": ", n),
        render.pick(calls, which.reshape(-1)),
    ])
