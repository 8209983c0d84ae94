"""What can be traced in a program or its libraries, without running it (``ktracecli available``)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from ktracecli import analysis_cache
from ktracecli.elf.ident import read_ident
from ktracecli.elf.libsearch import find_module
from ktracecli.errors import NoMatchError
from ktracecli.interface import Analysis, Engine


@dataclass(frozen=True)
class ModuleAnalysis:
    """One module's analysis by an engine: its path, its display name and the result."""

    path: str
    name: str
    analysis: Analysis


def program_path(program: str) -> str:
    """``program`` as a path: a bare command name is looked up in ``PATH`` like a shell would."""
    if "/" not in program and not os.path.exists(program):
        found = shutil.which(program)
        if found:
            return found
    return program


def _analyze(path: str, engine: Engine) -> ModuleAnalysis:
    ident, analysis = analysis_cache.analyze_path(engine, path)
    return ModuleAnalysis(ident.path, ident.module_name, analysis)


def available(program: str, engine: Engine, module_glob: str | None) -> list[ModuleAnalysis]:
    """The engine's analysis of ``program`` (``module_glob`` None) or of its matching libraries.

    ``module_glob`` is an fnmatch pattern on the basenames and sonames of the
    program's DT_NEEDED closure (``libc.so*``), or a path to a library.  Raises
    :class:`NoMatchError` when nothing matches, :class:`ProgramError` when a
    file is missing or not an x86_64 ELF.
    """
    path = program_path(program)
    if module_glob is None:
        return [_analyze(path, engine)]
    if "/" in module_glob:
        return [_analyze(module_glob, engine)]
    libraries = find_module(read_ident(path), module_glob)
    if not libraries:
        raise NoMatchError(f"no library matching {module_glob} in {program}")
    return [_analyze(lib, engine) for lib in libraries]
