"""How ``drctl run/restore --wait`` shows a job it follows: each state the job
enters as a line, and its progress (state, bytes, rate, percent and ETA) as
one live line rewritten in place on a terminal, or as plain lines otherwise.

Fed by the job's record as an etcd watch delivers it (BackupStore.watch_job).
The rate is taken between two progress samples stamped by the same agent's
clock, so no two hosts' clocks are compared; percent and ETA need the total
the runner records (a restore: its backup's size; a backup: the target's
newest good backup, an estimate).
"""

from __future__ import annotations

from typing import Any, TextIO

from ..backup.jobs import fmt_age, fmt_time
from ..backup.resources import human_bytes


def progress_text(state: str, progress: dict, rate: float | None) -> str:
    """running  1.2 GiB  35.0 MiB/s  42%  ETA 1m10s"""
    done = progress.get("bytes") or 0
    parts = [state, human_bytes(done)]
    if rate is not None:
        parts.append(f"{human_bytes(int(rate))}/s")
    total = progress.get("total")
    if isinstance(total, int) and total > 0:
        estimate = progress.get("total_basis") == "previous backup"
        pct = min(100.0, 100.0 * done / total)
        parts.append(f"{pct:.0f}%" + (" (est.)" if estimate else ""))
        if rate and done < total:
            parts.append(f"ETA {fmt_age((total - done) / rate)}")
    return "  ".join(parts)


class ProgressView:
    """Shows a followed job on out; tty: a live line, else plain lines."""

    def __init__(self, out: TextIO, tty: bool):
        self.out, self.tty = out, tty
        self.history_seen = 0
        self.sample: tuple[float, int] | None = None     # (agent's time, bytes) of the last progress
        self.rate: float | None = None
        self.live = False
        self.shown = ""

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _line(self, text: str) -> None:
        if self.live:
            self._write("\r\x1b[K")
            self.live = False
        self._write(text + "\n")

    def update(self, job: Any) -> None:
        for h in job.history[self.history_seen:]:
            self._line(f"{fmt_time(h['time'])}  {h['state']:<10} {h.get('message', '')}")
        self.history_seen = len(job.history)
        progress = job.progress or {}
        if job.state != "running" or "bytes" not in progress:
            return
        when, done = progress.get("time"), progress.get("bytes") or 0
        if isinstance(when, (int, float)) and isinstance(done, int):
            if self.sample is not None and when > self.sample[0]:
                self.rate = max(0.0, (done - self.sample[1]) / (when - self.sample[0]))
            if self.sample is None or when > self.sample[0]:
                self.sample = (when, done)
        text = progress_text(job.state, progress, self.rate)
        if text == self.shown:
            return
        self.shown = text
        if self.tty:
            self._write("\r\x1b[K" + text)
            self.live = True
        else:
            self._line(text)

    def close(self) -> None:
        if self.live:
            self._write("\n")
            self.live = False
