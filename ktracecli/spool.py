"""Staging recorded events in memory so that disk writes never hold up draining the rings.

The consumer must copy a ring faster than a traced thread fills it (tens of
millions of events a second), but a file write can stall for milliseconds (block
allocation, writeback).  So draining only copies records into staging buffers
(a memcpy) and a writer thread writes them to their files in order::

    consumer thread                         writer thread
    ring slice ──memcpy──► staging buffer ──queue──► file.write ──► buffer back to the pool

Buffers come from a pool that grows on demand up to ``limit`` bytes; when it is
exhausted, :meth:`Spool.put` waits for the writer (the rings then fill, and what
does not fit is dropped and counted by the producers, never lost silently).
Only the consumer thread and the constructor map buffers: a writer thread at
idle priority mapping memory would hold the process's memory-map lock while
it waits for a CPU, and the consumer's own mapping would wait behind it.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ktracecli.errors import DataError

#: size of one staging buffer
CHUNK = 8 << 20
#: default most memory held by staged data (a second of 50 million 16-byte events)
DEFAULT_LIMIT = 1 << 30
#: buffers allocated up front (the pool grows past them only while the writer lags)
SPARES = 8
#: the writer thread's nice value: behind the consumer thread when both want the CPU
WRITER_NICE = 10


#: staged bytes sit at the same offset modulo ALIGN in their buffer as in their file, so
#: that a file opened for direct writes gets them straight from the (page-aligned) buffer
ALIGN = 4096


class Sink(Protocol):
    """Where staged bytes end up (a thread's event file)."""

    #: bytes staged for it so far (consumer thread only): the file offset of the next ones
    staged: int

    def write_now(self, data: memoryview) -> None:
        """Write ``data`` at the end of the file (called from the writer thread only)."""
        ...


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
MAP_FAILED = 2**64 - 1


def map_pages(size: int) -> np.ndarray:
    """``size`` bytes of page-aligned memory faulted in by the kernel in one go (MAP_POPULATE).

    mmap is called through ctypes, which lets go of the GIL meanwhile: Python's
    own mmap.mmap holds it, and faulting in megabytes takes milliseconds the
    consumer thread needs.  Give it back with :func:`unmap_pages`.
    """
    addr = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE,
                      mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0), -1, 0)
    if addr is None or addr == MAP_FAILED:
        raise MemoryError(f"cannot map {size} bytes of staging memory: {os.strerror(ctypes.get_errno())}")
    return np.ctypeslib.as_array((ctypes.c_uint8 * size).from_address(addr))


def unmap_pages(data: np.ndarray) -> None:
    """Give back memory from :func:`map_pages` (nothing may use ``data`` afterwards)."""
    _libc.munmap(ctypes.c_void_p(data.ctypes.data), ctypes.c_size_t(data.nbytes))


@dataclass
class _Buffer:
    """One staging buffer and the pieces of it that belong to each sink, in order."""

    data: np.ndarray
    used: int = 0
    pieces: list[tuple[Sink, int, int]] = field(default_factory=list)


class Spool:
    """A pool of staging buffers and the thread that writes them out."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = max(limit, CHUNK)
        self._free: list[np.ndarray] = []
        self._allocated = 0
        self._pool_lock = threading.Condition()
        self._queue: queue.SimpleQueue[_Buffer | None] = queue.SimpleQueue()
        self._error: OSError | None = None
        self._open: _Buffer | None = None  # the buffer being filled (consumer thread only)
        for _ in range(min(SPARES, self.limit // CHUNK)):
            self._allocated += CHUNK
            self._free.append(map_pages(CHUNK))
        self._thread = threading.Thread(target=self._run, name="ktracecli-writer", daemon=True)
        self._thread.start()

    def put(self, sink: Sink, data: memoryview) -> None:
        """Stage ``data`` for ``sink``; returns once it is copied (the source may then be reused)."""
        src = np.frombuffer(data, dtype=np.uint8)
        while len(src):
            if self._open is None:
                self._open = _Buffer(self._take())
            buf = self._open
            at = buf.used + (sink.staged - buf.used) % ALIGN
            if at >= len(buf.data):
                self.flush()
                continue
            buf.used = at
            n = min(len(src), len(buf.data) - buf.used)
            buf.data[buf.used:buf.used + n] = src[:n]
            buf.pieces.append((sink, buf.used, buf.used + n))
            buf.used += n
            sink.staged += n
            src = src[n:]
            if buf.used == len(buf.data):
                self.flush()

    def flush(self) -> None:
        """Hand the partly filled buffer to the writer."""
        if self._open is not None:
            if self._open.pieces:
                self._queue.put(self._open)
            else:
                self._give_back(self._open.data)
            self._open = None

    def close(self) -> None:
        """Write everything staged and stop the writer; a write error is raised here."""
        self.flush()
        self._queue.put(None)
        self._thread.join()
        for data in self._free:
            unmap_pages(data)
        self._free.clear()
        if self._error is not None:
            raise DataError(f"cannot write the trace: {self._error.strerror or self._error}")

    @property
    def allocated(self) -> int:
        """Bytes of staging memory allocated so far (the pool never shrinks)."""
        return self._allocated

    def _take(self) -> np.ndarray:
        with self._pool_lock:
            while not self._free and self._allocated + CHUNK > self.limit:
                self._pool_lock.wait()
            if self._free:
                return self._free.pop()
            self._allocated += CHUNK
        return map_pages(CHUNK)

    def _give_back(self, data: np.ndarray) -> None:
        with self._pool_lock:
            self._free.append(data)
            self._pool_lock.notify()

    def _run(self) -> None:
        try:  # the consumer copying rings must win the CPU over the disk writes it feeds
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
        except (OSError, AttributeError):
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)
            except OSError:
                pass
        while True:
            buf = self._queue.get()
            if buf is None:
                return
            view = buf.data.data
            for sink, lo, hi in buf.pieces:
                if self._error is None:
                    try:
                        sink.write_now(view[lo:hi])
                    except OSError as exc:
                        self._error = exc  # keep emptying the queue so that put() never waits forever
            self._give_back(buf.data)
