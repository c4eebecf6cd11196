"""Which steps the runner takes for a physical job: a backup's receiver and
sender (physical_backup.py), or a restore's prepare and server
(physical_restore.py); None for a logical job, which the runner runs itself.
"""

from __future__ import annotations

from .model import BACKUP


class PhysicalSteps:
    """What the runner calls around its own steps for a physical job."""

    def prepare(self, ctx) -> None:
        """Instead of the runner's _prepare: checks, the job folder, its script."""

    def started(self, ctx) -> None:
        """The job container runs and its gate is open."""

    def watch(self, ctx) -> None:
        """Every wait of the runner's loop: raise JobEnded to end the job early."""

    def verify(self, ctx) -> dict:
        """The job container exited 0: check, record; the job's result."""
        raise NotImplementedError

    def ended(self, ctx, state: str) -> None:
        """The job ends in a state other than succeeded: undo what is left."""


def for_job(runner, ctx) -> PhysicalSteps | None:
    if ctx.spec.method != "physical":
        return None
    if ctx.job.kind == BACKUP:
        from .physical_backup import PhysicalBackup
        return PhysicalBackup(runner)
    from .physical_restore import PhysicalRestore
    return PhysicalRestore(runner)
