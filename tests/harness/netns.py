"""Network namespaces standing in for containers: made under a name prefix
and deleted together, a link moved in as Docker moves a container's end, ping."""

from __future__ import annotations

import secrets
import subprocess
import time

from .proc import Failed, run


class Namespaces:
    """Namespaces named prefix + random hex, each with lo up; cleanup deletes them."""

    def __init__(self, prefix: str, hex_chars: int = 8):
        self.prefix = prefix
        self.hex_chars = hex_chars
        self.made: list[str] = []

    def new(self) -> str:
        name = self.prefix + secrets.token_hex(self.hex_chars // 2)
        run(["ip", "netns", "add", name])
        self.made.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def cleanup(self) -> None:
        for name in self.made:
            run(["ip", "netns", "del", name], check=False)


def adopt(ns: str, ifname: str, address: str, mac: str | None = None, new_name: str | None = "eth0") -> str:
    """What Docker does after Join: the link into ns (renamed), its MAC, its
    address (a.b.c.d/len), up. Returns its name there."""
    args = ["ip", "link", "set", "dev", ifname, "netns", ns]
    if new_name:
        args += ["name", new_name]
    run(args)
    name = new_name or ifname
    if mac:
        run(["ip", "-n", ns, "link", "set", "dev", name, "address", mac])
    run(["ip", "-n", ns, "addr", "add", address, "dev", name])
    run(["ip", "-n", ns, "link", "set", "dev", name, "up"])
    return name


def ping(ns: str, address: str, count: int = 2, wait: int = 2, interval: float = 0.2) -> subprocess.CompletedProcess:
    return run(["ip", "netns", "exec", ns, "ping", "-c", str(count), "-i", str(interval), "-W", str(wait), address],
               check=False, timeout=20)


def reach(ns: str, address: str, within: float = 10) -> None:
    """Ping once a second until a reply comes (the first packets can go to ARP
    and MAC learning); Failed after within seconds."""
    stop = time.monotonic() + within
    while True:
        proc = run(["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", address], check=False, timeout=30)
        if proc.returncode == 0:
            return
        if time.monotonic() > stop:
            raise Failed(f"{ns} cannot reach {address}: {proc.stdout}{proc.stderr}")
