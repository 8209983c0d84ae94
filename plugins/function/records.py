"""The function tracer's ring records: 16 bytes per traced call.

Record (little endian)::

    +0   u64  stamp   bits  0-42  TSC / 32, modulo 2**43 (12.3 ns steps at 2.6 GHz,
                                  a full turn every 2**48 ticks: 30 hours here)
                      bits 43-63  site index (MAX_SITES sites)
    +8   u64  call    bits  0-46  return address into the caller (user addresses
                                  fit in 47 bits)
                      bits 47-58  CPU (TSC_AUX or rseq's cpu_id, low 12 bits)
                      bits 59-63  commit: (lap + 1) mod 32, lap = index >> log2(capacity)

The second quadword is written with one store, after the first: its commit
bits say the record is complete (a lap number is enough, see
:class:`ktracecli.runtime.layout.CommitWord`).  The ticks the record drops
are restored from the time each batch of records was drained (the data
directory's time anchors, see :func:`ktracecli.runtime.clock.extend_tsc`):
the printed timestamps are microseconds, and a record is read within
milliseconds of being written, never hours.

Traces recorded before this layout hold 24-byte records (tsc, parent | cpu
<< 48, site, commit): :func:`decode` reads both.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ktracecli.runtime.clock import extend_tsc
from ktracecli.runtime.layout import CommitWord

COMMIT = CommitWord(field="call", shift=59, mask=0x1F, per_lap=True)
RECORD_DTYPE = np.dtype([("stamp", "<u8"), ("call", "<u8")], metadata={"commit": COMMIT})
assert RECORD_DTYPE.itemsize == 16

#: TSC bits the record drops at the bottom, and those it keeps above them
TSC_SHIFT = 5
TSC_BITS = 43
SITE_SHIFT = TSC_BITS
SITE_BITS = 64 - SITE_SHIFT
MAX_SITES = 1 << SITE_BITS
PARENT_BITS = 47
CPU_SHIFT = PARENT_BITS
CPU_MASK = 0xFFF

#: what :func:`decode` gives: parent | cpu << 48 in one word, as the 24-byte records had it
DECODED_DTYPE = np.dtype([("tsc", "<u8"), ("parent", "<u8"), ("site", "<u4")])
LEGACY_DTYPE = np.dtype([("tsc", "<u8"), ("parent", "<u8"), ("site", "<u4"), ("commit", "<u4")])
#: the 24-byte records' caller address bits (cpu above them)
LEGACY_CPU_SHIFT = 48


def decode(raw: np.ndarray, anchors: Sequence[tuple[int, int]]) -> np.ndarray:
    """Full timestamps, callers (with the CPU in bits 48-59) and sites of a thread's records.

    ``raw`` is the thread's records as bytes-sized items of 16 (or 24, an older
    trace) bytes; ``anchors`` its time anchors.
    """
    if raw.dtype.itemsize == LEGACY_DTYPE.itemsize:
        old = raw.view(LEGACY_DTYPE)
        out = np.empty(len(old), DECODED_DTYPE)
        out["tsc"], out["parent"], out["site"] = old["tsc"], old["parent"], old["site"]
        return out
    rec = raw.view(RECORD_DTYPE)
    out = np.empty(len(rec), DECODED_DTYPE)
    stamp, call = rec["stamp"], rec["call"]
    out["tsc"] = extend_tsc(stamp & np.uint64((1 << TSC_BITS) - 1), TSC_BITS, TSC_SHIFT, anchors)
    out["site"] = stamp >> np.uint64(SITE_SHIFT)
    out["parent"] = ((call & np.uint64((1 << PARENT_BITS) - 1))
                     | (((call >> np.uint64(CPU_SHIFT)) & np.uint64(CPU_MASK)) << np.uint64(LEGACY_CPU_SHIFT)))
    return out


def encode(tsc: int, site: int, parent: int, cpu: int, index: int, capacity_bits: int) -> tuple[int, int]:
    """The two quadwords the handler writes for reservation ``index`` (tests build records with it)."""
    stamp = (tsc >> TSC_SHIFT) & ((1 << TSC_BITS) - 1) | (site % MAX_SITES) << SITE_SHIFT
    lap = (index >> capacity_bits) + 1
    call = parent & ((1 << PARENT_BITS) - 1) | (cpu & CPU_MASK) << CPU_SHIFT | (lap & 0x1F) << 59
    return stamp, call
