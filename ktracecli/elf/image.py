"""One ELF module as ktracecli needs to see it: symbols, code and pointers stored as data.

pyelftools stays inside this package: the rest of ktracecli asks :class:`ElfImage`
questions and gets typed answers.  Every address here is a module-relative
``vaddr`` (the link-time address); add the module's load bias to get an ``addr``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import BinaryIO, NamedTuple

import numpy as np
from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.hash import GNUHashSection
from elftools.elf.sections import NoteSection, SymbolTableSection
from elftools.elf.segments import InterpSegment, NoteSegment

from ktracecli.elf.ident import read_ident
from ktracecli.errors import ProgramError
from ktracecli.model import Binding, Symbol

PAGE_SIZE = 0x1000

_PF_X = 0x1
_SHF_ALLOC = 0x2
_SHF_EXECINSTR = 0x4
_R_X86_64_64 = 1
_R_X86_64_GLOB_DAT = 6
_R_X86_64_JUMP_SLOT = 7
_R_X86_64_RELATIVE = 8
_R_X86_64_IRELATIVE = 37
_BINDINGS = {"STB_GLOBAL": Binding.GLOBAL, "STB_WEAK": Binding.WEAK, "STB_LOCAL": Binding.LOCAL,
             "STB_GNU_UNIQUE": Binding.GLOBAL}
#: pyelftools names STT_GNU_IFUNC (10) STT_LOOS
_FUNC_TYPES = ("STT_FUNC", "STT_GNU_IFUNC", "STT_LOOS")
_RELA_DTYPE = np.dtype([("offset", "<u8"), ("info", "<u8"), ("addend", "<i8")])


@dataclass(frozen=True)
class LoadSegment:
    """One PT_LOAD program header (module-relative ``vaddr``, file ``offset``)."""

    vaddr: int
    memsz: int
    offset: int
    filesz: int
    flags: int

    @property
    def executable(self) -> bool:
        """True when the segment is mapped executable (PF_X)."""
        return bool(self.flags & _PF_X)


class ExecSection(NamedTuple):
    """Executable code of the module: a section name (or ``PT_LOAD#n``), its vaddr and its bytes."""

    name: str
    vaddr: int
    data: bytes

    @property
    def end(self) -> int:
        """The first vaddr past the section."""
        return self.vaddr + len(self.data)


class ElfImage:
    """A parsed x86_64 ELF file; open it with :meth:`ElfImage.open`."""

    def __init__(self, path: str, stream: BinaryIO, elf: ELFFile) -> None:
        self.path = path
        self._stream = stream
        self._elf = elf

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str) -> "ElfImage":
        """Parse ``path``; raise :class:`ProgramError` (one line) unless it is a readable x86_64 ELF."""
        path = os.fspath(path)
        read_ident(path)  # the one-line reasons: missing, not ELF, 32-bit, other machine, object file
        try:
            stream = open(path, "rb")
        except OSError as exc:
            raise ProgramError(f"cannot read {path}: {exc.strerror}") from None
        try:
            elf = ELFFile(stream)
        except ELFError as exc:
            stream.close()
            raise ProgramError(f"{path} is a corrupt ELF file: {exc}") from None
        return cls(path, stream, elf)

    def close(self) -> None:
        """Close the underlying file (cached results stay usable)."""
        self._stream.close()

    def __enter__(self) -> "ElfImage":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ElfImage({self.path!r})"

    # ------------------------------------------------------------------ headers

    @property
    def name(self) -> str:
        """The file's basename."""
        return os.path.basename(self.path)

    @property
    def is_pie(self) -> bool:
        """True for position-independent images (ET_DYN: PIE programs and shared libraries)."""
        return bool(self._elf["e_type"] == "ET_DYN")

    @property
    def entry(self) -> int:
        """The entry point vaddr (``e_entry``)."""
        return int(self._elf["e_entry"])

    @cached_property
    def interp(self) -> str | None:
        """The program interpreter (PT_INTERP), if any."""
        for seg in self._elf.iter_segments():
            if isinstance(seg, InterpSegment):
                return str(seg.get_interp_name())
        return None

    @property
    def is_static(self) -> bool:
        """True when the image has neither an interpreter nor DT_NEEDED entries."""
        return self.interp is None and not self.needed

    @cached_property
    def load_segments(self) -> list[LoadSegment]:
        """The PT_LOAD segments, in file order."""
        return [LoadSegment(int(s["p_vaddr"]), int(s["p_memsz"]), int(s["p_offset"]),
                            int(s["p_filesz"]), int(s["p_flags"]))
                for s in self._elf.iter_segments() if s["p_type"] == "PT_LOAD"]

    @property
    def first_load_vaddr(self) -> int:
        """Lowest PT_LOAD vaddr rounded down to a page: bias = (start of the offset-0 mapping) - this."""
        if not self.load_segments:
            return 0
        return min(s.vaddr for s in self.load_segments) & ~(PAGE_SIZE - 1)

    @cached_property
    def build_id(self) -> str | None:
        """Hex of the NT_GNU_BUILD_ID note, if present."""
        for section in self._elf.iter_sections():
            if isinstance(section, NoteSection):
                for note in section.iter_notes():
                    if note["n_type"] == "NT_GNU_BUILD_ID":
                        return str(note["n_desc"])
        for seg in self._elf.iter_segments():
            if isinstance(seg, NoteSegment):
                for note in seg.iter_notes():
                    if note["n_type"] == "NT_GNU_BUILD_ID":
                        return str(note["n_desc"])
        return None

    # ------------------------------------------------------------------ dynamic

    @cached_property
    def _dynamic_tags(self) -> list[tuple[str, object]]:
        for section in self._elf.iter_sections():
            if isinstance(section, DynamicSection):
                out: list[tuple[str, object]] = []
                for tag in section.iter_tags():
                    value = getattr(tag, tag.entry.d_tag[3:].lower(), None) \
                        if tag.entry.d_tag in ("DT_NEEDED", "DT_SONAME", "DT_RPATH", "DT_RUNPATH") \
                        else tag.entry.d_val
                    out.append((tag.entry.d_tag, value))
                return out
        return []

    @cached_property
    def needed(self) -> list[str]:
        """DT_NEEDED sonames, in order."""
        return [str(v) for tag, v in self._dynamic_tags if tag == "DT_NEEDED"]

    @cached_property
    def soname(self) -> str | None:
        """DT_SONAME, if any."""
        for tag, value in self._dynamic_tags:
            if tag == "DT_SONAME":
                return str(value)
        return None

    @cached_property
    def runpath(self) -> list[str]:
        """DT_RUNPATH (else DT_RPATH) directories, with ``$ORIGIN`` expanded."""
        tags = dict(self._dynamic_tags)
        raw = tags.get("DT_RUNPATH") or tags.get("DT_RPATH")
        if not raw:
            return []
        origin = os.path.dirname(os.path.abspath(self.path))
        dirs = []
        for part in str(raw).split(":"):
            if part:
                dirs.append(part.replace("${ORIGIN}", origin).replace("$ORIGIN", origin))
        return dirs

    # ------------------------------------------------------------------ symbols

    def functions(self) -> list[Symbol]:
        """Defined STT_FUNC / STT_GNU_IFUNC symbols of .symtab and .dynsym, de-duplicated on (name, vaddr)."""
        return list(self._functions)

    def find_functions(self, names: set[str]) -> list[Symbol]:
        """The defined functions called one of ``names``, without parsing every symbol when it can.

        A name absent from .dynstr and .strtab is not defined here; one that
        the dynamic symbol table exports is found through its GNU hash table;
        only a name defined as a local symbol (a static program) costs a full
        parse of the symbol tables.
        """
        strings = {}
        for table in (".dynstr", ".strtab"):
            section = self._elf.get_section_by_name(table)
            strings[table] = section.data() if section is not None else b""
        # a name may be the tail of a longer one ("malloc" inside "__libc_malloc"): match the end only
        present = {n for n in names if any(n.encode() + b"\0" in s for s in strings.values())}
        found: list[Symbol] = []
        gnu_hash = self._elf.get_section_by_name(".gnu.hash")
        if isinstance(gnu_hash, GNUHashSection):
            for name in sorted(present):
                sym = gnu_hash.get_symbol(name)
                kind = sym["st_info"]["type"] if sym is not None else None
                if sym is not None and kind in _FUNC_TYPES and sym["st_shndx"] not in ("SHN_UNDEF", "SHN_ABS"):
                    found.append(Symbol(name, int(sym["st_value"]), int(sym["st_size"]),
                                        _BINDINGS.get(sym["st_info"]["bind"], Binding.LOCAL), kind != "STT_FUNC"))
                    present.discard(name)
                elif name.encode() + b"\0" not in strings[".strtab"]:
                    present.discard(name)  # only imported: named in .dynstr, defined elsewhere
        if present:
            found += [sym for sym in self.functions() if sym.name in present]
        return found

    def exported_object(self, name: str) -> int | None:
        """The vaddr of the data object ``name`` that .dynsym exports (through its GNU hash), or None."""
        gnu_hash = self._elf.get_section_by_name(".gnu.hash")
        if not isinstance(gnu_hash, GNUHashSection):
            return None
        sym = gnu_hash.get_symbol(name)
        if sym is None or sym["st_info"]["type"] != "STT_OBJECT" or sym["st_shndx"] in ("SHN_UNDEF", "SHN_ABS"):
            return None
        return int(sym["st_value"])

    @cached_property
    def _functions(self) -> tuple[Symbol, ...]:
        seen: dict[tuple[str, int], Symbol] = {}
        for table_name in (".symtab", ".dynsym"):
            table = self._elf.get_section_by_name(table_name)
            if not isinstance(table, SymbolTableSection):
                continue
            for sym in table.iter_symbols():
                kind = sym["st_info"]["type"]
                if kind not in _FUNC_TYPES or sym["st_shndx"] in ("SHN_UNDEF", "SHN_ABS"):
                    continue
                name = sym.name.split("@", 1)[0]
                if not name:
                    continue
                key = (name, int(sym["st_value"]))
                if key in seen:
                    continue
                seen[key] = Symbol(name, key[1], int(sym["st_size"]),
                                   _BINDINGS.get(sym["st_info"]["bind"], Binding.LOCAL),
                                   kind != "STT_FUNC")
        return tuple(seen.values())

    # ------------------------------------------------------------------ code and data

    @cached_property
    def _exec_sections(self) -> tuple[ExecSection, ...]:
        out = []
        for section in self._elf.iter_sections():
            flags = int(section["sh_flags"])
            if flags & _SHF_EXECINSTR and flags & _SHF_ALLOC and section["sh_type"] != "SHT_NOBITS" \
                    and section["sh_size"]:
                out.append(ExecSection(section.name, int(section["sh_addr"]), section.data()))
        if not out:
            for n, seg in enumerate(self.load_segments):
                if seg.executable and seg.filesz:
                    out.append(ExecSection(f"PT_LOAD#{n}", seg.vaddr, self._read_file(seg.offset, seg.filesz)))
        return tuple(sorted(out, key=lambda s: s.vaddr))

    def exec_sections(self) -> list[ExecSection]:
        """Executable sections (or executable PT_LOAD segments when there are no section headers)."""
        return list(self._exec_sections)

    def exec_section_at(self, vaddr: int) -> ExecSection | None:
        """The executable section holding ``vaddr``, or None."""
        for section in self._exec_sections:
            if section.vaddr <= vaddr < section.end:
                return section
        return None

    def _read_file(self, offset: int, size: int) -> bytes:
        self._stream.seek(offset)
        return self._stream.read(size)

    def read(self, vaddr: int, size: int) -> bytes:
        """File-backed bytes at ``vaddr``; raise ValueError if any of them is not in the file."""
        for section in self._exec_sections:
            if section.vaddr <= vaddr and vaddr + size <= section.end:
                start = vaddr - section.vaddr
                return section.data[start:start + size]
        for seg in self.load_segments:
            if seg.vaddr <= vaddr and vaddr + size <= seg.vaddr + seg.filesz:
                return self._read_file(seg.offset + vaddr - seg.vaddr, size)
        raise ValueError(f"{self.name}: no file-backed bytes at {vaddr:#x}+{size}")

    def _data_sections(self) -> list[tuple[int, bytes]]:
        """(vaddr, bytes) of allocated, non-executable sections with file content."""
        out = []
        for section in self._elf.iter_sections():
            flags = int(section["sh_flags"])
            if flags & _SHF_ALLOC and not flags & _SHF_EXECINSTR and section["sh_type"] != "SHT_NOBITS" \
                    and section["sh_size"] and section["sh_addr"]:
                out.append((int(section["sh_addr"]), section.data()))
        return out

    def data_words(self, vaddr: int, count: int, size: int = 4) -> np.ndarray:
        """Up to ``count`` little-endian signed words of ``size`` bytes read at ``vaddr`` (fewer at a boundary)."""
        for seg in self.load_segments:
            if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                avail = (seg.vaddr + seg.filesz - vaddr) // size
                raw = self._read_file(seg.offset + vaddr - seg.vaddr, min(count, avail) * size)
                return np.frombuffer(raw, dtype=f"<i{size}")
        return np.zeros(0, dtype=f"<i{size}")

    # ------------------------------------------------------------------ pointers stored as data

    def pointer_values(self) -> frozenset[int]:
        """Code vaddrs stored as data (relocation addends, and for non-PIE every aligned data word)."""
        return self._pointer_values

    @cached_property
    def _pointer_values(self) -> frozenset[int]:
        values: list[np.ndarray] = []
        local_funcs = None
        for section in self._elf.iter_sections():
            if section["sh_type"] == "SHT_RELA" and section["sh_entsize"] == _RELA_DTYPE.itemsize:
                rela = np.frombuffer(section.data(), dtype=_RELA_DTYPE)
                kinds = rela["info"] & 0xFFFFFFFF
                mask = (kinds == _R_X86_64_RELATIVE) | (kinds == _R_X86_64_IRELATIVE)
                values.append(rela["addend"][mask])
                abs64 = rela[kinds == _R_X86_64_64]
                if len(abs64):
                    if local_funcs is None:
                        local_funcs = self._defined_func_values(section)
                    for sym_index, addend in zip(abs64["info"] >> 32, abs64["addend"]):
                        value = local_funcs.get(int(sym_index))
                        if value is not None:
                            values.append(np.array([value + int(addend)], dtype=np.int64))
            elif section["sh_type"] in ("SHT_RELR", 0x13) or section.name == ".relr.dyn":
                values.append(self._relr_values(np.frombuffer(section.data(), dtype="<u8")))
        if not self.is_pie:
            for vaddr, data in self._data_sections():
                skip = (-vaddr) % 8
                words = np.frombuffer(data[skip:skip + (len(data) - skip) // 8 * 8], dtype="<i8")
                values.append(words)
        if not values:
            return frozenset()
        allv = np.unique(np.concatenate([v.astype(np.int64) for v in values]))
        inside = np.zeros(len(allv), dtype=bool)
        for code in self._exec_sections:
            inside |= (allv >= code.vaddr) & (allv < code.end)
        return frozenset(int(v) for v in allv[inside])

    def _defined_func_values(self, rela_section: object) -> dict[int, int]:
        """Symbol index -> value for defined functions of the symbol table a RELA section refers to."""
        link = self._elf.get_section(int(rela_section["sh_link"]))  # type: ignore[index]
        out: dict[int, int] = {}
        if isinstance(link, SymbolTableSection):
            for i, sym in enumerate(link.iter_symbols()):
                if sym["st_info"]["type"] in _FUNC_TYPES and sym["st_shndx"] != "SHN_UNDEF":
                    out[i] = int(sym["st_value"])
        return out

    def _relr_values(self, relr: np.ndarray) -> np.ndarray:
        """The implicit addends (the words in place) of every address a DT_RELR table relocates."""
        addrs: list[int] = []
        where = 0
        for entry in relr.tolist():
            if entry & 1 == 0:
                addrs.append(entry)
                where = entry + 8
            else:
                bits = entry >> 1
                for i in range(63):
                    if bits >> i & 1:
                        addrs.append(where + 8 * i)
                where += 63 * 8
        out = []
        for addr in addrs:
            word = self.data_words(addr, 1, 8)
            if len(word):
                out.append(int(word[0]))
        return np.array(out, dtype=np.int64)

    # ------------------------------------------------------------------ address tables and imports

    def address_table(self, section_name: str) -> list[int] | None:
        """The non-zero 8-byte vaddrs stored in ``section_name`` (``__mcount_loc``,
        ``__patchable_function_entries``), relocation addends applied; None without that section."""
        section = self._elf.get_section_by_name(section_name)
        if section is None or section["sh_type"] == "SHT_NOBITS":
            return None
        base = int(section["sh_addr"])
        data = section.data()
        words = np.frombuffer(data[:len(data) // 8 * 8], dtype="<u8").astype(np.int64).tolist()
        end = base + 8 * len(words)
        for rela_section in self._elf.iter_sections():
            if rela_section["sh_type"] != "SHT_RELA" or rela_section["sh_entsize"] != _RELA_DTYPE.itemsize:
                continue
            rela = np.frombuffer(rela_section.data(), dtype=_RELA_DTYPE)
            inside = rela[(rela["offset"] >= base) & (rela["offset"] < end)
                          & ((rela["info"] & 0xFFFFFFFF) == _R_X86_64_RELATIVE)]
            for offset, addend in zip(inside["offset"].tolist(), inside["addend"].tolist()):
                if (offset - base) % 8 == 0:
                    words[(offset - base) // 8] = int(addend)
        return [w for w in words if w]

    def got_symbols(self) -> dict[int, str]:
        """The imported symbol each GOT slot holds (GLOB_DAT and JUMP_SLOT relocations), by slot vaddr."""
        out: dict[int, str] = {}
        for section in self._elf.iter_sections():
            if section["sh_type"] != "SHT_RELA" or section["sh_entsize"] != _RELA_DTYPE.itemsize:
                continue
            symtab = self._elf.get_section(int(section["sh_link"]))
            if not isinstance(symtab, SymbolTableSection):
                continue
            rela = np.frombuffer(section.data(), dtype=_RELA_DTYPE)
            kinds = rela["info"] & 0xFFFFFFFF
            for entry in rela[(kinds == _R_X86_64_GLOB_DAT) | (kinds == _R_X86_64_JUMP_SLOT)]:
                name = symtab.get_symbol(int(entry["info"] >> 32)).name.split("@", 1)[0]
                if name:
                    out[int(entry["offset"])] = name
        return out
