"""The configuration commands and ``available``, on real compiled programs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RUN_TIMEOUT, VARIANTS, Builder, Ktrace

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


#: the Typer app alone, without the fast lane of ktracecli.entry
THROUGH_TYPER = "import sys; from ktracecli.cli import main; main(sys.argv[1:])"


@pytest.mark.parametrize("args", [
    ["--mod", "libc.so.6", "/bin/true"],
    ["/bin/true", "--rejected", "--mod=libc.so*"],
    ["true"],
    ["--mod", "no-such-lib*", "/bin/true"],
    ["/no/such/program"],
    ["/etc/passwd"],
], ids=["mod", "rejected", "path-lookup", "no-match", "missing", "not-elf"])
@pytest.mark.parametrize("config", ["none", "mcount", "corrupt", "unknown-engine"])
def test_available_fast_lane_answers_as_typer_does(ktrace: Ktrace, tmp_path: Path, args: list[str],
                                                   config: str) -> None:
    """``python -m ktracecli available ...`` skips Typer: same output, errors and status as through it."""
    cfg = tmp_path / "config.toml"
    contents = {"none": None, "mcount": 'engine = "mcount"\n', "corrupt": 'engine = \n',
                "unknown-engine": 'engine = "bogus"\n'}[config]
    if contents is not None:
        cfg.write_text(contents)
    argv = ["--config", str(cfg), "available", *args]
    fast = subprocess.run([sys.executable, "-X", "importtime", "-m", "ktracecli", *argv], capture_output=True,
                          text=True, env=ktrace.env, cwd=ktrace.cwd, timeout=RUN_TIMEOUT)
    typer = subprocess.run([sys.executable, "-c", THROUGH_TYPER, *argv], capture_output=True, text=True,
                           env=ktrace.env, cwd=ktrace.cwd, timeout=RUN_TIMEOUT)
    imported = {line.rpartition("|")[2].strip() for line in fast.stderr.splitlines() if line.startswith("import time:")}
    fast_err = "".join(line + "\n" for line in fast.stderr.splitlines() if not line.startswith("import time:"))
    assert "typer" not in imported and "click" not in imported
    assert (fast.returncode, fast.stdout, fast_err) == (typer.returncode, typer.stdout, typer.stderr)
    assert "Traceback" not in typer.stderr and typer.stderr.count("\n") == 1, typer.stderr
