"""The ``netplugin`` daemon: gunicorn serving the Flask app on a root-only
unix socket. It listens before it connects to anything: etcd, OVS and Docker
are reached on first use, so Docker never finds the socket missing because a
backend is slow, and calls made while etcd is down fail with "store
unavailable" instead of hanging.
"""

from __future__ import annotations

import argparse
import faulthandler
import grp
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

from . import __version__
from .config import Config, load
from .errors import NetpluginError

if TYPE_CHECKING:
    from .hosts import HostHeartbeat
    from .wiring import Components

log = logging.getLogger("netplugin")


def password_file_arg(path: str) -> str:
    """--password-file: the etcd password is the file's first line. A password
    itself is never taken on a command line, where ps shows it to everyone."""
    try:
        with open(path, encoding="utf-8") as fh:
            line = fh.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read password file {path}: "
                                         f"{getattr(exc, 'strerror', None) or exc}") from None
    if not line:
        raise argparse.ArgumentTypeError(f"password file {path} is empty: its first line is the password")
    return line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    # No abbreviations: "--password SECRET" must be refused, not taken for --password-file.
    p = argparse.ArgumentParser(prog="netplugin", description="Docker network and IPAM driver on Open vSwitch.",
                                allow_abbrev=False)
    p.add_argument("--config", help="TOML settings file (default /etc/netplugin/netplugin.toml if present)")
    p.add_argument("--etcd-endpoints", help="comma-separated etcd URLs, e.g. http://127.0.0.1:2379")
    p.add_argument("--cacert", dest="etcd_cacert", metavar="FILE", help="CA certificate for etcd TLS (etcd_cacert)")
    p.add_argument("--cert", dest="etcd_cert", metavar="FILE", help="client certificate for etcd TLS (etcd_cert)")
    p.add_argument("--key", dest="etcd_key", metavar="FILE", help="client key for etcd TLS (etcd_key)")
    p.add_argument("--user", dest="etcd_user", help="etcd user (etcd_user); the password goes with it")
    p.add_argument("--password-file", dest="etcd_password", metavar="FILE", type=password_file_arg,
                   help="file whose first line is the etcd password (etcd_password); "
                        "or NETPLUGIN_ETCD_PASSWORD, or the config file")
    p.add_argument("--host-id", help="this host's id in the cluster (default: the hostname)")
    p.add_argument("--bridge", help="OVS bridge name (default netplugin0)")
    p.add_argument("--datapath-type", choices=["system", "netdev"], help="OVS datapath type")
    p.add_argument("--uplink", help="interface that trunks the VLANs to other hosts")
    p.add_argument("--socket", help="plugin socket (default /run/docker/plugins/netplugin.sock)")
    p.add_argument("--socket-group", help="group that may use the socket besides root")
    p.add_argument("--mtu", type=int, help="MTU of container interfaces (default 1500)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument("--version", action="version", version=f"netplugin {__version__}")
    return p.parse_args(argv)


def settings(argv: list[str] | None = None) -> Config:
    args = parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k != "config" and v is not None}
    return load(args.config, overrides=flags)


def secure_socket(path: str, group: str | None) -> None:
    """Root-only: mode 0660, owner root, group root or the configured group."""
    gid = grp.getgrnam(group).gr_gid if group else 0
    os.chown(path, 0, gid)
    os.chmod(path, 0o660)


def start_metrics(parts: Components) -> None:
    """The loopback metrics and health port, unless turned off."""
    from .metrics_server import serve
    cfg = parts.cfg
    if cfg.metrics_address and parts.metrics is not None:
        try:
            serve(cfg.metrics_address, parts.metrics.registry, parts.health)
        except OSError as exc:
            log.error("metrics port %s unavailable (%s): running without it", cfg.metrics_address, exc)


# Calls Docker makes to activate the plugin, which touch nothing in etcd:
# answered before this daemon holds its host id.
BEFORE_CLAIM = {"/Plugin.Activate", "/NetworkDriver.GetCapabilities", "/IpamDriver.GetCapabilities",
                "/IpamDriver.GetDefaultAddressSpaces", "/health"}
