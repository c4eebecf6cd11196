"""Fixtures of the integration ring: real etcd, real Open vSwitch (userspace
datapath), real veths and network namespaces.

Isolation: every test gets its own etcd key prefix, its own bridge
('nptest' + 6 hex), veths named from random 64-hex endpoint ids and
namespaces 'nptest-<hex>'; all of it is removed afterwards, also when the
test failed. Nothing made by anyone else is touched.

A missing etcd or OVS is a FAILURE, never a skip: CI runs this ring and a
skip would hide a broken machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
import uuid

import pytest

from netplugin.dataplane.links import Links, veth_names
from netplugin.dataplane.ovs import Switch
from netplugin.errors import NetpluginError
from netplugin.kv import Delete, EtcdKV
from netplugin.store import Store
from tests.harness import netns as nskit
from tests.harness import proc
from tests.harness.etcd import ETCD

OVSDB = os.environ.get("NETPLUGIN_TEST_OVSDB", "unix:/var/run/openvswitch/db.sock")


# -- helpers -------------------------------------------------------------------------

def run(args: list[str], check: bool = True, timeout: float = 20, **kw) -> subprocess.CompletedProcess:
    """Run an argument list (never a shell string); on failure show its output."""
    return proc.run(args, check=check, timeout=timeout, **kw)


def vsctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["ovs-vsctl", f"--db={OVSDB}", "--timeout=10", *args], check=check)


def _ovs_value(raw):
    """Decode one OVSDB JSON cell: ["set", [...]], ["map", [[k, v], ...]], ["uuid", x] or a plain atom."""
    if isinstance(raw, list) and len(raw) == 2 and raw[0] in ("set", "map", "uuid"):
        kind, val = raw
        if kind == "set":
            return [_ovs_value(v) for v in val]
        if kind == "map":
            return {k: _ovs_value(v) for k, v in val}
        return val
    return raw


def ovs_find(table: str, *conditions: str, columns: list[str]) -> list[dict]:
    """`ovs-vsctl --format=json find TABLE COND...` as a list of {column: value}."""
    out = vsctl("--format=json", f"--columns={','.join(columns)}", "find", table, *conditions).stdout
    doc = json.loads(out)
    return [dict(zip(doc["headings"], (_ovs_value(c) for c in row))) for row in doc["data"]]


def random_endpoint_id() -> str:
    return secrets.token_hex(32)


def new_prefix() -> str:
    return f"/netplugin/test-{uuid.uuid4().hex}"


def delete_prefix(kv: EtcdKV, prefix: str) -> None:
    kv.txn([], [Delete(prefix + "/", prefix=True)])


def keys_under(kv: EtcdKV, prefix: str) -> list[str]:
    return [i.key for i in kv.get_prefix(prefix + "/", keys_only=True)]


# -- etcd ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def etcd_endpoint() -> str:
    """The etcd URL, checked once: unreachable etcd fails every test that needs it."""
    kv = EtcdKV([ETCD], timeout=3)
    try:
        kv.get("/netplugin/test-probe")
    except NetpluginError as exc:
        pytest.fail(f"etcd is not reachable at {ETCD} (set NETPLUGIN_TEST_ETCD to override): {exc.message}. "
                    "Start it with scripts/services.sh; the integration ring needs a real etcd.", pytrace=False)
    finally:
        kv.close()
    return ETCD


@pytest.fixture
def prefix(etcd_endpoint):
    """A fresh key prefix; everything under it is deleted afterwards."""
    p = new_prefix()
    yield p
    kv = EtcdKV([etcd_endpoint], timeout=3)
    try:
        delete_prefix(kv, p)
    finally:
        kv.close()


@pytest.fixture
def kv(etcd_endpoint):
    k = EtcdKV([etcd_endpoint], timeout=3)
    yield k
    k.close()


@pytest.fixture
def store(kv, prefix) -> Store:
    return Store(kv, prefix)


# -- Open vSwitch --------------------------------------------------------------------

@pytest.fixture(scope="session")
def ovs_ready() -> str:
    """OVSDB and ovs-vswitchd are up: fail (not skip) otherwise."""
    missing = [tool for tool in ("ovs-vsctl", "ip", "ping", "ethtool") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"the integration ring needs {', '.join(missing)} on PATH (install openvswitch-switch, "
                    "iproute2, iputils-ping, ethtool)", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the integration ring needs root (veths, namespaces, OVS)", pytrace=False)
    done = run(["ovs-vsctl", f"--db={OVSDB}", "--timeout=5", "show"], check=False)
    if done.returncode != 0:
        pytest.fail(f"Open vSwitch is not reachable at {OVSDB} (set NETPLUGIN_TEST_OVSDB to override): "
                    f"{done.stderr.strip()}. Start it with /usr/share/openvswitch/scripts/ovs-ctl start.",
                    pytrace=False)
    # ovs-vswitchd itself must answer too, or bridges are made in the database only.
    done = run(["ovs-appctl", "--timeout=5", "version"], check=False)
    if done.returncode != 0:
        pytest.fail(f"ovs-vswitchd is not running: {done.stderr.strip()}", pytrace=False)
    return OVSDB


@pytest.fixture(scope="session")
def switch(ovs_ready):
    """One Switch for the whole run. ovsdbapp keeps ONE connection per process
    (a class attribute of its backend) and Switch.close() stops it, after which
    every reopen in this process crawls through OVS's reconnect back-off (see
    test_switch_reopens_after_close): so no test here closes a Switch."""
    return Switch(ovs_ready, timeout=10)


def new_bridge_name() -> str:
    return "nptest" + secrets.token_hex(3)


@pytest.fixture
def bridge(ovs_ready):
    """A bridge name nobody uses; the bridge (made by the test or the code) is deleted afterwards."""
    name = new_bridge_name()
    yield name
    vsctl("--if-exists", "del-br", name, check=False)


@pytest.fixture
def links() -> Links:
    return Links()


class VethFactory:
    """Hands out veth names from random endpoint ids and deletes the pairs afterwards."""

    def __init__(self):
        self.made: list[str] = []

    def names(self) -> tuple[str, str, str]:
        endpoint_id = random_endpoint_id()
        host, peer = veth_names(endpoint_id)
        self.made.append(host)
        self.made.append(peer)
        return endpoint_id, host, peer

    def pair(self) -> tuple[str, str]:
        """A plain veth pair made with `ip` (for uplinks)."""
        _, host, peer = self.names()
        run(["ip", "link", "add", host, "type", "veth", "peer", "name", peer])
        run(["ip", "link", "set", host, "up"])
        run(["ip", "link", "set", peer, "up"])
        return host, peer

    def cleanup(self) -> None:
        for name in self.made:
            if run(["ip", "link", "show", "dev", name], check=False).returncode == 0:
                run(["ip", "link", "del", "dev", name], check=False)


@pytest.fixture
def veths(ovs_ready):
    f = VethFactory()
    yield f
    f.cleanup()


@pytest.fixture
def netns(ovs_ready):
    f = nskit.Namespaces("nptest-")
    yield f
    f.cleanup()


# -- namespace helpers ---------------------------------------------------------------

def move_into(ns: str, ifname: str, address: str, new_name: str | None = None) -> str:
    """Move a link into ns (optionally renaming it), give it address (a.b.c.d/len), bring it up."""
    return nskit.adopt(ns, ifname, address, new_name=new_name)


ping = nskit.ping


def ping_until(ns: str, address: str, within: float = 10.0) -> subprocess.CompletedProcess:
    """Ping until a reply comes (the first packets can go to ARP and flow setup)."""
    stop = time.monotonic() + within
    while True:
        done = ping(ns, address)
        if done.returncode == 0 or time.monotonic() > stop:
            return done


TCP_SERVER = r"""
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(1)
srv.settimeout(float(sys.argv[3]))
print("listening", flush=True)
conn, _ = srv.accept()
conn.settimeout(float(sys.argv[3]))
total = 0
while True:
    data = conn.recv(1 << 16)
    if not data:
        break
    total += len(data)
