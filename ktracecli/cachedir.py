"""The folder of things ktracecli may recompute at any time: engine analyses and the entry-point index.

``$KTRACECLI_CACHE_DIR`` when it is set (set and empty: no cache at all), else
``$XDG_CACHE_HOME/ktracecli/analysis/`` (``~/.cache`` without it), created with
mode 0700.  Files are written whole or not at all (a temporary file renamed);
a missing or unreadable one reads as nothing, and a cache that cannot be
written only costs time.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "KTRACECLI_CACHE_DIR"


def cache_dir() -> Path | None:
    """Where the cache is kept, None when it is disabled."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit is not None:
        return Path(explicit) if explicit else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ktracecli" / "analysis"


def read(name: str) -> bytes | None:
    """The bytes of the cache file ``name``, None when there is none (or no cache)."""
    folder = cache_dir()
    if folder is None:
        return None
    try:
        return (folder / name).read_bytes()
    except OSError:
        return None


def write(name: str, data: bytes) -> None:
    """Make ``data`` the cache file ``name``, atomically; nothing happens without a cache."""
    folder = cache_dir()
    if folder is None:
        return
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    except OSError:
        return  # a read-only cache only costs time
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, folder / name)
    except OSError:
        try:
            os.unlink(tmp)  # a full cache only costs time
        except OSError:
            pass
