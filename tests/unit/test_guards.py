"""Guarded deletes and untrusted records (issue #14, items 3, 4 and 10).

The network delete is one transaction guarded by what it checked: whatever a
rival writes between the check and the delete (a claim, an endpoint, a
binding) makes it fail, and nothing is lost. Records read from etcd are
checked: garbage under every key family is skipped by every loop, logged once
per key, counted, listed by ``netctl status``, and never reaches flow text.
"""

from __future__ import annotations

import json
import logging

import pytest

from netplugin import jsondepth
from netplugin.dataplane.flows import Flows, cookie_for
from netplugin.errors import Conflict, InvalidRequest
from netplugin.kv import Put
from netplugin.logs import escape
from netplugin.model import Allocation, Binding, Endpoint, Network
from netplugin.networks import remove

from .conftest import did
from .netctl_runner import netctl_runner

P = "/netplugin/v1"
NET_ID = "n-0123456789ab"


# -- the guarded network delete ------------------------------------------------------------

class BetweenCheckAndDelete:
    """Runs ``rival`` once, just before the first transaction that deletes the
    network record: the moment after the delete checked and before it writes."""

    def __init__(self, kv, monkeypatch, net_key: str, rival):
        self.real, self.net_key, self.rival, self.fired = kv.txn, net_key, rival, False
        monkeypatch.setattr(kv, "txn", self.txn)

    def txn(self, compares, success, idempotent=False):
        success = list(success)
        if not self.fired and any(getattr(op, "key", None) == self.net_key and type(op).__name__ == "Delete"
                                  for op in success):
            self.fired = True
            self.rival()
        return self.real(compares, success, idempotent)


def make_network(store) -> Network:
    net = Network(id=NET_ID, name="prod", subnet="10.20.0.0/24", gateway="10.20.0.1", vlan=120)
    store.create_network(net, [Allocation("10.20.0.1", "gateway", "h1", network=NET_ID)])
    return net


def test_a_claim_between_check_and_delete_makes_the_delete_fail(np, monkeypatch):
    store = np.store
    net = make_network(store)
    rev = store.network_revision(net.id)
    claim = Allocation("10.20.0.7", "endpoint", "h2", network=net.id)
    race = BetweenCheckAndDelete(np.kv, monkeypatch, store.k_network(net.id),
                                 lambda: store.claim_address(net.subnet, 7, claim, (net.id, rev)))
    with pytest.raises(Conflict, match=r"network prod still has 1 address\(es\) in use: 10\.20\.0\.7 "
                                       r"\(a container being created on host h2"):
        remove(store, "prod")
    assert race.fired
    assert store.get_network(net.id) is not None
    assert store.get_allocation(net.subnet, 7)[0].host == "h2"


def test_an_endpoint_between_check_and_delete_makes_the_delete_fail(np, monkeypatch):
    store = np.store
    net = make_network(store)
    rev = store.network_revision(net.id)
    eid = did("racer")
    ep = Endpoint(id=eid, network=net.id, docker_network=did("dn"), host="h2", ip="10.20.0.9", prefixlen=24,
                  mac="02:4e:0a:14:00:09", port="np" + eid[:11], peer="nc" + eid[:11], vlan=120)

    def rival():
        alloc = Allocation(ep.ip, "endpoint", "h2", network=net.id)
        assert store.claim_address(net.subnet, 9, alloc, (net.id, rev))
        _, alloc_rev = store.get_allocation(net.subnet, 9)
        alloc.endpoint = ep.id
        assert store.create_endpoint(ep, net.subnet, 9, alloc_rev, alloc)
    race = BetweenCheckAndDelete(np.kv, monkeypatch, store.k_network(net.id), rival)
    with pytest.raises(Conflict, match=r"network prod still has 1 endpoint\(s\) on host\(s\) h2"):
        remove(store, "prod")
    assert race.fired
    assert store.get_network(net.id) is not None and store.get_endpoint(eid) is not None


def test_a_binding_between_check_and_delete_keeps_a_docker_network(np, monkeypatch):
    store = np.store
    net = make_network(store)
    race = BetweenCheckAndDelete(np.kv, monkeypatch, store.k_network(net.id), lambda: store.put_binding(
        Binding(did("dn2"), net.id, "h2", pool=net.subnet)))
    with pytest.raises(Conflict, match=r"still used by Docker networks on host\(s\) h2"):
        store.delete_network(net, unbound=True)
    assert race.fired and store.get_network(net.id) is not None


def test_a_binding_to_a_deleted_network_is_refused(np):
    net = make_network(np.store)
    remove(np.store, "prod")
    with pytest.raises(Exception, match="was deleted at the same moment"):
        np.store.put_binding(Binding(did("dn3"), net.id, "h1", pool=net.subnet))
    assert np.store.list_bindings() == []


