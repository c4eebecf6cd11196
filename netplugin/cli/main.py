"""``netctl``: manage global networks without reading etcd keys.

Exit codes: 0 ok, 1 error (message on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import re
import sys
import time

from .. import __version__
from ..config import load
from ..daemon import password_file_arg
from . import endpoint_cmds, events, global_cmds, network_cmds, profile_cmds, status_cmds
from .parsing import (
    OutputFlags,
    Parser,
    add_output_options,
    options_parser,
    run_command,
    subcommands,
)

# The form the settings accept (config.Config.validate): checked here too, so a
# bad --etcd-endpoints is a usage error (exit 2) and etcd is never dialled.
ENDPOINT_RE = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+:\d+/?")


def endpoints_arg(text: str) -> str:
    """--etcd-endpoints: comma-separated http(s)://HOST:PORT URLs."""
    urls = [u.strip() for u in text.split(",") if u.strip()]
    if not urls:
        raise argparse.ArgumentTypeError("give at least one etcd URL, e.g. http://127.0.0.1:2379")
    for url in urls:
        if not ENDPOINT_RE.fullmatch(url):
            raise argparse.ArgumentTypeError(f"{url!r} is not an etcd URL of the form http(s)://HOST:PORT, "
                                             "e.g. https://10.0.0.1:2379")
    return ",".join(urls)


def common_options() -> Parser:
    """Connection and output options, accepted before or after the subcommand."""
    p = options_parser()
    g = p.add_argument_group("connection (same settings, file and NETPLUGIN_* variables as the daemon)")
    g.add_argument("--config", default=argparse.SUPPRESS, help="TOML settings file")
    g.add_argument("--etcd-endpoints", default=argparse.SUPPRESS, type=endpoints_arg,
                   help="comma-separated etcd URLs, http(s)://HOST:PORT")
    g.add_argument("--cacert", dest="etcd_cacert", default=argparse.SUPPRESS, help="CA certificate for etcd TLS")
    g.add_argument("--cert", dest="etcd_cert", default=argparse.SUPPRESS, help="client certificate for etcd TLS")
    g.add_argument("--key", dest="etcd_key", default=argparse.SUPPRESS, help="client key for etcd TLS")
    g.add_argument("--user", dest="etcd_user", default=argparse.SUPPRESS, help="etcd user")
    g.add_argument("--password", dest="etcd_password", default=argparse.SUPPRESS,
                   help="etcd password (better: --password-file or NETPLUGIN_ETCD_PASSWORD; ps shows command lines)")
    g.add_argument("--password-file", dest="etcd_password", default=argparse.SUPPRESS, metavar="FILE",
                   type=password_file_arg, help="file whose first line is the etcd password")
    add_output_options(p, "print only ids")
    return p



def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = Parser(prog="netctl", description="Operate netplugin's global networks.", parents=[common])
    sub = subcommands(parser, "group", "COMMAND")
    network_cmds.register(sub, common)
    endpoint_cmds.register(sub, common)
    profile_cmds.register(sub, common)
    global_cmds.register(sub, common)
    status_cmds.register(sub, common)
    ev = events.add_parser(sub, common, "netctl", ["network", "endpoint", "profile", "setting", "host", "reconcile",
                                                   "release"],
                           ["name", "network", "network_id", "host", "ip", "subnet", "vlan", "status", "value"])
    ev.set_defaults(run=lambda args, ctx: events.run(args, ctx, ctx.store, "netctl", ctx.store.revision_ago))
    v = sub.add_parser("version", help="print the version", parents=[common])
    v.set_defaults(run=version)
    return parser


def version(args, ctx) -> int:
    if ctx.json:
        from .output import print_json
        print_json({"netctl": __version__})
    else:
        print(f"netctl {__version__}")
    return 0


class Context(OutputFlags):
    """Builds the store and IPAM on first use from the parsed settings."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self._store = None

    @property
    def cfg(self):
        flags = {k: getattr(self.args, k) for k in ("etcd_endpoints", "etcd_cacert", "etcd_cert", "etcd_key",
                                                    "etcd_user", "etcd_password") if hasattr(self.args, k)}
        return load(getattr(self.args, "config", None), overrides=flags)

    @property
    def store(self):
        if self._store is None:
            from ..wiring import make_store
            self._store = make_store(self.cfg)
        return self._store

    def backup_jobs(self) -> dict:
        """drctl's jobs and catalog for ``netctl status``, read once
        (netplugin/backup/summary.py)."""
        from ..backup.store import BackupStore
        from ..backup.summary import read_once
        return read_once(BackupStore.beside(self.store))

    @property
    def ipam(self):
        from ..ipam import Ipam
        return Ipam(self.store, "netctl")


def main(argv: list[str] | None = None) -> int:
    """The ``netctl`` command. Restores the default SIGPIPE action so that
    ``netctl ... | head`` ends quietly: only when it runs as its own process,
    since in a caller's process (tests, embedding) that would make any write
    to a closed socket kill the caller."""
    if argv is None:
        import signal
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    return run(argv)


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    started = time.monotonic()
    return run_command("netctl", args, Context(args),
                       lambda: f"interrupted after {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
