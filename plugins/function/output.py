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


def write_trace(data: TraceData, out: TextIO, chunk: int = 65536) -> None:
    """Write the whole trace: header, then events merged by time, with lost-event lines."""
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
    owner = np.concatenate([np.full(len(r), i, dtype=np.int32) for i, r in enumerate(records)])
    local = np.concatenate([np.arange(len(r), dtype=np.int64) for r in records])
    ns = timestamps_ns(data, all_records["tsc"])
    order = np.argsort(ns, kind="stable")
    lost_before: dict[tuple[int, int], int] = {}
    trailing: list[tuple[int, int]] = []
    for i, t in enumerate(threads):
        for at, dropped in t.lost:
            if at < len(records[i]):
                lost_before[(i, at)] = lost_before.get((i, at), 0) + dropped
            else:
                last_cpu = int(records[i]["parent"][-1]) >> 48 if len(records[i]) else 0
                trailing.append((last_cpu, dropped))
    tasks = [task_field(t.comm, t.tid) for t in threads]
    thread_space = np.array([t.space for t in threads], dtype=np.int64)
    site_names = data.sites
    symbolizers: dict[int, Symbolizer] = {}

    def symbolize(space: int, addrs: np.ndarray) -> list[str]:
        if space not in symbolizers:
            symbolizers[space] = Symbolizer(data, space)
        return symbolizers[space].names(addrs)

    for lo in range(0, len(order), chunk):
        idx = order[lo:lo + chunk]
        rec = all_records[idx]
        parent = rec["parent"]
        cpus = (parent >> np.uint64(48)).astype(np.int64).tolist()
        owners_arr = owner[idx]
        parents = parent_names(symbolize, thread_space[owners_arr], parent & np.uint64(ADDR_MASK))
        usecs = ((ns[idx] + 500) // 1000).tolist()
        owners = owners_arr.tolist()
        locals_ = local[idx].tolist()
        sites = rec["site"].tolist()
        lines = []
        for k in range(len(idx)):
            if lost_before:
                count = lost_before.get((owners[k], locals_[k]))
                if count:
                    lines.append(lost_line(cpus[k], count))
            lines.append(format_line(tasks[owners[k]], cpus[k], usecs[k], site_names[sites[k]], parents[k]))
        out.write("".join(lines))
    for cpu, count in trailing:
        out.write(lost_line(cpu, count))
