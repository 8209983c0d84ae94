"""ktracecli's benchmark: every engine (each mcount form) and tracer against uftrace, in one run.

    python bench/bench.py [--calls N] [--runs R] [--only SECTION,...]

Builds bench/workload.c (a loop of N calls to ``bench_target``, over 1 or more threads)
with gcc in each form the mcount engine knows plus a plain -O2 build, then prints:

overhead   ns of overhead per traced call (the workload's own loop time, traced minus the
           plain -O2 build untraced, divided by the calls), the ratio to uftrace on the same
           build measured in this run, events recorded and lost, bytes per event, and the
           peak memory of the tracee (its own getrusage) and of ktracecli (from info.json)
steady     ns per traced call once the tracer's buffers are warm and drained (a warm-up of
           1.5 M calls in 16 rounds, then 300,000 timed calls that fit the ring): the hot path
           alone, without first-touch page faults or a consumer that cannot keep up, in the
           timed thread's CPU time; for function and function_graph on the ktrace and mcount
           builds, and uftrace on the same builds
threads    the same per call in CPU time over 1, 2, 8 and 32 threads (per-thread rings
           must keep it flat)
burst      one thread making 50 million calls as fast as it can: the rate reached, events lost
startup    time to patch 5,000 functions (ktracecli's own set-up time, and the wall time
           against the untraced program), with a cold and a warm analysis cache
available  ``ktracecli available`` on libc, cold and cached (whole command, interpreter start included)
show       ``ktracecli show`` throughput, lines per second

Medians of R runs.  uftrace (the distribution's package) runs on the same binaries when it
is on PATH; without it the ratios are left out and a line says so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runners import (BUILDS, FUNCTION, HERE, BenchError, Ktracecli, Series, build,  # noqa: E402
                     many_functions_source, repeat, run_uftrace, run_untraced)

#: (engine, build) pairs ktracecli is measured on: ktrace on the plain build, mcount on each form
ENGINE_BUILDS = [("ktrace", "O2"), ("mcount", "O2-pg"), ("mcount", "O2-fentry"),
                 ("mcount", "O2-nop-mcount"), ("mcount", "O2-patchable5")]
#: how uftrace traces each build: -P patches bench_target alone (dynamically, or through the
#: NOP sites the compiler left); a -pg/-mfentry build calls mcount in every function anyway
UFTRACE_ARGS = {"O2": ["-P", f"^{FUNCTION}$"], "O2-pg": [], "O2-fentry": [],
                "O2-nop-mcount": ["-P", f"^{FUNCTION}$"], "O2-patchable5": ["-P", f"^{FUNCTION}$"]}
SECTIONS = ("overhead", "steady", "threads", "burst", "startup", "available", "show")
STEADY_CALLS = 300_000
STEADY_WARMUP = 1_500_000
#: (engine, build) pairs of the steady section: ktrace on the plain build, mcount on the fentry one
STEADY_BUILDS = [("ktrace", "O2"), ("mcount", "O2-fentry"), ("mcount", "O2-patchable5")]
THREADS = (1, 2, 8, 32)
BURST_CALLS = 50_000_000
STARTUP_FUNCTIONS = 5000
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"


def fmt(value: float | None, spec: str = ".1f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def per_call(series: Series, base: Series, calls: int, key: str = "loop_ns") -> float | None:
    ours, theirs = series.median(key), base.median(key)
    if series.error or ours is None or theirs is None:
        return None
    return (ours - theirs) / calls


def section_overhead(args: argparse.Namespace, kt: Ktracecli, exes: dict[str, Path], uftrace: str | None,
                     tmp: Path) -> None:
    calls, runs = args.calls, args.runs
    argv = lambda b: [str(exes[b]), str(calls)]  # noqa: E731
    base = repeat(runs, lambda i: run_untraced(argv("O2"), calls))
    if base.error:
        raise SystemExit(f"bench: the untraced workload failed: {base.error}")
    rows: list[tuple[str, str, Series]] = []
    theirs: dict[str, float | None] = {}
    if uftrace:
        for b, uargs in UFTRACE_ARGS.items():
            s = repeat(runs, lambda i: run_uftrace(uftrace, uargs, argv(b), calls, tmp / f"uf-{b}-{i}"))
            rows.append((f"uftrace {' '.join(uargs) or '(all functions)'}", b, s))
            theirs[b] = per_call(s, base, calls)
    for tracer in [t for t in ("function", "function_graph") if t in kt.tracers()]:
        for engine, b in ENGINE_BUILDS:
            kt.configure(engine, tracer, [FUNCTION])
            s = repeat(runs, lambda i: kt.record(argv(b), calls, tmp / f"kt-{tracer}-{b}-{i}.data"))
            rows.append((f"ktracecli {engine}+{tracer}", b, s))
    print(f"== overhead: {calls:,} calls to {FUNCTION}, one thread, median of {runs} runs; "
          f"untraced -O2 loop {base.median('loop_ns') / 1e6:.2f} ms "
          f"({base.median('loop_ns') / calls:.2f} ns per call)")
    head = (f"{'run':<38} {'build':<14} {'ns/call':>8} {'/uftrace':>9} {'events':>11} {'lost':>9} "
            f"{'B/event':>8} {'tracee MB':>10} {'ktracecli MB':>13}")
    print(head)
    print("-" * len(head))
    for name, b, s in rows:
        if s.error:
            print(f"{name:<38} {b:<14} failed: {s.error}")
            continue
        ns = per_call(s, base, calls)
        ratio = ns / theirs[b] if ns is not None and theirs.get(b) and not name.startswith("uftrace") else None
        events, size = s.median("events"), s.median("event_bytes")
        rss, krss = s.median("tracee_rss_kb"), s.median("ktracecli_rss_kb")
        print(f"{name:<38} {b:<14} {fmt(ns):>8} {fmt(ratio, '.2f'):>9} {fmt(events, ',.0f'):>11} "
              f"{fmt(s.median('lost'), ',.0f'):>9} {fmt(size / events if size and events else None):>8} "
              f"{fmt(rss / 1024 if rss else None):>10} {fmt(krss / 1024 if krss else None):>13}")
    if not uftrace:
        print("uftrace: not on PATH, no ratios (apt-get install uftrace)")
    print("ns/call: traced loop time minus the untraced -O2 loop time, per call (entry and exit for "
          "function_graph and uftrace); B/event: event files / events (uftrace: its data directory / 2 per call)")


def section_steady(args: argparse.Namespace, kt: Ktracecli, exes: dict[str, Path], uftrace: str | None,
                   tmp: Path) -> None:
    runs = args.runs
    calls = STEADY_CALLS
    argv = lambda b: [str(exes[b]), str(calls), "1", str(STEADY_WARMUP)]  # noqa: E731
    print(f"\n== steady: {calls:,} timed calls after a {STEADY_WARMUP:,}-call warm-up, CPU ns of overhead "
          f"per call (the timed thread's own CPU time), median of {runs} runs")
    base = repeat(runs, lambda i: run_untraced(argv("O2"), calls))
    head = f"{'run':<38} {'build':<14} {'ns/call':>8} {'events':>11} {'lost':>9}"
    print(head)
    print("-" * len(head))
    rows: list[tuple[str, str, Series]] = []
    for tracer in [t for t in ("function", "function_graph") if t in kt.tracers()]:
        for engine, b in STEADY_BUILDS:
            kt.configure(engine, tracer, [FUNCTION])
            rows.append((f"ktracecli {engine}+{tracer}", b,
                         repeat(runs, lambda i: kt.record(argv(b), calls, tmp / f"st-{tracer}-{b}-{i}.data"))))
    if uftrace:
        for _engine, b in STEADY_BUILDS:
            uargs = UFTRACE_ARGS[b]
            rows.append((f"uftrace {' '.join(uargs) or '(all functions)'}", b,
                         repeat(runs, lambda i: run_uftrace(uftrace, uargs, argv(b), calls, tmp / f"st-uf-{b}-{i}"))))
    for name, b, s in rows:
        if s.error:
            print(f"{name:<38} {b:<14} failed: {s.error}")
            continue
        print(f"{name:<38} {b:<14} {fmt(per_call(s, base, calls, 'cpu_ns')):>8} "
              f"{fmt(s.median('events'), ',.0f'):>11} {fmt(s.median('lost'), ',.0f'):>9}")
    print("events: the warm-up's and the timed loop's (function_graph and uftrace record 2 per call)")


def section_threads(args: argparse.Namespace, kt: Ktracecli, exes: dict[str, Path], uftrace: str | None,
                    tmp: Path) -> None:
    calls, runs = args.calls, max(1, min(args.runs, 3))
    exe = str(exes["O2"])
    tracers = [t for t in ("function", "function_graph") if t in kt.tracers()]
    print(f"\n== threads: {calls:,} calls shared by T threads, CPU ns of overhead per call "
          f"(the threads' own CPU time), median of {runs} runs")
    print(f"{'threads':>7} " + " ".join(f"{'ktrace+' + t:>24}" for t in tracers)
          + (f" {'uftrace -P':>12}" if uftrace else "") + f" {'lost':>10}")
    for n in THREADS:
        argv = [exe, str(calls), str(n)]
        base = repeat(runs, lambda i: run_untraced(argv, calls))
        cells, lost = [], 0
        for tracer in tracers:
            kt.configure("ktrace", tracer, [FUNCTION])
            s = repeat(runs, lambda i: kt.record(argv, calls, tmp / f"th-{tracer}-{n}-{i}.data"))
            cells.append(fmt(per_call(s, base, calls, "cpu_ns")) if not s.error else "failed")
            lost = max(lost, int(s.median("lost") or 0))
        if uftrace:
            s = repeat(runs, lambda i: run_uftrace(uftrace, UFTRACE_ARGS["O2"], argv, calls, tmp / f"th-uf-{n}-{i}"))
            cells.append(fmt(per_call(s, base, calls, "cpu_ns")) if not s.error else "failed")
        widths = [24] * len(tracers) + ([12] if uftrace else [])
        print(f"{n:>7} " + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths)) + f" {lost:>10,}")


def section_burst(args: argparse.Namespace, kt: Ktracecli, exes: dict[str, Path], tmp: Path) -> None:
    runs = max(1, min(args.runs, 3))
    argv = [str(exes["O2"]), str(BURST_CALLS)]
    print(f"\n== burst: one thread, {BURST_CALLS:,} traced calls as fast as it can, default buffer sizes, "
          f"median of {runs} runs")
    for tracer in [t for t in ("function", "function_graph") if t in kt.tracers()]:
        kt.configure("ktrace", tracer, [FUNCTION])
        s = repeat(runs, lambda i: kt.record(argv, BURST_CALLS, tmp / f"burst-{tracer}-{i}.data"))
        if s.error:
            print(f"ktrace+{tracer}: failed: {s.error}")
            continue
        rate = BURST_CALLS / (s.median("loop_ns") / 1e9)
        print(f"ktrace+{tracer:<16} {rate / 1e6:6.1f} million calls/s, {int(s.median('events') or 0):,} events, "
              f"{int(s.median('lost') or 0):,} lost")


def section_startup(args: argparse.Namespace, kt: Ktracecli, tmp: Path) -> None:
    exe = build(many_functions_source(STARTUP_FUNCTIONS), f"many{STARTUP_FUNCTIONS}", ("-O2",))
    runs = max(1, min(args.runs, 3))
    base = repeat(runs, lambda i: run_untraced([str(exe)], None))
    kt.configure("ktrace", "function", [])
    print(f"\n== startup: patch every function of a {STARTUP_FUNCTIONS:,}-function program "
          f"(ktrace+function), median of {runs} runs")
    cold_env = dict(kt.env, KTRACECLI_CACHE_DIR="")
    for label, env in (("cold analysis", cold_env), ("cached analysis", kt.env)):
        kt.record([str(exe)], None, tmp / "warm.data", env=env)  # warm the cache (and the page cache)
        s = repeat(runs, lambda i: kt.record([str(exe)], None, tmp / f"start-{i}.data", env=env))
        if s.error:
            print(f"{label}: failed: {s.error}")
            continue
        print(f"{label:<16} {int(s.median('traced') or 0):,} functions: ktracecli set-up "
              f"{fmt(s.median('setup_s'), '.3f')} s, record wall {s.median('wall_s'):.3f} s "
              f"(program alone {base.median('wall_s'):.3f} s)")


def section_available(args: argparse.Namespace, kt: Ktracecli, tmp: Path) -> None:
    runs = max(3, args.runs)
    print(f"\n== available: `ktracecli available --mod libc.so.6 /bin/true` ({LIBC}), "
          f"whole command, median of {runs} runs")
    cache = tmp / "avail-cache"
    for label, value in (("cold (no cache)", ""), ("cached", str(cache))):
        env = dict(kt.env, KTRACECLI_CACHE_DIR=value)
        times = []
        for _ in range(runs + (1 if value else 0)):
            start = time.perf_counter()
            proc = subprocess.run(kt.argv("available", "--mod", "libc.so.6", "/bin/true"),
                                  capture_output=True, text=True, env=env)
            times.append(time.perf_counter() - start)
            if proc.returncode != 0:
                print(f"{label}: failed: {proc.stderr.strip()}")
                return
        if value:
            times = times[1:]  # the first run filled the cache
        print(f"{label:<16} {statistics.median(times):.3f} s   ({proc.stderr.strip()})")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    print(f"{'(python start)':<16} {time.perf_counter() - start:.3f} s")


def section_show(args: argparse.Namespace, kt: Ktracecli, exes: dict[str, Path], tmp: Path) -> None:
    calls = min(args.calls, 2_000_000)
    print(f"\n== show: `ktracecli show` of {calls:,} recorded calls, lines per second")
    for tracer in [t for t in ("function", "function_graph") if t in kt.tracers()]:
        kt.configure("ktrace", tracer, [FUNCTION])
        data = tmp / f"show-{tracer}.data"
        try:
            kt.record([str(exes["O2"]), str(calls)], calls, data, keep=True)
        except BenchError as exc:
            print(f"{tracer}: failed: {exc}")
            continue
        times, lines = [], 0
        for _ in range(max(1, min(args.runs, 3))):
            start = time.perf_counter()
            proc = subprocess.Popen(kt.argv("show", str(data)), stdout=subprocess.PIPE, env=kt.env)
            assert proc.stdout is not None
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: proc.stdout.read(1 << 20), b""))
            proc.wait()
            times.append(time.perf_counter() - start)
        print(f"{tracer:<16} {lines:,} lines in {statistics.median(times):.2f} s: "
              f"{lines / statistics.median(times) / 1e6:.2f} million lines/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000_000, help="calls per run (10 million)")
    parser.add_argument("--runs", type=int, default=5, help="runs of each kind; medians are shown (5)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"sections to run ({','.join(SECTIONS)})")
    args = parser.parse_args()
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")

    exes = {name: build(HERE / "workload.c", f"workload-{name}", flags) for name, flags in BUILDS.items()}
    uftrace = shutil.which("uftrace")
    commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    print(f"ktracecli bench, commit {commit}, {os.cpu_count()} CPUs, "
          f"{'uftrace ' + subprocess.run([uftrace, '--version'], capture_output=True, text=True).stdout.split()[1] if uftrace else 'no uftrace'}")
    with tempfile.TemporaryDirectory(prefix="ktracecli-bench-") as tmp_name:
        tmp = Path(tmp_name)
        kt = Ktracecli(tmp)
        for section in wanted:
            if section == "overhead":
                section_overhead(args, kt, exes, uftrace, tmp)
            elif section == "steady":
                section_steady(args, kt, exes, uftrace, tmp)
            elif section == "threads":
                section_threads(args, kt, exes, uftrace, tmp)
            elif section == "burst":
                section_burst(args, kt, exes, tmp)
            elif section == "startup":
                section_startup(args, kt, tmp)
            elif section == "available":
                section_available(args, kt, tmp)
            elif section == "show":
                section_show(args, kt, exes, tmp)
            for leftover in tmp.glob("*.data"):
                shutil.rmtree(leftover, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
