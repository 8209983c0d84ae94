"""The ktrace engine plugin: entry patching that needs nothing from the compiler.

Registered through the ``ktracecli`` entry point exactly like a third-party
engine; importing this module only imports the light engine class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ktracecli.hookspecs import hookimpl

from .engine import KtraceEngine

if TYPE_CHECKING:
    from ktracecli.registry import Registry

__all__ = ["KtraceEngine", "ktrace_register_engines"]


@hookimpl
def ktrace_register_engines(registry: "Registry") -> None:
    """Add :class:`KtraceEngine` to the registry."""
    registry.add_engine(KtraceEngine)
