"""The columns of function_graph lines, rendered for a batch of records at once with numpy.

Each line is ``[abstime] [cpu] [proc] [duration field] indent body`` (see
../shared/ftrace-format.md, section 3), and each part is a column of
:mod:`ktracecli.render`::

    abstime    decimal(s, 5) "." decimal(us, 6, "0") " |  "      360.774522 |  
    cpu        one " %*d) " string per CPU number                  1) 
    proc       one "comm-pid | " string per thread                   sh-4802     | 
    duration   head: mark + " " (or "  ")                          + 
               number: fixed_point(ns, 3 decimals, 7 digits)      12.345
               tail: " us " + spaces to width 8 + "|  "             us   |  
    body       one "  " * depth + body + "\\n" string per distinct (body, function, depth),
               the last column of render.join_rows (any length)

A line without a duration (``func() {``, a call without return hooking, a return
whose entry is not in the trace) has a blank head, no number, and a tail of 12
spaces: the 14 blanks of the format.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np

from ktracecli import render
from ktracecli.options import TraceOptions
from ktracecli.runtime.clock import timestamps_ns
from ktracecli_function_graph.graph import Role
from ktracecli_function_graph.records import DEPTH_BITS

#: the overhead marks, for durations strictly above each limit in ns (a space under 10 us)
LIMITS = np.array([10_000, 100_000, 1_000_000, 10_000_000, 100_000_000, 1_000_000_000], dtype=np.int64)
MARKS = " +!#*@$"
FILL = "              |  "
PROC_WIDTH = 14
#: DURATION column heads: a mark and a space, index 0 (two spaces) for no mark
HEADS = render.table([f"{symbol} " for symbol in MARKS])
#: after the number: " us ", spaces up to width 8 (index: how many), "|  "; index 4: no number
TAILS = render.table([f" us {' ' * k}|  " for k in range(4)] + [FILL[2:]])
NO_NUMBER = 4
#: the width of TAILS without its last entry
TAIL_WIDTH = len(" us    |  ")
#: depths in a body key
DEPTH_SPAN = 1 << DEPTH_BITS


class Body(enum.IntEnum):
    """What a line shows after its indentation."""

    CALL = 0    #: func();
    OPEN = 1    #: func() {
    CLOSE = 2   #: }
    TAIL = 3    #: } /* func */


def mark_index(ns: np.ndarray) -> np.ndarray:
    """The index in MARKS of each duration's overhead mark (0, a space, for negative ones too)."""
    return np.searchsorted(LIMITS, ns, side="left")


def mark(ns: int) -> str:
    """The overhead mark of a duration (a space under 10 us)."""
    return MARKS[int(mark_index(np.array([ns], dtype=np.int64))[0])]


def duration_number(ns: int) -> str:
    """Microseconds with the first min(3, 7 - digits) digits of the remainder, truncated."""
    column, _ = render.fixed_point(np.array([ns], dtype=np.int64), 3, 7)
    return render.join_rows([column]).decode()


