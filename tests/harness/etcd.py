"""etcd for the tests and benchmarks: etcdctl, the shared etcd's keys, a
member of our own, a 3-member cluster on 127.0.0.1, and a member with TLS
client certificates and password authentication."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from .proc import Failed, free_ports, stop_group, tail

ETCD = os.environ.get("NETPLUGIN_TEST_ETCD", "http://127.0.0.1:2379")   # the shared etcd
ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"


def etcdctl(endpoints: str, *args: str, timeout: float = 15, extra: list[str] | None = None,
            check: bool = True, command_timeout: float = 5) -> subprocess.CompletedProcess:
    """etcdctl (API 3) against endpoints (comma-separated); extra: TLS/auth flags."""
    proc = subprocess.run(["etcdctl", f"--endpoints={endpoints}", "--dial-timeout=2s",
                           f"--command-timeout={command_timeout:g}s", *(extra or []), *args],
                          check=False, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, ETCDCTL_API="3"))
    if check and proc.returncode != 0:
        raise Failed(f"etcdctl {' '.join(args)}: {proc.stderr}")
    return proc


def keys(endpoints: str, prefix: str) -> list[str]:
    """Every key under prefix."""
    out = etcdctl(endpoints, "get", "--prefix", "--keys-only", prefix, timeout=60, command_timeout=55).stdout
    return [line for line in out.splitlines() if line.strip()]


def delete_prefix(endpoints: str, prefix: str, check: bool = False) -> None:
    """Delete every key under prefix (which must end with '/': never a sibling's keys)."""
    assert prefix.endswith("/"), prefix
    etcdctl(endpoints, "del", "--prefix", prefix, timeout=120, command_timeout=115, check=check)


class Member:
    """One etcd process on 127.0.0.1, its data directory and log."""

    def __init__(self, name: str, client_port: int, peer_port: int, data: Path, log: Path):
        self.name = name
        self.client = f"http://127.0.0.1:{client_port}"
        self.peer = f"http://127.0.0.1:{peer_port}"
        self.data = data
        self.log = log
        self.proc: subprocess.Popen | None = None

    @classmethod
    def single(cls, name: str, folder: Path) -> Member:
        """A one-member cluster on free ports, data in folder/name."""
        client, peer = free_ports(2)
        return cls(name, client, peer, folder / name, folder / f"{name}.log")

    def start(self, cluster: str | None = None, token: str | None = None, extra: list[str] | None = None) -> None:
        """Start it (again: the data directory keeps the member); cluster:
        'name=peer,...' of all members (default: itself alone)."""
        self.data.mkdir(parents=True, exist_ok=True)
        self.data.chmod(0o700)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [ETCD_BIN, "--name", self.name, "--data-dir", str(self.data),
                 "--listen-client-urls", self.client, "--advertise-client-urls", self.client,
                 "--listen-peer-urls", self.peer, "--initial-advertise-peer-urls", self.peer,
                 "--initial-cluster", cluster or f"{self.name}={self.peer}",
                 "--initial-cluster-token", token or "nptest-" + self.name,
                 "--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", "stderr",
                 # As docs/etcd.md asks of production members: without pre-vote (off by
                 # default before etcd 3.5) a member that comes back calls an election
                 # of its own and stalls the cluster a second time.
                 "--pre-vote",
                 *(extra or [])],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self, within: float = 30, extra: list[str] | None = None) -> None:
        deadline = time.monotonic() + within
        while etcdctl(self.client, "endpoint", "health", extra=extra, check=False).returncode != 0:
            if self.proc is None or self.proc.poll() is not None:
                raise Failed(f"etcd {self.name} exited:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise Failed(f"etcd {self.name} did not become healthy in {within:g} s:\n{self.tail()}")
            time.sleep(0.3)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, grace: float = 20) -> None:
        """SIGTERM, as an operator stops it; SIGKILL after grace seconds."""
        stop_group(self.proc, signal.SIGTERM, grace)

    def tail(self, chars: int = 3000) -> str:
        return tail(self.log, chars)


