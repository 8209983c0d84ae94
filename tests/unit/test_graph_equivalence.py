"""``show`` of function_graph traces, byte for byte against the per-record reference printer.

The product renders a trace in bulk with numpy (``ktracecli_function_graph.graph`` and
``.output``); ``graph_reference.py`` is the straightforward printer it replaced, one
Python step per record.  Both must print exactly the same bytes for:

- hand-written traces, each covering one rule of ../shared/ftrace-format.md section 3
  and 4 (leaves, recursion, a second entry at a depth replacing the first, returns of
  another function, NOHOOK entries, CLOSED frames, lost events anywhere, durations of
  every overhead mark and every digit count, clocks going backwards, task switches,
  wide CPU numbers, comms of every length), under every combination of the six
  funcgraph options, tracing_thresh and ``--per-thread``;
- random traces from a seeded generator (thousands of records over several threads
  interleaved on a few CPUs, calls, leaves, unmatched returns, longjmp-like CLOSED
  runs, NOHOOK calls, dropped runs of records with their lost-event markers), also
  with the renderer's batches cut down to a few lines so that every batch edge meets
  a task switch or a lost-event line.
"""

from __future__ import annotations

import io
import itertools
import random
import re
from pathlib import Path

import numpy as np
import pytest

import graph_reference
from ktracecli.datadir import ThreadData, TraceData
from ktracecli.interface import ShowSettings
from ktracecli.options import TraceOptions
from ktracecli_function_graph import output
from ktracecli_function_graph.records import RECORD_DTYPE, Kind, info_word

E, N, X, C = Kind.ENTRY, Kind.NOHOOK, Kind.EXIT, Kind.CLOSED
#: the options that change function_graph output; a mask sets bit k for OPTION_NAMES[k]
OPTION_NAMES = ("funcgraph-proc", "funcgraph-abstime", "funcgraph-tail", "funcgraph-duration",
                "funcgraph-overhead", "funcgraph-cpu")
ALL_MASKS = range(1 << len(OPTION_NAMES))
#: every digit count of the duration number (1 to 10 digits of microseconds), each mark's
#: limit and its neighbours
DURATIONS = (0, 1, 9, 99, 313, 999, 1_000, 9_999, 10_000, 10_001, 12_345, 99_999, 100_000, 100_001,
             140_417, 999_999, 1_000_000, 1_000_001, 1_837_709, 9_999_999, 10_000_000, 10_000_001,
             33_998_590, 99_999_999, 100_000_000, 100_000_001, 119_760_200, 999_999_999,
             1_000_000_000, 1_000_000_001, 3_594_274_000, 9_999_999_999, 12_345_678_901,
             99_999_999_999, 999_999_999_999, 9_999_999_999_999)
NAMES = ("main", "f", "g", "bench_target", "a_rather_long_function_name_that_widens_the_body_column",
         "std::vector<int, std::allocator<int> >::push_back(int const&)", "ünïcødé_ƒ", "x")
COMMS = (("prog", 7), ("worker", 12345), ("kworker/0:1", 4242), ("sh", 1), ("averylongname", 1234567890),
         ("ünï", 42), ("eightchr", 100000))


def options(mask: int) -> TraceOptions:
    """The options with bit k of ``mask`` saying whether OPTION_NAMES[k] is set."""
    opts = TraceOptions()
    for k, name in enumerate(OPTION_NAMES):
        opts = opts.set(name if mask >> k & 1 else f"no{name}")
    return opts


def thread(comm: str, tid: int, events: list[tuple[int, int, Kind, int, int]],
           lost: list[tuple[int, int]] | None = None, pid: int | None = None) -> ThreadData:
    """A thread from (ns, site, kind, depth, cpu) events."""
    records = np.zeros(len(events), RECORD_DTYPE)
    for i, (ns, site, kind, depth, cpu) in enumerate(events):
        records[i] = (ns, site, info_word(depth, kind, cpu))
    return ThreadData(tid if pid is None else pid, tid, comm, records, lost or [])


