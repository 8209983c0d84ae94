"""ktracecli.render against plain Python formatting, on seeded random values."""

from __future__ import annotations

import random

import numpy as np
import pytest

from ktracecli import render


def lines(*columns: np.ndarray) -> list[str]:
    n = len(columns[0])
    return render.join_rows([*columns, render.constant("\n", n)]).decode().split("\n")[:-1]


def kernel_duration(ns: int) -> str:
    """The kernel's function_graph duration number (trace_print_graph_duration)."""
    usecs, rem = divmod(ns, 1000)
    text = str(usecs)
    if len(text) < 7:
        text += "." + f"{rem:03d}"[:min(3, 7 - len(text))]
    return text


def some_integers(seed: int, negative: bool) -> list[int]:
    rng = random.Random(seed)
    values = [rng.choice((0, 1, 9, 10, 99, 999, 9999, 10_000, 10**8 - 1, 10**8, 10**12, 10**18))
              + rng.randint(0, 2) for _ in range(200)]
    values += [int(10 ** rng.uniform(0, 18.9)) for _ in range(200)]
    if negative:
        values = [v if rng.random() < 0.5 else -v for v in values]
    return values


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("width", [0, 1, 2, 3, 5, 6, 8, 12, 21])
def test_decimal_is_printf(seed: int, width: int) -> None:
    signed = some_integers(seed, negative=True)
    assert lines(render.decimal(np.array(signed), width)) == [f"{v:{width}d}" for v in signed]
    unsigned = [abs(v) for v in signed]
    assert lines(render.decimal(np.array(unsigned), width, "0")) == [f"{v:0{width}d}" for v in unsigned]
    small = [v % 7 for v in unsigned]  # no row wider than the field
    assert lines(render.decimal(np.array(small), width)) == [f"{v:{width}d}" for v in small]


def test_decimal_refuses_negative_numbers_with_zero_fill() -> None:
    with pytest.raises(ValueError):
        render.decimal(np.array([-1]), 3, "0")


@pytest.mark.parametrize("seed", range(4))
def test_fixed_point_is_the_kernel_duration(seed: int) -> None:
    values = [abs(v) for v in some_integers(seed, negative=False)]
    column, lengths = render.fixed_point(np.array(values), 3, 7)
    expected = [kernel_duration(v) for v in values]
    assert lines(column) == expected
    assert lengths.tolist() == [len(text) for text in expected]
    column, lengths = render.fixed_point(np.array([5, 120]), 3, 7)  # every row has a fraction
    assert lines(column) == ["0.005", "0.120"]


def test_factorize_is_unique_with_inverse() -> None:
    rng = np.random.default_rng(1)
    for keys in (rng.integers(0, 50, 1000), rng.integers(0, 10**12, 1000), np.array([7]), np.zeros(0, int)):
        distinct, which = render.factorize(keys)
        expected, inverse = np.unique(keys, return_inverse=True)
        assert distinct.tolist() == expected.tolist()
        assert which.tolist() == inverse.reshape(-1).tolist()


@pytest.mark.parametrize("seed", range(6))
def test_join_rows_with_a_last_column_of_any_length_and_inserts(seed: int) -> None:
    """Strings of similar lengths are padded; a few very long ones are wrapped over several rows."""
    rng = random.Random(seed)
    n = rng.randint(1, 300)
    strings = [("  " * rng.choice((0, 1, 5, 40, 1000)) + "f" * rng.randint(0, 30) + "ü\n").encode()
               for _ in range(rng.randint(1, 20))]
    index = np.array([rng.randrange(len(strings)) for _ in range(n)])
    numbers = [rng.randint(0, 10**rng.randint(0, 9)) for _ in range(n)]
    inserts = sorted((rng.randint(0, n), f"insert {k}\n".encode()) for k in range(rng.randint(0, 12)))
    for columns in ([render.decimal(np.array(numbers), 4), render.constant(" | ", n)], []):
        text = render.join_rows(columns, inserts, last=(strings, index))
        rows = [(f"{v:4d} | " if columns else "").encode() + strings[i] for v, i in zip(numbers, index.tolist())]
        for at, extra in reversed(inserts):
            rows.insert(at, extra)
        assert text == b"".join(rows)


def test_join_rows_of_nothing_is_the_inserts() -> None:
    assert render.join_rows([render.constant("x", 0)], [(0, b"a\n"), (0, b"b\n")]) == b"a\nb\n"
