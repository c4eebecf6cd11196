"""Shared by the benchmarks: isolation names, the daemon under test, cleanup
that runs even on Ctrl-C, a keep-alive client for the plugin socket, the
machine description and small statistics.

Isolation (other suites run on the same machine at the same time): the
benchmarks never touch the default socket, the default etcd prefix or the
test bridges. They use

    socket      /run/docker/plugins/npbench.sock   (Docker calls the driver 'npbench')
    etcd prefix /netplugin/bench-<random>
    bridge      npbench0
    host id     bench-<random>
    subnets     inside 10.200.0.0/16 .. 10.210.0.0/16
    VLANs       3900-3999
    containers  named npbench-...

The daemon process, etcd, commands and the plugin-socket clients come from
the test harness (tests/harness), which every test ring uses too; the repo
root is put on sys.path here, once, for `python bench/bench_x.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # the repo root, for tests.harness

from netplugin.unixhttp import call
from tests.harness import daemon as harness
from tests.harness import etcd as etcdkit
from tests.harness import proc
from tests.harness.client import Client

REPO = Path(__file__).resolve().parents[1]

__all__ = ["ADDRESS_SPACE", "BRIDGE", "DOCKER", "DRIVER", "ETCD", "IMAGE", "SOCKET", "SUBNET_OCTETS", "VLANS",
           "Cleanup", "Client", "Daemon", "Out", "bridge_ports", "call", "docker", "drop_log",
           "endpoint_flows", "etcd_delete_prefix", "etcd_keys", "exit_with", "hex64", "log_size", "machine",
           "machine_line", "median", "parse", "parse_calls", "parser", "pct", "pick_octets", "pick_vlan",
           "read_from", "remove_bridge", "rnd", "run", "say_cleanup_failures", "table", "tag"]

DOCKER = "/usr/bin/docker"      # the 20.10 client that matches the daemon (not /usr/local/bin/docker)
IMAGE = os.environ.get("NPBENCH_IMAGE", "netplugin/busybox:latest")
ETCD = os.environ.get("NPBENCH_ETCD", "http://127.0.0.1:2379")
SOCKET = "/run/docker/plugins/npbench.sock"
DRIVER = "npbench"              # Docker names a legacy plugin after its socket
BRIDGE = "npbench0"
SUBNET_OCTETS = range(200, 211)  # 10.200.0.0/16 .. 10.210.0.0/16
VLANS = range(3900, 4000)
ADDRESS_SPACE = "netplugin"


def tag() -> str:
    """A short random tag for this run's names."""
    return secrets.token_hex(4)


def hex64() -> str:
    return secrets.token_hex(32)


def pick_octets(n: int) -> list[int]:
    """n distinct second octets inside 10.200-10.210."""
    return random.sample(list(SUBNET_OCTETS), n)


def pick_vlan() -> int:
    return random.choice(list(VLANS))


# -- output -------------------------------------------------------------------

