"""Operations end to end: metrics after real Docker calls, /health following
etcd, JSON logs, the Grafana dashboard against a live daemon's metrics, the
plugin spec file, the managed (v2) plugin, the systemd units, install and
uninstall.

Each test runs its own daemon (its own socket, bridge, etcd prefix and
metrics port), never the default socket, so it can run beside the other
end-to-end tests. Docker finds these daemons through spec files in
/etc/docker/plugins under names of their own (npspec, npinst) and the managed
plugin is called npmanaged: nothing here can take over the name 'netplugin'.
Containers carry the label netplugin.ops-test=1, not the shared test label.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.client import get as socket_get
from tests.harness.proc import free_port

from .conftest import DOCKER, ETCD, IMAGE, Plugin, docker, run

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
OPS_LABEL = "netplugin.ops-test=1"
SPEC_DIR = Path("/etc/docker/plugins")
SPEC_NAME = "npspec"
# Fixed, so that a dockerd that met npspec in an earlier run finds it at the same place.
SPEC_SOCKET = "/run/npspec/npspec.sock"
INST_NAME = "npinst"
INST_SOCKET = "/run/npinst/npinst.sock"
MANAGED = "npmanaged"


# -- helpers ----------------------------------------------------------------------------------------

def wait_for(what: str, check, timeout: float, every: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError, AssertionError) as exc:
            last = exc
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


def http_get(port: int, path: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Scrape:
    """One scrape of /metrics: families and samples."""

    def __init__(self, port: int):
        status, text = http_get(port, "/metrics")
        assert status == 200, text
        self.text = text
        self.families = list(text_string_to_metric_families(text))

    def value(self, name: str, **labels) -> float:
        """The sum of the samples called name whose labels include these (0 if none)."""
        return sum(s.value for f in self.families for s in f.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    def has(self, name: str, **labels) -> bool:
        return any(s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
                   for f in self.families for s in f.samples)

    def names(self) -> set[str]:
        return {f.name for f in self.families} | {s.name for f in self.families for s in f.samples}


def calls(scrape: Scrape, method: str, outcome: str = "ok") -> float:
    return scrape.value("netplugin_requests_total", method=method, outcome=outcome)


def ops_containers() -> list[str]:
    return docker("ps", "-aq", "--filter", f"label={OPS_LABEL}").stdout.split()


def start_container(name: str, network: str) -> str:
    docker("rm", "-f", name, check=False)
    return docker("run", "-d", "--label", OPS_LABEL, "--name", name, "--network", network, IMAGE,
                  "sleep", "600").stdout.strip()


def ip_in(container: str, network: str) -> str:
    return docker("inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}',
                  container).stdout.strip()


def pings(container: str, address: str, count: int = 2) -> bool:
    return docker("exec", container, "ping", "-c", str(count), "-W", "2", address, check=False).returncode == 0


def remove_network(name: str) -> None:
    for cid in docker("ps", "-aq", "--filter", f"network={name}").stdout.split():
        docker("rm", "-f", cid, check=False)
    docker("network", "rm", name, check=False)


def write_spec(name: str, socket_path: str) -> Path:
    """Docker's spec file, made from plugin.json as install.sh makes it."""
    spec = json.loads((REPO / "plugin.json").read_text())
    spec.update(Name=name, Addr="unix://" + socket_path)
    SPEC_DIR.mkdir(parents=True, exist_ok=True)
    path = SPEC_DIR / f"{name}.json"
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return path


def ovs_ports(bridge: str) -> list[str]:
    """The bridge's ports but the warm pool's parked ones (a daemon keeps those on purpose)."""
    parked = set(run("ovs-vsctl", "--bare", "--columns=name", "find", "Port", "external_ids:np-pool=1",
                     check=False).stdout.split())
    return sorted(p for p in run("ovs-vsctl", "list-ports", bridge, check=False).stdout.split()
                  if p and p not in parked)


def links() -> set[str]:
    return {link["ifname"] for link in json.loads(run("ip", "-j", "link", "show").stdout)}


def own_plugin(tmp: Path, socket_path: str, **env: str) -> Plugin:
    """A daemon of its own: its socket, bridge, etcd prefix, and a free metrics port."""
    p = Plugin(tmp, socket=socket_path)
    p.metrics_port = free_port()
    p.env.update(NETPLUGIN_METRICS_ADDRESS=f"127.0.0.1:{p.metrics_port}", **env)
    return p