def test_an_unraced_delete_leaves_nothing_of_the_network(np):
    net = make_network(np.store)
    remove(np.store, "prod")
    left = [k for k in np.kv.keys(f"{P}/") if not k.endswith("/meta/networks")]
    assert left == [], left
    assert np.store.get_network(net.id) is None


def test_force_drops_endpoints_in_the_same_transaction(np):
    store = np.store
    net = make_network(store)
    eid = did("forced")
    ep = Endpoint(id=eid, network=net.id, docker_network=did("dn"), host="h2", ip="10.20.0.9", prefixlen=24,
                  mac="02:4e:0a:14:00:09", port="np" + eid[:11], peer="nc" + eid[:11], vlan=120)
    alloc = Allocation(ep.ip, "endpoint", "h2", endpoint=eid, network=net.id)
    np.kv.txn([], [Put(store.k_legacy_endpoint(eid), ep.to_json()), Put(store.k_alloc(net.subnet, 9), alloc.to_json())])
    with pytest.raises(Conflict, match="netctl network rm --with-endpoints"):
        remove(store, "prod")
    remove(store, "prod", force=True)
    assert store.get_endpoint(eid) is None and np.kv.keys(f"{P}/ipam/") == []


# -- poisoned records ----------------------------------------------------------------------

BAD_MAC = json.dumps({"id": "e" * 64, "network": NET_ID, "docker_network": "d" * 64, "host": "h1",
                      "ip": "10.30.0.66", "prefixlen": 24, "mac": "02:4e:0a:1e:00:42\nactions=drop",
                      "port": "npeeeeeeeeeee", "peer": "nceeeeeeeeeee", "vlan": 130})
OUT_OF_SUBNET = json.dumps({"ip": "10.99.0.5", "kind": "endpoint", "host": "h1"})
NESTED = "[" * 5000 + "]" * 5000


def poison(store) -> dict[str, str]:
    """Garbage under every key family the store knows; returns key -> kind expected."""
    eid = "f" * 64
    bad = {
        f"{P}/networks/n-badbadbadbad": ("network", '{"id": "n-badbadbadbad"}'),                    # fields missing
        f"{P}/networks/{NET_ID[:-1]}x": ("network", json.dumps({"id": 5, "subnet": [], "gateway": {},
                                                                 "vlan": "x", "name": None})),
        f"{P}/index/name/ghost": ("index", "../../etc"),
        f"{P}/ipam/10.30.0.0-24/00000063": ("allocation", "not json at all"),
        f"{P}/ipam/10.30.0.0-24/zz": ("allocation", json.dumps({"ip": "10.30.0.9", "kind": "endpoint",
                                                                "host": "h1"})),
        f"{P}/endpoints/{eid}": ("endpoint", BAD_MAC),
        f"{P}/endpoints/{'a' * 64}": ("endpoint", NESTED),
        f"{P}/endpoints/{'b' * 64}": ("endpoint", json.dumps({"id": "b" * 64})),
        f"{P}/endpoints/{'9' * 64}": ("endpoint", BAD_MAC.replace("42\\nactions=drop", "43")
                                      .replace("10.30.0.66", "10.30.0.67,x").replace("e" * 64, "9" * 64)),
        f"{P}/bindings/h1/{'c' * 64}": ("binding", json.dumps({"docker_network": "c" * 64, "network": 7,
                                                               "host": "h1\nforged"})),
        f"{P}/profiles/evil": ("profile", json.dumps({"name": "evil", "rate_kbps": -1, "burst_kb": "x"})),
        f"{P}/settings/arp-mode": ("setting", "flood; rm -rf /"),
        f"{P}/hostinfo/h9": ("host", json.dumps({"host": "h9\nroot", "bridge": "br0"})),
        f"{P}/release/h1/{eid}": ("release", json.dumps({"state": "pending", "force": "yes"})),
        f"{P}/release/h1/..": ("release", json.dumps({"state": "pending", "force": True, "by": "x", "time": 1})),
        f"{P}/released/{eid}": ("tombstone", "[1, 2]"),
        f"{P}/reconcile/h1/counters": ("report", NESTED),
    }
    bad[f"{P}/ipam/10.30.0.0-24/00000042"] = ("allocation", OUT_OF_SUBNET)     # a valid claim, of another pool
    store.kv.txn([], [Put(k, v) for k, (_, v) in bad.items()])
    return {k: kind for k, (kind, _) in bad.items()}


