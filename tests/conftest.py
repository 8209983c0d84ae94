"""Shared fixtures: build the C test programs with gcc, run the ktracecli CLI, parse its output.

The programs in ``tests/programs`` count their own calls and print ``count NAME N``
lines; the end-to-end tests compare what ``ktracecli show`` recorded with those counts.
gcc (and, on our machines, static glibc) is required: when it is missing the tests fail,
they do not skip.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import pytest

PROGRAMS_DIR = Path(__file__).parent / "programs"
RUN_TIMEOUT = 300


# --------------------------------------------------------------------------- builds


@dataclass(frozen=True)
class Variant:
    """One way of compiling a test program."""

    name: str
    flags: tuple[str, ...]
    #: the C compiler (gcc unless a test asks for clang's own forms of a feature)
    compiler: str = "gcc"

    @property
    def pie(self) -> bool:
        return "-pie" in self.flags

    @property
    def static(self) -> bool:
        return "-static" in self.flags


def _matrix() -> list[Variant]:
    variants = []
    for opt in ("O0", "O2"):
        for pie_name, pie_flags in (("pie", ("-fPIE", "-pie")), ("nopie", ("-fno-pie", "-no-pie"))):
            for fp_name, fp_flag in (("fp", "-fno-omit-frame-pointer"), ("nofp", "-fomit-frame-pointer")):
                variants.append(Variant(f"{opt}-{pie_name}-{fp_name}", (f"-{opt}", *pie_flags, fp_flag)))
    return variants


#: -O0/-O2 x PIE/no-PIE x with/without frame pointer.
VARIANTS: list[Variant] = _matrix()
#: The one static build (of the basic program).
STATIC = Variant("O2-static", ("-O2", "-static", "-fomit-frame-pointer"))
VARIANT_IDS = [v.name for v in VARIANTS]


class Builder:
    """Compiles ``tests/programs/NAME.c`` (gcc) or ``NAME.cc`` (g++) once per variant into a session build dir."""

    def __init__(self, build_dir: Path, gcc: str) -> None:
        self.build_dir = build_dir
        self.gcc = gcc
        self._built: dict[tuple[str, str], Path] = {}

    def build(self, program: str, variant: Variant) -> Path:
        """The path of ``program`` compiled as ``variant`` (built on first use)."""
        key = (program, variant.name)
        if key in self._built:
            return self._built[key]
        source = PROGRAMS_DIR / f"{program}.c"
        exe = self.build_dir / f"{program}-{variant.name}"
        compiler = self.gcc if variant.compiler == "gcc" else shutil.which(variant.compiler)
        if not source.exists() and source.with_suffix(".cc").exists():
            source = source.with_suffix(".cc")
            compiler = shutil.which("g++" if variant.compiler == "gcc" else f"{variant.compiler}++")
        if compiler is None:
            pytest.fail(f"{variant.compiler} is required to build {program}-{variant.name} and is not "
                        "on PATH (scripts/setup.sh installs it when run as root)")
        cmd = [compiler, "-Wall", "-Wextra", "-Werror", *variant.flags, "-pthread",
               "-o", str(exe), str(source)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            hint = ""
            if variant.static:
                hint = " (static glibc: is libc6-dev's libc.a installed?)"
            pytest.fail(f"cannot build {exe.name}{hint}: {' '.join(cmd)}\n{proc.stderr}")
        self._built[key] = exe
        return exe


@pytest.fixture(scope="session")
def gcc() -> str:
    """The gcc to build test programs with; its absence is a failure, not a skip."""
    path = shutil.which("gcc")
    if path is None:
        pytest.fail("gcc is required to build the test programs and is not on PATH")
    return path


@pytest.fixture(scope="session")
def builder(tmp_path_factory: pytest.TempPathFactory, gcc: str) -> Builder:
    """Builds test programs into one directory shared by the whole session."""
    return Builder(tmp_path_factory.mktemp("build"), gcc)


# --------------------------------------------------------------------------- programs


@dataclass
class Run:
    """The outcome of running a program (untraced, or through ``ktracecli record``)."""

    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def shell_status(self) -> int:
        """The status a shell would report: 128+N when killed by signal N."""
        return 128 - self.returncode if self.returncode < 0 else self.returncode


def run_untraced(argv: Sequence[str | os.PathLike[str]], stdin: bytes = b"") -> Run:
    """Run a test program directly."""
    proc = subprocess.run([str(a) for a in argv], input=stdin,
                          capture_output=True, timeout=RUN_TIMEOUT)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def program_counts(stdout: bytes) -> dict[str, int]:
    """The ``count NAME N`` lines a test program printed, as {NAME: N}."""
    counts = {}
    for line in stdout.decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "count":
            counts[parts[1]] = int(parts[2])
    assert counts, f"the program printed no 'count' lines: {stdout!r}"
    return counts


def program_facts(stderr: bytes) -> dict[str, list[str]]:
    """``key value...`` lines a test program wrote on stderr (pid, mono_start, tid...)."""
    facts: dict[str, list[str]] = collections.defaultdict(list)
    for line in stderr.decode(errors="replace").splitlines():
        if line.startswith("ktracecli"):
            continue
        key, _, rest = line.partition(" ")
        facts[key].append(rest)
    return facts


# --------------------------------------------------------------------------- ktracecli


SUMMARY_RE = re.compile(
    r"^ktracecli: traced (?P<traced>\d+) functions?, refused (?P<refused>\d+)"
    r".*?(?P<events>\d+) events? recorded, (?P<lost>\d+) lost")


@dataclass(frozen=True)
class Summary:
    """The one summary line ``record`` writes on stderr."""

    traced: int
    refused: int
    events: int
    lost: int


def parse_summary(stderr: str) -> Summary:
    """Find exactly one ``ktracecli: traced ...`` line in ``stderr`` and parse it."""
    lines = [line for line in stderr.splitlines() if line.startswith("ktracecli:")]
    assert len(lines) == 1, f"expected one ktracecli summary line on stderr, got:\n{stderr}"
    match = SUMMARY_RE.match(lines[0])
    assert match, f"summary line does not follow the contract: {lines[0]!r}"
    return Summary(**{k: int(v) for k, v in match.groupdict().items()})


class Ktrace:
    """Runs ``python -m ktracecli --config CFG ...`` as a subprocess, with a private config."""

    def __init__(self, config: Path, cwd: Path, cache: Path | None = None) -> None:
        self.config = config
        self.cwd = cwd
        self.env = dict(os.environ)
        self.env["KTRACECLI_CONFIG"] = str(config)
        if cache is not None:  # never the user's own ~/.cache
            self.env["KTRACECLI_CACHE_DIR"] = str(cache)
        self.env.pop("PYTHONWARNINGS", None)

    def argv(self, *args: str | os.PathLike[str]) -> list[str]:
        return [sys.executable, "-m", "ktracecli", "--config", str(self.config),
                *(str(a) for a in args)]

    def run(self, *args: str | os.PathLike[str], stdin: bytes = b"",
            text: bool = True) -> subprocess.CompletedProcess:
        """Run one ktracecli command; never raises on a non-zero exit."""
        return subprocess.run(self.argv(*args), input=stdin.decode() if text else stdin,
                              capture_output=True, text=text, cwd=self.cwd, env=self.env,
                              timeout=RUN_TIMEOUT)

    def ok(self, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess:
        """Run one ktracecli command that must succeed."""
        proc = self.run(*args)
        assert proc.returncode == 0, (
            f"ktracecli {' '.join(map(str, args))} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def configure(self, patterns: Sequence[str] = (), tracer: str = "function") -> None:
        """engine ktrace, tracer TRACER, and exactly ``patterns`` in the ktrace list."""
        self.ok("engine", "ktrace")
        self.ok("tracer", tracer)
        self.ok("ktrace", "clear")
        if patterns:
            self.ok("ktrace", "add", *patterns)

    def record(self, data_dir: Path, argv: Sequence[str | os.PathLike[str]],
               stdin: bytes = b"") -> tuple[Run, Summary]:
        """``record -o DATA_DIR -- ARGV``: the program's outcome, and the summary line."""
        proc = self.run("record", "-o", data_dir, "--", *argv, stdin=stdin, text=False)
        err = proc.stderr.decode(errors="replace")
        assert "Traceback" not in err, err
        return Run(proc.returncode, proc.stdout, proc.stderr), parse_summary(err)

    def show(self, data_dir: Path) -> "ShowOutput":
        """``show DATA_DIR``, parsed strictly."""
        return parse_show(self.ok("show", data_dir).stdout)


