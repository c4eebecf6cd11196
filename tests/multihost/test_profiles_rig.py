"""Live bandwidth-profile changes on the two-host rig: one network spanning both
hosts, limited by a profile, with containers on each host. A `netctl profile
set`, a detach (`network set --no-profile`) and a `profile rm` must each reach
the meters of every affected port on BOTH hosts within 2 s, through each
daemon's etcd watches, with no container restart (docs/ratelimits.md).

The 2 s are counted from before netctl starts (its own Python start and etcd
transaction are part of what an operator waits for), and both bridges are
polled while netctl runs."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from .conftest import netctl_env, run

pytestmark = pytest.mark.multihost

NET, SUBNET, VLAN = "mh-prof", "10.234.0.0/24", 402
PROFILE = "mh-backup"
APPLY_WITHIN = 2.0          # the issue: every affected port on every host within 2 s


def default_burst_kb(rate_kbps: int) -> int:
    return max(12, int(rate_kbps * 0.25))


def meters(bridge: str) -> dict[int, tuple[int, int]]:
    """`ovs-ofctl -O OpenFlow13 dump-meters` as {meter id: (rate kbit/s, burst kbit)}."""
    out = run(["ovs-ofctl", "-O", "OpenFlow13", "dump-meters", bridge], timeout=10).stdout
    found = {}
    for block in out.split("meter=")[1:]:
        rate = re.search(r"rate=(\d+)", block)
        burst = re.search(r"burst_size=(\d+)", block)
        found[int(block.split()[0])] = (int(rate.group(1)) if rate else 0, int(burst.group(1)) if burst else 0)
    return found


def metered_flows(bridge: str) -> list[str]:
    out = run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", "--no-stats", bridge], timeout=10).stdout
    return [line.strip() for line in out.splitlines() if "meter:" in line]


def ofport(port: str) -> int:
    return int(run(["ovs-vsctl", "--timeout=10", "get", "Interface", port, "ofport"]).stdout.strip())


class Ports:
    """The endpoint ports of the network on each host: {host: {ofport: port name}}."""

    def __init__(self, rig):
        self.rig = rig
        self.by_host = {h: {} for h in rig.hosts}
        eps = rig.a.netctl_json("endpoint", "ls", "--network", NET)
        for host in rig.hosts:
            for ep in eps:
                if ep["host"] == host.host_id:
                    self.by_host[host][ofport(ep["port"])] = ep["port"]
        assert all(len(p) == 2 for p in self.by_host.values()), \
            f"expected 2 endpoints per host: {eps}"

    def state(self) -> dict:
        """{host letter: {ofport: (meter or None, whether a flow uses meter:ofport)}}."""
        out = {}
        for host, ports in self.by_host.items():
            have = meters(host.bridge)
            flows = " ".join(metered_flows(host.bridge))
            out[host.letter] = {p: (have.get(p), f"meter:{p}," in flows) for p in ports}
        return out

    def wanted(self, limit: tuple[int, int] | None) -> dict:
        return {h.letter: {p: (limit, limit is not None) for p in ports} for h, ports in self.by_host.items()}


def timed_netctl(rig, ports: Ports, want: tuple[int, int] | None, *args: str) -> tuple[float | None, str]:
    """Run netctl on host a and poll both bridges meanwhile and after. Returns
    (seconds from before netctl started until every port of both hosts shows
    `want`, or None if that did not happen within 2 s; the last state seen)."""
    target = ports.wanted(want)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "netplugin.cli.main", *args],
                            env=netctl_env(rig.etcd, rig.prefix, rig.a.docker_host, rig.a.socket),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    took, last = None, None
    while time.monotonic() - started <= APPLY_WITHIN:
        last = ports.state()
        if last == target:
            took = time.monotonic() - started
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, f"netctl {' '.join(args)} exited {proc.returncode}: {out} {err}"
    if took is None:
        # Why it failed: did it come late, or never?
        time.sleep(3)
        late = ports.state()
        return None, f"after {APPLY_WITHIN} s: {last}; 3 s later: {late}; want {target}"
    return took, ""


@pytest.fixture(scope="module")
def limited(rig):
    """Network mh-prof on both hosts with profile mh-backup (50mbit) attached;
    two containers on host a, two on host b; every port limited."""
    rig.clean()
    rig.netctl("profile", "rm", PROFILE, check=False)
    rig.netctl("profile", "create", PROFILE, "--rate", "50mbit")
    rig.a.netctl("network", "create", NET, "--subnet", SUBNET, "--vlan", str(VLAN))
    rig.a.netctl("network", "set", NET, "--profile", PROFILE)
    for host in rig.hosts:
        host.network(NET, SUBNET)
        for i in (1, 2):
            host.start(f"mh-p{host.letter}{i}", NET)
    ports = Ports(rig)
    want = ports.wanted((50_000, default_burst_kb(50_000)))
    deadline = time.monotonic() + 10
    while ports.state() != want:
        assert time.monotonic() < deadline, f"the profile was not applied at start: {ports.state()}\n{rig.logs()}"
        time.sleep(0.1)
    yield ports
    rig.clean()
    rig.netctl("profile", "rm", PROFILE, check=False)


def test_profile_set_reaches_both_hosts_within_2_s(rig, limited):
    took, why = timed_netctl(rig, limited, (10_000, default_burst_kb(10_000)),
                             "profile", "set", PROFILE, "--rate", "10mbit")
    assert took is not None, f"profile set did not reach every port of both hosts: {why}\n{rig.logs()}"
    print(f"profile set 50 -> 10 mbit: both hosts' meters changed {took:.2f} s after netctl started")
    # And a burst-only change (mod-meter in place) as well.
    took, why = timed_netctl(rig, limited, (10_000, 4_000), "profile", "set", PROFILE, "--burst", "500kb")
    assert took is not None, f"profile set --burst did not reach both hosts: {why}\n{rig.logs()}"


def test_detach_and_reattach_reach_both_hosts_within_2_s(rig, limited):
    now = rig.a.netctl_json("profile", "inspect", PROFILE)[0]
    limit = (now["rate_kbps"], now["burst_kb"])
    took, why = timed_netctl(rig, limited, None, "network", "set", NET, "--no-profile")
    assert took is not None, f"--no-profile did not lift the limit on both hosts: {why}\n{rig.logs()}"
    print(f"network set --no-profile: lifted on both hosts {took:.2f} s after netctl started")
    took, why = timed_netctl(rig, limited, limit, "network", "set", NET, "--profile", PROFILE)
    assert took is not None, f"--profile did not limit both hosts again: {why}\n{rig.logs()}"


def test_profile_rm_lifts_the_limit_on_both_hosts_within_2_s(rig, limited):
    now = rig.a.netctl_json("profile", "inspect", PROFILE)[0]
    assert f"network {NET}" in now["used_by"], now
    assert limited.state() == limited.wanted((now["rate_kbps"], now["burst_kb"]))
    took, why = timed_netctl(rig, limited, None, "profile", "rm", PROFILE)
    assert took is not None, f"profile rm did not lift the limit on both hosts: {why}\n{rig.logs()}"
    print(f"profile rm: lifted on both hosts {took:.2f} s after netctl started")
    # Nothing comes back (no watch or full pass re-applies a removed profile)
    # and the containers were not restarted: the same ports are still there.
    time.sleep(1.0)
    assert limited.state() == limited.wanted(None)
    for host, ports in limited.by_host.items():
        assert {ofport(name) for name in ports.values()} == set(ports), f"ports of {host} changed"