def test_every_loop_skips_bad_records_and_status_lists_them(np, caplog):
    net = np.create_network(subnet="10.30.0.0/24", vlan=130, name="shop")
    good = np.run_container(net)
    expected = poison(np.store)
    caplog.set_level(logging.WARNING, "netplugin.records")

    for _ in range(2):                   # two passes: each bad key is logged once, not once per pass
        want = np.arp.desired()
        np.limits.resync(verify=True)
        np.parts.releaser._drain()
        np.store.list_hosts()
        np.store.list_tombstones()
        np.store.list_bindings()
        np.store.list_profiles()
        np.store.list_allocations("10.30.0.0/24")
        np.store.reconcile_counters("h1")
    assert [ep.id for ep in np.store.list_endpoints()] == [good.endpoint]
    assert cookie_for(good.endpoint, 1) in want and len(want) == 1        # the good one's answer, alone
    assert np.store.arp_mode() == "proxy"                                 # a bad setting is the default
    texts = "\n".join(want.values())
    assert "actions=drop" not in texts and "\n" not in texts

    logged = [r.getMessage() for r in caplog.records if r.name == "netplugin.records"]
    assert len(logged) == len(set(logged)), "a bad key was logged twice"
    assert all("\n" not in m for m in logged)
    listed = {key: kind for key, kind, _ in np.store.scan_bad_records()}
    assert listed == expected


def test_metrics_count_bad_records_and_keep_answering(np):
    from prometheus_client import generate_latest

    from netplugin.metrics import Metrics
    np.create_network(subnet="10.30.0.0/24", vlan=130, name="shop")
    poison(np.store)
    metrics = Metrics()
    metrics.watch_store(np.store, np.parts.view, "h1")
    np.store.list_endpoints()
    text = generate_latest(metrics.registry).decode()
    assert 'netplugin_bad_records_current{kind="endpoint"} 4.0' in text
    assert 'netplugin_bad_records_total{kind="endpoint"} 4.0' in text
    assert 'netplugin_pool_size{network="shop"} 254.0' in text


def test_netctl_status_lists_the_bad_keys(np, monkeypatch, capsys, tmp_path):
    expected = poison(np.store)
    run = netctl_runner(monkeypatch, capsys, np.kv, str(tmp_path / "netplugin.sock"))
    result = run("status")
    assert result.code == 0 and result.err == "", result
    assert f"Bad records  {len(expected)}, skipped by every reader" in result.out
    assert f"{P}/endpoints/{'f' * 64}" in result.out and "\\nactions=drop" in result.out
    listed = {r["key"]: r["kind"] for r in json.loads(run("status", "--json").out)["bad_records"]}
    assert listed == expected


# -- flow text, JSON depth, logs -----------------------------------------------------------

@pytest.mark.parametrize("ip,mac,eid", [
    ("10.0.0.5", "02:4e:0a:00:00:05\n", "e" * 64),
    ("10.0.0.5", "02:4E:0A:00:00:05", "e" * 64),
    ("10.0.0.5,actions=drop", "02:4e:0a:00:00:05", "e" * 64),
    ("10.0.0.256", "02:4e:0a:00:00:05", "e" * 64),
    ("10.0.0.5", "02:4e:0a:00:00:05", "0x" + "e" * 62),
    ("10.0.0.5", "02:4e:0a:00:00:05", "e" * 14),
])
def test_flow_text_refuses_anything_not_strictly_valid(ip, mac, eid):
    with pytest.raises(InvalidRequest, match="no flow written"):
        Flows("br0").arp_answer(eid, ip, mac, 100, None)


def test_flow_text_takes_a_valid_endpoint():
    text = Flows("br0").arp_answer("e" * 64, "10.0.0.5", "02:4e:0a:00:00:05", 100, None)
    assert "arp_tpa=10.0.0.5" in text and "mod_dl_src:02:4e:0a:00:00:05" in text


def test_deeply_nested_json_is_a_400_with_a_message(np):
    err = np.fail("NetworkDriver.CreateNetwork", data='{"a":' * 3000 + "1" + "}" * 3000, status=400)
    assert f"nested deeper than {jsondepth.MAX_DEPTH} levels" in err


def test_json_depth_ignores_brackets_in_strings():
    assert jsondepth.depth('{"a": "[[[[{{{{\\"]]"}') == 1
    with pytest.raises(ValueError, match="nested deeper than 3"):
        jsondepth.loads("[[[[1]]]]", limit=3)


def test_logged_request_strings_cannot_forge_a_line(np, caplog):
    caplog.set_level(logging.INFO, "netplugin.api")
    np.fail("IpamDriver.RequestAddress", {"PoolID": "x\nINFO netplugin.api: forged", "Address": "1.2.3.4\r\n"})
    lines = [r.getMessage() for r in caplog.records if r.name == "netplugin.api"]
    assert lines and all("\n" not in m and "\r" not in m for m in lines)
    assert any("PoolID=x\\nINFO netplugin.api: forged" in m for m in lines)


def test_escape_shows_control_characters_and_cuts_long_text():
    assert escape("a\nb\x1b[0m") == "a\\nb\\x1b[0m"
    assert escape("x" * 300, 10) == "x" * 10 + "..."
