"""Import the libraries the long-running processes use, once, in one thread,
before any of their threads start.

Modules import a library where it is first needed (netctl and drctl start faster
for it). In the daemon, first use used to happen in two threads at once, and
Python's per-module import locks can then wait on each other for good: one
thread importing docker (-> paramiko -> cryptography) while another imported
ovsdbapp (-> ovs -> eventlet -> dnspython -> cryptography), each holding a lock
the other needed, and CreateEndpoint waiting behind them forever. The fault ring
caught it; a stack dump (SIGUSR2) showed the three threads in the importer.
"""

from __future__ import annotations

import importlib
import warnings

# Every third-party module a function of netplugin imports lazily (a test keeps
# this list complete: tests/unit/test_preload.py).
LIBRARIES = (
    "docker",
    "docker.errors",
    "flask",
    "grpc",
    "netaddr",
    "ovsdbapp.backend.ovs_idl",
    "ovsdbapp.backend.ovs_idl.command",
    "ovsdbapp.backend.ovs_idl.connection",
    "ovsdbapp.schema.open_vswitch",
    "ovsdbapp.schema.open_vswitch.impl_idl",
    "pyetcd",
    "pyetcd.etcdrpc",
    "pyetcd.events",
    "pyetcd.exceptions",
    "pyetcd.utils",
    "pyetcd.watch",
    "pyroute2",
    "pyroute2.ethtool.ioctl",
)


def preload(names: tuple[str, ...] = LIBRARIES) -> None:
    """Import each of names now (a missing one raises, as its first use would)."""
    with warnings.catch_warnings():
        # ovs.poller imports eventlet, which warns of its own deprecation on import.
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in names:
            importlib.import_module(name)