def finish_plugin(p: Plugin) -> None:
    p.stop()
    run("ovs-vsctl", "--if-exists", "del-br", p.bridge, check=False)
    run("etcdctl", f"--endpoints={ETCD}", "del", "--prefix", p.prefix + "/", check=False)


def check_socket_free(path: str) -> None:
    if os.path.exists(path):
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(path)
        except OSError:
            os.unlink(path)           # stale: nobody listens
            return
        raise AssertionError(f"something already listens on {path}: a daemon left by an earlier run? "
                             "Stop it (by its pid) and run again")


# -- a daemon that Docker finds through a spec file -------------------------------------------------

@pytest.fixture(scope="module")
def spec_daemon(tmp_path_factory):
    os.environ["ETCDCTL_API"] = "3"
    docker("info", timeout=30)
    docker("image", "inspect", IMAGE)
    check_socket_free(SPEC_SOCKET)
    spec_dir_existed = SPEC_DIR.exists()
    spec = write_spec(SPEC_NAME, SPEC_SOCKET)
    # backup_metrics: the dashboard's backup row reads drctl's fleet-wide figures,
    # which operators turn on for the host Prometheus asks for them.
    p = own_plugin(tmp_path_factory.mktemp("spec"), SPEC_SOCKET, NETPLUGIN_LOG_FORMAT="json",
                   NETPLUGIN_BACKUP_METRICS="true")
    try:
        p.start()
        yield p
    finally:
        for cid in ops_containers():
            docker("rm", "-f", cid, check=False)
        for net in docker("network", "ls", "-q", "--filter", f"driver={SPEC_NAME}").stdout.split():
            docker("network", "rm", net, check=False)
        finish_plugin(p)
        spec.unlink(missing_ok=True)
        if not spec_dir_existed and not any(SPEC_DIR.iterdir()):
            SPEC_DIR.rmdir()
        shutil.rmtree(os.path.dirname(SPEC_SOCKET), ignore_errors=True)


def test_docker_finds_the_plugin_through_its_spec_file(spec_daemon):
    assert not SPEC_SOCKET.startswith("/run/docker/plugins/")
    assert not os.path.exists(f"/run/docker/plugins/{SPEC_NAME}.sock")
    spec = json.loads((SPEC_DIR / f"{SPEC_NAME}.json").read_text())
    assert spec == {"Name": SPEC_NAME, "Addr": f"unix://{SPEC_SOCKET}"}
    net = "ops-spec"
    remove_network(net)
    try:
        docker("network", "create", "-d", SPEC_NAME, "--ipam-driver", SPEC_NAME, "--subnet", "10.241.0.0/24",
               "-o", "vlan=241", net)
        start_container("ops-spec-a", net)
        start_container("ops-spec-b", net)
        a, b = ip_in("ops-spec-a", net), ip_in("ops-spec-b", net)
        assert a.startswith("10.241.0.") and b.startswith("10.241.0."), (a, b)
        assert len(ovs_ports(spec_daemon.bridge)) == 2
        assert pings("ops-spec-a", b)
    finally:
        remove_network(net)
    assert ovs_ports(spec_daemon.bridge) == []


