"""Per-container rate limits (issue 5), proven on a real daemon.

One netplugin daemon process per module (its own socket, etcd prefix, bridge
'nptestrl' + 2 hex, host id, netdev datapath) is driven through its socket the
way Docker drives it: RequestPool, RequestAddress (gateway), CreateNetwork with
a random 64-hex NetworkID and -o vlan/name, then per container RequestAddress,
CreateEndpoint, Join; then what Docker does after Join: the container end
(SrcName) moves into a network namespace 'nptest-rl-<hex>', is renamed eth0,
gets its address and MAC and comes up. Limits are driven with netctl (python -m
netplugin.cli.main, same NETPLUGIN_* environment): the operator's path.

Rates are measured with iperf3 from the limited namespace (what a container
SENDS is limited) to an unlimited one, read at the receiver. Every iperf3 run is
bounded by a timeout. Everything made here (namespaces, bridges, veths, etcd
prefix, the daemon) is removed at the end of the module, also after a failure.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from netplugin.store import Store
from netplugin.dataplane.flows import cookie_for
from netplugin.kv import Delete, EtcdKV
from tests.harness.daemon import Daemon, settings_env
from tests.harness.etcd import ETCD
from tests.harness.iperf import iperf
from tests.harness.netns import Namespaces, adopt, reach
from tests.harness.proc import run, stop_group

pytestmark = pytest.mark.integration

GENERIC = "com.docker.network.generic"
TOLERANCE = 0.15          # the issue: measured within +-15 % of the configured rate
APPLY_WITHIN = 2.0        # the issue: live changes hold within 2 s


# -- small helpers ---------------------------------------------------------------------

def sh(args: list[str], check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return run(args, check=check, timeout=timeout, **kw)


def ofctl(bridge: str, *args: str) -> str:
    return sh(["ovs-ofctl", "-O", "OpenFlow13", *args[:1], bridge, *args[1:]]).stdout


def meters(bridge: str) -> dict[int, tuple[int, int]]:
    """`ovs-ofctl dump-meters` as {meter id: (rate kbit/s, burst kbit)}."""
    found = {}
    for block in ofctl(bridge, "dump-meters").split("meter=")[1:]:
        ident = int(block.split()[0])
        rate = re.search(r"rate=(\d+)", block)
        burst = re.search(r"burst_size=(\d+)", block)
        found[ident] = (int(rate.group(1)) if rate else 0, int(burst.group(1)) if burst else 0)
    return found


def flows(bridge: str) -> list[str]:
    return [line.strip() for line in ofctl(bridge, "dump-flows").splitlines() if "actions=" in line]


def wait_for(predicate, within: float, step: float = 0.05):
    """Poll predicate until it returns something truthy; returns (value, seconds) or (last value, None)."""
    started = time.monotonic()
    value = predicate()
    while not value:
        if time.monotonic() - started > within:
            return value, None
        time.sleep(step)
        value = predicate()
    return value, time.monotonic() - started


def default_burst_kb(rate_kbps: int) -> int:
    return max(12, int(rate_kbps * 0.25))


# -- the rig: a daemon, its bridge, containers played by namespaces ----------------------

@dataclass
class Container:
    endpoint: str
    ip: str
    mac: str
    port: str          # host end (the OVS port)
    peer: str          # SrcName from Join
    ns: str
    docker_net: str
    pool: str


class Rig:
    def __init__(self, workdir: Path):
        self.hex = secrets.token_hex(3)
        self.workdir = workdir
        self.socket = f"/run/netplugin-rl-{self.hex}.sock"
        self.prefix = f"/netplugin/test-rl-{self.hex}"
        self.bridge = self.free_bridge_name()
        self.host_id = f"nptest-rl-{self.hex}"
        self.log_path = workdir / "daemon.log"
        self.env = settings_env(
            isolated=False, etcd_endpoints=ETCD, etcd_prefix=self.prefix, host_id=self.host_id, bridge=self.bridge,
            datapath_type="netdev", socket=self.socket, config="/dev/null", log_level="INFO",
            # other suites on this machine can make OVSDB big and slow to sync
            ovs_timeout=15,
            # gunicorn's control socket: private, not shared with other daemons
            base=dict(os.environ, XDG_RUNTIME_DIR=str(workdir)))
        self.daemon = Daemon(self.socket, self.log_path, self.env)
        self.namespaces = Namespaces("nptest-rl-")
        self.bridges: list[str] = [self.bridge]
        self.links: list[str] = []
        self.kv = EtcdKV([ETCD], timeout=3)
        self._octet = 1 + secrets.randbelow(250)
        self._subnets = 0

    @staticmethod
    def free_bridge_name() -> str:
        """'nptestrl' + 2 hex that no bridge has now (only 256 names: never share one)."""
        for _ in range(50):
            name = "nptestrl" + secrets.token_hex(1)
            if sh(["ovs-vsctl", "--timeout=10", "br-exists", name], check=False).returncode == 2:
                return name
        raise AssertionError("no free bridge name nptestrlXX")

    # daemon ----------------------------------------------------------------------
    def start(self) -> float:
        """Start the daemon; returns the seconds until it answered on its socket."""
        return self.daemon.start(within=20)

    def kill(self, sig: int = signal.SIGTERM) -> None:
        stop_group(self.daemon.proc, sig, grace=15)

    def log_tail(self, n: int = 4000) -> str:
        return self.daemon.tail(n)

    # protocol --------------------------------------------------------------------
    def call(self, method: str, body: dict, ok: bool = True) -> tuple[int, dict]:
        status, reply = self.daemon.call(method, body, timeout=30)
        if ok and status != 200:
            raise AssertionError(f"{method} answered {status}: {reply}\n{self.log_tail(1500)}")
        return status, reply

    def netctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return self.daemon.netctl(*args, timeout=timeout)

    def netctl_ok(self, *args: str) -> str:
        proc = self.netctl(*args)
        assert proc.returncode == 0, f"netctl {' '.join(args)} exited {proc.returncode}: {proc.stderr}"
        return proc.stdout

    def new_subnet(self) -> str:
        self._subnets += 1
        return f"10.{240 + self._subnets}.{self._octet}.0/24"

    def create_network(self, options: dict[str, str], ok: bool = True) -> tuple[str, str, tuple[int, dict]]:
        """docker network create -d netplugin --ipam-driver netplugin --subnet S -o ...:
        returns (NetworkID, PoolID, CreateNetwork's answer)."""
        subnet = self.new_subnet()
        pool = self.call("IpamDriver.RequestPool", {"AddressSpace": "netplugin", "Pool": subnet, "SubPool": "",
                                                     "Options": {}, "V6": False})[1]["PoolID"]
        gateway = self.call("IpamDriver.RequestAddress", {
            "PoolID": pool, "Address": "",
            "Options": {"RequestAddressType": "com.docker.network.gateway"}})[1]["Address"]
        docker_net = secrets.token_hex(32)
        answer = self.call("NetworkDriver.CreateNetwork", {
            "NetworkID": docker_net, "Options": {GENERIC: options},
            "IPv4Data": [{"AddressSpace": "netplugin", "Pool": subnet, "Gateway": gateway, "AuxAddresses": {}}],
            "IPv6Data": []}, ok=ok)
        if answer[0] != 200:      # Docker gives the gateway and the pool back
            self.call("IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": gateway.split("/")[0]})
            self.call("IpamDriver.ReleasePool", {"PoolID": pool})
        return docker_net, pool, answer

    def add_container(self, docker_net: str, pool: str) -> Container:
        address = self.call("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "", "Options": {}})[1]["Address"]
        endpoint = secrets.token_hex(32)
        self.links.append("np" + endpoint[:11])          # removed by name even if the test fails
        reply = self.call("NetworkDriver.CreateEndpoint", {
            "NetworkID": docker_net, "EndpointID": endpoint, "Options": {},
            "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": ""}})[1]
        mac = reply["Interface"]["MacAddress"]
        port = self.port_of(endpoint)                   # a warm pool pair keeps its own (npp) name
        self.links.append(port)
        ns = self.namespaces.new()
        join = self.call("NetworkDriver.Join", {"NetworkID": docker_net, "EndpointID": endpoint,
                                                "SandboxKey": f"/var/run/netns/{ns}", "Options": {}})[1]
        peer = join["InterfaceName"]["SrcName"]
        # What Docker does next: the container end into the sandbox, renamed, addressed, up.
        adopt(ns, peer, address, mac)
        return Container(endpoint, address.split("/")[0], mac, port, peer, ns, docker_net, pool)

    @staticmethod
    def port_of(endpoint: str) -> str:
        """The OVS port of an endpoint, by its np-endpoint external id."""
        out = sh(["ovs-vsctl", "--timeout=10", "--bare", "--columns=name", "find", "Port",
                  f"external_ids:np-endpoint={endpoint}"]).stdout.split()
        assert len(out) == 1, f"endpoint {endpoint[:12]} has ports {out}"
        return out[0]

    def remove_container(self, c: Container) -> None:
        """docker rm: Leave, DeleteEndpoint, ReleaseAddress."""
        self.call("NetworkDriver.Leave", {"NetworkID": c.docker_net, "EndpointID": c.endpoint})
        self.call("NetworkDriver.DeleteEndpoint", {"NetworkID": c.docker_net, "EndpointID": c.endpoint})
        self.call("IpamDriver.ReleaseAddress", {"PoolID": c.pool, "Address": c.ip})

    # datapath --------------------------------------------------------------------
    def ofport(self, port: str) -> int:
        out = sh(["ovs-vsctl", "--timeout=10", "get", "Interface", port, "ofport"]).stdout.strip()
        return int(out)

    def meter_of(self, c: Container) -> tuple[int, int] | None:
        return meters(self.bridge).get(self.ofport(c.port))

    def limit_state(self, c: Container, ofport: int | None = None):
        """(the port's meter or None, whether a flow sends the port's packets through that meter id)."""
        ofport = ofport or self.ofport(c.port)
        metered = any(f"meter:{ofport}," in fl for fl in flows(self.bridge))
        return meters(self.bridge).get(ofport), metered

    def wait_meter(self, c: Container, want: tuple[int, int] | None, within: float = APPLY_WITHIN):
        """Wait until the port's meter is `want` and its flow uses it (None: no meter and no flow using
        one); returns the seconds it took, or None."""
        ofport = self.ofport(c.port)
        return wait_for(lambda: self.limit_state(c, ofport) == (want, want is not None), within)[1]

    def etcd_state(self) -> dict[str, bytes]:
        """Every key and value of the test's prefix but the host heartbeat (which moves on its own)."""
        beat = (f"{self.prefix}/hosts/", f"{self.prefix}/hostinfo/")
        return {i.key: i.value for i in self.kv.get_prefix(self.prefix + "/") if not i.key.startswith(beat)}

    # a bare bridge: only the NORMAL action ------------------------------------------------
    def bare_pair(self) -> tuple[str, str, str, str]:
        """A second netdev bridge with only its default NORMAL flow and two namespaces on it:
        returns (ns1, ip1, ns2, ip2). Veths as netplugin makes them: MTU 1500, tx checksum off."""
        bare = self.free_bridge_name()
        while bare == self.bridge:
            bare = self.free_bridge_name()
        sh(["ovs-vsctl", "--timeout=10", "add-br", bare, "--", "set", "bridge", bare, "datapath_type=netdev"])
        self.bridges.append(bare)      # only once it is ours: never delete someone else's
        out = []
        for i in (1, 2):
            host, peer = f"nprlb{self.hex}{i}", f"nprlc{self.hex}{i}"
            self.links.append(host)
            sh(["ip", "link", "add", host, "type", "veth", "peer", "name", peer])
            for name in (host, peer):
                sh(["ethtool", "-K", name, "tx", "off"])
            sh(["ip", "link", "set", host, "up"])
            sh(["ovs-vsctl", "--timeout=10", "add-port", bare, host])
            ns = self.namespaces.new()
            ip = f"10.253.{self._octet}.{i}"
            adopt(ns, peer, f"{ip}/24")
            out += [ns, ip]
        found = flows(bare)
        assert len(found) == 1 and "actions=NORMAL" in found[0], found
        return tuple(out)

    # cleanup ---------------------------------------------------------------------
    def cleanup(self) -> list[str]:
        problems = []
        self.kill(signal.SIGTERM)
        self.namespaces.cleanup()
        for name in self.links:
            if sh(["ip", "link", "show", "dev", name], check=False).returncode == 0:
                sh(["ip", "link", "del", "dev", name], check=False)
        for br in self.bridges:
            proc = sh(["ovs-vsctl", "--timeout=10", "--if-exists", "del-br", br], check=False)
            if proc.returncode:
                problems.append(f"del-br {br}: {proc.stderr}")
        try:
            self.kv.txn([], [Delete(self.prefix + "/", prefix=True)])
        except Exception as exc:  # noqa: BLE001
            problems.append(f"etcd prefix {self.prefix}: {exc}")
        finally:
            self.kv.close()
        if os.path.exists(self.socket):
            try:
                os.unlink(self.socket)
            except OSError:
                pass
        return problems


