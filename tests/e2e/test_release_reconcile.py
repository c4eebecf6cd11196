"""ReleaseEndpoint and the reconciler against real dockerd, OVS and etcd:
every kind of leak is found and repaired, nothing alive is touched."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import threading
import time

import pytest

from .conftest import ETCD, IMAGE, LABEL, Plugin, docker, ip_of, new_network, pings, run, start

pytestmark = pytest.mark.e2e


def endpoint_of(container: str, network: str) -> str:
    return docker("inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{network}").EndpointID}}}}',
                  container).stdout.strip()


def etcd_json(plugin: Plugin, sub: str) -> dict | None:
    out = run("etcdctl", f"--endpoints={ETCD}", "get", "--print-value-only", f"{plugin.prefix}/{sub}").stdout
    return json.loads(out) if out.strip() else None


def pool_keys(plugin: Plugin, subnet: str) -> list[str]:
    return plugin.etcd_keys(f"ipam/{subnet.replace('/', '-')}/")


def test_release_endpoint_twice_and_unknown(clean):
    new_network("e2e-rel", "10.80.0.0/24", 180)
    start("rel1", "e2e-rel", cmd=("sleep", "600"))
    eid = endpoint_of("rel1", "e2e-rel")
    status, reply = clean.call("NetPlugin.ReleaseEndpoint", {"EndpointID": eid})
    assert status == 409 and "running container" in reply["Err"], reply      # alive: refused
    status, reply = clean.call("NetPlugin.ReleaseEndpoint", {"EndpointID": eid, "Force": True})
    assert status == 200 and reply["Status"] == "released", reply
    assert reply["Removed"]["ovs_port"] and reply["Removed"]["veth"] and reply["Removed"]["record"]
    ip = reply["Removed"]["address"]
    assert ip == ip_of("rel1", "e2e-rel")
    assert clean.ovs_ports() == [] and not clean.etcd_keys(f"index/endpoint/{eid}")
    assert len(pool_keys(clean, "10.80.0.0/24")) == 1       # only the gateway is left
    status, again = clean.call("NetPlugin.ReleaseEndpoint", {"EndpointID": eid})
    assert status == 200 and again["Status"] == "already released", again
    status, unknown = clean.call("NetPlugin.ReleaseEndpoint", {"EndpointID": "f" * 64})
    assert status == 404 and "unknown" in unknown["Err"]
    status, bad = clean.call("NetPlugin.ReleaseEndpoint", {})
    assert status == 400 and "EndpointID" in bad["Err"]


def test_release_by_address_through_netctl(clean):
    """An address claimed by a start that never finished, released by IP through netctl and the socket."""
    new_network("e2e-relip", "10.81.0.0/24", 181)
    pool = clean.call("IpamDriver.RequestPool", {"AddressSpace": "netplugin", "Pool": "10.81.0.0/24"})[1]
    assert clean.call("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "10.81.0.40"})[0] == 200
    env_socket = dict(clean.env)
    proc = clean.netctl("endpoint", "release", "--ip", "10.81.0.40", "--json")
    assert json.loads(proc.stdout)["Status"] == "released", proc.stdout
    assert not [k for k in pool_keys(clean, "10.81.0.0/24") if k.endswith("%08x" % 40)]
    again = json.loads(clean.netctl("endpoint", "release", "--ip", "10.81.0.40", "--json").stdout)
    assert again["Status"] == "already released"
    assert env_socket["NETPLUGIN_SOCKET"] == clean.socket


@pytest.fixture
def second_host(clean, tmp_path):
    other = Plugin(tmp_path, socket=f"/run/netplugin-e2e-{secrets.token_hex(3)}.sock", prefix=clean.prefix)
    other.start()
    yield other
    other.stop()
    run("ovs-vsctl", "--if-exists", "del-br", other.bridge, check=False)


def test_release_on_another_host_is_pending_then_done(clean, second_host):
    new_network("e2e-remote", "10.82.0.0/24", 182)
    docker_net = "ab" * 32           # host B's Docker network, driven through the protocol directly
    pool = second_host.call("IpamDriver.RequestPool", {"AddressSpace": "netplugin", "Pool": "10.82.0.0/24"})[1]
    assert second_host.call("NetworkDriver.CreateNetwork", {
        "NetworkID": docker_net, "Options": {}, "IPv4Data": [{"AddressSpace": "netplugin", "Pool": "10.82.0.0/24",
                                                              "Gateway": "10.82.0.1/24"}]})[0] == 200
    addr = second_host.call("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": ""})[1]["Address"]
    eid = secrets.token_hex(32)
    status, _ = second_host.call("NetworkDriver.CreateEndpoint", {"NetworkID": docker_net, "EndpointID": eid,
                                                                 "Interface": {"Address": addr}})
    assert status == 200
    status, reply = clean.call("NetPlugin.ReleaseEndpoint", {"EndpointID": eid})
    assert status == 200 and reply["Status"] == "pending" and reply["Host"] == second_host.host_id, reply
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and clean.etcd_keys(f"index/endpoint/{eid}"):
        time.sleep(0.1)
    assert not clean.etcd_keys(f"index/endpoint/{eid}"), "host B must carry out the queued release"
    assert clean.call("NetPlugin.ReleaseEndpoint", {"EndpointID": eid})[1]["Status"] == "already released"
    assert second_host.ovs_ports() == []
    second_host.call("NetworkDriver.DeleteNetwork", {"NetworkID": docker_net})


def test_every_kind_of_leak_is_repaired(clean):
    # dockerd killed with kill -9 while containers run, and several containers removed while it is down.
    # (Without live-restore the restarted dockerd stops what ran before, so this goes first.)
    new_network("e2e-leak", "10.83.0.0/24", 183)
    gone = ["lv-gone1", "lv-gone2", "lv-gone3"]
    for name in gone:
        start(name, "e2e-leak")
    gone_eids = {endpoint_of(name, "e2e-leak") for name in gone}
    assert len(gone_eids) == len(gone) and all(gone_eids)
    gone_ports = {clean.port_of(e) for e in gone_eids}
    # The restarted dockerd asks the plugin to delete the endpoints of the containers it lost; that
    # cleanup must fail for anything to leak, as it does when the plugin's etcd cannot be reached.
    with RefusingPlugin(clean) as refusing:
        remove_containers_behind_dockers_back(gone)
    assert refusing.refused, "dockerd should have tried to clean up after its lost containers"

    for name in ("probe", "lv-veth", "lv-record", "lv-port"):
        start(name, "e2e-leak")
    ips = {n: ip_of(n, "e2e-leak") for n in ("lv-veth", "lv-record", "lv-port")}
    eids = {n: endpoint_of(n, "e2e-leak") for n in ips}
    ports = {n: clean.port_of(eids[n]) for n in ips}
    # The daemon killed with kill -9 between RequestAddress and CreateEndpoint.
    pool = clean.call("IpamDriver.RequestPool", {"AddressSpace": "netplugin", "Pool": "10.83.0.0/24"})[1]
    orphan = clean.call("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": ""})[1]["Address"]
    clean.kill9()
    clean.start()
    # A veth deleted by hand, an etcd record deleted by hand, an OVS port deleted by hand.
    run("ip", "link", "del", ports["lv-veth"])
    where = run("etcdctl", f"--endpoints={ETCD}", "get", "--print-value-only",
                f"{clean.prefix}/index/endpoint/{eids['lv-record']}").stdout.strip()       # network/host
    assert where.endswith("/" + clean.host_id), where
    run("etcdctl", f"--endpoints={ETCD}", "del", f"{clean.prefix}/index/endpoint/{eids['lv-record']}")
    run("etcdctl", f"--endpoints={ETCD}", "del", f"{clean.prefix}/net-endpoints/{where}/{eids['lv-record']}")
    run("ovs-vsctl", "del-port", ports["lv-port"])
    for name in ("lv-veth", "lv-port"):      # (a lost record does not stop traffic: OVS forwards alone)
        assert not pings("probe", ips[name], count=1), f"{name} should be cut off before the repair"

    time.sleep(10.5)     # the in-flight floor: an unbound address younger than 10 s is never touched
    report = clean.reconcile("--grace", "0")
    kinds = report["counts"]
    assert kinds.get("ip_without_endpoint") == 1, report
    assert kinds.get("endpoint_without_veth") == 1 and kinds.get("port_without_record") == 1, report
    assert kinds.get("endpoint_without_port") == 1, report
    assert kinds.get("endpoint_without_container") == len(gone), report
    without_container = [f for f in report["findings"] if f["kind"] == "endpoint_without_container"]
    assert {f["id"] for f in without_container} == gone_eids, report
    assert all(f["action"] == "release" and f["done"] for f in without_container), report
    assert report["errors"] == 0, report
    assert orphan.split("/")[0] in {f["id"] for f in report["findings"]}
    repairs = [f for f in report["findings"] if f["kind"] in ("endpoint_without_veth", "endpoint_without_port")]
    assert all(f["action"] == "repair" and f["done"] for f in repairs), report
    for name, ip in ips.items():
        assert pings("probe", ip), (f"{name} must answer again after the repair",
                                    docker("exec", name, "ip", "link", check=False).stdout)
    for gone_eid in gone_eids:
        assert not clean.etcd_keys(f"index/endpoint/{gone_eid}"), "a removed container's endpoint must be released"
    assert not gone_ports & set(clean.ovs_ports() + clean.veths()), gone_ports
    assert clean.etcd_keys(f"net-endpoints/{where}/{eids['lv-record']}"), "a live container's record is rebuilt"
    assert clean.etcd_keys(f"index/endpoint/{eids['lv-record']}"), "... with its locator"
    second = clean.reconcile("--grace", "0")
    assert second["findings"] == [], second


class RefusingPlugin:
    """Stands in for the daemon on its socket: answers the handshake as the
    daemon does and refuses every other call, as a daemon whose etcd is
    unreachable would. The daemon is killed on entry and started on exit."""

    # What dockerd asks when it registers the drivers: refusing any of these would make it
    # mark the driver invalid until it restarts.
    HANDSHAKE = ("Plugin.Activate", "NetworkDriver.GetCapabilities", "IpamDriver.GetCapabilities",
                 "IpamDriver.GetDefaultAddressSpaces")

    def __init__(self, plugin: Plugin):
        self.plugin = plugin
        self.answers = {f"/{m}": plugin.call(m)[1] for m in self.HANDSHAKE}
        self.refused: list[str] = []
        self.server = None

    def __enter__(self) -> "RefusingPlugin":
        import http.server
        import socketserver
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                known = outer.answers.get(self.path)
                if known is None:
                    outer.refused.append(self.path)
                body = json.dumps(known if known is not None else {"Err": "store unavailable"}).encode()
                self.send_response(200 if known is not None else 500)
                self.send_header("Content-Type", "application/vnd.docker.plugins.v1+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

            def get_request(self):
                conn, _ = super().get_request()
                return conn, ("plugin-socket", 0)

        self.plugin.kill9()
        if os.path.exists(self.plugin.socket):
            os.unlink(self.plugin.socket)
        self.server = Server(self.plugin.socket, Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        os.unlink(self.plugin.socket)
        self.plugin.start()


def main_dockerd() -> int:
    """The pid of the dockerd behind /var/run/docker.sock (other dockerds, such
    as the two-host rig's, may run on the machine)."""
    pid = int(open("/var/run/docker.pid").read().strip())
    cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    assert os.path.basename(cmdline[0]) == b"dockerd", cmdline
    return pid


def remove_containers_behind_dockers_back(names: list[str]) -> None:
    """kill -9 dockerd, then while it is down kill each container's processes and
    delete Docker's record of it; restart dockerd."""
    ids = {name: (docker("inspect", "-f", "{{.Id}}", name).stdout.strip(),
                  int(docker("inspect", "-f", "{{.State.Pid}}", name).stdout.strip())) for name in names}
    dockerd = main_dockerd()
    os.kill(dockerd, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(f"/proc/{dockerd}"):
        time.sleep(0.1)
    for cid, pid in ids.values():
        os.kill(pid, signal.SIGKILL)
        run("ctr", "-n", "moby", "tasks", "delete", "-f", cid, check=False)
        run("ctr", "-n", "moby", "containers", "delete", cid, check=False)
        run("rm", "-rf", f"/var/lib/docker/containers/{cid}")
    run("bash", os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "services.sh"), "start",
        timeout=120)


CHURN_BATCHES = 5
CHURN_BATCH = 10
MIN_PASSES_IN_CHURN = 8          # reconciler passes overlapping the churn; at least one per batch besides


def ping_round(source: str, targets: dict[str, str]) -> dict[str, bool]:
    """One ping to each target address from the source container, in one docker exec."""
    names = sorted(targets)
    script = 'for a in "$@"; do if ping -c 1 -W 2 "$a" >/dev/null 2>&1; then echo ok; else echo fail; fi; done'
    out = docker("exec", source, "sh", "-c", script, "sh", *(targets[n] for n in names), check=False,
                 timeout=60 + 3 * len(names)).stdout.split()
    return {name: i < len(out) and out[i] == "ok" for i, name in enumerate(names)}


class Churn:
    """The containers of the churn test: which are running (and not being
    removed), their endpoints and container ids, and what the pinger saw."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running: dict[str, str] = {}         # name -> address, while up and not being removed
        self.eids: dict[str, str] = {}
        self.cids: dict[str, str] = {}
        self.answered: dict[str, int] = {}
        self.failures: list[str] = []
        self.rounds = 0
        self.removal_began: dict[str, float] = {}   # name -> when the test began removing it

    def started(self, name: str, cid: str) -> None:
        ip = ip_of(name, "e2e-churn")
        with self.lock:
            self.cids[name], self.eids[name] = cid, endpoint_of(name, "e2e-churn")
            self.running[name] = ip

    def removing(self, names: list[str]) -> None:
        with self.lock:
            for name in names:
                self.running.pop(name, None)
                self.removal_began[name] = time.time()

    def still_running(self, name: str) -> bool:
        with self.lock:
            return name in self.running

    def ping_all(self) -> None:
        """One round over every running container; a miss counts only if the
        container was still running after three more pings also failed."""
        with self.lock:
            targets = dict(self.running)
        if not targets:
            time.sleep(0.2)
            return
        for name, ok in ping_round("anchor", targets).items():
            if ok:
                self.answered[name] = self.answered.get(name, 0) + 1
            elif self.still_running(name) and not pings("anchor", targets[name], count=3) \
                    and self.still_running(name):
                self.failures.append(f"{name} ({targets[name]}) stopped answering while running")
        self.rounds += 1


def died_at(since: float) -> dict[str, float]:
    """Container id -> when Docker saw it die, for the test containers since then."""
    out = docker("events", "--since", str(int(since) - 1), "--until", str(int(time.time()) + 1),
                 "--filter", "event=die", "--filter", f"label={LABEL}",
                 "--format", "{{.Actor.ID}} {{.TimeNano}}").stdout
    return {cid: int(nanos) / 1e9 for cid, nanos in (line.split() for line in out.splitlines() if line.strip())}


def test_nothing_alive_is_released_under_churn(clean):
    """The reconciler in a loop with --grace 0 while 50 containers start and
    stop: every running container answers ping all along, no endpoint is
    released while its container runs (removed ones included: the release's
    tombstone must come after Docker saw the container die), and enough
    passes overlap the churn."""
    new_network("e2e-churn", "10.84.0.0/24", 184)
    churn = Churn()
    churn.started("anchor", start("anchor", "e2e-churn"))
    churn.removing(["anchor"])                          # the pinger's source, not a target
    stop = threading.Event()
    reports: list[dict] = []
    errors: list[str] = []

    def keep_going(step):
        def loop():
            while not stop.is_set():
                try:
                    step()
                except Exception as exc:  # noqa: BLE001 - reported by the test below
                    errors.append(f"{step.__name__}: {exc!r}")
                    time.sleep(0.5)
        return threading.Thread(target=loop, daemon=True)

    def reconcile_pass():
        reports.append(clean.reconcile("--grace", "0"))

    threads = [keep_going(reconcile_pass), keep_going(churn.ping_all)]
    began = time.time()
    for t in threads:
        t.start()
    try:
        names = [f"churn{i}" for i in range(CHURN_BATCHES * CHURN_BATCH)]
        for batch in range(0, len(names), CHURN_BATCH):
            batch_began, passes, rounds = time.monotonic(), len(reports), churn.rounds
            group = names[batch:batch + CHURN_BATCH]
            procs = {n: subprocess.Popen(["/usr/bin/docker", "run", "-d", "--label", LABEL, "--name", n,
                                          "--network", "e2e-churn", IMAGE, "sleep", "600"],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in group}
            for n, p in procs.items():
                out, err = p.communicate(timeout=120)
                assert p.returncode == 0, err
                churn.started(n, out.strip())
            # Past the in-flight floor (10 s) while running, with passes and ping rounds over them.
            deadline = time.monotonic() + 120
            while (time.monotonic() - batch_began < 12 or len(reports) < passes + 2
                   or churn.rounds < rounds + 2):
                assert time.monotonic() < deadline, "the reconciler or the pinger is stuck"
                time.sleep(0.2)
            # remove half of the batch while the reconciler and the pinger go on
            churn.removing(group[:CHURN_BATCH // 2])
            docker("rm", "-f", *group[:CHURN_BATCH // 2])
        ended = time.time()
    finally:
        stop.set()
        for t in threads:
            t.join(180)
    assert not errors, errors
    assert not churn.failures, churn.failures
    survivors = [n for i, n in enumerate(names) if i % CHURN_BATCH >= CHURN_BATCH // 2]
    assert all(churn.answered.get(n, 0) >= 1 for n in names), \
        f"never pinged while running: {[n for n in names if not churn.answered.get(n)]}"

    overlapping = [r for r in reports if r["started"] < ended and r["started"] + r["duration_ms"] / 1000 > began]
    assert len(overlapping) >= MIN_PASSES_IN_CHURN, f"{len(overlapping)} passes overlapped the churn"
    assert all(r["status"] == "done" and r["docker"] == "ok" for r in reports), reports

    live_eids = {churn.eids[n] for n in survivors + ["anchor"]}
    released = [f for r in reports for f in r["findings"] if f["action"] == "release" and f["done"]]
    assert not [f for f in released if f["id"] in live_eids], "a live endpoint was released"
    died = died_at(began)
    for name, eid in churn.eids.items():
        stone = etcd_json(clean, f"released/{eid}")
        if stone and stone.get("by") == "reconciler":
            # Docker replays only its last 256 events (`docker events --since`), and the
            # pinger's execs push early deaths out; a `sleep 600` container does not die
            # before the test removes it, so the start of its removal bounds its death.
            death = died.get(churn.cids[name], churn.removal_began.get(name))
            assert death is not None and stone["time"] >= death, \
                f"{name}'s endpoint was released by the reconciler while it ran ({stone}, died at {death})"
    for name in survivors:
        assert pings("anchor", ip_of(name, "e2e-churn"), count=1), f"{name} must still answer"
    assert len(docker("ps", "-q", "--filter", f"label={LABEL}", "--filter", "status=running").stdout.split()) \
        == len(survivors) + 1
