"""From one thread's records to the lines of its call graph: which line each record makes.

The kernel's rules, applied to a thread's ring (our "CPU buffer"):

- an ENTRY directly followed by its own return (same depth and function, no
  events lost between them) is a leaf, ``func();``, and the return is not
  printed on its own;
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