ping_until = reach


# -- fixtures ----------------------------------------------------------------------------

@dataclass
class World:
    rig: Rig
    net: str            # Docker NetworkID of the main network
    name: str           # its global name
    pool: str
    sender: Container   # limited in the accuracy tests
    receiver: Container
    free: Container     # never limited: the no-cost comparison


@pytest.fixture(scope="module")
def world(request):
    for tool in ("iperf3", "ovs-ofctl", "ovs-vsctl", "ip", "ethtool", "ss"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            pytest.fail(f"the rate-limit tests need {tool} on PATH", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the rate-limit tests need root", pytrace=False)
    workdir = Path(tempfile.mkdtemp(prefix="nptest-rl-"))
    rig = Rig(workdir)
    try:
        rig.start()
        name = f"nptest-rl-{rig.hex}"
        net, pool, _ = rig.create_network({"vlan": str(2000 + secrets.randbelow(1000)), "name": name})
        sender, receiver, free = (rig.add_container(net, pool) for _ in range(3))
        for c in (sender, free):
            ping_until(c.ns, receiver.ip)
        yield World(rig, net, name, pool, sender, receiver, free)
    finally:
        problems = rig.cleanup()
        if problems:
            print("cleanup problems:", problems, file=sys.stderr)
        if problems or request.session.testsfailed:
            print(f"the daemon's log is kept: {rig.log_path}", file=sys.stderr)
        else:
            import shutil
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def profile(world):
    """A fresh profile name; removed afterwards if the test left it."""
    name = "rl" + secrets.token_hex(3)
    yield name
    world.rig.netctl("profile", "rm", name)


# -- accuracy -------------------------------------------------------------------------------

def within_tolerance(rate_mbit: float, measure, attempts: int = 3, explain=None) -> tuple[float, list[float]]:
    """Measure up to `attempts` times until a result is within +-15 % of the rate.

    A result ABOVE the band fails at once: a busy machine can slow traffic down but
    cannot push it past a meter. A result below it is measured again, because on these
    shared 2-core machines a starved ovs-vswitchd (the userspace datapath) delivers
    less than the limit for reasons that have nothing to do with the limit; a limiter
    that really under-delivers fails every attempt."""
    got: list[float] = []
    for _ in range(attempts):
        got.append(measure())
        assert got[-1] <= rate_mbit * (1 + TOLERANCE), f"above the limit of {rate_mbit} Mbit/s: {got}"
        if got[-1] >= rate_mbit * (1 - TOLERANCE):
            return got[-1], got
    raise AssertionError(f"below {rate_mbit} Mbit/s - 15 % in {attempts} runs: {got}"
                         + (f"; {explain()}" if explain else ""))


@pytest.mark.parametrize("rate_mbit", [10, 50, 200])
def test_rate_is_held_within_15_percent_udp_and_tcp(world, profile, rate_mbit):
    rig, s, r = world.rig, world.sender, world.receiver
    rig.netctl_ok("profile", "create", profile, "--rate", f"{rate_mbit}mbit")
    rig.netctl_ok("endpoint", "set", s.endpoint[:12], "--profile", profile)
    want = (rate_mbit * 1000, default_burst_kb(rate_mbit * 1000))
    assert rig.wait_meter(s, want) is not None, f"meter {rig.limit_state(s)} is not {want}\n{rig.log_tail(1500)}"
    offered: list[float] = []

    def udp() -> float:        # offered at twice the limit; the first second (the full bucket) omitted
        res = iperf(r.ns, r.ip, s.ns, seconds=4, omit=1, udp_mbit=2 * rate_mbit)
        offered.append(res.sent_mbit)
        return res.mbit

    def tcp() -> float:        # slow start and the initial bucket omitted
        return iperf(r.ns, r.ip, s.ns, seconds=5, omit=2).mbit

    def capacity() -> str:     # on failure: can this machine carry the rate at all just now?
        rig.netctl("endpoint", "set", s.endpoint[:12], "--clear")
        if rig.wait_meter(s, None) is None:
            return "the limit could not be lifted to measure the unlimited path"
        free = iperf(r.ns, r.ip, s.ns, seconds=3, omit=1).mbit
        return (f"the same path WITHOUT a limit carried {free:.0f} Mbit/s TCP right after"
                + (" (the machine is too busy to measure this rate now)" if free < rate_mbit * 1.3 else ""))

    try:
        udp_got, udp_runs = within_tolerance(rate_mbit, udp, explain=capacity)
        tcp_got, tcp_runs = within_tolerance(rate_mbit, tcp, explain=capacity)
    finally:
        rig.netctl_ok("endpoint", "set", s.endpoint[:12], "--clear")
    print(f"configured {rate_mbit} Mbit/s: UDP {udp_runs} (offered {[round(o) for o in offered]}), TCP {tcp_runs}")
    assert offered[len(udp_runs) - 1] > 1.5 * rate_mbit, f"UDP was not offered above the limit: {offered}"
    assert rig.wait_meter(s, None) is not None, "--clear left the meter"


# -- live change -----------------------------------------------------------------------------

def test_live_change_from_50_to_10_mbit_holds_within_2_s(world, profile):
    rig, s, r = world.rig, world.sender, world.receiver
    rig.netctl_ok("profile", "create", profile, "--rate", "50mbit")
    rig.netctl_ok("endpoint", "set", s.endpoint[:12], "--profile", profile)
    assert rig.wait_meter(s, (50_000, 12_500)) is not None
    ofport = rig.ofport(s.port)
    marks: dict[str, float] = {}

    def change(launched: float) -> None:
        time.sleep(3.0)
        marks["asked"] = time.monotonic() - launched
        proc = rig.netctl("profile", "set", profile, "--rate", "10mbit")
        marks["done"] = time.monotonic() - launched
        marks["rc"] = proc.returncode
        marks["err"] = proc.stderr
        _, took = wait_for(lambda: meters(rig.bridge).get(ofport) == (10_000, 2_500), 5)
        marks["meter"] = None if took is None else marks["done"] + took

    try:
        res = iperf(r.ns, r.ip, s.ns, seconds=10, omit=0, udp_mbit=100, interval=0.5, during=change)
    finally:
        rig.netctl("endpoint", "set", s.endpoint[:12], "--clear")
    assert marks.get("rc") == 0, f"netctl profile set failed: {marks}"
    table = ", ".join(f"{a:.1f}-{b:.1f}:{m:.1f}" for a, b, m in res.intervals)
    print(f"change at {marks['done']:.2f} s (meter at {marks['meter']}); intervals {table}")
    assert marks["meter"] is not None and marks["meter"] - marks["done"] <= APPLY_WITHIN, \
        f"the meter did not show 10mbit within {APPLY_WITHIN} s of netctl returning: {marks}"
    whole = [(a, b, m) for a, b, m in res.intervals if b - a >= 0.4]       # not the stub at the end
    before = [m for a, b, m in whole if 1.0 <= a and b <= marks["asked"]]
    after = [m for a, b, m in whole if a >= marks["done"] + APPLY_WITHIN]
    assert before and after, table
    # Before: held at 50 (not above it), and far above the new limit so the change is visible.
    assert 20 <= statistics.median(before) <= 50 * (1 + TOLERANCE), f"before the change: {table}"
    assert abs(statistics.mean(after) - 10) <= TOLERANCE * 10, f"2 s after the change: {table}"
    # A single half second may carry more than the rate, but not more than a meter lets through:
    # 0.5 s of the rate plus the bucket (250 ms of it) = 15 Mbit/s, +10 % for timing at the receiver.
    assert max(after) <= 10 * 1.5 * 1.1, f"an interval 2 s after the change ran above 16.5 Mbit/s: {table}"


# -- no cost without a limit -----------------------------------------------------------------

def test_endpoint_without_limit_gets_95_percent_of_a_bare_normal_bridge(world):
    """TCP from an endpoint without a limit (table 0 -> table 10 -> NORMAL, ARP answers present)
    against a bare netdev bridge with only the NORMAL flow, alternated run by run (who goes first
    alternates too) so drift on this shared machine hits both alike. If the medians of a first round
    of 5 pairs fall short, a second round is run and the 10 pairs together decide: a real cost of
    5 % or more still fails, a noisy round alone does not."""
    rig, f, r = world.rig, world.free, world.receiver
    assert rig.limit_state(f) == (None, False)
    b1, ip1, b2, ip2 = rig.bare_pair()
    ping_until(b1, ip2)
    ping_until(f.ns, r.ip)
    ours: list[float] = []
    bare: list[float] = []
    ratio = 0.0
    for _ in range(2):
        for i in range(5):
            runs = [lambda: ours.append(iperf(r.ns, r.ip, f.ns, seconds=3, omit=1).mbit),
                    lambda: bare.append(iperf(b2, ip2, b1, seconds=3, omit=1).mbit)]
            for run in (runs if i % 2 == 0 else runs[::-1]):
                run()
        ratio = statistics.median(ours) / statistics.median(bare)
        print(f"netplugin no-limit {[round(x) for x in ours]} vs bare NORMAL {[round(x) for x in bare]} Mbit/s: "
              f"ratio of medians {ratio:.3f}")
        if ratio >= 0.95:
            break
    assert ratio >= 0.95, (f"an endpoint without a limit got {ratio:.1%} of a bare NORMAL bridge "
                           f"(netplugin {ours}, bare {bare})")


# -- lifting limits, leftovers, restart ---------------------------------------------------------

def test_network_profile_then_profile_rm_lifts_the_limit(world, profile):
    rig, s, r = world.rig, world.sender, world.receiver
    rig.netctl_ok("profile", "create", profile, "--rate", "30mbit", "--burst", "1mb")
    rig.netctl_ok("network", "set", world.name, "--profile", profile)
    want = (30_000, 8_000)
    # Every endpoint of the network gets it, the ones that were there before too.
    for c in (s, r, world.free):
        assert rig.wait_meter(c, want) is not None, f"{c.port}: {rig.limit_state(c)} is not {want}"
    inspect = json.loads(rig.netctl_ok("profile", "inspect", profile, "--json"))[0]
    assert f"network {world.name}" in inspect["used_by"]
    out = rig.netctl_ok("profile", "rm", profile)
    assert "limits lifted" in out
    started = time.monotonic()
    for c in (s, r, world.free):
        assert rig.wait_meter(c, None, within=10) is not None, \
            f"profile rm left the meter of {c.port}: {rig.limit_state(c)}"
    took = time.monotonic() - started
    print(f"profile rm: the 3 limits were lifted {took:.2f} s after netctl returned")
    assert took <= APPLY_WITHIN, f"profile rm took {took:.2f} s to lift the limits of 3 endpoints"
    ofports = {rig.ofport(c.port) for c in (s, r, world.free)}
    left = [fl for fl in flows(rig.bridge) if any(f"meter:{p}," in fl for p in ofports)]
    assert not left, f"flows still use the lifted meters: {left}"
    assert json.loads(rig.netctl_ok("network", "inspect", world.name, "--json"))[0].get("profile") in (None, "")


def test_endpoint_own_rate_and_burst_then_clear(world):
    rig, c = world.rig, world.free
    rig.netctl_ok("endpoint", "set", c.ip, "--rate", "20mbit", "--burst", "625kb")
    try:
        assert rig.wait_meter(c, (20_000, 5_000)) is not None, rig.limit_state(c)
    finally:
        rig.netctl_ok("endpoint", "set", c.endpoint[:12], "--clear")
    assert rig.wait_meter(c, None) is not None, f"--clear left {rig.limit_state(c)}"


def test_endpoint_profile_overrides_the_network_profile_and_clear_returns_to_it(world, profile):
    rig, s, f = world.rig, world.sender, world.free
    own = profile + "o"
    rig.netctl_ok("profile", "create", profile, "--rate", "30mbit")
    rig.netctl_ok("profile", "create", own, "--rate", "5mbit")
    try:
        rig.netctl_ok("network", "set", world.name, "--profile", profile)
        rig.netctl_ok("endpoint", "set", f.endpoint[:12], "--profile", own)
        assert rig.wait_meter(f, (5_000, 1_250)) is not None, rig.limit_state(f)
        assert rig.wait_meter(s, (30_000, 7_500)) is not None, rig.limit_state(s)
        # Editing the network's profile leaves the overridden endpoint alone.
        rig.netctl_ok("profile", "set", profile, "--rate", "40mbit")
        assert rig.wait_meter(s, (40_000, 10_000)) is not None, rig.limit_state(s)
        assert rig.limit_state(f) == ((5_000, 1_250), True)
        rig.netctl_ok("endpoint", "set", f.endpoint[:12], "--clear")
        assert rig.wait_meter(f, (40_000, 10_000)) is not None, rig.limit_state(f)
        # profile rm of an endpoint's own profile detaches it in etcd too.
        rig.netctl_ok("endpoint", "set", f.endpoint[:12], "--profile", own)
        assert rig.wait_meter(f, (5_000, 1_250)) is not None
        assert "limits lifted" in rig.netctl_ok("profile", "rm", own)
        assert rig.wait_meter(f, (40_000, 10_000)) is not None, rig.limit_state(f)
        found = Store(rig.kv, rig.prefix).get_endpoint(f.endpoint)
        assert found is not None and found[0].limit in ({}, None)
    finally:
        rig.netctl("network", "set", world.name, "--no-profile")
        rig.netctl("endpoint", "set", f.endpoint[:12], "--clear")
        rig.netctl("profile", "rm", own)
    for c in (s, f, world.receiver):
        assert rig.wait_meter(c, None) is not None, rig.limit_state(c)


def _flows_of(bridge: str, endpoint: str, ofport: int, ip: str) -> list[str]:
    """Every flow that belongs to an endpoint: its cookie (any kind: netplugin's cookies are the top
    bit, a kind, then 60 bits of the endpoint id), its in_port, or an ARP answer for its address."""
    mine = int(endpoint[:15], 16)
    found = []
    for fl in flows(bridge):
        m = re.search(r"cookie=(0x[0-9a-f]+)", fl)
        cookie = int(m.group(1), 16) if m else 0
        if (cookie == cookie_for(endpoint) or (cookie >> 63 and cookie & ((1 << 60) - 1) == mine)
                or re.search(rf"in_port={ofport}\b", fl) or f"arp_tpa={ip}," in fl):
            found.append(fl)
    return found


def test_delete_endpoint_leaves_no_meter_and_no_flow(world, profile):
    rig = world.rig
    c = rig.add_container(world.net, world.pool)
    rig.netctl_ok("profile", "create", profile, "--rate", "20mbit")
    rig.netctl_ok("endpoint", "set", c.endpoint[:12], "--profile", profile)
    ofport = rig.ofport(c.port)
    assert rig.wait_meter(c, (20_000, 5_000)) is not None, rig.limit_state(c)
    assert any(f"cookie={cookie_for(c.endpoint):#x}," in fl for fl in flows(rig.bridge)), flows(rig.bridge)
    rig.remove_container(c)
    assert ofport not in meters(rig.bridge), f"meter {ofport} outlived its endpoint: {meters(rig.bridge)}"
    left = _flows_of(rig.bridge, c.endpoint, ofport, c.ip)
    assert not left, f"flows of the deleted endpoint remain: {left}"
    time.sleep(1.0)          # nothing comes back either (watches of the record that went)
    assert ofport not in meters(rig.bridge)
    assert not _flows_of(rig.bridge, c.endpoint, ofport, c.ip), flows(rig.bridge)
    assert sh(["ip", "link", "show", "dev", c.port], check=False).returncode != 0, "the veth remains"
    assert Store(rig.kv, rig.prefix).get_endpoint(c.endpoint) is None


def test_delete_endpoint_without_limit_leaves_nothing_within_2_s(world):
    """Without a limit DeleteEndpoint answers first and its flows go right after, off Docker's path
    (docs/ratelimits.md, "Nothing left behind"): nothing of it may remain 2 s after the answer."""
    rig = world.rig
    c = rig.add_container(world.net, world.pool)
    ofport = rig.ofport(c.port)
    cookie = f"cookie={cookie_for(c.endpoint):#x},"
    # The sync loop gives the new port its table-0 flow (and the ARP proxy its answer): wait for it,
    # or there would be nothing to see disappear.
    assert wait_for(lambda: any(cookie in fl for fl in flows(rig.bridge)), 5)[1] is not None, flows(rig.bridge)
    assert rig.limit_state(c, ofport) == (None, False), "the endpoint was meant to have no limit"
    rig.call("NetworkDriver.Leave", {"NetworkID": c.docker_net, "EndpointID": c.endpoint})
    rig.call("NetworkDriver.DeleteEndpoint", {"NetworkID": c.docker_net, "EndpointID": c.endpoint})
    answered = time.monotonic()
    rig.call("IpamDriver.ReleaseAddress", {"PoolID": c.pool, "Address": c.ip})

    def remains() -> list[str]:
        left = _flows_of(rig.bridge, c.endpoint, ofport, c.ip)
        return left + ([f"meter {ofport}"] if ofport in meters(rig.bridge) else [])

    _, took = wait_for(lambda: not remains(), APPLY_WITHIN, step=0.01)
    assert took is not None, f"2 s after DeleteEndpoint answered, this remains of the endpoint: {remains()}"
    print(f"DeleteEndpoint without limit: nothing of it left {time.monotonic() - answered:.3f} s after the answer")
    time.sleep(1.0)           # and nothing comes back
    assert not remains(), remains()
    assert Store(rig.kv, rig.prefix).get_endpoint(c.endpoint) is None


def test_kill_9_then_restart_reapplies_every_limit_from_etcd(world, profile):
    """kill -9; while the daemon is down a meter is deleted by hand and another endpoint's limit is
    changed in etcd (netctl needs no daemon); the restarted daemon puts both right within seconds."""
    rig, s, f = world.rig, world.sender, world.free
    rig.netctl_ok("profile", "create", profile, "--rate", "40mbit")
    rig.netctl_ok("endpoint", "set", s.endpoint[:12], "--profile", profile)
    rig.netctl_ok("endpoint", "set", f.endpoint[:12], "--rate", "20mbit")
    try:
        assert rig.wait_meter(s, (40_000, 10_000)) is not None
        assert rig.wait_meter(f, (20_000, 5_000)) is not None
        ofport = rig.ofport(s.port)
        rig.kill(signal.SIGKILL)
        ofctl(rig.bridge, "del-meter", f"meter={ofport}")
        assert rig.limit_state(s) == (None, False), "del-meter should take the flows using it along"
        rig.netctl_ok("endpoint", "set", f.endpoint[:12], "--rate", "25mbit")
        time.sleep(0.5)
        assert rig.limit_state(f) == ((20_000, 5_000), True), "nobody should have applied it yet"
        listened = rig.start()
        started = time.monotonic()
        assert rig.wait_meter(s, (40_000, 10_000), within=10) is not None, (
            f"the restarted daemon did not put the meter back: {rig.limit_state(s)}\n{rig.log_tail(2000)}")
        assert rig.wait_meter(f, (25_000, 6_250), within=10) is not None, (
            f"the restarted daemon did not apply the change made while it was down: {rig.limit_state(f)}")
        took = time.monotonic() - started
        print(f"restart: listening after {listened:.2f} s, both limits right {took:.2f} s later")
        cookie = f"cookie={cookie_for(s.endpoint):#x},"
        assert any(cookie in fl and f"meter:{ofport}," in fl for fl in flows(rig.bridge)), flows(rig.bridge)
    finally:
        rig.netctl("endpoint", "set", s.endpoint[:12], "--clear")
        rig.netctl("endpoint", "set", f.endpoint[:12], "--clear")
    assert rig.wait_meter(f, None) is not None


def test_meter_lost_from_ovs_comes_back_within_a_full_pass_even_while_etcd_keeps_changing(world, profile):
    """docs/design.md: limit_sync runs "a full pass every 10 s, which puts back what an OVS restart
    or a hand edit lost". Here the meter goes (as in an OVS restart) while etcd keeps changing
    (a profile created every ~1.5 s, as on any busy cluster: containers starting, operators
    editing); it must still come back within the period plus margin (15 s)."""
    rig, s = world.rig, world.sender
    rig.netctl_ok("profile", "create", profile, "--rate", "40mbit")
    rig.netctl_ok("endpoint", "set", s.endpoint[:12], "--profile", profile)
    churn: list[str] = []
    try:
        assert rig.wait_meter(s, (40_000, 10_000)) is not None
        ofport = rig.ofport(s.port)
        ofctl(rig.bridge, "del-meter", f"meter={ofport}")
        assert rig.limit_state(s) == (None, False)
        started = time.monotonic()
        back = None
        while time.monotonic() - started < 15:
            churn.append(f"{profile}c{len(churn)}")
            rig.netctl_ok("profile", "create", churn[-1], "--rate", "1mbit")
            if rig.limit_state(s) == ((40_000, 10_000), True):
                back = time.monotonic() - started
                break
            time.sleep(1.0)
        print(f"meter lost from OVS: back after {back} s while {len(churn)} profiles were created")
        assert back is not None, (
            f"the meter deleted from OVS was not put back within 15 s while etcd kept changing "
            f"({len(churn)} profile creations): limit_sync must run its full (comparing) pass at least "
            f"every 10 s even while changes keep waking it (watch.py SyncLoop; before 8660ce2 every "
            f"wake-up postponed it, so on a busy cluster what an OVS restart lost stayed lost)")
    finally:
        rig.netctl("endpoint", "set", s.endpoint[:12], "--clear")
        if churn:         # unused by anything: straight out of etcd, not one netctl each
            rig.kv.txn([], [Delete(f"{rig.prefix}/profiles/{name}") for name in churn])


# -- -o profile=NAME on docker network create ------------------------------------------------

def test_docker_network_create_with_profile_option(world, profile):
    rig = world.rig
    rig.netctl_ok("profile", "create", profile, "--rate", "15mbit")
    # Unknown profile: refused, and nothing is left behind.
    before = rig.etcd_state()
    _, _, (status, reply) = rig.create_network({"vlan": str(2000 + secrets.randbelow(1000)),
                                                "profile": "nosuch" + secrets.token_hex(2)}, ok=False)
    assert status == 404 and "does not exist" in reply["Err"], reply
    assert rig.etcd_state() == before
    # Known profile: the endpoint is limited from its first packet (CreateEndpoint applies it).
    net, pool, _ = rig.create_network({"vlan": str(2000 + secrets.randbelow(1000)),
                                       "name": f"nptest-rl-{rig.hex}-p", "profile": profile})
    c = rig.add_container(net, pool)
    assert rig.limit_state(c) == ((15_000, 3_750), True), \
        f"right after CreateEndpoint the limit is {rig.limit_state(c)}, not 15mbit"
    rig.remove_container(c)
    rig.call("NetworkDriver.DeleteNetwork", {"NetworkID": net})


# -- bad input -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def limited_sender(world):
    """The sender limited by profile 'rlbad<hex>' at 50mbit, for the bad-input cases."""
    rig, s = world.rig, world.sender
    name = "rlbad" + secrets.token_hex(2)
    rig.netctl_ok("profile", "create", name, "--rate", "50mbit")
    rig.netctl_ok("endpoint", "set", s.endpoint[:12], "--profile", name)
    assert rig.wait_meter(s, (50_000, 12_500)) is not None
    yield name
    rig.netctl("endpoint", "set", s.endpoint[:12], "--clear")
    rig.netctl("profile", "rm", name)


@pytest.mark.parametrize("args, message", [
    (["profile", "create", "{new}", "--rate", "fast"], "rate 'fast' is not a rate"),
    (["profile", "create", "{new}", "--rate=-5mbit"], "'-5mbit'"),
    (["profile", "create", "{new}", "--rate", "0mbit"], "too low"),
    (["profile", "create", "{new}", "--rate", "10mbit", "--burst", "100gb"], "more than 10 s of the rate"),
    (["profile", "create", "{new}", "--rate", "10mbit", "--burst=-1kb"], "'-1kb'"),
    (["profile", "set", "{old}", "--rate", "fast"], "rate 'fast' is not a rate"),
    (["profile", "set", "{old}", "--burst", "50gb"], "more than 10 s of the rate"),
    (["profile", "set", "nosuch{hex}", "--rate", "5mbit"], "does not exist"),
    (["profile", "rm", "nosuch{hex}"], "does not exist"),
    (["network", "set", "{net}", "--profile", "nosuch{hex}"], "does not exist"),
    (["endpoint", "set", "{ep}", "--profile", "nosuch{hex}"], "does not exist"),
    (["endpoint", "set", "{ep}", "--rate", "fast"], "rate 'fast' is not a rate"),
    (["endpoint", "set", "{ep}", "--rate", "10mbit", "--burst", "100gb"], "more than 10 s of the rate"),
    (["endpoint", "set", "{ep}", "--profile", "{old}", "--burst", "1mb"], "--burst goes with --rate"),
    (["profile", "create", "{new}", "--rate", "100mbps"], "say mbit"),
    (["profile", "create", "{new}", "--rate", "200gbit"], "above 100gbit"),
    (["profile", "create", "{new}", "--rate", "10mbit", "--burst", "1b"], "smaller than one 1500-byte frame"),
    (["profile", "create", "{old}", "--rate", "10mbit"], "exists already"),
    (["profile", "create", "bad/name", "--rate", "10mbit"], "profile name 'bad/name' is invalid"),
])
def test_bad_input_is_refused_and_changes_nothing(world, limited_sender, args, message):
    rig, s = world.rig, world.sender
    subs = {"new": "rl" + secrets.token_hex(3), "old": limited_sender, "hex": secrets.token_hex(2),
            "net": world.name, "ep": s.endpoint[:12]}
    argv = [a.format(**subs) for a in args]
    etcd_before, meters_before = rig.etcd_state(), meters(rig.bridge)
    proc = rig.netctl(*argv)
    assert proc.returncode == 1, f"netctl {argv} exited {proc.returncode}: {proc.stdout} {proc.stderr}"
    assert message in proc.stderr and proc.stderr.startswith("netctl: "), proc.stderr
    assert "Traceback" not in proc.stderr
    time.sleep(0.2)       # a change wrongly accepted would reach OVS within this
    assert rig.etcd_state() == etcd_before, f"netctl {argv} changed etcd"
    assert meters(rig.bridge) == meters_before, f"netctl {argv} changed the meters"
    assert rig.limit_state(s) == ((50_000, 12_500), True)
