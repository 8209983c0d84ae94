"""Rendering many text lines at once with numpy, for ``show`` at millions of lines a second.

A trace is printed in batches of lines.  Each line is a row of a byte matrix made
of columns side by side; a column is either numbers printed into a fixed width
(:func:`decimal`, :func:`fixed_point`) or strings taken from a small table by index
(:func:`pick`), padded with NUL bytes to the table's widest entry.  :func:`join_rows`
puts the columns side by side and squeezes the NUL bytes out, which leaves each
line exactly as long as its text::

    column:   task            cpu    time           name
    row 0:    "  prog-42 ["   "001"  "]  5.000001"  "main <-start\\n\\0\\0\\0"
    row 1:    "  prog-42 ["   "000"  "]  5.000002"  "leaf <-main\\n\\0\\0\\0\\0"
                                                     └ padding removed by join_rows

No byte of printed text is ever NUL, so the padding can always be told apart, and
it may be anywhere in a column: numbers are printed 4 digits at a time from a table
of 10,000 four-byte groups, NUL-padded on the left.  The last column may also be a
list of strings of any length (:func:`join_rows`' ``last``), and lines that do not
fit the columns are spliced in between rows (``inserts``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PAD = 0


def table(strings: Sequence[str]) -> np.ndarray:
    """The UTF-8 bytes of ``strings`` as rows of a matrix, NUL-padded to the longest."""
    return _padded([s.encode() for s in strings])


def _padded(encoded: Sequence[bytes]) -> np.ndarray:
    """``encoded`` as rows of a matrix, NUL-padded to the longest."""
    sizes = np.array([len(e) for e in encoded], dtype=np.int64)
    width = int(sizes.max()) if len(encoded) else 0
    out = np.zeros((len(encoded), width), dtype=np.uint8)
    out[np.arange(width)[None, :] < sizes[:, None]] = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    return out


def pick(rows: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Row ``index[k]`` of the table ``rows`` for each line k (a column of strings)."""
    return np.take(rows, index, axis=0)


def constant(text: str, n: int) -> np.ndarray:
    """The same text on ``n`` lines."""
    return np.broadcast_to(np.frombuffer(text.encode(), dtype=np.uint8), (n, len(text.encode())))


def _quad_table(zero: str) -> np.ndarray:
    """0 .. 9999 as 4 bytes each, viewed as one uint32 each: NUL-padded ("\\0\\0\\042"; 0 is
    ``zero``), then the same numbers zero-padded ("0042") at index + 10000."""
    padded = [f"{i:4d}".replace(" ", "\x00") for i in range(10_000)]
    padded[0] = zero
    text = "".join(padded) + "".join(f"{i:04d}" for i in range(10_000))
    return np.frombuffer(text.encode(), dtype=np.uint8).view(np.uint32)


#: a number's digits are printed 4 at a time, from its lowest group: a group with digits above
#: it is zero-padded, the highest is NUL-padded, and 0 alone prints as "0"
_HIGH_QUADS = _quad_table("\x00\x00\x00\x00")
_LOW_QUADS = _quad_table("\x00\x00\x000")
#: 10**1 .. 10**18
_POWERS = np.array([10 ** k for k in range(1, 19)], dtype=np.int64)


def digits(values: np.ndarray) -> np.ndarray:
    """How many decimal digits each non-negative integer of ``values`` has (0 has one)."""
    return np.searchsorted(_POWERS, np.asarray(values, dtype=np.int64), side="right") + 1


def _put_digits(values: np.ndarray, out: np.ndarray, first: int, quads: int) -> None:
    """Print non-negative ``values`` into the uint32 columns first .. first + quads - 1 of ``out``,
    right-aligned and NUL-padded (``quads`` groups of 4 digits must hold the largest)."""
    rest = values.astype(np.uint32) if quads <= 2 else values
    for col in range(first + quads - 1, first - 1, -1):
        table = _LOW_QUADS if col == first + quads - 1 else _HIGH_QUADS
        if col == first:
            out[:, col] = table[rest]
        else:
            rest, group = np.divmod(rest, 10_000)
            out[:, col] = table[group + 10_000 * (rest > 0)]