@pytest.fixture(scope="session")
def analysis_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One analysis cache for the whole test session (libc is analysed once, not per test)."""
    return tmp_path_factory.mktemp("analysis-cache")


@pytest.fixture(scope="session", autouse=True)
def private_cache(analysis_cache_dir: Path) -> Iterator[None]:
    """The session's cache for everything else too (in-process registries, commands run without
    the ``ktrace`` fixture): never the user's own ~/.cache."""
    before = os.environ.get("KTRACECLI_CACHE_DIR")
    os.environ["KTRACECLI_CACHE_DIR"] = str(analysis_cache_dir)
    yield
    if before is None:
        del os.environ["KTRACECLI_CACHE_DIR"]
    else:
        os.environ["KTRACECLI_CACHE_DIR"] = before


@pytest.fixture
def ktrace(tmp_path: Path, analysis_cache_dir: Path) -> Ktrace:
    """A ktracecli runner whose config file lives in this test's tmp_path."""
    work = tmp_path / "cwd"
    work.mkdir()
    return Ktrace(tmp_path / "ktracecli.toml", work, analysis_cache_dir)


# --------------------------------------------------------------------------- show output


ENTRY_RE = re.compile(r"^\s*(\S.*)-(\d+)\s+\[(\d{3})\]\s+(\d+\.\d{6}): (\S+) <-(\S+)$")
LOST_RE = re.compile(r"^CPU:(\d+) \[LOST (\d+ )?EVENTS\]$")
ENTRIES_RE = re.compile(r"^# entries-in-buffer/entries-written: (\d+)/(\d+)   #P:(\d+)$")


