"""The reconciler cannot act on a host it misreads (host_settings.py,
Reconciler.check_host), against the real daemon, dockerd, OVS and etcd with
containers running: run without the daemon's --bridge it adopts the
daemon's settings and finds nothing; with a wrong bridge, a settings file
that disagrees, or a bridge that does not exist it refuses. The containers
answer ping throughout, and nothing is released or repaired."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from .conftest import ETCD, Plugin, ip_of, new_network, pings, start

pytestmark = pytest.mark.e2e


def reconcile(plugin: Plugin, *args: str, drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """netplugin-reconcile with the daemon's settings, less the variables in drop."""
    env = {k: v for k, v in plugin.env.items() if k not in drop}
    return subprocess.run([sys.executable, "-m", "netplugin.reconcile_cli", "--json", "--grace", "0", *args],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def state(plugin: Plugin) -> tuple:
    """What a release or a repair would change: records, addresses, ports, veths."""
    keys = [k for k in plugin.etcd_keys() if "/reconcile/" not in k and "/locks/" not in k
            and "/hostinfo/" not in k and "/hosts/" not in k]
    return sorted(keys), sorted(plugin.ovs_ports()), sorted(plugin.veths())


class Pinger:
    """Pings between two containers from a thread until stopped; every failure is kept."""

    def __init__(self, container: str, address: str):
        self.container, self.address = container, address
        self.rounds, self.failed = 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            self.rounds += 1
            if not pings(self.container, self.address, count=2):
                self.failed += 1

    def __enter__(self) -> Pinger:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)


def test_a_reconciler_that_misreads_the_host_refuses_and_live_containers_keep_talking(clean, tmp_path):
    new_network("e2e-misread", "10.84.0.0/24", 184)
    start("misread1", "e2e-misread")
    start("misread2", "e2e-misread")
    peer = ip_of("misread2", "e2e-misread")
    assert pings("misread1", peer)
    before = state(clean)
    assert len(before[1]) == 2 and set(before[1]) <= set(before[2])      # two ports, with their veths

    ghost = "e2e-ghost-" + clean.host_id[-6:]
    reg = json.loads(subprocess.run(["etcdctl", f"--endpoints={ETCD}", "get", "--print-value-only",
                                     f"{clean.prefix}/hostinfo/{clean.host_id}"], capture_output=True,
                                    text=True, check=True, env={"ETCDCTL_API": "3"}).stdout)
    assert reg["bridge"] == clean.bridge and reg["datapath_type"] == "netdev"
    settings = tmp_path / "wrong.toml"
    settings.write_text('bridge = "npwrong0"\nmtu = 9000\n')

    with Pinger("misread1", peer) as pinger:
        # The case: run by hand without the daemon's --bridge and datapath type.
        adopted = reconcile(clean, drop=("NETPLUGIN_BRIDGE", "NETPLUGIN_DATAPATH_TYPE"))
        assert adopted.returncode == 0, adopted.stderr
        report = json.loads(adopted.stdout)
        assert report["status"] == "done" and report["findings"] == [], report

        wrong = reconcile(clean, "--bridge", "npwrong0")
        assert wrong.returncode == 1 and wrong.stdout == "", wrong.stdout
        assert "refused" in wrong.stderr and "bridge 'npwrong0'" in wrong.stderr and clean.bridge in wrong.stderr

        disagrees = reconcile(clean, "--config", str(settings),
                              drop=("NETPLUGIN_BRIDGE", "NETPLUGIN_DATAPATH_TYPE", "NETPLUGIN_CONFIG"))
        assert disagrees.returncode == 1, disagrees.stdout
        assert "refused" in disagrees.stderr and "npwrong0" in disagrees.stderr
        assert "mtu 9000 (the daemon's is 1500)" in disagrees.stderr and "nothing was changed" in disagrees.stderr

        # A host whose registration names a bridge this machine does not have.
        ghost_reg = dict(reg, host=ghost, bridge="npghost0")
        subprocess.run(["etcdctl", f"--endpoints={ETCD}", "put", f"{clean.prefix}/hostinfo/{ghost}",
                        json.dumps(ghost_reg)], check=True, capture_output=True, env={"ETCDCTL_API": "3"})
        missing = reconcile(clean, "--host-id", ghost, drop=("NETPLUGIN_BRIDGE",))
        assert missing.returncode == 1, missing.stdout
        assert "bridge npghost0 does not exist" in missing.stderr and "nothing was changed" in missing.stderr

        unknown = reconcile(clean, "--host-id", "e2e-never-registered")
        assert unknown.returncode == 1 and "no netplugin daemon has registered" in unknown.stderr

    assert pinger.rounds >= 2 and pinger.failed == 0, f"{pinger.failed} of {pinger.rounds} ping rounds failed"
    assert pings("misread1", peer) and pings("misread2", ip_of("misread1", "e2e-misread"))
    assert state(clean) == before, "a refused or empty reconcile changed a record, a port or a veth"
