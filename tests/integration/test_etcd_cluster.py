"""etcd as operators run it: a 3-member cluster on 127.0.0.1, and a member
with TLS and user/password authentication.

* Two real netplugin daemons and netctl are given all three members. The
  member they talk to first, made the leader beforehand, is killed with
  SIGKILL while both daemons allocate addresses as fast as they can:
  allocations keep working (a short window of refusals during the election
  is allowed and measured), no address is given twice, netctl keeps
  answering, and both hosts stay alive in the registry.
* netctl reaches an etcd that demands TLS client certificates and a
  password with --cacert/--cert/--key and --user/--password, and fails with
  exit 1 and a message without them.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from netplugin.unixhttp import call
from tests.harness import daemon as harness
from tests.harness.etcd import Cluster, etcdctl, secure_member
from tests.harness.proc import run

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path, ovs_ready):
    c = Cluster(tmp_path / "etcd")
    try:
        c.start()
        yield c
    finally:
        c.stop()


class Daemon(harness.Daemon):
    """A netplugin daemon on a socket of its own (no Docker involved), with the cluster's endpoints."""

    def __init__(self, tmp: Path, endpoints: str, prefix: str, tag: str):
        self.host_id = f"nptest-{tag}-" + secrets.token_hex(2)
        self.bridge = "nptest" + secrets.token_hex(3)
        socket = str(tmp / f"{tag}.sock")
        super().__init__(socket, tmp / f"{tag}.log", harness.settings_env(
            etcd_endpoints=endpoints, etcd_prefix=prefix, host_id=self.host_id, bridge=self.bridge,
            datapath_type="netdev", socket=socket))
        (tmp / f"xdg-{tag}").mkdir(exist_ok=True)
        self.env["XDG_RUNTIME_DIR"] = str(tmp / f"xdg-{tag}")

    def stop(self, grace: float = 10) -> None:
        super().stop(grace)
        run(["ovs-vsctl", "--timeout=10", "--if-exists", "del-br", self.bridge], check=False)


def netctl(endpoints: str, prefix: str, *args: str, timeout: float = 60,
           **settings: str) -> subprocess.CompletedProcess:
    """netctl with only these settings: the endpoints as a flag, the rest from NETPLUGIN_*."""
    return run([sys.executable, "-m", "netplugin.cli.main", "--etcd-endpoints", endpoints, *args], check=False,
               timeout=timeout, env=harness.settings_env(etcd_prefix=prefix, **settings))


class Allocator:
    """Threads asking one daemon for addresses (RequestAddress, as Docker does) until stopped.
    Records (time of the answer, address or None, error)."""

    def __init__(self, daemon: Daemon, pool_id: str, threads: int = 3):
        self.daemon = daemon
        self.pool_id = pool_id
        self.threads = threads
        self.results: list[tuple[float, str | None, str]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _run(self) -> None:
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                status, reply = call(self.daemon.socket, "IpamDriver.RequestAddress",
                                     {"PoolID": self.pool_id, "Address": "", "Options": {}}, timeout=30)
                ok = status == 200
                result = (t, reply["Address"].split("/")[0] if ok else None, "" if ok else f"{status} {reply}")
            except OSError as exc:
                result = (t, None, f"socket: {exc}")
            # Stamped when the answer came: a call in flight at the kill counts as after it.
            result = (time.monotonic(),) + result[1:]
            with self.lock:
                self.results.append(result)

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]
        for th in self._threads:
            th.start()

    def finish(self) -> None:
        self.stop.set()
        for th in self._threads:
            th.join(60)


SUBNET = "10.234.0.0/18"        # room for the ~4,000-6,000 allocations of an 11 s run


