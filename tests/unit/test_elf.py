"""ElfImage and library search, on programs gcc builds at test time."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from ktracecli.elf import ElfImage
from ktracecli.elf.ident import read_ident
from ktracecli.elf.libsearch import find_module, resolve_needed
from ktracecli.errors import ProgramError
from ktracecli.model import Binding

LIB_C = r"""
#include <stdio.h>
__attribute__((noinline)) static int hidden_helper(int x) { puts("x"); return x * 7 + 1; }
__attribute__((weak)) int weak_fn(int x) { return hidden_helper(x) + 2; }
int global_fn(int x) { return weak_fn(x) * 3; }
static int impl(void) { return 5; }
static void *resolve(void) { return (void *)impl; }
int ifunc_fn(void) __attribute__((ifunc("resolve")));
int (*const table[])(int) = { global_fn, weak_fn };
/* the address of byte 2 of global_fn, stored as data */
__asm__(".section .data.rel.ro,\"aw\"\n .quad global_fn+2\n .text\n");
"""

MAIN_C = r"""
extern int global_fn(int);
int main(void) { return global_fn(1) & 1; }
"""

ASM_DATA = r"""
__asm__(".section .rodata\n .align 8\n .quad f+3\n .text\n");
int f(int x) { return x + 41; }
int main(void) { return f(1) - 42; }
"""


def cc(gcc: str, out: Path, source: str, *flags: str) -> Path:
    src = out.with_suffix(".c")
    src.write_text(source)
    subprocess.run([gcc, "-O2", "-o", str(out), str(src), *flags], check=True)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, gcc: str) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("elf")
    (root / "lib").mkdir()
    lib = cc(gcc, root / "lib" / "libkt.so.1", LIB_C, "-shared", "-fPIC", "-Wl,-soname,libkt.so.1",
             "-Wl,--build-id=0x0123456789abcdef")
    exe = cc(gcc, root / "main", MAIN_C, "-fPIE", "-pie", str(lib), "-Wl,-rpath,$ORIGIN/lib",
             "-Wl,--enable-new-dtags")
    nopie = cc(gcc, root / "nopie", ASM_DATA, "-fno-pie", "-no-pie")
    start = r'__asm__(".globl _start\n_start: mov $60, %eax\n xor %edi, %edi\n syscall\n");'
    static = cc(gcc, root / "static", start, "-static", "-nostdlib")
    return {"lib": lib, "exe": exe, "nopie": nopie, "static": static, "root": root}


# ----------------------------------------------------------------------------- open


@pytest.fixture(params=["ElfImage.open", "read_ident"])
def opener(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Both readers: the full one and the light one that the analysis cache uses must agree."""
    return ElfImage.open if request.param == "ElfImage.open" else read_ident


def test_open_missing(opener) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProgramError, match=r"^no such program: /nonexistent/prog$"):
        opener("/nonexistent/prog")


def test_open_not_elf(tmp_path: Path, opener) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "script.sh"
    path.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(ProgramError, match=r"script.sh is not an ELF file$"):
        opener(str(path))


def test_open_32_bit(tmp_path: Path, opener) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "old"
    path.write_bytes(b"\x7fELF\x01\x01\x01" + bytes(45))
    with pytest.raises(ProgramError, match=r"old is a 32-bit ELF; ktracecli traces x86_64 programs$"):
        opener(str(path))


def test_open_other_machine(tmp_path: Path, built: dict[str, Path], opener) -> None:  # type: ignore[no-untyped-def]
    data = bytearray(built["exe"].read_bytes())
    data[18:20] = struct.pack("<H", 183)   # e_machine = EM_AARCH64
    path = tmp_path / "arm"
    path.write_bytes(bytes(data))
    with pytest.raises(ProgramError, match=r"arm is an ELF for AARCH64; ktracecli traces x86_64"):
        opener(str(path))


def test_open_unreadable(tmp_path: Path, built: dict[str, Path], opener) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "secret"
    shutil.copy(built["exe"], path)
    path.chmod(0)
    if os.access(path, os.R_OK):   # root reads anything: make it a directory-like failure instead
        path.chmod(0o644)
        path.unlink()
        path.mkdir()
        with pytest.raises(ProgramError, match="is a directory"):
            opener(str(path))
    else:
        with pytest.raises(ProgramError, match="cannot read"):
            opener(str(path))


# ----------------------------------------------------------------------------- headers


def test_shared_library_headers(built: dict[str, Path]) -> None:
    lib = ElfImage.open(str(built["lib"]))
    assert lib.name == "libkt.so.1"
    assert lib.is_pie and not lib.is_static
    assert lib.soname == "libkt.so.1"
    assert lib.needed == ["libc.so.6"]
    assert lib.build_id == "0123456789abcdef"
    assert lib.first_load_vaddr == 0


@pytest.mark.parametrize("which", ["lib", "exe", "nopie", "static"])
def test_light_ident_agrees_with_elfimage(built: dict[str, Path], which: str) -> None:
    path = str(built[which])
    with ElfImage.open(path) as image:
        ident = read_ident(path)
        assert (ident.is_pie, ident.build_id, list(ident.needed), ident.soname, list(ident.runpath)) == \
               (image.is_pie, image.build_id, image.needed, image.soname, image.runpath)


def test_light_ident_of_libc() -> None:
    path = "/lib/x86_64-linux-gnu/libc.so.6"
    with ElfImage.open(path) as image:
        ident = read_ident(path)
        assert ident.build_id and ident.build_id == image.build_id
        assert ident.soname == "libc.so.6" and list(ident.needed) == image.needed