def trace(threads: list[ThreadData], ncpus: int | None = 2, ns0: int = 0, engine: str | None = "ktrace",
          sites: tuple[str, ...] = NAMES, tsc0: int = 0, ns_per_tick: float = 1.0) -> TraceData:
    info: dict[str, object] = {"tracer": "function_graph",
                               "clock": {"tsc0": tsc0, "ns0": ns0, "ns_per_tick": ns_per_tick}}
    if engine:
        info["engine"] = engine
    if ncpus is not None:
        info["ncpus"] = ncpus
    return TraceData(Path("."), info, list(sites), [], threads)


def render(write, data: TraceData, mask: int, per_thread: bool, thresh: bool) -> str:
    data.info["tracing_thresh"] = 1000 if thresh else 0
    out = io.StringIO()
    write(data, out, ShowSettings(options(mask), per_thread))
    return out.getvalue()


def assert_same(data: TraceData, mask: int, per_thread: bool, thresh: bool) -> None:
    """The product prints what the reference prints, byte for byte (first difference shown)."""
    new = render(output.write_trace, data, mask, per_thread, thresh)
    old = render(graph_reference.write_trace, data, mask, per_thread, thresh)
    if new != old:
        new_lines, old_lines = new.split("\n"), old.split("\n")
        at = next((k for k, (a, b) in enumerate(zip(new_lines, old_lines)) if a != b),
                  min(len(new_lines), len(old_lines)))
        raise AssertionError(
            f"options {options(mask).lines()}, per_thread={per_thread}, thresh={thresh}: line {at} differs\n"
            f"reference: {old_lines[max(0, at - 2):at + 3]!r}\nproduct:   {new_lines[max(0, at - 2):at + 3]!r}")


# --------------------------------------------------------------------------- hand-written traces


def every_duration() -> TraceData:
    """Leaves and calls of every duration in DURATIONS, then the same durations backwards in time."""
    events, t = [], 1_000
    for d in DURATIONS:
        events += [(t, 1, E, 0, 0), (t + d, 1, X, 0, 0)]           # a leaf
        events += [(t + d, 2, E, 0, 0), (t + d + 5, 3, E, 1, 0), (t + d + 5 + d, 3, X, 1, 0),
                   (t + 2 * d + 5 + d, 2, X, 0, 0)]                 # a call around a leaf
        t += 3 * d + 10
    for d in (1, 1000, 20_000):                                     # the clock going backwards
        events += [(t, 1, E, 0, 0), (t - d, 1, X, 0, 0), (t, 2, E, 0, 0), (t + 1, 3, N, 1, 0),
                   (t - d, 2, X, 0, 0)]
    return trace([thread("prog", 9, events)])


def calls_and_returns() -> TraceData:
    """Recursion, replaced entries, returns of other functions, NOHOOK and CLOSED records, leaves
    clearing an entry."""
    ev = [
        (0, 3, X, 3, 1), (5, 2, C, 2, 1),                           # started mid-call
        (10, 0, E, 0, 1), (20, 1, E, 1, 1), (30, 1, E, 2, 1), (40, 1, E, 3, 1), (45, 1, X, 3, 1),
        (50, 1, X, 2, 1), (60, 1, X, 1, 1),                         # recursion
        (70, 2, E, 1, 1), (80, 3, E, 1, 1), (90, 3, X, 1, 1), (95, 2, X, 1, 1),  # second entry replaces
        (100, 4, E, 1, 1), (110, 5, X, 1, 1), (120, 4, X, 1, 1),   # a return of another function
        (130, 6, E, 1, 1), (135, 7, N, 2, 1), (140, 7, N, 2, 1), (150, 6, X, 1, 1),  # NOHOOK calls
        (160, 6, E, 1, 1), (170, 6, C, 1, 1),                       # a CLOSED leaf
        (180, 1, E, 1, 1), (190, 2, E, 2, 1), (200, 2, C, 2, 1), (205, 1, C, 1, 1),
        (210, 1, E, 1, 1), (220, 1, X, 2, 1), (230, 1, X, 1, 1),   # a return at another depth
        (240, 7, N, 1, 1), (250, 7, X, 1, 1), (260, 7, E, 1, 1), (270, 7, N, 1, 1),
        (280, 0, E, 1023, 1), (290, 0, X, 1023, 1), (300, 0, E, 1023, 1), (310, 0, E, 1022, 1),
        (312, 4, E, 5, 1), (313, 5, E, 5, 1), (314, 5, X, 5, 1), (315, 4, X, 5, 1),  # a leaf clears the entry
        (316, 4, E, 5, 1), (317, 5, N, 5, 1), (318, 4, X, 5, 1),   # a call without return hooking does not
        (400, 0, X, 0, 1),
    ]
    return trace([thread("prog", 9, ev)], ncpus=4)


