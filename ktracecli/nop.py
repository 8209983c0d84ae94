"""The ``nop`` tracer: tracing off, as the kernel's default ``current_tracer``.

It records nothing (``record_dtype`` is None), so a session with it needs no
handler in the tracee.  It registers through the ``ktracecli`` entry point
exactly as a third-party tracer package would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, TextIO

from ktracecli.hookspecs import hookimpl
from ktracecli.interface import ShowSettings

if TYPE_CHECKING:
    import numpy as np

    from ktracecli.datadir import TraceData
    from ktracecli.interface import LiveBatch, LiveContext
    from ktracecli.registry import Registry
    from ktracecli.runtime.layout import RuntimeLayout


class NopTracer:
    """Records nothing; ``show`` prints the kernel's nop header."""

    name: ClassVar[str] = "nop"
    description: ClassVar[str] = "no tracing (the default, like the kernel's nop tracer)"
    record_dtype: ClassVar["np.dtype | None"] = None

    def handler_source(self, layout: "RuntimeLayout") -> str:
        """A handler that returns at once, should a session install one anyway.

        A session need not install any handler for a tracer without a record
        dtype; this one is still correct under the handler ABI: it touches
        nothing but r11 (the stub's plain continuation) and drops the site
        index with ``ret 8``.
        """
        from ktracecli.arch.x86_64.handler_call import ON
        return f".quad 0\nmov r11, qword ptr [rsp]\nlea r11, [r11+{ON}]\nret 8\n"

    def show(self, data: "TraceData", out: TextIO, settings: ShowSettings = ShowSettings()) -> None:
        """Print what the kernel's ``trace`` file shows under nop: the header and nothing else."""
        out.write("# tracer: nop\n#\n")

    def live_writer(self, context: "LiveContext", out: TextIO) -> "NopLiveWriter":
        """trace_pipe under nop: nothing is ever printed."""
        return NopLiveWriter()


class NopLiveWriter:
    """The live writer of the nop tracer: there are no records to print."""

    def write(self, batches: "Sequence[LiveBatch]") -> None:
        """Print nothing."""

    def close(self) -> None:
        """Nothing to flush."""


@hookimpl
def ktrace_register_tracers(registry: "Registry") -> None:
    """Add :class:`NopTracer` to the registry."""
    registry.add_tracer(NopTracer)
