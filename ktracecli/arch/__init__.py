"""Architecture support: instruction decoding, relocation and encoding (x86_64 only for now).

Importing this package is cheap; :func:`shared_x86` creates the one capstone-backed
decoder engines share, on first use.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ktracecli.arch.x86_64 import X86


@functools.lru_cache(maxsize=1)
def shared_x86() -> "X86":
    """The process's x86_64 decoder (capstone and keystone are loaded here, the first time)."""
    from ktracecli.arch.x86_64 import X86
    return X86()
