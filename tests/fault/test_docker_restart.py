"""Docker restart: the main dockerd is stopped (SIGTERM, as scripts/services.sh
stops it) and started again by ``services.sh start``, with and without
live-restore.

* With live-restore (set in /etc/docker/daemon.json and loaded with SIGHUP,
  so dockerd keeps the exact flags services.sh gave it): containers keep
  running while dockerd is down and keep pinging; afterwards they have the
  same address and endpoint, a new container starts, and the reconciler finds
  nothing.
* Without it: dockerd stops the containers on the way down (Leave,
  DeleteEndpoint, ReleaseAddress reach the plugin), and on the way up starts
  again those with a restart policy, which get an endpoint and an address
  again and ping; the container without a policy stays stopped and holds
  nothing. The reconciler finds nothing.

Whatever happens, dockerd is left running as services.sh starts it, without
live-restore and without a daemon.json it did not have (try/finally).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .faultkit import (
    IMAGE,
    LABEL,
    Daemon,
    docker,
    host_veths,
    remove_containers,
    serving,
    start_services,
    wait_until,
)

SUBNET = "10.251.30.0/24"           # VLAN 3630
DAEMON_JSON = Path("/etc/docker/daemon.json")
DOCKER_PID_FILES = (Path("/var/lib/netplugin-ci/pids/dockerd.pid"), Path("/var/run/docker.pid"))


def docker_up() -> bool:
    try:
        return docker("info", "-f", "{{.ID}}", check=False, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def dockerd_pid() -> int | None:
    """The pid services.sh recorded, else Docker's own pid file, if that process is dockerd."""
    for path in DOCKER_PID_FILES:
        try:
            pid = int(path.read_text().strip())
            if Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd":
                return pid
        except (OSError, ValueError):
            continue
    return None


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return False


def stop_dockerd(patience: float = 45) -> float:
    """As services.sh stop_dockerd: TERM, wait, KILL after ``patience``; seconds taken."""
    pid = dockerd_pid()
    assert pid, "no dockerd to stop"
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    while alive(pid) and time.monotonic() - t0 < patience:
        time.sleep(0.1)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
    DOCKER_PID_FILES[0].unlink(missing_ok=True)
    return time.monotonic() - t0


def start_dockerd() -> float:
    """services.sh start: dockerd with its flags (the rest is up and reused); seconds taken."""
    took = start_services()
    assert docker_up()
    return took


def live_restore_enabled() -> bool:
    return docker("info", "-f", "{{.LiveRestoreEnabled}}").stdout.strip() == "true"


def set_live_restore(on: bool) -> None:
    """Through daemon.json and a reload (SIGHUP): dockerd keeps its flags."""
    DAEMON_JSON.parent.mkdir(parents=True, exist_ok=True)
    DAEMON_JSON.write_text(json.dumps({"live-restore": on}) + "\n")
    os.kill(dockerd_pid(), signal.SIGHUP)
    assert wait_until(lambda: live_restore_enabled() == on, 10), f"dockerd did not load live-restore={on}"


@pytest.fixture
def dockerd_restored():
    """Leaves dockerd as services.sh starts it, whatever the test did."""
    original = DAEMON_JSON.read_bytes() if DAEMON_JSON.exists() else None
    try:
        yield
    finally:
        if not docker_up():
            start_dockerd()
        if original is None:
            if DAEMON_JSON.exists():
                if live_restore_enabled():
                    set_live_restore(False)
                DAEMON_JSON.unlink()
        else:
            DAEMON_JSON.write_bytes(original)
            os.kill(dockerd_pid(), signal.SIGHUP)
        assert docker_up()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("docker"), "npfb5", repair=lambda: docker_up() or start_dockerd()) as d:
        yield d


def ip_of(name: str) -> str:
    return docker("inspect", "-f", '{{(index .NetworkSettings.Networks "fb-docker").IPAddress}}', name).stdout.strip()


def endpoint_of(name: str) -> str:
    return docker("inspect", "-f", '{{(index .NetworkSettings.Networks "fb-docker").EndpointID}}',
                  name).stdout.strip()


def pings(name: str, address: str) -> bool:
    return docker("exec", name, "ping", "-c", "1", "-W", "1", address, check=False).returncode == 0


def netns_ping(pid: int, address: str) -> bool:
    """Ping from a container's network namespace without Docker (it is down)."""
    return subprocess.run(["nsenter", "-t", str(pid), "-n", "ping", "-c", "1", "-W", "1", address],
                          capture_output=True, timeout=10).returncode == 0