@dataclass(frozen=True)
class Entry:
    """One function-tracer line."""

    comm: str
    tid: int
    cpu: int
    timestamp: float
    func: str
    parent: str


@dataclass
class ShowOutput:
    """``ktracecli show`` output of the function tracer, checked line by line."""

    header: list[str]
    entries: list[Entry]
    lost: list[tuple[int, int | None]]
    in_buffer: int
    written: int
    cpus: int
    counts: collections.Counter = field(default_factory=collections.Counter)

    def of(self, func: str) -> list[Entry]:
        """The entries of one function."""
        return [e for e in self.entries if e.func == func]


def parse_show(text: str) -> ShowOutput:
    """Parse function-tracer output; any line that fits no known form fails the test."""
    lines = text.splitlines()
    assert lines and lines[0] == "# tracer: function", f"bad first line: {lines[:1]!r}"
    header: list[str] = []
    entries: list[Entry] = []
    lost: list[tuple[int, int | None]] = []
    totals = None
    for line in lines:
        if line.startswith("#"):
            assert not entries, f"header line after the first entry: {line!r}"
            header.append(line)
            match = ENTRIES_RE.match(line)
            if match:
                totals = tuple(int(g) for g in match.groups())
            continue
        match = ENTRY_RE.match(line)
        if match:
            comm, tid, cpu, ts, func, parent = match.groups()
            # "%16s-%-7d [%03d]": comm right-aligned in 16 columns, tid left-aligned in 7.
            assert match.start(2) - 1 >= 16, f"comm column narrower than 16: {line!r}"
            assert match.start(3) - 1 - match.start(2) >= 8, f"tid column narrower than 7: {line!r}"
            entries.append(Entry(comm.strip(), int(tid), int(cpu), float(ts), func, parent))
            continue
        match = LOST_RE.match(line)
        if match:
            n = match.group(2)
            lost.append((int(match.group(1)), int(n) if n else None))
            continue
        raise AssertionError(f"line fits neither the header, an entry nor a LOST line: {line!r}")
    assert totals is not None, "no '# entries-in-buffer/entries-written: E/W   #P:N' line"
    in_buffer, written, cpus = totals
    out = ShowOutput(header, entries, lost, in_buffer, written, cpus)
    out.counts = collections.Counter(e.func for e in entries)
    return out


