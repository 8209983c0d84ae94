"""Live tracing figures: how soon ``ktrace add`` takes effect, and attach/detach times.

    python bench/live.py [--runs 5] [--functions 1000]

1. ``ktrace add`` latency.  A program calls ``other()`` and ``target()`` about
   8,000 times a second.  ktracecli attaches to it tracing ``other`` only; then
   ``ktracecli ktrace add target`` runs, and the time it returns (CLOCK_MONOTONIC)
   is compared with the timestamp of the first ``target`` event in the trace (the
   same clock), and with the moment its first line reaches the ``--live`` stream.
   The session may apply the change before the command has exited (it reacts to
   the config file being replaced): such a run counts as 0.  The time from the
   file's replacement (its mtime) to the first event is printed too.

2. Attach and detach of a process with N traced functions.  A generated program
   with N functions calls each of them about 1,000 times a second.  Timed from the
   start of ``ktracecli attach PID`` to its "attached" line (every thread held, every
   function patched, resumed), and from SIGINT to its exit (every thread held, every
   byte restored, detached, the data directory written); the process's code is then
   compared with its ELF file byte for byte.  The start-up of the ``ktracecli``
   command itself (Python, imports) is measured apart and printed, and both the
   first attach (analysis not cached) and later ones are shown.

Medians over ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ADDLAT_C = r"""
#include <unistd.h>
volatile long sink;
__attribute__((noipa)) void target(long i) { sink += i; }
__attribute__((noipa)) void other(long i) { sink ^= i; }
int main(void)
{
    for (long i = 0;; i++) {
        other(i);
        target(i);
        usleep(100);
    }
}
"""

ENTRY_RE = re.compile(r"^\s*(\S.*)-(\d+)\s+\[(\d{3})\]\s+(\d+\.\d{6}): (\S+) <-(\S+)$")


def many_source(n: int) -> str:
    """A program with ``n`` functions, each called once per round, ~1000 rounds a second."""
    lines = ["#include <unistd.h>", "volatile long sink;"]
    lines += [f"__attribute__((noipa)) void f{i}(long x) {{ sink += x * {i + 1}; }}" for i in range(n)]
    lines.append("int main(void) {\n  for (long r = 0;; r++) {")
    lines += [f"    f{i}(r);" for i in range(n)]
    lines.append("    usleep(1000);\n  }\n}")
    return "\n".join(lines) + "\n"


def build(source: str, exe: Path) -> None:
    src = exe.with_suffix(".c")
    src.write_text(source)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)


class Cli:
    """Runs ``python -m ktracecli`` with a private config."""

    def __init__(self, work: Path, cache: Path) -> None:
        self.config = work / "config.toml"
        self.env = dict(os.environ, KTRACECLI_CONFIG=str(self.config), KTRACECLI_CACHE_DIR=str(cache))

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ktracecli", "--config", str(self.config), *args]

    def ok(self, *args: str) -> str:
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, env=self.env)
        if proc.returncode:
            raise RuntimeError(f"ktracecli {' '.join(args)}: {proc.stderr}")
        return proc.stdout

    def configure(self, *patterns: str) -> None:
        self.ok("engine", "ktrace")
        self.ok("tracer", "function")
        self.ok("ktrace", "clear")
        if patterns:
            self.ok("ktrace", "add", *patterns)


def attached(proc: subprocess.Popen, err: Path) -> float:
    """Wait for the 'attached' line; returns when it was seen."""
    while True:
        if "ktracecli: attached to process" in err.read_text():
            return time.monotonic()
        if proc.poll() is not None:
            raise RuntimeError(err.read_text())
        time.sleep(0.001)


def code_pristine(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or "x" not in parts[1] or not parts[5].startswith("/"):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            with open(parts[5].rstrip("\n"), "rb") as f:
                f.seek(int(parts[2], 16))
                want = f.read(hi - lo)
            mem.seek(lo)
            if mem.read(len(want)) != want:
                return False
    return True


def add_latency(cli: Cli, exe: Path, work: Path) -> tuple[float, float, float]:
    """One run, seconds: first traced event - add returned, first traced event - config replaced,
    first streamed line - add returned."""
    cli.configure("other")
    program = subprocess.Popen([str(exe)])
    err = work / "add.stderr"
    data = work / "add.data"
    try:
        with open(err, "wb") as e:
            tracer = subprocess.Popen(cli.argv("attach", str(program.pid), "-o", str(data), "--live"),
                                      stdout=subprocess.PIPE, stderr=e, env=cli.env)
        attached(tracer, err)
        assert tracer.stdout is not None
        os.set_blocking(tracer.stdout.fileno(), False)
        buffered = b""
        time.sleep(0.3)
        while True:  # empty the stream of the lines made so far
            chunk = tracer.stdout.read()
            if not chunk:
                break
        subprocess.run(cli.argv("ktrace", "add", "target"), check=True, env=cli.env, capture_output=True)
        returned = time.clock_gettime(time.CLOCK_MONOTONIC)
        # the config's mtime (CLOCK_REALTIME) on the monotonic clock
        replaced = cli.config.stat().st_mtime_ns / 1e9 - time.time() + time.clock_gettime(time.CLOCK_MONOTONIC)
        seen = None
        deadline = returned + 5
        while seen is None and time.monotonic() < deadline:
            chunk = tracer.stdout.read() or b""
            buffered = buffered[-64:] + chunk
            if b": target <-" in buffered:
                seen = time.clock_gettime(time.CLOCK_MONOTONIC)
            else:
                time.sleep(0.0002)
        tracer.send_signal(signal.SIGINT)
        tracer.communicate(timeout=30)
    finally:
        program.kill()
        program.wait()
    show = subprocess.run(cli.argv("show", str(data)), capture_output=True, text=True, env=cli.env).stdout
    first = min(float(m.group(4)) for line in show.splitlines()
                if (m := ENTRY_RE.match(line)) and m.group(5) == "target")
    return (max(0.0, first - returned), first - replaced,
            max(0.0, seen - returned) if seen is not None else float("nan"))


def attach_detach(cli: Cli, exe: Path, work: Path) -> tuple[float, float, int]:
    """One run: (attach seconds, detach seconds, functions traced)."""
    program = subprocess.Popen([str(exe)])
    err = work / "attach.stderr"
    try:
        time.sleep(0.2)
        start = time.monotonic()
        with open(err, "wb") as e:
            tracer = subprocess.Popen(cli.argv("attach", str(program.pid), "-o", str(work / "a.data")),
                                      stderr=e, env=cli.env)
        ready = attached(tracer, err)
        traced = int(re.search(r"tracing (\d+) functions", err.read_text()).group(1))  # type: ignore[union-attr]
        time.sleep(0.5)
        stop = time.monotonic()
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=60)
        gone = time.monotonic()
        if not code_pristine(program.pid):
            raise RuntimeError("the code was not restored byte for byte")
        if program.poll() is not None:
            raise RuntimeError("the program died")
    finally:
        program.kill()
        program.wait()
    return ready - start, gone - stop, traced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--functions", type=int, default=1000)
    args = parser.parse_args()
    if shutil.which("gcc") is None:
        sys.exit("bench: gcc is required")
    with tempfile.TemporaryDirectory(prefix="ktracecli-live-bench-") as tmp:
        work = Path(tmp)
        cli = Cli(work, work / "cache")
        addlat, many = work / "addlat", work / "many"
        build(ADDLAT_C, addlat)
        build(many_source(args.functions), many)

        startup = []
        for _ in range(args.runs):
            t = time.monotonic()
            cli.ok("tracer")
            startup.append(time.monotonic() - t)
        print(f"ktracecli command start-up (python + imports): {statistics.median(startup) * 1000:.0f} ms")

        runs = [add_latency(cli, addlat, work) for _ in range(args.runs)]
        after_return = [r[0] * 1000 for r in runs]
        after_file = [r[1] * 1000 for r in runs]
        streamed = [r[2] * 1000 for r in runs]
        print(f"ktrace add returned -> first event of the new function: median {statistics.median(after_return):.0f} ms"
              f" (max {max(after_return):.0f}); config file replaced -> first event: median "
              f"{statistics.median(after_file):.0f} ms (max {max(after_file):.0f}); "
              f"first --live line: {statistics.median(streamed):.0f} ms after the command returned")

        cli.configure()  # every function of the program
        cold = attach_detach(cli, many, work)
        warm = [attach_detach(cli, many, work) for _ in range(args.runs)]
        print(f"attach to a process, {cold[2]} functions traced: first (analysis not cached) {cold[0]:.2f} s, "
              f"then median {statistics.median(w[0] for w in warm):.2f} s (command start-up included)")
        print(f"detach (restore every byte, write the data directory): median "
              f"{statistics.median(w[1] for w in warm):.2f} s; code byte for byte as in the file after each")


if __name__ == "__main__":
    main()
