"""Layout of the shared memory between the tracee's handler and ktracecli's consumer.

One file per traced process, mapped shared by both sides::

    +0                 control page   magic, sizes, events lost for want of a slot,
                                      ktracecli's heartbeat and the loader hook's words
    +4096              slot table     NSLOTS x 128 bytes, one slot per live thread
    +RINGS             rings          NSLOTS x ring_bytes, ring i belongs to slot i

A slot (two cache lines: the producer's fields, then the consumer's)::

    +0   key       u64  the owning thread's fs base (0: free); claimed with lock cmpxchg
    +8   tid       u32  written once by the owning thread (gettid at claim time)
    +12  state     u32  1 once claimed
    +16  ring      u64  tracee address of the slot's ring
    +24  mask      u64  capacity - 1 (capacity in records, a power of two)
    +32  head      u64  records reserved so far (producer)
    +40  lost      u64  records dropped because the ring was full (producer)
    +48  drop_pos  u64  value of head at the last drop (producer)
    +56  capacity  u64
    +64  tail      u64  records consumed so far (consumer)
    +72  depth_max u64  function_graph: the deepest depth whose return is hooked
                        (max_graph_depth - 1, modulo 2**64: 0 = unlimited)
    +80  thresh    u64  function_graph: tracing_thresh in TSC ticks (0 = off)

The kernel's two function_graph knobs, ``max_graph_depth`` and ``tracing_thresh``
(converted from microseconds to TSC ticks), are kept in every slot (ktracecli
writes them all) so that the tracee's code reads them next to the slot's other
fields.

A record is complete when its commit word, written last by the producer, holds
the value its reservation index calls for.  By default the commit word is a
record's last u32 and must equal the low 32 bits of index + 1; a tracer with
smaller records may keep a few lap bits instead (see :class:`CommitWord`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

MAGIC = 0x31304543_4152544B  # "KTRACE01"
CONTROL_SIZE = 4096
SLOT_SIZE = 128
SLOT_SHIFT = 7
DEFAULT_SLOT_BITS = 8  # 256 threads at once
PAGE = 4096

CTRL_MAGIC = 0
CTRL_NSLOTS = 8
CTRL_LOST_NO_SLOT = 16
CTRL_CONSUMER_ALIVE = 24
#: u64: ktracecli's last sign of life (a TSC reading, rewritten every few ms by the consumer)
CTRL_HEARTBEAT = 32
#: u32: map changes announced by the loader hook (it adds 1 per call); u32: those ktracecli handled
CTRL_DL_REQUEST = 40
CTRL_DL_ACK = 44
#: offsets in a slot of the function_graph knobs' copies (see the slot layout above)
SLOT_DEPTH_MAX = 72
SLOT_THRESH = 80


class Slot(ctypes.Structure):
    """One thread's slot, as laid out in shared memory."""

    _fields_ = [
        ("key", ctypes.c_uint64),
        ("tid", ctypes.c_uint32),
        ("state", ctypes.c_uint32),
        ("ring", ctypes.c_uint64),
        ("mask", ctypes.c_uint64),
        ("head", ctypes.c_uint64),
        ("lost", ctypes.c_uint64),
        ("drop_pos", ctypes.c_uint64),
        ("capacity", ctypes.c_uint64),
        ("tail", ctypes.c_uint64),
        ("depth_max", ctypes.c_uint64),
        ("thresh", ctypes.c_uint64),
        ("_pad", ctypes.c_uint8 * (SLOT_SIZE - 88)),
    ]


assert ctypes.sizeof(Slot) == SLOT_SIZE


