"""The mcount engine's site finding, frame-pointer check, NOPs and stubs, on programs gcc builds at test time."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from ktracecli.arch.x86_64 import X86, Kind, frame_pointer_refusal
from ktracecli.arch.x86_64.assembler import assemble
from ktracecli.elf import ElfImage
from ktracecli.interface import Analysis
from ktracecli_mcount.analysis import NO_SITE, analyze
from ktracecli_mcount.site import CallSite, Form, McountRefusal, McountSite, Slot
from ktracecli.arch.x86_64.handler_call import BY_CALL, ON, RETURN_POINT
from ktracecli_mcount.engine import McountEngine

SOURCE = r"""
int counter;
__attribute__((noipa)) int leaf(int x) { counter++; return x + 1; }
__attribute__((noipa)) int outer(int x) { int a[64]; for (int i = 0; i < 64; i++) a[i] = leaf(i + x); return a[x & 63]; }
int main(int argc, char **argv) { (void)argv; return outer(argc) & 1; }
"""
NOFP_ASM = r"""
__asm__(".text\n .globl nofp\n .type nofp, @function\nnofp:\n"
        "  sub $8, %rsp\n  call mcount@PLT\n  add $8, %rsp\n  ret\n .size nofp, .-nofp\n");
"""

#: (form, flags) -> the site every function gets: (Form, length, Slot)
CASES = {
    "pg-pie": (("-pg", "-fPIE", "-pie"), (Form.MCOUNT, 6, Slot.FRAME_POINTER)),
    "pg-nopie": (("-pg", "-fno-pie", "-no-pie"), (Form.MCOUNT, 5, Slot.FRAME_POINTER)),
    "fentry-pie": (("-pg", "-mfentry", "-fPIE", "-pie"), (Form.FENTRY, 6, Slot.ENTRY)),
    "fentry-nopie": (("-pg", "-mfentry", "-fno-pie", "-no-pie"), (Form.FENTRY, 5, Slot.ENTRY)),
    "nop-mcount": (("-pg", "-mfentry", "-mnop-mcount", "-mrecord-mcount", "-fno-pie", "-no-pie"),
                   (Form.NOP_MCOUNT, 5, Slot.ENTRY)),
    "patchable5": (("-fpatchable-function-entry=5",), (Form.PATCHABLE, 5, Slot.ENTRY)),
    "patchable7,2-cet": (("-fpatchable-function-entry=7,2", "-fcf-protection"), (Form.PATCHABLE, 5, Slot.ENTRY)),
    "pg-cet": (("-pg", "-fcf-protection"), (Form.MCOUNT, 6, Slot.FRAME_POINTER)),
}


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory, gcc: str) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mcount")
    src = root / "m.c"
    src.write_text(SOURCE)
    nofp = root / "nofp.c"
    nofp.write_text(SOURCE + NOFP_ASM)
    out = {}
    for name, (flags, _want) in CASES.items():
        for opt in ("-O0", "-O2"):
            exe = root / f"m-{name}{opt}"
            subprocess.run([gcc, opt, *flags, "-o", str(exe), str(src)], check=True)
            out[f"{name}{opt}"] = exe
    for name, flags in (("plain", ("-O2",)), ("nofp", ("-O2", "-pg")), ("short", ("-O2", "-fpatchable-function-entry=3"))):
        exe = root / name
        subprocess.run([gcc, *flags, "-o", str(exe), str(nofp if name == "nofp" else src)], check=True)
        out[name] = exe
    return out


def analysis_of(path: Path) -> Analysis:
    with ElfImage.open(str(path)) as image:
        return analyze(image)


def site(analysis: Analysis, name: str) -> McountSite:
    found = [s for s in analysis.sites if name in s.names]
    assert found, f"{name} refused: {[r.reason for r in analysis.refusals if r.name == name]}"
    assert isinstance(found[0], McountSite) and found[0].call is not None
    return found[0]


def refusal(analysis: Analysis, name: str) -> McountRefusal:
    found = [r for r in analysis.refusals if r.name == name]
    assert found, f"{name} was not refused"
    assert isinstance(found[0], McountRefusal)
    return found[0]


# ----------------------------------------------------------------------------- finding sites


@pytest.mark.parametrize("opt", ["-O0", "-O2"])
@pytest.mark.parametrize("case", list(CASES))
def test_each_form_is_found(programs: dict[str, Path], case: str, opt: str) -> None:
    form, length, slot = CASES[case][1]
    path = programs[f"{case}{opt}"]
    analysis = analysis_of(path)
    assert {s.name for s in analysis.sites} == {"leaf", "outer", "main"}
    with ElfImage.open(str(path)) as image:
        for name in ("leaf", "outer", "main"):
            call = site(analysis, name).call
            assert call is not None
            assert (call.form, call.length, call.slot) == (form, length, slot)
            assert image.read(call.vaddr, call.length) == call.original
    assert refusal(analysis, "_start").reason == NO_SITE


def test_no_site_without_profiling_build(programs: dict[str, Path]) -> None:
    analysis = analysis_of(programs["plain"])
    assert not analysis.sites
    assert {r.reason for r in analysis.refusals} == {NO_SITE}
    assert {"leaf", "outer", "main"} <= {r.name for r in analysis.refusals}


def test_call_mcount_without_frame_pointer_is_refused_but_kept_as_a_site(programs: dict[str, Path]) -> None:
    analysis = analysis_of(programs["nofp"])
    nofp = refusal(analysis, "nofp")
    assert nofp.reason == ("call mcount without a frame pointer: the prologue is `sub rsp, 8`, not "
                           "`push rbp; mov rbp, rsp` (build with -mfentry, or use the ktrace engine)")
    assert nofp.call is not None and nofp.call.form is Form.MCOUNT
    # prepare() still turns its call into a NOP
    patches = McountEngine().prepare(analysis, 0)
    assert nofp.call.vaddr in {p.addr for p in patches}


def test_patchable_entry_too_short(programs: dict[str, Path]) -> None:
    reason = refusal(analysis_of(programs["short"]), "leaf").reason
    assert reason.startswith("patchable entry too short: 3 NOP bytes at the entry, a call needs 5")


# ----------------------------------------------------------------------------- the frame-pointer check


def _insns(source: str) -> list:
    """Decoded instructions of ``source`` at 0x1000 (keystone has no endbr64: its bytes are put in)."""
    head = b""
    if source.startswith("endbr64; "):
        head, source = b"\xf3\x0f\x1e\xfa", source.removeprefix("endbr64; ")
    return X86().decode(head + assemble(source, 0x1000 + len(head)), 0x1000)


@pytest.mark.parametrize(("source", "why"), [
    ("push rbp; mov rbp, rsp", None),
    ("endbr64; push rbp; mov rbp, rsp; push r12; push rbx; sub rsp, 0x190", None),
    ("push rbp; mov rbp, rsp; sub rsp, 0x1000; or qword ptr [rsp], 0; cmp rsp, r11; jne 0x1004", None),
    ("sub rsp, 8", "the prologue is `sub rsp, 8`, not `push rbp; mov rbp, rsp`"),
    ("lea r10, [rsp+8]; and rsp, -32; push qword ptr [r10-8]; push rbp; mov rbp, rsp",
     "the prologue is `lea r10, [rsp + 8]; and rsp, 0xffffffffffffffe0`, not `push rbp; mov rbp, rsp`"),
    ("push rbp; mov rbp, rsp; mov rbp, rdi", "`mov rbp, rdi` changes rbp before the call site"),
    ("push rbp; mov rbp, rsp; leave", "`leave` changes rbp before the call site"),
    ("push rbp; mov rbp, rsp; xadd rax, rbp", "`xadd rax, rbp` changes rbp before the call site"),
    ("push rbp; mov rbp, rsp; call 0x2000", "`call 0x2000` comes before the call site"),
])
def test_frame_pointer_refusal(source: str, why: str | None) -> None:
    assert frame_pointer_refusal(_insns(source)) == why


# ----------------------------------------------------------------------------- NOPs and stubs


def test_prepare_turns_every_call_into_a_nop_of_its_length(programs: dict[str, Path]) -> None:
    analysis = analysis_of(programs["pg-pie-O2"])
    patches = McountEngine().prepare(analysis, 0x5555_0000_0000)
    assert len(patches) == 3
    for patch in patches:
        assert patch.original[:2] == b"\xff\x15"
        assert patch.new == b"\x66\x0f\x1f\x44\x00\x00"
    # a -mnop-mcount site already is the NOP
    assert McountEngine().prepare(analysis_of(programs["nop-mcount-O2"]), 0) == []
    pads = McountEngine().prepare(analysis_of(programs["patchable5-O2"]), 0)
    assert {(p.original, p.new) for p in pads} == {(b"\x90" * 5, b"\x0f\x1f\x44\x00\x00")}


@pytest.mark.parametrize(("slot", "length", "lea"), [
    (Slot.ENTRY, 5, "lea r11, [rsp + 9]"),
    (Slot.FRAME_POINTER, 6, "lea r11, [rbp + 8]"),
])
def test_stub_follows_the_handler_abi(slot: Slot, length: int, lea: str) -> None:
    nop = b"\x0f\x1f\x44\x00\x00" if length == 5 else b"\x66\x0f\x1f\x44\x00\x00"
    call = CallSite(0x1234, Form.MCOUNT, b"\xe8\x00\x00\x00\x00" if length == 5 else b"\xff\x15\0\0\0\0", slot)
    fn = McountSite("fn", 0x1230, 40, (), call)
    bias, stub_addr, handler = 0x7000_0000_0000, 0x7000_1000_0000, 0x7000_0fff_f000
    stub, patch = McountEngine().build(fn, bias, stub_addr, handler, 77)
    assert len(stub) <= McountEngine().detour_size(fn)
    insns = list(X86().decode(stub, stub_addr))
    text = [(str(i), i.kind, i.target) for i in insns]
    assert [t[0] for t in text[:3]] == ["push r11", lea, "push 0x4d"]
    assert text[3][1:] == (Kind.CALL_REL, handler)
    assert text[4][0] == "jmp r11"
    r = insns[4].addr
    continuation = stub[r + ON - stub_addr:]
    assert continuation[:2] == b"\x41\x5b", "pop r11 at R + ON"
    # the call path: pop r11; a call; its return point R+10 jumps to [handler-8]
    by_call = list(X86().decode(stub[r + BY_CALL - stub_addr:r + ON - stub_addr], r + BY_CALL))
    assert [str(i) for i in by_call[:1]] == ["pop r11"]
    assert by_call[2].addr == r + RETURN_POINT and stub[by_call[2].addr - stub_addr:][:2] == b"\xff\x25"
    disp = struct.unpack("<i", stub[by_call[2].addr - stub_addr + 2:][:4])[0]
    assert r + ON + disp == handler - 8
    # after pop r11 at R+ON, the jump back to the end of the site
    back = bias + 0x1234 + length
    (jump,) = X86().decode(continuation[2:7], r + ON + 2)
    assert (jump.kind, jump.target) == (Kind.JMP_REL, back)
    if slot is Slot.ENTRY:
        # the call is the call of the function's body: the continuation
        assert (by_call[1].kind, by_call[1].target) == (Kind.CALL_REL, r + ON + 2)
    else:
        # -pg: the call only puts R+10 on the return stack; where it lands, the pushed
        # address is dropped and the stub jumps back to the end of the site
        landing = r + ON + 2 + 5
        assert (by_call[1].kind, by_call[1].target) == (Kind.CALL_REL, landing)
        drop, jump = X86().decode(stub[landing - stub_addr:], landing)
        assert str(drop) == "lea rsp, [rsp + 8]"
        assert (jump.kind, jump.target) == (Kind.JMP_REL, r + ON + 2)
    # the site: its disabled NOP -> a jump to the stub (the rest of a 6-byte site never runs)
    insn = next(iter(X86().decode(patch.new, patch.addr)))
    assert (insn.kind, insn.target, insn.size) == (Kind.JMP_REL, stub_addr, 5)
    assert len(patch.new) == length
    assert (patch.addr, patch.original) == (bias + 0x1234, nop)


def test_elf_address_tables(programs: dict[str, Path]) -> None:
    with ElfImage.open(str(programs["patchable7,2-cet-O2"])) as image:
        table = image.address_table("__patchable_function_entries")
        leaf = next(s.vaddr for s in image.functions() if s.name == "leaf")
        assert table is not None and leaf - 2 in table      # M=2 NOPs before the symbol
        assert image.address_table("__mcount_loc") is None
    with ElfImage.open(str(programs["pg-pie-O2"])) as image:
        assert "mcount" in image.got_symbols().values()
