"""drctl --wait: a job followed through an etcd watch of its record (no
polling), its states as lines and its progress as a live line on a terminal
or plain lines otherwise, with rate, percent and ETA from the agent's samples."""

from __future__ import annotations

import io
import threading

from netplugin.backup import cli as drctl_cli
from netplugin.backup.model import RUNNING, SUCCEEDED, VERIFYING
from netplugin.backup.store import BackupStore
from netplugin.cli.progress import progress_text

from .backup_records import put_job

MIB = 1 << 20


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_text_rate_percent_eta():
    p = {"bytes": 50 * MIB, "time": 10.0, "total": 200 * MIB, "total_basis": "backup size"}
    text = progress_text("running", p, 10.0 * MIB)
    assert text.split("  ")[1:] == ["50.0 MiB", "10.0 MiB/s", "25%", "ETA 15s"]
    assert "(est.)" in progress_text("running", dict(p, total_basis="previous backup"), None)
    assert "%" not in progress_text("running", {"bytes": 5}, None)          # no total: no percent, no ETA


def _drive(store: BackupStore, job_id: str, samples: list[tuple[float, int]]) -> None:
    """As the runner does: progress samples while running, then the end."""
    def run():
        for t, done in samples:
            store.update(job_id, lambda j, t=t, done=done: setattr(j, "progress", {
                "bytes": done, "time": t, "total": 100 * MIB, "total_basis": "backup size"}))
        store.update(job_id, lambda j: j.move(VERIFYING, "checking", now=2000.0))
        store.update(job_id, lambda j: j.move(SUCCEEDED, "done", now=2001.0))
    threading.Timer(0.2, run).start()


def test_follow_on_a_terminal_rewrites_one_live_line(kv):
    store = BackupStore(kv, "/netplugin/v1")
    job = put_job(store, RUNNING, target="t1")
    _drive(store, job.id, [(1000.0, 10 * MIB), (1005.0, 60 * MIB)])
    out = Tty()
    final = drctl_cli.follow(store, job.id, out)
    assert final.state == SUCCEEDED
    text = out.getvalue()
    assert "\r\x1b[Krunning  60.0 MiB  10.0 MiB/s  60%  ETA 4s" in text
    lines = text.split("\n")
    assert any(" succeeded " in x for x in lines) and any(" verifying " in x for x in lines)


def test_follow_elsewhere_prints_plain_lines(kv):
    store = BackupStore(kv, "/netplugin/v1")
    job = put_job(store, RUNNING, target="t2")
    _drive(store, job.id, [(1000.0, 10 * MIB), (1010.0, 30 * MIB)])
    out = io.StringIO()
    drctl_cli.follow(store, job.id, out)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    progress = [x for x in text.splitlines() if x.startswith("running  ")]
    assert progress[-1].split("  ")[1:] == ["30.0 MiB", "2.0 MiB/s", "30%", "ETA 35s"]


def test_follow_reads_no_record_between_changes(kv, monkeypatch):
    """Fed by the watch: the follower reads the record once at the start and
    never polls it (reads by the writer's thread are not counted)."""
    store = BackupStore(kv, "/netplugin/v1")
    job = put_job(store, RUNNING, target="t3")
    me, reads = threading.get_ident(), []
    real_get, real_snapshot = kv.get, kv.snapshot

    def counted(fn):
        return lambda key: (reads.append(key) if threading.get_ident() == me else None) or fn(key)
    monkeypatch.setattr(kv, "get", counted(real_get))
    monkeypatch.setattr(kv, "snapshot", counted(real_snapshot))
    _drive(store, job.id, [(1000.0 + i, i * MIB) for i in range(20)])
    out = io.StringIO()
    assert drctl_cli.follow(store, job.id, out).state == SUCCEEDED
    assert reads == [store.k_job(job.id)]
    assert sum(x.startswith("running  ") for x in out.getvalue().splitlines()) == 20     # every sample shown
