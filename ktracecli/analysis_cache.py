"""A cache of engine analyses, keyed by the file's build-id.

Analysing libc takes a whole-binary disassembly (about half a second); the
result only depends on the file's bytes and on the engine's code.  It is kept
under ``$XDG_CACHE_HOME/ktracecli/analysis/`` (mode 0700), one pickle per
(engine, engine version, build-id); a file without a build-id is keyed by its
path, size and modification time.  A missing, unreadable or stale entry is
simply recomputed; writes are atomic.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import pickle
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ktracecli import __version__
from ktracecli.elf.ident import ElfIdent, read_ident
from ktracecli.interface import Analysis, Engine

if TYPE_CHECKING:
    from ktracecli.elf.image import ElfImage

CACHE_ENV = "KTRACECLI_CACHE_DIR"


def cache_dir() -> Path | None:
    """Where analyses are kept (``KTRACECLI_CACHE_DIR`` overrides; empty disables: None)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit is not None:
        return Path(explicit) if explicit else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ktracecli" / "analysis"


def _engine_version(engine: Engine) -> str:
    """ktracecli's version plus the engine code's own stamp, so an engine update invalidates."""
    module = inspect.getmodule(type(engine))
    stamp = ""
    if module is not None and getattr(module, "__file__", None):
        folder = Path(module.__file__).parent  # type: ignore[arg-type]
        stamp = ",".join(f"{p.name}:{p.stat().st_mtime_ns}" for p in sorted(folder.glob("*.py")))
    return f"{__version__}|{type(engine).__qualname__}|{stamp}"


def _key(engine: Engine, image: "ElfImage | ElfIdent") -> str:
    ident = image.build_id
    if not ident:
        st = os.stat(image.path)
        ident = f"{os.path.realpath(image.path)}|{st.st_size}|{st.st_mtime_ns}"
    digest = hashlib.sha256(f"{_engine_version(engine)}|{ident}".encode()).hexdigest()[:32]
    return f"{engine.name}-{digest}.pickle"


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
    folder = cache_dir()
    if folder is None:
        return None
    try:
        with open(folder / _key(engine, image), "rb") as f:
            cached = pickle.load(f)
        if isinstance(cached, Analysis):
            return cached
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError):
        pass
    return None


def _store(engine: Engine, image: "ElfImage", analysis: Analysis) -> None:
    folder = cache_dir()
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(analysis, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, folder / _key(engine, image))
    except OSError:
        pass  # a read-only or full cache only costs time
