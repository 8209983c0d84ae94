"""The ELF modules a process has mapped, read from ``/proc/PID/maps``."""

from __future__ import annotations

import functools
import os

from ktracecli.elf.image import ElfImage
from ktracecli.errors import ProgramError
from ktracecli.process.maps import Mapping
from ktracecli.runtime.installer import LoadedModule


@functools.lru_cache(maxsize=256)
def _first_load_vaddr(path: str, inode: int, mtime_ns: int) -> int | None:
    """The file's lowest PT_LOAD vaddr (page-aligned), or None if it is not an ELF ktracecli reads."""
    try:
        with ElfImage.open(path) as image:
            return image.first_load_vaddr
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
        first = _first_load_vaddr(path, st.st_ino, st.st_mtime_ns)
        if first is None:
            continue
        modules.append(LoadedModule(path, os.path.basename(path), file_zero[path] - first, *spans[path]))
    if main_path is not None:
        modules.sort(key=lambda m: m.path != main_path)
    return modules
