"""Every pluggy hook of ktracecli, in one typed module.

Hooks are for discovery and life cycle only: the per-event hot path runs inside
the traced program and never goes through ``pm.hook``.  Built-in engines and
tracers implement these hooks exactly as a third-party package would, and are
found through the ``ktracecli`` entry-point group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from ktracecli.registry import Registry

PROJECT = "ktracecli"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ktrace_register_engines(registry: "Registry") -> None:
    """Called once when the plugin manager is built: add engine classes with ``registry.add_engine``."""


@hookspec
def ktrace_register_tracers(registry: "Registry") -> None:
    """Called once when the plugin manager is built: add tracer classes with ``registry.add_tracer``."""


@hookspec
def ktrace_session_start(session: Any) -> None:
    """Called when a record or attach session has patched the tracee and is about to resume it."""


@hookspec
def ktrace_session_end(session: Any) -> None:
    """Called after a session has drained its rings and written its data directory."""
