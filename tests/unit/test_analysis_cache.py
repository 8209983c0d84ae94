"""The analysis cache: keyed by build-id, recomputed when missing or corrupt, off when the variable is empty."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ktracecli import analysis_cache, cachedir
from ktracecli.elf.image import ElfImage
from ktracecli.interface import Analysis
from ktracecli.registry import build_registry

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"


class CountingEngine:
    """The ktrace engine, counting how often it really analyses."""

    name = "ktrace"

    def __init__(self) -> None:
        self.inner = build_registry().engine("ktrace")
        self.calls = 0

    def analyze(self, image: ElfImage) -> Analysis:
        self.calls += 1
        return self.inner.analyze(image)


@pytest.fixture
def engine() -> CountingEngine:
    return CountingEngine()


def test_second_analysis_comes_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              engine: CountingEngine) -> None:
    monkeypatch.setenv(cachedir.CACHE_ENV, str(tmp_path / "cache"))
    with ElfImage.open(LIBC) as image:
        first = analysis_cache.analyze(engine, image)  # type: ignore[arg-type]
        again = analysis_cache.analyze(engine, image)  # type: ignore[arg-type]
    assert engine.calls == 1
    assert again == first and len(first.sites) > 1000
    assert len(list((tmp_path / "cache").glob("ktrace-*.pickle"))) == 1


def test_corrupt_entry_is_recomputed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     engine: CountingEngine) -> None:
    monkeypatch.setenv(cachedir.CACHE_ENV, str(tmp_path))
    with ElfImage.open(LIBC) as image:
        first = analysis_cache.analyze(engine, image)  # type: ignore[arg-type]
        (entry,) = tmp_path.glob("ktrace-*.pickle")
        entry.write_bytes(b"not a pickle")
        again = analysis_cache.analyze(engine, image)  # type: ignore[arg-type]
    assert engine.calls == 2 and again == first


def test_empty_variable_disables_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           engine: CountingEngine) -> None:
    monkeypatch.setenv(cachedir.CACHE_ENV, "")
    monkeypatch.chdir(tmp_path)
    with ElfImage.open(LIBC) as image:
        analysis_cache.analyze(engine, image)  # type: ignore[arg-type]
        analysis_cache.analyze(engine, image)  # type: ignore[arg-type]
    assert engine.calls == 2
    assert os.listdir(tmp_path) == [], "an empty KTRACECLI_CACHE_DIR must not cache into the current directory"


def test_an_entry_serves_only_its_own_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          engine: CountingEngine) -> None:
    """Entry names are checksums of keys: two files whose keys share a name must not get each other's analysis."""
    monkeypatch.setenv(cachedir.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(analysis_cache, "_entry_name", lambda engine, key: "ktrace-same.pickle")
    with ElfImage.open(LIBC) as image:
        libc = analysis_cache.analyze(engine, image)  # type: ignore[arg-type]
    with ElfImage.open("/bin/true") as image:
        other = analysis_cache.analyze(engine, image)  # type: ignore[arg-type]
        again = analysis_cache.analyze(engine, image)  # type: ignore[arg-type]
    assert engine.calls == 2 and other != libc and again == other
