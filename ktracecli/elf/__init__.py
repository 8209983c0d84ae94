"""ELF files: the one place of ktracecli that reads them (pyelftools stays inside)."""

from ktracecli.elf.image import ElfImage, ExecSection, LoadSegment

__all__ = ["ElfImage", "ExecSection", "LoadSegment"]
