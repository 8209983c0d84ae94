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

from typing import TextIO

import numpy as np

from ktracecli import render
from ktracecli.datadir import TraceData
from ktracecli.symbols import Symbolizer
from ktracecli_function.handler import RECORD_DTYPE

ADDR_MASK = (1 << 48) - 1
HEADER = """\
# tracer: function
{engine}#
# entries-in-buffer/entries-written: {entries}/{written}   #P:{ncpus}
#
#           TASK-PID     CPU#     TIMESTAMP  FUNCTION
#              | |         |         |         |
"""


def timestamps_ns(data: TraceData, tsc: np.ndarray) -> np.ndarray:
    """CLOCK_MONOTONIC nanoseconds of TSC readings, from the trace's calibration."""
    cal = data.info["clock"]
    delta = tsc.astype(np.int64) - np.int64(cal["tsc0"])
    return np.int64(cal["ns0"]) + np.round(delta * float(cal["ns_per_tick"])).astype(np.int64)


def write_trace(data: TraceData, out: TextIO, chunk: int = 1 << 17) -> None:
    """Write the whole trace: header, then events merged by time, with lost-event lines.

    Lines are rendered a batch at a time with numpy (:mod:`ktracecli.render`), never
    one Python statement per record.
    """
    threads = [t for t in data.threads if len(t.records) or t.lost]
    records = [t.records.view(RECORD_DTYPE) for t in threads]
    entries = sum(len(r) for r in records)
    lost_total = sum(n for t in threads for _, n in t.lost)
    engine = data.info.get("engine")
    out.write(HEADER.format(engine=f"# engine: {engine}\n" if engine else "", entries=entries,
                            written=entries + lost_total, ncpus=data.info.get("ncpus", 1)))
    if not threads:
        return
    all_records = np.concatenate(records) if records else np.zeros(0, RECORD_DTYPE)
    owner = np.concatenate([np.full(len(r), i, dtype=np.int64) for i, r in enumerate(records)])
    ns = timestamps_ns(data, all_records["tsc"])
    order = np.argsort(ns, kind="stable")
    # lost-event lines go before the record at which each thread's loss was noticed
    offsets = np.cumsum([0] + [len(r) for r in records])
    lost_at: dict[int, int] = {}
    trailing: list[tuple[int, int]] = []
    for i, t in enumerate(threads):
        for at, count in t.lost:
            if at < len(records[i]):
                lost_at[int(offsets[i]) + at] = lost_at.get(int(offsets[i]) + at, 0) + count
            else:
                last_cpu = int(records[i]["parent"][-1]) >> 48 if len(records[i]) else 0
                trailing.append((last_cpu, count))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    breaks = sorted((int(rank[g]), g) for g in lost_at)
    tasks = render.table([f"{t.comm[:16]:>16}-{t.tid:<7d} [" for t in threads])
    symbolizer = Symbolizer(data)
    site_names = data.sites
    lo = 0
    for stop, global_index in [*breaks, (len(order), -1)]:
        for start in range(lo, stop, chunk):
            out.write(_lines(order[start:min(stop, start + chunk)], all_records, owner, ns, tasks,
                             site_names, symbolizer).decode())
        if global_index >= 0:
            cpu = int(all_records["parent"][global_index]) >> 48
            out.write(f"CPU:{cpu} [LOST {lost_at[global_index]} EVENTS]\n")
        lo = stop
    for cpu, count in trailing:
        out.write(f"CPU:{cpu} [LOST {count} EVENTS]\n")


def _lines(idx: np.ndarray, all_records: np.ndarray, owner: np.ndarray, ns: np.ndarray, tasks: np.ndarray,
           site_names: list[str], symbolizer: Symbolizer) -> bytes:
    """The lines of the records ``idx``: ``"%16s-%-7d [%03d]  %5lu.%06lu: func <-parent"``."""
    n = len(idx)
    if not n:
        return b""
    rec = all_records[idx]
    parent = rec["parent"]
    cpus = (parent >> np.uint64(48)).astype(np.int64)
    parent_ids, parent_names = symbolizer.name_ids(parent & np.uint64(ADDR_MASK))
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
