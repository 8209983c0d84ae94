"""A cache of engine analyses, keyed by the file's build-id.

Analysing libc takes a whole-binary disassembly (about half a second); the
result only depends on the file's bytes and on the engine's code.  It is kept
in the cache folder (:mod:`ktracecli.cachedir`), one pickle per
(engine, engine version, build-id); a file without a build-id is keyed by its
path, size and modification time.  Each entry holds its key beside the
analysis and is used only when the key matches; its file name is the engine's
name and a checksum of the key (a CRC, cheaper to import than hashlib, is
enough for that).  A missing, unreadable or stale entry is simply recomputed;
writes are atomic.
"""

from __future__ import annotations

import inspect
import os
import pickle
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from ktracecli import __version__, cachedir
from ktracecli.elf.ident import ElfIdent, read_ident
from ktracecli.interface import Analysis, Engine

if TYPE_CHECKING:
    from ktracecli.elf.image import ElfImage


def _engine_version(engine: Engine) -> str:
    """ktracecli's version plus the engine code's own stamp, so an engine update invalidates."""
    module = inspect.getmodule(type(engine))
    stamp = ""
    if module is not None and getattr(module, "__file__", None):
        folder = Path(module.__file__).parent  # type: ignore[arg-type]
        stamp = ",".join(f"{p.name}:{p.stat().st_mtime_ns}" for p in sorted(folder.glob("*.py")))
    return f"{__version__}|{type(engine).__qualname__}|{stamp}"


def _key(engine: Engine, image: "ElfImage | ElfIdent") -> str:
    """What the analysis of ``image`` by ``engine`` depends on."""
    ident = image.build_id
    if not ident:
        st = os.stat(image.path)
        ident = f"{os.path.realpath(image.path)}|{st.st_size}|{st.st_mtime_ns}"
    return f"{_engine_version(engine)}|{ident}"


def _entry_name(engine: Engine, key: str) -> str:
    return f"{engine.name}-{zlib.crc32(key.encode()):08x}.pickle"


def analyze(engine: Engine, image: "ElfImage") -> Analysis:
    """``engine.analyze(image)``, from the cache when it holds this very file."""
    cached = _load(engine, image)
    if cached is not None:
        return cached
    analysis = engine.analyze(image)
    _store(engine, image, analysis)
    return analysis


def analyze_path(engine: Engine, path: str) -> tuple[ElfIdent, Analysis]:
    """The analysis of the file at ``path``; on a cache hit the file is only identified, never parsed."""
    ident = read_ident(path)
    cached = _load(engine, ident)
    if cached is not None:
        return ident, cached
    from ktracecli.elf.image import ElfImage  # pyelftools and numpy, on a miss only

    with ElfImage.open(path) as image:
        return ident, analyze(engine, image)


def _load(engine: Engine, image: "ElfImage | ElfIdent") -> Analysis | None:
    if cachedir.cache_dir() is None:
        return None
    try:
        key = _key(engine, image)
    except OSError:
        return None
    data = cachedir.read(_entry_name(engine, key))
    if data is None:
        return None
    try:
        stored_key, cached = pickle.loads(data)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError):
        return None
    return cached if stored_key == key and isinstance(cached, Analysis) else None


def _store(engine: Engine, image: "ElfImage", analysis: Analysis) -> None:
    if cachedir.cache_dir() is None:
        return
    try:
        key = _key(engine, image)
    except OSError:
        return
    cachedir.write(_entry_name(engine, key), pickle.dumps((key, analysis), protocol=pickle.HIGHEST_PROTOCOL))