# Of those, the ones that reach a library (OVS, etcd): they wait for preload.py.
NEEDS_LIBRARIES = {"/health"}
REFUSED_EXIT = 4      # gunicorn's "app failed to load": its arbiter stops with this status
CLAIM_WAIT = 10.0     # seconds a call made right at start waits for the first claim (a kill -9 restart
                      # takes its claim back once the old worker is gone; well inside the 20 s deadline)


class ClaimGate:
    """The WSGI app in front of the Flask app: until this daemon holds its
    host id, every call but activation is answered 503 with the reason, so
    nothing is allocated, released or written for a host id it may not own."""

    def __init__(self, app, heartbeat: HostHeartbeat, loaded: threading.Event | None = None,
                 wait: float = CLAIM_WAIT):
        from .api.wire import CONTENT_TYPE
        self.app = app
        self.heartbeat = heartbeat
        self.loaded = loaded
        self.wait = wait
        self.content_type = CONTENT_TYPE

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO")
        if path in BEFORE_CLAIM and (path not in NEEDS_LIBRARIES or self.libraries_loaded()):
            return self.app(environ, start_response)
        if path not in BEFORE_CLAIM and self.settled():
            return self.app(environ, start_response)
        hb = self.heartbeat
        if path in NEEDS_LIBRARIES:
            message = "netplugin is starting (loading its libraries): retry in a few seconds"
        elif hb.reason:
            message = hb.reason
        elif hb.waiting:
            message = (f"netplugin is waiting for host id {hb.cfg.host_id} to be given up before it claims it "
                       f"({hb.waiting}): retry in a few seconds, and see the netplugin log")
        else:
            message = (f"{hb.last_error + ' (' if hb.last_error else ''}netplugin has not claimed host id "
                       f"{hb.cfg.host_id} in etcd yet{')' if hb.last_error else ''}: retry in a few seconds, "
                       "and see the netplugin log")
        body = json.dumps({"Err": message, "Error": message}).encode()
        start_response("503 Service Unavailable", [("Content-Type", self.content_type),
                                                   ("Content-Length", str(len(body)))])
        return [body]


    def libraries_loaded(self) -> bool:
        """Whether preload.py is done (waiting up to ``wait`` seconds): /health
        reaches OVS, whose library no request thread may import while the start
        thread imports."""
        return self.loaded is None or self.loaded.wait(self.wait)

    def settled(self, wait: float = CLAIM_WAIT) -> bool:
        """Whether the id is held; a call that comes in the moment the daemon
        listens waits up to ``wait`` seconds for the first claim, unless
        that claim has failed already (etcd away, or refused)."""
        hb, stop = self.heartbeat, time.monotonic() + wait
        while not hb.claimed.is_set():
            if hb.refused.is_set() or hb.last_error or time.monotonic() > stop:
                return False
            hb.claimed.wait(0.05)
        return True


def stop_as_refused(reason: str) -> None:
    """This daemon may not act as its host: say so and end the process (the
    worker's exit status makes gunicorn's arbiter stop with it)."""
    log.critical("netplugin stops: %s", reason)
    logging.shutdown()
    os._exit(REFUSED_EXIT)


def migrate(parts: Components) -> None:
    """Move this host's endpoint records of the old layout (endpoints/<id>)
    under their network (store.migrate_endpoints), before the view reads them;
    etcd away: the view reads both layouts, and the next start moves them."""
    try:
        moved, left = parts.store.migrate_endpoints(parts.cfg.host_id)
    except NetpluginError as exc:
        log.warning("endpoint records of the old layout stay where they are for now: %s", exc.message)
        return
    if moved or left:
        log.info("moved %d endpoint record(s) to the layout by network (%d changed meanwhile: next start)",
                 moved, left)


