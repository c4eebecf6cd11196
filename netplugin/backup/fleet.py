"""The fleet-wide passes an agent makes besides its own queue: firing the
schedules (schedules.Firing, following the schedule records by a
list-and-watch cache started here) and re-placing the queued jobs of dead
hosts (placement.Placer). Built here, handed to the Agent at construction."""

from __future__ import annotations

from collections.abc import Callable

from . import drills, jobs
from .config import BackupConfig
from .placement import Placer
from .schedules import Firing
from .store import BackupStore


def fleet_passes(store: BackupStore, cfg: BackupConfig) -> list[Callable[[float], list]]:
    placer = Placer(store)

    def new_job(kind, target, host, spec, now, by):
        return jobs.new_job(cfg, kind, target, host, spec, now, by)
    firing = Firing(store, cfg, new_job, place=lambda s: placer.pick(s.place, s.name),
                    drill_job=lambda s, host, now: drills.drill_job(store, cfg, new_job, s.name, s.spec, host, now),
                    cached=True)
    return [firing.tick, placer.rehome]
