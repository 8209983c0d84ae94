"""What ktracecli needs to know of an ELF file before analysing it, read with ``struct`` alone.

Checking that a file is an x86_64 program or library, its build-id (the analysis
cache's key) and its dynamic entries (DT_NEEDED, DT_SONAME, DT_RUNPATH, to find
libraries) only need the file header, the program headers and two small
segments.  Reading them without pyelftools or numpy keeps commands that hit the
analysis cache (``ktracecli available`` on libc) at interpreter start-up cost.
Offsets below are file offsets; vaddrs are link-time addresses.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO

from ktracecli.errors import ProgramError

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")   # Elf64_Ehdr
_PHDR = struct.Struct("<IIQQQQQQ")           # Elf64_Phdr
_DYN = struct.Struct("<qQ")                  # Elf64_Dyn
ET_EXEC, ET_DYN = 2, 3
EM_X86_64 = 62
PT_LOAD, PT_DYNAMIC, PT_NOTE = 1, 2, 4
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 14, 15, 29
NT_GNU_BUILD_ID = 3
PAGE = 4096
_MACHINES = {3: "386", 40: "ARM", 183: "AARCH64", 243: "RISCV", 8: "MIPS", 21: "PPC64", 22: "S390"}
_TYPES = {0: "ET_NONE", 1: "ET_REL", 4: "ET_CORE"}


@dataclass(frozen=True)
class ElfIdent:
    """The identity of an x86_64 ELF program or shared library."""

    path: str
    is_pie: bool
    build_id: str | None
    needed: tuple[str, ...] = ()
    soname: str | None = None
    runpath: tuple[str, ...] = field(default=())
    #: the lowest PT_LOAD vaddr rounded down to a page (load bias = start of the offset-0 mapping - this)
    first_load_vaddr: int = 0

    @property
    def name(self) -> str:
        """The file's basename."""
        return os.path.basename(self.path)

    @property
    def module_name(self) -> str:
        """The name a library is known by (its DT_SONAME, as ``ldd`` shows it), else the file's basename."""
        return self.soname or self.name


def read_ident(path: str) -> ElfIdent:
    """Read ``path``'s identity; :class:`ProgramError` (one line, as ElfImage.open says it) if it is not
    a readable x86_64 ELF program or shared library."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ProgramError(f"no such program: {path}")
    if os.path.isdir(path):
        raise ProgramError(f"{path} is a directory, not a program")
    try:
        with open(path, "rb") as f:
            return _parse(path, f)
    except OSError as exc:
        raise ProgramError(f"cannot read {path}: {exc.strerror}") from None


def _parse(path: str, f: BinaryIO) -> ElfIdent:
    head = f.read(_EHDR.size)
    if head[:4] != b"\x7fELF":
        raise ProgramError(f"{path} is not an ELF file")
    if head[4:5] == b"\x01":
        raise ProgramError(f"{path} is a 32-bit ELF; ktracecli traces x86_64 programs")
    if len(head) < _EHDR.size or head[5:6] != b"\x01":
        raise ProgramError(f"{path} is a corrupt ELF file: truncated header or not little-endian")
    (_ident, e_type, e_machine, _version, _entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize, e_phnum,
     *_rest) = _EHDR.unpack(head)
    if e_machine != EM_X86_64:
        raise ProgramError(f"{path} is an ELF for {_MACHINES.get(e_machine, e_machine)}; "
                           "ktracecli traces x86_64 programs")
    if e_type not in (ET_EXEC, ET_DYN):
        raise ProgramError(f"{path} is an ELF {_TYPES.get(e_type, e_type)}, not a program or shared library")
    if e_phentsize != _PHDR.size and e_phnum:
        raise ProgramError(f"{path} is a corrupt ELF file: program headers of {e_phentsize} bytes")
    f.seek(e_phoff)
    table = f.read(e_phnum * _PHDR.size)
    if len(table) != e_phnum * _PHDR.size:
        raise ProgramError(f"{path} is a corrupt ELF file: truncated program headers")
    phdrs = [_PHDR.unpack_from(table, i * _PHDR.size) for i in range(e_phnum)]
    build_id = None
    dynamic: bytes = b""
    for p_type, _flags, offset, _vaddr, _paddr, filesz, _memsz, _align in phdrs:
        if p_type == PT_NOTE and build_id is None:
            f.seek(offset)
            build_id = _build_id(f.read(filesz))
        elif p_type == PT_DYNAMIC:
            f.seek(offset)
            dynamic = f.read(filesz)
    needed, soname, runpath = _dynamic(path, f, phdrs, dynamic)
    loads = [vaddr for p_type, _f, _o, vaddr, *_rest in phdrs if p_type == PT_LOAD]
    first_load = (min(loads) & ~(PAGE - 1)) if loads else 0
    return ElfIdent(path, e_type == ET_DYN, build_id, needed, soname, runpath, first_load)


def _build_id(notes: bytes) -> str | None:
    """The NT_GNU_BUILD_ID descriptor among ``notes`` (a PT_NOTE segment), as hex."""
    at = 0
    while at + 12 <= len(notes):
        namesz, descsz, kind = struct.unpack_from("<III", notes, at)
        name_at = at + 12
        desc_at = name_at + ((namesz + 3) & ~3)
        if kind == NT_GNU_BUILD_ID and notes[name_at:name_at + namesz] == b"GNU\0":
            return notes[desc_at:desc_at + descsz].hex()
        at = desc_at + ((descsz + 3) & ~3)
    return None


def _dynamic(path: str, f: BinaryIO, phdrs: list[tuple[int, ...]], dynamic: bytes
             ) -> tuple[tuple[str, ...], str | None, tuple[str, ...]]:
    """DT_NEEDED, DT_SONAME and DT_RUNPATH (else DT_RPATH, ``$ORIGIN`` expanded) from PT_DYNAMIC."""
    tags: list[tuple[int, int]] = []
    for at in range(0, len(dynamic) - _DYN.size + 1, _DYN.size):
        tag, value = _DYN.unpack_from(dynamic, at)
        if tag == DT_NULL:
            break
        tags.append((tag, value))
    values = dict(tags)
    if DT_STRTAB not in values:
        return (), None, ()
    strtab_vaddr, size = values[DT_STRTAB], values.get(DT_STRSZ, 0)
    strtab = b""
    for p_type, _flags, offset, vaddr, _paddr, filesz, _memsz, _align in phdrs:
        if p_type == PT_LOAD and vaddr <= strtab_vaddr < vaddr + filesz:
            f.seek(offset + strtab_vaddr - vaddr)
            strtab = f.read(size or (vaddr + filesz - strtab_vaddr))
            break

    def string(at: int) -> str:
        end = strtab.find(b"\0", at)
        return strtab[at:end if end >= 0 else len(strtab)].decode(errors="replace")

    needed = tuple(string(v) for t, v in tags if t == DT_NEEDED)
    soname = string(values[DT_SONAME]) if DT_SONAME in values else None
    raw = string(values[DT_RUNPATH]) if DT_RUNPATH in values else (
        string(values[DT_RPATH]) if DT_RPATH in values else "")
    origin = os.path.dirname(os.path.abspath(path))
    runpath = tuple(p.replace("${ORIGIN}", origin).replace("$ORIGIN", origin) for p in raw.split(":") if p)
    return needed, soname, runpath
