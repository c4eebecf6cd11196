"""Chains of physical backups: a full backup, then incrementals, each naming
its parent (``Backup.parent``). Which backup an incremental is taken against,
the chain a restore prepares, and the backups retention must keep because a
kept backup's chain needs them. Pure: catalog records in, names out.
"""

from __future__ import annotations

from ..errors import InvalidRequest, NotFound
from .model import Backup

PHYSICAL = "physical"
LOGICAL = "logical"
METHODS = (LOGICAL, PHYSICAL)


def method_of(b: Backup) -> str:
    """A record written before methods existed is a logical dump."""
    return getattr(b, "method", "") or LOGICAL


def newest_base(backups: list[Backup], target: str) -> Backup:
    """What an incremental of target is taken against: the newest physical
    backup of target, full or incremental. Raises NotFound when there is none."""
    found = [b for b in backups if b.target == target and method_of(b) == PHYSICAL]
    if not found:
        raise NotFound(f"no physical backup of {target} to take an incremental against: run a full one first "
                       "(drctl run --method physical without --incremental)")
    return max(found, key=lambda b: (b.created, b.name))


def chain(backups: list[Backup], name: str) -> list[Backup]:
    """The backups a restore of name prepares, in order: the full one first,
    then each incremental up to name. Raises NotFound or InvalidRequest when a
    link is missing, of another target, not physical, or loops."""
    by_name = {b.name: b for b in backups}
    if name not in by_name:
        raise NotFound(f"backup {name!r} is not in the catalog")
    out: list[Backup] = []
    seen: set[str] = set()
    b = by_name[name]
    while True:
        if method_of(b) != PHYSICAL:
            raise InvalidRequest(f"backup {b.name} is not a physical backup")
        if b.name in seen:
            raise InvalidRequest(f"the chain of {name} loops at {b.name}")
        seen.add(b.name)
        out.append(b)
        if not b.parent:
            break
        parent = by_name.get(b.parent)
        if parent is None:
            raise NotFound(f"the chain of {name} is broken: its base {b.parent} (parent of {b.name}) is not in "
                           "the catalog")
        if parent.target != b.target:
            raise InvalidRequest(f"the chain of {name} is broken: {b.parent} is a backup of {parent.target}, "
                                 f"not of {b.target}")
        b = parent
    out.reverse()
    return out


def needed(backups: list[Backup], keep: list[str]) -> dict[str, str]:
    """Name -> the kept backup whose chain needs it, for every ancestor of a
    kept backup that is not kept itself. A broken link ends that walk."""
    by_name = {b.name: b for b in backups}
    kept = set(keep)
    out: dict[str, str] = {}
    for name in keep:
        seen = {name}
        b = by_name.get(name)
        while b is not None and b.parent and b.parent not in seen:
            seen.add(b.parent)
            if b.parent not in kept:
                out.setdefault(b.parent, name)
            b = by_name.get(b.parent)
    return out
