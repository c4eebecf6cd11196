"""A restore's staging schemas and what its load must match (jobscript.py),
and the refusal of a restore into the backup's own server (jobs.py)."""

from __future__ import annotations

import subprocess

import pytest

from netplugin.backup import jobs, jobscript
from netplugin.backup.model import Backup, Job
from netplugin.backup.store import BackupStore
from netplugin.errors import InvalidRequest

from .fakes import MemoryKV


def test_staging_names_are_bounded_identifiers_of_the_job():
    assert jobscript.staging_names("shop", "20261203-181640-3c599f") == ("shop__drctl_stage_3c599f",
                                                                       "shop__drctl_old_3c599f")
    stage, old = jobscript.staging_names("d" * 64, "20261203-181640-3c599f")
    assert len(stage) == 64 and len(old) == 64
    assert stage.endswith("__drctl_stage_3c599f") and old.endswith("__drctl_old_3c599f")
    assert stage != old


@pytest.mark.parametrize("job_id", ["../../etc", "20261203-181640-", "x-y-`z`"])
def test_staging_names_refuse_a_job_id_without_a_hex_tail(job_id):
    with pytest.raises(ValueError):
        jobscript.staging_names("shop", job_id)


def test_expected_files_list_every_table_and_the_checksums_that_can_be_compared():
    manifest = {"tables": {"b": {"rows": 2, "checksum": "9", "consistent": False},
                           "a": {"rows": 1, "checksum": "5", "engine": "InnoDB"}}}
    assert jobscript.expected_files(manifest) == ("a\nb\n", "a\t1\t5\n")
    assert jobscript.expected_files({}) == ("", "")
    with pytest.raises(ValueError, match="tab or newline"):
        jobscript.expected_files({"tables": {"a\nb": {"rows": 1, "checksum": "5"}}})


def test_the_restore_script_swaps_in_one_rename_and_checks_before_it():
    script = jobscript.SCRIPT
    load = script.index('log "loading $REL into $INTO')
    check = script.index('verify_loaded "$OUT/checksums.restored"')
    swap = script.index('"SET SESSION foreign_key_checks = 0; $rename"')
    assert load < check < swap
    assert "DROP DATABASE \\`$DATABASE\\`" not in script          # the live schema is never dropped


def _store_with_backup(server: str) -> tuple[BackupStore, dict]:
    store = BackupStore(MemoryKV(), "/p")
    src = Job(id="20261203-000000-abcdef", kind="backup", target="prod-db", host="h1", spec={}, server=server)
    store.submit(src)
    store.add_backup(Backup(name="prod-db-1", target="prod-db", database="shop", volume="v", path="p",
                            manifest_path="m", size=1, sha256="0" * 64, created=1.0, host="h1", job=src.id))
    spec = {"backup": "prod-db-1", "network": "prod", "db_host": "10.10.0.5", "db_port": 3306}
    return store, spec


def test_a_restore_into_the_backups_own_server_is_refused_without_into_source():
    store, spec = _store_with_backup("prod@10.10.0.5:3306")
    with pytest.raises(InvalidRequest, match="--into-source"):
        jobs.check_not_source(store, spec)
    jobs.check_not_source(store, dict(spec, into_source=True))
    jobs.check_not_source(store, dict(spec, network="dr"))        # another server: fine
    jobs.check_not_source(store, dict(spec, db_port=3307))


def _verify_loaded(tmp_path, tables: str, sums: str, loaded: str) -> subprocess.CompletedProcess:
    """The script's own verify_loaded function, run by bash over files in tmp_path."""
    script = jobscript.SCRIPT
    start = script.index("verify_loaded() {")
    body = script[start:script.index("\n}\n", start) + 3].replace("/job/", f"{tmp_path}/")
    (tmp_path / "expected_tables").write_text(tables)
    (tmp_path / "expected_checksums").write_text(sums)
    (tmp_path / "loaded").write_text(loaded)
    program = "set -uo pipefail\nfail() { echo \"FAIL: $1\"; exit 1; }\n" + body + \
        f'verify_loaded "{tmp_path}/loaded"\necho verified\n'
    return subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize("loaded,why", [
    ("a\tInnoDB\t1\t5\nb\tInnoDB\t7\t1\n", None),                       # b's checksum cannot be compared
    ("a\tInnoDB\t2\t5\nb\tInnoDB\t7\t1\n", "differ from the manifest: a"),
    ("a\tInnoDB\t1\t6\nb\tInnoDB\t7\t1\n", "differ from the manifest: a"),
    ("a\tInnoDB\t1\t5\n", "missing: b"),
    ("a\tInnoDB\t1\t5\nb\tInnoDB\t7\t1\nc\tInnoDB\t0\t0\n", "not in the backup: c"),
    ("", "missing: "),
])
def test_the_scripts_check_of_a_load_against_the_manifest(tmp_path, loaded, why):
    tables, sums = jobscript.expected_files({"tables": {"a": {"rows": 1, "checksum": "5"},
                                                        "b": {"rows": 7, "checksum": "1", "consistent": False}}})
    done = _verify_loaded(tmp_path, tables, sums, loaded)
    if why is None:
        assert done.stdout.strip() == "verified", done.stdout + done.stderr
    else:
        assert done.returncode == 1 and why in done.stdout, done.stdout + done.stderr
    assert "command not found" not in done.stderr
