"""The ktrace engine's site record, kept apart from the analysis so that reading it back from the
analysis cache needs neither numpy nor capstone."""

from __future__ import annotations

from dataclasses import dataclass

from ktracecli.interface import FunctionSite


@dataclass(frozen=True)
class KtraceSite(FunctionSite):
    """A patchable function: ``window`` is the original bytes displaced from ``window_vaddr`` (>= 5)."""

    window_vaddr: int = 0
    window: bytes = b""
