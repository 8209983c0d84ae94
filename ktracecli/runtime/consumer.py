"""Draining the rings of traced processes into the data directory, in bulk.

A background thread copies every live slot's new records a few hundred times a
second (numpy slices of the shared memory, never a Python loop per record).
The ptrace thread calls :meth:`Consumer.release` when a thread exits, so its
slot is drained once more and freed before its fs base can be reused.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from ktracecli.datadir import DataWriter
from ktracecli.runtime.layout import commit_word
from ktracecli.runtime.shm import SharedRings


@dataclass
class _SlotState:
    lost_seen: int = 0


@dataclass
class ProcessRings:
    """One traced process's rings and what has been consumed of them."""

    pid: int
    rings: SharedRings
    dtype: np.dtype
    state: dict[int, _SlotState] = field(default_factory=dict)
    comms: dict[int, str] = field(default_factory=dict)


def _comm(pid: int, tid: int) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            return f.read().rstrip("\n")
    except OSError:
        return "<...>"


class Consumer:
    """Copies records from shared rings to a :class:`DataWriter`."""

    def __init__(self, writer: DataWriter, interval: float = 0.002) -> None:
        self.writer = writer
        self.interval = interval
        self.processes: list[ProcessRings] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backlog = False

    def add(self, pid: int, rings: SharedRings, dtype: np.dtype) -> None:
        """Start consuming a process's rings."""
        with self._lock:
            self.processes.append(ProcessRings(pid, rings, dtype))

    def start(self) -> None:
        """Start the background thread."""
        self._thread = threading.Thread(target=self._run, name="ktracecli-consumer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread and drain everything left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.drain()

    def _run(self) -> None:
        busy = False
        while not self._stop.wait(0 if busy else self.interval):
            # a ring that had 1/64 of its capacity to give is drained again at once, not after a nap
            busy = self.drain() > 0 and self._backlog

    def drain(self) -> int:
        """Drain every live slot of every process once; returns records copied."""
        copied = 0
        self._backlog = False
        with self._lock:
            for proc in self.processes:
                slots = proc.rings.slots
                for i in range(proc.rings.layout.nslots):
                    if slots[i].state:
                        copied += self._drain_slot(proc, i)
        return copied

    def release(self, pid: int, tid: int) -> None:
        """A thread is exiting: drain its slot and free it for a new thread."""
        with self._lock:
            for proc in self.processes:
                if proc.pid != pid:
                    continue
                slots = proc.rings.slots
                for i in range(proc.rings.layout.nslots):
                    if slots[i].state and slots[i].tid == tid:
                        proc.comms.setdefault(tid, _comm(pid, tid))
                        self._drain_slot(proc, i)
                        slots[i].tid = 0
                        slots[i].state = 0
                        slots[i].key = 0
                        proc.state.pop(i, None)

    def _drain_slot(self, proc: ProcessRings, i: int) -> int:
        slot = proc.rings.slots[i]
        tid = slot.tid
        if tid == 0:
            return 0  # claimed, thread id not written yet
        state = proc.state.setdefault(i, _SlotState())
        lost = slot.lost  # read before head: every drop counted here sits at or before head
        drop_pos = slot.drop_pos
        head = slot.head
        tail = slot.tail
        new_lost = lost - state.lost_seen
        if head == tail and not new_lost:
            return 0
        ring = proc.rings.ring(i, proc.dtype)
        cap = proc.rings.layout.capacity
        start = tail & (cap - 1)
        count = head - tail
        first = min(count, cap - start)
        # commit words first, then the records they vouch for (x86 keeps loads in order)
        complete = commit_word(proc.dtype).complete(ring[start:start + first], ring[:count - first], tail,
                                                    proc.rings.layout.capacity_bits)
        if complete * 64 >= cap:
            self._backlog = True
        take1 = min(complete, first)
        comm = proc.comms.get(tid)
        if comm is None:
            comm = proc.comms[tid] = _comm(proc.pid, tid)
        lost_at = min(max(drop_pos - tail, 0), complete) if new_lost else 0
        # written straight from the shared ring; the slots are only given back afterwards
        self.writer.append(proc.pid, tid, comm, ring[start:start + take1], lost_at, new_lost)
        if complete > take1:
            self.writer.append(proc.pid, tid, comm, ring[:complete - take1])
        slot.tail = tail + complete
        state.lost_seen = lost
        return complete

    def forget(self, pid: int) -> None:
        """Stop consuming a process's rings (after a final drain)."""
        with self._lock:
            self.processes = [p for p in self.processes if p.pid != pid]
