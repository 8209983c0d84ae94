"""set_ftrace_filter syntax and selection semantics (ftrace-format.md §1.2)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from ktracecli.errors import UsageError
from ktracecli.filters import Candidate, FilterRule, MatchKind, Pattern, parse_all, select, validate

MAIN = "prog"
CANDIDATES: list[Candidate] = [
    ("prog", ("main",)),                          # 0
    ("prog", ("do_work", "work_alias")),          # 1
    ("prog", ("work_done",)),                     # 2
    ("prog", ("helper",)),                        # 3
    ("libc.so.6", ("malloc", "__libc_malloc")),   # 4
    ("libc.so.6", ("free",)),                     # 5
    ("libm.so.6", ("sin",)),                      # 6
    ("libfoo.so", ("main",)),                     # 7: same name as the program's main
]


def names(tokens: Sequence[str]) -> set[str]:
    """The selected candidates, as 'module:first name' for readable failures."""
    selection = select(parse_all(tokens), CANDIDATES, MAIN)
    return {f"{CANDIDATES[i][0]}:{CANDIDATES[i][1][0]}" for i in selection.indices}


@pytest.mark.parametrize("text, kind, needle", [
    ("foo", MatchKind.EXACT, "foo"),
    ("foo*", MatchKind.PREFIX, "foo"),
    ("*foo", MatchKind.SUFFIX, "foo"),
    ("*foo*", MatchKind.SUBSTRING, "foo"),
    ("*", MatchKind.SUFFIX, ""),
    ("f*o", MatchKind.GLOB, "f*o"),
    ("*f*o", MatchKind.GLOB, "*f*o"),
    ("fo?", MatchKind.GLOB, "fo?"),
    ("f[ab]o", MatchKind.GLOB, "f[ab]o"),
    ("foo\\*", MatchKind.GLOB, "foo[*]"),
])
def test_pattern_kinds(text: str, kind: MatchKind, needle: str) -> None:
    pattern = Pattern(text)
    assert (pattern.kind, pattern.needle) == (kind, needle)


@pytest.mark.parametrize("text, name, expected", [
    ("foo", "foo", True), ("foo", "foobar", False),
    ("foo*", "foobar", True), ("foo*", "afoo", False),
    ("*foo", "afoo", True), ("*foo", "foob", False),
    ("*foo*", "xfooy", True), ("*foo*", "fo", False),
    ("*", "anything", True),
    ("f*o", "fxxo", True), ("f*o", "fxxoy", False),
    ("fo?", "foo", True), ("fo?", "fooo", False),
    ("sys_[rw]*", "sys_read", True), ("sys_[rw]*", "sys_open", False),
    ("a\\*b", "a*b", True), ("a\\*b", "axb", False),
    ("Foo", "foo", False),
])
def test_pattern_matching(text: str, name: str, expected: bool) -> None:
    assert Pattern(text).matches(name) is expected


@pytest.mark.parametrize("token, rule", [
    ("foo", FilterRule("foo")),
    ("!foo*", FilterRule("foo*", negate=True)),
    ("malloc:mod:libc.so.6", FilterRule("malloc", module="libc.so.6")),
    ("!*alloc:mod:lib*", FilterRule("*alloc", negate=True, module="lib*")),
    (":mod:libm.so.6", FilterRule("", module="libm.so.6")),
    ("!:mod:libc*", FilterRule("", negate=True, module="libc*")),
    ("*:mod:!libc*", FilterRule("*", module="libc*", module_negate=True)),
])
def test_parse_and_round_trip(token: str, rule: FilterRule) -> None:
    assert FilterRule.parse(token) == rule
    assert str(rule) == token
    assert validate(token) == rule


def test_parse_strips_surrounding_whitespace() -> None:
    assert FilterRule.parse("  foo\n") == FilterRule("foo")


@pytest.mark.parametrize("token, message", [
    ("", "empty filter pattern"),
    ("!", "names no function"),
    ("foo bar", "whitespace"),
    ("foo:traceoff", "'func:command' forms are not supported"),
    ("foo:stacktrace:5", "'func:command' forms are not supported"),
    ("foo:mod", "'func:command' forms are not supported"),
    ("foo:mod:", "':mod:' must be followed by one module"),
    ("foo:mod:!", "':mod:' must be followed by one module"),
    ("123", "index form"),
    ("!7", "index form"),
])
def test_unsupported_tokens_are_one_line_usage_errors(token: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        FilterRule.parse(token)
    assert "\n" not in str(info.value)


class TestSelect:
    def test_no_rules_selects_the_whole_main_program(self) -> None:
        assert names([]) == {"prog:main", "prog:do_work", "prog:work_done", "prog:helper"}

    def test_only_negative_rules_start_from_the_main_program(self) -> None:
        assert names(["!work*", "!*done"]) == {"prog:main", "prog:helper"}

    def test_rule_without_mod_applies_to_the_main_program_only(self) -> None:
        assert names(["main"]) == {"prog:main"}
        assert names(["malloc"]) == set()

    def test_aliases_match(self) -> None:
        assert names(["work_alias"]) == {"prog:do_work"}
        assert names(["__libc_*:mod:libc.so.6"]) == {"libc.so.6:malloc"}

    def test_patterns_add_in_order_and_negations_remove(self) -> None:
        assert names(["*work*", "!work_done", "helper"]) == {"prog:do_work", "prog:helper"}
        # a later positive rule adds back what an earlier ! removed
        assert names(["*work*", "!work_done", "work_done"]) == {"prog:do_work", "prog:work_done"}

    def test_mod_with_exact_name_and_glob(self) -> None:
        assert names(["malloc:mod:libc.so.6"]) == {"libc.so.6:malloc"}
        assert names([":mod:lib[cm].so.6"]) == {"libc.so.6:malloc", "libc.so.6:free", "libm.so.6:sin"}
        assert names(["main:mod:*"]) == {"prog:main", "libfoo.so:main"}

    def test_mod_can_name_the_main_program(self) -> None:
        assert names([":mod:prog"]) == {"prog:main", "prog:do_work", "prog:work_done", "prog:helper"}

    def test_negated_module_means_every_other_module(self) -> None:
        assert names(["main:mod:!libfoo*"]) == {"prog:main"}
        assert names([":mod:!lib*"]) == names([])

    def test_negative_rule_with_mod(self) -> None:
        assert names([":mod:libc.so.6", "!free:mod:libc*"]) == {"libc.so.6:malloc"}
        assert names(["!:mod:libc.so.6"]) == names([])

    def test_rules_matching_nothing_are_reported(self) -> None:
        rules = parse_all(["main", "mian", "sin:mod:libc.so.6", ":mod:libz*", "!nothing"])
        selection = select(rules, CANDIDATES, MAIN)
        assert [str(rule) for rule in selection.unmatched] == ["mian", "sin:mod:libc.so.6", ":mod:libz*"]
        assert selection.indices == (0,)

    def test_indices_are_in_candidate_order(self) -> None:
        selection = select(parse_all(["sin:mod:*", "helper", "main"]), CANDIDATES, MAIN)
        assert selection.indices == (0, 3, 6)
        assert selection.unmatched == ()

    def test_no_candidates(self) -> None:
        assert select([], [], MAIN).indices == ()