def test_member_killed_mid_run(cluster, tmp_path):
    prefix = "/netplugin/test-cluster-" + secrets.token_hex(4)
    eps = cluster.endpoints
    daemons = [Daemon(tmp_path, eps, prefix, "c1"), Daemon(tmp_path, eps, prefix, "c2")]
    try:
        for d in daemons:
            d.start()
        made = netctl(eps, prefix, "network", "create", "cl", "--subnet", SUBNET, "--vlan", "500")
        assert made.returncode == 0, made.stderr
        pools = []
        for d in daemons:
            status, reply = call(d.socket, "IpamDriver.RequestPool",
                                 {"AddressSpace": "netplugin", "Pool": SUBNET, "SubPool": "", "Options": {}})
            assert status == 200, reply
            pools.append(reply["PoolID"])

        # The first member of everyone's list leads: killing it costs both the
        # clients' connection and an election.
        victim = cluster.members[0]
        cluster.make_leader(victim)
        allocators = [Allocator(d, p) for d, p in zip(daemons, pools)]
        for a in allocators:
            a.start()
        time.sleep(3)
        killed_at = time.monotonic()
        victim.kill()

        # netctl with all three endpoints keeps answering while the member is down.
        netctl_times = []
        for args in (["network", "ls", "--json"], ["ipam", "show", "cl", "--json"], ["host", "ls", "--json"]):
            t0 = time.monotonic()
            proc = netctl(eps, prefix, *args)
            netctl_times.append(time.monotonic() - t0)
            assert proc.returncode == 0, f"netctl {' '.join(args)} with one member down: {proc.stderr}"
            json.loads(proc.stdout)
        time.sleep(max(0.0, killed_at + 8 - time.monotonic()))
        for a in allocators:
            a.finish()
        ended = time.monotonic()

        results = [r for a in allocators for r in a.results]
        before = [r for r in results if r[0] < killed_at]
        after = [r for r in results if r[0] >= killed_at]
        failed_after = [r for r in after if r[1] is None]
        ok_after = [r for r in after if r[1] is not None]
        assert before and all(r[1] for r in before), [r[2] for r in before if not r[1]][:3]
        assert ok_after, f"no allocation succeeded after the kill: {[r[2] for r in failed_after][:3]}"
        # Refusals only in the first moments (reconnect + election); the rest of the run all succeeds.
        late_failures = [r for r in failed_after if r[0] > killed_at + 5]
        assert not late_failures, f"{len(late_failures)} allocations still failing 5 s after the kill: " \
                                  f"{late_failures[0][2]}"
        # Each daemon on its own kept working.
        for a in allocators:
            assert any(r[1] and r[0] > killed_at + 3 for r in a.results), f"{a.daemon.host_id} stopped allocating"

        addresses = [r[1] for r in results if r[1]]
        dupes = sorted({x for x in addresses if addresses.count(x) > 1})
        assert not dupes, f"addresses given twice: {dupes}"
        usage = json.loads(netctl(eps, prefix, "ipam", "show", "cl", "--json").stdout)
        # A call that failed may still have claimed its address (the transaction
        # reached etcd, the answer did not): that shows as used beyond the successes.
        leaked = usage["used"] - 1 - len(addresses)
        assert 0 <= leaked <= len(failed_after), (usage, len(addresses), len(failed_after))

        hosts = {h["host"]: h for h in json.loads(netctl(eps, prefix, "host", "ls", "--json").stdout)}
        for d in daemons:
            assert hosts[d.host_id]["alive"], f"{d.host_id} fell out of the registry"
        assert max(netctl_times) < 10, netctl_times
        first_ok = min((r[0] for r in ok_after), default=ended) - killed_at
        last_refusal = max((r[0] for r in failed_after), default=killed_at) - killed_at
        print(f"\n{len(before)} allocations before the kill, {len(ok_after)} after, {len(failed_after)} refused "
              f"after it (the last {last_refusal:.2f} s after the kill); first success {first_ok:.2f} s after it; "
              f"netctl {max(netctl_times):.2f} s at most; {leaked} address(es) claimed by refused calls")
    except AssertionError:
        print(cluster.logs())
        for d in daemons:
            print(f"--- {d.log}\n{d.tail()}")
        raise
    finally:
        for d in daemons:
            d.stop()
        live = cluster.live_endpoints()
        if live:
            etcdctl(live, "del", "--prefix", prefix + "/", check=False)