def lost_everywhere() -> TraceData:
    """Lost events at the start, inside leaves, before SKIP records, twice at one index, at the end, past it."""
    a = thread("prog", 10, [(0, 1, E, 0, 1), (50, 1, X, 0, 1), (60, 2, E, 0, 1), (70, 2, X, 0, 1),
                            (80, 3, E, 0, 1), (90, 3, X, 0, 1), (100, 4, E, 1, 1), (110, 4, X, 1, 1)],
               lost=[(0, 5), (1, 11745), (3, 0), (5, 2), (5, 3), (7, 1), (8, 3), (8, 4), (12, 9)])
    b = thread("worker", 11, [], lost=[(0, 7)])
    c = thread("idle", 12, [])
    d = thread("sh", 13, [(65, 1, E, 0, 0), (66, 1, X, 0, 0)], lost=[(1, 1), (2, 2)])
    return trace([a, b, c, d])


def task_switches() -> TraceData:
    """Threads interleaved on two CPUs, one migrating, with equal timestamps and a shared tid."""
    a = thread("bash", 1977, [(0, 1, E, 0, 0), (100, 2, E, 1, 0), (150, 2, X, 1, 0), (400, 1, X, 0, 1),
                              (500, 3, E, 0, 1), (500, 3, X, 0, 0)])
    b = thread("sshd", 1974, [(20, 3, X, 1, 0), (200, 4, E, 0, 1), (250, 4, X, 0, 1), (400, 5, N, 0, 0)])
    c = thread("kworker/0:1", 12345, [(300, 6, E, 0, 0), (310, 6, X, 0, 0), (320, 7, E, 2, 1)],
               lost=[(2, 4)])
    d = thread("bash", 1977, [(600, 1, E, 0, 1), (610, 1, X, 0, 1)], pid=2000)  # the same tid again
    e = thread("ünï", 42, [(700, 1, E, 0, 4095), (710, 1, X, 0, 4095), (720, 5, X, 0, 1)])
    return trace([a, b, c, d, e], ncpus=2, ns0=360_774_522_999)


def thresh_pairs() -> TraceData:
    """What tracing_thresh records: (entry, return) pairs in return order, and stray records."""
    a = thread("prog", 9, [(1_000, 1, E, 1, 0), (2_001_000, 1, X, 1, 0), (0, 0, E, 0, 0),
                           (3_000_000, 0, X, 0, 0), (3_100_000, 2, X, 0, 0), (3_200_000, 3, N, 0, 0),
                           (3_300_000, 3, C, 0, 0), (3_400_000, 4, E, 2, 0), (3_500_000, 5, X, 3, 0),
                           (3_600_000, 6, E, 0, 0)], lost=[(4, 2), (6, 3), (8, 1), (10, 4)])
    b = thread("worker", 10, [(2_500_000, 1, E, 0, 1), (2_600_000, 1, X, 0, 1)])
    return trace([a, b], ns0=123_456_789_000_000_000)


def odd_info() -> TraceData:
    """No engine line, no CPU count (one CPU), a large abstime."""
    a = thread("prog", 9, [(0, 0, E, 0, 0), (10, 0, X, 0, 0), (20, 1, E, 0, 13), (30, 1, X, 0, 13)])
    return trace([a], ncpus=None, engine=None, ns0=987_654_321_987_654_321)


def before_calibration() -> TraceData:
    """Ticks before the calibration's first sample: negative timestamps, with a clock of 0.37 ns a tick."""
    a = thread("prog", 9, [(0, 0, E, 0, 0), (10, 1, E, 1, 0), (2_700_000_000, 1, X, 1, 0),
                           (5_400_000_000, 0, X, 0, 0), (5_400_000_001, 2, E, 0, 0), (5_400_000_003, 2, X, 0, 0)])
    return trace([a], ns0=1_000_000_007, tsc0=5_000_000_000, ns_per_tick=0.37)


