"""Point-in-time planning from the catalog (pitr.py): the backup chosen, the
files replayed, a gap named before anything is submitted, the replay's checks
on the agent's host, and the job records that carry a replay."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from netplugin.backup import binlog, pitr, trust
from netplugin.backup.binlog import BinlogFile
from netplugin.backup.config import BackupConfig
from netplugin.backup.model import BACKUP, RESTORE, Backup, JobSpec
from netplugin.backup.store import BackupStore
from netplugin.errors import InvalidRequest

from .fakes import MemoryKV

T0 = 1_796_360_000.0          # 2026-12-04 ~03:33 UTC


def backup(name: str, file: str | None, pos: int = 900, when: float | None = T0, **over) -> Backup:
    coords = None if file is None else {"file": file, "pos": pos, "gtid": "0-1-5", "time": when}
    base = dict(name=name, target="shop", database="shop", volume="vol", path=f"shop/{name}.sql.zst",
                manifest_path=f"shop/{name}.manifest.json", size=10, sha256="0" * 64, created=0.0, host="b",
                job="20261204-000000-abcdef", binlog=coords)
    base.update(over)
    return Backup(**base)


def bfile(n: int, first: float, last: float, **over) -> BinlogFile:
    name = f"mariadb-bin.{n:06d}"
    base = dict(target="shop", file=name, volume="vol", path=f"shop/binlog/{name}", host="b", size=5000,
                sha256="0" * 64, start_pos=4, end_pos=5000, first_time=first, last_time=last, server_id=1, events=9)
    base.update(over)
    return BinlogFile(**base)


ARCHIVE = [bfile(1, T0 - 100, T0 + 10), bfile(2, T0 + 10, T0 + 50), bfile(3, T0 + 50, T0 + 90),
           bfile(4, T0 + 90, T0 + 200)]


def test_the_newest_backup_before_time_is_chosen():
    bs = [backup("old", "mariadb-bin.000001", when=T0 - 50), backup("new", "mariadb-bin.000002", 700, T0 + 20),
          backup("later", "mariadb-bin.000003", 100, T0 + 60)]
    b, coords = pitr.choose_backup(bs, T0 + 30, "shop")
    assert b.name == "new" and coords["file"] == "mariadb-bin.000002" and coords["pos"] == 700


def test_a_backup_at_time_is_not_before_it():
    bs = [backup("a", "mariadb-bin.000001", when=T0 - 1), backup("b", "mariadb-bin.000001", 950, when=T0)]
    assert pitr.choose_backup(bs, T0, "shop")[0].name == "a"


def test_backups_without_coordinates_or_time_are_passed_over_and_said():
    bs = [backup("nolog", None), backup("notime", "mariadb-bin.000001", when=None),
          backup("bad", "mariadb-bin.000001", pos=2)]
    with pytest.raises(InvalidRequest, match=r"no good backup of shop was taken before .* \(3 without"):
        pitr.choose_backup(bs, T0 + 100, "shop")


def test_a_backup_without_a_time_is_bounded_by_its_files_rotation():
    bs = [backup("old", "mariadb-bin.000001", when=T0 - 50), backup("untimed", "mariadb-bin.000002", 700, None)]
    # mariadb-bin.000002 rotated at T0 + 50: before T0 + 60 the untimed backup counts, before T0 + 40 it does not
    assert pitr.choose_backup(bs, T0 + 60, "shop", ARCHIVE)[0].name == "untimed"
    assert pitr.choose_backup(bs, T0 + 40, "shop", ARCHIVE)[0].name == "old"
    assert pitr.choose_backup(bs, T0 + 60, "shop", [])[0].name == "old"


def test_files_from_the_backups_file_until_the_one_holding_time():
    files = pitr.files_to(ARCHIVE, "mariadb-bin.000001", 900, T0 + 60)
    assert [f.file for f in files] == ["mariadb-bin.000001", "mariadb-bin.000002", "mariadb-bin.000003"]
    assert [f.file for f in pitr.files_to(ARCHIVE, "mariadb-bin.000002", 4, T0 + 20)] == ["mariadb-bin.000002"]


def test_a_missing_file_is_a_gap_named_with_positions_and_times():
    archive = [f for f in ARCHIVE if f.seq != 2]
    with pytest.raises(pitr.ArchiveGap) as err:
        pitr.files_to(archive, "mariadb-bin.000001", 900, T0 + 60)
    msg = err.value.message
    assert "gap" in msg and "mariadb-bin.000002 from position 4 is missing" in msg
    assert binlog.at_text(T0 + 10) in msg and "until " + binlog.at_text(T0 + 50) in msg
    assert "mariadb-bin.000003 begins" in msg


def test_several_missing_files_are_named_as_one_interval():
    archive = [f for f in ARCHIVE if f.seq not in (2, 3)]
    with pytest.raises(pitr.ArchiveGap, match=r"mariadb-bin.000002 from position 4 to mariadb-bin.000003 is missing"):
        pitr.files_to(archive, "mariadb-bin.000001", 900, T0 + 150)


def test_the_backups_own_file_missing_is_a_gap_from_its_position():
    with pytest.raises(pitr.ArchiveGap, match=r"mariadb-bin.000001 from position 900 is missing, events after "
                                              r"the backup's snapshot"):
        pitr.files_to(ARCHIVE[1:], "mariadb-bin.000001", 900, T0 + 60)


def test_an_archive_that_ends_before_time_is_refused():
    with pytest.raises(pitr.ArchiveGap, match=r"ends before .*mariadb-bin.000005 from position 4 on is not archived"):
        pitr.files_to(ARCHIVE, "mariadb-bin.000001", 900, T0 + 500)


def test_a_position_past_the_archived_file_is_refused():
    with pytest.raises(InvalidRequest, match="past the end"):
        pitr.files_to(ARCHIVE, "mariadb-bin.000001", 9000, T0 + 60)


def test_files_of_another_base_name_do_not_count():
    archive = [*ARCHIVE[:1], bfile(2, T0 + 10, T0 + 50, file="other-bin.000002", path="shop/binlog/other-bin.000002")]
    with pytest.raises(pitr.ArchiveGap, match=r"mariadb-bin\.000002"):
        pitr.files_to(archive, "mariadb-bin.000001", 900, T0 + 30)


def test_plan_and_its_replay_field_pass_the_records_check():
    p = pitr.plan([backup("b1", "mariadb-bin.000002", 700, T0 + 20)], ARCHIVE, T0 + 60, "shop")
    assert p.backup.name == "b1" and [f.seq for f in p.files] == [2, 3]
    assert pitr.check_replay(p.replay()) == {"files": ["mariadb-bin.000002", "mariadb-bin.000003"],
                                             "start_pos": 700, "stop_at": T0 + 60, "source_target": "shop"}


@pytest.mark.parametrize("bad", [
    {"files": [], "start_pos": 4, "stop_at": T0, "source_target": "shop"},
    {"files": ["../../etc/passwd"], "start_pos": 4, "stop_at": T0, "source_target": "shop"},
    {"files": ["mariadb-bin.000001"], "start_pos": 1, "stop_at": T0, "source_target": "shop"},
    {"files": ["mariadb-bin.000001"], "start_pos": 4, "stop_at": "now", "source_target": "shop"},
    {"files": ["mariadb-bin.000001"], "start_pos": 4, "stop_at": T0, "source_target": "../x"},
    "mariadb-bin.000001",
])
def test_bad_replay_fields_are_refused(bad):
    with pytest.raises(InvalidRequest):
        pitr.check_replay(bad)


def spec(**over) -> dict:
    base = dict(network="prod", db_host="10.0.0.5", option_file="/etc/drctl/client.cnf", volume="vol",
                database="shop", backup="shop-20261204-000000-abcdef")
    base.update(over)
    return JobSpec(**base).__dict__


def test_a_restore_job_with_a_replay_passes_and_others_are_refused():
    cfg = BackupConfig(option_dir="/etc/drctl")
    replay = {"files": ["mariadb-bin.000001"], "start_pos": 4, "stop_at": T0, "source_target": "shop"}
    assert trust.check_spec(RESTORE, spec(replay=replay), cfg).replay == replay
    with pytest.raises(InvalidRequest, match="empty"):
        trust.check_spec(RESTORE, spec(replay=replay, replace=True), cfg)
    with pytest.raises(InvalidRequest):
        trust.check_spec(BACKUP, spec(replay=replay, backup=""), cfg)
    with pytest.raises(InvalidRequest):
        trust.check_spec(RESTORE, spec(replay={**replay, "files": ["x;rm"]}), cfg)


class FakeCatalog:
    def __init__(self, backups, files):
        self._b, self._f = backups, files

    def backups(self, target=None):
        return [b for b in self._b if target in (None, b.target)]

    def binlogs(self, target=None):
        return [f for f in self._f if target in (None, f.target)]


def test_restore_fields_at_carry_the_replay_or_refuse_before_submitting():
    store = FakeCatalog([backup("shop-20261204-000000-abcdef", "mariadb-bin.000002", 700, T0 + 20)], ARCHIVE)
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + 60))
    fields = pitr.restore_fields_at(store, "shop", at, None, None, False, False)
    assert fields["backup"] == "shop-20261204-000000-abcdef" and fields["replay"]["start_pos"] == 700
    with pytest.raises(InvalidRequest, match="no time zone"):
        pitr.restore_fields_at(store, "shop", at[:-1], None, None, False, False)
    with pytest.raises(InvalidRequest, match="replace"):
        pitr.restore_fields_at(store, "shop", at, None, None, True, False)
    elsewhere = FakeCatalog(store.backups(), [bfile(2, T0 + 10, T0 + 50), bfile(3, T0 + 50, T0 + 90, host="a")])
    with pytest.raises(InvalidRequest, match="not in volume vol on host b"):
        pitr.restore_fields_at(elsewhere, "shop", at, None, None, False, False)


def test_a_physical_backup_starts_a_pitr_only_when_the_caller_can_restore_it():
    phys = backup("shop-20261204-000000-abcdef", "mariadb-bin.000002", 700, None, method="physical",
                  path="shop/shop-20261204-000000-abcdef.xb.zst")
    store = FakeCatalog([phys], ARCHIVE)
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + 60))
    with pytest.raises(InvalidRequest, match="no good backup"):
        pitr.restore_fields_at(store, "shop", at, None, None, False, False)
    fields = pitr.restore_fields_at(store, "shop", at, None, None, False, False,
                                    lambda b: {"method": "physical", "data_volume": f"{b.target}-data"})
    assert fields["method"] == "physical" and fields["data_volume"] == "shop-data"
    assert fields["replay"]["files"] == ["mariadb-bin.000002", "mariadb-bin.000003"]


def test_a_whole_server_replay_has_no_schema_filter(tmp_path):
    store = BackupStore(MemoryKV(), "/t")
    _archive_in(tmp_path, store)
    replay = {"files": ["mariadb-bin.000001"], "start_pos": 4, "stop_at": T0 + 60, "source_target": "shop"}
    host = lambda rel: trust.inside(str(tmp_path / "vol"), rel)  # noqa: E731
    _, argv = pitr.replay_files(store, JobSpec(**spec(replay=replay, database="other")), {"database": "shop"}, host,
                                whole_server=True)
    assert not [a for a in argv.splitlines() if a.startswith(("--database", "--rewrite-db"))]


def _archive_in(tmp_path, store: BackupStore, names=("mariadb-bin.000001", "mariadb-bin.000002")) -> dict:
    folder = tmp_path / "vol" / "shop" / "binlog"
    folder.mkdir(parents=True)
    recs = {}
    for i, name in enumerate(names, 1):
        data = os.urandom(300 + i)
        (folder / name).write_bytes(data)
        rec = bfile(i, T0 + i, T0 + i + 1, size=len(data), end_pos=len(data), sha256=hashlib.sha256(data).hexdigest())
        store.add_binlog(rec)
        recs[name] = rec
    return recs


def test_replay_files_checks_every_file_on_the_host_and_writes_the_argv(tmp_path):
    store = BackupStore(MemoryKV(), "/t")
    _archive_in(tmp_path, store)
    replay = {"files": ["mariadb-bin.000001", "mariadb-bin.000002"], "start_pos": 700, "stop_at": T0 + 60,
              "source_target": "shop"}
    s = JobSpec(**spec(replay=replay, database="shop_at"))
    host = lambda rel: trust.inside(str(tmp_path / "vol"), rel)  # noqa: E731
    params, argv = pitr.replay_files(store, s, {"database": "shop"}, host)
    assert params == {"REPLAY": True, "REPLAY_DIR": "/backup/shop/binlog"}
    assert argv.splitlines() == ["mariadb-binlog", "--start-position=700",
                                 f"--stop-datetime={binlog.at_text(T0 + 60)}", "--database=shop",
                                 "--rewrite-db=shop->shop_at", "mariadb-bin.000001", "mariadb-bin.000002"]
    with open(tmp_path / "vol" / "shop" / "binlog" / "mariadb-bin.000002", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(InvalidRequest, match="damaged"):
        pitr.replay_files(store, s, {"database": "shop"}, host)
    os.unlink(tmp_path / "vol" / "shop" / "binlog" / "mariadb-bin.000002")
    with pytest.raises(InvalidRequest, match="gap"):
        pitr.replay_files(store, s, {"database": "shop"}, host)


def test_the_store_skips_and_counts_bad_binlog_records():
    kv = MemoryKV()
    store = BackupStore(kv, "/t")
    store.add_binlog(bfile(1, T0, T0 + 1))
    kv.load([("/t/backup/binlogs/shop/mariadb-bin.000002", "{not json"),
             ("/t/backup/binlogs/shop/mariadb-bin.000003", bfile(3, T0, T0 - 5).to_json()),       # last < first
             ("/t/backup/binlogs/other/mariadb-bin.000004", bfile(4, T0, T0 + 1).to_json())])     # filed elsewhere
    assert [f.file for f in store.binlogs()] == ["mariadb-bin.000001"]
    assert store.bad_binlogs == 3
    with pytest.raises(InvalidRequest):
        store.add_binlog(bfile(5, T0, T0 + 1, path="shop/../x"))


# -- the replay into a physical restore's fresh server (pitr_physical.py), over FakeDocker --------------

class StubSteps:
    """A physical restore's steps as the runner sees them: a verified server at 10.9.0.7."""

    def __init__(self):
        self.ended_with: str | None = None

    def verify(self, ctx) -> dict:
        return {"backup": "b", "method": "physical", "database": "shop", "message": "restored b",
                "server": {"ip": "10.9.0.7", "port": 3306}}

    def ended(self, ctx, state: str) -> None:
        self.ended_with = state


