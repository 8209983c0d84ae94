"""Building the benchmark's workloads and running them untraced, under ktracecli and under uftrace.

Each run returns a :class:`Sample`: what the workload measured itself (its loop time,
its threads' CPU time, its own peak memory) and what the tracer reported (events,
lost events, bytes written, ktracecli's peak memory and set-up time from info.json).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD_DIR = HERE / "_build"
FUNCTION = "bench_target"
SUMMARY_RE = re.compile(r"^ktracecli: traced (\d+) functions?, refused (\d+)"
                        r".*?(\d+) events? recorded, (\d+) lost", re.M)

#: the workload's builds: name -> gcc flags (the mcount engine's forms, and a plain -O2 build)
BUILDS: dict[str, tuple[str, ...]] = {
    "O2": ("-O2",),
    "O2-pg": ("-O2", "-pg"),
    "O2-fentry": ("-O2", "-pg", "-mfentry"),
    "O2-nop-mcount": ("-O2", "-pg", "-mfentry", "-mnop-mcount", "-mrecord-mcount", "-fno-pie", "-no-pie"),
    "O2-patchable5": ("-O2", "-fpatchable-function-entry=5"),
}


class BenchError(Exception):
    """A run that failed; the message says which and why."""


def build(source: Path, name: str, flags: tuple[str, ...]) -> Path:
    """Compile ``source`` with gcc into bench/_build/NAME (once per bench run)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        sys.exit("bench: gcc is required")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    exe = BUILD_DIR / name
    subprocess.run([gcc, *flags, "-pthread", "-o", str(exe), str(source)], check=True)
    return exe


def many_functions_source(count: int) -> Path:
    """A C program with ``count`` small functions, each called once by main (for start-up times)."""
    path = BUILD_DIR / f"many{count}.c"
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    lines = ["#include <stdio.h>", "volatile long sink;"]
    lines += [f"__attribute__((noipa)) long f{i}(long x) {{ return x * {i + 3} + sink; }}" for i in range(count)]
    lines.append("int main(void) {\n    long s = 0;")
    lines += [f"    s += f{i}(s);" for i in range(count)]
    lines.append('    printf("sum %ld\\n", s);\n    return 0;\n}')
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Sample:
    """One run's figures."""

    wall_s: float
    loop_ns: int = 0
    cpu_ns: int = 0
    tracee_rss_kb: int = 0
    events: int | None = None
    lost: int | None = None
    event_bytes: int | None = None
    ktracecli_rss_kb: int | None = None
    setup_s: float | None = None
    traced: int | None = None


@dataclass
class Series:
    """Several runs of one case and their medians."""

    samples: list[Sample] = field(default_factory=list)
    error: str = ""

    def median(self, name: str) -> float | None:
        values = [getattr(s, name) for s in self.samples if getattr(s, name) is not None]
        return statistics.median(values) if values else None


def workload_figures(stdout: str) -> dict[str, int]:
    """The ``key value`` lines the workload printed."""
    out = {}
    for line in stdout.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


def _timed(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
           ) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd)
    return time.perf_counter() - start, proc


def _from_workload(sample: Sample, stdout: str, calls: int | None) -> Sample:
    figures = workload_figures(stdout)
    if calls is not None and figures.get("calls") != calls:
        raise BenchError(f"the workload did not report {calls} calls: {stdout[-300:]!r}")
    sample.loop_ns = figures.get("loop_ns", 0)
    sample.cpu_ns = figures.get("cpu_ns", 0)
    sample.tracee_rss_kb = figures.get("maxrss_kb", 0)
    return sample


def dir_bytes(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_untraced(argv: list[str], calls: int | None) -> Sample:
    """The program alone."""
    wall, proc = _timed(argv)
    if proc.returncode != 0:
        raise BenchError(f"{argv[0]} exited {proc.returncode}: {proc.stderr[-300:]}")
    return _from_workload(Sample(wall), proc.stdout, calls)


class Ktracecli:
    """ktracecli with a private config file and analysis cache."""

    def __init__(self, work: Path, cache: Path | None = None) -> None:
        self.config = work / "ktracecli.toml"
        self.work = work
        self.env = dict(os.environ)
        self.env["KTRACECLI_CACHE_DIR"] = str(cache) if cache is not None else str(work / "cache")

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ktracecli", "--config", str(self.config), *args]

    def ok(self, *args: str) -> str:
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, env=self.env)
        if proc.returncode != 0:
            raise BenchError(f"ktracecli {' '.join(args)}: {proc.stderr.strip()[-300:]}")
        return proc.stdout

    def tracers(self) -> list[str]:
        return self.ok("tracer", "--list").split()

    def configure(self, engine: str, tracer: str, patterns: list[str]) -> None:
        self.ok("engine", engine)
        self.ok("tracer", tracer)
        self.ok("ktrace", "clear")
        if patterns:
            self.ok("ktrace", "add", *patterns)

    def record(self, argv: list[str], calls: int | None, data: Path, env: dict[str, str] | None = None,
               keep: bool = False) -> Sample:
        """``ktracecli record -o DATA -- ARGV`` with the configuration as it is (DATA removed unless ``keep``)."""
        wall, proc = _timed(self.argv("record", "-o", str(data), "--", *argv), env=env or self.env)
        match = SUMMARY_RE.search(proc.stderr)
        if proc.returncode != 0 or match is None:
            raise BenchError(f"record exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
        sample = _from_workload(Sample(wall), proc.stdout, calls)
        sample.traced, sample.events, sample.lost = int(match.group(1)), int(match.group(3)), int(match.group(4))
        events_dir = data / "events"
        sample.event_bytes = dir_bytes(events_dir) if events_dir.is_dir() else None
        try:
            info = json.loads((data / "info.json").read_text())
        except (OSError, ValueError):
            info = {}
        sample.ktracecli_rss_kb = info.get("ktracecli_maxrss_kb")
        sample.setup_s = info.get("setup_s")
        if not keep:
            shutil.rmtree(data, ignore_errors=True)
        return sample


def run_uftrace(uftrace: str, args: list[str], argv: list[str], calls: int, data: Path) -> Sample:
    """``uftrace record ARGS ARGV``; uftrace records each call's entry and exit."""
    wall, proc = _timed([uftrace, "record", "--no-pager", "-d", str(data), *args, *argv])
    if proc.returncode != 0:
        raise BenchError(f"uftrace exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    sample = _from_workload(Sample(wall), proc.stdout, calls)
    sample.events = 2 * calls
    sample.event_bytes = dir_bytes(data)
    shutil.rmtree(data, ignore_errors=True)
    return sample


def repeat(runs: int, once: "callable[[int], Sample]") -> Series:  # type: ignore[valid-type]
    """``runs`` samples of ``once(i)``; a failure ends the series with its message."""
    series = Series()
    for i in range(runs):
        try:
            series.samples.append(once(i))
        except BenchError as exc:
            series.error = str(exc)
            break
    return series
