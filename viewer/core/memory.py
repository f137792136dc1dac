"""How much memory this process can still take, and how much a copy of a model needs: so a
load, an apply or a check too large for the machine stops with one line (or is skipped and
says so) instead of being killed by the kernel minutes later, taking the app's server with it.

>>> need = tensor_bytes(model)           # a full copy of model's parameters and buffers
>>> check_room(need, "a pruned copy")    # DepViewError when the machine has less free
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from .errors import DepViewError

#: where the kernel's figures are read (tests point these elsewhere)
PROC = Path("/proc")
CGROUP = Path("/sys/fs/cgroup")

#: a cgroup v1 "no limit" is a huge number (2**63 rounded down to a page), not "max"
_NO_LIMIT = 2**60


class MemoryShortError(DepViewError):
    """What was asked needs more memory than the machine has free (see :func:`check_room`)."""


def available_memory() -> int | None:
    """Bytes a new allocation can get: Linux's MemAvailable, or less when this process's
    cgroup (a container's memory limit) leaves less; None where neither can be read.

    In a cgroup the free room is its limit less what it uses, not counting inactive file
    pages (page cache the kernel drops before it kills anything), as ``docker stats`` counts.
    """
    free = [n for n in (_meminfo_available(), _cgroup_available()) if n is not None]
    return min(free) if free else None


def _meminfo_available() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    return _meminfo("MemAvailable")


def _meminfo(key: str) -> int | None:
    """Bytes of ``key`` in /proc/meminfo (``MemAvailable``, ``MemTotal``), or None."""
    try:
        for line in (PROC / "meminfo").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    """Limit minus usage (less inactive file pages) of this process's memory cgroup, v2 or
    v1; None with no limit or no cgroup files."""
    for folder, limit, usage, inactive in _cgroup_files():
        try:
            raw = (folder / limit).read_text().strip()
            if raw == "max" or int(raw) >= _NO_LIMIT:
                continue  # (an unlimited cgroup: a parent's limit may still hold)
            used = int((folder / usage).read_text().strip())
        except (OSError, ValueError):
            continue
        cache = 0
        try:
            for line in (folder / "memory.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == inactive:
                    cache = int(value)
        except (OSError, ValueError):
            pass
        return max(0, int(raw) - max(0, used - cache))
    return None


def _cgroup_files():
    """(folder, limit file, usage file, inactive-file key of memory.stat) to try, innermost
    cgroup first: v2 (the unified hierarchy) then v1 (the memory controller)."""
    paths = {"": "/", "memory": "/"}  # v2's line has no controller ("0::/path")
    try:
        for line in (PROC / "self" / "cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "" or "memory" in controllers.split(","):
                paths["" if controllers == "" else "memory"] = path
    except (OSError, ValueError):
        pass
    for version, (root, limit, usage, inactive) in (
            ("", (CGROUP, "memory.max", "memory.current", "inactive_file")),
            ("memory", (CGROUP / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes",
                        "total_inactive_file"))):
        inner = Path(paths[version].lstrip("/"))
        for folder in (root / inner, *(root / p for p in inner.parents)):
            if (folder / limit).exists():
                yield folder, limit, usage, inactive


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s parameters and buffers that hold data (meta tensors hold none),
    each counted once: what a deep copy of it allocates."""
    seen, total = set(), 0
    for t in (*model.parameters(), *model.buffers()):
        if id(t) not in seen and not t.is_meta:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def gigabytes(n: int) -> str:
    """``n`` bytes as "1.3 GB" (GiB, as free(1) and the kernel count)."""
    return f"{n / 2**30:.1f} GB"


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says an allocation failed for want of free memory: Python's
    ``MemoryError``, torch's ``OutOfMemoryError``, or the CPU allocator's "can't allocate
    memory" (a RuntimeError; also what a process limited by ``ulimit -v`` gets), unless it
    asked for more bytes than the machine has at all (a size gone wrong, not a machine
    short of room)."""
    if not isinstance(exc, (MemoryError, torch.OutOfMemoryError)) and not (
            isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)):
        return False
    asked = re.search(r"tried to allocate (\d+) bytes", str(exc))
    total = _meminfo("MemTotal")
    return asked is None or total is None or int(asked.group(1)) <= total


def room_for(need: int) -> tuple[bool, int | None]:
    """Whether ``need`` more bytes fit in the memory free now, and how much that is (None:
    unknown, which is taken as room)."""
    free = available_memory()
    return free is None or need <= free, free


def check_room(need: int, what: str, hint: str = "") -> None:
    """Raise :class:`MemoryShortError` when ``need`` bytes (for ``what``) do not fit in the
    memory free now."""
    ok, free = room_for(need)
    if not ok:
        raise MemoryShortError(f"{what} needs about {gigabytes(need)} and this machine has "
                           f"{gigabytes(free)} free" + (f": {hint}" if hint else ""))
