"""The entry points of the installed distributions, remembered between runs.

Finding them with importlib.metadata costs about 14 ms a command (its import,
then reading the metadata of every installed distribution): more than
``ktracecli available`` takes otherwise on a cached analysis.  So
:func:`entry_points` keeps what it found in ``entry-points.json`` in the cache
folder (:mod:`ktracecli.cachedir`) with a stamp of everything importlib.metadata
looks at to find them, and uses it while the stamp is unchanged:

- each ``sys.path`` entry;
- for an entry that is a folder, the distribution metadata folders in it
  (``*.dist-info``, ``*.egg-info``, an egg's ``EGG-INFO``) in the order they are
  listed, and the modification time and size of each one's ``entry_points.txt``;
- for an entry that is a file (a zip), its modification time and size.

Installing, upgrading or removing a distribution adds, renames or removes a
metadata folder or rewrites its ``entry_points.txt``; a ``.pth`` file or
``PYTHONPATH`` changes ``sys.path``.  Each of these changes the stamp, and the
next command reads the metadata again; other files coming and going (in the
current directory, first on ``sys.path`` under ``python -m``) do not.  Nothing
is remembered while a stamped time is less than :data:`SETTLE_NS` old (a
rewrite within a file system's timestamp granularity could go unseen), nor when
a finder on ``sys.meta_path`` other than the standard path finder can provide
distributions (it could find them anywhere).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import stat
import sys
import time
from dataclasses import dataclass
from typing import Any

from ktracecli import cachedir

INDEX = "entry-points.json"
#: bumped when the index's layout changes
VERSION = 1
#: how old every stamped modification time must be for the stamp to be stored
SETTLE_NS = 3_000_000_000
_METADATA_SUFFIXES = (".dist-info", ".egg-info")
#: per ``sys.path`` entry: [entry, its file stamp ([] for a folder: its listing stands for it),
#: [[metadata folder, file stamp of its entry_points.txt], ...]]
Stamp = list[list[Any]]


@dataclass(frozen=True)
class EntryPoint:
    """``name = module:attr`` in a distribution's ``entry_points.txt`` (``attr`` empty: the module)."""

    name: str
    module: str
    attr: str = ""

    def load(self) -> object:
        """Import the module and return the object the entry point names, as importlib.metadata does."""
        found: object = importlib.import_module(self.module)
        for part in filter(None, self.attr.split(".")):
            found = getattr(found, part)
        return found


def entry_points(group: str) -> list[EntryPoint]:
    """The entry points of ``group`` of every distribution, in importlib.metadata's order of the
    distributions (the order pluggy's ``load_setuptools_entrypoints`` takes them in)."""
    stamp = _stamp() if cachedir.cache_dir() is not None else None
    if stamp is None:
        return _scan(group)
    remembered = _read(group, stamp)
    if remembered is not None:
        return remembered
    found = _scan(group)
    if _settled(stamp):
        _write(group, stamp, found)
    return found


def _scan(group: str) -> list[EntryPoint]:
    import importlib.metadata

    return [EntryPoint(ep.name, ep.module, ep.attr or "")
            for dist in importlib.metadata.distributions() for ep in dist.entry_points if ep.group == group]


def _stamp() -> Stamp | None:
    """What distribution discovery depends on, as JSON values; None when it cannot be told."""
    finders = [f for f in sys.meta_path if getattr(f, "find_distributions", None) is not None]
    if finders != [importlib.machinery.PathFinder]:
        return None
    stamp: Stamp = []
    for entry in sys.path:
        if not isinstance(entry, str):
            return None
        folder = entry or "."  # importlib.metadata reads "" as the current directory
        if not os.path.isdir(folder):
            stamp.append([entry, _file_stamp(folder), []])
            continue
        try:
            children = os.listdir(folder)
        except OSError:
            children = []
        metadata = [[child, _file_stamp(os.path.join(folder, child, "entry_points.txt"))]
                    for child in children if _is_metadata(folder, child)]
        stamp.append([entry, [], metadata])
    return stamp


def _is_metadata(folder: str, child: str) -> bool:
    """Whether importlib.metadata takes ``child`` of ``folder`` for a distribution's metadata."""
    low = child.lower()
    return low.endswith(_METADATA_SUFFIXES) or (low == "egg-info" and folder.endswith(".egg"))


def _file_stamp(path: str) -> list[int]:
    """[modification time in ns, size] of ``path``; [] when there is nothing there."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    return [st.st_mtime_ns, st.st_size if stat.S_ISREG(st.st_mode) else 0]


def _settled(stamp: Stamp) -> bool:
    """Whether every time in ``stamp`` is old enough for a later change to show as a new time."""
    file_stamps = [own for _entry, own, _metadata in stamp]
    file_stamps += [txt for _entry, _own, metadata in stamp for _child, txt in metadata]
    newest = max((fs[0] for fs in file_stamps if fs), default=0)
    return newest < time.time_ns() - SETTLE_NS


def _read(group: str, stamp: Stamp) -> list[EntryPoint] | None:
    """The index's entry points of ``group`` if its stamp is ``stamp``."""
    import json

    data = cachedir.read(INDEX)
    if data is None:
        return None
    try:
        index = json.loads(data)
        if index["version"] != VERSION or index["group"] != group or index["stamp"] != stamp:
            return None
        return [EntryPoint(name, module, attr) for name, module, attr in index["entry_points"]]
    except (ValueError, KeyError, TypeError):
        return None


def _write(group: str, stamp: Stamp, found: list[EntryPoint]) -> None:
    import json

    index = {"version": VERSION, "group": group, "stamp": stamp,
             "entry_points": [[ep.name, ep.module, ep.attr] for ep in found]}
    cachedir.write(INDEX, json.dumps(index).encode())