def test_metrics_count_what_docker_did(spec_daemon):
    port = spec_daemon.metrics_port
    net = "ops-metrics"
    remove_network(net)
    before = Scrape(port)
    try:
        docker("network", "create", "-d", SPEC_NAME, "--ipam-driver", SPEC_NAME, "--subnet", "10.242.0.0/24",
               "-o", "vlan=242", net)
        start_container("ops-m1", net)
        start_container("ops-m2", net)
        docker("rm", "-f", "ops-m1")
        status, reply = spec_daemon.call("NetworkDriver.CreateEndpoint", {})     # refused: 400
        assert status == 400, reply
        after = Scrape(port)

        def delta(method: str, outcome: str = "ok") -> float:
            return calls(after, method, outcome) - calls(before, method, outcome)

        assert delta("IpamDriver.RequestPool") == 1
        assert delta("IpamDriver.RequestAddress") == 3          # gateway, then one per container
        assert delta("NetworkDriver.CreateNetwork") == 1
        assert delta("NetworkDriver.CreateEndpoint") == 2
        assert delta("NetworkDriver.Join") == 2
        assert delta("NetworkDriver.Leave") == 1
        assert delta("NetworkDriver.DeleteEndpoint") == 1
        assert delta("IpamDriver.ReleaseAddress") == 1
        assert delta("NetworkDriver.CreateEndpoint", "client_error") == 1
        assert delta("NetworkDriver.DeleteNetwork") == 0
        latency = "netplugin_request_duration_seconds_count"
        assert (after.value(latency, method="NetworkDriver.CreateEndpoint")
                - before.value(latency, method="NetworkDriver.CreateEndpoint")) == 3
        assert after.value("netplugin_endpoints", network=net, host=spec_daemon.host_id) == 1
        assert after.value("netplugin_pool_size", network=net) == 254
        assert after.value("netplugin_pool_used", network=net) == 2          # gateway + ops-m2
        assert after.value("netplugin_backend_errors_total") == before.value("netplugin_backend_errors_total")
    finally:
        remove_network(net)
    gone = Scrape(port)
    assert calls(gone, "NetworkDriver.DeleteNetwork") - calls(before, "NetworkDriver.DeleteNetwork") == 1
    assert calls(gone, "IpamDriver.ReleasePool") - calls(before, "IpamDriver.ReleasePool") == 1
    assert not gone.has("netplugin_pool_size", network=net)     # Docker made it, Docker removed it
    assert not gone.has("netplugin_endpoints", network=net)


def test_rate_limits_show_in_metrics(spec_daemon):
    port = spec_daemon.metrics_port
    net = "ops-limit"
    remove_network(net)

    def applied() -> float:
        return Scrape(port).value("netplugin_rate_limits_applied_total")

    def limited() -> float:
        return Scrape(port).value("netplugin_rate_limited_ports")

    try:
        spec_daemon.netctl("profile", "create", "ops-slow", "--rate", "50mbit")
        docker("network", "create", "-d", SPEC_NAME, "--ipam-driver", SPEC_NAME, "--subnet", "10.244.0.0/24",
               "-o", "vlan=244", net)
        start_container("ops-l1", net)
        time.sleep(1)
        base = applied()
        # The profile goes on after the container started, so the limit follower alone sets,
        # changes and lifts it: one counted application per step. (When CreateEndpoint and
        # the follower both set a new port's limit, it is counted once: see
        # tests/unit/test_limit_sync.py.)
        spec_daemon.netctl("network", "set", net, "--profile", "ops-slow")            # set live
        wait_for("netplugin_rate_limited_ports to count the port", lambda: limited() == 1, 40)
        wait_for("a new limit to be counted", lambda: applied() == base + 1, 40)
        spec_daemon.netctl("profile", "set", "ops-slow", "--rate", "80mbit")          # changed live
        wait_for("a changed limit to be counted", lambda: applied() == base + 2, 40)
        assert limited() == 1
        spec_daemon.netctl("network", "set", net, "--no-profile")                     # lifted live
        wait_for("a lifted limit to be counted", lambda: applied() == base + 3, 40)
        wait_for("netplugin_rate_limited_ports back to 0", lambda: limited() == 0, 40)
    finally:
        remove_network(net)
        spec_daemon.netctl("profile", "rm", "ops-slow", check=False)


def test_json_log_has_one_line_per_call_with_ids_and_duration(spec_daemon):
    net = "ops-log"
    remove_network(net)
    try:
        docker("network", "create", "-d", SPEC_NAME, "--ipam-driver", SPEC_NAME, "--subnet", "10.246.0.0/24",
               "-o", "vlan=246", net)
        cid = start_container("ops-log1", net)
        endpoint = docker("inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{net}").EndpointID}}}}',
                          cid).stdout.strip()
        network_id = docker("network", "inspect", "-f", "{{.Id}}", net).stdout.strip()
    finally:
        remove_network(net)
    records = []
    for line in spec_daemon.log.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue                         # gunicorn's own start-up lines are plain text
    assert records, "no JSON lines in the log"
    mine = [r for r in records if r.get("endpoint") == endpoint]
    by_method = {}
    for r in mine:
        by_method.setdefault(r["method"], []).append(r)
    for method in ("NetworkDriver.CreateEndpoint", "NetworkDriver.Join", "NetworkDriver.Leave",
                   "NetworkDriver.DeleteEndpoint"):
        assert len(by_method.get(method, [])) == 1, (method, mine)
        r = by_method[method][0]
        assert r["network"] == network_id and r["status"] == 200 and r["level"] == "INFO"
        assert isinstance(r["ms"], (int, float)) and r["ms"] >= 0
        assert r["time"].endswith("Z") and r["logger"] == "netplugin.api"
    for r in records:
        assert "password" not in json.dumps(r).lower()


