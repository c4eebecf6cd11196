"""Placement: which host's agent runs a job given ``--place LABEL=VALUE``.

Each agent publishes its labels (the ``labels`` setting, e.g. ``site=dr``)
and its cap (``max_jobs``) in its agent key, on its lease: a host whose agent
is gone is no longer eligible. A host's free slots are counted when a job is
placed, from its slot and queue keys (fresher than any figure an agent could
publish): free = cap - jobs holding a slot - jobs queued for it.

The job goes to the eligible host with the most free slots; among equals, to
the one with the fewest jobs held or queued, then by a hash of the job's id
and the host's name, so equal hosts share a burst instead of the first one
taking it. The per-host cap and the per-server lock are the agents' as
before (admission in store.py): placement only names the host.

A placed job still queued for a host whose agent key is gone (its lease
lapsed: the host died) is moved by any live agent to another eligible host,
each move one guarded transaction (store.move_job): the job unchanged, still
queued there, and that host's agent still absent.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from ..errors import InvalidRequest, NetpluginError
from .model import QUEUED, check_name

log = logging.getLogger(__name__)


def label_map(items: list[str] | dict) -> dict[str, str]:
    """KEY=VALUE items (or a mapping) as a checked mapping."""
    if isinstance(items, dict):
        pairs = list(items.items())
    else:
        pairs = []
        for item in items:
            key, sep, value = str(item).partition("=")
            if not sep:
                raise InvalidRequest(f"label {str(item)[:80]!r} must be KEY=VALUE, e.g. site=dr")
            pairs.append((key, value))
    out: dict[str, str] = {}
    for key, value in pairs:
        check_name(key, "label")
        check_name(value, f"value of label {key}")
        out[key] = value
    if len(out) > 16:
        raise InvalidRequest("at most 16 labels")
    return out


@dataclass
class Host:
    name: str
    cap: int
    used: int                                  # jobs holding a slot or queued
    labels: dict

    @property
    def free(self) -> int:
        return self.cap - self.used


def eligible(agents: dict[str, dict], place: dict) -> dict[str, tuple[int, dict]]:
    """Host -> (cap, labels) of the live agents carrying every pair of place;
    an agent record without a sound cap or labels is left out."""
    out = {}
    for host, info in agents.items():
        try:
            labels = label_map(info.get("labels") or {})
            cap = info.get("max_jobs")
            if isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= 256:
                continue
        except (InvalidRequest, AttributeError):
            continue
        if all(labels.get(k) == v for k, v in place.items()):
            out[host] = (cap, labels)
    return out


def choose(hosts: list[Host], key: str) -> str | None:
    """The host with the most free slots; ties by fewest used, then by a hash
    of key and the host's name (spread). None when hosts is empty."""
    if not hosts:
        return None

    def rank(h: Host) -> tuple:
        return (-h.free, h.used, hashlib.sha256(f"{key}/{h.name}".encode()).hexdigest())
    return min(hosts, key=rank).name


class Placer:
    """Picks hosts against the store's live agents, and re-places dead hosts' queued jobs."""

    def __init__(self, store, clock=None):
        self.store = store
        self.clock = clock

    def hosts(self, place: dict, exclude: frozenset[str] = frozenset()) -> list[Host]:
        found = eligible(self.store.agents(), place)
        return [Host(h, cap, self.store.host_load(h), labels) for h, (cap, labels) in sorted(found.items())
                if h not in exclude]

    def pick(self, place: dict, key: str, exclude: frozenset[str] = frozenset()) -> str | None:
        return choose(self.hosts(place, exclude), key)

    def pick_or_fail(self, place: dict, key: str) -> str:
        host = self.pick(place, key)
        if host is None:
            pairs = ", ".join(f"{k}={v}" for k, v in sorted(place.items()))
            raise InvalidRequest(f"no live drctl agent carries {pairs}: see the labels in 'drctl hosts' "
                                 "or start an agent with that label (the 'labels' setting)")
        return host

    def rehome(self, now: float) -> list[str]:
        """Move the placed jobs queued for hosts without a live agent; returns their ids."""
        live = set(self.store.agent_hosts())
        moved = []
        for host, job_id in self.store.queue_entries():
            if host in live:
                continue
            try:
                found = self.store.get(job_id)
            except InvalidRequest:
                continue                       # a bad record: its own agent refuses it, if ever
            if found is None:
                continue
            job, rev = found
            if job.state != QUEUED or job.host != host or not isinstance(job.place, dict) or not job.place:
                continue
            target = self.pick(job.place, job.id, exclude=frozenset({host}))
            if target is None:
                continue
            try:
                if self.store.move_job(job, rev, target, now):
                    log.info("agent: job %s re-placed from %s (its agent is gone) to %s", job.id, host, target)
                    moved.append(job.id)
            except NetpluginError as exc:
                log.warning("agent: cannot re-place job %s: %s", job.id, exc.message)
        return moved
