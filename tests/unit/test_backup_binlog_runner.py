"""The binlog collector job (binlog_runner.py) over FakeDocker and the
in-memory etcd: what it catalogues, what it refuses to, where a restarted
collector resumes, and how it ends."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest

from netplugin.backup import binlog_runner
from netplugin.backup.binlog_runner import BinlogRunner
from netplugin.backup.jobs import request_cancel
from netplugin.backup.model import BINLOG, CANCELLED, FAILED, RUNNING, Job

from .backup_fakes import _params
from .test_backup_runner import Rig

HEADER = "#261204  4:19:{s:02d} server id 1  end_log_pos {pos} CRC32 0x0 \t{what}\n"


def events(first_s: int, last_s: int, end: int, rotate_to: str | None) -> str:
    return (HEADER.format(s=first_s, pos=256, what="Start: binlog v 4")
            + HEADER.format(s=last_s, pos=end, what=f"Rotate to {rotate_to}  pos: 4" if rotate_to else "Xid = 9"))


def collector(files: list[tuple[str, bytes, str]], newest: str = "mariadb-bin.000009", code: int | None = None,
              error: str = ""):
    """A collector's behaviour: files (name, bytes, decoded headers) complete and
    indexed, the newest partial; then it runs until killed (or exits code)."""
    def run(c, job_dir, volume, docker):
        p = _params(job_dir)
        arch = os.path.join(volume, p["ARCH"][len("/backup/"):])
        os.makedirs(arch, exist_ok=True)
        idx = os.path.join(job_dir, "out", "idx")
        for name, data, text in files:
            with open(os.path.join(arch, name), "wb") as fh:
                fh.write(data)
            with open(os.path.join(idx, f"{name}.events"), "w") as fh:
                fh.write(text)
            with open(os.path.join(idx, f"{name}.count"), "w") as fh:
                fh.write("42\n")
            open(os.path.join(idx, f"{name}.done"), "w").close()
        with open(os.path.join(arch, newest), "wb") as fh:
            fh.write(b"\xfebin partial")
        if code is not None:
            with open(os.path.join(job_dir, "out", "error"), "w") as fh:
                fh.write(error)
            return code
        c.killed.wait(30)
        return 137
    return run


@pytest.fixture
def rig(tmp_path):
    return Rig(tmp_path)


def start(rig, behaviour) -> tuple[Job, threading.Thread, list]:
    rig.docker.behaviours["binlog"] = behaviour
    job = rig.job(kind=BINLOG, target="shop", database="", timeout=10 * 365 * 86400.0, checksums=False)
    runner = BinlogRunner(rig.store, rig.docker, rig.cfg, env=rig.env, np_store=rig.np,
                          sleep=lambda s: time.sleep(min(s, 0.02)), poll=0.1)
    out: list = []
    thread = threading.Thread(target=lambda: out.append(runner.run(job)), daemon=True)
    thread.start()
    return job, thread, out


def wait_for(cond, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def data(n: int) -> bytes:
    return bytes([0xFE]) + os.urandom(n - 1)


def archive_path(rig, name: str = "") -> str:
    return os.path.join(rig.docker.volumes["backups"]["Mountpoint"], "shop", "binlog", name)


def test_collector_catalogues_complete_files_and_a_stop_ends_it_cancelled(rig):
    one, two = data(700), data(900)
    job, thread, out = start(rig, collector([
        ("mariadb-bin.000001", one, events(5, 9, 700, "mariadb-bin.000002")),
        ("mariadb-bin.000002", two, events(9, 30, 900, "mariadb-bin.000003")),
    ], newest="mariadb-bin.000003"))
    wait_for(lambda: len(rig.store.binlogs("shop")) == 2)
    first, second = rig.store.binlogs("shop")
    assert (first.file, first.size, first.end_pos, first.start_pos) == ("mariadb-bin.000001", 700, 700, 4)
    assert first.sha256 == hashlib.sha256(one).hexdigest() and second.sha256 == hashlib.sha256(two).hexdigest()
    assert second.first_time == time.mktime(time.strptime("2026-12-04 04:19:09", "%Y-%m-%d %H:%M:%S")) \
        - time.timezone and second.last_time - second.first_time == 21
    assert first.events == 42 and first.job == job.id and first.path == "shop/binlog/mariadb-bin.000001"
    assert rig.store.get(job.id)[0].state == RUNNING
    request_cancel(rig.store, job.id, "ops")
    thread.join(15)
    final = out[0]
    assert final.state == CANCELLED and "2 files archived" in final.message, final.message
    assert os.path.exists(archive_path(rig, "mariadb-bin.000003"))        # the newest stays, fetched again later


@pytest.mark.parametrize("text, why", [
    (events(5, 9, 650, "mariadb-bin.000002"), "its last event ends at 650"),
    (events(5, 9, 700, None), "does not rotate to mariadb-bin.000002"),
    (events(5, 9, 700, "mariadb-bin.000007"), "does not rotate to mariadb-bin.000002"),
    ("garbage\n", "no event header"),
])
def test_a_file_that_is_not_whole_is_not_catalogued(rig, text, why):
    job, thread, _out = start(rig, collector([("mariadb-bin.000001", data(700), text),
                                             ("mariadb-bin.000002", data(800),
                                              events(9, 12, 800, "mariadb-bin.000003"))],
                                            newest="mariadb-bin.000003"))
    wait_for(lambda: len(rig.store.binlogs("shop")) == 1)
    wait_for(lambda: "mariadb-bin.000001" in rig.store.get(job.id)[0].progress.get("refused", {}))
    assert why in rig.store.get(job.id)[0].progress["refused"]["mariadb-bin.000001"]
    assert [f.file for f in rig.store.binlogs("shop")] == ["mariadb-bin.000002"]
    request_cancel(rig.store, job.id, "ops")
    thread.join(15)


def test_a_restarted_collector_resumes_from_the_newest_archived_file_whole(rig):
    os.makedirs(archive_path(rig))
    for name in ("mariadb-bin.000001", "mariadb-bin.000002", "mariadb-bin.000003", "notes.txt"):
        with open(archive_path(rig, name), "wb") as fh:
            fh.write(b"\xfe" * 10)
    job, thread, _out = start(rig, collector([], newest="mariadb-bin.000003"))
    wait_for(lambda: rig.store.get(job.id)[0].state == RUNNING)
    job_dir = os.path.join(rig.cfg.work_dir, job.id)
    params = _params(job_dir)
    assert params["START"] == "mariadb-bin.000003"
    assert params["ARCH"] == "/backup/shop/binlog"
    assert params["SERVER_ID"] == str(binlog_runner.collector_server_id("shop"))
    assert rig.store.get(job.id)[0].result["resumed_from"] == "mariadb-bin.000003"
    request_cancel(rig.store, job.id, "ops")
    thread.join(15)


def test_a_first_collector_starts_from_the_servers_oldest_log(rig):
    job, thread, _out = start(rig, collector([], newest="mariadb-bin.000001"))
    wait_for(lambda: rig.store.get(job.id)[0].state == RUNNING)
    assert _params(os.path.join(rig.cfg.work_dir, job.id))["START"] == ""
    request_cancel(rig.store, job.id, "ops")
    thread.join(15)


def test_a_collector_that_exits_fails_with_its_reason_and_keeps_what_it_catalogued(rig):
    _job, thread, out = start(rig, collector([("mariadb-bin.000001", data(700),
                                              events(5, 9, 700, "mariadb-bin.000002"))],
                                            newest="mariadb-bin.000002", code=2,
                                            error="the server no longer has mariadb-bin.000002"))
    thread.join(15)
    final = out[0]
    assert final.state == FAILED and "no longer has mariadb-bin.000002" in final.message, final.message
    assert [f.file for f in rig.store.binlogs("shop")] == ["mariadb-bin.000001"]


def test_collector_server_ids_are_stable_and_apart_from_real_servers():
    assert binlog_runner.collector_server_id("shop") == binlog_runner.collector_server_id("shop")
    assert binlog_runner.collector_server_id("shop") != binlog_runner.collector_server_id("shop2")
    assert binlog_runner.collector_server_id("x") >= binlog_runner.COLLECTOR_ID_BASE


def test_the_script_resumes_whole_and_decodes_in_utc():
    assert "export TZ=UTC" in binlog_runner.SCRIPT
    assert '--stop-never "--stop-never-slave-server-id=$SERVER_ID" "--result-file=$ARCH/" "$START"' \
        in binlog_runner.SCRIPT
    assert "/job/known" in binlog_runner.SCRIPT