# --------------------------------------------------------------------------- errors


def assert_user_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """A failure the user can act on: non-zero, one ``ktracecli: `` line on stderr, no traceback."""
    err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode(errors="replace")
    assert proc.returncode != 0, f"expected a failure, got exit 0; stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith("ktracecli: "), lines[0]
    for word in words:
        assert word.lower() in lines[0].lower(), f"{word!r} not in {lines[0]!r}"
    return lines[0]


# --------------------------------------------------------------------------- function_graph output


GRAPH_BODY_RE = re.compile(r"^(?:(?P<leaf>[^\s(){}]+)\(\);|(?P<open>[^\s(){}]+)\(\) \{|\}(?: /\* (?P<tail>[^\s*]+) \*/)?)$")
GRAPH_DASHES = " " + "-" * 42
LOST_LINE_RE = re.compile(r"^CPU:(\d+) \[LOST (\d+) EVENTS\]$")


@dataclass(frozen=True)
class GraphLine:
    """One function_graph line: the columns it had and what its body says."""

    cpu: int | None
    duration: float | None   #: microseconds; None for a filled (empty) duration column
    mark: str | None
    depth: int
    kind: str                #: "leaf" (func();), "open" (func() {) or "close" (} or } /* func */)
    func: str | None         #: None for a bare }
    tid: int | None          #: from the proc column or the --per-thread heading
    comm: str | None = None
    abstime: float | None = None

    @property
    def text(self) -> str:
        """The line with columns and times normalised away: indent and body."""
        body = {"leaf": f"{self.func}();", "open": f"{self.func}() {{"}.get(self.kind)
        if body is None:
            body = "}" if self.func is None else f"}} /* {self.func} */"
        return "  " * self.depth + body


@dataclass
class GraphOutput:
    """``show`` output of the function_graph tracer, checked line by line."""

    header: list[str]
    lines: list[GraphLine]
    lost: list[tuple[int, int]]
    switches: list[tuple[int, str, str]]       #: (cpu, old comm-tid, new comm-tid)
    threads: dict[int, list[GraphLine]]        #: by tid (with --per-thread, or funcgraph-proc)

    def tree(self, tid: int | None = None) -> str:
        """The normalised lines (of one thread), one per line."""
        lines = self.lines if tid is None else self.threads[tid]
        return "\n".join(line.text for line in lines)

    def counts(self, tid: int | None = None) -> tuple[collections.Counter, collections.Counter]:
        """(entries, exits) per function: a leaf is both; a bare } exits what opened at its depth."""
        lines = self.lines if tid is None else self.threads[tid]
        entries: collections.Counter = collections.Counter()
        exits: collections.Counter = collections.Counter()
        opened: dict[int, str] = {}
        for line in lines:
            if line.kind in ("leaf", "open"):
                entries[line.func] += 1
                if line.kind == "leaf" and line.duration is not None:
                    exits[line.func] += 1
                if line.kind == "open":
                    opened[line.depth] = line.func
            else:
                func = line.func or opened.get(line.depth)
                assert func is not None, f"a bare }} closes nothing at depth {line.depth}"
                exits[func] += 1
                opened.pop(line.depth, None)
        return entries, exits


def _duration_column(text: str, line: str) -> tuple[float | None, str | None]:
    """Parse the 14-column duration field (without its '|  ')."""
    if text == " " * 14:
        return None, None
    match = re.fullmatch(r"([ +!#*@$]) (\d+(?:\.\d{1,3})?) us +", text)
    assert match and len(text) == 14, f"bad duration column {text!r} in {line!r}"
    number = match.group(2)
    if "." in number:
        assert len(number) <= 8 and len(number.split(".")[1]) == min(3, 7 - len(number.split(".")[0])), line
    else:
        assert len(number) >= 7, f"a duration under 7 digits without decimals: {line!r}"
    return float(number), match.group(1)


