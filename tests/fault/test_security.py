"""Security of the daemon as it runs: who may use its socket, what it listens
on, etcd with TLS client certificates and a password, and hostile names.

* The socket is mode 0660, owned by root:root, or root:<group> with
  socket_group; an unprivileged process cannot connect, a member of the group can.
* The daemon's processes listen on no TCP port but the metrics port, and only
  on 127.0.0.1 (read from /proc/net/tcp and tcp6 by the sockets the
  processes hold); with metrics off, on none; a non-loopback metrics address is
  refused at start.
* An etcd started here that demands a client certificate and a password
  (helpers of tests/integration/test_etcd_cluster.py): netctl creates a
  network, the daemon serves Docker (`docker run` on it), and without the
  credentials both fail with a message.
* Hostile names and options (shell metacharacters, control characters,
  non-ASCII, paths) through the protocol, through Docker and through netctl are
  refused with a message that says what is wrong, and nothing reaches OVS or
  the kernel: no OVSDB row and no link carries them, etcd is unchanged, and
  the daemon's own calls of ovs-ofctl/ovs-vsctl/ip (logged by wrappers put
  first on its PATH) never carry them.
"""

from __future__ import annotations

import grp
import json
import os
import secrets
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from netplugin.kv import Delete, EtcdKV
from tests.integration.test_etcd_cluster import secure_etcd  # noqa: F401  (the fixture)

from .conftest import ETCD, IMAGE, FaultDaemon, docker, free_port, links, run

GENERIC = "com.docker.network.generic"
MARK = "zq7"          # in every hostile string, so it can be searched for everywhere
HOSTILE = [f"{MARK};reboot", f"{MARK}$(id)", f"{MARK}`id`", f"{MARK} x", f"{MARK}\nx", f"{MARK}|nc", f"{MARK}&",
           f"../{MARK}", f"{MARK}\u202eexe", f"{MARK}é", f"{MARK}名", f"-{MARK}", f"{MARK}'\"", f"{MARK}>x",
           f"{MARK}\x00", f"{MARK}" + "a" * 80, f"{MARK}*", f"{MARK}\t"]


# -- the socket ------------------------------------------------------------------------------

def connect_as(path: str, user: str, group: str | None = None) -> subprocess.CompletedProcess:
    """Try to connect to the unix socket as another user (and group); prints 'ok' or the error."""
    code = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
            "try:\n    s.connect(sys.argv[1]); print('ok')\nexcept OSError as e:\n    print(type(e).__name__)\n")
    return subprocess.run(["/usr/bin/python3", "-c", code, path], user=user, group=group or user,
                          extra_groups=[group] if group else [], capture_output=True, text=True, timeout=20,
                          cwd="/")


def socket_inode_access(sock: str, user: str, group: str) -> str:
    """Connect as user:group through a hard link of the socket in a directory anyone
    may enter, so that only the socket's own mode and owner decide (dockerd keeps
    /run/docker at 0700, which alone refuses everyone but root)."""
    d = Path("/run") / ("npfa-perm-" + secrets.token_hex(3))
    d.mkdir(mode=0o755)
    try:
        d.chmod(0o755)
        os.link(sock, d / "s.sock")
        return connect_as(str(d / "s.sock"), user, group).stdout.strip()
    finally:
        for f in d.iterdir():
            f.unlink()
        d.rmdir()


def test_socket_is_root_only(tmp_path):
    d = FaultDaemon(tmp_path, "npfa3")
    d.start()
    try:
        st = os.stat(d.socket)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660, oct(st.st_mode)
        assert (st.st_uid, st.st_gid) == (0, 0), (st.st_uid, st.st_gid)
        assert connect_as(d.socket, "nobody", "nogroup").stdout.strip() == "PermissionError"
        assert socket_inode_access(d.socket, "nobody", "nogroup") == "PermissionError"
    finally:
        d.stop()
        d.remove_bridge()
    group = grp.getgrnam("backup")      # a system group with no other use here
    g = FaultDaemon(tmp_path, "npfa3", env={"NETPLUGIN_SOCKET_GROUP": group.gr_name})
    g.start()
    try:
        st = os.stat(g.socket)
        assert stat.S_IMODE(st.st_mode) == 0o660, oct(st.st_mode)
        assert (st.st_uid, st.st_gid) == (0, group.gr_gid), (st.st_uid, st.st_gid)
        assert socket_inode_access(g.socket, "nobody", "nogroup") == "PermissionError"
        # The check can pass: a member of the configured group gets in.
        assert socket_inode_access(g.socket, "nobody", group.gr_name) == "ok"
    finally:
        g.stop()
        g.remove_bridge()


