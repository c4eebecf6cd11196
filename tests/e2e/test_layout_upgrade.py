"""Layout upgrade (issue 15): live containers made by the release before the
endpoint layout changed (commit 88cf678, endpoints/<id>) keep their addresses
and their connectivity when the current daemon takes over the same socket,
bridge, host id and etcd prefix.

The old daemon is that commit's `netplugin` package (`git archive`), run on
a driver name and socket of this test's own (/run/docker/plugins/<name>.sock,
as the fault ring does), so the e2e ring's daemon on the default socket is
not touched. After the switch: every record sits under
net-endpoints/<network>/<host>/<id> with its locator index/endpoint/<id>,
nothing is left under endpoints/, the addresses are those Docker shows and
the records held, the containers ping each other, a new container gets a
fresh address, and `docker rm -f` of an old container removes its record,
its locator and its address.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ETCD, IMAGE, LABEL, docker, ip_of, pings
from tests.harness import REPO, etcd
from tests.harness.daemon import Daemon, settings_env
from tests.harness.proc import run

pytestmark = pytest.mark.e2e

OLD = "88cf678"          # the last commit with the flat endpoints/<id> layout
PLUGIN_DIR = "/run/docker/plugins"


def export_old(into: Path) -> Path | None:
    """The old release's netplugin package in into/old (git archive | tar -x);
    None in a clone without that commit (a shallow one): the test then files
    the current daemon's records the old way itself (refile_as_old)."""
    known = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{OLD}^{{commit}}"], capture_output=True,
                           timeout=30, check=False)
    if known.returncode != 0:
        print(f"commit {OLD} is not in {REPO} (a shallow clone?): the old layout is made by moving the "
              "current daemon's records back to endpoints/<id>; a full clone runs the old release itself")
        return None
    dest = into / "old"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD, "netplugin"], capture_output=True,
                             timeout=60, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, capture_output=True, timeout=60, check=True)
    assert (dest / "netplugin" / "daemon.py").exists()
    return dest


class Setup:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.name = "npupg" + secrets.token_hex(2)
        self.socket = f"{PLUGIN_DIR}/{self.name}.sock"
        self.host = "upg-" + secrets.token_hex(3)
        self.bridge = "npupg" + secrets.token_hex(2)
        self.prefix = "/netplugin/upgrade-" + secrets.token_hex(4)
        self.env = settings_env(
            base=dict(os.environ, XDG_RUNTIME_DIR=str(tmp)), etcd_endpoints=ETCD, etcd_prefix=self.prefix,
            host_id=self.host, bridge=self.bridge, datapath_type="netdev", socket=self.socket,
            metrics_address="off")
        self.daemon: Daemon | None = None
        self.containers: list[str] = []      # names to remove afterwards

    def start(self, src: Path | None) -> Daemon:
        """A daemon of the tree src (None: this checkout) on the test's socket."""
        env = dict(self.env)
        if src is not None:
            env["PYTHONPATH"] = str(src)
        d = Daemon(self.socket, self.tmp / ("old.log" if src else "new.log"), env, cwd=str(src or REPO))
        assert not d.answers(), f"{self.socket} is already served"
        d.start(within=20)
        which = subprocess.run([sys.executable, "-c", "import netplugin; print(netplugin.__file__)"], env=env,
                               cwd=str(src or REPO), capture_output=True, text=True, timeout=30, check=False)
        assert which.stdout.startswith(str(src or REPO)), f"the daemon imports {which.stdout!r}"
        self.daemon = d
        return d

    def keys(self, sub: str) -> list[str]:
        return etcd.keys(ETCD, f"{self.prefix}/{sub}")

    def value(self, key: str) -> str:
        return etcd.etcdctl(ETCD, "get", "--print-value-only", key).stdout.strip()


@pytest.fixture
def setup(tmp_path) -> Iterator[Setup]:
    docker("image", "inspect", IMAGE)
    s = Setup(tmp_path)
    try:
        yield s
    finally:
        if s.containers:
            docker("rm", "-f", *s.containers, check=False)
        for net in docker("network", "ls", "-q", "--filter", f"driver={s.name}").stdout.split():
            docker("network", "rm", net, check=False)
        if s.daemon is not None:
            s.daemon.stop()
        run(["ovs-vsctl", "--timeout=10", "--if-exists", "del-br", s.bridge], check=False)
        etcd.delete_prefix(ETCD, s.prefix + "/")


