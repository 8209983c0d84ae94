"""function_graph's runtime is laid out where its handlers expect it."""

from __future__ import annotations

import dataclasses

import pytest

from ktracecli.arch.x86_64.assembler import assemble
from ktracecli.runtime.layout import RuntimeLayout
from ktracecli_function_graph.records import RECORD_DTYPE
from ktracecli_function_graph.runtime import LEA_RSP_MINUS_8, PUSH_RAX, runtime_code
from ktracecli_function_graph.shadow import CALL_RETURN, TRAMPOLINE_STUB, trampoline_addr

RUNTIME = 0x7F10_0000_0000


@pytest.mark.parametrize("buffer_kb", [64, 4096, 64 * 1024 * 1024])
def test_per_slot_entries_sit_where_the_handlers_point(buffer_kb: int) -> None:
    """The call return fits before the per-slot entries, whatever the ring size (its largest encodings)."""
    layout = dataclasses.replace(RuntimeLayout.for_buffer(buffer_kb, RECORD_DTYPE.itemsize).at(0x7F00_0000_0000),
                                 runtime=RUNTIME, private=0x7F20_0000_0000)
    code = assemble(runtime_code(layout).source, RUNTIME)
    assert int.from_bytes(code[:8], "little") > RUNTIME + CALL_RETURN
    for slot in (0, 1, layout.nslots - 1):
        at = trampoline_addr(layout, slot) - RUNTIME
        entry = code[at:at + TRAMPOLINE_STUB]
        assert entry.startswith(LEA_RSP_MINUS_8 + PUSH_RAX + b"\x68" + slot.to_bytes(4, "little") + b"\xe9")
    # the call return starts right after the resync pointer: not int3 padding
    assert code[CALL_RETURN] != 0xCC
