"""Typed values shared by engines, tracers and the core.

Addresses are named for what they are relative to:

- ``vaddr``: a link-time virtual address inside one ELF module (``st_value``);
- ``offset``: a byte offset inside a file;
- ``addr``: an address in the traced process (``vaddr + bias`` of its module).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Binding(enum.IntEnum):
    """Symbol binding, ordered by preference when several names share an address."""

    GLOBAL = 0
    WEAK = 1
    LOCAL = 2


@dataclass(frozen=True)
class Symbol:
    """A function symbol of one module (module-relative ``vaddr``)."""

    name: str
    vaddr: int
    size: int
    binding: Binding = Binding.GLOBAL
    is_ifunc: bool = False


@dataclass(frozen=True)
class Refusal:
    """A function an engine will not patch, and why (one readable line)."""

    name: str
    vaddr: int
    reason: str


@dataclass(frozen=True)
class Patch:
    """One code change in the tracee: the bytes expected at ``addr`` and the bytes to put there."""

    addr: int
    original: bytes
    new: bytes

    def __post_init__(self) -> None:
        if len(self.original) != len(self.new):
            raise ValueError("a patch must replace as many bytes as it writes")

    def undo(self) -> "Patch":
        """The patch that puts the original bytes back."""
        return Patch(self.addr, self.new, self.original)
