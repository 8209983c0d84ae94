"""``ktracecli available``: the functions the current engine can trace, or those it refuses and why.

The command's work and output, importable without Typer: the Typer command
(:mod:`ktracecli.cli`) and the fast lane for a plain command line
(:mod:`ktracecli.entry`) both run :func:`list_functions`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ktracecli import config
from ktracecli.console import write_stderr_line, write_stdout

if TYPE_CHECKING:
    from ktracecli.registry import Registry


def list_functions(config_path: Path, program: str, rejected: bool, mod: str | None,
                   build_registry: Callable[[], "Registry"]) -> None:
    """Print the traceable functions of ``program`` (``mod`` None) or of its libraries matching ``mod``.

    One name per line in address order, each followed by its library's name in
    brackets with ``mod``; with ``rejected`` the refused functions instead, each
    with its reason after a tab.  The counts go to stderr.  ``build_registry``
    is only called once the config file has been read.
    """
    from ktracecli import catalog

    settings = config.load(config_path)
    modules = catalog.available(program, build_registry().engine(settings.engine), mod)
    traceable = refused = 0
    for module in modules:
        suffix = "" if mod is None else f" [{module.name}]"
        traceable += len(module.analysis.sites)
        refused += len(module.analysis.refusals)
        if rejected:
            lines = [f"{r.name}{suffix}\t{r.reason}"
                     for r in sorted(module.analysis.refusals, key=lambda r: r.vaddr)]
        else:
            lines = [f"{s.name}{suffix}" for s in sorted(module.analysis.sites, key=lambda s: s.vaddr)]
        if lines:
            write_stdout("\n".join(lines) + "\n")
    total = traceable + refused
    share = f" ({100 * traceable / total:.1f}% traceable)" if total else ""
    write_stderr_line(f"{traceable} functions traceable, {refused} refused{share}")
