"""With ``log_format = "json"`` the reconciler's and the drctl agent's log
lines are JSON too (their reports and tables on stdout stay as they are)."""

from __future__ import annotations

import json
import logging

import pytest

import netplugin.wiring as backends
from netplugin import reconcile_cli


@pytest.fixture(autouse=True)
def restore_root_logger():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:], level = saved
    root.setLevel(level)


class WarningReconciler:
    def run(self, **kwargs):
        logging.getLogger("netplugin.reconcile").warning("port %s: ovsdb said no", "np0123")
        return {"host": "h1", "dry_run": kwargs["dry_run"], "findings": []}


def test_reconciler_logs_json_when_chosen(monkeypatch, capsys):
    monkeypatch.setattr(backends, "make_reconciler", lambda cfg: WarningReconciler())
    monkeypatch.setenv("NETPLUGIN_CONFIG", "/dev/null")
    monkeypatch.setenv("NETPLUGIN_LOG_FORMAT", "json")
    assert reconcile_cli.main(["--json", "--dry-run", "--host-id", "h1", "--bridge", "nptest0"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["host"] == "h1"                      # the report, on stdout, either way
    record = json.loads(err.strip())                             # one line, and JSON
    assert (record["level"], record["logger"], record["message"]) == (
        "WARNING", "netplugin.reconcile", "port np0123: ovsdb said no")


def test_drctl_agent_logs_in_the_daemons_format():
    """cmd_agent sets logging up from netplugin's settings (log_format), not a fixed "text"."""
    import inspect

    from netplugin.backup import cli
    source = inspect.getsource(cli.cmd_agent)
    assert "setup(args.log_level, ctx.np_cfg.log_format)" in source
