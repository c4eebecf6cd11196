"""Jobs and their states, the etcd layout, the job script's helpers, drctl's
settings and command line (model.py, store.py, jobscript.py, config.py, jobs.py, cli.py)."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import pytest

from netplugin.backup import cli, config, jobs, jobscript
from netplugin.backup.model import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    STARTING,
    STATES,
    SUCCEEDED,
    TERMINAL,
    TRANSITIONS,
    VERIFYING,
    Backup,
    Job,
    JobSpec,
    check_database,
    check_name,
    new_job_id,
)
from netplugin.backup.store import BackupStore
from netplugin.errors import Conflict, InvalidRequest, NotFound

from .fakes import MemoryKV


def job(target="t", host="h1", **kw) -> Job:
    now = time.time()
    spec = JobSpec(network="prod", db_host="db", option_file="/o.cnf", volume="v", database="d")
    return Job(id=new_job_id(now), kind="backup", target=target, host=host, spec=spec.__dict__, created=now,
               history=[{"state": QUEUED, "time": now, "message": "submitted"}], **kw)


# -- states -------------------------------------------------------------------------------

def test_the_happy_path_and_every_ending():
    j = job()
    for s in (STARTING, RUNNING, VERIFYING, SUCCEEDED):
        j.move(s)
    assert [h["state"] for h in j.history] == [QUEUED, STARTING, RUNNING, VERIFYING, SUCCEEDED]
    for before in (QUEUED, STARTING, RUNNING, VERIFYING):
        for ending in ("failed", "expired", "cancelled"):
            assert ending in TRANSITIONS[before]


@pytest.mark.parametrize("end", sorted(TERMINAL))
def test_terminal_states_never_change(end):
    assert TRANSITIONS[end] == frozenset()
    j = job(state=end)
    for s in STATES:
        with pytest.raises(Conflict):
            j.move(s)


def test_no_skipping_verification():
    j = job()
    j.move(STARTING)
    j.move(RUNNING)
    with pytest.raises(Conflict, match="cannot become succeeded"):
        j.move(SUCCEEDED)


def test_job_json_round_trip_ignores_unknown_keys():
    j = job()
    data = json.loads(j.to_json())
    data["from_a_newer_version"] = 1
    assert Job.from_json(json.dumps(data)) == j


def test_job_ids_sort_by_time():
    a = new_job_id(1_800_000_000)
    b = new_job_id(1_800_000_001)
    assert a < b and len(a.split("-")) == 3


@pytest.mark.parametrize("bad", ["", "-x", "a b", "x" * 64, "a/b", None])
def test_names_are_checked(bad):
    with pytest.raises(InvalidRequest):
        check_name(bad, "target")


@pytest.mark.parametrize("bad", ["a-b", "x;DROP", "", "a`b", "a'b"])
def test_database_names_are_plain_identifiers(bad):
    with pytest.raises(InvalidRequest):
        check_database(bad)


# -- store --------------------------------------------------------------------------------

def test_store_layout_is_under_the_prefix():
    kv = MemoryKV()
    s = BackupStore(kv, "/netplugin/v1")
    j = job()
    s.submit(j)
    assert kv.keys() == [f"/netplugin/v1/backup/jobs/{j.id}", f"/netplugin/v1/backup/queue/h1/{j.id}"]
    with pytest.raises(Conflict):
        s.submit(j)


def test_leaving_the_queue_removes_the_queue_entry():
    s = BackupStore(MemoryKV(), "/p")
    j = job()
    s.submit(j)
    s.update(j.id, lambda x: x.move(CANCELLED, "by op"))
    assert s.queued("h1") == []


def test_find_by_prefix_or_part_of_the_id():
    s = BackupStore(MemoryKV(), "/p")
    j = job()
    s.submit(j)
    assert s.find(j.id).id == j.id
    assert s.find(j.id[-6:]).id == j.id
    with pytest.raises(NotFound):
        s.find("nothing-like-it")


def test_release_only_frees_what_the_job_holds():
    kv = MemoryKV()
    s = BackupStore(kv, "/p")
    a, b = job(target="t"), job(target="t")
    for x in (a, b):
        s.submit(x)
    fa, ra = s.get(a.id)
    s.admit(fa, ra, 0, time.time(), 60)
    fb = s.get(b.id)[0]
    fb.slot = 0
    s.release(fb)                                  # b holds nothing: a's slot and lock stay
    assert s.slots("h1") == {0: a.id} and s.lock_holder("t") == a.id
    s.release(s.get(a.id)[0])
    assert s.slots("h1") == {} and s.lock_holder("t") is None


def test_catalog_is_newest_first():
    s = BackupStore(MemoryKV(), "/p")
    for i, t in enumerate((3.0, 1.0, 2.0)):
        s.add_backup(Backup(name=f"b{i}", target="t", database="d", volume="v", path="p", manifest_path="m",
                            size=1, sha256="x", created=t, host="h", job="j"))
    assert [b.name for b in s.backups("t")] == ["b0", "b2", "b1"]
    assert s.targets() == ["t"]
    assert s.find_backup("b2").created == 2.0


# -- job script helpers -------------------------------------------------------------------

def test_params_are_shell_quoted():
    text = jobscript.params_text({"DB_HOST": "db; rm -rf /", "DIRECT": True, "PORT": 3306})
    assert text == "DB_HOST='db; rm -rf /'\nDIRECT=1\nPORT=3306\n"
    with pytest.raises(ValueError):
        jobscript.params_text({"bad-name": 1})


def test_parse_status_and_checksums():
    assert jobscript.parse_status("dump=0 gzip=141\n") == {"dump": 0, "gzip": 141}
    got = jobscript.parse_checksums("t1\tInnoDB\t10\t123\n\nt2\tAria\t0\t0\n")
    assert got == {"t1": {"engine": "InnoDB", "rows": 10, "checksum": "123"},
                   "t2": {"engine": "Aria", "rows": 0, "checksum": "0"}}
    with pytest.raises(ValueError):
        jobscript.parse_checksums("broken line")


# -- settings and command line ------------------------------------------------------------

def test_settings_file_env_and_flags(tmp_path):
    f = tmp_path / "drctl.toml"
    f.write_text('max_jobs = 3\nwrite_bps = "20m"\nstrict = false\n')
    c = config.load(str(f), env={"DRCTL_MAX_JOBS": "4"}, overrides={"cpus": "0.5"})
    assert (c.max_jobs, c.write_bps, c.strict, c.cpus) == (4, "20m", False, 0.5)
    f.with_name("valid.toml").write_text("cpus = 2\n")
    f.write_text("maxjobs = 3\n")
    with pytest.raises(InvalidRequest, match="unknown setting"):
        config.load(str(f), env={})
    with pytest.raises(InvalidRequest, match="max_jobs"):
        config.load(None, env={"DRCTL_MAX_JOBS": "0", "DRCTL_CONFIG": str(f.with_name("valid.toml"))})
    with pytest.raises(InvalidRequest, match="does not exist"):
        config.load(None, env={"DRCTL_CONFIG": str(tmp_path / "absent")})


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("10m", 600), ("6h", 21600), ("7d", 604800),
                                          ("1.5h", 5400)])
def test_durations(text, seconds):
    assert jobs.parse_duration(text) == seconds


def test_bad_duration():
    with pytest.raises(InvalidRequest):
        jobs.parse_duration("soon")


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--database", "d"])
    assert exc.value.code == 2


class FakeCtx:
    """cli.Context over the in-memory etcd, for the commands that only need etcd."""

    def __init__(self, args, kv):
        from netplugin.backup.config import BackupConfig
        from netplugin.config import Config
        from netplugin.store import Store
        self.args = args
        self.np_cfg = Config(host_id="h1")
        self.cfg = BackupConfig(option_dir=getattr(args, "option_dir_for_test", tempfile.gettempdir()))
        self.store = BackupStore(kv, "/p")
        self.np_store = Store(kv, "/p")
        self.json = bool(getattr(args, "json", False))
        self.quiet = bool(getattr(args, "quiet", False))


def _cli(kv, argv, monkeypatch):
    monkeypatch.setattr(cli, "Context", lambda args: FakeCtx(args, kv))
    return cli.main(argv)


def test_run_submits_a_queued_job_without_secrets(tmp_path, monkeypatch, capsys):
    kv = MemoryKV()
    opt = tmp_path / "c.cnf"
    opt.write_text("[client]\npassword=hunter2\n")
    os.chmod(opt, 0o600)
    rc = _cli(kv, ["run", "--target", "prod-db", "--network", "prod", "--db-host", "10.0.0.5", "--database", "shop",
                   "--option-file", str(opt), "--volume", "bk", "--write-bps", "20m", "--keep-last", "3",
                   "--max-age", "7d", "-l", "team=dba"], monkeypatch)
    assert rc == 0
    job_id = capsys.readouterr().out.strip()
    j = BackupStore(kv, "/p").get(job_id)[0]
    assert (j.state, j.kind, j.target, j.host) == (QUEUED, "backup", "prod-db", "h1")
    assert j.spec["limits"]["write_bps"] == 20 << 20 and j.spec["limits"]["memory"] == 1 << 30
    assert j.spec["keep_last"] == 3 and j.spec["max_age"] == 7 * 86400 and j.spec["labels"] == {"team": "dba"}
    assert "hunter2" not in json.dumps(kv.dump(), default=str)


def test_run_refuses_an_option_file_others_can_read(tmp_path, monkeypatch, capsys):
    opt = tmp_path / "c.cnf"
    opt.write_text("[client]\n")
    os.chmod(opt, 0o644)
    rc = _cli(MemoryKV(), ["run", "--network", "prod", "--db-host", "db", "--database", "shop",
                           "--option-file", str(opt), "--volume", "bk"], monkeypatch)
    assert rc == 1 and "chmod 600" in capsys.readouterr().err


def test_run_refuses_an_option_file_outside_the_allowed_folder(tmp_path, monkeypatch, capsys):
    """The CLI refuses what the agent would refuse (trust.check_job), before anything is queued."""
    kv = MemoryKV()
    opt = tmp_path / "c.cnf"
    opt.write_text("[client]\n")
    os.chmod(opt, 0o600)
    monkeypatch.setattr(cli, "Context", lambda args: FakeCtx(argparse.Namespace(**vars(args),
                                                             option_dir_for_test="/etc/drctl"), kv))
    rc = cli.main(["run", "--network", "prod", "--db-host", "db", "--database", "shop",
                   "--option-file", str(opt), "--volume", "bk"])
    assert rc == 1 and "/etc/drctl" in capsys.readouterr().err
    assert BackupStore(kv, "/p").list_jobs() == []


def test_cancel_of_a_queued_job_ends_it_at_once(monkeypatch, capsys):
    kv = MemoryKV()
    s = BackupStore(kv, "/p")
    j = job()
    s.submit(j)
    assert _cli(kv, ["cancel", j.id], monkeypatch) == 0
    assert s.get(j.id)[0].state == CANCELLED and s.queued("h1") == []


def test_restore_picks_the_latest_backup_at_a_time(monkeypatch):
    s = BackupStore(MemoryKV(), "/p")
    for i, t in enumerate((100.0, 200.0, 300.0)):
        s.add_backup(Backup(name=f"b{i}", target="t", database="d", volume="v", path="p", manifest_path="m",
                            size=1, sha256="x", created=t, host="h", job="j"))
    assert jobs.pick_backup(s, None, "t", None).name == "b2"
    assert jobs.pick_backup(s, None, "t", 250.0).name == "b1"
    with pytest.raises(NotFound):
        jobs.pick_backup(s, None, "t", 50.0)


def test_check_exits_1_when_backups_silently_stopped(monkeypatch, capsys):
    kv = MemoryKV()
    s = BackupStore(kv, "/p")
    s.add_backup(Backup(name="old", target="t", database="d", volume="v", path="p", manifest_path="m", size=1,
                        sha256="x", created=time.time() - 3 * 86400, host="h", job="j"))
    s.add_backup(Backup(name="new", target="u", database="d", volume="v", path="p", manifest_path="m", size=1,
                        sha256="x", created=time.time() - 60, host="h", job="j"))
    assert _cli(kv, ["check", "--max-age", "1d", "u"], monkeypatch) == 0
    assert _cli(kv, ["check", "--max-age", "1d"], monkeypatch) == 1
    assert "3.0d old" in capsys.readouterr().out
    j = job(target="u")
    s.submit(j)
    s.update(j.id, lambda x: x.move(FAILED, "boom"))
    assert _cli(kv, ["check", "--max-age", "1d", "u"], monkeypatch) == 1