@dataclass(frozen=True)
class RuntimeLayout:
    """Where everything is, for one process: sizes and the tracee address of the shared file."""

    base: int  #: tracee address of the shared file (0 until mapped)
    slot_bits: int
    record_size: int
    capacity: int  #: records per ring, a power of two
    runtime: int = 0  #: tracee address of the tracer's per-process runtime code (0: none)
    private: int = 0  #: tracee address of the tracer's per-process private memory (0: none)
    #: the threads' first TLS word holds their thread pointer (glibc's TCB): a load finds it
    tcb_self: bool = False
    #: offset from the thread pointer of the cpu_id glibc's rseq area keeps (0: no rseq area)
    rseq_cpu: int = 0

    @classmethod
    def for_buffer(cls, buffer_size_kb: int, record_size: int, slot_bits: int = DEFAULT_SLOT_BITS) -> "RuntimeLayout":
        """Rings of about ``buffer_size_kb`` KiB (rounded down to a power-of-two record count)."""
        records = max(1024, buffer_size_kb * 1024 // record_size)
        capacity = 1 << (records.bit_length() - 1)
        return cls(0, slot_bits, record_size, capacity)

    def at(self, base: int) -> "RuntimeLayout":
        """The same layout mapped at ``base``."""
        return dataclasses.replace(self, base=base)

    @property
    def capacity_bits(self) -> int:
        """log2 of the ring capacity: the reservation index shifted right by it is the lap."""
        return self.capacity.bit_length() - 1

    def slot_index(self, slot_addr: int) -> int:
        """Index of the slot at tracee address ``slot_addr``."""
        return (slot_addr - self.base - self.slot_table) >> SLOT_SHIFT

    @property
    def nslots(self) -> int:
        return 1 << self.slot_bits

    @property
    def slot_table(self) -> int:
        """Offset of the slot table in the file."""
        return CONTROL_SIZE

    @property
    def ring_bytes(self) -> int:
        return (self.capacity * self.record_size + PAGE - 1) & ~(PAGE - 1)

    @property
    def rings(self) -> int:
        """Offset of ring 0 in the file."""
        return (self.slot_table + self.nslots * SLOT_SIZE + PAGE - 1) & ~(PAGE - 1)

    @property
    def size(self) -> int:
        """Size of the whole shared file."""
        return self.rings + self.nslots * self.ring_bytes

    def ring_offset(self, slot: int) -> int:
        """Offset of slot ``slot``'s ring in the file."""
        return self.rings + slot * self.ring_bytes


@dataclass(frozen=True)
class CommitWord:
    """Where a record keeps its commit word and what value marks it complete.

    The record reserved with index ``i`` is complete when
    ``(record[field] >> shift) & mask == ((i >> lap_shift) + 1) & mask``.  With
    ``lap_shift`` 0 this is the low bits of ``i + 1``; with ``lap_shift`` =
    log2(capacity) (``per_lap``) it is the lap number + 1, which a few bits
    suffice for: the producer never runs more than one lap ahead of the
    consumer, so a stale record is always from an earlier lap.
    """

    field: str = "commit"
    shift: int = 0
    mask: int = 0xFFFFFFFF
    per_lap: bool = False

    def values(self, records: np.ndarray) -> np.ndarray:
        """The commit values ``records`` hold (an unsigned integer field)."""
        words = records[self.field]
        if self.shift:
            words = words >> np.uint32(self.shift)
        return words & np.uint32(self.mask) if self.mask != 0xFFFFFFFF else words.copy()

    def _lap_mismatches(self, part: np.ndarray, expect: int) -> np.ndarray:
        """Positions in ``part`` whose lap commit is not ``expect`` (masked already).

        When the commit bits sit in one byte of the record (both tracers' do),
        only that byte of each record is read and compared: a sixteenth of
        the bytes the whole field would take through wide temporaries.
        """
        fields = part.dtype.fields
        bit = self.shift % 8
        if fields is None or (self.mask << bit) > 0xFF or not part.flags.c_contiguous or not len(part):
            return np.flatnonzero(self.values(part) != np.uint32(expect))
        offset = fields[self.field][1] + self.shift // 8
        column = part.view(np.uint8).reshape(len(part), part.dtype.itemsize)[:, offset]
        if bit == 0 and self.mask == 0xFF:
            return np.flatnonzero(column != np.uint8(expect))
        return np.flatnonzero((column & np.uint8(self.mask << bit)) != np.uint8(expect << bit))

    def complete(self, before: np.ndarray, after: np.ndarray, tail: int, capacity_bits: int) -> int:
        """How many records from index ``tail`` on are complete (the position of the first that is not).

        ``before`` holds the records from ``tail`` to the end of the ring,
        ``after`` those that follow from its start (the next lap).
        """
        first = len(before)
        if self.per_lap:
            lap = tail >> capacity_bits
            for offset, part, expect in ((0, before, lap + 1), (first, after, lap + 2)):
                bad = self._lap_mismatches(part, expect & self.mask)
                if len(bad):
                    return offset + int(bad[0])
            return first + len(after)
        commits = np.concatenate((self.values(before), self.values(after)))
        # record tail+k is complete when its commit word is (tail + 1 + k) mod 2**32
        commits -= np.arange(len(commits), dtype=np.uint32)
        commits &= np.uint32(self.mask)
        bad = np.flatnonzero(commits != np.uint32((tail + 1) & self.mask))
        return int(bad[0]) if len(bad) else len(commits)


def commit_word(dtype: np.dtype) -> CommitWord:
    """The commit rule of a record dtype: ``dtype.metadata["commit"]``, else the last-u32 default."""
    rule = dtype.metadata.get("commit") if dtype.metadata else None
    return rule if isinstance(rule, CommitWord) else CommitWord()


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The feature flags of this machine's CPU (the tracee runs here too)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def timestamp_asm(cpu_known: bool = False) -> str:
    """Assembly leaving the TSC in edx:eax and TSC_AUX (the CPU number in its low 12 bits) in ecx.

    ``rdtsc`` + ``rdpid`` give the same values as ``rdtscp`` for half its cost
    (9.6 ns against 18 ns here: rdtscp waits for earlier instructions); rdtscp
    is the fallback on CPUs without rdpid.  ``cpu_known``: the slot lookup gave
    the CPU number already (see :func:`slot_lookup_asm`), so only ``rdtsc``
    (leaving ecx alone).
    """
    if cpu_known:
        return "rdtsc"
    if "rdpid" in cpu_flags():
        return "rdtsc\n    " + rdpid_asm("rcx")
    return "rdtscp"


def stamp_asm(dst: str, cpu: str | None = None, cpu_known: bool = False) -> str:
    """``dst`` = the full TSC, and the 32-bit ``cpu`` = TSC_AUX unless the slot lookup gave it.

    Clobbers rax, rdx and (unless ``cpu_known``) rcx.
    """
    lines = [timestamp_asm(cpu_known), "shl rdx, 32", "or rax, rdx"]
    if dst != "rax":
        lines.append(f"mov {dst}, rax")
    if cpu is not None and not cpu_known and cpu != "ecx":
        lines.append(f"mov {cpu}, ecx")
    return "\n    ".join(lines)


def lap_asm(layout: RuntimeLayout, dst: str, index: str) -> str:
    """``dst`` = the lap of reservation ``index``, plus 1: what its record's commit bits hold.

    (index >> log2(capacity)) + 1 == (index + capacity) >> log2(capacity).
    """
    add = (f"lea {dst}, [{index}+{layout.capacity:#x}]" if layout.capacity < 2**31
           else f"movabs {dst}, {layout.capacity:#x}\n    add {dst}, {index}")
    return f"""{add}
    shr {dst}, {layout.capacity_bits}"""


_REGS64 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


def rdpid_asm(reg: str) -> str:
    """``rdpid reg`` (64-bit ``reg``: TSC_AUX, the CPU number in its low 12 bits).

    Keystone does not know rdpid, so it is spelled in bytes: F3 [REX.B] 0F C7 /7.
    """
    n = _REGS64.index(reg)
    rex = ["0x41"] if n >= 8 else []
    return ".byte " + ", ".join(["0xf3", *rex, "0x0f", "0xc7", f"{0xF8 | (n & 7):#x}"])


def cpu_asm(reg: str) -> str:
    """The CPU number (TSC_AUX) in the 64-bit ``reg``: rdpid, or rdtscp (clobbering rax, rcx and rdx)."""
    if "rdpid" in cpu_flags():
        return rdpid_asm(reg)
    return "rdtscp" if reg == "rcx" else f"rdtscp\n    mov {reg}, rcx"


def reserve_asm(p: str, index: str, dropped: str | None = None) -> str:
    """Reserve the next record of the ring of the slot at rsi: its index in ``index``.

    A full ring counts the record as lost instead and leaves -1 in ``index``
    (or jumps to ``dropped`` when given).  The reservation is one non-locked
    cmpxchg on head.  A head read before a signal handler's records were made
    and consumed is behind tail: it is read again (it is no full ring).
    ``index`` must not be rax.  Clobbers rax and the flags.
    """
    on_drop = f"jmp {dropped}" if dropped else f"mov {index}, -1"
    return f"""
.L{p}reserve:
    mov rax, qword ptr [rsi+32]
    mov {index}, rax
    sub {index}, qword ptr [rsi+64]
    js .L{p}reserve
    cmp {index}, qword ptr [rsi+56]
    jae .L{p}drop
    lea {index}, [rax+1]
    cmpxchg qword ptr [rsi+32], {index}
    jne .L{p}reserve
    mov {index}, rax
    jmp .L{p}reserved
.L{p}drop:
    add qword ptr [rsi+40], 1
    mov qword ptr [rsi+48], rax
    {on_drop}
.L{p}reserved:"""


def slot_lookup_asm(layout: RuntimeLayout, found: str, full: str, claimed: str | None = None,
                    prefix: str = "", cpu: str | None = None) -> str:
    """Assembly that leaves this thread's slot in rsi, claiming one on first use.

    Clobbers rax, rcx, rdx, rdi and flags; preserves r11.  Jumps to ``found`` with
    rsi = slot (to ``claimed``, when given, right after this thread claimed it),
    or to ``full`` when every slot is taken (the event is counted as lost in the
    control page).  ``prefix`` keeps the local labels of several copies apart.

    A slot is keyed by its thread's fs base.  The fast path is a hash of the key
    and one compare; the claim (once per thread) uses one lock cmpxchg and one
    gettid.  The key comes from ``rdfsbase``, or, when ``layout.tcb_self`` (glibc
    threads: the thread control block's first word points to itself, as the
    x86-64 TLS ABI has it), from a load of that word, which costs a fraction of
    rdfsbase.  A slot is only claimed under a key checked against rdfsbase, so
    a thread whose word is not its fs base (code that moved its fs base) misses
    on the fast path and is looked up by rdfsbase on the slow path (unless its
    word were another live thread's fs base, which no thread library does).
    A thread without a thread pointer yet (a static program before its TLS is
    set up) is keyed as fs base 1, since 0 marks a free slot.

    ``cpu`` (a 64-bit register, only with ``layout.rseq_cpu``): also leave the
    CPU number there, read from the thread's rseq area on the fast path (as
    glibc's sched_getcpu does), from rdpid elsewhere or while the thread has
    no rseq area registered.
    """
    table = layout.base + layout.slot_table
    end = table + layout.nslots * SLOT_SIZE
    L = f".L{prefix}"
    claimed = claimed or found
    assert cpu is None or (layout.tcb_self and layout.rseq_cpu)
    cpu32 = cpu and (f"{cpu}d" if cpu[1].isdigit() else "e" + cpu[1:])
    if layout.tcb_self:
        key = f"""
    mov rax, qword ptr fs:[0]
    test rax, rax
    jz {L}by_base"""
        # the slow path checks the word against the fs base before trusting it as a key
        check = f"""
    rdfsbase rdx
    cmp rdx, rax
    jne {L}by_base"""
        by_base = f"""
{L}by_base:
    rdfsbase rax
    test rax, rax
    jnz {L}base_key
    mov eax, 1
{L}base_key:
    {_hash_asm(layout)}
    jmp {L}probe_from"""
    else:
        key = f"""
    rdfsbase rax
    test rax, rax
    jnz {L}have_fs
    mov eax, 1
{L}have_fs:"""
        check = by_base = ""
    if cpu:
        hit = f"""
    jne {L}miss
    mov {cpu32}, dword ptr [rax+{layout.rseq_cpu:#x}]
    test {cpu32}, {cpu32}
    jns {found}
{L}found_slow:
    {cpu_asm(cpu)}
    jmp {found}"""
        slow_found, slow_claimed = f"{L}found_slow", f"{L}claimed_slow"
        claimed_slow = f"""
{L}claimed_slow:
    {cpu_asm(cpu)}
    jmp {claimed}"""
    else:
        hit = f"""
    je {found}
    jmp {L}miss"""
        slow_found, slow_claimed, claimed_slow = found, claimed, ""
    return f"""
    {key}
    {_hash_asm(layout)}
    cmp qword ptr [rsi], rax
    {hit}
{L}miss:
    {check}
{L}probe_from:
    mov edx, {layout.nslots}
{L}probe:
    mov rdi, qword ptr [rsi]
    cmp rdi, rax
    je {slow_found}
    test rdi, rdi
    jz {L}claim
{L}next:
    add rsi, {SLOT_SIZE}
    movabs rdi, {end:#x}
    cmp rsi, rdi
    jb {L}nowrap
    movabs rsi, {table:#x}
{L}nowrap:
    dec edx
    jnz {L}probe
    movabs rsi, {layout.base + CTRL_LOST_NO_SLOT:#x}
    add qword ptr [rsi], 1
    jmp {full}
{L}claim:
    mov rcx, rax
    xor eax, eax
    lock cmpxchg qword ptr [rsi], rcx
    mov rax, rcx
    jne {L}next
    push r11
    mov eax, 186
    syscall
    pop r11
    mov dword ptr [rsi+8], eax
    mov dword ptr [rsi+12], 1
    jmp {slow_claimed}
    {claimed_slow}
    {by_base}
"""


def _hash_asm(layout: RuntimeLayout) -> str:
    """rsi = the slot the key in rax hashes to.  Clobbers rdi."""
    table = layout.base + layout.slot_table
    return f"""
    mov rsi, rax
    movabs rdi, 0x9E3779B97F4A7C15
    imul rsi, rdi
    shr rsi, {64 - layout.slot_bits}
    shl rsi, {SLOT_SHIFT}
    movabs rdi, {table:#x}
    add rsi, rdi"""