HAND_WRITTEN = {"every_duration": every_duration, "calls_and_returns": calls_and_returns,
                "lost_everywhere": lost_everywhere, "task_switches": task_switches,
                "thresh_pairs": thresh_pairs, "odd_info": odd_info, "before_calibration": before_calibration,
                "empty": lambda: trace([]),
                "no_records": lambda: trace([thread("prog", 9, [])])}


@pytest.mark.parametrize("name", HAND_WRITTEN)
@pytest.mark.parametrize(("per_thread", "thresh"), list(itertools.product((False, True), repeat=2)))
def test_hand_written_traces_under_every_option_combination(name: str, per_thread: bool, thresh: bool) -> None:
    data = HAND_WRITTEN[name]()
    for mask in ALL_MASKS:
        assert_same(data, mask, per_thread, thresh)


@pytest.mark.parametrize("batch", [1, 2, 3, 7])
def test_hand_written_traces_in_tiny_batches(monkeypatch: pytest.MonkeyPatch, batch: int) -> None:
    monkeypatch.setattr(output, "BATCH_LINES", batch)
    for name, make in HAND_WRITTEN.items():
        data = make()
        for per_thread, thresh in itertools.product((False, True), repeat=2):
            for mask in (0, 0b111111, 0b111000, 0b011011):
                assert_same(data, mask, per_thread, thresh)


# --------------------------------------------------------------------------- random traces


def _step(rng: random.Random) -> int:
    """Time to the next event: mostly short, sometimes of any magnitude, a mark limit, or backwards."""
    r = rng.random()
    if r < 0.70:
        return rng.randint(0, 3_000)
    if r < 0.90:
        return int(10 ** rng.uniform(0, 13))
    if r < 0.97:
        return rng.choice(DURATIONS)
    return -rng.randint(1, 50_000)


def random_thread(rng: random.Random, comm: str, tid: int, count: int, ncpus: int, start: int) -> ThreadData:
    """About ``count`` records of a plausible call graph, with noise, then runs of them dropped as lost."""
    nsites = len(NAMES)
    cpu = rng.randrange(ncpus)
    stack = [rng.randrange(nsites) for _ in range(rng.choice((0, 0, 1, 3)))]  # frames entered before the trace
    events: list[tuple[int, int, Kind, int, int]] = []
    t = start

    def emit(site: int, kind: Kind, depth: int) -> None:
        nonlocal t
        t = max(0, t + _step(rng))
        events.append((t, site, kind, depth, cpu))

    while len(events) < count:
        if rng.random() < 0.02:
            cpu = rng.randrange(ncpus) if rng.random() < 0.9 else 4095
        r = rng.random()
        site = rng.randrange(nsites)
        if r < 0.25 and len(stack) < 40:                # a call
            emit(site, E, len(stack))
            stack.append(site)
        elif r < 0.55:                                  # a leaf
            emit(site, E, len(stack))
            emit(site, X if rng.random() < 0.95 else C, len(stack))
        elif r < 0.80 and stack:                        # a return, now and then of another function
            top = stack.pop()
            emit(top if rng.random() < 0.95 else site, X, len(stack))
        elif r < 0.85 and stack:                        # longjmp: frames closed
            for _ in range(rng.randint(1, len(stack))):
                emit(stack.pop(), C, len(stack))
        elif r < 0.92:                                  # a call without return hooking
            emit(site, N, len(stack))
        elif r < 0.94 and stack:                        # a leaf beside the innermost frame (its return lost)
            emit(site, E, len(stack) - 1)
            emit(site, X, len(stack) - 1)
        else:                                           # anything
            emit(site, rng.choice((E, N, X, C)), rng.choice((0, 1, 2, len(stack), 1023)))
    lost: list[tuple[int, int]] = []
    kept: list[tuple[int, int, Kind, int, int]] = []
    for i, event in enumerate(events):
        if rng.random() < 0.004:                        # a run of records overwritten
            lost.append((len(kept), rng.randint(1, 100_000)))
        if lost and lost[-1][0] == len(kept) and i % 3:
            continue                                    # dropped
        kept.append(event)
    if rng.random() < 0.3:
        lost.append((len(kept), rng.randint(1, 999)))   # lost at the end
    rng.shuffle(lost)
    return thread(comm, tid, kept, lost)