def expect_clean(daemon: Daemon, running: list[str], veths0: set[str]) -> None:
    """Records, addresses and ports are exactly those of the running containers; the reconciler finds nothing."""
    eids = sorted(endpoint_of(n) for n in running)
    assert sorted(ep.id for ep in daemon.records()) == eids
    assert sorted(a.ip for _, a in daemon.allocations(SUBNET)) == sorted(ip_of(n) for n in running)
    assert len(daemon.ports()) == len(running)
    report = daemon.reconcile("--grace", "0", "--dry-run")
    assert report["docker"] == "ok" and daemon.own_findings(report, veths0) == [], report


def network(daemon: Daemon) -> None:
    if docker("network", "inspect", "fb-docker", check=False).returncode != 0:
        daemon.network("fb-docker", SUBNET, "vlan=3630")


def test_live_restore_keeps_containers_and_addresses(daemon, dockerd_restored):
    network(daemon)
    veths0 = host_veths()
    set_live_restore(True)
    names = ["fbdl-1", "fbdl-2"]
    for name in names:
        docker("run", "-d", "--label", LABEL, "--name", name, "--network", "fb-docker", IMAGE, "sleep", "600")
    before = {n: (ip_of(n), endpoint_of(n)) for n in names}
    pid1 = int(docker("inspect", "-f", "{{.State.Pid}}", "fbdl-1").stdout)
    assert wait_until(lambda: pings("fbdl-1", before["fbdl-2"][0]), 10)

    stopped = stop_dockerd()
    assert not docker_up()
    # Docker is down: the containers still run and still talk.
    assert Path(f"/proc/{pid1}").exists()
    assert netns_ping(pid1, before["fbdl-2"][0]), "a live-restored container lost its network while dockerd was down"
    started = start_dockerd()
    print(f"\nlive-restore: dockerd stop {stopped:.1f} s, start {started:.1f} s")

    assert live_restore_enabled()
    for n in names:
        assert docker("inspect", "-f", "{{.State.Running}}", n).stdout.strip() == "true"
    assert {n: (ip_of(n), endpoint_of(n)) for n in names} == before
    assert int(docker("inspect", "-f", "{{.State.Pid}}", "fbdl-1").stdout) == pid1
    assert pings("fbdl-1", before["fbdl-2"][0])
    assert "fb-docker" in docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    docker("run", "-d", "--label", LABEL, "--name", "fbdl-3", "--network", "fb-docker", IMAGE, "sleep", "600")
    assert wait_until(lambda: pings("fbdl-3", before["fbdl-1"][0]), 10)
    expect_clean(daemon, names + ["fbdl-3"], veths0)
    remove_containers()
    assert wait_until(lambda: not daemon.records(), 10)


def test_without_live_restore_restart_policy_brings_network_back(daemon, dockerd_restored):
    network(daemon)
    veths0 = host_veths()
    assert not live_restore_enabled(), "dockerd must run as services.sh starts it: without live-restore"
    # busybox sleep ignores SIGTERM as pid 1: a short stop timeout keeps dockerd's shutdown short.
    for name in ("fbdr-1", "fbdr-2"):
        docker("run", "-d", "--label", LABEL, "--name", name, "--restart", "always", "--stop-timeout", "1",
               "--network", "fb-docker", IMAGE, "sleep", "600")
    docker("run", "-d", "--label", LABEL, "--name", "fbdr-none", "--stop-timeout", "1", "--network", "fb-docker",
           IMAGE, "sleep", "600")
    assert len(daemon.records()) == 3

    stopped = stop_dockerd()
    # dockerd stopped every container on the way down and told the plugin.
    after_stop = len(daemon.records())
    started = start_dockerd()
    print(f"\nwithout live-restore: dockerd stop {stopped:.1f} s, start {started:.1f} s; "
          f"{after_stop} endpoint records while it was down")
    assert after_stop == 0, "dockerd's shutdown must delete the endpoints of the containers it stopped"

    def back() -> bool:
        return all(docker("inspect", "-f", "{{.State.Running}}", n).stdout.strip() == "true"
                   for n in ("fbdr-1", "fbdr-2"))
    assert wait_until(back, 30), "containers with a restart policy did not come back"
    assert docker("inspect", "-f", "{{.State.Running}}", "fbdr-none").stdout.strip() == "false"
    ip2 = ip_of("fbdr-2")
    assert ip2.startswith("10.251.30.")
    assert wait_until(lambda: pings("fbdr-1", ip2), 10), "restarted containers do not ping"
    assert "fb-docker" in docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    expect_clean(daemon, ["fbdr-1", "fbdr-2"], veths0)
    remove_containers()
