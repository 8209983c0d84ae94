"""The ``function_graph`` tracer: nested calls with their durations, in ftrace's graph format.

The engines deliver function entries only; this tracer hooks returns itself,
through the handler ABI's return-address slot, so it works unchanged over
every engine.  Its parts:

- ``records``: the 16-byte ring record;
- ``shadow``: the per-thread shadow stacks and shared assembly;
- ``handler``: the entry handler (one copy per module);
- ``runtime``: the call return, the resync routine and the C++ unwinder hooks (once per process);
- ``graph`` and ``output``: turning records into ftrace's function_graph text.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, ClassVar, TextIO

from ktracecli.hookspecs import hookimpl
from ktracecli.interface import RuntimeCode, ShowSettings

if TYPE_CHECKING:
    import numpy as np

    from ktracecli.datadir import TraceData
    from ktracecli.interface import LiveContext, LiveWriter
    from ktracecli.registry import Registry
    from ktracecli.runtime.layout import RuntimeLayout

#: functions whose return address must not be touched, whichever engine could trace them, and why
REFUSED: tuple[tuple[str, str], ...] = (
    ("setjmp", "returns twice"), ("_setjmp", "returns twice"), ("__setjmp", "returns twice"),
    ("sigsetjmp", "returns twice"), ("__sigsetjmp", "returns twice"), ("savectx", "returns twice"),
    ("vfork", "returns twice"), ("__vfork", "returns twice"),
    ("getcontext", "returns twice"), ("__getcontext", "returns twice"),
    ("swapcontext", "switches stacks"), ("__swapcontext", "switches stacks"),
    ("__start_context", "switches stacks"), ("__push___start_context", "switches stacks"),
    ("_start", "entered by the kernel, not called"), ("_dl_start", "entered by the kernel, not called"),
    ("_dl_start_user", "entered by the kernel, not called"), ("__restore_rt", "entered by sigreturn, not called"),
    ("_dl_runtime_resolve*", "entered from a PLT stub, not called"),
    ("_dl_runtime_profile*", "entered from a PLT stub, not called"),
    ("_Unwind_*", "the unwinder reads its own return address"),
    ("__cxa_begin_catch", "hooked by the tracer's runtime"),
)
REFUSAL_PREFIX = "function_graph cannot hook its return: "


class FunctionGraphTracer:
    """ftrace's ``function_graph`` tracer."""

    name: ClassVar[str] = "function_graph"
    description: ClassVar[str] = "nested calls with their durations (return hooking)"

    @property
    def record_dtype(self) -> "np.dtype":
        """The 16-byte record of :mod:`ktracecli_function_graph.records` (numpy is imported on
        first use, so that registering the tracer costs nothing)."""
        from ktracecli_function_graph.records import RECORD_DTYPE

        return RECORD_DTYPE

    def handler_source(self, layout: "RuntimeLayout") -> str:
        """Assembly of the entry handler (needs ``layout.runtime`` and ``layout.private``)."""
        from ktracecli_function_graph.handler import handler_source

        return handler_source(layout)

    def private_size(self, layout: "RuntimeLayout") -> int:
        """One shadow stack per slot."""
        from ktracecli_function_graph.shadow import private_size

        return private_size(layout)

    def runtime(self, layout: "RuntimeLayout") -> RuntimeCode:
        """The call return, the resync routine and the unwinder hooks."""
        from ktracecli_function_graph.runtime import runtime_code

        return runtime_code(layout)

    def refusal(self, name: str) -> str | None:
        """Why ``name`` cannot be traced with return hooking, or None."""
        for pattern, why in REFUSED:
            if fnmatch.fnmatchcase(name, pattern):
                return REFUSAL_PREFIX + why
        return None

    def show(self, data: "TraceData", out: TextIO, settings: ShowSettings = ShowSettings()) -> None:
        """Print ``data`` in ftrace's function_graph format, with the trace options of ``settings``."""
        from ktracecli_function_graph.output import write_trace

        write_trace(data, out, settings)

    def live_writer(self, context: "LiveContext", out: TextIO) -> "LiveWriter":
        """Stream records as function_graph lines, without the header (trace_pipe)."""
        from ktracecli_function_graph.live import GraphLiveWriter

        return GraphLiveWriter(context, out)


@hookimpl
def ktrace_register_tracers(registry: "Registry") -> None:
    """Register the function_graph tracer."""
    registry.add_tracer(FunctionGraphTracer)