def random_thresh_thread(rng: random.Random, comm: str, tid: int, count: int, ncpus: int,
                         start: int) -> ThreadData:
    """(entry, return) pairs as tracing_thresh writes them, with stray records and losses."""
    events: list[tuple[int, int, Kind, int, int]] = []
    t, cpu = start, rng.randrange(ncpus)
    while len(events) < count:
        t += abs(_step(rng))
        site, depth = rng.randrange(len(NAMES)), rng.randrange(12)
        if rng.random() < 0.9:
            events += [(max(0, t - abs(_step(rng)) - 1_000_000), site, E, depth, cpu), (t, site, X, depth, cpu)]
        else:
            events.append((t, site, rng.choice((E, N, X, C)), depth, cpu))
    lost = [(rng.randrange(len(events) + 1), rng.randint(1, 50)) for _ in range(rng.randint(0, 4))]
    return thread(comm, tid, events, lost)


def random_trace(seed: int, records: int, thresh: bool) -> TraceData:
    rng = random.Random(seed)
    ncpus = rng.choice((1, 2, 2, 2, 3, 16))
    nthreads = rng.choice((1, 2, 3, 5))
    threads = []
    make = random_thresh_thread if thresh else random_thread
    for k in range(nthreads):
        comm, tid = COMMS[(seed + k) % len(COMMS)]
        threads.append(make(rng, comm, tid + k, records // nthreads, ncpus, rng.randint(0, 5_000_000)))
    return trace(threads, ncpus=ncpus, ns0=rng.choice((0, 360_774_522_999, 12_345_678_901_234_567)),
                 tsc0=rng.choice((0, 1_000)), ns_per_tick=rng.choice((1.0, 0.3571428571428571, 2.5 / 3)))


@pytest.mark.parametrize("seed", range(12))
def test_random_traces(seed: int) -> None:
    rng = random.Random(1000 + seed)
    thresh = seed % 4 == 3
    data = random_trace(seed, 3_000, thresh)
    for mask in [0b111111, 0b111000, *rng.sample(list(ALL_MASKS), 4)]:
        assert_same(data, mask, per_thread=False, thresh=thresh)
    assert_same(data, rng.choice(list(ALL_MASKS)), per_thread=True, thresh=thresh)
    assert_same(data, 0b111000, per_thread=False, thresh=not thresh)


@pytest.mark.parametrize("per_thread", [False, True])
@pytest.mark.parametrize("thresh", [False, True])
def test_a_random_trace_under_every_option_combination(per_thread: bool, thresh: bool) -> None:
    data = random_trace(77, 400, thresh)
    for mask in ALL_MASKS:
        assert_same(data, mask, per_thread, thresh)


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_random_traces_in_small_batches(monkeypatch: pytest.MonkeyPatch, batch: int) -> None:
    monkeypatch.setattr(output, "BATCH_LINES", batch)
    for seed in (3, 8):
        data = random_trace(seed + 100, 1_500, thresh=False)
        assert_same(data, 0b111111, per_thread=False, thresh=False)
        assert_same(data, 0b111000, per_thread=True, thresh=False)


def test_a_long_random_trace() -> None:
    data = random_trace(4242, 30_000, thresh=False)
    assert_same(data, 0b111000, per_thread=False, thresh=False)
    assert_same(data, 0b111011, per_thread=False, thresh=False)


def test_the_random_traces_cover_what_they_should() -> None:
    """The generator's traces hold every kind of line and every mark (a guard on the generator)."""
    text = "".join(render(graph_reference.write_trace, random_trace(seed, 3_000, seed % 4 == 3), 0b111000,
                          False, seed % 4 == 3) for seed in range(12))
    for piece in ("=>", "[LOST ", "} /* ", "() {", "();", "              |  "):
        assert piece in text
    for symbol in "$@*#!+ ":
        assert f") {symbol} " in text
    for digits in range(1, 11):
        assert re.search(r"[ $@*#!+] \d{%d}[. ]" % digits, text), digits