class Out:
    """Human text goes to stdout, or to stderr when --json owns stdout."""

    def __init__(self, json_mode: bool):
        self.json_mode = json_mode

    def say(self, text: str = "") -> None:
        print(text, file=sys.stderr if self.json_mode else sys.stdout, flush=True)

    def progress(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def result(self, obj: dict) -> None:
        if self.json_mode:
            print(json.dumps(obj, sort_keys=False), flush=True)


def table(headers: list[str], rows: Iterable[Iterable], aligns: str | None = None) -> str:
    cells = [[_cell(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    aligns = aligns or ("l" + "r" * (len(headers) - 1))

    def line(row):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, aligns, strict=False))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}" if value >= 1 else f"{value:.3f}"
    return str(value)


def parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's argument parser: the first paragraph of its docstring describes it."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0])


def parse(p: argparse.ArgumentParser, argv=None, daemon_src: bool = False,
          keep_log: str | None = None) -> argparse.Namespace:
    """Add the options the benchmarks share (--daemon-src, --keep-log with its help, --json), parse."""
    if daemon_src:
        p.add_argument("--daemon-src", metavar="DIR",
                       help="run the daemon from another netplugin source tree, e.g. made with "
                            "'git archive COMMIT netplugin | tar -x -C DIR' (default: the installed package)")
    if keep_log:
        p.add_argument("--keep-log", action="store_true", help=keep_log)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (the table goes to stderr)")
    return p.parse_args(argv)


def say_cleanup_failures(out: Out, result: dict) -> None:
    if result.get("cleanup_failures"):
        out.say("cleanup failures: " + "; ".join(result["cleanup_failures"]))


def exit_with(main: Callable[[], int]) -> None:
    """Exit with main()'s status; 130 on Ctrl-C."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)


# -- statistics ----------------------------------------------------------------

def pct(values: list[float], p: float) -> float | None:
    """The p-th percentile (0-100), linear between closest ranks; None when empty."""
    if not values:
        return None
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def rnd(value, digits: int = 3):
    return None if value is None else round(value, digits)


# -- the machine ----------------------------------------------------------------

def _out(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def machine() -> dict:
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    etcd_version = "?"
    try:
        import urllib.request
        with urllib.request.urlopen(ETCD + "/version", timeout=3) as resp:
            etcd_version = json.loads(resp.read()).get("etcdserver", "?")
    except Exception:  # noqa: BLE001 - descriptive only
        pass
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nproc": os.cpu_count(),
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "docker": _out(DOCKER, "version", "-f", "{{.Server.Version}}") or "?",
        "ovs": (_out("ovs-vsctl", "--version").splitlines() or ["?"])[0].split()[-1],
        "etcd": etcd_version,
        "python": platform.python_version(),
        "netplugin_commit": _out("git", "-C", str(REPO), "rev-parse", "--short", "HEAD"),
        "netplugin_dirty": bool(_out("git", "-C", str(REPO), "status", "--porcelain", "--", "netplugin")),
        "ovs_ports_on_host": _ovs_port_count(),
        "loadavg_start": _loadavg(),
    }


def _ovs_port_count() -> int | None:
    """Ports on all OVS bridges of the host: other suites' load on ovs-vswitchd."""
    try:
        out = subprocess.run(["ovs-vsctl", "--timeout=5", "--format=csv", "--no-headings", "--columns=name",
                              "list", "Port"], check=False, capture_output=True, text=True, timeout=10).stdout
        return len(out.split())
    except (OSError, subprocess.TimeoutExpired):
        return None


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def machine_line(m: dict) -> str:
    return (f"{m['date_utc']}  nproc={m['nproc']} mem={m['mem_gib']}GiB kernel={m['kernel']} "
            f"docker={m['docker']} ovs={m['ovs']} etcd={m['etcd']} python={m['python']} "
            f"netplugin={m['netplugin_commit']}{'+dirty' if m['netplugin_dirty'] else ''} "
            f"load={m['loadavg_start']} ovs-ports={m['ovs_ports_on_host']}")


# -- cleanup ------------------------------------------------------------------------

class _Terminated(KeyboardInterrupt):
    pass


def _raise_interrupt(signum, frame):
    raise _Terminated(f"signal {signum}")


class Cleanup:
    """A stack of undo steps, run last-first even on Ctrl-C/SIGTERM.

    Use as a context manager; register a step as soon as the thing it undoes
    may exist. While the steps run, SIGINT/SIGTERM are ignored so a second
    Ctrl-C cannot leave half the mess behind.
    """

    def __init__(self, out: Out):
        self.out = out
        self.steps: list[tuple[str, Callable[[], None]]] = []
        self.failures: list[str] = []

    def add(self, what: str, fn: Callable[[], None]) -> None:
        self.steps.append((what, fn))

    def __enter__(self) -> Cleanup:
        signal.signal(signal.SIGTERM, _raise_interrupt)
        signal.signal(signal.SIGHUP, _raise_interrupt)
        return self

    def run(self) -> None:
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            while self.steps:
                what, fn = self.steps.pop()
                try:
                    fn()
                except Exception as exc:  # noqa: BLE001 - keep cleaning
                    msg = f"cleanup: could not {what}: {exc}"
                    self.failures.append(msg)
                    self.out.progress("WARNING " + msg)
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.out.progress(f"interrupted ({exc or 'Ctrl-C'}): cleaning up")
        self.run()


# -- commands -----------------------------------------------------------------------

def run(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return proc.run(list(args), check=check, timeout=timeout)


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return run(DOCKER, *args, check=check, timeout=timeout)


def etcd_keys(prefix: str) -> list[str]:
    return etcdkit.keys(ETCD, prefix)


def etcd_delete_prefix(prefix: str) -> None:
    assert prefix.startswith("/netplugin/bench-") and prefix.endswith("/"), prefix
    etcdkit.delete_prefix(ETCD, prefix, check=True)


os.environ.setdefault("ETCDCTL_API", "3")


# -- Open vSwitch -----------------------------------------------------------------------

def bridge_ports(bridge: str = BRIDGE) -> list[tuple[str, dict]]:
    """(name, external_ids) of every port on the bridge; [] if it does not exist."""
    if run("ovs-vsctl", "br-exists", bridge, check=False).returncode != 0:
        return []
    names = run("ovs-vsctl", "list-ports", bridge).stdout.split()
    if not names:
        return []
    raw = json.loads(run("ovs-vsctl", "--format=json", "--columns=name,external_ids", "list", "Port",
                         *names).stdout)
    ports = []
    for name, ext in raw["data"]:
        ports.append((name, dict(ext[1]) if isinstance(ext, list) and ext and ext[0] == "map" else {}))
    return ports


def endpoint_flows(bridge: str = BRIDGE) -> dict:
    """OpenFlow state netplugin keeps per endpoint: flows with a netplugin cookie
    (top bit set; the pipeline's table-miss flows have cookie 0) and meters."""
    flows = run("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge, check=False, timeout=30)
    meters = run("ovs-ofctl", "-O", "OpenFlow13", "dump-meters", bridge, check=False, timeout=30)
    cookies = [int(c, 16) for c in re.findall(r"cookie=0x([0-9a-f]+)", flows.stdout)]
    names = {0: "port", 1: "arp_local", 2: "arp_uplink", 3: "other"}
    kinds: dict[str, int] = {}
    for c in cookies:
        if c >> 63:
            kinds[names[(c >> 60) & 3]] = kinds.get(names[(c >> 60) & 3], 0) + 1
    return {"flows_with_endpoint_cookie": sum(1 for c in cookies if c >> 63), "flow_kinds": kinds,
            # the endpoint-id part of each cookie (first 15 hex digits of the endpoint id)
            "flow_endpoints": sorted({f"{c & ((1 << 60) - 1):015x}" for c in cookies if c >> 63})[:20],
            "meters": len(re.findall(r"meter=\d+", meters.stdout)),
            "readable": flows.returncode == 0}


def remove_bridge(bridge: str = BRIDGE) -> None:
    """Delete the bridge, and the host ends of the veths that were its ports."""
    assert bridge.startswith(("npbench", "npdrbench")), bridge
    for name, _ in bridge_ports(bridge):
        run("ip", "link", "del", name, check=False)
    run("ovs-vsctl", "--if-exists", "del-br", bridge)


# -- the daemon ----------------------------------------------------------------------

class Daemon(harness.Daemon):
    """One netplugin daemon on the benchmark socket (or socket), in its own session,
    as every test ring starts one, with NETPLUGIN_CONFIG=/dev/null and a private
    XDG_RUNTIME_DIR."""

    def __init__(self, log_path: Path, threads: int | None = None, extra_env: dict | None = None,
                 src: str | None = None, socket: str | None = None, bridge: str | None = None):
        """src: a folder holding another netplugin package (e.g. from
        `git archive COMMIT netplugin | tar -x -C DIR`) to run instead of the
        installed one, to compare commits on the same machine. socket, bridge:
        default SOCKET and BRIDGE as they are when called (a benchmark may set them)."""
        socket, bridge = socket or SOCKET, bridge or BRIDGE
        self.host_id = "bench-" + tag()
        self.prefix = "/netplugin/bench-" + tag()
        self.bridge = bridge
        self.log_path = log_path
        if src and not (Path(src) / "netplugin" / "daemon.py").exists():
            raise RuntimeError(f"--daemon-src {src}: no netplugin/daemon.py there")
        self.src = str(Path(src).resolve()) if src else None
        env = harness.settings_env(
            isolated=False, etcd_endpoints=ETCD, etcd_prefix=self.prefix, host_id=self.host_id, bridge=bridge,
            datapath_type="netdev", socket=socket, config="/dev/null",
            # gunicorn >= 25 opens a control socket at $XDG_RUNTIME_DIR/gunicorn.ctl,
            # else ~/.gunicorn/gunicorn.ctl, shared by every daemon on the host and
            # removed by whichever stops first: keep ours private.
            base=dict(os.environ, XDG_RUNTIME_DIR=str(log_path.parent)))
        if threads:
            env["NETPLUGIN_THREADS"] = str(threads)
        if self.src:
            env["PYTHONPATH"] = self.src
        env.update(extra_env or {})
        # `python -m` puts the working directory first on sys.path: with --daemon-src, run
        # from that tree, or a checkout in the caller's cwd would be imported instead.
        super().__init__(socket, log_path, env, cwd=self.src)
        self.package = ""

    def start(self, within: float = 15) -> float:
        self.claim_socket(": is another benchmark running?")
        # which netplugin the daemon will import, as it will import it
        self.package = subprocess.run([sys.executable, "-c", "import netplugin; print(netplugin.__file__)"],
                                      env=self.env, cwd=self.src, capture_output=True, text=True,
                                      timeout=30, check=False).stdout.strip()
        if self.src and not self.package.startswith(self.src):
            raise RuntimeError(f"the daemon would import {self.package}, not the tree in {self.src}")
        return super().start(within)

    def wait_bridge(self, timeout: float = 60) -> None:
        """The daemon creates the bridge in the background at start; wait until
        ovs-vswitchd has made it (OpenFlow answers), not just the OVSDB row."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if run("ovs-ofctl", "-O", "OpenFlow13", "show", self.bridge, check=False, timeout=10).returncode == 0:
                return
            if not self.alive():
                raise RuntimeError(f"netplugin exited:\n{self.log_tail()}")
            time.sleep(0.2)
        raise RuntimeError(f"bridge {self.bridge} was not ready within {timeout} s (is ovs-vswitchd overloaded?):\n"
                           f"{self.log_tail()}")

    def stop(self, grace: float = 10) -> None:
        super().stop(grace)
        if os.path.exists(self.socket) and not self.answers():
            with contextlib.suppress(OSError):
                os.unlink(self.socket)

    def log_tail(self, n: int = 3000) -> str:
        return self.tail(n)


# -- the daemon log ---------------------------------------------------------------------------

def parse_calls(text: str) -> list[dict]:
    """Protocol calls from the daemon log: one line per call,
    '<Interface>.<Method> [ids] status=N ms=F'."""
    pat = re.compile(r"netplugin\.api: (?P<method>[A-Za-z]+\.[A-Za-z]+)(?P<ids>.*?) status=(?P<status>\d+) "
                     r"ms=(?P<ms>[0-9.]+)")
    calls = []
    for line in text.splitlines():
        m = pat.search(line)
        if m:
            ids = dict(kv.split("=", 1) for kv in m.group("ids").split() if "=" in kv)
            calls.append({"method": m.group("method"), "status": int(m.group("status")),
                          "ms": float(m.group("ms")), "ids": ids})
    return calls


def drop_log(logdir: Path, keep: bool, finished: bool, out: Out) -> None:
    """Remove the daemon's log folder, unless asked to keep it or the run broke."""
    import shutil
    if keep or not finished:
        out.progress(f"daemon log kept: {logdir / 'netplugin.log'}")
        return
    shutil.rmtree(logdir, ignore_errors=True)


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def read_from(path: Path, start: int, end: int | None = None) -> str:
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read() if end is None else fh.read(max(0, end - start))
    return data.decode(errors="replace")