def parse_graph(text: str, cpu: bool = True, duration: bool = True, proc: bool = False,
                abstime: bool = False) -> GraphOutput:
    """Parse function_graph output printed with the given columns; any line of no known form fails."""
    raw = text.split("\n")
    assert raw and raw[-1] == "", "output does not end with a newline"
    raw.pop()
    assert raw[0] == "# tracer: function_graph", f"bad first line: {raw[0]!r}"
    prefix = ""
    if abstime:
        prefix += r"(?P<abstime> *\d+\.\d{6}) \|  "
    if cpu:
        prefix += r" (?P<cpu> *\d+)\) "
    if proc:
        prefix += r"(?P<proc>.{14}) \| "
    if duration:
        prefix += r"(?P<duration>.{14})\|  "
    line_re = re.compile(f"^{prefix}(?P<indent>(?:  )*)(?P<body>\\S.*)$")
    header: list[str] = []
    lines: list[GraphLine] = []
    lost: list[tuple[int, int]] = []
    switches: list[tuple[int, str, str]] = []
    threads: dict[int, list[GraphLine]] = collections.defaultdict(list)
    heading: tuple[str, int] | None = None
    i = 0
    while i < len(raw):
        line = raw[i]
        i += 1
        if line.startswith("#") and not lines and heading is None and not re.match(r"^# \S+-\d+$", line):
            header.append(line)
            continue
        match = re.match(r"^# (\S+)-(\d+)$", line)
        if match:
            heading = (match.group(1), int(match.group(2)))
            assert heading[1] not in threads, f"thread {heading[1]} headed twice"
            continue
        if line == "" and heading is not None and i < len(raw) and raw[i].startswith("# "):
            continue  # the blank line between two threads
        match = LOST_LINE_RE.match(line)
        if match:
            lost.append((int(match.group(1)), int(match.group(2))))
            continue
        if line == GRAPH_DASHES:
            switch = re.match(r"^ *(\d+)\) (.{14}) => (.{14})$", raw[i])
            assert switch, f"task-switch line expected after the dashes: {raw[i]!r}"
            assert raw[i + 1] == GRAPH_DASHES and raw[i + 2] == "", raw[i:i + 3]
            switches.append((int(switch.group(1)), switch.group(2).strip(), switch.group(3).strip()))
            i += 3
            continue
        match = line_re.match(line)
        assert match, f"line of no known function_graph form: {line!r}"
        body = GRAPH_BODY_RE.match(match.group("body"))
        assert body, f"bad function_graph body in {line!r}"
        dur, mark = _duration_column(match.group("duration"), line) if duration else (None, None)
        kind = "leaf" if body.group("leaf") else "open" if body.group("open") else "close"
        func = body.group("leaf") or body.group("open") or body.group("tail")
        comm, tid = heading if heading else (None, None)
        if proc:
            comm, _, tid_text = match.group("proc").strip().rpartition("-")
            tid = int(tid_text)
        graph_line = GraphLine(int(match.group("cpu")) if cpu else None, dur, mark,
                               len(match.group("indent")) // 2, kind, func, tid, comm,
                               float(match.group("abstime")) if abstime else None)
        if kind == "open":
            assert dur is None, f"an open line with a duration: {line!r}"
        lines.append(graph_line)
        if tid is not None:
            threads[tid].append(graph_line)
    assert header[:1] == ["# tracer: function_graph"], header
    return GraphOutput(header, lines, lost, switches, dict(threads))


def assert_nesting(lines: Sequence[GraphLine], start_depth: int | None = None) -> None:
    """Every line sits at the depth its enclosing opens give it (a trace may start mid-call)."""
    depth = lines[0].depth if start_depth is None and lines else (start_depth or 0)
    for line in lines:
        if line.kind == "close":
            depth -= 1
        assert line.depth == depth, f"{line.text!r} at depth {line.depth}, expected {depth}"
        if line.kind == "open":
            depth += 1
