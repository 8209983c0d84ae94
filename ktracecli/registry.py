"""The plugin manager and the registry of engines and tracers it fills.

Nothing is loaded at import time: :func:`get_plugin_manager` builds a fresh
manager, loads the ``ktracecli`` entry points and checks that every hook a
plugin implements is a known one (``check_pending``).  The entry points are
found through :mod:`ktracecli.entrypoints` (importlib.metadata, remembered
between runs) and loaded by the rules of pluggy's
``load_setuptools_entrypoints``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pluggy

from ktracecli import entrypoints, hookspecs
from ktracecli.errors import UsageError
from ktracecli.interface import Engine, Tracer


@dataclass
class Registry:
    """Engine and tracer classes by name, in registration order."""

    engines: dict[str, type[Engine]] = field(default_factory=dict)
    tracers: dict[str, type[Tracer]] = field(default_factory=dict)

    def add_engine(self, cls: type[Engine]) -> None:
        """Register an engine class under ``cls.name``."""
        self.engines[cls.name] = cls

    def add_tracer(self, cls: type[Tracer]) -> None:
        """Register a tracer class under ``cls.name``."""
        self.tracers[cls.name] = cls

    def engine(self, name: str) -> Engine:
        """A new instance of the engine ``name``; unknown names are a usage error."""
        try:
            return self.engines[name]()
        except KeyError:
            known = ", ".join(self.engines) or "none installed"
            raise UsageError(f"unknown engine {name!r} (available: {known})") from None

    def tracer(self, name: str) -> Tracer:
        """A new instance of the tracer ``name``; unknown names are a usage error."""
        try:
            return self.tracers[name]()
        except KeyError:
            known = " ".join(self.tracers) or "none installed"
            raise UsageError(f"unknown tracer {name!r} (available: {known})") from None


def get_plugin_manager(load_entrypoints: bool = True) -> pluggy.PluginManager:
    """A fresh plugin manager with the ``ktracecli`` entry points loaded and checked."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if load_entrypoints:
        for ep in entrypoints.entry_points(hookspecs.PROJECT):
            if not (pm.has_plugin(ep.name) or pm.is_blocked(ep.name)):
                pm.register(ep.load(), name=ep.name)
    pm.check_pending()
    return pm


def build_registry(pm: pluggy.PluginManager | None = None) -> Registry:
    """Ask every plugin to register its engines and tracers."""
    pm = pm or get_plugin_manager()
    registry = Registry()
    pm.hook.ktrace_register_engines(registry=registry)
    pm.hook.ktrace_register_tracers(registry=registry)
    # Tracers in kernel order: the ones the kernel has first, then the others.
    order = {"function_graph": 0, "function": 1, "nop": 99}
    registry.tracers = dict(sorted(registry.tracers.items(), key=lambda kv: order.get(kv[0], 50)))
    return registry
