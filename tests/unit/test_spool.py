"""The staging spool: every byte reaches its own sink, in order; write errors surface at close."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from ktracecli import spool
from ktracecli.errors import DataError


class ListSink:
    """Collects what the writer thread writes."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.staged = 0

    def write_now(self, data: memoryview) -> None:
        self.parts.append(bytes(data))

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)


class FailingSink:
    staged = 0

    def write_now(self, data: memoryview) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_interleaved_sinks_keep_their_own_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool, "CHUNK", 4096)
    s = spool.Spool(limit=3 * 4096)  # a small pool: put() must wait for the writer, not fail
    sinks = [ListSink() for _ in range(3)]
    rng = np.random.default_rng(7)
    pieces = [rng.integers(0, 256, size=int(rng.integers(1, 9000)), dtype=np.uint8) for _ in range(2000)]
    expected = [b"".join(p.tobytes() for p in pieces[k::3]) for k in range(3)]
    for i, data in enumerate(pieces):
        s.put(sinks[i % 3], memoryview(data))
        data[:] = 0  # the source may be reused as soon as put() returns
    s.close()
    for sink, want in zip(sinks, expected):
        assert sink.data == want
    assert s.allocated <= 3 * 4096


def test_write_error_is_one_line_at_close() -> None:
    s = spool.Spool()
    s.put(FailingSink(), memoryview(b"x" * 100))
    with pytest.raises(DataError, match="No space left on device"):
        s.close()
