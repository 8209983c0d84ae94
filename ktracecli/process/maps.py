"""Reading ``/proc/PID/maps`` and finding free address ranges near a module."""

from __future__ import annotations

from dataclasses import dataclass

PAGE = 4096
REL32_REACH = 1 << 31


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/PID/maps (process addresses)."""

    start: int
    end: int
    perms: str
    offset: int
    path: str

    @property
    def executable(self) -> bool:
        """True if the mapping is executable."""
        return "x" in self.perms


def read_maps(pid: int) -> list[Mapping]:
    """Parse /proc/PID/maps into mappings, in address order."""
    mappings = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            path = parts[5].strip() if len(parts) > 5 else ""
            mappings.append(Mapping(lo, hi, parts[1], int(parts[2], 16), path))
    return mappings


def find_free_near(mappings: list[Mapping], lo: int, hi: int, size: int) -> int:
    """A page-aligned free address for ``size`` bytes, reachable by rel32 from all of [lo, hi).

    Gaps closest to the module are preferred.  Raises LookupError if none exists.
    """
    size = (size + PAGE - 1) & ~(PAGE - 1)
    low_limit = max(PAGE * 16, hi - REL32_REACH + PAGE)
    high_limit = min(1 << 47, lo + REL32_REACH - PAGE)
    best: tuple[int, int] | None = None
    prev_end = PAGE * 16
    bounds = [(m.start, m.end) for m in sorted(mappings, key=lambda m: m.start)]
    bounds.append((1 << 47, 1 << 47))
    for start, end in bounds:
        gap_lo, gap_hi = max(prev_end, low_limit), min(start, high_limit)
        # keep one guard page away from neighbours so nothing grows into us
        gap_lo, gap_hi = gap_lo + PAGE, gap_hi - PAGE
        if gap_hi - gap_lo >= size:
            # the end of the gap nearest to the module
            candidate = gap_hi - size if gap_hi <= lo else gap_lo
            distance = abs(candidate - lo)
            if best is None or distance < best[0]:
                best = (distance, candidate)
        prev_end = max(prev_end, end)
    if best is None:
        raise LookupError(f"no free {size}-byte range within 2 GiB of {lo:#x}")
    return best[1]
