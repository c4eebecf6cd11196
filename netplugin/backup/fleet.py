"""The fleet-wide passes an agent makes besides its own queue: firing the
schedules (schedules.Firing) and re-placing the queued jobs of dead hosts
(placement.Placer). Built here, handed to the Agent at construction."""

from __future__ import annotations

from collections.abc import Callable

from . import jobs
from .config import BackupConfig
from .placement import Placer
from .schedules import Firing
from .store import BackupStore


def fleet_passes(store: BackupStore, cfg: BackupConfig) -> list[Callable[[float], list]]:
    placer = Placer(store)
    firing = Firing(store, cfg, lambda kind, target, host, spec, now, by:
                    jobs.new_job(cfg, kind, target, host, spec, now, by),
                    place=lambda s: placer.pick(s.place, s.name))
    return [firing.tick, placer.rehome]