def _replay_rig(tmp_path, behaviour):
    from netplugin.backup.binlog_runner import BinlogRunner
    from netplugin.backup.runner import _Ctx

    from .backup_fakes import FakeDocker, FakeHostEnv
    from .test_backup_runner import Rig

    rig = Rig(tmp_path)
    rig.docker.behaviours["/job/bin/replay.sh"] = behaviour
    vol = rig.docker.volumes["backups"]["Mountpoint"]
    recs = _archive_in(tmp_path, rig.store)
    os.makedirs(os.path.join(vol, "shop"), exist_ok=True)
    os.replace(tmp_path / "vol" / "shop" / "binlog", os.path.join(vol, "shop", "binlog"))
    replay = {"files": list(recs), "start_pos": 4, "stop_at": T0 + 60, "source_target": "shop"}
    job = rig.job(kind=RESTORE, backup="shop-20261204-000000-abcdef", replay=replay, volume="backups")
    runner = BinlogRunner(rig.store, rig.docker, rig.cfg, env=rig.env, np_store=rig.np)
    ctx = _Ctx(job)
    runner._locate(ctx)
    ctx.option_file = rig.option_file
    ctx.manifest = {"database": "shop"}
    ctx.device = rig.env.device(ctx.volume_path)         # as the runner's prepare found it
    os.makedirs(ctx.job_dir, exist_ok=True)
    assert isinstance(rig.docker, FakeDocker) and isinstance(rig.env, FakeHostEnv)
    return rig, runner, ctx