# -- listeners -------------------------------------------------------------------------------

def listening(pids: list[int]) -> list[tuple[str, str, int]]:
    """(proto, address, port) of every listening TCP socket and bound UDP socket the processes hold."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except FileNotFoundError:
            pass
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        with open(f"/proc/net/{proto}") as f:
            next(f)
            for line in f:
                cols = line.split()
                local, state, inode = cols[1], cols[3], cols[9]
                if inode not in inodes or (proto.startswith("tcp") and state != "0A"):
                    continue
                hexaddr, hexport = local.split(":")
                raw = bytes.fromhex(hexaddr)
                if len(raw) == 4:
                    addr = socket.inet_ntop(socket.AF_INET, raw[::-1])
                else:
                    addr = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
                found.append((proto, addr, int(hexport, 16)))
    return sorted(found)


def test_only_loopback_metrics_listens(tmp_path):
    port = free_port()
    d = FaultDaemon(tmp_path, "npfa3", metrics=f"127.0.0.1:{port}")
    d.start()
    try:
        pids = d.pids()
        assert len(pids) >= 2, f"expected gunicorn's arbiter and worker: {pids}"
        deadline = time.monotonic() + 10
        while (found := listening(pids)) != [("tcp", "127.0.0.1", port)] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert found == [("tcp", "127.0.0.1", port)], found
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.status == 200 and b"netplugin_" in resp.read()
        ss = run(["ss", "-Hltnp"]).stdout
        mine = [line for line in ss.splitlines() if any(f"pid={p}," in line for p in pids)]
        assert len(mine) == 1 and f"127.0.0.1:{port}" in mine[0], mine
    finally:
        d.stop()
        d.remove_bridge()
    off = FaultDaemon(tmp_path, "npfa3")            # metrics off: no port at all
    off.start()
    try:
        time.sleep(1)
        assert listening(off.pids()) == []
    finally:
        off.stop()
        off.remove_bridge()
    wide = FaultDaemon(tmp_path, "npfa3", metrics=f"0.0.0.0:{port}")
    wide.proc = subprocess.Popen([sys.executable, "-m", "netplugin.daemon"], env=wide.env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, start_new_session=True)
    out, err = wide.proc.communicate(timeout=30)
    assert wide.proc.returncode == 2 and "loopback" in err, (wide.proc.returncode, err)


# -- etcd with TLS and a password ---------------------------------------------------------------

def test_daemon_and_netctl_with_tls_and_password(secure_etcd, tmp_path):  # noqa: F811
    s = secure_etcd
    creds = {"NETPLUGIN_ETCD_CACERT": str(s["ca"]), "NETPLUGIN_ETCD_CERT": str(s["cert"]),
             "NETPLUGIN_ETCD_KEY": str(s["key"]), "NETPLUGIN_ETCD_USER": "np",
             "NETPLUGIN_ETCD_PASSWORD": "np-secret"}
    d = FaultDaemon(tmp_path, "npfa3", etcd=s["url"], env=creds)
    network = "npfa-tls-" + secrets.token_hex(3)
    made = d.netctl("network", "create", "sec", "--subnet", "10.250.203.0/24", "--vlan", "3503", "--json")
    assert made.returncode == 0, made.stderr
    d.start()
    name = "npfa-tls-c-" + secrets.token_hex(3)
    try:
        docker("network", "create", "-d", "npfa3", "--ipam-driver", "npfa3", "--subnet", "10.250.203.0/24",
               "-o", "name=sec", network)
        docker("run", "-d", "--name", name, "--label", "netplugin.fault=tls", "--network", network, IMAGE,
               "sleep", "60")
        ip = docker("inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}',
                    name).stdout.strip()
        assert ip.startswith("10.250.203."), ip
        eps = json.loads(d.netctl("endpoint", "ls", "--json").stdout)
        assert [(e["ip"], e["host"]) for e in eps] == [(ip, d.host_id)], eps
        docker("rm", "-f", name)
        assert json.loads(d.netctl("endpoint", "ls", "--json").stdout) == []

        # Without the password, or without the client certificate: refused, with a message.
        for what, drop in (("no password", ("NETPLUGIN_ETCD_USER", "NETPLUGIN_ETCD_PASSWORD")),
                           ("no client certificate", ("NETPLUGIN_ETCD_CERT", "NETPLUGIN_ETCD_KEY"))):
            env = {k: v for k, v in d.env.items() if k not in drop}
            proc = run([sys.executable, "-m", "netplugin.cli.main", "network", "ls"], check=False, env=env)
            assert proc.returncode == 1 and "netctl: " in proc.stderr and "Traceback" not in proc.stderr, \
                (what, proc.returncode, proc.stderr)
        bad = FaultDaemon(tmp_path, "npfa4", etcd=s["url"], prefix=d.prefix,
                          env={**creds, "NETPLUGIN_ETCD_PASSWORD": "wrong"})
        bad.start()
        try:
            t0 = time.monotonic()
            status, reply = bad.call("IpamDriver.RequestPool", {"Pool": "10.250.203.0/24", "Options": {}})
            assert status >= 500 and reply.get("Err"), (status, reply)
            assert "auth" in reply["Err"].lower() or "password" in reply["Err"].lower() \
                or "store unavailable" in reply["Err"], reply
            assert time.monotonic() - t0 < 10
            print(f"\nwrong etcd password: {status} in {time.monotonic() - t0:.2f} s: {reply['Err'][:200]}")
        finally:
            bad.stop()
            bad.remove_bridge()
    except AssertionError:
        print(d.tail())
        raise
    finally:
        docker("rm", "-f", name, check=False)
        docker("network", "rm", network, check=False)
        d.stop()
        d.remove_bridge()


# -- hostile names -----------------------------------------------------------------------------

WRAPPER = """#!{python}
import json, os, sys
with open({log!r}, "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\\n")
os.execv({real!r}, [{real!r}] + sys.argv[1:])
"""


def shim(tmp: Path) -> tuple[Path, Path]:
    """A directory of wrappers that log every call of ovs-vsctl, ovs-ofctl, ovs-appctl and ip."""
    d, log = tmp / "shim", tmp / "calls.log"
    d.mkdir()
    log.touch()
    for tool in ("ovs-vsctl", "ovs-ofctl", "ovs-appctl", "ip", "ethtool"):
        real = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        assert real, f"{tool} is not installed"
        (d / tool).write_text(WRAPPER.format(python=sys.executable, log=str(log), real=real))
        (d / tool).chmod(0o755)
    return d, log


def ovsdb_text() -> str:
    """Every name and external_id in OVSDB's Bridge, Port and Interface tables."""
    return "".join(run(["ovs-vsctl", "--timeout=10", "--format=json", "--columns=name,external_ids", "list",
                        table]).stdout for table in ("Bridge", "Port", "Interface"))


