"""From one thread's records to the lines of its call graph: which line each record makes.

The kernel's rules, applied to a thread's ring (our "CPU buffer"):

- an ENTRY directly followed by its own return (same depth and function, no
  events lost between them) is a leaf, ``func();``, and the return is not
  printed on its own; it forgets the function remembered at its depth (as the
  kernel's print_graph_entry_leaf does: a call at that depth means the frame
  that was there has returned, its return lost);
- any other ENTRY opens ``func() {`` and remembers the function at its depth;
- a return (EXIT, or CLOSED for a frame left by longjmp or an exception)
  prints ``}``, or ``} /* func */`` when the function remembered at its depth
  is not this one (the entry was lost, or the trace began inside the call);
- a NOHOOK entry (deeper than max_graph_depth, or a full shadow stack) prints
  ``func();`` with no duration: its return was not hooked.

Under tracing_thresh the ring holds (ENTRY, return) pairs for the long calls
only, and, as in the kernel, only the returns are printed, as ``} /* func */``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from ktracecli.datadir import ThreadData
from ktracecli_function_graph.records import RECORD_DTYPE, Kind, decode


class Role(enum.IntEnum):
    """What a record prints as."""

    SKIP = 0     #: nothing (a leaf's return, or an entry under tracing_thresh)
    LEAF = 1     #: func();  with a duration
    OPEN = 2     #: func() {
    NOHOOK = 3   #: func();  without a duration
    CLOSE = 4    #: }  or  } /* func */


@dataclass
class ThreadGraph:
    """One thread's records, decoded, with the role of each and the entry of each timed return.

    Durations are not stored: a LEAF's is the time to the next record, a timed CLOSE's
    the time since its entry (``opens``); :class:`ktracecli_function_graph.columns.Records`
    computes them for the lines being printed.
    """

    thread: ThreadData
    tsc: np.ndarray         #: time stamp counter of each record
    site: np.ndarray
    depth: np.ndarray
    cpu: np.ndarray
    role: np.ndarray        #: a :class:`Role` per record (int8)
    matched: np.ndarray     #: a CLOSE whose entry is in the trace
    closes: np.ndarray      #: the CLOSE records with a duration, in order
    opens: np.ndarray       #: the record whose time each of ``closes`` is measured from
    lost_before: dict[int, int]  #: record index -> events lost just before it

    def __len__(self) -> int:
        return len(self.site)


#: the role of each kind of record, before leaves are found
ROLE_OF_KIND = np.array([Role.OPEN, Role.NOHOOK, Role.CLOSE, Role.CLOSE], dtype=np.int8)
#: under tracing_thresh, only the returns are printed
THRESH_ROLE_OF_KIND = np.array([Role.SKIP, Role.SKIP, Role.CLOSE, Role.CLOSE], dtype=np.int8)
assert Role.OPEN - 1 == Role.LEAF and Role.CLOSE - 4 == Role.SKIP  # what _leaves subtracts


def thread_graph(thread: ThreadData, thresh: bool) -> ThreadGraph:
    """The roles of ``thread``'s records (``thresh``: a tracing_thresh trace).

    Whole-thread arrays are few and narrow, and temporaries are avoided: a trace has
    millions of records, and fresh memory costs more than the arithmetic.
    """
    records = thread.records.view(RECORD_DTYPE)
    depth, kind, cpu = decode(records)
    site = records["site"]
    n = len(site)
    lost_before: dict[int, int] = {}
    for at, count in thread.lost:
        lost_before[at] = lost_before.get(at, 0) + count
    # a loss noticed before record i breaks the pair (i - 1, i), whatever its count
    unbroken = np.ones(n, dtype=bool)
    unbroken[[at for at in lost_before if 0 <= at < n]] = False
    role = (THRESH_ROLE_OF_KIND if thresh else ROLE_OF_KIND)[kind]
    matched = np.zeros(n, dtype=bool)
    if thresh:
        # an ENTRY and the return after it are one long call: the return is timed from the entry
        closes = np.flatnonzero((kind[:-1] == Kind.ENTRY) & (kind[1:] >= Kind.EXIT) & unbroken[1:]) + 1
        opens = closes - 1
    else:
        _leaves(kind, depth, site, unbroken, role)
        closes, opens = _match(depth, site, role)
        matched[closes] = True
    return ThreadGraph(thread, records["tsc"], site, depth, cpu, role, matched, closes, opens, lost_before)


def _leaves(kind: np.ndarray, depth: np.ndarray, site: np.ndarray, unbroken: np.ndarray,
            role: np.ndarray) -> None:
    """Make each ENTRY directly followed by its own return (same depth and site, no loss between) a
    LEAF, and the return a SKIP."""
    leaf = kind[:-1] == Kind.ENTRY
    leaf &= kind[1:] >= Kind.EXIT
    leaf &= depth[:-1] == depth[1:]
    leaf &= site[:-1] == site[1:]
    leaf &= unbroken[1:]
    flag = leaf.view(np.int8)  # 0 or 1
    role[:-1] -= flag          # OPEN - 1 = LEAF
    role[1:] -= 4 * flag       # CLOSE - 4 = SKIP


def _match(depth: np.ndarray, site: np.ndarray, role: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each CLOSE that matches the OPEN before it at its depth, and that OPEN, when no other CLOSE
    or LEAF came between (a second OPEN replaces the first, a CLOSE consumes it, a LEAF clears
    it): with the OPEN, CLOSE and LEAF records sorted by depth, stably, that OPEN is the record
    just before the CLOSE."""
    if not (role == Role.CLOSE).any():
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    braces = np.flatnonzero((role == Role.OPEN) | (role == Role.CLOSE) | (role == Role.LEAF))
    braces = braces[np.argsort(depth[braces], kind="stable")]
    opens, closes = braces[:-1], braces[1:]
    pairs = ((depth[opens] == depth[closes]) & (role[opens] == Role.OPEN) & (role[closes] == Role.CLOSE)
             & (site[opens] == site[closes]))
    opens, closes = opens[pairs], closes[pairs]
    order = np.argsort(closes)
    return closes[order], opens[order]
