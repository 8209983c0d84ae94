"""The function tracer's text against ftrace-format.md, line by line, from records built in memory.

The expected lines are printed one at a time with Python's own formatting, straight from
the format document (irq-info off): ``"%16s-%-7d [%03d]  %5lu.%06lu: func <-parent"``,
µs rounded as (ns+500)/1000, ``CPU:N [LOST M EVENTS]`` before the next event of the
thread that lost them.  The tracer renders whole batches with numpy; both must agree.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from ktracecli import render
from ktracecli.datadir import ThreadData, TraceData
from ktracecli.runtime.clock import ANCHOR_EVERY
from ktracecli_function.output import write_trace
from ktracecli_function.records import LEGACY_DTYPE, RECORD_DTYPE, TSC_SHIFT, decode, encode

SITES = ["main", "leaf_function", "żółw"]  # a UTF-8 name too
BIAS = 0x555555554000
SYMBOLS = {"vaddr": [0x1000, 0x1100, 0x1200], "size": [0x100, 0x100, 0x100], "name": SITES}


def _records(rows: list[tuple[int, int, int, int]]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(ns, cpu, site, parent address) rows as ring records (tsc == ns with this calibration), and
    time anchors as the consumer leaves them (each record drained as soon as it was written)."""
    out = np.zeros(len(rows), RECORD_DTYPE)
    for i, (ns, cpu, site, parent) in enumerate(rows):
        out[i] = encode(ns, site, parent, cpu, i, 20)
    return out, [(i, ns) for i, (ns, _cpu, _site, _parent) in enumerate(rows)]


def _thread(pid: int, tid: int, comm: str, rows: list[tuple[int, int, int, int]],
            lost: list[tuple[int, int]]) -> ThreadData:
    records, anchors = _records(rows)
    return ThreadData(pid, tid, comm, records, lost, anchors=anchors)


def _kept(ns: int) -> int:
    """The time a record keeps of ``ns`` ticks (the low TSC_SHIFT bits are dropped)."""
    return ns >> TSC_SHIFT << TSC_SHIFT


def _data(tmp_path: Path, threads: list[ThreadData]) -> TraceData:
    (tmp_path / "symbols").mkdir()
    (tmp_path / "symbols" / "0.json").write_text(json.dumps(SYMBOLS))
    info = {"tracer": "function", "engine": "ktrace", "ncpus": 2,
            "clock": {"tsc0": 0, "ns0": 0, "ns_per_tick": 1.0}}
    modules = [{"path": "/p", "name": "p", "bias": BIAS, "start": BIAS, "end": BIAS + 0x10000,
                "symbols": "symbols/0.json"}]
    return TraceData(tmp_path, info, SITES, modules, threads)


def _expected_line(comm: str, tid: int, cpu: int, ns: int, func: str, parent: str) -> str:
    us = (_kept(ns) + 500) // 1000
    return f"{comm[:16]:>16}-{tid:<7d} [{cpu:03d}]  {us // 1000000:5d}.{us % 1000000:06d}: {func} <-{parent}"


def test_lines_follow_the_format_document(tmp_path: Path) -> None:
    main_parent = BIAS + 0x1234         # inside żółw
    unknown = 0x7F0000001234            # in no module: printed as an address
    a = _thread(42, 42, "a-very-long-command-name", [
        (1_000_000_499, 0, 1, BIAS + 0x1010),
        (1_000_000_532, 1, 0, main_parent),
        (123_456_789_000_001, 1000, 2, unknown),   # > 99999 s and a 4-digit CPU: wider fields
    ], lost=[(2, 7)])
    b = _thread(42, 4194303, "b", [(1_000_000_600, 1, 1, BIAS + 0x1150)], lost=[(1, 3)])
    out = io.StringIO()
    write_trace(_data(tmp_path, [a, b]), out)
    lines = out.getvalue().splitlines()
    body = [line for line in lines if not line.startswith("#")]
    assert "# entries-in-buffer/entries-written: 4/14   #P:2" in lines
    assert body == [
        _expected_line(a.comm, 42, 0, 1_000_000_499, "leaf_function", "main"),
        _expected_line(a.comm, 42, 1, 1_000_000_532, "main", "żółw"),
        _expected_line("b", 4194303, 1, 1_000_000_600, "leaf_function", "leaf_function"),
        "CPU:1000 [LOST 7 EVENTS]",
        _expected_line(a.comm, 42, 1000, 123_456_789_000_001, "żółw", f"0x{unknown:x}"),
        "CPU:1 [LOST 3 EVENTS]",
    ]


def test_many_lines_in_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 5000
    ns = np.sort(rng.integers(0, 10**15, n))
    rows = [(int(t), int(rng.integers(0, 3)), int(rng.integers(0, 3)), BIAS + 0x1000 + int(rng.integers(0, 0x300)))
            for t in ns]
    data = _data(tmp_path, [_thread(7, 7, "prog", rows, [])])
    out = io.StringIO()
    from ktracecli_function import output
    output.write_trace(data, out, chunk=777)
    body = [line for line in out.getvalue().splitlines() if not line.startswith("#")]
    names = SITES
    assert body == [_expected_line("prog", 7, cpu, t, names[site], names[(parent - BIAS - 0x1000) // 0x100])
                    for t, cpu, site, parent in rows]


@pytest.mark.parametrize(("values", "width", "fill", "text"), [
    ([0, 7, 42, 99999], 5, " ", ["    0", "    7", "   42", "99999"]),
    ([5, 123456], 5, " ", ["    5", "123456"]),
    ([1, 999999], 6, "0", ["000001", "999999"]),
    ([3, 1000], 3, "0", ["003", "1000"]),
])
def test_decimal_is_printf(values: list[int], width: int, fill: str, text: list[str]) -> None:
    matrix = render.decimal(np.array(values), width, fill)
    rows = render.join_rows([matrix, render.constant("\n", len(values))]).decode().splitlines()
    assert rows == text


def test_records_keep_their_time_across_turns() -> None:
    """Stamps keep 43 bits of TSC / 32: the anchors give back the turns, over any number of them."""
    turn = 1 << (43 + TSC_SHIFT)
    ticks = [5 * turn - 64, 5 * turn + 32, 9 * turn + 12345 * 32, 9 * turn + ANCHOR_EVERY // 2]
    rows = [(t, 3, 17, 0x7FFF_FFFF_F000) for t in ticks]
    records, _ = _records(rows)
    # one anchor per batch, drained a little after its records (less than ANCHOR_EVERY)
    anchors = [(0, ticks[1] + 1000), (2, ticks[2] + ANCHOR_EVERY // 4)]
    out = decode(records.view(np.dtype((np.void, 16))), anchors)
    assert out["tsc"].tolist() == [_kept(t) for t in ticks]
    assert out["site"].tolist() == [17] * 4
    assert (out["parent"] & np.uint64((1 << 48) - 1)).tolist() == [0x7FFF_FFFF_F000] * 4
    assert (out["parent"] >> np.uint64(48)).tolist() == [3] * 4


def test_older_24_byte_records_are_read() -> None:
    old = np.zeros(2, LEGACY_DTYPE)
    old[0] = (123456789, 0x401000 | 1 << 48, 5, 1)
    old[1] = (123456999, 0x401010, 6, 2)
    out = decode(old.view(np.dtype((np.void, 24))), [])
    assert out["tsc"].tolist() == [123456789, 123456999]
    assert out["parent"].tolist() == [0x401000 | 1 << 48, 0x401010]
    assert out["site"].tolist() == [5, 6]