def refile_as_old(s: Setup) -> None:
    """Move every endpoint record back where the release before kept it:
    endpoints/<id>, with no locator (the daemon is stopped)."""
    for locator in s.keys("index/endpoint/"):
        eid = locator.rsplit("/", 1)[1]
        where = s.value(locator)
        key = f"{s.prefix}/net-endpoints/{where}/{eid}"
        record = s.value(key)
        etcd.etcdctl(ETCD, "put", f"{s.prefix}/endpoints/{eid}", record)
        etcd.etcdctl(ETCD, "del", key)
        etcd.etcdctl(ETCD, "del", locator)


def endpoint_id(container: str, network: str) -> str:
    out = docker("inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{network}").EndpointID}}}}', container)
    return out.stdout.strip()


def test_upgrade_from_the_flat_layout_keeps_live_containers(setup, tmp_path):
    s = setup
    src = export_old(tmp_path)
    old = s.start(src)
    net = "upgnet-" + secrets.token_hex(2)
    subnet = f"10.{240 + secrets.randbelow(10)}.{secrets.randbelow(250)}.0/24"
    docker("network", "create", "-d", s.name, "--ipam-driver", s.name, "--subnet", subnet,
           "-o", f"vlan={2000 + secrets.randbelow(1000)}", net)
    names = [f"upg-{secrets.token_hex(3)}-{i}" for i in range(3)]
    for name in names:
        s.containers.append(name)
        docker("run", "-d", "--label", LABEL, "--name", name, "--network", net, IMAGE, "sleep", "600")
    ips = {name: ip_of(name, net) for name in names}
    eids = {name: endpoint_id(name, net) for name in names}
    assert len(set(ips.values())) == 3, ips
    if src is None:
        old.stop()
        refile_as_old(s)
    assert sorted(k.rsplit("/", 1)[1] for k in s.keys("endpoints/")) == sorted(eids.values()), \
        "the old release must file each endpoint under endpoints/<id>"
    assert not s.keys("net-endpoints/"), "the old release knows no net-endpoints/"

    old.stop()
    assert not old.alive()
    s.start(None)

    def migrated() -> bool:
        return not s.keys("endpoints/") and len(s.keys("index/endpoint/")) == 3
    deadline = time.monotonic() + 20
    while not migrated() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert migrated(), (f"not moved in 20 s: endpoints/ {s.keys('endpoints/')}, "
                        f"index/endpoint/ {s.keys('index/endpoint/')}\n{s.daemon.tail()}")
    for name in names:
        locator = s.value(f"{s.prefix}/index/endpoint/{eids[name]}")
        network_id, _, host = locator.partition("/")
        assert host == s.host and network_id.startswith("n-"), locator
        record = json.loads(s.value(f"{s.prefix}/net-endpoints/{network_id}/{host}/{eids[name]}"))
        assert record["id"] == eids[name] and record["ip"] == ips[name], record
        assert ip_of(name, net) == ips[name], f"{name} changed its address"
    assert len(s.keys("net-endpoints/")) == 3

    for a in names:
        for b in names:
            if a != b:
                assert pings(a, ips[b]), f"{a} cannot ping {b} ({ips[b]}) after the upgrade"

    fresh = f"upg-{secrets.token_hex(3)}-new"
    s.containers.append(fresh)
    docker("run", "-d", "--label", LABEL, "--name", fresh, "--network", net, IMAGE, "sleep", "600")
    fresh_ip = ip_of(fresh, net)
    assert fresh_ip and fresh_ip not in ips.values(), f"the new container got {fresh_ip!r}, held: {ips}"
    assert pings(fresh, ips[names[0]]), "a new container cannot reach an upgraded one"

    gone = names[0]
    docker("rm", "-f", gone)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and f"{s.prefix}/index/endpoint/{eids[gone]}" in s.keys("index/endpoint/"):
        time.sleep(0.2)
    assert f"{s.prefix}/index/endpoint/{eids[gone]}" not in s.keys("index/endpoint/"), "its locator stayed"
    assert not [k for k in s.keys("net-endpoints/") if k.endswith(eids[gone])], "its record stayed"
    held = [json.loads(v) for v in etcd.etcdctl(ETCD, "get", "--prefix", "--print-value-only",
                                               f"{s.prefix}/ipam/").stdout.splitlines() if v.startswith("{")]
    assert all(a.get("ip") != ips[gone] for a in held), f"{ips[gone]} is still allocated: {held}"
    assert any(a.get("ip") == ips[names[1]] for a in held), "the measure must see addresses that are held"