# -- TLS and authentication ------------------------------------------------------------

@pytest.fixture
def secure_etcd(tmp_path):
    """One etcd member on https that demands a client certificate, with
    authentication on: user 'np' (password 'np-secret') may read and write /netplugin/."""
    with secure_member(tmp_path) as s:
        yield s


def test_netctl_and_daemon_with_tls_and_password(secure_etcd, tmp_path, ovs_ready):
    s = secure_etcd
    prefix = "/netplugin/test-tls-" + secrets.token_hex(4)
    tls = ["--cacert", str(s["ca"]), "--cert", str(s["cert"]), "--key", str(s["key"])]
    auth = ["--user", "np", "--password", "np-secret"]
    created = netctl(s["url"], prefix, *tls, *auth, "network", "create", "sec", "--subnet", "10.235.0.0/24",
                     "--vlan", "501", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["vlan"] == 501
    # The password from the environment, as the help advises.
    listed = netctl(s["url"], prefix, *tls, "--user", "np", "network", "ls", "--json", etcd_password="np-secret")
    assert listed.returncode == 0, listed.stderr
    assert [n["name"] for n in json.loads(listed.stdout)] == ["sec"]

    # Refusals: exit 1, a message, no traceback, bounded.
    cases = {
        "wrong password": [*tls, "--user", "np", "--password", "wrong"],
        "no password": tls,
        "no client certificate": ["--cacert", str(s["ca"]), *auth],
        "no CA (server not trusted)": ["--cert", str(s["cert"]), "--key", str(s["key"]), *auth],
    }
    for what, args in cases.items():
        t0 = time.monotonic()
        proc = netctl(s["url"], prefix, *args, "network", "ls")
        assert proc.returncode == 1, f"{what}: exit {proc.returncode}: {proc.stderr}"
        # (gRPC's own C-core log lines may come first: the message is netctl's line.)
        assert "netctl: " in proc.stderr and "Traceback" not in proc.stderr, f"{what}: {proc.stderr}"
        assert s["url"] in proc.stderr or "auth" in proc.stderr.lower() or "password" in proc.stderr.lower(), \
            f"{what}: the message names neither the endpoint nor the credentials: {proc.stderr}"
        assert time.monotonic() - t0 < 20, f"{what}: took {time.monotonic() - t0:.1f} s"
    plain = netctl(s["url"].replace("https", "http"), prefix, *auth, "network", "ls")
    assert plain.returncode == 1 and "Traceback" not in plain.stderr, plain.stderr
    # Half a key pair is a usage mistake, caught before connecting.
    half = netctl(s["url"], prefix, "--cacert", str(s["ca"]), "--cert", str(s["cert"]), *auth, "network", "ls")
    assert half.returncode in (1, 2) and "etcd_key" in half.stderr, half.stderr

    # The daemon with the same settings, from its environment.
    d = Daemon(tmp_path, s["url"], prefix, "tls")
    d.env.update(NETPLUGIN_ETCD_CACERT=str(s["ca"]), NETPLUGIN_ETCD_CERT=str(s["cert"]),
                 NETPLUGIN_ETCD_KEY=str(s["key"]), NETPLUGIN_ETCD_USER="np", NETPLUGIN_ETCD_PASSWORD="np-secret")
    try:
        d.start()
        status, pool = call(d.socket, "IpamDriver.RequestPool",
                            {"AddressSpace": "netplugin", "Pool": "10.235.0.0/24", "SubPool": "", "Options": {}})
        assert status == 200, pool
        status, addr = call(d.socket, "IpamDriver.RequestAddress",
                            {"PoolID": pool["PoolID"], "Address": "", "Options": {}})
        assert status == 200, addr
        usage = json.loads(netctl(s["url"], prefix, *tls, *auth, "ipam", "show", "sec", "--json").stdout)
        assert usage["used"] == 2
    except AssertionError:
        print(d.tail())
        raise
    finally:
        d.stop()
