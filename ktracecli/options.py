"""The kernel's ``trace_options`` that ktracecli honours, and their on/off state.

Like the kernel's file, each option reads as ``name`` when set and ``noname``
when clear, and is changed by writing either form.  Only options that change
what ``show`` prints live here; they apply when a trace is shown, so one
recording can be read with any of them.  Defaults are the kernel's.  Unlike
the kernel's file, which lists and accepts a tracer's options only while it
is the current tracer, every option is listed and settable at any time (as
the kernel's ``options/<name>`` files are).

====================  =======  ==============================================
option                default  effect on function_graph output
====================  =======  ==============================================
funcgraph-cpu         on       the CPU column
funcgraph-overhead    on       the ``+ ! # * @ $`` marks before durations
funcgraph-duration    on       the duration column
funcgraph-proc        off      the TASK/PID column (comm-pid, centred)
funcgraph-abstime     off      the absolute TIME column
funcgraph-tail        off      ``} /* func */`` on every return
funcgraph-overrun     off      accepted for scripts written for the kernel;
funcgraph-irqs        on       no effect in user space
====================  =======  ==============================================
"""

from __future__ import annotations

from dataclasses import dataclass

from ktracecli.errors import UsageError


@dataclass(frozen=True)
class TraceOption:
    """One option of ``trace_options``: its kernel name, default and what it does."""

    name: str
    default: bool
    help: str


#: every option, in the kernel's listing order
OPTIONS: tuple[TraceOption, ...] = (
    TraceOption("funcgraph-overrun", False, "not recorded in user space: accepted, no effect"),
    TraceOption("funcgraph-cpu", True, "print the CPU column"),
    TraceOption("funcgraph-overhead", True, "mark long durations with + ! # * @ $"),
    TraceOption("funcgraph-proc", False, "print the TASK/PID column"),
    TraceOption("funcgraph-duration", True, "print the DURATION column"),
    TraceOption("funcgraph-abstime", False, "print the absolute TIME column"),
    TraceOption("funcgraph-irqs", True, "no interrupts in user space: accepted, no effect"),
    TraceOption("funcgraph-tail", False, "print the function name on every return: } /* func */"),
)
_BY_NAME = {option.name: option for option in OPTIONS}


@dataclass(frozen=True)
class TraceOptions:
    """The options that are set (every other known option is clear)."""

    enabled: frozenset[str] = frozenset(o.name for o in OPTIONS if o.default)

    def __contains__(self, name: object) -> bool:
        return name in self.enabled

    def set(self, token: str) -> "TraceOptions":
        """The options after writing ``token`` (``name`` sets it, ``noname`` clears it)."""
        name, on = parse(token)
        return TraceOptions(self.enabled | {name} if on else self.enabled - {name})

    def lines(self) -> list[str]:
        """One ``opt`` or ``noopt`` line per option, as the kernel lists them."""
        return [o.name if o.name in self.enabled else f"no{o.name}" for o in OPTIONS]

    def changed(self) -> dict[str, bool]:
        """The options whose state differs from the default, by name."""
        return {o.name: o.name in self.enabled for o in OPTIONS if (o.name in self.enabled) != o.default}

    @classmethod
    def from_values(cls, values: dict[str, bool]) -> "TraceOptions":
        """Defaults, overridden by ``values`` (option name -> set); unknown names are a UsageError."""
        enabled = set(cls().enabled)
        for name, on in values.items():
            check(name)
            (enabled.add if on else enabled.discard)(name)
        return cls(frozenset(enabled))


def check(name: str) -> TraceOption:
    """The option called ``name``; UsageError naming the known ones otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UsageError(f"unknown trace option {name!r} (known: {', '.join(_BY_NAME)})") from None


def parse(token: str) -> tuple[str, bool]:
    """``name`` -> (name, True); ``noname`` -> (name, False), as trace_options reads a write."""
    token = token.strip()
    if token not in _BY_NAME and token.startswith("no") and token[2:] in _BY_NAME:
        return token[2:], False
    return check(token).name, True
