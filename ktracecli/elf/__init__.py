"""ELF files: the one place of ktracecli that reads them (pyelftools stays inside).

``ktracecli.elf.image`` parses whole files (pyelftools, numpy); ``ktracecli.elf.ident``
reads just a file's identity with ``struct``.  Importing this package imports neither,
so that commands served from the analysis cache stay light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ElfImage", "ExecSection", "LoadSegment"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ktracecli.elf import image
        return getattr(image, name)
    raise AttributeError(name)
