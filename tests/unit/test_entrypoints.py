"""The entry-point index: used while nothing that importlib.metadata reads has changed, read
again as soon as something has, and loaded by pluggy's rules."""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from ktracecli import cachedir, entrypoints, hookspecs
from ktracecli.entrypoints import EntryPoint
from ktracecli.registry import get_plugin_manager

GROUP = "ktracecli_test"
#: an hour ago: long settled
OLD_NS = time.time_ns() - 3600 * 10**9

assert json and tempfile and importlib.metadata  # imported before sys.path is narrowed to the fake site


def install(site: Path, dist: str, entry_points: str, mtime_ns: int = OLD_NS) -> Path:
    """A distribution's metadata folder in ``site``, every time set to ``mtime_ns`` (site's too)."""
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    for path in (info / "METADATA", info / "entry_points.txt", info, site):
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return info


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The only folder on sys.path, holding one distribution with one entry point."""
    folder = tmp_path / "site"
    install(folder, "plug_a", f"[{GROUP}]\nalpha = json:dumps\n")
    monkeypatch.setattr(sys, "path", [str(folder)])
    monkeypatch.setenv(cachedir.CACHE_ENV, str(tmp_path / "cache"))
    return folder


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The groups read through importlib.metadata, one per reading."""
    calls: list[str] = []
    real = entrypoints._scan

    def counting(group: str) -> list[EntryPoint]:
        calls.append(group)
        return real(group)

    monkeypatch.setattr(entrypoints, "_scan", counting)
    return calls


def test_index_is_used_while_nothing_changes(site: Path, scans: list[str]) -> None:
    first = entrypoints.entry_points(GROUP)
    again = entrypoints.entry_points(GROUP)
    assert first == again == [EntryPoint("alpha", "json", "dumps")]
    assert scans == [GROUP]
    assert again[0].load() is json.dumps


def test_a_new_distribution_is_seen(site: Path, scans: list[str]) -> None:
    entrypoints.entry_points(GROUP)
    install(site, "plug_b", f"[{GROUP}]\nbeta = os:path.join\n", mtime_ns=OLD_NS + 10**9)
    found = entrypoints.entry_points(GROUP)
    assert sorted(ep.name for ep in found) == ["alpha", "beta"]
    assert len(scans) == 2
    assert next(ep for ep in found if ep.name == "beta").load() is os.path.join


def test_a_removed_distribution_is_seen(site: Path, scans: list[str]) -> None:
    beta = install(site, "plug_b", f"[{GROUP}]\nbeta = os\n")
    assert len(entrypoints.entry_points(GROUP)) == 2
    for child in beta.iterdir():
        child.unlink()
    beta.rmdir()
    os.utime(site, ns=(OLD_NS + 10**9, OLD_NS + 10**9))
    assert entrypoints.entry_points(GROUP) == [EntryPoint("alpha", "json", "dumps")]


def test_entry_points_rewritten_in_place_are_seen(site: Path, scans: list[str]) -> None:
    entrypoints.entry_points(GROUP)
    txt = site / "plug_a-1.0.dist-info" / "entry_points.txt"
    txt.write_text(f"[{GROUP}]\nalpha = json:loads\n")
    os.utime(txt, ns=(OLD_NS + 10**9, OLD_NS + 10**9))
    assert entrypoints.entry_points(GROUP) == [EntryPoint("alpha", "json", "loads")]


def test_a_changed_sys_path_is_seen(site: Path, scans: list[str], tmp_path: Path) -> None:
    entrypoints.entry_points(GROUP)
    other = tmp_path / "other"
    install(other, "plug_c", f"[{GROUP}]\ngamma = json\n")
    sys.path.append(str(other))
    assert [ep.name for ep in entrypoints.entry_points(GROUP)] == ["alpha", "gamma"]


def test_other_files_leave_the_index_alone(site: Path, scans: list[str]) -> None:
    entrypoints.entry_points(GROUP)
    (site / "ktrace.data").mkdir()
    (site / "notes.txt").write_text("the folder's own time changes\n")
    assert entrypoints.entry_points(GROUP) == [EntryPoint("alpha", "json", "dumps")]
    assert scans == [GROUP]


def test_a_recent_change_is_not_remembered(site: Path, scans: list[str], tmp_path: Path) -> None:
    os.utime(site / "plug_a-1.0.dist-info" / "entry_points.txt", None)  # a rewrite in the same tick could go unseen
    entrypoints.entry_points(GROUP)
    entrypoints.entry_points(GROUP)
    assert len(scans) == 2
    assert not (tmp_path / "cache" / entrypoints.INDEX).exists()


def test_another_distribution_finder_bypasses_the_index(site: Path, scans: list[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    class Finder:
        @staticmethod
        def find_distributions(*args: Any, **kwargs: Any) -> list[Any]:
            return []

    monkeypatch.setattr(sys, "meta_path", [Finder, *sys.meta_path])
    entrypoints.entry_points(GROUP)
    entrypoints.entry_points(GROUP)
    assert len(scans) == 2


def test_an_empty_cache_variable_disables_the_index(site: Path, scans: list[str],
                                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(cachedir.CACHE_ENV, "")
    monkeypatch.chdir(tmp_path)
    entrypoints.entry_points(GROUP)
    entrypoints.entry_points(GROUP)
    assert len(scans) == 2
    assert not (tmp_path / entrypoints.INDEX).exists()


def test_a_corrupt_index_is_read_again(site: Path, scans: list[str], tmp_path: Path) -> None:
    entrypoints.entry_points(GROUP)
    (tmp_path / "cache" / entrypoints.INDEX).write_text("{not json")
    assert entrypoints.entry_points(GROUP) == [EntryPoint("alpha", "json", "dumps")]
    assert len(scans) == 2


def test_plugins_load_as_pluggy_loads_them() -> None:
    """The same plugins under the same names as pluggy's own ``load_setuptools_entrypoints``."""
    ours = get_plugin_manager()
    theirs = get_plugin_manager(load_entrypoints=False)
    theirs.load_setuptools_entrypoints(hookspecs.PROJECT)
    assert ours.list_name_plugin() == theirs.list_name_plugin()
    assert len(ours.list_name_plugin()) >= 5
