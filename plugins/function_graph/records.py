"""function_graph's ring records: 16 bytes per event, entries and exits alike.

Record (little endian)::

    +0   u64  tsc     time stamp counter when the event happened
    +8   u32  site    site index of the function
    +12  u32  info    bits  0-9   depth (shadow-stack entries below this call)
                      bits 10-11  kind (see :class:`Kind`)
                      bits 12-23  CPU (TSC_AUX, low 12 bits)
                      bits 24-31  commit: (lap + 1) mod 256, lap = index >> log2(capacity)

The second quadword (site and info) is written with one store, after the
first: its commit byte says the record is complete.  A lap number is enough
because a ring never runs a lap ahead of its consumer (see
:class:`ktracecli.runtime.layout.CommitWord`).

Under tracing_thresh, nothing is written at entry; a return that took at
least the threshold writes an ENTRY record (the entry time, from the shadow
stack) directly followed by its EXIT record.
"""

from __future__ import annotations

import enum

import numpy as np

from ktracecli.runtime.layout import CommitWord

COMMIT = CommitWord(field="info", shift=24, mask=0xFF, per_lap=True)
RECORD_DTYPE = np.dtype([("tsc", "<u8"), ("site", "<u4"), ("info", "<u4")], metadata={"commit": COMMIT})
assert RECORD_DTYPE.itemsize == 16

DEPTH_BITS = 10
MAX_DEPTH = (1 << DEPTH_BITS) - 1
KIND_SHIFT = 10
CPU_SHIFT = 12
CPU_MASK = 0xFFF


class Kind(enum.IntEnum):
    """What a record says happened."""

    ENTRY = 0      #: a call whose return is hooked: an EXIT or CLOSED record follows
    NOHOOK = 1     #: a call traced without return hooking (max_graph_depth, full shadow stack)
    EXIT = 2       #: a return, through the call return
    CLOSED = 3     #: a frame left without returning (longjmp, exception), found when the shadow stack resynchronised


def info_word(depth: int, kind: Kind, cpu: int = 0) -> int:
    """The info word without its commit byte (tests build records with it)."""
    return depth | int(kind) << KIND_SHIFT | (cpu & CPU_MASK) << CPU_SHIFT


#: records decoded at a time (small temporaries)
DECODE_BLOCK = 1 << 16


def decode(records: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(depth, kind, cpu) arrays of ``records`` (int16, int8, int16: they fit)."""
    info = records["info"]
    n = len(info)
    depth, kind, cpu = np.empty(n, np.int16), np.empty(n, np.int8), np.empty(n, np.int16)
    for start in range(0, n, DECODE_BLOCK):
        block = info[start:start + DECODE_BLOCK]
        end = start + len(block)
        depth[start:end] = block & MAX_DEPTH
        kind[start:end] = (block >> KIND_SHIFT) & 3
        cpu[start:end] = (block >> CPU_SHIFT) & CPU_MASK
    return depth, kind, cpu
