"""drctl's data safety end to end (real dockerd, MariaDB, etcd, agents as
processes):

- ``restore --replace`` loads into a staging schema, checks it, and only then
  swaps the tables in: a load OOM-killed halfway (a 48 MiB row under a 64 MiB
  job memory limit) leaves the live schema unchanged row for row and no
  staging schema behind; a good one swaps, and the old tables are gone; a
  restore into the backup's own server needs ``--into-source``;
- the per-server lock lives as long as the job: an agent killed (kill -9)
  mid-job, and a job on the same server from another host (a second agent
  process with another host id on this machine: the rig's second host has no
  MariaDB images) is not admitted, past the killed agent's lease, until the
  restarted agent adopted the first job and it ended.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time

import pytest

from tests.harness import etcd
from tests.harness.daemon import Agent

from .conftest import ETCD, LABEL, docker, new_network
from .test_backup import DR, SERVER_IMAGE, SMALL_SQL, TOOLS_IMAGE, table_facts

pytestmark = pytest.mark.e2e

BIG_ROW = 48 << 20          # one row the load's client must hold whole: more than the job's 64 MiB

SWAP_SQL = f"""
CREATE DATABASE IF NOT EXISTS swap;
USE swap;
CREATE TABLE a_first (id INT PRIMARY KEY, v VARCHAR(40)) ENGINE=InnoDB;
INSERT INTO a_first SELECT seq, MD5(seq) FROM seq_1_to_20000;
CREATE TABLE m_big (id INT PRIMARY KEY, data LONGBLOB) ENGINE=InnoDB;
INSERT INTO m_big VALUES (1, REPEAT('x', {BIG_ROW}));
CREATE TABLE z_last (id INT PRIMARY KEY, n BIGINT) ENGINE=InnoDB;
INSERT INTO z_last SELECT seq, seq * 7 FROM seq_1_to_5000;
"""


@pytest.fixture
def drs(clean, tmp_path):
    docker("image", "inspect", SERVER_IMAGE)
    docker("image", "inspect", TOOLS_IMAGE)
    d = DR(clean, tmp_path)
    d.env["DRCTL_OPTION_DIR"] = str(tmp_path)
    d.agent = Agent(d.agent_log, d.env, ETCD, f"{clean.prefix}/backup/agents/{clean.host_id}")
    d.start_agent()
    yield d
    d.close()


def schema_facts(d: DR, container: str, db: str) -> dict:
    tables = d.sql(container, f"SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA='{db}' "
                              "ORDER BY TABLE_NAME").split()
    return table_facts(d, container, db, tables)


def work_schemas(d: DR, container: str) -> list[str]:
    return d.sql(container, "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA "
                            "WHERE SCHEMA_NAME LIKE '%\\_\\_drctl\\_%'").split()


def test_replace_restore_proves_the_load_before_it_swaps(drs):
    d = drs
    new_network("swnet", "10.133.0.0/24", 133)
    d.start_db("sw-db", "swnet", "10.133.0.10")
    d.sql("sw-db", "SET GLOBAL max_allowed_packet = 268435456;")
    d.sql("sw-db", SWAP_SQL)
    volume = d.volume()
    out = d.drctl(*d.backup_args("sw-db", "swnet", "10.133.0.10", "swap", volume, "--memory", "1g", "--wait",
                                 "--json"), check=False)
    backup = json.loads(out.stdout)
    assert backup["state"] == "succeeded", (backup["message"], backup["log_tail"])
    name = backup["result"]["backup"]
    at_backup = schema_facts(d, "sw-db", "swap")
    assert set(at_backup) == {"a_first", "m_big", "z_last"}

    # The live schema moves on after the backup: rows go, rows come, a table appears.
    d.sql("sw-db", "DELETE FROM a_first WHERE id <= 500; UPDATE z_last SET n = -n WHERE id % 3 = 0;"
                   "CREATE TABLE later (id INT PRIMARY KEY) ENGINE=InnoDB; INSERT INTO later VALUES (1), (2);", "swap")
    live = schema_facts(d, "sw-db", "swap")
    assert live != at_backup and "later" in live

    restore = ["restore", "--backup", name, "--target", "sw-db", "--network", "swnet", "--db-host", "10.133.0.10",
               "--database", "swap", "--replace", "--option-file", d.client_cnf, "--label", LABEL]
    # 1. The backup's own server: refused unless asked for explicitly.
    refused = d.drctl(*restore, check=False)
    assert refused.returncode != 0 and "--into-source" in refused.stderr, refused.stderr

    # 2. A load killed halfway (the 48 MiB row under 64 MiB): the live schema is untouched.
    out = d.drctl(*restore, "--into-source", "--memory", "64m", "--wait", "--json", check=False)
    failed = json.loads(out.stdout)
    assert failed["state"] == "failed", failed["message"]
    assert failed["oom_killed"] is True or "load failed" in failed["message"], failed["message"]
    assert "the live schema swap is unchanged and the staging schema swap__drctl_stage_" in failed["message"], \
        failed["message"]
    assert schema_facts(d, "sw-db", "swap") == live                    # row for row, every table
    assert work_schemas(d, "sw-db") == []                              # staging dropped

    # 3. Enough memory: loaded, checked, swapped; the old tables are gone.
    out = d.drctl(*restore, "--into-source", "--memory", "1g", "--wait", "--json", check=False)
    good = json.loads(out.stdout)
    assert good["state"] == "succeeded", (good["message"], good["log_tail"])
    assert good["result"]["swapped"] == {"tables_in": 3, "tables_out": 4}
    assert good["result"]["tables_verified"] == 3 and "left_schemas" not in good["result"]
    assert "command not found" not in failed["log_tail"] + good["log_tail"]
    assert "every table's rows and checksum match the manifest" in good["log_tail"]
    assert schema_facts(d, "sw-db", "swap") == at_backup               # "later" went with the old tables
    assert work_schemas(d, "sw-db") == []

    # 4. A view cannot move between schemas atomically: refused, nothing changed.
    d.sql("sw-db", "CREATE VIEW small_ids AS SELECT id FROM a_first WHERE id < 10;", "swap")
    out = d.drctl(*restore, "--into-source", "--memory", "1g", "--wait", "--json", check=False)
    refused = json.loads(out.stdout)
    assert refused["state"] == "failed" and "1 views" in refused["message"], refused["message"]
    assert "--replace swaps base tables only" in refused["message"]
    after = schema_facts(d, "sw-db", "swap")
    assert after.pop("small_ids")[0] == 9 and after == at_backup
    assert work_schemas(d, "sw-db") == []


def _wait_state(d: DR, job_id: str, states: tuple[str, ...], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while (j := d.job(job_id))["state"] not in states:
        assert time.monotonic() < deadline, j
        time.sleep(0.2)
    return j


def test_a_killed_agents_job_keeps_its_server_until_it_ends(drs):
    d = drs
    new_network("lknet", "10.134.0.0/24", 134)
    d.start_db("lk-db", "lknet", "10.134.0.10", SMALL_SQL)
    volume = d.volume()
    # Hold the first job's dump: a session locks the table it must read.
    holder = subprocess.Popen(["/usr/bin/docker", "exec", "-i", "lk-db", "mariadb", "-uroot", "--unbuffered",
                               "--batch", "--skip-column-names", "small"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        holder.stdin.write("LOCK TABLES items WRITE;\nSELECT 'held';\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        first = d.drctl(*d.backup_args("lk-a", "lknet", "10.134.0.10", "small", volume, "--no-checksums",
                                       "-q")).stdout.strip()
        _wait_state(d, first, ("running",), 60)

        d.agent.kill9()                                   # mid-job; its container keeps working
        other = "e2e-b-" + secrets.token_hex(3)
        b_env = dict(d.env, NETPLUGIN_HOST_ID=other)
        agent_b = Agent(d.tmp / "agent-b.log", b_env, ETCD, f"{d.plugin.prefix}/backup/agents/{other}")
        agent_b.start()
        try:
            second = d.drctl(*d.backup_args("lk-b", "lknet", "10.134.0.10", "small", volume, "--no-checksums",
                                            "--host", other, "-q")).stdout.strip()
            agent_key = f"{d.plugin.prefix}/backup/agents/{d.plugin.host_id}"
            deadline = time.monotonic() + 40
            lapsed = False
            while not lapsed:                             # past the killed agent's lease (10 s)
                assert time.monotonic() < deadline, "the killed agent's lease did not lapse"
                lapsed = not etcd.keys(ETCD, agent_key)
                assert d.job(second)["state"] == "queued"
                time.sleep(0.5)
            time.sleep(3)                                 # and a few of agent b's ticks after it
            j2 = d.job(second)
            assert j2["state"] == "queued" and first in j2["message"], j2
            assert d.job(first)["state"] == "running"

            d.agent = Agent(d.tmp / "agent-a2.log", d.env, ETCD, agent_key)
            d.agent.start()                               # adopts the first job with its lock
            time.sleep(3)
            assert d.job(second)["state"] == "queued"
            holder.stdin.write("UNLOCK TABLES;\n")
            holder.stdin.flush()
            j1 = _wait_state(d, first, ("succeeded", "failed", "expired", "cancelled"), 120)
            assert j1["state"] == "succeeded", j1["message"]
            j2 = _wait_state(d, second, ("succeeded", "failed", "expired", "cancelled"), 120)
            assert j2["state"] == "succeeded", j2["message"]
            began = next(h["time"] for h in j2["history"] if h["state"] == "starting")
            ended = next(h["time"] for h in j1["history"] if h["state"] == "succeeded")
            assert began >= ended, "the second job started before the first ended"
        finally:
            agent_b.stop()
    finally:
        holder.stdin.close()
        holder.wait(30)
