"""The recorded data directory (default ``ktrace.data/``): writing it and reading it back.

Layout::

    info.json       program, pid, engine, tracer, CPU count, clock calibration, totals
    sites.json      site index -> function name, module, process address
    modules.json    executable modules mapped in the traced processes, with their symbol files
                    and the address space each belongs to ("space", 0 if absent)
    symbols/N.json  one module's function symbols (module-relative, sorted)
    threads.json    per thread: pid, tid, comm, address space, record count, lost-event markers,
                    time anchors (records that keep part of their TSC get the rest from them)
    events/P-T.bin  the thread's raw ring records, in order (P-T-sS.bin in address space S > 0)

An address space is one process image: the first process is space 0, and each
forked child and each image an ``exec`` loads gets a new one, so that callers
are named with the modules mapped where the call happened.

It is written under a temporary name beside the target and renamed into place
at the end, so an existing trace is only replaced by a complete one.  A
temporary left by a ktracecli that was killed is removed by the next one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ktracecli.errors import DataError, UsageError
from ktracecli.process.pids import alive
from ktracecli.runtime.clock import ANCHOR_EVERY
from ktracecli.spool import Spool, map_pages, unmap_pages

FORMAT_VERSION = 1
#: event files grow by reserving this much disk at a time (posix_fallocate): block
#: allocation while writing made page-cache writes 10 times slower (0.3 GB/s against
#: 2.5-4 GB/s with the blocks reserved first) on ext4 here, too slow for a burst
#: of tens of millions of events a second
PREALLOCATE = 64 << 20
#: bytes per write system call: a write of 8 MiB into the page cache ran at 0.7-2.4 s/GB here
#: against 0.2 s/GB in 256 KiB writes, and the kernel (no preemption) holds the CPU for a
#: whole write call, 20-40 ms for 8 MiB, while the consumer thread waits to drain the rings
WRITE_PIECE = 256 << 10
#: event files are written with O_DIRECT where the file system allows it, in whole chunks
#: of an aligned buffer of this size: no page cache to fill (on this VM every new page of
#: memory costs about 2 us, so page-cache writes of a burst ran at 0.4-1 GB/s, while
#: direct writes ran at 1.7 GB/s in 1 MiB pieces and leave the CPU to the consumer)
DIRECT_CHUNK = 1 << 20
#: direct writes are whole blocks; the last, padded one is cut back by ftruncate
DIRECT_BLOCK = 4096


@dataclass
class _ThreadFile:
    pid: int
    tid: int
    comm: str
    space: int
    name: str
    handle: BinaryIO
    #: the file was opened with O_DIRECT: writes go through ``chunk``
    direct: bool = False
    records: int = 0
    lost: list[tuple[int, int]] = field(default_factory=list)
    #: time anchors: (index of a record, TSC when it was drained)
    anchors: list[tuple[int, int]] = field(default_factory=list)
    nbytes: int = 0
    reserved: int = 0
    #: the aligned buffer of direct writes and the bytes in it not written yet
    chunk: np.ndarray | None = None
    pending: int = 0
    #: bytes handed to the spool so far (consumer thread; see ktracecli.spool.Sink)
    staged: int = 0

    def write_now(self, data: memoryview) -> None:
        """Write ``data`` at the end, reserving disk blocks ahead of it in big steps (writer thread)."""
        end = self.nbytes + data.nbytes
        if end > self.reserved >= 0:
            step = max(PREALLOCATE, end - self.reserved, self.nbytes // 4)
            try:
                os.posix_fallocate(self.handle.fileno(), self.reserved, step)
                self.reserved += step
            except OSError:
                self.reserved = -1  # no reservation (file system without it, or full): plain writes
        if self.direct:
            self._through_chunk(np.frombuffer(data, dtype=np.uint8))
        else:
            self._write(data)
        self.nbytes = end

    def _through_chunk(self, src: np.ndarray) -> None:
        """Write ``src`` directly: whole aligned blocks straight from it, the rest through the chunk.

        ``src`` sits at the same offset modulo DIRECT_BLOCK in its (page-aligned)
        staging buffer as in the file (see :data:`ktracecli.spool.ALIGN`), so once
        the chunk's partial block is completed from it and written, its whole
        blocks need no copy.
        """
        if self.chunk is None:
            self.chunk = map_pages(DIRECT_CHUNK)
        partial = self.pending % DIRECT_BLOCK
        if partial and len(src):
            n = min(len(src), DIRECT_BLOCK - partial)
            self.chunk[self.pending:self.pending + n] = src[:n]
            self.pending += n
            src = src[n:]
        if self.pending % DIRECT_BLOCK == 0 and len(src) >= DIRECT_BLOCK and src.ctypes.data % DIRECT_BLOCK == 0:
            if self.pending:
                self._write_chunk(self.pending)
                self.pending = 0
            whole = len(src) // DIRECT_BLOCK * DIRECT_BLOCK
            for lo in range(0, whole, DIRECT_CHUNK):
                self._write_direct(src[lo:min(whole, lo + DIRECT_CHUNK)].data)
            src = src[whole:]
        while len(src) and self.direct:
            n = min(len(src), DIRECT_CHUNK - self.pending)
            self.chunk[self.pending:self.pending + n] = src[:n]
            self.pending += n
            src = src[n:]
            if self.pending == DIRECT_CHUNK:
                self._write_chunk(DIRECT_CHUNK)
                self.pending = 0
        if len(src):
            self._write(src.data)  # direct writes were given up on the way

    def _write_chunk(self, size: int) -> None:
        """Write the first ``size`` bytes of the chunk (a multiple of the block size), directly."""
        assert self.chunk is not None
        self._write_direct(self.chunk.data[:size])

    def _write_direct(self, view: memoryview) -> None:
        """Write ``view`` (aligned, a multiple of the block size) directly, at an aligned offset.

        A file system that took O_DIRECT at open but refuses a direct write (or
        writes part of it) gets plain writes from then on.
        """
        size = view.nbytes
        done = 0
        if self.direct:
            try:
                done = self.handle.write(view) or 0
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
            if done != size:
                fd = self.handle.fileno()
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                self.direct = False
        self._write(view[done:])

    def _write(self, data: memoryview) -> None:
        for lo in range(0, data.nbytes, WRITE_PIECE):
            piece = data[lo:lo + WRITE_PIECE]
            while piece.nbytes:
                written = self.handle.write(piece)
                if not written:
                    raise OSError(errno.EIO, "the file system wrote nothing")
                piece = piece[written:]

    def close(self) -> None:
        """Write what the chunk holds, close the file, give back the blocks reserved past its end."""
        try:
            padded = self.pending > 0
            if padded:
                self._write_chunk(-(-self.pending // DIRECT_BLOCK) * DIRECT_BLOCK)
                self.pending = 0
            if self.reserved > self.nbytes or padded:
                os.ftruncate(self.handle.fileno(), self.nbytes)
        finally:
            if self.chunk is not None:
                unmap_pages(self.chunk)
                self.chunk = None
            self.handle.close()


def _open_events(path: Path) -> tuple[BinaryIO, bool]:
    """The events file, opened for direct writes if its file system takes them."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    direct = getattr(os, "O_DIRECT", 0)
    if direct:
        try:
            return open(os.open(path, flags | direct, 0o666), "wb", buffering=0), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return open(os.open(path, flags, 0o666), "wb", buffering=0), False


