"""The mcount engine plugin: trace programs through the call sites the compiler put at function entries.

Registered through the ``ktracecli`` entry point exactly like a third-party
engine; importing this module only imports the light engine class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ktracecli.hookspecs import hookimpl

from .engine import McountEngine

if TYPE_CHECKING:
    from ktracecli.registry import Registry

__all__ = ["McountEngine", "ktrace_register_engines"]


@hookimpl
def ktrace_register_engines(registry: "Registry") -> None:
    """Add :class:`McountEngine` to the registry."""
    registry.add_engine(McountEngine)
