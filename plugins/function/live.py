"""Streaming the function tracer's lines while a session runs (``--live``, the kernel's trace_pipe).

Each round of drained records is merged across threads in time order and
printed at once, in exactly the lines ``show`` prints, without the header::

                prog-4242    [001]  5012.118834: main <-__libc_start_call_main
    CPU:1 [LOST 311 EVENTS]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

import numpy as np

from ktracecli.interface import LiveBatch, LiveContext
from ktracecli_function.records import decode
from ktracecli_function.output import ADDR_MASK, format_line, lost_line, parent_names, task_field


class FunctionLiveWriter:
    """Prints function-tracer records as they arrive."""

    def __init__(self, context: LiveContext, out: TextIO) -> None:
        self.context = context
        self.out = out

    def write(self, batches: Sequence[LiveBatch]) -> None:
        """Print one round: every thread's records merged by time, LOST lines where rings overflowed."""
        batches = [b for b in batches if len(b.records) or b.lost]
        if not batches:
            return
        records = [decode(b.records, [(0, b.drained)]) for b in batches]
        merged = np.concatenate(records)
        owner = np.concatenate([np.full(len(r), i, dtype=np.int32) for i, r in enumerate(records)])
        local = np.concatenate([np.arange(len(r), dtype=np.int64) for r in records])
        ns = self.context.timestamps_ns(merged["tsc"])
        order = np.argsort(ns, kind="stable")
        lines: list[str] = []
        # a batch that is all loss (no record at all) reports it first
        for b, r in zip(batches, records):
            if b.lost and not len(r):
                lines.append(lost_line(0, b.lost))
        if len(order):
            rec = merged[order]
            owners = owner[order]
            cpus = (rec["parent"] >> np.uint64(48)).astype(np.int64).tolist()
            spaces = np.array([b.space for b in batches], dtype=np.int64)[owners]
            parents = parent_names(self.context.symbolize, spaces, rec["parent"] & np.uint64(ADDR_MASK))
            usecs = ((ns[order] + 500) // 1000).tolist()
            locals_ = local[order].tolist()
            owner_list = owners.tolist()
            sites = rec["site"].tolist()
            tasks = [task_field(b.comm, b.tid) for b in batches]
            last_of = {i: len(r) - 1 for i, r in enumerate(records)}
            for k in range(len(order)):
                b = owner_list[k]
                batch = batches[b]
                if batch.lost and batch.lost_at == locals_[k]:
                    lines.append(lost_line(cpus[k], batch.lost))
                lines.append(format_line(tasks[b], cpus[k], usecs[k], self.context.site_name(sites[k]),
                                         parents[k]))
                if batch.lost and batch.lost_at > last_of[b] == locals_[k]:
                    lines.append(lost_line(cpus[k], batch.lost))
        self.out.write("".join(lines))
        self.out.flush()

    def close(self) -> None:
        """Nothing is held back: flush."""
        self.out.flush()
