"""``netctl status`` and the Prometheus metrics, over the fakes in fakes.py.

Metrics: the real Flask app is built with a Metrics object (as the daemon
does), so every protocol call the Harness makes in Docker's order is counted
by the real code; the store collector reads the fake etcd at scrape time.

Status: netctl's main() runs with ``netplugin.wiring.make_store`` replaced
so its Store reads the same MemoryKV as the Harness hosts h1 and h2.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import netplugin.wiring as backends
from netplugin.api import create_app
from netplugin.backup.store import BackupStore
from netplugin.model import Host
from netplugin.store import Store

from .backup_records import put_job
from .fakes import ovs_down
from .netctl_runner import Result, netctl_runner

SUBNET = "10.10.0.0/24"
ND, IPAM = "NetworkDriver.", "IpamDriver."

# Every family the daemon exposes; docs/operations.md lists the same, and the
# dashboard test of tests/e2e/test_operations.py checks its panels against a live daemon.
FAMILIES = {
    "netplugin_requests": "counter", "netplugin_request_duration_seconds": "histogram",
    "netplugin_backend_errors": "counter", "netplugin_rate_limits_applied": "counter",
    "netplugin_rate_limited_ports": "gauge", "netplugin_start_time_seconds": "gauge",
    "netplugin_endpoints": "gauge", "netplugin_pool_size": "gauge", "netplugin_pool_used": "gauge",
    "netplugin_reconcile_findings": "counter", "netplugin_reconcile_released": "counter",
    "netplugin_reconcile_repaired": "counter", "netplugin_reconcile_runs": "counter",
    "netplugin_reconcile_errors": "counter",
    "netplugin_reconcile_last_run_timestamp_seconds": "gauge",
    "netplugin_bad_records": "counter", "netplugin_bad_records_current": "gauge",
    "netplugin_watch_relists": "counter",
    "netplugin_backup_jobs": "gauge", "netplugin_backup_bytes": "counter",
    "netplugin_backup_jobs_orphaned": "gauge", "netplugin_backup_agents": "gauge",
    "netplugin_backup_last_success_timestamp_seconds": "gauge", "netplugin_backup_last_job_succeeded": "gauge",
    "netplugin_backup_catalog_backups": "gauge", "netplugin_backup_catalog_bytes": "gauge",
    "netplugin_backup_drill_succeeded": "gauge", "netplugin_backup_drill_rto_seconds": "gauge",
    "netplugin_backup_drill_rpo_seconds": "gauge", "netplugin_backup_drill_timestamp_seconds": "gauge",
}
DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "netplugin.json"


# -- metrics -------------------------------------------------------------------------------------

@pytest.fixture
def metered(np):
    """Host h1 whose app counts calls, with the etcd collector of host h1."""
    metrics = backends.make_metrics(dataclasses.replace(np.cfg, backup_metrics=True), np.store, np.parts.view)
    np.app = create_app(dataclasses.replace(np.parts, metrics=metrics))
    np.client = np.app.test_client()
    np.metrics = metrics
    return np


def sample(np, name: str, **labels) -> float | None:
    return np.metrics.registry.get_sample_value(name, labels)


def calls(np, method: str, outcome: str = "ok") -> float:
    return sample(np, "netplugin_requests_total", method=method, outcome=outcome) or 0


def test_docker_sequences_are_counted_by_method_and_outcome(metered):
    net = metered.create_network(SUBNET, vlan=100, name="prod")
    a = metered.run_container(net)
    metered.run_container(net)
    metered.stop_container(net, a)
    assert calls(metered, IPAM + "RequestPool") == 1
    assert calls(metered, IPAM + "RequestAddress") == 3          # the gateway and two containers
    assert calls(metered, ND + "CreateNetwork") == 1
    assert calls(metered, ND + "CreateEndpoint") == 2
    assert calls(metered, ND + "Join") == 2
    assert calls(metered, ND + "Leave") == 1
    assert calls(metered, ND + "DeleteEndpoint") == 1
    assert calls(metered, IPAM + "ReleaseAddress") == 1
    assert calls(metered, ND + "CreateEndpoint", "client_error") == 0
    assert sample(metered, "netplugin_request_duration_seconds_count", method=ND + "Join") == 2
    assert sample(metered, "netplugin_request_duration_seconds_sum", method=ND + "Join") > 0
    # every call falls in some latency bucket, the last (+Inf) holds them all
    assert sample(metered, "netplugin_request_duration_seconds_bucket", method=ND + "Join", le="+Inf") == 2


def test_refused_calls_are_client_errors_and_unknown_methods_one_label(metered):
    metered.fail(ND + "CreateEndpoint", {}, 400)
    metered.fail(ND + "CreateEndpoint", {"NetworkID": "x"}, 400)
    resp = metered.post("Foo.Bar", {})
    assert resp.status_code == 404
    resp = metered.post("Foo.Baz", {})
    assert resp.status_code == 404
    assert calls(metered, ND + "CreateEndpoint", "client_error") == 2
    assert calls(metered, ND + "CreateEndpoint") == 0
    # unknown paths share one label: a scanner cannot blow up the series count
    assert calls(metered, "unknown", "client_error") == 2
    assert sample(metered, "netplugin_requests_total", method="Foo.Bar", outcome="client_error") is None


def test_etcd_down_counts_etcd_errors_and_server_errors(metered, kv):
    net = metered.create_network(SUBNET, vlan=100, name="prod")
    kv.set_down(True)
    metered.fail(IPAM + "RequestAddress", {"PoolID": net.pool_id, "Address": "", "Options": {}}, 503)
    assert calls(metered, IPAM + "RequestAddress", "server_error") == 1
    assert sample(metered, "netplugin_backend_errors_total", backend="etcd") == 1
    assert sample(metered, "netplugin_backend_errors_total", backend="ovsdb") is None


def test_ovsdb_down_counts_ovsdb_errors(metered):
    net = metered.create_network(SUBNET, vlan=100, name="prod")
    address = metered.ok(IPAM + "RequestAddress", {"PoolID": net.pool_id, "Address": "", "Options": {}})["Address"]
    metered.switch.fail_next("add_access_port", ovs_down())
    metered.fail(ND + "CreateEndpoint", metered.endpoint_body(net, metered.new_id("ep"), address), 503)
    assert sample(metered, "netplugin_backend_errors_total", backend="ovsdb") == 1
    assert sample(metered, "netplugin_backend_errors_total", backend="etcd") is None
    assert calls(metered, ND + "CreateEndpoint", "server_error") == 1


def test_pool_and_endpoint_gauges_are_read_from_etcd(metered, np2):
    net1 = metered.create_network(SUBNET, vlan=100, name="prod")
    net2 = np2.create_network(SUBNET, vlan=100, name="prod")
    metered.run_container(net1)
    metered.run_container(net1)
    np2.run_container(net2)
    other = metered.create_network("10.20.0.0/28", vlan=200, name="small")
    metered.run_container(other)
    assert sample(metered, "netplugin_endpoints", network="prod", host="h1") == 2
    assert sample(metered, "netplugin_endpoints", network="prod", host="h2") == 1   # all hosts, from etcd
    assert sample(metered, "netplugin_endpoints", network="small", host="h1") == 1
    assert sample(metered, "netplugin_pool_size", network="prod") == 254
    assert sample(metered, "netplugin_pool_used", network="prod") == 4               # gateway + 3
    assert sample(metered, "netplugin_pool_size", network="small") == 14
    assert sample(metered, "netplugin_pool_used", network="small") == 2


def test_a_deleted_network_leaves_no_series(metered):
    net = metered.create_network(SUBNET, vlan=100, name="prod")
    c = metered.run_container(net)
    assert sample(metered, "netplugin_pool_used", network="prod") == 2
    metered.stop_container(net, c)
    metered.remove_network(net)
    assert sample(metered, "netplugin_pool_used", network="prod") is None
    assert sample(metered, "netplugin_endpoints", network="prod", host="h1") is None


def test_reconciler_totals_of_this_host_only(metered):
    store = metered.store
    store.put_json(store.k_reconcile("h1", "counters"), {
        "runs": 7, "found": {"ip_without_endpoint": 3, "port_without_endpoint": 1}, "released": 3,
        "repaired": 1, "errors": 2, "last_run": 1_700_000_000.5})
    store.put_json(store.k_reconcile("h2", "counters"), {"runs": 99, "found": {"x": 5}, "released": 9,
                                                          "repaired": 9, "errors": 9, "last_run": 1.0})
    assert sample(metered, "netplugin_reconcile_runs_total") == 7
    assert sample(metered, "netplugin_reconcile_findings_total", kind="ip_without_endpoint") == 3
    assert sample(metered, "netplugin_reconcile_findings_total", kind="port_without_endpoint") == 1
    assert sample(metered, "netplugin_reconcile_findings_total", kind="x") is None
    assert sample(metered, "netplugin_reconcile_released_total") == 3
    assert sample(metered, "netplugin_reconcile_repaired_total") == 1
    assert sample(metered, "netplugin_reconcile_errors_total") == 2
    assert sample(metered, "netplugin_reconcile_last_run_timestamp_seconds") == 1_700_000_000.5


def test_never_reconciled_host_reads_zero(metered):
    assert sample(metered, "netplugin_reconcile_runs_total") == 0
    assert sample(metered, "netplugin_reconcile_released_total") == 0
    assert sample(metered, "netplugin_reconcile_last_run_timestamp_seconds") is None


def test_scrape_with_etcd_down_still_answers_and_counts_the_error(metered, kv):
    metered.create_network(SUBNET, vlan=100, name="prod")
    kv.set_down(True)
    text = generate_latest(metered.metrics.registry).decode()
    # The pool figures come from the host's view (memory, kept by watches): they
    # stay while etcd is away; the reconciler's totals, read at scrape, fail and count.
    assert 'netplugin_pool_size{network="prod"} 254.0' in text
    assert sample(metered, "netplugin_backend_errors_total", backend="etcd") >= 1
    kv.set_down(False)
    assert sample(metered, "netplugin_pool_size", network="prod") == 254


def test_every_family_is_exposed_with_its_type(metered):
    families = {f.name: f.type for f in text_string_to_metric_families(
        generate_latest(metered.metrics.registry).decode())}
    assert {name: families.get(name) for name in FAMILIES} == FAMILIES
    unexpected = {name for name in families if name.startswith("netplugin_")
                  and not name.endswith("_created")} - set(FAMILIES)       # _created: prometheus_client's own
    assert not unexpected, f"new metrics: add them to FAMILIES, docs/operations.md and the dashboard: {unexpected}"


def _dashboard_panels(items):
    for p in items:
        yield p
        yield from _dashboard_panels(p.get("panels", []))


def test_dashboard_shows_every_family_and_queries_only_real_ones(metered):
    """The unit twin of the e2e dashboard test: every family is on some panel,
    and every name a panel queries is one the daemon exposes."""
    dashboard = json.loads(DASHBOARD.read_text())
    queried: dict[str, list[str]] = {}
    for p in _dashboard_panels(dashboard["panels"]):
        for t in p.get("targets", []):
            for name in re.findall(r"\bnetplugin_[a-zA-Z0-9_]+", t.get("expr", "")):
                queried.setdefault(name, []).append(p["title"])
    exposed = {f.name: f.type for f in metered.metrics.registry.collect()}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}

    def family_of(name: str) -> str | None:
        for family, kind in exposed.items():
            if any(name == family + sfx for sfx in suffixes.get(kind, ("",))):
                return family
        return None
    unknown = {n: t for n, t in queried.items() if family_of(n) is None}
    assert not unknown, f"panels query metrics the daemon does not expose: {unknown}"
    assert set(exposed) >= set(FAMILIES)

    def shown(family: str) -> bool:
        return any(family_of(n) == family for n in queried)
    assert not [f for f in FAMILIES if not shown(f)], "families with no panel"
    assert not [p["title"] for p in _dashboard_panels(dashboard["panels"]) if p["type"] == "text"
                and "backup" in p["title"].lower()], "the backup text placeholder is still there"


def test_rate_limit_metrics_start_at_zero(metered):
    assert sample(metered, "netplugin_rate_limits_applied_total") == 0
    assert sample(metered, "netplugin_rate_limited_ports") == 0
    assert sample(metered, "netplugin_start_time_seconds") == pytest.approx(time.time(), abs=60)


# -- netctl status ---------------------------------------------------------------------------------

@pytest.fixture
def netctl(monkeypatch, capsys, kv, tmp_path):
    return netctl_runner(monkeypatch, capsys, kv, str(tmp_path / "netplugin.sock"))


def ok(result: Result) -> Result:
    assert result.code == 0 and result.err == "", result
    return result


def fields(lines: list[str]) -> list[tuple[str, str]]:
    """The 'Key  value' lines before the first blank line; continuation lines have key ''."""
    out = []
    for line in lines:
        if not line.strip():
            break
        key, value = line[:12].strip(), line[12:].strip()
        out.append((key, value))
    return out


def table(lines: list[str]) -> list[list[str]]:
    start = lines.index("") + 1
    return [re.split(r"\s{2,}", line.strip()) for line in lines[start:]]


def register(kv, host: str, alive: bool = True, last_seen: float | None = None) -> None:
    store = Store(kv)
    lease = kv.grant_lease(15)
    store.register_host(Host(host=host, bridge="np0", datapath_type="netdev", version="0.1.0",
                             last_seen=last_seen or time.time()), lease)
    if not alive:
        kv.revoke_lease(lease)          # hosts/<host> goes with the lease, hostinfo/<host> stays


def put_report(kv, host: str, started: float, findings: int = 0, released: int = 0, errors: int = 0,
               status: str = "done", dry_run: bool = False) -> None:
    Store(kv).put_json(Store(kv).k_reconcile(host, "last"), {
        "host": host, "started": started, "status": status, "dry_run": dry_run, "grace": 60,
        "findings": [{"kind": "ip_without_endpoint", "id": str(i), "detail": "", "action": "release",
                      "done": True, "error": ""} for i in range(findings)],
        "released": released, "repaired": 0, "errors": errors})


def test_status_of_an_empty_cluster(netctl):
    r = ok(netctl("status"))
    assert r.lines == [
        "Cluster      /netplugin/v1 at http://127.0.0.1:2379",
        "Hosts        none registered (no daemon has reached etcd yet)",
        "Endpoints    0",
        "Bad records  none",
        "Reconcile    never run on any host",
        "Backup jobs  none",
        "",
        "No networks: create one with 'netctl network create' or 'docker network create -d netplugin'.",
    ]


def test_status_shows_hosts_endpoints_and_pool_fill(netctl, kv, np, np2):
    register(kv, "h1")
    register(kv, "h2")
    register(kv, "h3", alive=False, last_seen=time.time() - 7300)
    ok(netctl("network", "create", "small", "--subnet", "10.20.0.0/28", "--vlan", "200"))
    # A range: counted over .8-.14 only; its gateway (.1) sits outside it.
    ok(netctl("network", "create", "ranged", "--subnet", "10.30.0.0/28", "--vlan", "300",
              "--ip-range", "10.30.0.8/29"))
    net1 = np.create_network(SUBNET, vlan=100, name="prod")
    net2 = np2.create_network(SUBNET, vlan=100, name="prod")
    np.run_container(net1)
    np.run_container(net1)
    np2.run_container(net2)
    r = ok(netctl("status"))
    f = dict(fields(r.lines))
    assert f["Hosts"] == "2 alive, 1 dead: h3 (last seen 2h ago)"
    assert f["Endpoints"] == "3 on 2 hosts"
    assert f["Backup jobs"] == "none"
    assert table(r.lines) == [
        ["NETWORK", "SUBNET", "VLAN", "ENDPOINTS", "USED", "SIZE", "FILL"],
        ["prod", SUBNET, "100", "3", "4", "254", "1.6%"],
        ["ranged", "10.30.0.0/28", "300", "0", "0", "7", "0.0%"],
        ["small", "10.20.0.0/28", "200", "0", "1", "14", "7.1%"],
    ]


def test_status_fits_one_screen_with_many_dead_hosts(netctl, kv):
    for i in range(8):
        register(kv, f"dead{i}", alive=False, last_seen=time.time() - 120)
    register(kv, "live")
    line = dict(fields(ok(netctl("status")).lines))["Hosts"]
    assert line.startswith("1 alive, 8 dead: dead0 (last seen 2m ago), dead1 (last seen 2m ago)")
    assert line.endswith("dead4 (last seen 2m ago) and 3 more")


def test_status_reconcile_lines(netctl, kv):
    now = time.time()
    for h in ("h1", "h2", "h3", "h4"):
        register(kv, h)
    put_report(kv, "h1", now - 125, findings=2, released=1)
    put_report(kv, "h2", now - 3 * 3600, findings=1, errors=1)
    put_report(kv, "h4", now - 600, dry_run=True)
    r = ok(netctl("status"))
    f = fields(r.lines)
    i = [k for k, _ in f].index("Reconcile")
    assert f[i] == ("Reconcile", "last run 2m ago on h1: done, 2 findings, 1 released, 0 repaired, 0 errors")
    assert f[i + 1:i + 4] == [("", "never run on h3"), ("", "no run for over 15 min on h2"),
                              ("", "errors in the last run on h2")]
    assert f[i + 4][0] == "Backup jobs"


def test_status_reconcile_of_a_dry_run_says_so(netctl, kv):
    register(kv, "h1")
    put_report(kv, "h1", time.time() - 5, findings=1, dry_run=True)
    rec = dict(fields(ok(netctl("status")).lines))["Reconcile"]
    assert rec == "last run 5s ago on h1: done (dry run), 1 finding, 0 released, 0 repaired, 0 errors"


def test_status_json(netctl, kv, np):
    register(kv, "h1")
    register(kv, "h9", alive=False, last_seen=1000.0)
    put_report(kv, "h1", time.time() - 30, findings=1, released=1)
    net = np.create_network(SUBNET, vlan=100, name="prod")
    np.run_container(net)
    info = json.loads(ok(netctl("status", "--json")).out)
    assert info["etcd"] == {"endpoints": ["http://127.0.0.1:2379"], "prefix": "/netplugin/v1"}
    assert info["hosts"]["alive"] == 1 and info["hosts"]["dead"] == 1
    h1, h9 = info["hosts"]["list"]
    assert h1["host"] == "h1" and h1["alive"] and h1["endpoints"] == 1
    assert h1["last_reconcile"]["findings"] == 1 and h1["last_reconcile"]["released"] == 1
    assert h9 == {"host": "h9", "alive": False, "last_seen": 1000.0, "endpoints": 0, "version": "0.1.0",
                  "last_reconcile": None}
    assert info["endpoints"] == {"total": 1, "hosts": 1}
    [prod] = info["networks"]
    assert {k: prod[k] for k in ("name", "subnet", "vlan", "endpoints", "used", "size", "fill", "problem")} == {
        "name": "prod", "subnet": SUBNET, "vlan": 100, "endpoints": 1, "used": 2, "size": 254, "fill": 0.8,
        "problem": None}
    assert info["reconcile"]["last"]["host"] == "h1"
    assert info["reconcile"]["never"] == [] and info["reconcile"]["stale"] == []
    assert info["backup_jobs"] == {"total": 0, "states": {s: 0 for s in info["backup_jobs"]["states"]},
                                   "backup_bytes": 0, "agents": [], "orphaned": [], "targets": []}
    assert set(info["backup_jobs"]["states"]) == {"queued", "starting", "running", "verifying", "succeeded",
                                                  "failed", "expired", "cancelled"}
    assert json.loads(ok(netctl("--json", "status")).out)["networks"] == info["networks"]


def test_status_with_etcd_down_is_exit_1(netctl, kv):
    kv.set_down(True)
    r = netctl("status")
    assert r.code == 1 and r.out == ""
    assert r.err.startswith("netctl: store unavailable")


def test_status_is_listed_in_help(netctl):
    r = netctl("--help")
    assert r.code == 0
    assert re.search(r"^\s+status\s+the cluster on one screen", r.out, re.MULTILINE), r.out


def test_status_counts_backup_jobs_in_the_order_of_their_life(netctl, kv):
    bs = BackupStore(kv)                                   # netctl's default prefix, /netplugin/v1
    lease = kv.grant_lease(15)
    bs.register_agent("h1", {"pid": 1}, lease)
    put_job(bs, "succeeded", target="shop-db", size=4096, created=1000.0)
    put_job(bs, "succeeded", target="shop-db", size=1024, created=2000.0)
    put_job(bs, "failed", target="crm-db", created=3000.0)
    put_job(bs, "running", target="erp-db", host="h1")
    put_job(bs, "queued", target="hr-db", host="h7")      # no agent on h7
    put_job(bs, "succeeded", target="shop-db", kind="restore")
    r = ok(netctl("status"))
    f = fields(r.lines)
    i = [k for k, _ in f].index("Backup jobs")
    assert f[i:] == [("Backup jobs", "1 queued, 1 running, 3 succeeded, 1 failed"),
                     ("", "no live agent for 1 job: " + bs.list_jobs()[4].id + " queued on h7"),
                     ("", "last backup job did not succeed: crm-db (failed)")]
    info = json.loads(ok(netctl("status", "--json")).out)["backup_jobs"]
    assert info["total"] == 6 and info["backup_bytes"] == 5120
    assert {s: n for s, n in info["states"].items() if n} == {"queued": 1, "running": 1, "succeeded": 3, "failed": 1}
    assert [j["host"] for j in info["orphaned"]] == ["h7"]
    assert info["agents"] == ["h1"]
    shop = next(t for t in info["targets"] if t["target"] == "shop-db")
    assert shop["last_job"]["succeeded"] is True and shop["last_job"]["state"] == "succeeded"
    kv.revoke_lease(lease)                                  # the agent of h1 dies: its running job is orphaned
    lines = [v for k, v in fields(ok(netctl("status")).lines)]
    assert "no live agent for 2 jobs: " in "\n".join(lines)


def test_status_backup_jobs_with_many_orphans_fits_one_line(netctl, kv):
    bs = BackupStore(kv)
    for n in range(7):
        put_job(bs, "queued", target=f"db{n}", host="gone")
    f = dict(fields(ok(netctl("status")).lines))
    assert f["Backup jobs"] == "7 queued"
    orphans = [v for k, v in fields(ok(netctl("status")).lines) if v.startswith("no live agent")]
    assert len(orphans) == 1 and orphans[0].startswith("no live agent for 7 jobs: ")
    assert orphans[0].endswith(" and 2 more")


def test_the_network_daemon_and_netctl_status_do_not_import_drctl():
    """drctl's figures reach the exporter and 'netctl status' through the wiring
    point (wiring.make_metrics, cli/main.py's context), not through imports."""
    import subprocess
    import sys
    code = ("import sys, netplugin.daemon, netplugin.metrics, netplugin.wiring, netplugin.cli.status_cmds; "
            "print(sorted(m for m in sys.modules if m.startswith('netplugin.backup')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