def marked(text: str) -> bool:
    return MARK in text


def test_hostile_names_never_reach_ovs_or_the_kernel(tmp_path):
    shim_dir, calls = shim(tmp_path)
    d = FaultDaemon(tmp_path, "npfa3", env={"PATH": f"{shim_dir}:{os.environ['PATH']}"})
    subnet, net_id, ep_id = "10.250.204.0/24", secrets.token_hex(32), secrets.token_hex(32)
    kv = EtcdKV([ETCD], timeout=3)
    network = "npfa-sec-" + secrets.token_hex(3)
    d.start()
    try:
        assert d.netctl("network", "create", "good", "--subnet", subnet, "--vlan", "3504").returncode == 0
        ok, pool = d.call("IpamDriver.RequestPool", {"Pool": subnet, "Options": {}})
        assert ok == 200, pool
        ipv4 = [{"AddressSpace": "netplugin", "Pool": subnet, "Gateway": "10.250.204.1/24", "AuxAddresses": {}}]
        ok, reply = d.call("NetworkDriver.CreateNetwork", {"NetworkID": net_id, "Options": {GENERIC: {"name": "good"}},
                                                           "IPv4Data": ipv4})
        assert ok == 200, reply
        # A real endpoint first: the wrappers must see the daemon's own calls, or they prove nothing.
        ok, addr = d.call("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": ""})
        assert ok == 200, addr
        ok, reply = d.call("NetworkDriver.CreateEndpoint", {"NetworkID": net_id, "EndpointID": ep_id,
                                                            "Interface": {"Address": addr["Address"]}})
        assert ok == 200, reply
        deadline = time.monotonic() + 15
        while "ovs-ofctl" not in calls.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "ovs-ofctl" in calls.read_text(), "the daemon's ovs-ofctl calls did not go through the wrappers"

        before_keys = sorted(i.key for i in kv.get_prefix(d.prefix + "/", keys_only=True)
                             if "/hostinfo/" not in i.key)
        before_ports = d.ovs_ports()
        refused = 0
        for bad in HOSTILE:
            cases = [
                ("NetworkDriver.CreateNetwork", {"NetworkID": secrets.token_hex(32),
                                                 "Options": {GENERIC: {"name": bad, "vlan": "3505"}}, "IPv4Data": ipv4}),
                ("NetworkDriver.CreateNetwork", {"NetworkID": secrets.token_hex(32),
                                                 "Options": {GENERIC: {"vlan": "35" + bad}}, "IPv4Data": ipv4}),
                ("NetworkDriver.CreateNetwork", {"NetworkID": secrets.token_hex(32),
                                                 "Options": {GENERIC: {"profile": bad, "name": "good"}},
                                                 "IPv4Data": ipv4}),
                ("NetworkDriver.CreateNetwork", {"NetworkID": secrets.token_hex(32),
                                                 "Options": {GENERIC: {bad: "1", "name": "good"}}, "IPv4Data": ipv4}),
                ("NetworkDriver.CreateNetwork", {"NetworkID": bad, "Options": {GENERIC: {"name": "good"}},
                                                 "IPv4Data": ipv4}),
                ("NetworkDriver.CreateNetwork", {"NetworkID": secrets.token_hex(32),
                                                 "Options": {GENERIC: {"name": "good"}},
                                                 "IPv4Data": [{**ipv4[0], "AuxAddresses": {bad: "10.250.204.9"}}]}),
                ("NetworkDriver.CreateEndpoint", {"NetworkID": net_id, "EndpointID": bad,
                                                  "Interface": {"Address": "10.250.204.77/24"}}),
                ("NetworkDriver.CreateEndpoint", {"NetworkID": net_id, "EndpointID": secrets.token_hex(32),
                                                  "Interface": {"Address": "10.250.204.78/24",
                                                                "MacAddress": "02:42:0a:fa:cc:4e" + bad}}),
                ("NetworkDriver.CreateEndpoint", {"NetworkID": bad, "EndpointID": secrets.token_hex(32),
                                                  "Interface": {"Address": "10.250.204.79/24"}}),
                ("NetworkDriver.Join", {"NetworkID": net_id, "EndpointID": bad, "SandboxKey": "/var/run/docker/netns/x"}),
                ("IpamDriver.RequestPool", {"Pool": bad, "Options": {}}),
                ("IpamDriver.RequestPool", {"Pool": subnet, "Options": {bad: bad}}),
                ("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "10.250.204.80" + bad}),
                ("IpamDriver.RequestAddress", {"PoolID": bad, "Address": ""}),
                ("NetPlugin.ReleaseEndpoint", {"EndpointID": bad}),
                ("NetPlugin.ReleaseEndpoint", {"Network": bad, "Address": "10.250.204.5"}),
            ]
            for method, body in cases:
                status, reply = d.call(method, body)
                assert 400 <= status < 500 and reply.get("Err"), (method, body, status, reply)
                # The message says what is wrong, not only that something is.
                assert any(w in reply["Err"] for w in ("invalid", "not a", "unknown", "does not exist", "must be",
                                                       "is not", "prefix length")), (method, body, reply)
                refused += 1

        # Through Docker: docker network create with a hostile -o name.
        made = docker("network", "create", "-d", "npfa3", "--ipam-driver", "npfa3", "--subnet", subnet,
                      "-o", f"name={MARK};reboot", network, check=False)
        assert made.returncode != 0 and "network name" in made.stderr and "invalid" in made.stderr, made.stderr

        # Through netctl: exit 1 or 2 with a message, never a traceback.
        # (each netctl call is a Python start: a sample of the strings keeps this short)
        for bad in (HOSTILE[0], HOSTILE[1], HOSTILE[2], HOSTILE[4], HOSTILE[8], HOSTILE[10]):
            for args in (["network", "create", bad, "--subnet", "10.250.205.0/24", "--vlan", "3506"],
                         ["network", "create", "okname", "--subnet", "10.250.205.0/24", "--vlan", "35" + bad],
                         ["network", "create", "okname", "--subnet", "10.250.205.0/24", "--vlan", "3506",
                          "--aux-address", f"{bad}=10.250.205.9"],
                         ["profile", "create", bad, "--rate", "10mbit"],
                         ["network", "set", "good", "--profile", bad],
                         ["endpoint", "set", bad, "--rate", "10mbit"],
                         ["endpoint", "release", bad],
                         ["network", "rm", bad]):
                proc = d.netctl(*args)
                assert proc.returncode in (1, 2), (args, proc.returncode, proc.stdout, proc.stderr)
                assert "netctl" in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
                refused += 1
        print(f"\n{refused} hostile requests refused ({len(HOSTILE)} hostile strings)")

        after_keys = sorted(i.key for i in kv.get_prefix(d.prefix + "/", keys_only=True) if "/hostinfo/" not in i.key)
        assert after_keys == before_keys, sorted(set(after_keys) ^ set(before_keys))
        assert d.ovs_ports() == before_ports
        assert not any(marked(n) for n in links()), "a hostile string reached a link name"
        assert not marked(ovsdb_text()), "a hostile string reached OVSDB"
        assert not marked(run(["ip", "-d", "-j", "link", "show"]).stdout), "a hostile string reached a link"
        logged = calls.read_text()
        assert not marked(logged), [line for line in logged.splitlines() if marked(line)]
        assert d.answers()
    except AssertionError:
        print(d.tail())
        raise
    finally:
        d.call("NetworkDriver.DeleteEndpoint", {"NetworkID": net_id, "EndpointID": ep_id})
        d.stop()
        docker("network", "rm", network, check=False)
        kv.txn([], [Delete(d.prefix + "/", prefix=True)])
        kv.close()
        d.remove_bridge()


def test_sandbox_key_is_checked(tmp_path):
    """Join's SandboxKey is stored and later handed to the kernel by the reconciler
    (setns on that path): only a plain absolute path is taken."""
    d = FaultDaemon(tmp_path, "npfa3")
    subnet, net_id, ep_id = "10.250.206.0/24", secrets.token_hex(32), secrets.token_hex(32)
    kv = EtcdKV([ETCD], timeout=3)
    d.start()
    try:
        assert d.netctl("network", "create", "sbx", "--subnet", subnet, "--vlan", "3507").returncode == 0
        status, pool = d.call("IpamDriver.RequestPool", {"Pool": subnet, "Options": {}})
        assert status == 200
        assert d.call("NetworkDriver.CreateNetwork", {"NetworkID": net_id, "Options": {GENERIC: {"name": "sbx"}},
                      "IPv4Data": [{"AddressSpace": "netplugin", "Pool": subnet, "Gateway": "10.250.206.1/24"}]})[0] == 200
        status, addr = d.call("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": ""})
        assert d.call("NetworkDriver.CreateEndpoint", {"NetworkID": net_id, "EndpointID": ep_id,
                                                       "Interface": {"Address": addr["Address"]}})[0] == 200
        accepted = []
        for bad in (f"/var/run/docker/netns/{MARK};reboot", f"/var/run/docker/netns/../../../proc/1/ns/{MARK}",
                    f"{MARK}/relative", f"/var/run/docker/netns/{MARK}$(id)", f"/var/run/docker/netns/{MARK}\n",
                    f"/var/run/docker/netns/{MARK}\u202e"):
            status, reply = d.call("NetworkDriver.Join", {"NetworkID": net_id, "EndpointID": ep_id, "SandboxKey": bad})
            if status == 200:
                accepted.append(bad)
            else:
                assert 400 <= status < 500 and "SandboxKey" in reply.get("Err", ""), reply
        stored = [json.loads(i.value).get("sandbox") for i in kv.get_prefix(d.prefix + "/net-endpoints/")]
        assert not accepted, f"Join took hostile SandboxKeys {accepted!r}; the record now holds {stored!r}"
        status, reply = d.call("NetworkDriver.Join", {"NetworkID": net_id, "EndpointID": ep_id,
                                                      "SandboxKey": "/var/run/docker/netns/0123456789ab"})
        assert status == 200, reply
    finally:
        d.call("NetworkDriver.DeleteEndpoint", {"NetworkID": net_id, "EndpointID": ep_id})
        d.stop()
        kv.txn([], [Delete(d.prefix + "/", prefix=True)])
        kv.close()
        d.remove_bridge()