def test_program_headers(built: dict[str, Path]) -> None:
    exe = ElfImage.open(str(built["exe"]))
    assert exe.is_pie and not exe.is_static
    assert exe.needed[0] == str(built["lib"]) or "libkt.so.1" in exe.needed
    assert exe.runpath == [str(built["root"] / "lib")]
    nopie = ElfImage.open(str(built["nopie"]))
    assert not nopie.is_pie and nopie.first_load_vaddr == 0x400000
    assert nopie.entry == next(s.vaddr for s in nopie.functions() if s.name == "_start")
    static = ElfImage.open(str(built["static"]))
    assert static.is_static and static.needed == []
    segs = static.load_segments
    assert any(s.executable for s in segs) and all(s.memsz >= s.filesz for s in segs)


def test_functions_bindings_and_ifunc(built: dict[str, Path]) -> None:
    funcs = {s.name: s for s in ElfImage.open(str(built["lib"])).functions()}
    assert funcs["global_fn"].binding is Binding.GLOBAL and funcs["global_fn"].size > 0
    assert funcs["weak_fn"].binding is Binding.WEAK
    assert funcs["hidden_helper"].binding is Binding.LOCAL
    assert funcs["ifunc_fn"].is_ifunc and funcs["ifunc_fn"].vaddr == funcs["resolve"].vaddr
    assert all("@" not in name for name in funcs)


def test_libc_functions_are_from_dynsym_without_versions() -> None:
    funcs = ElfImage.open("/lib/x86_64-linux-gnu/libc.so.6").functions()
    names = {s.name for s in funcs}
    assert {"malloc", "memcpy", "printf"} <= names
    assert len(funcs) == len({(s.name, s.vaddr) for s in funcs})


def test_read_matches_exec_section(built: dict[str, Path]) -> None:
    image = ElfImage.open(str(built["lib"]))
    fn = next(s for s in image.functions() if s.name == "global_fn")
    name, vaddr, data = next(s for s in image.exec_sections() if s.vaddr <= fn.vaddr < s.end)
    assert name == ".text"
    assert image.read(fn.vaddr, fn.size) == data[fn.vaddr - vaddr:fn.vaddr - vaddr + fn.size]
    with pytest.raises(ValueError):
        image.read(0x7FFFFFFF0000, 4)


# ----------------------------------------------------------------------------- pointers


def test_pointer_values_pie(built: dict[str, Path]) -> None:
    image = ElfImage.open(str(built["lib"]))
    funcs = {s.name: s.vaddr for s in image.functions()}
    values = image.pointer_values()
    assert funcs["global_fn"] in values and funcs["weak_fn"] in values
    assert funcs["global_fn"] + 2 in values


def test_pointer_values_non_pie_scans_data(built: dict[str, Path]) -> None:
    image = ElfImage.open(str(built["nopie"]))
    f = next(s.vaddr for s in image.functions() if s.name == "f")
    values = image.pointer_values()
    assert f + 3 in values
    assert all(image.exec_section_at(v) is not None for v in values)


# ----------------------------------------------------------------------------- libsearch


def test_resolve_needed_uses_runpath_and_system(built: dict[str, Path]) -> None:
    found = resolve_needed(read_ident(str(built["exe"])))
    assert found["libkt.so.1"] == str(built["root"] / "lib" / "libkt.so.1")
    assert os.path.realpath(found["libc.so.6"]) == os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6")
    assert "ld-linux-x86-64.so.2" in found


def test_find_module_globs(built: dict[str, Path]) -> None:
    exe = read_ident(str(built["exe"]))
    assert find_module(exe, "libkt*") == [str(built["root"] / "lib" / "libkt.so.1")]
    assert [os.path.basename(p) for p in find_module(exe, "libc.so*")] == ["libc.so.6"]
    assert find_module(exe, "libnothing*") == []


def test_resolve_needed_ld_library_path(built: dict[str, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(built["lib"], other / "libkt.so.1")
    exe = tmp_path / "main"
    shutil.copy(built["exe"], exe)   # its $ORIGIN/lib does not exist here
    monkeypatch.setenv("LD_LIBRARY_PATH", str(other))
    assert resolve_needed(read_ident(str(exe)))["libkt.so.1"] == str(other / "libkt.so.1")


def test_find_functions_agrees_with_the_full_symbol_parse() -> None:
    """find_functions (string tables, GNU hash) finds what functions() finds, for a few names."""
    import ctypes.util
    from ktracecli.elf.image import ElfImage

    names = {"_Unwind_RaiseException", "_Unwind_Resume", "__cxa_begin_catch", "malloc", "no_such_function_zz"}
    libgcc = ctypes.util.find_library("gcc_s")
    libc = ctypes.util.find_library("c")
    assert libgcc and libc
    for lib in (libgcc, libc):
        path = next(p for p in (f"/lib/x86_64-linux-gnu/{lib}", f"/usr/lib/x86_64-linux-gnu/{lib}")
                    if __import__("os").path.exists(p))
        with ElfImage.open(path) as image:
            fast = sorted((s.name, s.vaddr) for s in image.find_functions(names))
            full = sorted((s.name, s.vaddr) for s in image.functions() if s.name in names)
        assert fast == full
        assert fast, f"{path} defines none of {names}: the test could not fail"
