"""Assembling generated code with keystone, checked by disassembling it back."""

from __future__ import annotations

import functools

import keystone


class AssemblyError(RuntimeError):
    """Generated assembly did not assemble: a bug in a code generator."""


@functools.lru_cache(maxsize=1)
def _keystone() -> keystone.Ks:
    return keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)


def assemble(source: str, addr: int) -> bytes:
    """Assemble Intel-syntax ``source`` as if placed at process address ``addr``."""
    try:
        encoding, _count = _keystone().asm(source, addr)
    except keystone.KsError as exc:
        raise AssemblyError(f"keystone: {exc}\n{source}") from exc
    if not encoding:
        raise AssemblyError(f"keystone produced no code for:\n{source}")
    return bytes(encoding)