def _spaces(width: int, fill: str) -> np.ndarray:
    """k fill characters for k = 0 .. width, NUL-padded to a multiple of 4 bytes, as uint32 rows."""
    size = -(-width // 4) * 4
    rows = [(fill * k).rjust(size, "\x00") for k in range(width + 1)]
    return np.frombuffer("".join(rows).encode(), dtype=np.uint8).view(np.uint32).reshape(width + 1, size // 4)


def decimal(values: np.ndarray, width: int, fill: str = " ") -> np.ndarray:
    """Integers printed right-aligned in ``width`` columns (``fill``: ' ' or '0').

    Like ``%{width}d`` / ``%0{width}d``: a number with more characters than ``width`` gets a
    wider field; the rest of the column is NUL (squeezed out by :func:`join_rows`).  Negative
    numbers take a ``-`` before their digits (with the ' ' fill only).
    """
    values = np.asarray(values, dtype=np.int64)
    negative = values < 0
    signed = bool(negative.any())
    if signed:
        if fill == "0":
            raise ValueError("decimal() prints negative numbers with the ' ' fill only")
        values = np.abs(values)
    count = digits(values)
    size = count + negative if signed else count
    longest = int(count.max()) if len(values) else 1
    quads = -(-(longest + signed) // 4)
    fill_len = np.maximum(width - size, 0)
    spaces = _spaces(width, fill) if fill_len.any() else np.zeros((width + 1, 0), dtype=np.uint32)
    out = np.empty((len(values), spaces.shape[1] + quads), dtype=np.uint32)
    if spaces.shape[1]:
        out[:, :spaces.shape[1]] = np.take(spaces, fill_len, axis=0)
    _put_digits(values, out, spaces.shape[1], quads)
    text = out.view(np.uint8)
    if signed:
        rows = np.flatnonzero(negative)
        text[rows, text.shape[1] - count[rows] - 1] = ord("-")
    # leave out the columns that are NUL on every row
    return text[:, 4 * spaces.shape[1] - width if spaces.shape[1] else 4 * quads - longest - signed:]


_FRACTIONS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _fractions(decimals: int) -> tuple[np.ndarray, np.ndarray]:
    """"." and the first k of ``decimals`` digits, for k = 0 .. decimals (k = 0: nothing), in one
    table of uint32 rows (entry: start[k] + the fraction's first k digits), and the starts."""
    if decimals not in _FRACTIONS:
        texts: list[str] = []
        starts: list[int] = []
        for k in range(decimals + 1):
            starts.append(len(texts))
            texts += [f".{i:0{k}d}" if k else "" for i in range(10 ** k)]
        size = -(-(decimals + 1) // 4) * 4
        rows = np.zeros((len(texts), size), dtype=np.uint8)
        rows[:, :decimals + 1] = table(texts)
        _FRACTIONS[decimals] = (rows.view(np.uint32), np.array(starts, dtype=np.int64))
    return _FRACTIONS[decimals]


def fixed_point(values: np.ndarray, decimals: int, most: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative fixed-point numbers (units of 10**-decimals) with at most ``most`` digits when cut.

    The integer part is printed in full; it is followed by a point and the first
    min(``decimals``, ``most`` - its digits) digits of the fraction, truncated, when that
    is at least one (the kernel's function_graph durations: ``0.313``, ``33998.59``,
    ``3594274``).  Returns the column (NUL-padded) and the length of each row's text.
    ``decimals`` is small: a table of its 10**decimals fractions is made on first use.
    """
    values = np.asarray(values, dtype=np.int64)
    whole, fraction = np.divmod(values, 10 ** decimals)
    count = digits(whole)
    shown = np.clip(most - count, 0, decimals)
    lengths = count + np.where(shown > 0, shown + 1, 0)
    longest = int(count.max()) if len(values) else 1
    quads = -(-longest // 4)
    fractions, starts = _fractions(decimals) if shown.any() else (np.zeros((1, 0), np.uint32), None)
    out = np.empty((len(values), quads + fractions.shape[1]), dtype=np.uint32)
    _put_digits(whole, out, 0, quads)
    if starts is not None:
        cut = np.take(np.array([10 ** k for k in range(decimals + 1)], dtype=np.int64), decimals - shown)
        out[:, quads:] = np.take(fractions, starts[shown] + fraction // cut, axis=0)
    return out.view(np.uint8)[:, 4 * quads - longest:], lengths


def factorize(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``keys`` (sorted) and the index of each key among them, like
    ``np.unique(keys, return_inverse=True)``, in linear time when the keys span a narrow range."""
    keys = np.asarray(keys, dtype=np.int64)
    if not len(keys):
        return keys, np.zeros(0, dtype=np.intp)
    low, high = int(keys.min()), int(keys.max())
    if high - low > 4 * len(keys) + 1024:
        distinct, inverse = np.unique(keys, return_inverse=True)
        return distinct, inverse.reshape(-1)
    offset = keys - low
    present = np.zeros(high - low + 1, dtype=np.intp)
    present[offset] = 1
    slot = np.cumsum(present) - 1
    return np.flatnonzero(present) + low, slot[offset]


def join_rows(columns: Sequence[np.ndarray], inserts: Sequence[tuple[int, bytes]] = (),
              last: tuple[Sequence[bytes], np.ndarray] | None = None) -> bytes:
    """The lines made of ``columns`` side by side, NUL padding removed, as one bytes object.

    ``last`` is an optional last column of UTF-8 strings of any length: (strings, index of
    each row's string).  When a few of them are far longer than the rest (deeply indented
    calls), padding every row to the longest would cost more than the text: the long
    ones are then cut into pieces, each on a row of its own (see :func:`_wrapped`).

    ``inserts`` are (row, text) pairs, sorted by row: each text is put before that row
    (after the last row when it is the number of rows), for lines that do not fit the
    columns (task switches, lost events).
    """
    n = len(columns[0]) if columns else (len(last[1]) if last is not None else 0)
    if not n:
        return b"".join(text for _, text in inserts)
    ends_at: np.ndarray | None = None  # the last matrix row of each line, when not the line itself
    if last is not None:
        columns, ends_at = _wrapped(columns, _padded(last[0]), last[1])
    matrix = np.concatenate(columns, axis=1)
    kept = matrix != PAD
    text = matrix.reshape(-1)[kept.reshape(-1)].tobytes()
    if not inserts:
        return text
    ends = np.cumsum(np.count_nonzero(kept, axis=1))
    ends_list = (ends if ends_at is None else ends[ends_at]).tolist()
    pieces, done = [], 0
    for row, extra in inserts:
        at = ends_list[row - 1] if row else 0
        pieces += [text[done:at], extra]
        done = at
    pieces.append(text[done:])
    return b"".join(pieces)


def _wrapped(columns: Sequence[np.ndarray], strings: np.ndarray,
             index: np.ndarray) -> tuple[list[np.ndarray], np.ndarray | None]:
    """``columns`` and a last column of rows of ``strings`` (``index``), with the strings cut into
    pieces of the width that makes the smallest matrix; a line whose string takes k pieces
    takes k rows, the other columns NUL on all but the first (NULs are squeezed out, so the
    rows of a line join up again).  Also the last row of each line (None: one row each)."""
    sizes = np.count_nonzero(strings, axis=1)
    used = np.bincount(index, minlength=len(strings))
    head = sum(c.shape[1] for c in columns)
    widths = [w for w in (16, 32, 64, 128, 256, 512, 1024) if w < strings.shape[1]] + [strings.shape[1]]
    cells = [(head + w) * int(used @ np.maximum(-(-sizes // max(w, 1)), 1)) for w in widths]
    width = widths[int(np.argmin(cells))]
    if width == strings.shape[1]:
        return [*columns, pick(strings, index)], None
    pieces = -(-strings.shape[1] // width)
    chunks = np.zeros((len(strings), pieces * width), dtype=np.uint8)
    chunks[:, :strings.shape[1]] = strings
    chunks = chunks.reshape(len(strings) * pieces, width)
    rows = np.maximum(-(-sizes // width), 1)[index]
    line = np.repeat(np.arange(len(index)), rows)
    first = np.cumsum(rows) - rows
    piece = np.arange(len(line)) - first[line]
    out = []
    if columns:
        heads = np.zeros((len(line), head), dtype=np.uint8)
        heads[first] = np.concatenate(columns, axis=1)
        out.append(heads)
    out.append(np.take(chunks, index[line] * pieces + piece, axis=0))
    return out, first + rows - 1
