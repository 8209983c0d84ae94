"""The configuration commands and ``available``, on real compiled programs."""

from __future__ import annotations

import re
from conftest import VARIANTS, Builder, Ktrace

OUR_FUNCTIONS = {"leaf_a", "leaf_b", "mid", "top", "fib", "main"}
AVAILABLE_LINE = re.compile(r"^\S+( \[\S+\])?$")


def test_config_lives_where_asked(ktrace: Ktrace) -> None:
    ktrace.ok("engine", "ktrace")
    ktrace.ok("tracer", "function")
    assert ktrace.config.is_file()
    assert not any(ktrace.cwd.iterdir()), "ktracecli wrote into the working directory"


def test_tracer_names(ktrace: Ktrace) -> None:
    for name in ("nop", "function"):
        ktrace.ok("tracer", name)


def test_ktrace_list_add_clear(ktrace: Ktrace) -> None:
    ktrace.ok("engine", "ktrace")
    ktrace.ok("ktrace", "clear")
    assert "leaf_a" not in ktrace.ok("ktrace", "list").stdout
    ktrace.ok("ktrace", "add", "leaf_a", "fib*", "toupper:mod:libc.so.6")
    listed = ktrace.ok("ktrace", "list").stdout
    for pattern in ("leaf_a", "fib*", "toupper:mod:libc.so.6"):
        assert pattern in listed, listed
    ktrace.ok("ktrace", "clear")
    listed = ktrace.ok("ktrace", "list").stdout
    assert "leaf_a" not in listed and "fib*" not in listed, listed


def test_available_lists_the_programs_functions(builder: Builder, ktrace: Ktrace) -> None:
    for variant in (VARIANTS[0], VARIANTS[-1]):
        exe = builder.build("basic", variant)
        proc = ktrace.ok("available", exe)
        lines = proc.stdout.splitlines()
        for line in lines:
            assert AVAILABLE_LINE.match(line), f"not 'name' or 'name [lib]': {line!r}"
        names = {line.split(" ")[0] for line in lines}
        assert OUR_FUNCTIONS <= names, OUR_FUNCTIONS - names
        assert proc.stderr.strip(), "available printed no summary on stderr"
        rejected = ktrace.ok("available", exe, "--rejected").stdout.splitlines()
        for line in rejected:
            name, sep, reason = line.partition("\t")
            assert sep and name and reason.strip(), f"not 'name<TAB>reason': {line!r}"
            assert name not in OUR_FUNCTIONS, f"{name} refused: {reason}"


def test_available_in_a_shared_library(builder: Builder, ktrace: Ktrace) -> None:
    exe = builder.build("libcall", VARIANTS[-1])
    lines = ktrace.ok("available", exe, "--mod", "libc.so.6").stdout.splitlines()
    assert any(re.fullmatch(r"toupper( \[libc\.so\.6\])?", line) for line in lines), lines[:20]
    assert not any(line.split(" ")[0] == "main" for line in lines)


def test_available_counts_each_refusal(builder: Builder, ktrace: Ktrace) -> None:
    exe = builder.build("refused", VARIANTS[2])
    rejected = ktrace.ok("available", exe, "--rejected").stdout.splitlines()
    names = [line.split("\t")[0] for line in rejected]
    assert names.count("tiny") == 1 and names.count("loopy") == 1, rejected
