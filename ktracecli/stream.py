"""``--live``: the running session's side of streaming (the kernel's ``trace_pipe``).

The consumer thread hands each round of records to a :class:`StreamSink`,
which passes them to the tracer's live writer (``Tracer.live_writer``) with a
:class:`SessionView` to name sites and callers and to convert timestamps.  If
the reader of stdout goes away (``| head``), streaming stops quietly and the
session goes on recording.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from typing import TextIO

import numpy as np

from ktracecli.errors import UsageError
from ktracecli.interface import LiveBatch, LiveWriter, Tracer
from ktracecli.options import TraceOptions
from ktracecli.runtime import clock
from ktracecli.selection import SiteTable
from ktracecli.symbols import Symbolizer
from ktracecli.traced import Spaces


class SessionView:
    """A :class:`~ktracecli.interface.LiveContext` over a running session."""

    def __init__(self, sites: SiteTable, spaces: Spaces, start: clock.ClockSample,
                 options: TraceOptions = TraceOptions(), tracing_thresh: int = 0) -> None:
        self.sites = sites
        self.spaces = spaces
        self.start = start
        self.options = options
        self.tracing_thresh = tracing_thresh
        self.ncpus = os.sysconf("SC_NPROCESSORS_ONLN")
        self._symbolizers: dict[int, tuple[int, Symbolizer]] = {}
        self._lock = threading.Lock()

    def site_name(self, index: int) -> str:
        """The function name of a site index."""
        return self.sites.name(index)

    def symbolize(self, space: int, addrs: np.ndarray) -> list[str]:
        """Names of process addresses in one address space (its modules as known now)."""
        modules = self.spaces.of(space)
        with self._lock:
            known = self._symbolizers.get(space)
            if known is None or known[0] != len(modules):
                known = self._symbolizers[space] = (len(modules), Symbolizer.of_modules(modules))
        return known[1].names(addrs)

    def timestamps_ns(self, tsc: np.ndarray) -> np.ndarray:
        """CLOCK_MONOTONIC ns from TSC readings, calibrated from the session's start to now."""
        now = clock.sample()
        if now.tsc <= self.start.tsc:
            return np.full(len(tsc), now.ns, dtype=np.int64)
        cal = clock.Calibration.between(self.start, now)
        delta = tsc.astype(np.int64) - np.int64(cal.tsc0)
        return np.int64(cal.ns0) + np.round(delta * cal.ns_per_tick).astype(np.int64)


class StreamSink:
    """Feeds drained records to a tracer's live writer; stops quietly if stdout is closed."""

    def __init__(self, tracer: Tracer, view: SessionView, out: TextIO = sys.stdout) -> None:
        make = getattr(tracer, "live_writer", None)
        if make is None:  # a tracer plugin written before --live existed
            raise UsageError(f"the {tracer.name} tracer cannot stream its output (--live)")
        self.writer: LiveWriter | None = make(view, out)
        self.out = out

    def __call__(self, batches: Sequence[LiveBatch]) -> None:
        """Print one round of records."""
        if self.writer is None:
            return
        try:
            self.writer.write(list(batches))
        except (BrokenPipeError, ValueError):
            self._closed()

    def close(self) -> None:
        """The session is over: let the writer print what it held back."""
        if self.writer is None:
            return
        try:
            self.writer.close()
        except (BrokenPipeError, ValueError):
            self._closed()
        self.writer = None

    def _closed(self) -> None:
        """The reader went away: stream no more, and make the final flush at exit harmless."""
        self.writer = None
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.out.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
