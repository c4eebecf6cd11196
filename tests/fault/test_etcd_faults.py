"""etcd faults under real `docker run`.

A 3-member etcd cluster on 127.0.0.1 (started here, with the helpers of
tests/integration/test_etcd_cluster.py) and one netplugin daemon given all
three members, serving Docker as driver and IPAM driver "npfa". Three
workers run `docker run --rm` of busybox on a netplugin network back to back
(each one a whole lifecycle: RequestAddress, CreateEndpoint, Join, Leave,
DeleteEndpoint, ReleaseAddress) while:

1. the member the daemon talks to (first in its list, made the leader
   beforehand) is killed with SIGKILL, then restarted on its data directory
   6 s later: no `docker run` may fail, and afterwards nothing is left (no
   endpoint record, no address, no OVS port, no veth);
2. all three members are killed: `docker run` fails within 5 s with a message
   saying "store unavailable", and nothing is half-created (no OVS port, veth,
   container or Docker endpoint; and, with the members started again, no etcd
   key added, changed or deleted under the daemon's prefix);
3. the members are started again: `docker run` works again without touching
   the daemon (same process), and the time until it does is measured.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time

import pytest

from tests.harness.etcd import Cluster, etcdctl

from .conftest import IMAGE, FaultDaemon, docker, links

SUBNET = "10.250.202.0/24"
VLAN = 3502
LABEL = "netplugin.fault=etcd"


def docker_run(network: str, timeout: float = 60) -> tuple[int, str, float]:
    """One short container lifecycle; (exit code, stderr, seconds)."""
    t0 = time.monotonic()
    proc = docker("run", "--rm", "--label", LABEL, "--network", network, IMAGE, "true", check=False,
                  timeout=timeout)
    return proc.returncode, proc.stderr.strip(), time.monotonic() - t0


class Load:
    """Workers running `docker run --rm` back to back; records (start, end, rc, stderr)."""

    def __init__(self, network: str, workers: int = 3):
        self.network = network
        self.workers = workers
        self.results: list[tuple[float, float, int, str]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def _run(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            rc, err, _ = docker_run(self.network)
            with self.lock:
                self.results.append((t0, time.monotonic(), rc, err))

    def __enter__(self):
        for th in self.threads:
            th.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for th in self.threads:
            th.join(90)


NOTHING = {"ovs_ports": [], "veths": [], "docker_endpoints": [], "containers": []}


def my_veths(d: FaultDaemon) -> list[str]:
    """Veths of any endpoint this daemon was ever asked to create (their ids are in
    its log; the veth ends are np/nc + the first 11 hex digits), still present.
    Veths of other daemons on the machine do not count."""
    ids = set(re.findall(r"CreateEndpoint \S+ EndpointID=([0-9a-f]{12})", d.log.read_text(errors="replace")))
    present = set(links())
    return sorted(n for i in ids for n in ("np" + i[:11], "nc" + i[:11]) if n in present)


def leftovers(d: FaultDaemon, network: str) -> dict:
    """What a container lifecycle may leave: OVS ports, veths, Docker endpoints, containers."""
    inspect = json.loads(docker("network", "inspect", network).stdout)[0]
    return {
        "ovs_ports": d.ovs_ports(),
        "veths": my_veths(d),
        "docker_endpoints": sorted(inspect.get("Containers") or {}),
        "containers": docker("ps", "-aq", "--filter", f"label={LABEL}").stdout.split(),
    }


def etcd_keys(endpoints: str, prefix: str) -> list[str]:
    out = etcdctl(endpoints, "get", "--prefix", "--keys-only", prefix + "/").stdout
    return sorted(k for k in out.splitlines() if k.strip() and "/hostinfo/" not in k and "/hosts/" not in k)


def etcd_state(endpoints: str, prefix: str) -> dict[str, int]:
    """Every key under prefix with its mod revision, the host registry aside (the
    heartbeat rewrites it): a key added, changed or deleted shows as a difference."""
    out = json.loads(etcdctl(endpoints, "get", "--prefix", prefix + "/", "-w", "json").stdout)
    state = {base64.b64decode(kv["key"]).decode(): int(kv["mod_revision"]) for kv in out.get("kvs", [])}
    return {k: rev for k, rev in state.items() if "/hostinfo/" not in k and "/hosts/" not in k}


def start_members(rig: Rig) -> float:
    """Start every member on its data directory; the seconds until all are healthy."""
    t0 = time.monotonic()
    for m in rig.cluster.members:
        m.start(rig.spec, rig.cluster.token)
    while etcdctl(rig.eps, "endpoint", "health", check=False).returncode != 0:
        assert time.monotonic() - t0 < 30, f"the members did not come back in 30 s:\n{rig.cluster.logs()}"
        time.sleep(0.3)
    return time.monotonic() - t0


class Rig:
    def __init__(self, cluster: Cluster, d: FaultDaemon, network: str):
        self.cluster, self.d, self.network = cluster, d, network
        self.eps = cluster.endpoints
        self.spec = ",".join(f"{m.name}={m.peer}" for m in cluster.members)
        self.baseline_keys: list[str] = []
        self.keys_before_outage: list[str] | None = None
        self.pid = 0


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("etcd-faults")
    cluster = Cluster(tmp / "etcd")
    d = FaultDaemon(tmp, "npfa", etcd=cluster.endpoints)
    network = "npfa-etcd-" + secrets.token_hex(3)
    try:
        cluster.start()
        d.start()
        docker("network", "create", "-d", "npfa", "--ipam-driver", "npfa", "--subnet", SUBNET, "-o", f"vlan={VLAN}",
               network)
        r = Rig(cluster, d, network)
        rc, err, _ = docker_run(network)
        assert rc == 0, f"docker run with a healthy cluster failed: {err}"
        r.baseline_keys = etcd_keys(r.eps, d.prefix)
        r.pid = d.proc.pid
        assert leftovers(d, network) == NOTHING
        yield r
    except BaseException:
        d.dump_threads()                 # what a daemon that stopped answering waits on
        print(cluster.logs())
        print(f"--- {d.log}\n{d.tail(30000)}")
        raise
    finally:
        # Each step on its own: a Docker stuck behind a hung daemon must not leave
        # the daemon and the cluster running for the rest of the session.
        try:
            ids = docker("ps", "-aq", "--filter", f"label={LABEL}", check=False).stdout.split()
            if ids:
                docker("rm", "-f", *ids, check=False)
            docker("network", "rm", network, check=False)
        finally:
            d.stop()
            cluster.stop()
            d.remove_bridge()


def test_member_killed_and_restarted_under_load(rig):
    """The member the daemon talks to (and the leader) dies under load and comes back: no docker run fails."""
    cluster, d, network = rig.cluster, rig.d, rig.network
    victim = cluster.members[0]          # first in the daemon's list: the one it talks to
    cluster.make_leader(victim)
    with Load(network) as load:
        time.sleep(4)
        killed_at = time.monotonic()
        victim.kill()
        time.sleep(6)
        restarted_at = time.monotonic()
        victim.start(rig.spec, cluster.token)
        time.sleep(6)
    results = load.results
    during = [r for r in results if r[1] >= killed_at and r[0] <= restarted_at + 6]
    failed = [r for r in results if r[2] != 0]
    took = sorted(r[1] - r[0] for r in results)
    print(f"\nmember loss: {len(results)} docker runs ({len(during)} overlapping the kill or the restart), "
          f"{len(failed)} failed (at {', '.join(f'{r[0] - killed_at:+.1f}' for r in failed) or '-'} s from the "
          f"kill); slowest {took[-1]:.2f} s, median {took[len(took) // 2]:.2f} s")
    # What the runs left, failed ones included (a refused call must not have claimed anything).
    # A DeleteEndpoint that etcd refused during the election is finished once etcd answers,
    # and the tombstone it writes says so: that is a record of the fault, not a leak.
    extra_keys = sorted(set(etcd_keys(rig.eps, d.prefix)) ^ set(rig.baseline_keys))
    late = [k for k in extra_keys if "/released/" in k and "DeleteEndpoint finished once etcd answered"
            in json.loads(etcdctl(rig.eps, "get", "--print-value-only", k).stdout or "{}").get("by", "")]
    extra_keys = [k for k in extra_keys if k not in late]
    left = leftovers(d, network)
    print(f"left behind: {extra_keys or 'no etcd key'}, {left if left != NOTHING else 'nothing on the host'}; "
          f"{len(late)} DeleteEndpoint(s) finished after the election, with their tombstones")
    assert len([r for r in results if r[0] < killed_at]) >= 3, "too little load before the kill"
    assert len([r for r in results if r[0] > killed_at]) >= 3, "too little load after the kill"
    assert not failed, (f"{len(failed)} of {len(results)} docker runs failed around the member's loss: "
                        + "; ".join(f"{r[0] - killed_at:+.1f} s: {r[3][:400]}" for r in failed[:5]))
    assert not extra_keys, f"the lifecycles under load left keys behind: {extra_keys}"
    assert left == NOTHING


def test_all_members_down_fails_fast_and_leaves_nothing(rig):
    d, network = rig.d, rig.network
    before = etcd_state(rig.eps, d.prefix)
    rig.keys_before_outage = etcd_keys(rig.eps, d.prefix)
    assert sorted(before) == rig.keys_before_outage and before, "no state to compare with"
    for m in rig.cluster.members:
        m.kill()
    outage = []
    for _ in range(3):
        rc, err, sec = docker_run(network)
        outage.append(sec)
        assert rc != 0, "docker run succeeded with every etcd member down"
        assert "store unavailable" in err, f"the message does not say the store is unavailable: {err}"
        assert sec < 5, f"docker run took {sec:.1f} s to fail with etcd down (limit 5 s): {err}"
    print(f"\nall members down: docker run failed in {', '.join(f'{s:.2f}' for s in outage)} s: {err[:300]}")
    assert leftovers(d, network) == NOTHING
    assert d.answers(), "the daemon stopped answering while etcd was down"
    # Its own etcd state, read back once the members are up again: the refused
    # runs added, changed and deleted nothing (no claim, record or binding).
    took = start_members(rig)
    after = etcd_state(rig.eps, d.prefix)
    changed = {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    print(f"members back in {took:.1f} s; keys under the prefix: {len(before)} before, {len(after)} after")
    assert not changed, f"the refused runs changed etcd (key: (revision before, after)): {changed}"


def test_service_resumes_when_etcd_returns(rig):
    d, network = rig.d, rig.network
    if rig.keys_before_outage is None:
        rig.keys_before_outage = etcd_keys(rig.eps, d.prefix)
    for m in rig.cluster.members:
        m.kill()                         # (the test before started them again to read its state)
    back_at = time.monotonic()
    for m in rig.cluster.members:
        m.start(rig.spec, rig.cluster.token)
    attempts, rc, err = 0, 1, ""
    while time.monotonic() - back_at < 30:
        attempts += 1
        rc, err, _ = docker_run(network)
        if rc == 0:
            break
        time.sleep(0.5)
    resumed = time.monotonic() - back_at
    print(f"\netcd restarted: docker run works again {resumed:.1f} s after the members were started "
          f"({attempts} attempt(s))")
    assert rc == 0, f"docker run still fails 30 s after etcd came back: {err}"
    assert d.proc.poll() is None and d.proc.pid == rig.pid, "the daemon was restarted"
    # Nothing from the failed runs remains: the keys are those of just before the outage.
    assert etcd_keys(rig.eps, d.prefix) == rig.keys_before_outage
    assert leftovers(d, network) == NOTHING