def test_dashboard_panels_use_metrics_the_daemon_exposes(spec_daemon):
    dashboard = json.loads((REPO / "dashboards" / "netplugin.json").read_text())
    exposed = Scrape(spec_daemon.metrics_port).names()

    def known(name: str) -> bool:
        if name in exposed:
            return True
        return any(name.endswith(sfx) and name[:-len(sfx)] in exposed
                   for sfx in ("_bucket", "_sum", "_count", "_total"))

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    checked, missing, empty = 0, [], []
    for p in panels(dashboard["panels"]):
        if p["type"] in ("row", "text"):
            continue
        exprs = [t.get("expr", "") for t in p.get("targets", [])]
        names = {n for e in exprs for n in re.findall(r"\bnetplugin_[a-zA-Z0-9_]+", e)}
        if not names:
            empty.append(p["title"])
        missing += [(p["title"], n) for n in sorted(names) if not known(n)]
        checked += 1
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        missing += [(f"variable {var['name']}", n) for n in re.findall(r"\bnetplugin_[a-zA-Z0-9_]+", text)
                    if not known(n)]
    assert checked >= 10
    assert not empty, f"panels without a netplugin metric: {empty}"
    assert not missing, f"metrics no daemon exposes: {missing}"
    titles = " ".join(p.get("title", "") for p in panels(dashboard["panels"])).lower()
    for subject in ("pool fill", "latency", "endpoints", "rate limit", "backup jobs"):
        assert subject in titles, subject
    assert len({p["id"] for p in panels(dashboard["panels"])}) == len(list(panels(dashboard["panels"])))


# -- /health follows etcd ---------------------------------------------------------------------------

