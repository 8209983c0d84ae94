"""The ``function`` tracer: one line per traced call, with its caller, in ftrace's format."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, TextIO

from ktracecli.hookspecs import hookimpl
from ktracecli.interface import ShowSettings

if TYPE_CHECKING:
    import numpy as np

    from ktracecli.datadir import TraceData
    from ktracecli.interface import LiveContext, LiveWriter
    from ktracecli.registry import Registry
    from ktracecli.runtime.layout import RuntimeLayout


class FunctionTracer:
    """ftrace's ``function`` tracer."""

    name: ClassVar[str] = "function"
    description: ClassVar[str] = "one line per traced call, with its caller"

    #: site indices a record holds (see :mod:`ktracecli_function.records`); functions past them are refused
    max_sites: ClassVar[int] = 1 << 21

    @property
    def record_dtype(self) -> "np.dtype":
        """The 16-byte record of :mod:`ktracecli_function.records` (numpy is imported on first use,
        so that registering the tracer costs nothing)."""
        from ktracecli_function.records import RECORD_DTYPE
        return RECORD_DTYPE

    def handler_source(self, layout: "RuntimeLayout") -> str:
        """Assembly of the handler that writes one record per call."""
        from ktracecli_function.handler import handler_source
        return handler_source(layout)

    def show(self, data: "TraceData", out: TextIO, settings: ShowSettings = ShowSettings()) -> None:
        """Print ``data`` in the function tracer's format (irq-info off); no option applies to it."""
        from ktracecli_function.output import write_trace

        write_trace(data, out)

    def live_writer(self, context: "LiveContext", out: TextIO) -> "LiveWriter":
        """Stream records as the function tracer's lines, without the header (trace_pipe)."""
        from ktracecli_function.live import FunctionLiveWriter

        return FunctionLiveWriter(context, out)


@hookimpl
def ktrace_register_tracers(registry: "Registry") -> None:
    """Register the function tracer."""
    registry.add_tracer(FunctionTracer)
