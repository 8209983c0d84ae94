"""Overhead of ktracecli's ktrace engine + function tracer on one hot function.

    python bench/bench.py [--calls N] [--runs R]

Builds bench/workload.c with gcc -O2 (a loop of N calls to ``bench_target``), then runs
it R times untraced and R times under ``ktracecli record`` with only ``bench_target``
traced, and prints medians: wall time (time.perf_counter around the whole subprocess,
start-up and patching included) and the loop time the workload measures itself with
clock_gettime (start-up excluded); nanoseconds of overhead per traced call, events
recorded and lost (from the summary line) and bytes per event (the data directory's
``events/`` files).  When ``uftrace`` is on PATH the same workload is traced with it
too, and the ktracecli/uftrace ratio printed; when it is not, a line says so.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
FUNCTION = "bench_target"
SUMMARY_RE = re.compile(r"^ktracecli: traced (\d+) functions?, refused (\d+)"
                        r".*?(\d+) events? recorded, (\d+) lost", re.M)


@dataclass
class Row:
    """The measurements of one way of running the workload."""

    name: str
    build: str
    wall_s: list[float] = field(default_factory=list)
    loop_ns: list[int] = field(default_factory=list)
    events: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    event_bytes: list[int] = field(default_factory=list)
    error: str = ""

    def median_wall(self) -> float:
        return statistics.median(self.wall_s)

    def median_loop(self) -> float:
        return statistics.median(self.loop_ns)


def build(source: Path, exe: Path, flags: list[str]) -> None:
    gcc = shutil.which("gcc")
    if gcc is None:
        sys.exit("bench: gcc is required")
    exe.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([gcc, *flags, "-o", str(exe), str(source)], check=True)


def run_timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    return time.perf_counter() - start, proc


def loop_ns(stdout: str, calls: int) -> int:
    values = dict(line.split(None, 1) for line in stdout.splitlines() if " " in line)
    if int(values.get("calls", -1)) != calls:
        raise RuntimeError(f"the workload did not report {calls} calls: {stdout!r}")
    return int(values["loop_ns"])


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def ktracecli(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "ktracecli", "--config", str(config), *args]


def bench_untraced(exe: Path, calls: int, runs: int) -> Row:
    row = Row("untraced", exe.name)
    for _ in range(runs):
        wall, proc = run_timed([str(exe), str(calls)])
        proc.check_returncode()
        row.wall_s.append(wall)
        row.loop_ns.append(loop_ns(proc.stdout, calls))
    return row


def bench_ktracecli(exe: Path, calls: int, runs: int, tmp: Path) -> Row:
    row = Row("ktracecli ktrace+function", exe.name)
    config = tmp / "ktracecli.toml"
    for args in (["engine", "ktrace"], ["tracer", "function"], ["ktrace", "clear"],
                 ["ktrace", "add", FUNCTION]):
        proc = subprocess.run(ktracecli(config, *args), capture_output=True, text=True)
        if proc.returncode != 0:
            row.error = f"ktracecli {' '.join(args)}: {proc.stderr.strip()}"
            return row
    for i in range(runs):
        data = tmp / f"ktrace-{i}.data"
        wall, proc = run_timed(ktracecli(config, "record", "-o", str(data), "--", str(exe), str(calls)))
        match = SUMMARY_RE.search(proc.stderr)
        if proc.returncode != 0 or match is None:
            row.error = f"record exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
            return row
        row.wall_s.append(wall)
        row.loop_ns.append(loop_ns(proc.stdout, calls))
        row.events.append(int(match.group(3)))
        row.lost.append(int(match.group(4)))
        events_dir = data / "events"
        row.event_bytes.append(dir_bytes(events_dir if events_dir.is_dir() else data))
        shutil.rmtree(data, ignore_errors=True)
    return row


def bench_uftrace(uftrace: str, exe: Path, calls: int, runs: int, tmp: Path) -> Row:
    row = Row(f"uftrace record -P {FUNCTION}", exe.name)
    for i in range(runs):
        data = tmp / f"uftrace-{i}.data"
        argv = [uftrace, "record", "--no-pager", "-d", str(data), "-P", f"^{FUNCTION}$",
                str(exe), str(calls)]
        wall, proc = run_timed(argv)
        if proc.returncode != 0:
            row.error = f"uftrace exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
            return row
        row.wall_s.append(wall)
        row.loop_ns.append(loop_ns(proc.stdout, calls))
        row.event_bytes.append(dir_bytes(data))
        shutil.rmtree(data, ignore_errors=True)
    return row


def print_table(rows: list[Row], base: Row, calls: int) -> None:
    head = (f"{'run':<34} {'build':<18} {'wall s':>8} {'loop ms':>9} {'ns/call wall':>13} "
            f"{'ns/call loop':>13} {'events':>10} {'lost':>8} {'B/event':>8}")
    print(head)
    print("-" * len(head))
    for row in rows:
        if row.error:
            print(f"{row.name:<34} {row.build:<18} failed: {row.error}")
            continue
        wall, loop = row.median_wall(), row.median_loop()
        over_wall = (wall - base.median_wall()) * 1e9 / calls
        over_loop = (loop - base.median_loop()) / calls
        events = statistics.median(row.events) if row.events else None
        lost = statistics.median(row.lost) if row.lost else None
        size = statistics.median(row.event_bytes) if row.event_bytes else None
        per = calls if events is None else events
        print(f"{row.name:<34} {row.build:<18} {wall:>8.3f} {loop / 1e6:>9.2f} "
              f"{over_wall if row is not base else 0:>13.2f} {over_loop if row is not base else 0:>13.2f} "
              f"{'n/a' if events is None else int(events):>10} {'n/a' if lost is None else int(lost):>8} "
              f"{'-' if size is None or not per else f'{size / per:.1f}':>8}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000_000, help="calls per run (10 million)")
    parser.add_argument("--runs", type=int, default=5, help="runs of each kind; medians are shown (5)")
    args = parser.parse_args()

    build_dir = HERE / "_build"
    plain = build_dir / "workload-O2"
    build(HERE / "workload.c", plain, ["-O2"])
    with tempfile.TemporaryDirectory(prefix="ktracecli-bench-") as tmp_name:
        tmp = Path(tmp_name)
        base = bench_untraced(plain, args.calls, args.runs)
        ours = bench_ktracecli(plain, args.calls, args.runs, tmp)
        rows = [base, ours]
        uftrace = shutil.which("uftrace")
        if uftrace:
            # uftrace -P patches dynamically: on the plain build (its own instruction
            # patching, if built with capstone) and on a -pg build (its mcount sites).
            pg = build_dir / "workload-O2-pg"
            build(HERE / "workload.c", pg, ["-O2", "-pg"])
            rows.append(bench_uftrace(uftrace, plain, args.calls, args.runs, tmp))
            rows.append(bench_uftrace(uftrace, pg, args.calls, args.runs, tmp))

    print(f"workload: {args.calls} calls to {FUNCTION}, median of {args.runs} runs; "
          f"'wall' includes start-up and patching, 'loop' is the workload's own clock_gettime")
    print(f"bytes/event: size of the data directory's event files / events "
          f"(uftrace: whole data directory / calls)")
    print_table(rows, base, args.calls)
    if not uftrace:
        print("uftrace: not on PATH, no comparison (install the distribution's uftrace package)")
    elif not ours.error:
        for row in rows[2:]:
            if not row.error:
                print(f"ktracecli/uftrace ({row.build}): wall {ours.median_wall() / row.median_wall():.2f}, "
                      f"loop {ours.median_loop() / row.median_loop():.2f}")
    if ours.error:
        print(f"bench: ktracecli failed: {ours.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