def _remove_stale_partials(target: Path) -> None:
    """Remove temporaries of ``target`` whose ktracecli is gone (killed before it could finish)."""
    prefix = f".{target.name}.partial-"
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(prefix) and entry.name[len(prefix):].isdigit():
            if not alive(int(entry.name[len(prefix):])):
                shutil.rmtree(entry, ignore_errors=True)


class DataWriter:
    """Streams records into a new data directory and publishes it when complete.

    Records are staged in memory and written by a writer thread (:mod:`ktracecli.spool`),
    so :meth:`append` costs a memcpy, whatever the disk does.
    """

    def __init__(self, target: Path) -> None:
        self.target = target
        if target.exists() and not (target / "info.json").exists():
            raise UsageError(f"{target} exists and is not a ktracecli data directory; choose another -o")
        _remove_stale_partials(target)
        self.tmp = target.parent / f".{target.name}.partial-{os.getpid()}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        (self.tmp / "events").mkdir(parents=True)
        (self.tmp / "symbols").mkdir()
        self._threads: dict[tuple[int, int, int], _ThreadFile] = {}
        self.bytes_written = 0
        self._spool = Spool()

    def thread(self, pid: int, tid: int, comm: str, space: int = 0) -> _ThreadFile:
        """The open stream of one thread in one address space, created on first use."""
        key = (pid, tid, space)
        stream = self._threads.get(key)
        if stream is None:
            name = f"events/{pid}-{tid}.bin" if not space else f"events/{pid}-{tid}-s{space}.bin"
            handle, direct = _open_events(self.tmp / name)
            stream = _ThreadFile(pid, tid, comm, space, name, handle, direct)
            self._threads[key] = stream
        return stream

    def append(self, pid: int, tid: int, comm: str, records: np.ndarray, lost_at: int = 0, lost: int = 0,
               space: int = 0, drained: int | None = None) -> None:
        """Append a thread's records; ``lost`` events were dropped before record ``lost_at`` of this batch.

        ``drained``: the TSC when the records were found complete (they were all
        written before it).  A thread's first batch and then the first batch at
        least ANCHOR_EVERY ticks after the last anchor leave a time anchor, from
        which records that keep part of their TSC get the rest back
        (:func:`ktracecli.runtime.clock.extend_tsc`).
        """
        stream = self.thread(pid, tid, comm, space)
        if lost:
            stream.lost.append((stream.records + lost_at, lost))
        if len(records) and drained is not None and (
                not stream.anchors or drained - stream.anchors[-1][1] >= ANCHOR_EVERY):
            stream.anchors.append((stream.records, drained))
        if len(records):
            self._spool.put(stream, records.view(np.uint8).data)
            stream.records += len(records)
            self.bytes_written += records.nbytes

    @property
    def events(self) -> int:
        """Records written so far, all threads."""
        return sum(t.records for t in self._threads.values())

    @property
    def lost(self) -> int:
        """Events counted as lost so far, all threads."""
        return sum(n for t in self._threads.values() for _, n in t.lost)

    def write_json(self, name: str, value: Any) -> None:
        """Write one metadata file."""
        with open(self.tmp / name, "w") as f:
            json.dump(value, f, separators=(",", ":"))

    def finish(self, info: dict[str, Any]) -> None:
        """Close the streams, write the metadata and move the directory into place."""
        self._spool.close()
        threads = []
        for t in self._threads.values():
            t.close()
            threads.append({"pid": t.pid, "tid": t.tid, "comm": t.comm, "space": t.space, "events": t.name,
                            "records": t.records, "lost": t.lost, "anchors": t.anchors})
        self.write_json("threads.json", threads)
        self.write_json("info.json", {"version": FORMAT_VERSION, **info})
        old = None
        if self.target.exists():
            old = self.target.parent / f".{self.target.name}.old-{os.getpid()}"
            os.rename(self.target, old)
        os.rename(self.tmp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abandon(self) -> None:
        """Remove the partial directory."""
        try:
            self._spool.close()
        except DataError:
            pass
        for t in self._threads.values():
            t.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class ThreadData:
    """One thread's recorded events."""

    pid: int
    tid: int
    comm: str
    records: np.ndarray
    lost: list[tuple[int, int]]
    #: the address space (process image) the records were made in
    space: int = 0
    #: time anchors (see :meth:`DataWriter.append`)
    anchors: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class TraceData:
    """A data directory, loaded."""

    path: Path
    info: dict[str, Any]
    sites: list[str]
    modules: list[dict[str, Any]]
    threads: list[ThreadData]

    @property
    def tracer(self) -> str:
        """Name of the tracer that recorded the data."""
        return str(self.info["tracer"])

    def symbols(self, module_index: int) -> dict[str, list[Any]]:
        """The symbol table of one module (vaddr, size, name lists, sorted by vaddr)."""
        return _read_json(self.path, self.modules[module_index]["symbols"])


def _read_json(base: Path, name: str) -> Any:
    try:
        with open(base / name) as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"corrupt data directory {base}: {name} is missing") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"corrupt data directory {base}: {name}: {exc}") from None