def proc_field(comm: str, tid: int) -> str:
    """``comm-tid``, comm cut to 7 characters, centred in 14 columns (the odd space on the right)."""
    text = f"{comm[:7]}-{tid}"
    spaces = max(0, PROC_WIDTH - len(text))
    return " " * (spaces // 2) + text + " " * (spaces - spaces // 2)


#: the body of each (role * 2 + matched), without and with funcgraph-tail
BODIES = (
    np.array([Body.CALL] * 2 + [Body.CALL] * 2 + [Body.OPEN] * 2 + [Body.CALL] * 2 + [Body.TAIL, Body.CLOSE],
             dtype=np.int64),
    np.array([Body.CALL] * 2 + [Body.CALL] * 2 + [Body.OPEN] * 2 + [Body.CALL] * 2 + [Body.TAIL] * 2,
             dtype=np.int64),
)


@dataclass
class Records:
    """What the lines of a trace are made of: one entry per record, all threads end to end."""

    tsc: np.ndarray
    clock: dict[str, Any]  #: the trace's TSC calibration
    cpu: np.ndarray
    site: np.ndarray
    depth: np.ndarray
    role: np.ndarray       #: a graph.Role per record
    matched: np.ndarray    #: a CLOSE whose entry is in the trace
    closes: np.ndarray     #: the CLOSE records with a duration, in order
    opens: np.ndarray      #: the record whose time each of ``closes`` is measured from
    starts: np.ndarray     #: index of each thread's first record, and the total

    def owner(self, rows: np.ndarray) -> np.ndarray:
        """The index of the thread of each record of ``rows``."""
        return np.searchsorted(self.starts, rows, side="right") - 1

    def ns(self, rows: np.ndarray) -> np.ndarray:
        """CLOCK_MONOTONIC ns of the records ``rows``."""
        return timestamps_ns(self.clock, self.tsc[rows])

    def duration(self, rows: np.ndarray) -> np.ndarray:
        """The ns each record of ``rows`` prints in the DURATION column, -1 for none: a LEAF's
        time to its return (the next record), a timed CLOSE's time since its entry."""
        role = self.role[rows]
        out = np.full(len(rows), -1, dtype=np.int64)
        leaves = np.flatnonzero(role == Role.LEAF)
        if len(leaves):
            at = rows[leaves]
            out[leaves] = self.ns(at + 1) - self.ns(at)
        closes = np.flatnonzero(role == Role.CLOSE)
        if len(closes) and len(self.closes):
            at = rows[closes]
            k = np.minimum(np.searchsorted(self.closes, at), len(self.closes) - 1)
            timed = self.closes[k] == at
            out[closes[timed]] = self.ns(at[timed]) - self.ns(self.opens[k[timed]])
        return out


class LineRenderer:
    """Renders the lines of a batch of records with one set of options."""

    def __init__(self, opts: TraceOptions, names: list[str], procs: list[str], cpu_width: int,
                 top_cpu: int) -> None:
        self.abstime = "funcgraph-abstime" in opts
        self.proc = "funcgraph-proc" in opts
        self.duration = "funcgraph-duration" in opts
        self.overhead = "funcgraph-overhead" in opts
        self.bodies = BODIES["funcgraph-tail" in opts]
        self.names = names
        self.procs = render.table([f"{p} | " for p in procs])
        self.cpus = (render.table([f" {c:{cpu_width}d}) " for c in range(top_cpu + 1)])
                     if "funcgraph-cpu" in opts else None)
        self._sites = max(len(names), 1)
        self._bodies: dict[int, bytes] = {}

    def lines(self, records: Records, rows: np.ndarray, inserts: list[tuple[int, bytes]]) -> bytes:
        """The lines of ``records[rows]`` with ``inserts`` ((row, text), sorted) put before their rows."""
        n = len(rows)
        if not n:
            return b"".join(text for _, text in inserts)
        columns = []
        if self.abstime:
            seconds, ns = np.divmod(records.ns(rows), 1_000_000_000)
            columns += [render.decimal(seconds, 5), render.constant(".", n),
                        render.decimal(ns // 1000, 6, "0"), render.constant(" |  ", n)]
        if self.cpus is not None:
            columns.append(render.pick(self.cpus, records.cpu[rows]))
        if self.proc:
            columns.append(render.pick(self.procs, records.owner(rows)))
        if self.duration:
            columns += self._duration(records.duration(rows))
        return render.join_rows(columns, inserts, last=self._body(records, rows))

    def _duration(self, ns: np.ndarray) -> list[np.ndarray]:
        """Head, number and tail of the DURATION field (blank where ``ns`` is negative)."""
        shown = ns >= 0
        number, length = render.fixed_point(np.maximum(ns, 0), 3, 7)
        tail = np.maximum(8 - length, 0)
        tails = TAILS[:NO_NUMBER, :TAIL_WIDTH]
        if not shown.all():
            number[~shown] = render.PAD
            tail[~shown] = NO_NUMBER
            tails = TAILS
        head = (render.pick(HEADS, mark_index(ns)) if self.overhead
                else render.constant("  ", len(ns)))
        return [head, number, render.pick(tails, tail)]

    def _body(self, records: Records, rows: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        """Indentation, body and newline: one string per distinct (body, function, depth) of the
        batch, and which one each line shows."""
        body = self.bodies[records.role[rows] * 2 + records.matched[rows]]
        site = np.where(body == Body.CLOSE, 0, records.site[rows])
        keys, which = render.factorize((body * self._sites + site) * DEPTH_SPAN + records.depth[rows])
        return [self._text(k) for k in keys.tolist()], which

    def _text(self, key: int) -> bytes:
        """The UTF-8 text of a body key (made once)."""
        text = self._bodies.get(key)
        if text is None:
            rest, depth = divmod(key, DEPTH_SPAN)
            body, site = divmod(rest, self._sites)
            name = self.names[site]
            shown = (f"{name}();", f"{name}() {{", "}", f"}} /* {name} */")[body]
            text = self._bodies[key] = f"{'  ' * depth}{shown}\n".encode()
        return text
