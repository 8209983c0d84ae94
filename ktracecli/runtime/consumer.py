"""Draining the rings of traced processes into the data directory, in bulk.

A background thread copies every live slot's new records a few hundred times a
second (numpy slices of the shared memory, never a Python loop per record).
The ptrace thread calls :meth:`Consumer.release` when a thread exits, so its
slot is drained once more and freed before its fs base can be reused.

The same thread keeps each process's heartbeat word fresh (the loader hook
waits for ktracecli only while it is), pokes the ptrace thread when a loader
hook announces a map change, and hands each round's records to a live sink
(``--live``) when there is one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ktracecli.datadir import DataWriter
from ktracecli.runtime.layout import commit_word
from ktracecli.interface import LiveBatch
from ktracecli.runtime import clock
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
    #: the address space (process image) the rings belong to, as the data directory numbers them
    space: int = 0
    state: dict[int, _SlotState] = field(default_factory=dict)
    comms: dict[int, str] = field(default_factory=dict)
    #: the loader hook's request count last reported to the ptrace thread
    dl_seen: int = 0
    #: the name of threads whose comm was not read in time (the thread or its image is gone)
    comm_hint: str | None = None
    #: the image is gone (exec): /proc shows another program's names now
    retired: bool = False


Sink = Callable[[list[LiveBatch]], None]


def _comm(pid: int, tid: int) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            return f.read().rstrip("\n")
    except OSError:
        return "<...>"


#: the consumer thread's nice value where the system allows it: on a machine with as many
#: busy traced threads as cores it otherwise waits its turn behind them (several ms) while
#: their rings overflow; at -10 it gets the CPU it needs when it wakes (tens of percent of
#: one core at 50 million events a second, then it sleeps)
CONSUMER_NICE = -10


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
        #: called with each round's records (``--live``); runs on the consumer thread
        self.sink: Sink | None = None
        #: called when a loader hook announces a map change (wakes the ptrace thread)
        self.on_map_change: Callable[[], None] | None = None
        self._batches: list[LiveBatch] = []
        self._sink_lock = threading.Lock()
        self._lost_retired = 0

    def add(self, pid: int, rings: SharedRings, dtype: np.dtype, space: int = 0, comm: str | None = None) -> None:
        """Start consuming a process's rings (``comm``: its name, for threads gone before they are seen)."""
        rings.beat(clock.rdtsc())
        with self._lock:
            self.processes.append(ProcessRings(pid, rings, dtype, space, comm_hint=comm))

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
        try:  # ahead of the traced threads when it may be (root, CAP_SYS_NICE): they fill rings it must empty
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CONSUMER_NICE)
        except OSError:
            pass
        busy = False
        while not self._stop.wait(0 if busy else self.interval):
            self._beat()
            # a ring that had 1/64 of its capacity to give is drained again at once, not after a nap
            busy = self.drain() > 0 and self._backlog

    def _beat(self) -> None:
        """Keep the heartbeats fresh; report new loader-hook requests."""
        tsc = clock.rdtsc()
        changed = False
        with self._lock:
            for proc in self.processes:
                proc.rings.beat(tsc)
                request = proc.rings.dl_request
                if request != proc.dl_seen:
                    proc.dl_seen = request
                    changed = True
        if changed and self.on_map_change is not None:
            self.on_map_change()

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
            self._hand_over()
        return copied

    def release(self, pid: int, tid: int) -> None:
        """A thread is exiting: drain its slot and free it for a new thread."""
        with self._lock:
            for proc in self.processes[::-1]:
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
                break  # the newest rings of the pid are its current image's
            self._hand_over()

    def _hand_over(self) -> None:
        """Give the batches of this round to the sink, in drain order (called holding the lock)."""
        batches, self._batches = self._batches, []
        if not batches or self.sink is None:
            return
        self._sink_lock.acquire()  # taken before the drain lock is let go: rounds reach the sink in order
        self._lock.release()
        try:
            self.sink(batches)
        finally:
            self._sink_lock.release()
            self._lock.acquire()

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
        drained = clock.rdtsc()  # every record found complete was written before this
        if complete * 64 >= cap:
            self._backlog = True
        take1 = min(complete, first)
        comm = proc.comms.get(tid)
        if comm is None:
            comm = _comm(proc.pid, tid) if not proc.retired else "<...>"
            if comm == "<...>" and proc.comm_hint:
                comm = proc.comm_hint  # the thread is gone, or its image (exec): its process's name then
            proc.comms[tid] = comm
        lost_at = min(max(drop_pos - tail, 0), complete) if new_lost else 0
        # written straight from the shared ring; the slots are only given back afterwards
        self.writer.append(proc.pid, tid, comm, ring[start:start + take1], lost_at, new_lost, space=proc.space,
                           drained=drained)
        if complete > take1:
            self.writer.append(proc.pid, tid, comm, ring[:complete - take1], space=proc.space, drained=drained)
        if self.sink is not None and (complete or new_lost):
            records = np.concatenate((ring[start:start + take1], ring[:complete - take1]))
            self._batches.append(LiveBatch(proc.pid, tid, comm, proc.space, records, lost_at, new_lost, drained))
        slot.tail = tail + complete
        state.lost_seen = lost
        return complete

    def retire(self, pid: int, rings: SharedRings, comm_hint: str | None = None) -> None:
        """A process image is gone (exec, exit): drain its rings one last time and stop reading them.

        ``comm_hint`` names the threads whose name was never read (after an exec,
        /proc shows the new program's name).
        """
        with self._lock:
            for proc in self.processes:
                if proc.rings is rings:
                    proc.comm_hint = comm_hint or proc.comm_hint
                    proc.retired = True
                    slots = rings.slots
                    for i in range(rings.layout.nslots):
                        if slots[i].state:
                            self._drain_slot(proc, i)
            self._hand_over()
        self.forget(pid, rings)

    def forget(self, pid: int, rings: SharedRings | None = None) -> None:
        """Stop consuming a process's rings (``rings``, or all of ``pid``'s), after a final drain."""
        with self._lock:
            gone = [p for p in self.processes if p.pid == pid and (rings is None or p.rings is rings)]
            self._lost_retired += sum(p.rings.lost_no_slot for p in gone)
            self.processes = [p for p in self.processes if not any(p is g for g in gone)]

    @property
    def lost_no_slot(self) -> int:
        """Events dropped because every slot of a process was taken, all processes."""
        with self._lock:
            return self._lost_retired + sum(p.rings.lost_no_slot for p in self.processes)
