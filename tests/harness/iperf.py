"""One bounded iperf3 run between two network namespaces, the rate read at
the receiver (what a sender's limit lets through)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .proc import Failed, run

PORT = 5201


@dataclass
class IperfResult:
    mbit: float                      # received rate over the measured (not omitted) time
    intervals: list[tuple[float, float, float]]   # (start s, end s, Mbit/s) at the receiver
    sent_mbit: float
    launched: float                  # time.monotonic() when the client was started
    client: dict
    server: dict


def wait_listening(ns: str, port: int, server: subprocess.Popen, within: float = 5.0) -> None:
    stop = time.monotonic() + within
    while time.monotonic() < stop:
        if server.poll() is not None:
            raise Failed(f"iperf3 server in {ns} exited: {server.stderr.read() if server.stderr else ''}")
        out = run(["ip", "netns", "exec", ns, "ss", "-Hltn", f"sport = :{port}"], check=False, timeout=30).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise Failed(f"iperf3 server in {ns} did not listen on {port} within {within} s")


def iperf(server_ns: str, server_ip: str, client_ns: str, *, seconds: float = 5, omit: float = 2,
          udp_mbit: float | None = None, interval: float | None = None,
          during: Callable[[float], None] | None = None, length: int | None = None,
          streams: int = 1) -> IperfResult:
    """One bounded iperf3 run from client_ns to server_ns (TCP, or UDP offered
    at udp_mbit); the rate is read at the receiver, omitted intervals left out.

    ``during(launched)`` runs in a thread while the client runs (for live changes);
    ``length``: bytes per write (UDP: per datagram); ``streams``: parallel connections."""
    # The receiver reports at its own interval: -i goes to the server too.
    every = ["-i", f"{interval:g}"] if interval else []
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-J", "-B", server_ip,
                               "-p", str(PORT), *every], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    thread = None
    try:
        wait_listening(server_ns, PORT, server)
        args = ["ip", "netns", "exec", client_ns, "iperf3", "-c", server_ip, "-p", str(PORT), "-J",
                "-t", f"{seconds:g}", "-O", f"{omit:g}", "--connect-timeout", "3000"]
        if udp_mbit:
            args += ["-u", "-b", f"{udp_mbit:g}M"]
        if length:
            args += ["-l", str(int(length))]
        if streams > 1:
            args += ["-P", str(int(streams))]
        args += every
        launched = time.monotonic()
        client = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if during is not None:
            thread = threading.Thread(target=during, args=(launched,), daemon=True)
            thread.start()
        try:
            out, err = client.communicate(timeout=seconds + omit + 20)
        except subprocess.TimeoutExpired:
            client.kill()
            client.communicate()
            raise Failed(f"iperf3 client did not finish within {seconds + omit + 20:g} s") from None
        try:
            sout, serr = server.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            sout, serr = server.communicate()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if thread is not None:
            thread.join(30)
    try:
        cdoc, sdoc = json.loads(out), json.loads(sout)
    except ValueError:
        raise Failed(f"iperf3 gave no JSON: client {out[-500:]} {err[-500:]} server {sout[-500:]} "
                     f"{serr[-500:]}") from None
    if "error" in cdoc or "error" in sdoc:
        raise Failed(f"iperf3 failed: client {cdoc.get('error')} server {sdoc.get('error')}")
    # The receiver's own view: the server's intervals, omitted ones left out.
    ivals = [(i["sum"]["start"], i["sum"]["end"], i["sum"]["bits_per_second"] / 1e6)
             for i in sdoc["intervals"] if not i["sum"].get("omitted")]
    got = sum((e - s) * r for s, e, r in ivals) / max(1e-9, sum(e - s for s, e, _ in ivals))
    sent = cdoc["end"].get("sum_sent", cdoc["end"].get("sum", {})).get("bits_per_second", 0) / 1e6
    return IperfResult(got, ivals, sent, launched, cdoc, sdoc)