def _replayed(c, job_dir, volume, docker):
    from .backup_fakes import _params
    p = _params(job_dir)
    with open(os.path.join(job_dir, "replay.argv")) as fh:
        argv = fh.read().splitlines()
    assert p["DB_HOST"] == "10.9.0.7" and p["REPLAY_DIR"] == "/backup/shop/binlog"
    assert "--database=shop" not in argv and argv[-2:] == ["mariadb-bin.000001", "mariadb-bin.000002"]
    for name, text in (("replay_status", "decode=0 apply=0\n"), ("checksums.replayed", "ev\tInnoDB\t7\t99\n"),
                       ("done", "ok\n")):
        with open(os.path.join(job_dir, "out", name), "w") as fh:
            fh.write(text)
    return 0


def test_a_physical_restores_server_gets_the_whole_servers_replay(tmp_path):
    from netplugin.backup.pitr_physical import ReplayAfter
    rig, runner, ctx = _replay_rig(tmp_path, _replayed)
    result = ReplayAfter(runner, StubSteps()).verify(ctx)
    assert result["replay"]["tables"] == {"ev": {"rows": 7, "checksum": "99"}} and result["replay"]["rows"] == 7
    assert result["message"].endswith(f"binlogs replayed up to {binlog.at_text(T0 + 60)} UTC")
    assert not [c for c in rig.docker.containers.values() if c.name.endswith("-replay")]     # removed after


def test_a_failed_replay_fails_the_job_and_a_damaged_archive_starts_no_container(tmp_path):
    from netplugin.backup.model import FAILED, JobEnded
    from netplugin.backup.pitr_physical import ReplayAfter

    def broken(c, job_dir, volume, docker):
        with open(os.path.join(job_dir, "out", "error"), "w") as fh:
            fh.write("the binlog replay failed (decode=0 apply=1): ERROR 1062")
        return 1
    rig, runner, ctx = _replay_rig(tmp_path, broken)
    with pytest.raises(JobEnded) as err:
        ReplayAfter(runner, StubSteps()).verify(ctx)
    assert err.value.state == FAILED and "ERROR 1062" in err.value.message
    made = len(rig.docker.containers)
    path = os.path.join(rig.docker.volumes["backups"]["Mountpoint"], "shop", "binlog", "mariadb-bin.000002")
    with open(path, "ab") as fh:
        fh.write(b"x")
    with pytest.raises(JobEnded, match="damaged"):
        ReplayAfter(runner, StubSteps()).verify(ctx)
    assert len(rig.docker.containers) == made
