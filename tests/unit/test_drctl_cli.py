"""drctl's docker conventions: inspect (several jobs, a JSON list), show as a
deprecated alias, ls --filter/--format, rm -f. Over the in-memory etcd."""

from __future__ import annotations

import json

import pytest

from netplugin.backup.store import BackupStore

from .backup_records import put_job
from .netctl_runner import drctl_runner


@pytest.fixture
def drctl(monkeypatch, capsys, kv, tmp_path):
    return drctl_runner(monkeypatch, capsys, kv)


@pytest.fixture
def jobs(kv):
    store = BackupStore(kv, "/netplugin/v1")
    return [put_job(store, "succeeded", target="a", host="h1"), put_job(store, "failed", target="b", host="h2"),
            put_job(store, "queued", target="c", host="h1")]


def test_inspect_prints_a_json_list_of_every_job_named(drctl, jobs):
    r = drctl("inspect", jobs[0].id, jobs[2].id)
    assert r.code == 0 and [j["id"] for j in r.json] == [jobs[0].id, jobs[2].id]
    assert r.json[0]["history"] and r.json[0]["spec"]["database"] == "shop"
    r = drctl("inspect", jobs[1].id, "20991231-nope")
    assert r.code == 1 and [j["id"] for j in r.json] == [jobs[1].id] and "20991231-nope" in r.err
    assert drctl("inspect", jobs[1].id, "--format", "{{.State}} {{.Target}}").out == "failed b\n"
    table = drctl("inspect", jobs[1].id, "--format", "table")
    assert table.out.startswith("Job ") and "History:" in table.out


def test_show_is_a_deprecated_alias_with_its_old_output(drctl, jobs):
    r = drctl("show", jobs[0].id, "--json")
    assert r.code == 0 and json.loads(r.out)["id"] == jobs[0].id
    assert "'drctl show' is deprecated: use 'drctl inspect'" in r.err


def test_ls_filters_and_templates(drctl, jobs):
    assert drctl("ls", "--filter", "host=h1", "-q").out.split() == [jobs[0].id, jobs[2].id]
    assert drctl("ls", "--filter", "host=h1", "--filter", "state=queued", "-q").out.split() == [jobs[2].id]
    assert drctl("ls", "--format", "{{.Target}}:{{.State}}").out.split() == ["a:succeeded", "b:failed", "c:queued"]
    r = drctl("ls", "--filter", "colour=red")
    assert r.code == 1 and "the keys are host, id, kind, state, target" in r.err


def test_rm_f_forgives_a_job_that_does_not_exist(drctl, jobs):
    assert drctl("rm", "20991231-nope").code == 1
    r = drctl("rm", "-f", "20991231-nope")
    assert r.code == 0 and r.err == ""
