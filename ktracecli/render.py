"""Rendering many text lines at once with numpy, for ``show`` at millions of lines a second.

A trace is printed in batches of lines.  Each line is a row of a byte matrix made
of columns side by side; a column is either numbers printed into a fixed width
(:func:`decimal`) or strings taken from a small table by index (:func:`pick`),
padded with NUL bytes to the table's widest entry.  :func:`join_rows` puts the
columns side by side and squeezes the NUL padding out, which leaves each line
exactly as long as its text::

    column:   task            cpu    time           name
    row 0:    "  prog-42 ["   "001"  "]  5.000001"  "main <-start\\n\\0\\0\\0"
    row 1:    "  prog-42 ["   "000"  "]  5.000002"  "leaf <-main\\n\\0\\0\\0\\0"
                                                     └ padding removed by join_rows

No byte of printed text is ever NUL, so the padding can always be told apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PAD = 0


def table(strings: Sequence[str]) -> np.ndarray:
    """The UTF-8 bytes of ``strings`` as rows of a matrix, NUL-padded to the longest."""
    encoded = [s.encode() for s in strings]
    width = max((len(e) for e in encoded), default=0)
    out = np.zeros((len(encoded), max(width, 1)), dtype=np.uint8)
    for i, e in enumerate(encoded):
        out[i, :len(e)] = np.frombuffer(e, dtype=np.uint8)
    return out[:, :width] if width else out[:, :0]


def pick(rows: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Row ``index[k]`` of the table ``rows`` for each line k (a column of strings)."""
    return rows[index]


def constant(text: str, n: int) -> np.ndarray:
    """The same text on ``n`` lines."""
    return np.broadcast_to(np.frombuffer(text.encode(), dtype=np.uint8), (n, len(text.encode())))


#: "00" .. "99": two digits per division
_PAIRS = np.frombuffer("".join(f"{i:02d}" for i in range(100)).encode(), dtype=np.uint8).reshape(100, 2)


def decimal(values: np.ndarray, width: int, fill: str = " ") -> np.ndarray:
    """Non-negative integers printed right-aligned in ``width`` columns (``fill``: ' ' or '0').

    Like ``%{width}d`` / ``%0{width}d``: a number with more digits than ``width`` gets a
    wider field, so the column is as wide as the widest number, and the narrower rows are
    NUL-padded on the left (squeezed out by :func:`join_rows`).
    """
    values = np.asarray(values, dtype=np.int64)
    if len(values) and int(values.min()) < 0:
        raise ValueError("decimal() prints non-negative numbers only")
    longest = len(str(int(values.max()))) if len(values) else 1
    total = max(width, longest)
    even = total + (total & 1)
    out = np.empty((len(values), even), dtype=np.uint8)
    rest = values.astype(np.uint32) if longest <= 9 else values.copy()
    for col in range(even - 2, -1, -2):
        rest, pair = np.divmod(rest, 100)
        out[:, col:col + 2] = _PAIRS[pair]
    out = out[:, even - total:]
    if fill == "0" and total == width:
        return out
    # blank out the leading zeros (keeping at least one digit) with the fill, then pad past the width
    digits = np.ones(len(values), dtype=np.int64)
    for power in range(1, total):
        digits += values >= 10 ** power
    position = np.arange(total)[None, :]
    if fill != "0":
        out[position < (total - digits)[:, None]] = ord(fill)
    if total > width:
        field = np.maximum(digits, width)
        out[position < (total - field)[:, None]] = PAD
    return out


def join_rows(columns: Sequence[np.ndarray]) -> bytes:
    """The lines made of ``columns`` side by side, NUL padding removed, as one bytes object."""
    if not columns or not len(columns[0]):
        return b""
    matrix = np.concatenate([np.ascontiguousarray(c) for c in columns], axis=1)
    flat = matrix.reshape(-1)
    return flat[flat != PAD].tobytes()
