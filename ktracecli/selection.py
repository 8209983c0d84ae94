"""Which functions a session traces: the filter rules applied to the engine's analyses.

The analysis of each module is computed once per session (and cached across
sessions by build-id); the rules are ftrace's set_ftrace_filter rules.  Site
indices, the numbers records carry, are given out once per (module mapping,
function) by :class:`SiteTable` and never reused within a session.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ktracecli import analysis_cache, filters
from ktracecli.elf.image import ElfImage
from ktracecli.errors import NoMatchError
from ktracecli.interface import Analysis, Engine, FunctionSite, Tracer
from ktracecli.model import Refusal
from ktracecli.runtime.installer import LoadedModule


def refused_by_tracer(tracer: Tracer, analysis: Analysis) -> Analysis:
    """``analysis`` with the sites the tracer refuses (its optional ``refusal``) moved to the refusals."""
    refusal = getattr(tracer, "refusal", None)
    if refusal is None:
        return analysis
    sites, refusals = [], list(analysis.refusals)
    for site in analysis.sites:
        reason = next((r for r in map(refusal, site.names) if r), None)
        if reason:
            refusals.append(Refusal(site.name, site.vaddr, reason))
        else:
            sites.append(site)
    return Analysis(tuple(sites), tuple(refusals))


@dataclass(frozen=True)
class Plan:
    """The functions to enable, and how many selected functions the engine refuses."""

    sites: list[tuple[LoadedModule, FunctionSite]]
    refused: int


class Selector:
    """Applies one session's rules to the modules of its processes.

    ``rules`` may be replaced while the session runs (``ktracecli ktrace add``...).
    """

    def __init__(self, engine: Engine, rules: list[filters.FilterRule], tracer: Tracer | None = None) -> None:
        self.engine = engine
        self.rules = rules
        self.tracer = tracer
        self._analyses: dict[str, Analysis] = {}

    def analysis(self, path: str) -> Analysis:
        """The engine's analysis of one module, computed once, less what the tracer refuses."""
        if path not in self._analyses:
            with ElfImage.open(path) as image:
                analysis = analysis_cache.analyze(self.engine, image)
            self._analyses[path] = refused_by_tracer(self.tracer, analysis) if self.tracer else analysis
        return self._analyses[path]

    def analyzed(self, path: str) -> Analysis | None:
        """The analysis of ``path`` if this session made one."""
        return self._analyses.get(path)

    def wanted(self, name: str, main_name: str) -> bool:
        """Whether a module's functions can be selected by the rules (the main program always)."""
        return name == main_name or any(r.module is not None and r.applies_to(name, main_name)
                                        for r in self.rules)

    def plan(self, modules: list[LoadedModule], main_name: str, strict: bool = True) -> Plan:
        """Apply the rules to the functions of ``modules``, whose main program is ``main_name``.

        ``strict`` (at start): a rule that matches nothing in the modules it names,
        or a main program the engine can trace nothing of, is an error.  A
        ``:mod:`` rule whose library is not loaded waits for it (the kernel keeps
        such rules for modules not loaded), and while a session runs nothing is
        an error.
        """
        candidates: list[filters.Candidate] = []
        entries: list[tuple[LoadedModule, FunctionSite | None]] = []
        refusal_names: dict[int, str] = {}
        analyses: list[tuple[str, Analysis]] = []
        for module in modules:
            if not self.wanted(module.name, main_name):
                continue
            analysis = self.analysis(module.path)
            analyses.append((module.name, analysis))
            for site in analysis.sites:
                candidates.append((module.name, site.names))
                entries.append((module, site))
            for refusal in analysis.refusals:
                candidates.append((module.name, (refusal.name,)))
                refusal_names[len(entries)] = f"{refusal.name} ({refusal.reason})"
                entries.append((module, None))
        if strict and analyses and not any(a.sites for _name, a in analyses):
            self._explain_nothing_traceable(analyses)
        selection = filters.select(self.rules, candidates, main_name)
        # a :mod: rule for a library not loaded yet waits for it, as the kernel caches it for a module
        present = {m.name for m in modules} | {main_name}
        unmatched = tuple(r for r in selection.unmatched if any(r.applies_to(name, main_name) for name in present))
        if strict and unmatched:
            self._explain_unmatched(unmatched, candidates, refusal_names, main_name)
        chosen: list[tuple[LoadedModule, FunctionSite]] = []
        refused = 0
        for i in selection.indices:
            module, maybe_site = entries[i]
            if maybe_site is None:
                refused += 1
            else:
                chosen.append((module, maybe_site))
        return Plan(chosen, refused)

    def _explain_nothing_traceable(self, analyses: list[tuple[str, Analysis]]) -> None:
        """One line for modules in which the engine can trace nothing: the commonest reason first."""
        reasons = Counter(r.reason for _name, a in analyses for r in a.refusals)
        reason = reasons.most_common(1)[0][0] if reasons else "no function symbols"
        total = sum(reasons.values())
        raise NoMatchError(f"{', '.join(name for name, _a in analyses)}: {reason} "
                           f"(the {self.engine.name} engine can trace none of its {total} functions)")

    def _explain_unmatched(self, rules: tuple[filters.FilterRule, ...], candidates: list[filters.Candidate],
                           refusal_names: dict[int, str], main_name: str) -> None:
        rule = rules[0]
        refused = [refusal_names[i] for i, c in enumerate(candidates)
                   if i in refusal_names and rule.matches(c, main_name)]
        where = f"module {rule.module}" if rule.module else main_name
        if refused:
            raise NoMatchError(f"pattern '{rule}' matches only functions the {self.engine.name} engine "
                               f"refuses: {', '.join(refused[:3])}")
        raise NoMatchError(f"pattern '{rule}' matches no function in {where}")


@dataclass
class SiteTable:
    """Site indices of one session: (module file, load bias, function) -> index.

    The same function at the same address (a forked child's copy, a library
    unloaded and loaded again where it was) keeps its index; anything else gets
    a new one, so an index never names two functions.  ``entries`` only grows,
    so it is safe to read from another thread.
    """

    entries: list[dict[str, Any]] = field(default_factory=list)
    _index: dict[tuple[str, int, int], int] = field(default_factory=dict)

    def index(self, module: LoadedModule, site: FunctionSite) -> int:
        """The index of ``site`` in ``module``, given out on first use."""
        key = (module.path, module.bias, site.vaddr)
        found = self._index.get(key)
        if found is None:
            found = self._index[key] = len(self.entries)
            self.entries.append({"name": site.name, "module": module.name, "addr": site.vaddr + module.bias})
        return found

    def note_detour(self, index: int, size: int) -> None:
        """The bytes of tracee memory the site's stub takes (recorded once, from the first process)."""
        self.entries[index].setdefault("detour", size)

    def names(self) -> list[str]:
        """Function name of each index."""
        return [e["name"] for e in self.entries]

    def name(self, index: int) -> str:
        """Function name of one index."""
        return str(self.entries[index]["name"])