def metadata(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``info.json`` and ``sites.json`` of a data directory, without reading its events."""
    if not path.is_dir():
        raise DataError(f"no trace data in {path} (run 'ktracecli record' first)")
    info = _read_json(path, "info.json")
    if not isinstance(info, dict) or info.get("version") != FORMAT_VERSION or "tracer" not in info:
        raise DataError(f"corrupt data directory {path}: info.json is not a ktracecli trace")
    sites = _read_json(path, "sites.json")
    if not isinstance(sites, list) or not all(isinstance(s, dict) and "name" in s for s in sites):
        raise DataError(f"corrupt data directory {path}: sites.json is not a list of sites")
    return info, sites


def load(path: Path, record_dtype: np.dtype | None = None) -> TraceData:
    """Read a data directory; DataError with one line if it is missing or corrupt."""
    info, sites = metadata(path)
    modules = _read_json(path, "modules.json")
    threads = []
    itemsize = int(info.get("record_size", 0))
    dtype = record_dtype if record_dtype is not None else np.dtype((np.void, max(itemsize, 1)))
    try:
        names = [str(s["name"]) for s in sites]
        for t in _read_json(path, "threads.json"):
            raw = np.fromfile(path / t["events"], dtype=np.uint8) if itemsize else np.zeros(0, np.uint8)
            if itemsize and (len(raw) % itemsize or len(raw) // itemsize != t["records"]):
                raise DataError(f"corrupt data directory {path}: {t['events']} is truncated")
            records = raw.view(dtype) if itemsize else np.zeros(0, dtype)
            threads.append(ThreadData(int(t["pid"]), int(t["tid"]), str(t["comm"]), records,
                                      [(int(a), int(b)) for a, b in t["lost"]], int(t.get("space", 0)),
                                      [(int(a), int(b)) for a, b in t.get("anchors", [])]))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"corrupt data directory {path}: {exc}") from None
    except FileNotFoundError as exc:
        raise DataError(f"corrupt data directory {path}: {exc.filename} is missing") from None
    return TraceData(path, info, names, modules, threads)