class Etcd:
    """A private single-member etcd on free loopback ports (never the shared one on 2379)."""

    def __init__(self, data: Path):
        self.data = data
        self.client, self.peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.client}"
        self.proc: subprocess.Popen | None = None
        self.log = data.with_suffix(".log")

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer}"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                ["etcd", "--name", "ops", "--data-dir", str(self.data), "--listen-client-urls", self.url,
                 "--advertise-client-urls", self.url, "--listen-peer-urls", peer,
                 "--initial-advertise-peer-urls", peer, "--initial-cluster", f"ops={peer}",
                 "--logger", "zap", "--log-outputs", "stderr"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for("private etcd healthy", lambda: http_get(self.client, "/health", 2)[0] == 200, 30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def test_health_follows_etcd_stopped_and_started(tmp_path):
    etcd = Etcd(tmp_path / "etcd")
    etcd.start()
    sock = f"/run/nphealth-{secrets.token_hex(3)}/np.sock"
    p = own_plugin(tmp_path, sock, NETPLUGIN_ETCD_ENDPOINTS=etcd.url, NETPLUGIN_ETCD_TIMEOUT="1")

    def health() -> tuple[int, dict, int, dict]:
        status, body = http_get(p.metrics_port, "/health")
        s_status, s_body = socket_get(sock, "/health")
        return status, json.loads(body), s_status, s_body

    try:
        p.start()
        status, body, s_status, s_body = wait_for("healthy", lambda: (h := health())[0] == 200 and h, 30)
        assert body["healthy"] and body["etcd"]["ok"] and body["ovsdb"]["ok"], body
        assert s_status == 200 and s_body["healthy"], s_body

        etcd.stop()
        status, body, s_status, s_body = wait_for("unhealthy after etcd stopped",
                                                  lambda: (h := health())[0] == 503 and h[2] == 503 and h, 30)
        assert body["healthy"] is False and body["etcd"]["ok"] is False, body
        assert body["ovsdb"]["ok"] is True, body
        assert "etcd" in body["etcd"]["error"] and str(etcd.client) in body["etcd"]["error"], body
        assert s_body["etcd"]["ok"] is False and s_body["ovsdb"]["ok"] is True, s_body
        # Calls fail fast with the reason while etcd is away; the daemon keeps listening.
        status, reply = p.call("IpamDriver.RequestPool", {"AddressSpace": "netplugin", "Pool": "10.247.0.0/24",
                                                           "SubPool": "", "Options": {}, "V6": False})
        assert status == 503 and "store unavailable" in reply["Err"], reply
        assert Scrape(p.metrics_port).value("netplugin_backend_errors_total", backend="etcd") >= 1

        etcd.start()
        status, body, s_status, s_body = wait_for("healthy after etcd started again",
                                                  lambda: (h := health())[0] == 200 and h[2] == 200 and h, 60)
        assert body["healthy"] and body["etcd"]["ok"], body
    finally:
        p.stop()
        etcd.stop()
        run("ovs-vsctl", "--if-exists", "del-br", p.bridge, check=False)
        shutil.rmtree(os.path.dirname(sock), ignore_errors=True)


# -- the managed (v2) plugin ------------------------------------------------------------------------

def drop_managed() -> None:
    if docker("plugin", "inspect", MANAGED, check=False).returncode == 0:
        docker("plugin", "disable", "-f", MANAGED, check=False, timeout=60)
        docker("plugin", "rm", "-f", MANAGED, check=False, timeout=60)


def test_managed_plugin_serves_a_network(tmp_path):
    docker("image", "inspect", IMAGE)
    drop_managed()
    host_id, bridge = "e2e-m" + secrets.token_hex(3), "npm" + secrets.token_hex(3)
    prefix, port = "/netplugin/e2e-managed-" + secrets.token_hex(4), free_port()
    net = "ops-managed"
    driver = f"{MANAGED}:latest"
    try:
        build = subprocess.run(["bash", str(REPO / "packaging" / "managed" / "build.sh"), "--name", MANAGED],
                               capture_output=True, text=True, timeout=900)
        assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
        info = json.loads(docker("plugin", "inspect", MANAGED).stdout)[0]
        assert info["Config"]["Interface"]["Socket"] == "netplugin.sock"
        assert sorted(info["Config"]["Interface"]["Types"]) == ["docker.ipamdriver/1.0",
                                                                "docker.networkdriver/1.0"]
        docker("plugin", "set", MANAGED, f"NETPLUGIN_ETCD_ENDPOINTS={ETCD}", f"NETPLUGIN_ETCD_PREFIX={prefix}",
               f"NETPLUGIN_HOST_ID={host_id}", f"NETPLUGIN_BRIDGE={bridge}", "NETPLUGIN_DATAPATH_TYPE=netdev",
               f"NETPLUGIN_METRICS_ADDRESS=127.0.0.1:{port}")
        docker("plugin", "enable", MANAGED, timeout=60)
        wait_for("the managed plugin's /health", lambda: http_get(port, "/health", 2)[0] == 200, 30)
        remove_network(net)
        docker("network", "create", "-d", driver, "--ipam-driver", driver, "--subnet", "10.248.0.0/24",
               "-o", "vlan=248", net)
        start_container("ops-mg-a", net)
        start_container("ops-mg-b", net)
        b = ip_in("ops-mg-b", net)
        assert b.startswith("10.248.0."), b
        assert pings("ops-mg-a", b)
        assert len(ovs_ports(bridge)) == 2
        scrape = Scrape(port)
        assert scrape.value("netplugin_requests_total", method="NetworkDriver.Join", outcome="ok") == 2
        assert scrape.value("netplugin_endpoints", network=net, host=host_id) == 2
        remove_network(net)
        assert ovs_ports(bridge) == []
    finally:
        remove_network(net)
        drop_managed()
        run("ovs-vsctl", "--if-exists", "del-br", bridge, check=False)
        run("etcdctl", f"--endpoints={ETCD}", "del", "--prefix", prefix + "/", check=False)


# -- install, systemd units, uninstall ----------------------------------------------------------------

class Install:
    def __init__(self, root: Path):
        self.root = root
        self.prefix, self.bin, self.etc = root / "opt", root / "bin", root / "etc"
        self.units, self.doc = root / "units", root / "doc"
        self.host_id, self.bridge = "e2e-i" + secrets.token_hex(3), "npi" + secrets.token_hex(3)
        self.prefix_etcd = "/netplugin/e2e-install-" + secrets.token_hex(4)
        self.metrics_port = free_port()

    def args(self) -> list[str]:
        return ["--prefix", str(self.prefix), "--bin-dir", str(self.bin), "--etc-dir", str(self.etc),
                "--spec-dir", str(SPEC_DIR), "--name", INST_NAME, "--unit-dir", str(self.units),
                "--doc-dir", str(self.doc)]

    @property
    def config(self) -> Path:
        return self.etc / "netplugin.toml"

    @property
    def spec(self) -> Path:
        return SPEC_DIR / f"{INST_NAME}.json"

    def clean_env(self) -> dict:
        return {k: v for k, v in os.environ.items() if not k.startswith("NETPLUGIN_")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """scripts/install.sh into folders of its own, with a settings file written before
    (install keeps it): its own socket, bridge, etcd prefix and metrics port."""
    inst = Install(tmp_path_factory.mktemp("install"))
    check_socket_free(INST_SOCKET)
    inst.etc.mkdir(parents=True)
    inst.config.write_text(
        f'etcd_endpoints = ["{ETCD}"]\netcd_prefix = "{inst.prefix_etcd}"\nhost_id = "{inst.host_id}"\n'
        f'bridge = "{inst.bridge}"\ndatapath_type = "netdev"\nsocket = "{INST_SOCKET}"\n'
        f'metrics_address = "127.0.0.1:{inst.metrics_port}"\n')
    spec_dir_existed = SPEC_DIR.exists()
    proc = subprocess.run(["bash", str(REPO / "scripts" / "install.sh"), *inst.args(), "--systemd", "yes"],
                          capture_output=True, text=True, timeout=900, env=inst.clean_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    inst.install_log = proc.stderr
    try:
        yield inst
    finally:
        inst.spec.unlink(missing_ok=True)
        if not spec_dir_existed and SPEC_DIR.exists() and not any(SPEC_DIR.iterdir()):
            SPEC_DIR.rmdir()
        shutil.rmtree(os.path.dirname(INST_SOCKET), ignore_errors=True)
        run("etcdctl", f"--endpoints={ETCD}", "del", "--prefix", inst.prefix_etcd + "/", check=False)


def test_install_lays_out_the_files(installed):
    inst = installed
    current = inst.prefix / "current"
    assert current.is_symlink() and (current / "bin" / "netplugin").exists()
    for script in ("netplugin", "netctl", "netplugin-reconcile"):
        link = inst.bin / script
        assert link.is_symlink() and os.readlink(link) == str(current / "bin" / script)
    assert run(str(inst.bin / "netctl"), "version").stdout.strip().startswith("netctl ")
    assert "exists: left as it is" in inst.install_log          # the settings written before stay
    assert json.loads(inst.spec.read_text()) == {"Name": INST_NAME, "Addr": f"unix://{INST_SOCKET}"}
    assert (inst.doc / "README.md").exists() and (inst.doc / "operations.md").exists()
    unit = (inst.units / "netplugin.service").read_text()
    assert f"ExecStart={inst.bin}/netplugin --config {inst.config}" in unit
    assert "Before=docker.service" in unit and "openvswitch-switch.service" in unit


def test_install_is_a_clean_venv_with_the_constrained_versions(installed):
    """install.sh builds a fresh venv with pip -c requirements/constraints.txt: every
    package in it is at the version the constraints file pins, and scapy is not there."""
    pinned = {}
    for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, ver = line.split("==", 1)
            pinned[name.strip().lower().replace("_", "-").replace(".", "-")] = ver.strip()
    freeze = run(str(installed.prefix / "current" / "bin" / "python"), "-m", "pip", "freeze",
                 "--disable-pip-version-check", "--exclude-editable").stdout
    got = {}
    for line in freeze.splitlines():
        if "==" in line:
            name, ver = line.split("==", 1)
            got[name.strip().lower().replace("_", "-").replace(".", "-")] = ver.strip()
    got.pop("netplugin", None)                                 # the release itself, from the checkout
    assert "scapy" not in got                                   # a test dependency only
    unpinned = sorted(set(got) - set(pinned))
    assert unpinned == [], f"installed but not in the constraints file: {unpinned}"
    differ = {n: (got[n], pinned[n]) for n in got if got[n] != pinned[n]}
    assert differ == {}, differ


def test_install_writes_a_settings_skeleton_that_loads(tmp_path):
    """The skeleton packaging/netplugin.toml is what install.sh puts in place: it must load."""
    from netplugin.config import load
    cfg = load(str(REPO / "packaging" / "netplugin.toml"), env={})
    assert cfg.etcd_endpoints == ["http://127.0.0.1:2379"] and cfg.datapath_type == "system"
    assert cfg.socket == "/run/docker/plugins/netplugin.sock" and cfg.metrics_address == "127.0.0.1:9109"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(installed):
    units = [str(installed.units / u) for u in
             ("netplugin.service", "netplugin-reconcile.service", "netplugin-reconcile.timer",
              "drctl-agent.service")]
    proc = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "netplugin" not in proc.stderr, proc.stderr            # no warning about our units


def test_uninstall_stops_the_daemon_and_leaves_traffic_alone(installed, tmp_path):
    inst = installed
    net = "ops-inst"
    remove_network(net)
    log = open(tmp_path / "installed-daemon.log", "ab")
    daemon = subprocess.Popen([str(inst.bin / "netplugin"), "--config", str(inst.config)], env=inst.clean_env(),
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    restarted = None
    try:
        wait_for("the installed daemon listens", lambda: os.path.exists(INST_SOCKET) and http_get(
            inst.metrics_port, "/health", 2)[0] == 200, 30)
        docker("network", "create", "-d", INST_NAME, "--ipam-driver", INST_NAME, "--subnet", "10.243.0.0/24",
               "-o", "vlan=243", net)
        start_container("ops-inst-a", net)
        start_container("ops-inst-b", net)
        b = ip_in("ops-inst-b", net)
        assert pings("ops-inst-a", b)
        ports_before = ovs_ports(inst.bridge)
        tags_before = run("ovs-vsctl", "--columns=name,tag", "list", "port", *ports_before).stdout
        veths_before = {name for name in links() if name.startswith(("np", "nc")) and name[2:] in
                        {p[2:] for p in ports_before}}
        assert len(ports_before) == 2 and len(veths_before) >= 2

        # ping all along the uninstall
        pinger = subprocess.Popen([DOCKER, "exec", "ops-inst-a", "ping", "-c", "40", "-i", "0.25", "-W", "1", b],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(2)
        proc = subprocess.run(["bash", str(REPO / "scripts" / "uninstall.sh"), *inst.args()],
                              capture_output=True, text=True, timeout=120, env=inst.clean_env())
        assert proc.returncode == 0, proc.stderr
        assert daemon.wait(20) is not None                           # stopped by uninstall.sh
        out, _ = pinger.communicate(timeout=60)
        sent, got = map(int, re.search(r"(\d+) packets transmitted, (\d+) packets received", out).groups())
        assert sent == 40 and got >= 38, out                        # traffic went on through the uninstall

        assert not os.path.exists(INST_SOCKET)
        assert not inst.spec.exists() and not inst.prefix.exists() and not (inst.units / "netplugin.service").exists()
        assert not any((inst.bin / s).is_symlink() for s in ("netplugin", "netctl", "netplugin-reconcile"))
        assert inst.config.exists()                                   # settings stay without --purge
        assert ovs_ports(inst.bridge) == ports_before
        assert run("ovs-vsctl", "--columns=name,tag", "list", "port", *ports_before).stdout == tags_before
        assert veths_before <= links()
        assert pings("ops-inst-a", b, count=3)
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(20)
        log.close()
        # Docker needs a daemon behind the name to take its containers and network down.
        write_spec(INST_NAME, INST_SOCKET)
        restarted = Plugin(tmp_path, socket=INST_SOCKET, prefix=inst.prefix_etcd)
        restarted.host_id, restarted.bridge = inst.host_id, inst.bridge
        restarted.env.update(NETPLUGIN_HOST_ID=inst.host_id, NETPLUGIN_BRIDGE=inst.bridge,
                             NETPLUGIN_METRICS_ADDRESS=f"127.0.0.1:{free_port()}")
        try:
            restarted.start()
            remove_network(net)
        finally:
            finish_plugin(restarted)
            inst.spec.unlink(missing_ok=True)

