"""The shared file holding one process's slot table and rings.

Created 0600 under /dev/shm with a unique name, mapped by ktracecli and then by
the tracee (through an injected open + mmap), and unlinked as soon as both
sides have it mapped, so nothing is left behind whatever dies.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import secrets

import numpy as np

from ktracecli.process.remote import RemoteCaller
from ktracecli.runtime.layout import (
    CTRL_DL_ACK,
    CTRL_DL_REQUEST,
    CTRL_HEARTBEAT,
    CTRL_LOST_NO_SLOT,
    CTRL_MAGIC,
    CTRL_NSLOTS,
    MAGIC,
    RuntimeLayout,
    Slot,
)

SHM_DIR = "/dev/shm"
SYS_FUTEX = 202
FUTEX_WAKE = 1
_libc = ctypes.CDLL(None, use_errno=True)


def futex_wake(addr: int) -> None:
    """Wake every thread of any process waiting on the shared futex word at ``addr`` (our mapping)."""
    _libc.syscall(ctypes.c_long(SYS_FUTEX), ctypes.c_void_p(addr), ctypes.c_long(FUTEX_WAKE),
                  ctypes.c_long(0x7FFFFFFF), None, None, ctypes.c_long(0))


class SharedRings:
    """ktracecli's side of one process's shared slot table and rings."""

    def __init__(self, layout: RuntimeLayout, pid: int) -> None:
        self.layout = layout
        self.path = os.path.join(SHM_DIR, f"ktracecli.{os.getpid()}.{pid}.{secrets.token_hex(6)}")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, layout.size)
            self.mm = mmap.mmap(fd, layout.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.unlink(self.path)
            raise
        finally:
            os.close(fd)
        self.slots = (Slot * layout.nslots).from_buffer(self.mm, layout.slot_table)
        ctypes.c_uint64.from_buffer(self.mm, CTRL_MAGIC).value = MAGIC
        ctypes.c_uint64.from_buffer(self.mm, CTRL_NSLOTS).value = layout.nslots
        self._lost_no_slot = ctypes.c_uint64.from_buffer(self.mm, CTRL_LOST_NO_SLOT)
        self._heartbeat = ctypes.c_uint64.from_buffer(self.mm, CTRL_HEARTBEAT)
        self._dl_request = ctypes.c_uint32.from_buffer(self.mm, CTRL_DL_REQUEST)
        self._dl_ack = ctypes.c_uint32.from_buffer(self.mm, CTRL_DL_ACK)
        self.set_graph_limits(0, 0)

    def map_into(self, caller: RemoteCaller, scratch: int, fixed: int = 0) -> int:
        """Map the file into the tracee (its name is written at ``scratch``); returns the address."""
        caller.tracee.write(scratch, self.path.encode() + b"\0")
        base = caller.map_file(scratch, self.layout.size, fixed)
        self.layout = self.layout.at(base)
        for i in range(self.layout.nslots):
            slot = self.slots[i]
            slot.ring = base + self.layout.ring_offset(i)
            slot.capacity = self.layout.capacity
            slot.mask = self.layout.capacity - 1
        return base

    def unlink(self) -> None:
        """Remove the file's name; the mappings stay valid."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def ring(self, slot: int, dtype: np.dtype) -> np.ndarray:
        """Slot ``slot``'s ring as a structured array over the shared memory."""
        return np.frombuffer(self.mm, dtype=dtype, count=self.layout.capacity, offset=self.layout.ring_offset(slot))

    def release(self) -> None:
        """Free the rings' memory once ktracecli has detached and read them for the last time.

        The process keeps the mapping (a thread may still finish a record it began: it
        lands in a fresh zero page), but the pages it filled go back to the system
        instead of staying with it until it exits.
        """
        try:
            self.mm.madvise(mmap.MADV_REMOVE, self.layout.rings, self.layout.size - self.layout.rings)
        except (OSError, ValueError, AttributeError):
            pass

    def beat(self, tsc: int) -> None:
        """Say ktracecli is alive (the loader hook waits for ktracecli only while this is recent)."""
        self._heartbeat.value = tsc

    @property
    def dl_request(self) -> int:
        """How many map changes the loader hook has announced."""
        return int(self._dl_request.value)

    def dl_acknowledge(self, request: int) -> None:
        """Say every map change up to ``request`` is handled, and wake the threads waiting for it."""
        self._dl_ack.value = request & 0xFFFFFFFF
        futex_wake(ctypes.addressof(self._dl_ack))

    @property
    def lost_no_slot(self) -> int:
        """Events dropped because every slot was taken."""
        return int(self._lost_no_slot.value)

    def set_graph_limits(self, max_graph_depth: int, tracing_thresh_ticks: int) -> None:
        """Write the function_graph knobs (0 = unlimited / off) to every slot."""
        self.graph_limits = (max_graph_depth, tracing_thresh_ticks)
        depth_max = (max_graph_depth - 1) & (2**64 - 1)
        for slot in self.slots:
            slot.depth_max = depth_max
            slot.thresh = tracing_thresh_ticks

    def find_slot(self, key: int) -> int | None:
        """Index of the claimed slot keyed ``key`` (a thread's fs base), or None."""
        for i in range(self.layout.nslots):
            if self.slots[i].key == key and self.slots[i].state:
                return i
        return None

    def inherit(self, parent: "SharedRings", index: int | None, key: int, tid: int) -> None:
        """Prepare a forked child's fresh file: the parent's knobs, and the forking thread's slot.

        The child's only thread has the forking thread's fs base (``key``).  It
        gets the slot with the same ``index`` the forking thread had, already
        claimed for it (thread id ``tid``), so that per-slot state a tracer keeps
        in private memory, which fork copied (function_graph's shadow stack), is
        found at the same place.  ``index`` None: the forking thread had no slot.
        """
        self.set_graph_limits(*parent.graph_limits)
        if index is not None:
            slot = self.slots[index]
            slot.key = key
            slot.tid = tid
            slot.state = 1
