"""ftrace's ``set_ftrace_filter`` rules, for ``ktracecli ktrace add``.

A rule is one whitespace-free token ``[!]pattern[:mod:MODULE]``:

- ``foo`` exact, ``foo*`` prefix, ``*foo`` suffix, ``*foo*`` substring; a ``*``
  anywhere else, or any of ``?``, ``[``, ``\\``, makes it a full glob
  (``\\`` escapes the next character, as in the kernel);
- a leading ``!`` removes the functions the rule matches;
- ``:mod:MODULE`` matches in the modules (ELF basenames, e.g. ``libc.so.6``)
  whose name matches MODULE, itself a pattern of the same kinds; ``:mod:!M``
  means every module but M; an empty function part means all their functions.
  A rule without ``:mod:`` applies to the main program only.

Not supported, and refused with a one-line :class:`UsageError`: the kernel's
``func:command[:param]`` forms (``traceon``, ``dump``...) and the index form
(a token starting with a digit).
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from ktracecli.errors import UsageError

#: A function that may be selected: (module basename, (canonical name, *aliases)).
Candidate = tuple[str, tuple[str, ...]]

_MOD = ":mod:"
_GLOB_CHARS = "?[\\"


class MatchKind(enum.Enum):
    """How a pattern compares with a name (the kernel's ``enum regex_type``)."""

    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    SUBSTRING = "substring"
    GLOB = "glob"


@dataclass(frozen=True)
class Pattern:
    """A parsed function or module pattern: its kind and the text it compares."""

    text: str
    kind: MatchKind = field(init=False)
    needle: str = field(init=False)

    def __post_init__(self) -> None:
        kind, needle = _classify(self.text)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "needle", needle)

    def matches(self, name: str) -> bool:
        """Whether ``name`` matches this pattern (case-sensitive, like the kernel)."""
        if self.kind is MatchKind.EXACT:
            return name == self.needle
        if self.kind is MatchKind.PREFIX:
            return name.startswith(self.needle)
        if self.kind is MatchKind.SUFFIX:
            return name.endswith(self.needle)
        if self.kind is MatchKind.SUBSTRING:
            return self.needle in name
        return fnmatch.fnmatchcase(name, self.needle)


def _classify(text: str) -> tuple[MatchKind, str]:
    """The kind of ``text`` and the string to compare, following the kernel's filter_parse_regex()."""
    kind = MatchKind.EXACT
    last = len(text) - 1
    for i, char in enumerate(text):
        if char == "*":
            if i == 0:
                kind = MatchKind.SUFFIX
            elif i == last:
                kind = MatchKind.SUBSTRING if kind is MatchKind.SUFFIX else MatchKind.PREFIX
                break
            else:
                return MatchKind.GLOB, _to_fnmatch(text)
        elif char in _GLOB_CHARS:
            return MatchKind.GLOB, _to_fnmatch(text)
    needle = text[1:] if kind in (MatchKind.SUFFIX, MatchKind.SUBSTRING) else text
    if kind in (MatchKind.PREFIX, MatchKind.SUBSTRING):
        needle = needle[:-1]
    return kind, needle


def _to_fnmatch(glob: str) -> str:
    """Rewrite the kernel's ``\\x`` escapes, which fnmatch lacks, as one-character classes."""
    out: list[str] = []
    chars = iter(glob)
    for char in chars:
        if char != "\\":
            out.append(char)
            continue
        escaped = next(chars, "\\")
        out.append(f"[{escaped}]" if escaped in "*?[\\" else escaped)
    return "".join(out)


@dataclass(frozen=True)
class FilterRule:
    """One ``[!]pattern[:mod:[!]MODULE]`` token; ``str(rule)`` gives the token back."""

    pattern: str
    negate: bool = False
    module: str | None = None
    module_negate: bool = False

    @classmethod
    def parse(cls, token: str) -> "FilterRule":
        """Parse one token, or raise a one-line :class:`UsageError` saying what is wrong."""
        text = token.strip()
        if not text:
            raise UsageError("empty filter pattern")
        if any(char.isspace() for char in text):
            raise UsageError(f"filter pattern {token!r} holds whitespace: give one pattern per argument")
        negate = text.startswith("!")
        body = text[1:] if negate else text
        pattern, module, module_negate = body, None, False
        if _MOD in body:
            pattern, module = body.split(_MOD, 1)
            module_negate = module.startswith("!")
            module = module[1:] if module_negate else module
            if not module or ":" in module:
                raise UsageError(f"filter pattern {token!r}: "
                                 "':mod:' must be followed by one module name or glob")
        if ":" in pattern:
            raise UsageError(f"filter pattern {token!r}: 'func:command' forms are not supported, "
                             "only [!]pattern[:mod:MODULE]")
        if pattern[:1].isdigit():
            raise UsageError(f"filter pattern {token!r}: the index form (a number) is not supported, "
                             "give a function name or glob")
        if not pattern and module is None:
            raise UsageError(f"filter pattern {token!r} names no function")
        return cls(pattern, negate, module, module_negate)

    def __str__(self) -> str:
        text = ("!" if self.negate else "") + self.pattern
        if self.module is not None:
            text += _MOD + ("!" if self.module_negate else "") + self.module
        return text

    @cached_property
    def _function_pattern(self) -> Pattern:
        return Pattern(self.pattern)

    @cached_property
    def _module_pattern(self) -> Pattern | None:
        return None if self.module is None else Pattern(self.module)

    def applies_to(self, module_name: str, main_module: str) -> bool:
        """Whether this rule looks at the functions of ``module_name``."""
        if self._module_pattern is None:
            return module_name == main_module
        return self._module_pattern.matches(module_name) != self.module_negate

    def matches(self, candidate: Candidate, main_module: str) -> bool:
        """Whether the function ``candidate`` (module, names) matches this rule, ``!`` aside."""
        module_name, names = candidate
        if not self.applies_to(module_name, main_module):
            return False
        if not self.pattern:
            return True
        return any(self._function_pattern.matches(name) for name in names)


def validate(token: str) -> FilterRule:
    """Check a ``ktrace add`` token; raise :class:`UsageError` if ktracecli cannot use it."""
    return FilterRule.parse(token)


def parse_all(tokens: Iterable[str]) -> list[FilterRule]:
    """Parse every token, in order."""
    return [FilterRule.parse(token) for token in tokens]


@dataclass(frozen=True)
class Selection:
    """The outcome of applying rules to candidates."""

    #: indices into the candidate sequence, in candidate order
    indices: tuple[int, ...]
    #: positive rules that matched no candidate at all (likely typos)
    unmatched: tuple[FilterRule, ...]


def select(rules: Sequence[FilterRule], candidates: Sequence[Candidate], main_module: str) -> Selection:
    """Apply ``rules`` in order to ``candidates`` as ftrace applies set_ftrace_filter.

    Without any positive rule, the starting set is every function of the main
    program; positive rules add what they match, ``!`` rules remove it.
    """
    if any(not rule.negate for rule in rules):
        selected: set[int] = set()
    else:
        selected = {i for i, (module, _) in enumerate(candidates) if module == main_module}
    unmatched: list[FilterRule] = []
    for rule in rules:
        hits = {i for i, candidate in enumerate(candidates) if rule.matches(candidate, main_module)}
        if rule.negate:
            selected -= hits
            continue
        if not hits:
            unmatched.append(rule)
        selected |= hits
    return Selection(tuple(sorted(selected)), tuple(unmatched))
