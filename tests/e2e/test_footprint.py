"""``ktrace list -v``: the tracee memory each traced function takes (the RFC's worry), from a recording."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import VARIANTS, Builder, Ktrace, Variant

LINE_RE = re.compile(r"^(\S+)\s+\[(\S+)\]\s+detour (\d+) bytes$")
TOTAL_RE = re.compile(r"^# (.+): (\d+) functions traced, (\d+) bytes of detours \(([\d.]+) per function\), "
                      r"(\d+) bytes of handlers; records of (\d+) bytes in per-thread rings$")
#: the issue's target for the tracee memory of one traced function
MOST_PER_FUNCTION = 64


@pytest.mark.parametrize(("engine", "variant"), [
    ("ktrace", VARIANTS[0]),
    ("ktrace", VARIANTS[-1]),
    ("mcount", Variant("fentry-O2-pie", ("-O2", "-pg", "-mfentry", "-fPIE", "-pie"))),
])
def test_list_v_shows_each_traced_functions_detour(builder: Builder, ktrace: Ktrace, tmp_path: Path,
                                                   engine: str, variant: Variant) -> None:
    exe = builder.build("basic", variant)
    ktrace.ok("engine", engine)
    ktrace.ok("tracer", "function")
    ktrace.ok("ktrace", "clear")
    data = tmp_path / "trace.data"
    _run, summary = ktrace.record(data, [exe, "5"])
    assert summary.traced >= 5
    out = [line for line in ktrace.ok("ktrace", "list", "-v", "--data", data).stdout.splitlines()
           if not line.startswith("# session ")]
    assert out[0] == "#### all functions enabled ####"
    total = TOTAL_RE.match(out[1])
    assert total, out[1]
    functions, detour_bytes = int(total.group(2)), int(total.group(3))
    assert functions == summary.traced
    assert int(total.group(5)) > 0 and int(total.group(6)) == 16  # bytes per function-tracer record
    lines = [LINE_RE.match(line) for line in out[2:]]
    assert all(lines), out[2:]
    sizes = {m.group(1): int(m.group(3)) for m in lines if m}
    assert len(sizes) == functions, "each traced function once"
    assert sum(sizes.values()) == detour_bytes
    for name, size in sizes.items():
        assert size % 16 == 0 and 16 <= size <= MOST_PER_FUNCTION, (name, size)
    assert {m.group(2) for m in lines if m} == {exe.name}


def test_list_v_without_a_recording_prints_the_rules_only(ktrace: Ktrace) -> None:
    ktrace.ok("ktrace", "clear")
    ktrace.ok("ktrace", "add", "main")
    lines = ktrace.ok("ktrace", "list", "-v").stdout.splitlines()
    # other sessions of this user (another test run) may be listed; no recording is
    assert [line for line in lines if not line.startswith("# session ")] == ["main"]
