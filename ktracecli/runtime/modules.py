"""The ELF modules a process has mapped, read from ``/proc/PID/maps``."""

from __future__ import annotations

import functools
import os

from ktracecli.elf.ident import ElfIdent, read_ident
from ktracecli.errors import ProgramError
from ktracecli.process.maps import Mapping
from ktracecli.runtime.installer import LoadedModule


@functools.lru_cache(maxsize=256)
def _ident(path: str, inode: int, mtime_ns: int) -> ElfIdent | None:
    """The file's identity (first PT_LOAD vaddr, soname), or None if it is not an ELF ktracecli reads."""
    try:
        return read_ident(path)
    except ProgramError:
        return None


def loaded_modules(maps: list[Mapping], main_path: str | None = None) -> list[LoadedModule]:
    """ELF modules with executable mappings (main program first when ``main_path`` is given).

    A module's bias comes from the mapping of its file offset 0; its extent spans
    all its mappings.
    """
    spans: dict[str, list[int]] = {}
    file_zero: dict[str, int] = {}
    executable: set[str] = set()
    for m in maps:
        if not m.path.startswith("/"):
            continue
        lo_hi = spans.setdefault(m.path, [m.start, m.end])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], m.start), max(lo_hi[1], m.end)
        if m.offset == 0:
            file_zero.setdefault(m.path, m.start)
        if m.executable:
            executable.add(m.path)
    modules = []
    for path in spans:
        if path not in executable or path not in file_zero:
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue  # deleted or replaced since it was mapped: its symbols cannot be read
        ident = _ident(path, st.st_ino, st.st_mtime_ns)
        if ident is None:
            continue
        # a library is named by its soname (libstdc++.so.6, as ldd shows it), not its file
        # (libstdc++.so.6.0.30); the main program by its file, as the rules name it
        name = os.path.basename(path) if path == main_path else ident.module_name
        modules.append(LoadedModule(path, name, file_zero[path] - ident.first_load_vaddr, *spans[path]))
    if main_path is not None:
        modules.sort(key=lambda m: m.path != main_path)
    return modules
