"""TSC to CLOCK_MONOTONIC conversion, calibrated from pairs of readings.

Python cannot run ``rdtsc`` itself, so a four-instruction function is assembled
into an executable page of ktracecli's own memory and called through ctypes.
"""

from __future__ import annotations

import ctypes
import mmap
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

_page: mmap.mmap | None = None
_rdtsc = None


def rdtsc() -> int:
    """The current time stamp counter."""
    global _page, _rdtsc
    if _rdtsc is None:
        # imported here: ``show`` converts timestamps without loading the assembler (keystone)
        from ktracecli.arch.x86_64.assembler import assemble

        code = assemble("rdtsc; shl rdx, 32; or rax, rdx; ret", 0)
        _page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        _page.write(code)
        address = ctypes.addressof(ctypes.c_char.from_buffer(_page))
        _rdtsc = ctypes.CFUNCTYPE(ctypes.c_uint64)(address)
    return int(_rdtsc())


@dataclass(frozen=True)
class ClockSample:
    """A TSC reading and the CLOCK_MONOTONIC time (ns) taken with it."""

    tsc: int
    ns: int


def sample() -> ClockSample:
    """The tightest of several (tsc, monotonic) pairs."""
    best: tuple[int, int, int] | None = None
    for _ in range(16):
        t0 = rdtsc()
        ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        t1 = rdtsc()
        if best is None or t1 - t0 < best[0]:
            best = (t1 - t0, (t0 + t1) // 2, ns)
    assert best is not None
    return ClockSample(best[1], best[2])


@dataclass(frozen=True)
class Calibration:
    """Linear map from TSC ticks to CLOCK_MONOTONIC nanoseconds."""

    tsc0: int
    ns0: int
    ns_per_tick: float

    @classmethod
    def between(cls, a: ClockSample, b: ClockSample) -> "Calibration":
        """Calibrate from two samples (the further apart, the better)."""
        if b.tsc <= a.tsc:
            raise ValueError("calibration samples out of order")
        return cls(a.tsc, a.ns, (b.ns - a.ns) / (b.tsc - a.tsc))


#: readings converted at a time (small temporaries)
BLOCK = 1 << 16


def timestamps_ns(calibration: dict[str, Any], tsc: np.ndarray) -> np.ndarray:
    """CLOCK_MONOTONIC nanoseconds of TSC readings, from a trace's ``info.json`` calibration:
    ns0 + round((tsc - tsc0) * ns_per_tick), a block at a time (no whole-trace temporaries)."""
    tsc0, ns0, scale = np.int64(calibration["tsc0"]), np.int64(calibration["ns0"]), float(calibration["ns_per_tick"])
    out = np.empty(len(tsc), dtype=np.int64)
    for start in range(0, len(tsc), BLOCK):
        ticks = tsc[start:start + BLOCK].astype(np.int64)
        ticks -= tsc0
        out[start:start + len(ticks)] = np.round(ticks * scale)
        out[start:start + len(ticks)] += ns0
    return out


#: a data directory's time anchors: (index of a thread's first record drained after the
#: anchor's time, TSC then), one at the thread's first batch and then at the first batch
#: at least ANCHOR_EVERY ticks after the last anchor (see :meth:`DataWriter.append`)
ANCHOR_EVERY = 1 << 40


def extend_tsc(low: np.ndarray, bits: int, shift: int, anchors: Sequence[tuple[int, int]]) -> np.ndarray:
    """Full TSC readings of records that kept only bits ``shift`` .. ``shift + bits`` of theirs.

    The records from an anchor to the next were drained less than ANCHOR_EVERY
    ticks after the anchor's time, and each was written before it was drained:
    a reading is the one that matches its bits in the turn of 2**(bits+shift)
    ticks that ends ANCHOR_EVERY ticks after its anchor (so a record may have
    waited almost a whole turn, less ANCHOR_EVERY, to be drained).  Records
    before the first anchor (none, for data ktracecli wrote) use the first.
    """
    n = len(low)
    out = np.empty(n, dtype=np.uint64)
    if not n:
        return out
    if not anchors:
        raise ValueError("records with partial timestamps need time anchors")
    turn = np.uint64((1 << bits) - 1)
    bounds = [0, *(min(max(int(i), 0), n) for i, _ in anchors[1:]), n]
    for (_, tsc), lo, hi in zip(anchors, bounds[:-1], bounds[1:]):
        end = np.uint64(((int(tsc) + ANCHOR_EVERY) >> shift) & (2**64 - 1))
        for start in range(lo, hi, BLOCK):
            part = low[start:min(hi, start + BLOCK)]
            units = end - ((end - part) & turn)
            out[start:start + len(part)] = units << np.uint64(shift)
    return out
