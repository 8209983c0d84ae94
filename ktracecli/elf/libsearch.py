"""Find the shared libraries a program loads, the way the dynamic loader would.

Search order for each DT_NEEDED soname: the needing object's DT_RUNPATH/DT_RPATH,
``LD_LIBRARY_PATH``, the loader cache (``ldconfig -p``), then the default
directories.  Only x86_64 ELF files are accepted, so 32-bit copies are skipped.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import subprocess

from ktracecli.elf.ident import ElfIdent, read_ident
from ktracecli.errors import ProgramError

DEFAULT_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64",
                "/lib", "/usr/lib")


@functools.lru_cache(maxsize=1)
def ld_cache() -> dict[str, str]:
    """soname -> path of the x86-64 entries of the loader cache (empty if ``ldconfig`` is unavailable)."""
    out: dict[str, str] = {}
    for ldconfig in ("/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"):
        try:
            text = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, check=False,
                                  timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        for line in text.splitlines():
            # "\tlibc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6"
            left, sep, path = line.strip().partition(" => ")
            if not sep or "x86-64" not in left:
                continue
            out.setdefault(left.split(" ", 1)[0], path.strip())
        if out:
            break
    return out


def _usable(path: str) -> bool:
    """True when ``path`` is a readable x86_64 ELF file."""
    if not os.path.isfile(path):
        return False
    try:
        read_ident(path)
    except ProgramError:
        return False
    return True


def _find(soname: str, runpath: list[str]) -> str | None:
    """The path of ``soname`` for an object whose RUNPATH is ``runpath``, or None."""
    if "/" in soname:
        return soname if _usable(soname) else None
    env = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    for directory in (*runpath, *env):
        candidate = os.path.join(directory, soname)
        if _usable(candidate):
            return candidate
    cached = ld_cache().get(soname)
    if cached and _usable(cached):
        return cached
    for directory in DEFAULT_DIRS:
        candidate = os.path.join(directory, soname)
        if _usable(candidate):
            return candidate
    return None


def resolve_needed(image: ElfIdent) -> dict[str, str]:
    """soname -> path for the transitive DT_NEEDED closure of ``image`` (unresolvable names are left out)."""
    found: dict[str, str] = {}
    queue: list[ElfIdent] = [image]
    seen: set[str] = set()
    while queue:
        current = queue.pop(0)
        for soname in current.needed:
            if soname in seen:
                continue
            seen.add(soname)
            path = _find(soname, list(current.runpath))
            if path is None:
                continue
            found[soname] = path
            queue.append(read_ident(path))
    return found


def find_module(image: ElfIdent, name_glob: str) -> list[str]:
    """Paths of the libraries of ``image``'s closure whose basename or soname matches ``name_glob``."""
    out: list[str] = []
    for soname, path in resolve_needed(image).items():
        names = (soname, os.path.basename(path), os.path.basename(os.path.realpath(path)))
        if any(fnmatch.fnmatchcase(n, name_glob) for n in names) and path not in out:
            out.append(path)
    return out
