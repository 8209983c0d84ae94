"""Event files: every byte written in order and the size exact, through direct writes and without."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ktracecli import datadir, spool
from ktracecli.datadir import DIRECT_CHUNK, _open_events, _ThreadFile


def _pieces(seed: int) -> list[bytes]:
    """Sizes around and across the direct chunk and block sizes, as records come."""
    rng = np.random.default_rng(seed)
    sizes = [1, 23, 4096, 4097, DIRECT_CHUNK - 5, 7, DIRECT_CHUNK, 3 * DIRECT_CHUNK + 11]
    sizes += [int(s) for s in rng.integers(1, 200_000, size=40)]
    return [rng.integers(0, 256, size=n, dtype=np.uint8).tobytes() for n in sizes]


def _write_all(stream: _ThreadFile, pieces: list[bytes]) -> None:
    for piece in pieces:
        stream.write_now(memoryview(piece))
    stream.close()


def test_every_byte_in_order_and_the_size_exact(tmp_path: Path) -> None:
    path = tmp_path / "events.bin"
    handle, direct = _open_events(path)
    pieces = _pieces(1)
    _write_all(_ThreadFile(1, 1, "t", 0, "events.bin", handle, direct), pieces)
    assert path.read_bytes() == b"".join(pieces)


def test_plain_writes_without_direct(tmp_path: Path) -> None:
    path = tmp_path / "events.bin"
    pieces = _pieces(2)
    _write_all(_ThreadFile(1, 1, "t", 0, "events.bin", open(path, "wb", buffering=0), False), pieces)
    assert path.read_bytes() == b"".join(pieces)


class RefusesFirstWrite:
    """A file whose file system took O_DIRECT at open but refuses the first direct write."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.refused = 0

    def write(self, data: memoryview) -> int:
        if not self.refused:
            self.refused += 1
            raise OSError(errno.EINVAL, "Invalid argument")
        return self.handle.write(data)

    def fileno(self) -> int:
        return self.handle.fileno()

    def close(self) -> None:
        self.handle.close()


def test_a_refused_direct_write_falls_back_to_plain_writes(tmp_path: Path) -> None:
    path = tmp_path / "events.bin"
    handle, direct = _open_events(path)
    wrapped = RefusesFirstWrite(handle)
    stream = _ThreadFile(1, 1, "t", 0, "events.bin", wrapped, True)  # type: ignore[arg-type]
    pieces = _pieces(3)
    _write_all(stream, pieces)
    assert wrapped.refused == 1 and not stream.direct
    assert path.read_bytes() == b"".join(pieces)


def test_no_reservation_left_past_the_end(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(datadir, "PREALLOCATE", 8 << 20)
    path = tmp_path / "events.bin"
    handle, direct = _open_events(path)
    _write_all(_ThreadFile(1, 1, "t", 0, "events.bin", handle, direct), [b"x" * 100])
    assert os.path.getsize(path) == 100


def test_staged_blocks_go_to_the_file_without_a_copy(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Through the spool, two interleaved files get every byte, and whole blocks straight from staging."""
    straight = []
    original = _ThreadFile._write_direct

    def spy(self: _ThreadFile, view: memoryview) -> None:
        address = np.frombuffer(view, dtype=np.uint8).ctypes.data
        chunk = self.chunk.ctypes.data if self.chunk is not None else -1
        straight.append(not chunk <= address < chunk + DIRECT_CHUNK)
        original(self, view)

    monkeypatch.setattr(_ThreadFile, "_write_direct", spy)
    staging = spool.Spool()
    streams, expected = [], []
    for k in range(2):
        handle, direct = _open_events(tmp_path / f"{k}.bin")
        streams.append(_ThreadFile(1, k, "t", 0, f"{k}.bin", handle, direct))
        expected.append(b"")
    for i, piece in enumerate(_pieces(4)):
        staging.put(streams[i % 2], memoryview(piece))
        expected[i % 2] += piece
    staging.close()
    for k, stream in enumerate(streams):
        stream.close()
        assert (tmp_path / f"{k}.bin").read_bytes() == expected[k]
    if streams[0].direct:
        assert any(straight), "no block was written straight from a staging buffer"