class Cluster:
    """size members on free ports of 127.0.0.1, data and logs under tmp."""

    def __init__(self, tmp: Path, size: int = 3):
        ports = free_ports(2 * size)
        self.members = [Member(f"m{i}", ports[2 * i], ports[2 * i + 1], tmp / f"m{i}", tmp / f"m{i}.log")
                        for i in range(size)]
        self.token = "nptest-" + secrets.token_hex(4)

    @property
    def endpoints(self) -> str:
        return ",".join(m.client for m in self.members)

    def live_endpoints(self) -> str:
        return ",".join(m.client for m in self.members if m.alive())

    def start(self) -> None:
        spec = ",".join(f"{m.name}={m.peer}" for m in self.members)
        for m in self.members:
            m.start(spec, self.token)
        deadline = time.monotonic() + 30
        while etcdctl(self.endpoints, "endpoint", "health", check=False).returncode != 0:
            for m in self.members:
                if m.proc is not None and m.proc.poll() is not None:
                    raise Failed(f"etcd {m.name} exited:\n{m.tail()}")
            if time.monotonic() > deadline:
                raise Failed("the 3-member cluster did not become healthy in 30 s")
            time.sleep(0.3)

    def status(self) -> list[dict]:
        out = etcdctl(self.endpoints, "endpoint", "status", "-w", "json", check=False).stdout
        return json.loads(out) if out.strip() else []

    def make_leader(self, member: Member) -> None:
        """Move the leadership to member (etcdctl move-leader, asked of the current leader)."""
        for _ in range(20):
            status = self.status()
            by_endpoint = {s["Endpoint"]: s for s in status}
            if member.client not in by_endpoint:
                time.sleep(0.3)
                continue
            target = by_endpoint[member.client]["Status"]["header"]["member_id"]
            leader = by_endpoint[member.client]["Status"]["leader"]
            if leader == target:
                return
            leader_ep = next(s["Endpoint"] for s in status if s["Status"]["header"]["member_id"] == leader)
            etcdctl(leader_ep, "move-leader", format(target, "x"), check=False)
            time.sleep(0.5)
        raise Failed(f"could not make {member.name} the leader: {self.status()}")

    def stop(self) -> None:
        for m in self.members:
            m.kill()

    def logs(self) -> str:
        return "\n".join(f"--- {m.log}\n{m.tail(1500)}" for m in self.members if m.log.exists())


# -- TLS and authentication ---------------------------------------------------------------

def make_certs(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, with openssl."""
    d.mkdir(parents=True, exist_ok=True)

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)
    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
         "-subj", "/CN=netplugin test CA")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(ext + "\n")
        ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN=netplugin-{name}")
        ossl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return {"ca": d / "ca.pem", "cert": d / "client.pem", "key": d / "client.key",
            "server_cert": d / "server.pem", "server_key": d / "server.key"}


@contextlib.contextmanager
def secure_member(tmp: Path) -> Iterator[dict]:
    """One etcd member on https that demands a client certificate, with
    authentication on: user 'np' (password 'np-secret') may read and write
    /netplugin/. Yields {"url", "ca", "cert", "key", ...}; killed on the way out."""
    certs = make_certs(tmp / "pki")
    client_port, peer_port = free_ports(2)
    url = f"https://127.0.0.1:{client_port}"
    m = Member("s0", client_port, peer_port, tmp / "s0", tmp / "s0.log")
    m.client = url
    m.start(f"s0={m.peer}", "nptest-tls-" + secrets.token_hex(3), extra=[
        "--cert-file", str(certs["server_cert"]), "--key-file", str(certs["server_key"]),
        "--trusted-ca-file", str(certs["ca"]), "--client-cert-auth"])
    tls = [f"--cacert={certs['ca']}", f"--cert={certs['cert']}", f"--key={certs['key']}"]
    try:
        deadline = time.monotonic() + 30
        while etcdctl(url, "endpoint", "health", extra=tls, check=False).returncode != 0:
            assert m.alive(), m.tail()
            assert time.monotonic() < deadline, f"the TLS member did not become healthy:\n{m.tail()}"
            time.sleep(0.3)
        for args in (["user", "add", "root:root-secret"], ["user", "add", "np:np-secret"], ["role", "add", "np"],
                     ["role", "grant-permission", "np", "--prefix=true", "readwrite", "/netplugin/"],
                     ["user", "grant-role", "np", "np"], ["auth", "enable"]):
            etcdctl(url, *args, extra=tls)
        yield {"url": url, **certs}
    finally:
        m.kill()
