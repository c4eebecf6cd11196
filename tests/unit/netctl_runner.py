"""Running netctl's or drctl's main(argv) in the test process over the
in-memory etcd, for the CLI tests: its output, errors and exit code."""

from __future__ import annotations

import json
import os

import netplugin.cli.main as cli_main
import netplugin.wiring as backends
from netplugin import docker_api
from netplugin.store import Store

_PARSER: list = []
REAL_BUILD_PARSER = cli_main.build_parser


def cached_parser():
    """netctl's parser, built once: building it costs ~15 ms, and it holds no state
    between parse_args calls."""
    if not _PARSER:
        _PARSER.append(REAL_BUILD_PARSER())
    return _PARSER[0]


class Result:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    @property
    def json(self):
        return json.loads(self.out)

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def __repr__(self):
        return f"Result(code={self.code}, out={self.out!r}, err={self.err!r})"


def netctl_runner(monkeypatch, capsys, kv, sock: str):
    """run(*argv) -> Result, with netctl's Store over kv, the plugin socket at
    sock, no NETPLUGIN_* variables of the machine, and no Docker. Usage
    errors (SystemExit) are caught."""
    for name in list(os.environ):
        if name.startswith("NETPLUGIN_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NETPLUGIN_CONFIG", "/dev/null")
    monkeypatch.setenv("NETPLUGIN_SOCKET", sock)
    monkeypatch.setattr(backends, "make_store", lambda cfg: Store(kv, cfg.etcd_prefix))
    monkeypatch.setattr(docker_api.DockerNames, "container_endpoints", lambda self, ref: set())
    monkeypatch.setattr(cli_main, "build_parser", cached_parser)
    capsys.readouterr()

    def run(*argv: str) -> Result:
        try:
            code = cli_main.main(list(argv))
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        return Result(code, out, err)
    return run


def drctl_runner(monkeypatch, capsys, kv):
    """run(*argv) -> Result for drctl's main(argv), with its Store over kv, no
    NETPLUGIN_* or DRCTL_* variables of the machine and no settings file. Usage
    errors (SystemExit) are caught."""
    from netplugin.backup import cli as drctl_cli
    for name in list(os.environ):
        if name.startswith(("NETPLUGIN_", "DRCTL_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NETPLUGIN_CONFIG", "/dev/null")
    monkeypatch.setattr(backends, "make_store", lambda cfg: Store(kv, cfg.etcd_prefix))
    capsys.readouterr()

    def run(*argv: str) -> Result:
        try:
            code = drctl_cli.main(["--drctl-config", "/dev/null", *argv])
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        return Result(code, out, err)
    return run