def background_start(parts: Components, refused=stop_as_refused) -> threading.Thread:
    """Claim the host id; once held, follow release requests and the limit
    and ARP watches, prepare the bridge and compare OVS with etcd, retrying
    until each answers. A refused claim, at start or later, calls
    ``refused(reason)``: nothing else runs for a host id this daemon does not hold."""
    heartbeat = parts.heartbeat.start()

    def claimed() -> bool:
        while not heartbeat.claimed.wait(0.5):
            if heartbeat.refused.is_set():
                return False
        return True

    def run():
        if not claimed():
            refused(heartbeat.reason)
            return
        migrate(parts)
        parts.view.start()
        parts.releaser.follow_requests()
        parts.limits.start()
        parts.arp.start()
        # Flows and meters back within a second or two of an OVS restart,
        # not at the sync loops' next full pass.
        parts.restorer.start()
        if parts.pool is not None:
            parts.pool.start()              # adopts what a previous run parked, then fills
        threading.Thread(target=check_bridge, name="startup-check", daemon=True).start()
        heartbeat.refused.wait()            # the id was lost to another instance
        refused(heartbeat.reason)

    def check_bridge():
        while True:
            try:
                parts.bridge.ensure()
                parts.bridge.compare_with_store()
                return
            except NetpluginError as exc:
                log.warning("start-up check waits: %s", exc.message)
                time.sleep(2)
    thread = threading.Thread(target=run, name="host-claim", daemon=True)
    thread.start()
    return thread


def serve(cfg: Config) -> None:
    from gunicorn.app.base import BaseApplication

    from .api import create_app
    from .gunicorn_logs import ThroughRoot
    from .preload import preload
    from .sdnotify import notify, take_socket
    from .wiring import make_components

    os.makedirs(os.path.dirname(cfg.socket), mode=0o755, exist_ok=True)
    notify_socket = take_socket()      # READY=1 comes from us, after secure_socket, not from gunicorn

    def ready(server) -> None:
        secure_socket(cfg.socket, cfg.socket_group)
        notify(notify_socket, f"READY=1\nSTATUS=listening on {cfg.socket}")

    class Server(BaseApplication):
        def load_config(self):
            for key, value in {
                "bind": f"unix:{cfg.socket}", "workers": 1, "worker_class": "gthread",
                "threads": cfg.threads, "umask": 0o117, "timeout": 60, "graceful_timeout": 5,
                "keepalive": 5, "proc_name": f"netplugin[{cfg.host_id}]", "loglevel": cfg.log_level.lower(),
                "when_ready": ready, "logger_class": ThroughRoot,
                # gunicorn's control socket is one path per user ($XDG_RUNTIME_DIR or
                # ~/.gunicorn): a second daemon on the host would take the first's, and
                # whichever stopped first would delete it. Nothing here uses it.
                "control_socket_disable": True,
            }.items():
                self.cfg.set(key, value)

        def load(self):
            # Runs in the worker, after gunicorn set its signals: SIGUSR2 (which a
            # worker does not use) dumps every thread's stack to the log, to see
            # what a daemon that stopped answering is waiting on.
            faulthandler.register(signal.SIGUSR2, all_threads=True)
            parts = make_components(cfg)
            loaded = threading.Event()

            def start() -> None:
                # One thread imports every library before any other thread of ours
                # starts (preload.py); Docker's activation calls, which need none, are
                # answered meanwhile, and every other call waits at the gate for the
                # host claim, which comes after.
                preload()
                loaded.set()
                start_metrics(parts)
                background_start(parts)
            threading.Thread(target=start, name="start", daemon=True).start()
            return ClaimGate(create_app(parts), parts.heartbeat, loaded)

    log.info("netplugin %s on host %s: socket %s, bridge %s (%s), etcd %s", __version__, cfg.host_id,
             cfg.socket, cfg.bridge, cfg.datapath_type, ",".join(cfg.etcd_endpoints))
    Server().run()


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = settings(argv)
    except NetpluginError as exc:
        print(f"netplugin: {exc.message}", file=sys.stderr)
        return 2
    from .logs import setup
    setup(cfg.log_level, cfg.log_format)
    if os.geteuid() != 0:
        print("netplugin: must run as root (it creates veths and OVS ports)", file=sys.stderr)
        return 1
    serve(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