conn.sendall(str(total).encode())
conn.close()
print(total, flush=True)
"""

TCP_CLIENT = r"""
import socket, sys, time
size = int(sys.argv[3])
start = time.monotonic()
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]))
chunk = b"x" * (1 << 16)
sent = 0
while sent < size:
    n = min(len(chunk), size - sent)
    s.sendall(chunk[:n])
    sent += n
s.shutdown(socket.SHUT_WR)
reply = b""
while True:
    data = s.recv(64)
    if not data:
        break
    reply += data
print(reply.decode(), time.monotonic() - start, flush=True)
"""


def tcp_transfer(server_ns: str, server_ip: str, client_ns: str, size: int, timeout: float = 30.0) -> tuple[int, float]:
    """Send size bytes over TCP from client_ns to server_ns; returns (bytes the server got, seconds).

    Raises AssertionError when the connection or the transfer fails."""
    import sys
    port = "5201"
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, sys.executable, "-c", TCP_SERVER,
                               server_ip, port, str(timeout)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert line.strip() == "listening", f"TCP server did not start: {line!r} {server.stderr.read()}"
        client = run(["ip", "netns", "exec", client_ns, sys.executable, "-c", TCP_CLIENT,
                      server_ip, port, str(size), str(timeout)], check=False, timeout=timeout + 10)
        assert client.returncode == 0, f"TCP client failed: {client.stderr.strip()[-500:]}"
        got, seconds = client.stdout.split()
        return int(got), float(seconds)
    finally:
        try:
            server.wait(timeout=timeout + 5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# Test modules reach the helpers above through this fixture, never through
# `import conftest`: with several conftest.py files in one run that name is ambiguous.
@pytest.fixture(scope="session")
def h():
    import types
    return types.SimpleNamespace(
        run=run, vsctl=vsctl, ovs_find=ovs_find, random_endpoint_id=random_endpoint_id,
        new_prefix=new_prefix, delete_prefix=delete_prefix, keys_under=keys_under,
        new_bridge_name=new_bridge_name, move_into=move_into, ping=ping, ping_until=ping_until,
        tcp_transfer=tcp_transfer, etcd=ETCD, ovsdb=OVSDB)
