"""What tracing costs the traced program in memory, per traced function (``ktracecli ktrace list -v``).

The kernel RFC's own worry about patching function entries was the memory each
traced function takes.  In ktracecli the tracee holds, per traced function, only
its stub (the detour: the engine's call to the handler, the relocated displaced
instructions, the jump back); everything else the tracee holds is shared:

- one handler per stub region (a region near each module, shared by its stubs);
- per thread, a ring of fixed-size records (``buffer_size_kb``), whatever is traced.

A recorded data directory keeps each site's stub size (``sites.json``); a running
session reports its totals in its status file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ktracecli import datadir
from ktracecli.errors import DataError


@dataclass(frozen=True)
class Detour:
    """One traced function and the bytes its stub takes in the tracee."""

    name: str
    module: str
    addr: int
    size: int


@dataclass(frozen=True)
class Footprint:
    """The tracee memory of one recording."""

    detours: tuple[Detour, ...]
    handler_bytes: int
    record_size: int

    @property
    def detour_bytes(self) -> int:
        """All stubs together."""
        return sum(d.size for d in self.detours)

    @property
    def per_function(self) -> float:
        """Average stub bytes per traced function."""
        return self.detour_bytes / len(self.detours) if self.detours else 0.0


def of_data(path: Path) -> Footprint:
    """The footprint recorded in a data directory (:class:`DataError` if it is missing or corrupt)."""
    info, sites = datadir.metadata(path)
    try:
        detours = tuple(Detour(str(s["name"]), str(s.get("module", "")), int(s.get("addr", 0)), int(s["detour"]))
                        for s in sites if "detour" in s)
        return Footprint(detours, int(info.get("handler_bytes", 0)), int(info.get("record_size", 0)))
    except (TypeError, ValueError) as exc:
        raise DataError(f"corrupt data directory {path}: sites.json: {exc}") from None
