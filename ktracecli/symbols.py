"""Symbol tables saved with a trace, and turning process addresses back into names.

``record`` saves, for every executable module mapped in the process, its
address range, load bias and function symbols, so that ``show`` can name
callers long after the program and its libraries are gone.  Each module
belongs to one address space (a process image: see ``datadir``); callers are
named with the modules of the space the call was made in.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

from ktracecli.errors import ProgramError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ktracecli.datadir import DataWriter, TraceData
    from ktracecli.runtime.installer import LoadedModule


def _preference(sym: "object") -> tuple[int, int, int, str]:
    name = sym.name  # type: ignore[attr-defined]
    return (int(sym.binding), len(name) - len(name.lstrip("_")), len(name), name)  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=64)
def module_symbols(path: str) -> dict[str, list[Any]]:
    """The function symbols of the ELF file at ``path``: one name per address, sorted by vaddr.

    Returns ``{"vaddr": [...], "size": [...], "name": [...]}`` (empty lists if the file
    cannot be read).  Cached: a file seen in several processes is read once.
    """
    from ktracecli.elf.image import ElfImage

    best: dict[int, object] = {}
    try:
        with ElfImage.open(path) as image:
            for sym in image.functions():
                if sym.vaddr and (sym.vaddr not in best or _preference(sym) < _preference(best[sym.vaddr])):
                    best[sym.vaddr] = sym
    except ProgramError:
        pass
    ordered = sorted(best.values(), key=lambda s: s.vaddr)  # type: ignore[attr-defined]
    return {"vaddr": [s.vaddr for s in ordered],  # type: ignore[attr-defined]
            "size": [s.size for s in ordered],  # type: ignore[attr-defined]
            "name": [s.name for s in ordered]}  # type: ignore[attr-defined]


def write_modules(writer: "DataWriter", modules: "Sequence[LoadedModule | tuple[int, LoadedModule]]") -> None:
    """Save ``modules.json`` and one symbol file per distinct module file.

    ``modules`` are LoadedModules (address space 0) or (space, LoadedModule) pairs.
    """
    entries = []
    files: dict[str, str] = {}
    for item in modules:
        space, module = item if isinstance(item, tuple) else (0, item)
        name = files.get(module.path)
        if name is None:
            name = files[module.path] = f"symbols/{len(files)}.json"
            writer.write_json(name, module_symbols(module.path))
        entries.append({"path": module.path, "name": module.name, "bias": module.bias,
                        "start": module.start, "end": module.end, "symbols": name, "space": space})
    writer.write_json("modules.json", entries)


class Symbolizer:
    """Names process addresses with the symbol tables of one address space's modules."""

    def __init__(self, data: "TraceData", space: int = 0) -> None:
        chosen = [i for i, m in enumerate(data.modules) if int(m.get("space", 0)) == space]
        self._setup([data.modules[i] for i in chosen], lambda k: data.symbols(chosen[k]))

    @classmethod
    def of_modules(cls, modules: "Sequence[LoadedModule]") -> "Symbolizer":
        """A symbolizer over modules mapped now (tables read from their ELF files), for live output."""
        self = cls.__new__(cls)
        entries = [{"start": m.start, "end": m.end, "bias": m.bias} for m in modules]
        paths = [m.path for m in modules]
        self._setup(entries, lambda k: module_symbols(paths[k]))
        return self

    def _setup(self, entries: "list[dict[str, Any]]", load: "Callable[[int], dict[str, list[Any]]]") -> None:
        self.entries = entries
        self.load = load
        self.modules = sorted(range(len(entries)), key=lambda i: entries[i]["start"])
        self.starts = np.array([entries[i]["start"] for i in self.modules], dtype=np.uint64)
        self.ends = np.array([entries[i]["end"] for i in self.modules], dtype=np.uint64)
        self._tables: dict[int, tuple[np.ndarray, np.ndarray, list[str]]] = {}

    def _table(self, mi: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        if mi not in self._tables:
            syms = self.load(mi)
            vaddr = np.array(syms["vaddr"], dtype=np.uint64)
            end = vaddr + np.array(syms["size"], dtype=np.uint64)
            # a symbol of size 0 covers up to the next symbol
            if len(vaddr):
                nxt = np.append(vaddr[1:], np.uint64(2**63))
                end = np.where(end == vaddr, nxt, end)
            self._tables[mi] = (vaddr, end, list(syms["name"]))
        return self._tables[mi]

    def names(self, addrs: np.ndarray) -> list[str]:
        """The function name containing each address, or the address in hex."""
        ids, names = self.name_ids(addrs)
        return [names[i] for i in ids.tolist()]

    def name_ids(self, addrs: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """For each address, an index into the returned list of names (function name, or hex address)."""
        addrs = addrs.astype(np.uint64)
        unique, inverse = np.unique(addrs, return_inverse=True)
        result = [f"0x{int(a):x}" for a in unique]
        pos = np.searchsorted(self.starts, unique, side="right") - 1
        for k, addr in enumerate(unique):
            p = int(pos[k])
            if p < 0 or addr >= self.ends[p]:
                continue
            mi = self.modules[p]
            vaddr, end, names = self._table(mi)
            rel = addr - np.uint64(self.entries[mi]["bias"] & (2**64 - 1))
            j = int(np.searchsorted(vaddr, rel, side="right")) - 1
            if j >= 0 and rel < end[j]:
                result[k] = names[j]
        return inverse.reshape(-1).astype(np.int64), result
